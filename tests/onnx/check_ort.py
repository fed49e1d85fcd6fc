#!/usr/bin/env python3
"""Checks mpc's ONNX exports with onnx and onnxruntime.

For each model given:

1. Export it with `mpc lower --emit onnx` in FP32 (`--precision fp32`), FP16,
   BF16 (native BFLOAT16 tensors) and BF16 emulated (`--onnx-bf16 emulated`:
   FLOAT tensors holding bf16 values, rounded after every op, which
   onnxruntime's CPU provider can run; it has almost no BF16 kernels).
2. `onnx.checker.check_model(m, full_check=True)` on every export (full
   check includes strict shape inference: the exporter's value_info must
   agree with ONNX's own inference).
3. Run the FP32 reference, the FP32, FP16 and BF16-emulated exports in
   onnxruntime (CPU, graph optimizations off) on the same seeded random
   inputs (mpc's: `--onnx-test-data` writes them with the outputs mpc's CPU
   executor computes) and tabulate, per output, the relative error
   max|y - y32| / max|y32| against the reference ("vs fp32"), and against
   what mpc's executor computes for the same lowering ("vs mpc"). The
   emulated BF16 export is mpc's numerics, so "vs mpc" is 0 where the f32
   sums of onnxruntime's kernels and mpc's agree to the bit; where they
   differ in the last bits (large convolutions), a bf16 rounding now and
   then falls the other way, and such 1-ulp flips propagate like rounding
   errors.
4. Fail when an error (either column) exceeds its bound (below).
5. For an ONNX model, also lower the reference directly (`mpc lower
   reference.onnx --emit onnx`, FP16 and BF16 emulated: in memory, no graph
   file) and fail unless onnxruntime computes exactly the same outputs from
   it as from the import-then-lower export (rows `fp16-direct`,
   `bf16e-direct`).

Models:

- `path.json` — an mpc graph. The exported outputs are the graph's
  `outputs`, or, when it lists none, the first input of the loss node (the
  logits of a `cross_entropy`); `path.json=a,b` names them. The reference is
  mpc's FP32 export.
- `path.onnx` or `light:NAME` (`light_NAME.onnx`: tests/data/onnx/ holds
  copies of the onnx wheel's backend test data, e.g. `light:resnet50`) — a
  real model, imported with `mpc import --loss cross-entropy`. These light models hold their weights as ConstantOfShape(0.02),
  so every channel is identical and the softmax output is exactly uniform
  (error 0, meaningless): the script first writes a randomized copy (each
  float ConstantOfShape becomes a seeded He-normal initializer, std
  sqrt(2/fan_in); batch-norm scale ~ 1 + 0.1 N(0,1), bias ~ 0.1 N(0,1), and
  statistics calibrated, layer by layer, to mean 0 and the mean square of
  the layer's input on four random inputs (floored at a hundredth of the
  layer's mean for channels a ReLU keeps at zero), so that activations stay at unit
  scale as in a trained network), drops initializers from graph.input
  (onnxconverter-common fails on models that list them) and adds the logits
  (the input of the final Softmax, when the model ends in one) as a second output. The reference is that
  randomized ONNX model itself; the logits are compared as well as the
  softmax output, and mpc's FP32 export is one more row (bound FP32_BOUND:
  two FP32 graphs differ only in summation order).

The bound. u is the unit roundoff of the low type: u = 2^-11 for FP16,
2^-8 for BF16. Every op that writes a low-precision value rounds it once
(mpc's numerics, and the exports': compute wide, round once), a relative
perturbation of at most u. To first order the output error is the sum of
those perturbations, each carried to the output by the rest of the network;
with weights that keep the activations' scale (He/Xavier init, normalization
layers) the carried perturbation stays about u relative to the output's
magnitude. So, with L the number of rounding ops on the longest path from
an input to the output (counted on the export: nodes writing a FLOAT16 or
BFLOAT16 value, except ops that only move or select values, such as
Reshape, Transpose, Relu, MaxPool, Gather, Concat),

    max|y - y32| / max|y32|  <=  c * L * u,   c = 1.

c = 1 is not fitted to the results: independent rounding errors add in
quadrature (about sqrt(L) * u), so c = 1 leaves a factor sqrt(L) for the
per-op amplification and for the low-precision kernels' own internal
roundings. For a softmax output s = softmax(z), |ds_i| <= 2 s_i |dz|_inf,
so its bound is 2 * max|z32| * (bound of z) relative to max s (plus c * u
for each rounding op after z).

The onnxconverter-common column (when the package is installed): its
float16 conversion of the FP32 reference (keep_io_types), for comparison.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper, TensorProto
import onnxruntime as ort

U = {"fp16": 2.0**-11, "bf16": 2.0**-8, "bf16e": 2.0**-8, "occ-fp16": 2.0**-11,
     "fp16-direct": 2.0**-11, "bf16e-direct": 2.0**-8}
C = 1.0
# Differences between two FP32 graphs come from summation order only:
# ~sqrt(K) * 2^-24 for reductions of length K <= 10^6.
FP32_BOUND = 1e-4
# Ops whose output holds exactly values of their inputs: they round nothing.
EXACT_OPS = {
    "Reshape", "Transpose", "Flatten", "Identity", "Relu", "MaxPool", "Gather", "Expand",
    "Concat", "Split", "Squeeze", "Unsqueeze", "Dropout", "Where", "ConstantOfShape",
}
LOW = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
# Random images the batch norms are calibrated on (the light models take one).
CALIBRATION_IMAGES = 4


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd):
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return time.time() - t


def elem_types(m):
    """Element type of every value in the graph (inputs, initializers, value_info, outputs)."""
    t = {}
    g = m.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t[v.name] = v.type.tensor_type.elem_type
    for i in g.initializer:
        t[i.name] = i.data_type
    return t


def rounding_depth(m, output):
    """L: the most rounding ops on a path from an input to `output`."""
    types = elem_types(m)
    depth = {}
    for n in m.graph.node:  # topologically sorted
        d = max([depth.get(i, 0) for i in n.input if i] or [0])
        out_t = types.get(n.output[0])
        if n.op_type == "Cast":
            rounds = out_t in LOW and types.get(n.input[0]) != out_t
        else:
            rounds = out_t in LOW and n.op_type not in EXACT_OPS
        for o in n.output:
            depth[o] = d + (1 if rounds else 0)
    return depth.get(output, 0)


def random_inputs(m, rng):
    """Seeded inputs: floats N(0, 1); integer ids in range for the Gather they index."""
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    bound = {}
    for n in g.node:
        if n.op_type == "Gather" and n.input[0] in inits:
            bound[n.input[1]] = inits[n.input[0]].dims[0]
    feeds = {}
    init_names = set(inits)
    for i in g.input:
        if i.name in init_names:
            continue
        tt = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        np_t = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(np_t, np.integer):
            feeds[i.name] = rng.integers(0, bound.get(i.name, 2), size=shape).astype(np_t)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np_t)
    return feeds


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # The reference numerics, not a faster rewrite of them.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- real models


def light_path(name):
    """tests/data/onnx/light_NAME.onnx (copies), else the onnx wheel's."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "onnx", f"light_{name}.onnx")
    if os.path.exists(here):
        return here
    d = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    return os.path.join(d, f"light_{name}.onnx")


