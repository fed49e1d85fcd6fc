#!/usr/bin/env python3
"""Writes the ONNX chain of ../shared/bench/onnx_fp16_peers.py to a file, for whole-process runs.

Usage: python3 benches/chain_onnx.py OP_NODES OUT.onnx

The model is the peers script's `make` (layers of MatMul(W) -> Add(b) -> Relu on
[4, 16], a Softmax at the end; layers = (OP_NODES - 1) // 3, as benches/lower.rs
counts them), so `mpc lower OUT.onnx --emit onnx` converts what the peers convert.
"""
import importlib.util
import os
import sys

import onnx

if len(sys.argv) != 3:
    sys.exit(__doc__)
nodes, out = int(sys.argv[1]), sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("peers", os.path.join(here, "../../shared/bench/onnx_fp16_peers.py"))
peers = importlib.util.module_from_spec(spec)
sys.argv = sys.argv[:1]  # the peers script converts a model per argument; none here
spec.loader.exec_module(peers)
onnx.save(peers.make(max(1, (nodes - 1) // 3)), out)
