#!/usr/bin/env python3
"""mpc against PyTorch on the same GPT, on the same device, in one invocation.

Writes the model with `mpc gen gpt` (GPT-2 small by default: 12 layers,
d_model 768, 12 heads, 1024 tokens, vocabulary 50257, batch 8), times
`mpc bench` in fp32, fp16 and bf16 and benches/torch_gpt.py in its modes
(eager FP32, eager AMP fp16 + GradScaler and bf16, torch.compile AMP), and
prints one table: ms/step, tokens/s, MFU as llm.c computes it (6 N + 12 L H Q T
flops per token against --peak) for every row alike, peak memory, and each
row's speed against PyTorch eager AMP of its type.

    python3 benches/side_by_side.py --mpc target/release/mpc            # on a GPU
    python3 benches/side_by_side.py --device cpu --tiny --no-compile   # a smoke run on the CPU
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = {"layers": 2, "d_model": 64, "heads": 4, "seq": 32, "vocab": 65, "batch": 2}
SMALL = {"layers": 12, "d_model": 768, "heads": 12, "seq": 1024, "vocab": 50257, "batch": 8}


def lines(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mpc", default=os.path.join(os.path.dirname(HERE), "target", "release", "mpc"))
    ap.add_argument("--python", default=sys.executable, help="the Python with PyTorch")
    ap.add_argument("--device", default="cuda", help="cuda (a GPU) or cpu")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (for the CPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak", type=float, default=989.4e12)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile modes")
    a = ap.parse_args()
    cfg = TINY if a.tiny else SMALL
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "gpt.json")
        gen = [a.mpc, "gen", "gpt", "-o", model, "--dropout", "0.1"]
        for k, v in cfg.items():
            gen += [f"--{k.replace('_', '-')}", str(v)]
        subprocess.run(gen, check=True, capture_output=True)
        mpc_rows = lines([a.mpc, "bench", model, "--device", a.device, "--steps", str(a.steps),
                          "--warmup", str(a.warmup), "--json"])
    modes = "eager-fp32,eager-fp16,eager-bf16" + (",compile-fp16,compile-bf16" if a.compile else "")
    torch_cmd = [a.python, os.path.join(HERE, "torch_gpt.py"), "--device", a.device, "--steps", str(a.steps),
                 "--warmup", str(a.warmup), "--modes", modes, "--peak", str(a.peak), "--json"]
    for k, v in cfg.items():
        torch_cmd += [f"--{k.replace('_', '-')}", str(v)]
    torch_rows = lines(torch_cmd)
    n = torch_rows[0]["params"]
    tokens = cfg["batch"] * cfg["seq"]
    flops = (6 * n + 12 * cfg["layers"] * cfg["heads"] * (cfg["d_model"] // cfg["heads"]) * cfg["seq"]) * tokens
    rows = [(f"pytorch {r['mode']}", r["ms_per_step"], r["peak_bytes"]) for r in torch_rows]
    rows += [(f"mpc {r['precision']}", 1e3 * r["stats"]["median"], r["measured_bytes"] or r["planned_bytes"])
             for r in mpc_rows]
    base = {r["mode"].split("-")[1]: r["ms_per_step"] for r in torch_rows if r["mode"].startswith("eager")}
    print(f"GPT {cfg} on {a.device}: {n / 1e6:.1f} M parameters, {tokens} tokens/step, "
          f"MFU = {flops / 1e9:.1f} GFLOP/step (llm.c's 6N + 12LHQT per token) over {a.peak / 1e12:.0f} TFLOP/s")
    print(f"{'run':22} {'ms/step':>9} {'tokens/s':>11} {'MFU':>6} {'peak MiB':>9} {'vs eager':>9}")
    for name, ms, peak in rows:
        prec = name.split("-")[-1] if "-" in name else name.split()[-1]
        vs = base.get(prec)
        print(f"{name:22} {ms:9.2f} {tokens / ms * 1e3:11.0f} {100 * flops / (ms / 1e3) / a.peak:5.1f}% "
              f"{(peak or 0) / 2**20:9.0f} {(vs / ms if vs else float('nan')):8.2f}x")


if __name__ == "__main__":
    main()