def randomize(src, dst, seed):
    """A copy of `src` whose float ConstantOfShape weights are seeded random
    initializers, with initializers dropped from graph.input and the final
    Softmax's input added as an output. Returns (softmax output, logits)."""
    m = onnx.load(src)
    g = m.graph
    rng = np.random.default_rng(seed)
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    # How each weight is read, for its fan_in.
    readers = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            readers.setdefault(i, []).append((n, k))
    keep, new_inits = [], []
    for n in g.node:
        value = next((a.t for a in n.attribute if a.name == "value"), None)
        if n.op_type != "ConstantOfShape" or value is None or value.data_type != TensorProto.FLOAT:
            keep.append(n)
            continue
        shape = [int(s) for s in consts[n.input[0]]]
        name = n.output[0]
        role = readers.get(name, [(None, 0)])[0]
        node, port = role
        if node is not None and node.op_type == "BatchNormalization" and port >= 1:
            # scale, bias, mean, var: a plausible trained batch norm.
            w = {1: lambda: 1.0 + 0.1 * rng.standard_normal(shape),
                 2: lambda: 0.1 * rng.standard_normal(shape),
                 3: lambda: 0.1 * rng.standard_normal(shape),
                 4: lambda: rng.uniform(0.5, 1.5, shape)}[port]()
        else:
            if len(shape) >= 2:
                trans_b = node is not None and node.op_type == "Gemm" and port == 1 and any(
                    a.name == "transB" and a.i == 1 for a in node.attribute)
                if node is not None and node.op_type in ("Gemm", "MatMul") and port == 1 and not trans_b:
                    fan_in = shape[0]
                else:
                    fan_in = int(np.prod(shape[1:]))
            else:
                fan_in = shape[0] if shape else 1
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        new_inits.append(numpy_helper.from_array(np.asarray(w, dtype=np.float32), name))
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    # Shape inputs of the removed ConstantOfShape nodes are now unused.
    used = {i for n in g.node for i in n.input}
    kept_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    init_names = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names and i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    # A model ending in Softmax (most classifiers) exports its logits too; one
    # that ends before it (DenseNet-121's light model) exports its output.
    last = next((n for n in g.node if g.output and n.output[0] == g.output[0].name), None)
    if last is not None and last.op_type == "Softmax":
        logits, out = last.input[0], last.output[0]
    else:
        logits, out = None, g.output[0].name
    del g.value_info[:]  # the light models' are shapeless
    # IR version 3 wants every initializer listed as a graph input.
    m.ir_version = max(m.ir_version, 4)
    m = onnx.shape_inference.infer_shapes(m)
    g = m.graph
    if logits is not None:
        g.output.append(next(v for v in g.value_info if v.name == logits))
    rng = np.random.default_rng(seed)
    calibrate_batch_norms(m, [random_inputs(m, rng) for _ in range(CALIBRATION_IMAGES)])
    onnx.save(m, dst)
    return out, logits


