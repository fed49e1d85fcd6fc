#!/usr/bin/env python3
"""Writes benches/lower.rs's chain as an mpc JSON training graph, for whole-process runs.

Usage: python3 benches/chain_json.py OP_NODES OUT.json

The graph is the one `cargo bench --bench lower` builds in memory (and
../shared/bench/onnx_fp16_peers.py in ONNX): layers of matmul(W) -> add(b) -> relu
on [4, 16], a softmax, and a reduce_sum loss, with SGD, so that `mpc lower` runs
grad, autocast, loss-scale and master-weights. OP_NODES counts the forward op
nodes (3 per layer + softmax); layers = (OP_NODES - 1) // 3, as in the bench.
"""
import sys


def write(op_nodes, out):
    layers = max(1, (op_nodes - 1) // 3)
    d = 16
    w = out.write
    w('{\n  "format": "mpc/1",\n  "name": "chain",\n')
    w(f'  "inputs": [\n    {{"name": "x", "shape": [4, {d}]}}\n  ],\n')
    w('  "params": [\n')
    for i in range(layers):
        w(f'    {{"name": "W{i}", "shape": [{d}, {d}], "init": {{"kind": "normal", "std": 0.1}}}},\n')
        sep = "," if i + 1 < layers else ""
        w(f'    {{"name": "b{i}", "shape": [{d}], "init": {{"kind": "zeros"}}}}{sep}\n')
    w('  ],\n  "forward": [\n')
    x = "x"
    for i in range(layers):
        w(f'    {{"name": "m{i}", "op": "matmul", "inputs": ["{x}", "W{i}"]}},\n')
        w(f'    {{"name": "a{i}", "op": "add", "inputs": ["m{i}", "b{i}"]}},\n')
        w(f'    {{"name": "r{i}", "op": "relu", "inputs": ["a{i}"]}},\n')
        x = f"r{i}"
    w(f'    {{"name": "y", "op": "softmax", "inputs": ["{x}"]}},\n')
    w('    {"name": "loss", "op": "reduce_sum", "inputs": ["y"], "axes": [0, 1]}\n')
    w('  ],\n  "loss": "loss",\n  "optimizer": {"kind": "sgd", "lr": 0.01}\n}\n')


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[2], "w") as f:
        write(int(sys.argv[1]), f)
