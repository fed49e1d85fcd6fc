"""Times `mpc train` of two builds side by side (interleaved runs, medians of
whole-process wall time) and checks that they print the same final loss and
accuracy lines.

    python3 benches/train_ab.py OLD_MPC NEW_MPC [REPS]

NEW_MPC gets `--device cpu` (builds before the CUDA executor have no --device).
Run from the repository root.
"""
import subprocess, time, statistics, sys, os
old, new = sys.argv[1], sys.argv[2]
cases = [
  ("mlp digits fp16, 300 steps", ["train","ir-examples/mlp.json","--data","ir-examples/data/digits.csv.gz","--steps","300","--seed","1"]),
  ("gpt_block text fp16, 20 steps", ["train","ir-examples/gpt_block.json","--data","ir-examples/data/declaration.txt","--steps","20","--seed","1"]),
  ("cnn synthetic fp16, 10 steps", ["train","ir-examples/cnn.json","--steps","10","--seed","1"]),
]
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
print(f"load before: {os.getloadavg()}")
for name, args in cases:
    t = {"old": [], "new": []}
    outs = {}
    for r in range(reps):
        for which, binp, extra in (("old", old, []), ("new", new, ["--device", "cpu"])):
            t0 = time.perf_counter()
            p = subprocess.run([binp] + args + extra, capture_output=True, text=True)
            t[which].append(time.perf_counter() - t0)
            assert p.returncode == 0, p.stderr
            outs[which] = [l for l in p.stdout.splitlines() if "final train loss" in l or "accuracy" in l]
    mo, mn = statistics.median(t["old"]), statistics.median(t["new"])
    same = outs["old"] == outs["new"]
    print(f"| {name} | {mo:.3f} | {mn:.3f} | {mo/mn:.2f}x | {'same' if same else 'DIFFERENT: '+str(outs)} |")
print(f"load after: {os.getloadavg()}")