def calibrate_batch_norms(m, batches):
    """Sets each BatchNormalization's statistics from its input on `batches`
    (the models take one image: a list of feeds), in order, so that every
    batch norm keeps the activations at unit scale as a trained one does
    (with random statistics, a ResNet's residual sums grow to ~5e4 at the
    logits and its softmax is one-hot). A channel that is (almost) zero on
    every image, as a ReLU's can be, gets a floor of a hundredth of the
    layer's mean: with its own mean square, near 0, the norm would divide
    by sqrt(eps) (DenseNet-121 calibrated on one image had FP32 logits of
    5.6e7)."""
    g = m.graph
    bns = [n for n in g.node if n.op_type == "BatchNormalization"]
    if not bns:
        return
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def ancestors(value, memo={}):
        if value in memo:
            return memo[value]
        n = producer.get(value)
        out = set()
        if n is not None:
            out.add(id(n))
            for i in n.input:
                out |= ancestors(i)
        memo[value] = out
        return out

    # One session with every statistic as an input and every batch norm's
    # input as an output; each round feeds the statistics found so far.
    stats = {}
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    pg = probe.graph
    for n in bns:
        for port in (3, 4):
            stats[n.input[port]] = numpy_helper.to_array(inits[n.input[port]])
    kept = [i for i in pg.initializer if i.name not in stats]
    del pg.initializer[:]
    pg.initializer.extend(kept)
    for name, v in stats.items():
        pg.input.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)))
    del pg.output[:]
    pg.output.extend(onnx.helper.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None) for n in bns)
    sess = session(probe.SerializeToString())
    pending = {id(n): n for n in bns}
    while pending:
        ready = [n for n in pending.values() if not (ancestors(n.input[0]) & set(pending))]
        runs = [sess.run([n.input[0] for n in ready], {**feeds, **stats}) for feeds in batches]
        for k, n in enumerate(ready):
            x = np.concatenate([r[k] for r in runs], axis=0)
            axes = tuple(a for a in range(x.ndim) if a != 1)
            # mean 0 and var the mean square: the batch norm scales each
            # channel to unit size. (Subtracting each channel's own mean
            # on one random image cancels |mean|/std-fold, up to 12 in
            # ResNet-50, and 50 such layers make the random network chaotic:
            # FP16's relative error grows to 0.36 at the last block.)
            stats[n.input[3]] = np.zeros(x.shape[1], dtype=np.float32)
            ms = (x.astype(np.float64) ** 2).mean(axis=axes)
            floor = 0.01 * ms.mean() if ms.mean() > 0 else 1.0
            stats[n.input[4]] = np.maximum(ms, floor).astype(np.float32)
            del pending[id(n)]
    for name, v in stats.items():
        inits[name].CopyFrom(numpy_helper.from_array(v, name))


