#!/usr/bin/env python3
"""Whole-process `mpc lower` of chain graphs, two binaries interleaved (issue 17).

Usage: python3 benches/lower_ab.py BEFORE_MPC AFTER_MPC [--sizes 100000,1000000] [--runs 3]
       [--work DIR] [--onnx]

For each size, writes the chain with benches/chain_json.py (N forward op nodes), then runs
`MPC_TIMINGS=1 mpc lower chainN.json -o out.json` with each binary in turn, `--runs` times,
and prints per phase the median wall / user / system ms and the peak RSS (MiB) after it,
then the whole process as /usr/bin/time-style figures from getrusage, and the load average
around the runs. The two binaries' outputs must be byte-identical (checked every run): the
comparison is of the same work.

With --onnx, the chain is the ONNX model of benches/chain_onnx.py and each run is
`mpc lower chainN.onnx --emit onnx -o out.onnx` (the issue's second target).
"""
import argparse
import filecmp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(mpc, graph, out):
    env = dict(os.environ, MPC_TIMINGS="1")
    emit = ["--emit", "onnx"] if graph.endswith(".onnx") else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    p = subprocess.run([mpc, "lower", graph, *emit, "-o", out], env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"{mpc} failed on {graph}:\n{p.stderr}")
    phases = {}
    for line in p.stderr.splitlines():
        f = line.split()
        if len(f) == 7 and f[0] == "mpc-timings:" and f[1] != "phase":
            phases[f[1]] = [float(x) for x in f[2:]]
    whole = {
        "wall": wall * 1e3,
        "user": (after.ru_utime - before.ru_utime) * 1e3,
        "sys": (after.ru_stime - before.ru_stime) * 1e3,
        # ru_maxrss of RUSAGE_CHILDREN is the largest child's so far: take the phases' peak.
        "peak": max((v[4] for v in phases.values()), default=0.0),
    }
    return phases, whole


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work")
    ap.add_argument("--onnx", action="store_true", help="the ONNX chain, lowered with --emit onnx")
    a = ap.parse_args()
    ext, maker = (".onnx", "chain_onnx.py") if a.onnx else (".json", "chain_json.py")
    work = a.work or tempfile.mkdtemp(prefix="mpc-lower-ab-")
    os.makedirs(work, exist_ok=True)
    bins = {"before": a.before, "after": a.after}
    for n in [int(s) for s in a.sizes.split(",")]:
        graph = os.path.join(work, f"chain{n}{ext}")
        if not os.path.exists(graph):
            subprocess.run([sys.executable, os.path.join(HERE, maker), str(n), graph], check=True)
        got = {k: [] for k in bins}
        loads = [os.getloadavg()[0]]
        for _ in range(a.runs):
            outs = {}
            for k, mpc in bins.items():
                outs[k] = os.path.join(work, f"out-{k}{ext}")
                got[k].append(run(mpc, graph, outs[k]))
                loads.append(os.getloadavg()[0])
            if not filecmp.cmp(outs["before"], outs["after"], shallow=False):
                sys.exit(f"the outputs differ at {n} op nodes")
        print(f"\n{n} op nodes, {a.runs} runs each, load {min(loads):.2f}-{max(loads):.2f}")
        print("| phase | before: wall / user / sys ms | peak MiB | after: wall / user / sys ms | peak MiB |")
        print("|---|---|---|---|---|")
        # Phases either binary reports, in the order they ran.
        names = list(dict.fromkeys(list(got["before"][0][0]) + list(got["after"][0][0])))
        for ph in names + ["whole process"]:
            cells = []
            for k in bins:
                rows = [w if ph == "whole process" else p.get(ph) for p, w in got[k]]
                if None in rows:
                    cells.append("- | -")
                elif ph == "whole process":
                    med = [statistics.median(r[f] for r in rows) for f in ("wall", "user", "sys", "peak")]
                else:
                    med = [statistics.median(r[i] for r in rows) for i in (0, 1, 2, 4)]
                cells.append(f"{med[0]:.0f} / {med[1]:.0f} / {med[2]:.0f} | {med[3]:.0f}")
            print(f"| {ph} | {cells[0]} | {cells[1]} |")
        for k in bins:
            walls = sorted(w["wall"] for _, w in got[k])
            print(f"{k}: whole-process wall ms {', '.join(f'{x:.0f}' for x in walls)}")


if __name__ == "__main__":
    main()
