#!/usr/bin/env bash
# The side-by-side benchmark on a GPU (issue 15): mpc against PyTorch eager
# FP32, eager AMP (fp16 + GradScaler, bf16) and torch.compile AMP on GPT-2
# small (batch 8 x 1024 tokens), one table; then mpc's step-time model of
# the same step, to set beside the measured times.
#
#   scripts/gpu-bench.sh [BIN_DIR]      # BIN_DIR holds a prebuilt `mpc` (default: device-bin)
#
# Build here (the GPU machine has no Rust): cargo build --release &&
# mkdir -p device-bin && cp target/release/mpc device-bin/. Needs PyTorch
# with CUDA on the GPU machine. Aimed at under 8 minutes on an H100
# (torch.compile's two compilations are most of it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-device-bin}/mpc
[ -x "$BIN" ] || { echo "no executable $BIN: build it first (see the header of this script)"; exit 2; }
. scripts/cuda-env.sh
"$BIN" devices
python3 benches/side_by_side.py --mpc "$BIN" --device cuda --steps "${STEPS:-20}" --warmup "${WARMUP:-5}"
model=$(mktemp --suffix=.json)
"$BIN" gen gpt -o "$model"
"$BIN" explain --cost "$model" --gpu "${GPU:-h100}"
rm -f "$model"
