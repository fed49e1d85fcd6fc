#!/usr/bin/env python3
"""mpc against onnxconverter-common on real models, side by side in one run.

For each light model of the onnx wheel (the files in tests/data/onnx), a
randomized copy is made by tests/onnx/check_ort.py's `randomize` (seeded
He-normal weights, calibrated batch norms, the logits before the final
Softmax added as a second output). Then:

- mpc: `mpc lower model.onnx --precision fp16 --emit onnx --repeat N`, the
  ONNX model lowered for inference in memory (import, autocast, cleanup,
  export, encoding; the model's bytes already read, the output not yet
  written). Reported: the best of the N runs in one process (as the peer is
  timed), the first run of a fresh process ("cold": page faults on fresh
  memory), and the wall time of the whole command (start-up, reading the
  model, writing the output), best of 3.
- onnxconverter-common 1.16: `convert_float_to_float16(keep_io_types=True)`,
  timed around the call (model already in memory), best of N.

Columns: Cast nodes in the FP16 model, compute nodes left in FP32 (nodes
whose float outputs are FLOAT after shape inference, casts and shape ops not
counted), relative error max|y - y32| / max|y32| of the output and of the
logits in onnxruntime against the FP32 original, averaged over --inputs
seeded uniform [0, 1) inputs (the same for both tools), and time per ONNX
node.

Usage: python3 benches/onnx_models.py [--mpc target/release/mpc] [--repeat 5] [--inputs 8] [--as-shipped]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, shape_inference
from onnxconverter_common import float16

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "onnx"))
from check_ort import light_path, outputs_via_identity, randomize  # noqa: E402  (one randomization for the check and the bench)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = ["resnet50", "squeezenet", "vgg19", "bvlc_alexnet", "zfnet512", "inception_v1"]


def fp32_nodes(m):
    """Compute nodes whose float outputs are FLOAT after shape inference."""
    inferred = shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    skip = {"Cast", "Shape", "Constant", "ConstantOfShape", "Reshape", "Flatten", "Identity", "Dropout"}
    count = 0
    for n in inferred.graph.node:
        if n.op_type in skip:
            continue
        if any(types.get(o) == onnx.TensorProto.FLOAT for o in n.output):
            count += 1
    return count


def run(model_bytes, xs):
    """The model's outputs for each input in `xs`."""
    s = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return [s.run(None, {name: x}) for x in xs]


def mean_err(ys, refs, k):
    """Output k's relative error, averaged over the inputs (one input's max
    error is a noisy sample: which roundings line up differs from input to
    input)."""
    if any(len(y) <= k for y in ys + refs):
        return float("nan")
    return float(np.mean([rel(y[k], r[k]) for y, r in zip(ys, refs)]))


def rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def ms(stderr, what):
    """A time `mpc lower --repeat` printed: `best X ms` or `first X ms`."""
    m = re.findall(what + r" ([0-9.]+) ms", stderr)
    return float(m[-1]) if m else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpc", default=os.path.join(ROOT, "target", "release", "mpc"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--inputs", type=int, default=8, help="seeded inputs the errors are averaged over")
    ap.add_argument(
        "--models",
        nargs="*",
        default=MODELS,
        help="light model names (tests/data/onnx/light_NAME.onnx, else the onnx wheel's) or paths to .onnx files",
    )
    ap.add_argument(
        "--as-shipped",
        action="store_true",
        help="time the shipped files (weights as ConstantOfShape: graph work only, no weight conversion) "
        "instead of randomized copies; errors are then meaningless (uniform softmax) and not shown",
    )
    args = ap.parse_args()
    ort.set_default_logger_severity(3)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for spec in args.models:
            if spec.endswith(".onnx") or os.sep in spec:
                # A model anywhere: a path, not a light model's name.
                shipped, name = os.path.abspath(spec), os.path.splitext(os.path.basename(spec))[0]
            else:
                shipped, name = light_path(spec), spec
            if not os.path.exists(shipped):
                sys.exit(f"{spec}: no such model ({shipped})")
            src = os.path.join(d, f"{name}.onnx")
            if args.as_shipped:
                # Initializers listed as inputs make onnxconverter-common's
                # output fail to load; drop them from the inputs only.
                m = onnx.load(shipped)
                names = {i.name for i in m.graph.initializer}
                keep = [i for i in m.graph.input if i.name not in names]
                del m.graph.input[:]
                m.graph.input.extend(keep)
                m.ir_version = max(m.ir_version, 4)  # IR 3 wants initializers listed as inputs
                onnx.save(m, src)
            else:
                randomize(shipped, src, 0)
            m = onnx.load(src)
            nodes = len(m.graph.node)
            shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
            x = [np.random.default_rng(seed).random(shape, dtype=np.float32) for seed in range(1, 1 + args.inputs)]
            ref = run(m.SerializeToString(), x)

            # mpc: best of N in one process, and the first run of each of 3 processes.
            out = os.path.join(d, f"{name}_fp16.onnx")
            cmd = [args.mpc, "lower", src, "--precision", "fp16", "--emit", "onnx", "-o", out]
            best_mpc, best_cold, best_wall = float("inf"), float("inf"), float("inf")
            for k in range(3):
                t0 = time.perf_counter()
                b = subprocess.run(cmd + ["--repeat", str(args.repeat if k == 0 else 1)], capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if b.returncode:
                    sys.exit(f"{name}: mpc failed:\n{b.stderr}")
                if k == 0:
                    best_mpc = ms(b.stderr, "best")
                else:
                    best_wall = min(best_wall, wall * 1e3)
                    best_cold = min(best_cold, ms(b.stderr, "emitted in"))
            m16 = onnx.load(out)
            y16 = run(m16.SerializeToString(), x)

            # onnxconverter-common, best of N.
            # An output that nodes also read is copied out by an Identity
            # first: onnxconverter-common mistypes it otherwise (with
            # keep_io_types the FP16 model fails to load).
            m_occ = outputs_via_identity(onnx.load(src))
            best_conv = float("inf")
            for _ in range(args.repeat):
                copy = onnx.ModelProto()
                copy.CopyFrom(m_occ)
                t0 = time.perf_counter()
                c16 = float16.convert_float_to_float16(copy, keep_io_types=True)
                best_conv = min(best_conv, (time.perf_counter() - t0) * 1e3)
            yc = run(c16.SerializeToString(), x)

            casts = lambda mm: sum(n.op_type == "Cast" for n in mm.graph.node)
            rows.append(
                (
                    name,
                    nodes,
                    casts(m16),
                    casts(c16),
                    fp32_nodes(m16),
                    fp32_nodes(c16),
                    mean_err(y16, ref, 0),
                    mean_err(yc, ref, 0),
                    mean_err(y16, ref, 1),
                    mean_err(yc, ref, 1),
                    best_mpc / nodes * 1e3,
                    best_cold / nodes * 1e3,
                    best_wall / nodes * 1e3,
                    best_conv / nodes * 1e3,
                )
            )
    print(
        "| model | ONNX nodes | casts mpc | casts occ | FP32 nodes mpc | FP32 nodes occ "
        "| out err mpc | out err occ | logit err mpc | logit err occ "
        "| mpc µs/node | mpc cold µs/node | mpc wall µs/node | occ µs/node | occ / mpc | occ / mpc cold |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if args.as_shipped:
            # Weights of 0.02 everywhere overflow FP16 in these models: no errors to show.
            r = r[:6] + (float("nan"),) * 4 + r[10:]
        print(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.3e} | {r[7]:.3e} | {r[8]:.3e} | {r[9]:.3e} "
            f"| {r[10]:.2f} | {r[11]:.2f} | {r[12]:.1f} | {r[13]:.1f} | {r[13] / r[10]:.0f}× | {r[13] / r[11]:.0f}× |"
        )


if __name__ == "__main__":
    main()
