#!/usr/bin/env bash
# The prepared GPU check (docs/CUDA.md): everything the CUDA backend must
# show on a real device, in one command that prints one report.
#
#   scripts/gpu-check.sh [BIN_DIR]      # BIN_DIR holds a prebuilt `mpc` (default: device-bin)
#
# MPC_CHECK_DEVICE=cuda-emu runs the same checks through the SIMT emulation
# on the CPU: a rehearsal of the script on a machine without a GPU.
#
# Build here (the GPU machine has no Rust): cargo build --release &&
# mkdir -p device-bin && cp target/release/mpc device-bin/. Run from the
# repository root (it reads ir-examples/). Finishes in well under 5 minutes
# on an H100; exits 1 if any check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-device-bin}/mpc
DEV=${MPC_CHECK_DEVICE:-cuda}
[ -x "$BIN" ] || { echo "no executable $BIN: build it first (see the header of this script)"; exit 2; }

. scripts/cuda-env.sh

fail=0
section() { printf '\n== %s\n' "$1"; }
run() { echo "\$ mpc $*"; "$BIN" "$@"; local rc=$?; [ $rc -eq 0 ] || { echo "(exit $rc)"; fail=1; }; return $rc; }

section "devices"
run devices

section "every op of the MLP family on the device against the CPU reference"
run selftest --device "$DEV" --steps 8

# `mpc train` on both devices: the same data, seed and steps; the final
# losses must agree to the selftest's loss bound for the precision.
train_pair() {
    local name=$1; shift
    local out_cpu out_gpu
    out_cpu=$("$BIN" train "$@" --device cpu 2>&1) || { echo "$name: cpu run failed: $out_cpu"; fail=1; return; }
    local t0 t1
    t0=$(date +%s.%N)
    out_gpu=$("$BIN" train "$@" --device "$DEV" 2>&1) || { echo "$name: $DEV run failed: $out_gpu"; fail=1; return; }
    t1=$(date +%s.%N)
    local lc lg
    lc=$(grep -o 'final train loss [0-9.eE+-]*' <<<"$out_cpu" | awk '{print $4}')
    lg=$(grep -o 'final train loss [0-9.eE+-]*' <<<"$out_gpu" | awk '{print $4}')
    python3 - "$name" "$lc" "$lg" "$t0" "$t1" "$out_cpu" "$out_gpu" "$DEV" <<'PY' || fail=1
import sys
name, lc, lg, t0, t1, oc, og, dev = sys.argv[1:]
lc, lg = float(lc), float(lg)
rel = abs(lc - lg) / max(abs(lc), 1e-12)
acc = lambda o: next((l for l in o.splitlines() if l.startswith("test accuracy")), "-")
ok = rel <= 2e-2
print(f"{name:<20} cpu loss {lc:.6g}  {dev} loss {lg:.6g}  rel {rel:.2e}  {dev} wall {float(t1)-float(t0):.1f}s  {'ok' if ok else 'FAILED'}")
print(f"{'':<20} cpu: {acc(oc)} | {dev}: {acc(og)}")
sys.exit(0 if ok else 1)
PY
}

section "mpc train on the CPU and on the device"
train_pair "mlp digits fp16" ir-examples/mlp.json --data ir-examples/data/digits.csv.gz --steps 200 --seed 1
train_pair "mlp digits bf16" ir-examples/mlp.json --data ir-examples/data/digits.csv.gz --steps 200 --seed 1 --precision bf16
train_pair "underflow fp16" ir-examples/underflow.json --steps 200 --seed 1
train_pair "cnn synthetic fp16" ir-examples/cnn.json --steps 100 --seed 1
train_pair "gpt_block text fp16" ir-examples/gpt_block.json --data ir-examples/data/declaration.txt --steps 100 --seed 1
train_pair "gpt_block text bf16" ir-examples/gpt_block.json --data ir-examples/data/declaration.txt --steps 100 --seed 1 --precision bf16
# Fused: the NVRTC-generated chains and cuBLASLt's epilogue GEMMs (bias,
# relu, gelu storing its input, the bias gradients), which only a GPU runs.
train_pair "mlp digits fp16 fused" ir-examples/mlp.json --data ir-examples/data/digits.csv.gz --steps 200 --seed 1 --fuse
train_pair "gpt_block fp16 fused" ir-examples/gpt_block.json --data ir-examples/data/declaration.txt --steps 100 --seed 1 --fuse
train_pair "gpt_block bf16 fused" ir-examples/gpt_block.json --data ir-examples/data/declaration.txt --steps 100 --seed 1 --precision bf16 --fuse

# One CUDA graph per step: with graphs on (the default) the step is
# replayed after its warm-up, and every logged metric is the run without
# graphs' to the bit.
graph_pair() {
    local name=$1; shift
    local d; d=$(mktemp -d)
    local on off
    on=$("$BIN" train "$@" --device "$DEV" --cuda-graph on --log "$d/on.jsonl" 2>&1) || { echo "$name: graphs on failed: $on"; fail=1; return; }
    off=$("$BIN" train "$@" --device "$DEV" --cuda-graph off --log "$d/off.jsonl" 2>&1) || { echo "$name: graphs off failed: $off"; fail=1; return; }
    if cmp -s "$d/on.jsonl" "$d/off.jsonl" && grep -q 'cuda graphs: [1-9][0-9]* of' <<<"$on"; then
        echo "$name: graphs on = off, bit for bit; $(grep -o 'cuda graphs: [0-9]* of [0-9]* steps replayed' <<<"$on")"
    else
        echo "$name: graphs on and off differ, or nothing replayed:"; grep 'cuda graphs' <<<"$on"; fail=1
    fi
    rm -rf "$d"
}

section "one CUDA graph per step against launch by launch"
graph_pair "mlp digits fp16" ir-examples/mlp.json --data ir-examples/data/digits.csv.gz --steps 50 --seed 1
graph_pair "gpt_block text bf16" ir-examples/gpt_block.json --data ir-examples/data/declaration.txt --steps 20 --seed 1 --precision bf16
graph_pair "gpt_block fp16 fused" ir-examples/gpt_block.json --data ir-examples/data/declaration.txt --steps 20 --seed 1 --fuse

section "result"
if [ $fail -eq 0 ]; then echo "all GPU checks passed"; else echo "SOME GPU CHECKS FAILED"; fi
exit $fail