def outputs_via_identity(m):
    """Each graph output that nodes also read, copied out by an Identity
    (onnxconverter-common mistypes such an output with keep_io_types)."""
    read = {i for n in m.graph.node for i in n.input}
    for o in m.graph.output:
        if o.name in read:
            copy = o.name + ".out"
            m.graph.node.append(onnx.helper.make_node("Identity", [o.name], [copy], name=copy))
            o.name = copy
    return m


def load_test_data(d, kind):
    """(name, array) of each d/kind_K.pb, in order."""
    out, k = [], 0
    while os.path.exists(os.path.join(d, f"{kind}_{k}.pb")):
        t = onnx.load_tensor(os.path.join(d, f"{kind}_{k}.pb"))
        out.append((t.name, numpy_helper.to_array(t)))
        k += 1
    return out


def rel_err(y, r):
    """max|y - r| / max|r| over the elements r holds finite; equal values
    (a NaN where r has a NaN, the same infinity) differ by 0, and a NaN or
    infinity of one side only makes the error infinite."""
    y = np.asarray(y, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    same = (y == r) | (np.isnan(y) & np.isnan(r))
    finite = np.isfinite(r) & np.isfinite(y)
    if (~same & ~finite).any():
        return math.inf
    d = np.abs(np.subtract(y, r, out=np.zeros_like(y), where=finite & ~same))
    scale = np.abs(np.where(np.isfinite(r), r, 0.0)).max() if r.size else 0.0
    worst = d.max() if d.size else 0.0
    return worst / scale if scale > 0 else worst


# ---------------------------------------------------------------- the check


def check(spec, args, work):
    name = os.path.splitext(os.path.basename(spec.split("=")[0].replace("light:", "light_")))[0]
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    timings = {}
    reference = None
    softmax_of = {}  # output position -> position of its logits
    if spec.startswith("light:") or spec.endswith(".onnx"):
        src = light_path(spec[len("light:"):]) if spec.startswith("light:") else spec
        reference = os.path.join(d, "reference.onnx")
        out, logits = randomize(src, reference, args.seed)
        model = os.path.join(d, "model.json")
        timings["import"] = run([args.mpc, "import", reference, "-o", model, "--loss", "cross-entropy"])
        graph = json.load(open(model))
        # The exported outputs: the softmax output and its logits (the
        # importer keeps ONNX's value names), in the reference's order.
        graph["outputs"] = [out] if logits is None else [out, logits]
        if logits is not None:
            softmax_of[0] = 1
        json.dump(graph, open(model, "w"))
    else:
        path, _, outs = spec.partition("=")
        graph = json.load(open(path))
        if outs:
            graph["outputs"] = outs.split(",")
        elif not graph.get("outputs"):
            loss = next(n for n in graph["forward"] if n["name"] == graph["loss"])
            graph["outputs"] = [loss["inputs"][0]]
        model = os.path.join(d, "model.json")
        # Keep the graph's folder for its weights file.
        if graph.get("weights"):
            graph["weights"] = os.path.join(os.path.abspath(os.path.dirname(path)), graph["weights"])
        json.dump(graph, open(model, "w"))
    # One export at a time: each is written, checked, run and compared, then
    # removed (unless --work keeps them), so a VGG-19 holds the reference and
    # one export on disk instead of all seven (2.8 GB).
    keep = args.work is not None

    def done_with(*paths):
        if not keep:
            for p in paths:
                if os.path.exists(p):
                    os.remove(p)

    def export(prec, flags, test_data):
        path = os.path.join(d, f"{prec}.onnx")
        cmd = [args.mpc, "lower", model, *flags, "--seed", str(args.seed), "--emit", "onnx", "-o", path]
        data = None
        if test_data:  # mpc's own outputs, to compare onnxruntime's with
            data = os.path.join(d, f"{prec}.data")
            cmd += ["--onnx-test-data", data]
        timings[f"export {prec}"] = run(cmd)
        t = time.time()
        onnx.checker.check_model(onnx.load(path), full_check=True)
        timings[f"check {prec}"] = time.time() - t
        return path, data

    def outputs_of(data):
        out = [a for _, a in load_test_data(data, "output")]
        inp = load_test_data(data, "input")
        if not keep:
            shutil.rmtree(data)
        return inp, out

    # FP32 first: its seeded test inputs are the same for every precision.
    fp32, fp32_data = export("fp32", ["--precision", "fp32"], True)
    inputs, mpc_fp32 = outputs_of(fp32_data)
    if reference is None:
        reference = fp32
    t = time.time()
    ref_sess = session(reference)
    # The reference's inputs are the model's: the same names, in order.
    ref_inputs = [i.name for i in ref_sess.get_inputs()]
    assert len(ref_inputs) == len(inputs), (ref_inputs, [n for n, _ in inputs])
    feeds = {r: a for r, (_, a) in zip(ref_inputs, inputs)}
    y32 = ref_sess.run(None, feeds)
    out_names = [o.name for o in ref_sess.get_outputs()]
    del ref_sess
    timings["run reference"] = time.time() - t
    rows = []
    failed = False
    outputs = {}
    mpc_outs = {"fp32": mpc_fp32}  # mpc's CPU-executor outputs per precision

    def compare(prec, p):
        nonlocal failed
        t = time.time()
        sess = session(p)
        ys = sess.run(None, {i.name: a for i, (_, a) in zip(sess.get_inputs(), inputs)})
        del sess
        timings[f"run {prec}"] = time.time() - t
        if len(ys) != len(y32):
            sys.exit(f"{name} {prec}: {len(ys)} outputs, the reference has {len(y32)}")
        outputs[prec] = ys
        if prec.endswith("-direct"):
            same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(ys, outputs[prec[: -len("-direct")]]))
            if not same:
                print(f"FAIL {name} {prec}: the direct lowering computes other values than import + lower")
                failed = True
        m = onnx.load(p, load_external_data=False)
        for k, (y, r) in enumerate(zip(ys, y32)):
            err = rel_err(y, r)
            base = prec[: -len("-direct")] if prec.endswith("-direct") else prec
            vs_mpc = rel_err(y, mpc_outs[base][k]) if base in mpc_outs else None
            out = m.graph.output[k].name
            L = rounding_depth(m, out)
            if prec == "fp32":
                bound = FP32_BOUND
            elif k in softmax_of:
                z = softmax_of[k]
                Lz = rounding_depth(m, m.graph.output[z].name)
                zmax = np.abs(np.asarray(y32[z], dtype=np.float64)).max()
                bound = 2 * zmax * C * Lz * U[prec] + C * max(L - Lz, 0) * U[prec]
            else:
                bound = C * L * U[prec]
            ok = err <= bound and (vs_mpc is None or vs_mpc <= bound)
            failed |= not ok
            rows.append((name, out_names[k], prec, L, err, vs_mpc, bound, "ok" if ok else "FAIL"))

    compare("fp32", fp32)
    if fp32 != reference:
        done_with(fp32)
    for prec, flags in [
        ("fp16", ["--precision", "fp16"]),
        ("bf16", ["--precision", "bf16"]),
        ("bf16e", ["--precision", "bf16", "--onnx-bf16", "emulated"]),
    ]:
        # onnxruntime has no BF16 kernels for most ops: the bf16 export is
        # only checked; bf16e computes the same roundings in FP32 ops.
        p, data = export(prec, flags, prec != "bf16")
        if data is not None:
            again, mpc_outs[prec] = outputs_of(data)
            assert [n for n, _ in again] == [n for n, _ in inputs], prec
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(again, inputs)), prec
            compare(prec, p)
        done_with(p)
    if reference != fp32:
        # `mpc lower model.onnx`: the ONNX model lowered for inference in
        # memory, no graph file; it must compute exactly what the
        # import-then-lower export computes.
        for prec, flags in [("fp16", ["--precision", "fp16"]), ("bf16e", ["--precision", "bf16", "--onnx-bf16", "emulated"])]:
            p = os.path.join(d, f"{prec}-direct.onnx")
            timings[f"direct {prec}"] = run([args.mpc, "lower", reference, *flags, "--emit", "onnx", "-o", p])
            onnx.checker.check_model(onnx.load(p), full_check=True)
            compare(f"{prec}-direct", p)
            done_with(p)
    if args.occ:
        from onnxconverter_common import float16
        occ = float16.convert_float_to_float16(outputs_via_identity(onnx.load(reference)), keep_io_types=True)
        p = os.path.join(d, "occ-fp16.onnx")
        onnx.save(occ, p)
        del occ
        compare("occ-fp16", p)
        done_with(p)
    return rows, failed, timings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="path.json[=out,...] | path.onnx | light:NAME")
    ap.add_argument("--mpc", default="target/release/mpc", help="the mpc binary")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="keep the exports here (default: a temporary folder)")
    ap.add_argument("--no-occ", dest="occ", action="store_false",
                    help="skip the onnxconverter-common FP16 column")
    ap.add_argument("--timings", action="store_true", help="print how long each step took")
    args = ap.parse_args()
    if args.occ:
        try:
            import onnxconverter_common  # noqa: F401
        except ImportError:
            args.occ = False
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}; "
          f"bound c*L*u with c = {C}, u = 2^-11 (fp16), 2^-8 (bf16); a softmax output: "
          f"2*max|z32|*(its logits' bound); fp32: {FP32_BOUND:g}; bf16e: the emulated BF16 export, "
          f"occ-fp16: onnxconverter-common's FP16 conversion of the reference")
    all_rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        for spec in args.models:
            t = time.time()
            rows, f, timings = check(spec, args, work)
            if not args.work:  # a VGG-19's exports take 2.8 GB
                shutil.rmtree(os.path.join(work, rows[0][0]), ignore_errors=True)
            all_rows += rows
            failed |= f
            if args.timings:
                log(f"{spec}: {time.time() - t:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    head = ("model", "output", "precision", "L", "vs fp32", "vs mpc", "bound", "")
    cells = [head] + [
        (r[0], r[1], r[2], str(r[3]), f"{r[4]:.3e}", "-" if r[5] is None else f"{r[5]:.3e}", f"{r[6]:.3e}", r[7])
        for r in all_rows
    ]
    w = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for c in cells:
        print("  ".join(x.ljust(w[i]) for i, x in enumerate(c)).rstrip())
    if failed:
        print("FAILED: an error exceeds its bound")
        sys.exit(1)
    print("all exports pass onnx.checker (full_check) and their bounds")


if __name__ == "__main__":
    main()
