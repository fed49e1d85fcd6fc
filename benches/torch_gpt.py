#!/usr/bin/env python3
"""PyTorch's side of the GPT benchmark: the model `mpc gen gpt` writes, trained
the way mpc trains it, timed in PyTorch's modes.

The model is src/gen.rs's, layer for layer: learned token and position
embeddings (std 0.02), pre-norm blocks (layer_norm eps 1e-5; causal multi-head
attention with q, k, v and output projections with biases, dropout on the
attention weights; a 4x MLP with tanh-approximated GELU), a final layer norm
and an untied LM head without bias; every weight N(0, 0.02), biases 0, norm
gains 1. AdamW (lr 3e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.1 on every
parameter, as the generated graph sets no exclusions), global gradient-norm
clipping at 1.0, mean cross-entropy over batch x sequence next tokens.

Modes (`--modes`, comma-separated):
- eager-fp32: plain FP32 (TF32 off).
- eager-fp16: torch.autocast(float16) + GradScaler (init 2^16, growth 2,
  backoff 0.5, interval 2000: mpc's dynamic scaler), unscale before clipping.
- eager-bf16: torch.autocast(bfloat16), no scaler.
- compile-fp16, compile-bf16: the same under torch.compile.
Attention: `--attention sdpa` (F.scaled_dot_product_attention, what a PyTorch
user writes today) or `math` (the explicit matmul-softmax-matmul mpc's graph
spells out).

Each mode: --warmup steps, then --steps timed (torch.cuda.synchronize around
each step on a GPU); prints per mode the median ms/step, tokens/s, MFU as
llm.c computes it (flops per token = 6 N + 12 L H Q T, N the parameter count,
against --peak, default 989.4e12: an H100's dense BF16) and the peak memory
(torch.cuda.max_memory_allocated; on the CPU, the process's peak RSS).

The tiny configuration runs on the CPU in seconds (tests/torch_bench.rs runs
it when PyTorch is installed, so the script cannot rot):

    python3 benches/torch_gpt.py --device cpu --layers 2 --d-model 64 --heads 4 --seq 32 \\
        --vocab 65 --batch 2 --steps 2 --warmup 1 --modes eager-fp32,eager-bf16,eager-fp16
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, dropout, attention):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads, self.dropout, self.attention = heads, dropout, attention

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        p = self.dropout if self.training else 0.0
        if self.attention == "sdpa":
            ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            a = F.dropout(s.masked_fill(mask, float("-inf")).softmax(-1), p)
            ctx = a @ v
        x = x + self.o(ctx.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.tok, self.pos = nn.Embedding(a.vocab, a.d_model), nn.Embedding(a.seq, a.d_model)
        self.blocks = nn.ModuleList(Block(a.d_model, a.heads, a.dropout, a.attention) for _ in range(a.layers))
        self.lnf = nn.LayerNorm(a.d_model, eps=1e-5)
        self.head = nn.Linear(a.d_model, a.vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, tokens, targets):
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.lnf(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def params(a):
    """src/gen.rs's Gpt::parameters."""
    d, v, t = a.d_model, a.vocab, a.seq
    block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return v * d + t * d + a.layers * block + 2 * d + d * v


def peak_bytes(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(mode, a, dev):
    torch.manual_seed(a.seed)
    model = Gpt(a).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    kind, prec = mode.split("-")
    low = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[prec]
    scaler = torch.amp.GradScaler(dev, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
                                  growth_interval=2000, enabled=prec == "fp16")
    fwd = torch.compile(model) if kind == "compile" else model

    def step(tokens, targets):
        with torch.autocast(dev, dtype=low, enabled=low is not None):
            loss = fwd(tokens, targets)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    g = torch.Generator(device="cpu").manual_seed(a.seed)
    batches = [
        (torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(dev),
         torch.randint(0, a.vocab, (a.batch * a.seq,), generator=g).to(dev))
        for _ in range(2)
    ]
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for s in range(a.warmup + a.steps):
        tokens, targets = batches[s % 2]
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step(tokens, targets)
        if dev == "cuda":
            torch.cuda.synchronize()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    ms = statistics.median(times)
    tokens = a.batch * a.seq
    q = a.d_model // a.heads
    flops_per_token = 6 * params(a) + 12 * a.layers * a.heads * q * a.seq
    return {
        "mode": mode, "device": dev, "ms_per_step": ms * 1e3, "min_ms": min(times) * 1e3,
        "tokens_per_s": tokens / ms, "mfu": flops_per_token * tokens / ms / a.peak,
        "peak_bytes": peak_bytes(dev), "params": params(a), "first_loss": losses[0], "last_loss": losses[-1],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--attention", choices=["sdpa", "math"], default="sdpa")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak", type=float, default=989.4e12, help="FLOP/s the MFU is measured against")
    ap.add_argument("--modes", default="eager-fp32,eager-fp16,eager-bf16,compile-fp16,compile-bf16")
    ap.add_argument("--json", action="store_true", help="one JSON line per mode")
    a = ap.parse_args()
    if a.d_model % a.heads:
        sys.exit("--d-model must be a multiple of --heads")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for mode in a.modes.split(","):
        if mode not in {"eager-fp32", "eager-fp16", "eager-bf16", "compile-fp32", "compile-fp16", "compile-bf16"}:
            sys.exit(f"--modes: unknown mode `{mode}`")
        r = run(mode, a, a.device)
        rows.append(r)
        if a.json:
            print(json.dumps(r), flush=True)
    if not a.json:
        print(f"{'mode':13} {'ms/step':>9} {'tokens/s':>11} {'MFU':>6} {'peak MiB':>9} {'loss':>16}")
        for r in rows:
            print(f"{r['mode']:13} {r['ms_per_step']:9.2f} {r['tokens_per_s']:11.0f} {100 * r['mfu']:5.1f}% "
                  f"{r['peak_bytes'] / 2**20:9.0f} {r['first_loss']:7.3f}->{r['last_loss']:.3f}")


if __name__ == "__main__":
    main()
