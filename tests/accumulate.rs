//! Gradient accumulation (`optimizer.accumulate: N`): what master-weights
//! writes, and that N micro-batches of B rows train as one batch of N·B.
//!
//! The bound. The loss is a mean over the batch, so the graph divides the
//! sum of the N micro-batch gradients by N. With B a power of two, every
//! per-row value of a micro-batch (loss gradient, activations' gradients)
//! is exactly N times the big batch's (the mean's 1/B against 1/(N·B),
//! scaled by the same loss scale S), so the two runs differ only in how
//! the per-row terms t_i of each gradient element (`a_i·dy_i` of a weight,
//! `dy_i` of a bias) are summed: the big batch as one dot product of N·B
//! terms, the micro-batches as N dot products of B terms whose results are
//! added in FP32 (3 more additions for N = 4); the division by N and the
//! unscale by S (powers of two) are exact. A dot product of n terms is
//! within γ_n·Σ|t_i| of the exact sum, γ_n = n·u/(1 − n·u), u = 2⁻²⁴,
//! whatever its order (Higham, Accuracy and Stability, §3.1), so
//!
//!   fp32: |g_micro − g_big| ≤ (γ_{N·B} + γ_{B+N−1}) · Σ|t_i| / S,
//!
//! a few ulps of Σ|t_i| times N·B. In FP16 each weight gradient (a matmul
//! output) is also rounded once to f16 (u₁₆ = 2⁻¹¹) in the big batch and
//! once per micro-batch: at most u₁₆·Σ|t_i| each side, and 2⁻²⁵ absolute
//! per rounding where the result falls below f16's normal range:
//!
//!   fp16: |g_micro − g_big| ≤ ((γ_{N·B} + γ_{B+N−1})·(1 + u₁₆) + 2·u₁₆) · Σ|t_i| / S + 2⁻²⁴ / S.
//!
//! The per-row values scale exactly only in f16's normal range: the test
//! checks that every per-row gradient operand is 0 or normal (the loss
//! scale's purpose). The loss, a mean of non-negative terms, is within
//! (γ_{N·B} + γ_{B+N−1} + u)·L. After one SGD step the params are within
//! lr·bound + 2⁻²³·|p| (the update's own rounding).

use std::collections::BTreeMap;

use mpc::exec::{init_state, CpuBackend, RunOptions, Session, State, Tensor};
use mpc::passes::{self, LossScale, Options};
use mpc::train::data::{synthetic_batch, Layout};
use mpc::{DType, Graph, Op};

const B: usize = 8;
const N: usize = 4;

/// A two-layer classifier with batch `batch`, SGD, accumulating `accumulate`.
fn model(batch: usize, accumulate: u32, optimizer: &str) -> String {
    let acc = if accumulate > 1 { format!(", \"accumulate\": {accumulate}") } else { String::new() };
    format!(
        r#"{{
  "format": "mpc/1",
  "name": "two_layer",
  "inputs": [
    {{"name": "x", "shape": [{batch}, 8]}},
    {{"name": "labels", "shape": [{batch}], "dtype": "i32"}}
  ],
  "params": [
    {{"name": "w1", "shape": [8, 16], "init": {{"kind": "kaiming_normal"}}}},
    {{"name": "b1", "shape": [16], "init": {{"kind": "normal", "std": 0.1}}}},
    {{"name": "w2", "shape": [16, 4], "init": {{"kind": "xavier_uniform"}}}},
    {{"name": "b2", "shape": [4], "init": {{"kind": "zeros"}}}}
  ],
  "forward": [
    {{"name": "h1", "op": "matmul", "inputs": ["x", "w1"]}},
    {{"name": "h1b", "op": "add", "inputs": ["h1", "b1"]}},
    {{"name": "a1", "op": "relu", "inputs": ["h1b"]}},
    {{"name": "logits", "op": "matmul", "inputs": ["a1", "w2"]}},
    {{"name": "logits_b", "op": "add", "inputs": ["logits", "b2"]}},
    {{"name": "loss", "op": "cross_entropy", "inputs": ["logits_b", "labels"]}}
  ],
  "loss": "loss",
  "optimizer": {{{optimizer}{acc}}}
}}"#
    )
}

const SGD: &str = r#""kind": "sgd", "lr": 0.5"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Precision {
    Fp32,
    Fp16,
}

const SCALE: f64 = 1024.0;

fn lowered(text: &str, p: Precision) -> Graph {
    let mut g = mpc::parse_str(text).unwrap();
    mpc::verify(&g).unwrap();
    match p {
        Precision::Fp32 => passes::lower_fp32(&mut g, &Options::default()).unwrap(),
        Precision::Fp16 => {
            let ls = LossScale::Dynamic { init: SCALE, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2 };
            let opts = Options { loss_scale: Some(ls), verify_each: true, ..Options::default() };
            passes::lower(&mut g, &opts).unwrap();
        }
    }
    g
}

/// Rows `lo..hi` of a batch whose inputs are `[rows, ...]`.
fn rows(batch: &State, lo: usize, hi: usize) -> State {
    batch
        .iter()
        .map(|(name, t)| {
            let dims = &t.shape().0;
            let per: usize = dims[1..].iter().map(|&d| d as usize).product();
            let idx: Vec<usize> = (lo * per..hi * per).collect();
            let mut shape = dims.clone();
            shape[0] = (hi - lo) as u64;
            (name.clone(), Tensor::new(shape, t.data().gather(&idx)).unwrap())
        })
        .collect()
}

/// The gradient each optimizer op reads, by param name.
fn optimizer_grads(g: &Graph) -> BTreeMap<String, String> {
    g.node_ids()
        .filter(|&n| matches!(g.node(n).op(), Op::Sgd { .. }))
        .map(|n| {
            let ins = g.inputs(n);
            (g.node(ins[0].node).name().to_string(), g.value_name(ins[1]).to_string())
        })
        .collect()
}

/// Per param: the values whose rows make its gradient in `g` (the
/// operands of its `matmul` with `transpose_a`, or the input of its
/// `sum_to`).
fn row_operands(g: &Graph) -> BTreeMap<String, Vec<String>> {
    g.gradients
        .iter()
        .map(|&(p, v)| {
            let raw = passes::master_weights::micro_gradient(g, v);
            let ins = g.inputs(raw.node);
            let names: Vec<String> = match g.node(raw.node).op() {
                Op::Matmul { transpose_a: true, transpose_b: false } => {
                    vec![g.value_name(ins[0]).into(), g.value_name(ins[1]).into()]
                }
                Op::SumTo { .. } => vec![g.value_name(ins[0]).into()],
                op => panic!("`{}`'s gradient is a {op:?}", g.node(p).name()),
            };
            (g.node(p).name().to_string(), names)
        })
        .collect()
}

fn gamma(n: usize) -> f64 {
    let u = f64::powi(2.0, -24);
    n as f64 * u / (1.0 - n as f64 * u)
}

/// Σ|t_i| per gradient element: |A|ᵀ·|D| for a weight, Σ_i |D_i| for a bias.
fn abs_terms(operands: &[&Tensor]) -> Vec<f64> {
    let d = operands.last().unwrap();
    let (m, cols) = (d.shape().0[0] as usize, d.shape().0[1..].iter().product::<u64>() as usize);
    let dv: Vec<f64> = d.to_f32_vec().iter().map(|&v| (v as f64).abs()).collect();
    match operands {
        [_] => (0..cols).map(|c| (0..m).map(|i| dv[i * cols + c]).sum()).collect(),
        [a, _] => {
            let k = a.shape().0[1] as usize;
            let av: Vec<f64> = a.to_f32_vec().iter().map(|&v| (v as f64).abs()).collect();
            let mut out = vec![0.0; k * cols];
            for r in 0..k {
                for c in 0..cols {
                    out[r * cols + c] = (0..m).map(|i| av[i * k + r] * dv[i * cols + c]).sum();
                }
            }
            out
        }
        _ => unreachable!(),
    }
}

/// One optimizer step on N·B rows, as one batch and as N micro-batches,
/// checked against the bound in the module comment.
fn micro_batches_match_one_big_batch(p: Precision) {
    let big = lowered(&model(N * B, 1, SGD), p);
    let small = lowered(&model(B, N as u32, SGD), p);
    let source = mpc::parse_str(&model(N * B, 1, SGD)).unwrap();
    let batch = synthetic_batch(&Layout::of(&source).unwrap(), 7, 0).unwrap();

    let big_state = init_state(&big, 11).unwrap();
    let small_state = init_state(&small, 11).unwrap();
    for name in ["w1", "b1", "w2", "b2"] {
        assert!(big_state[name].bit_eq(&small_state[name]), "{name}: the two graphs start apart");
    }

    // The big batch: its gradients and the rows they are summed from.
    let grads_big = optimizer_grads(&big);
    let operands = row_operands(&big);
    let mut fetch: Vec<String> = grads_big.values().cloned().collect();
    fetch.extend(operands.values().flatten().cloned());
    let mut sess = Session::new(&big, CpuBackend, 1, &big_state).unwrap();
    let rb = sess.step(&batch, 0, &RunOptions { fetch, ..RunOptions::default() }).unwrap();
    let after_big = sess.state().unwrap();

    // N micro-batches.
    let grads_small = optimizer_grads(&small);
    let fetch: Vec<String> = grads_small.values().cloned().collect();
    let opts = RunOptions { fetch, ..RunOptions::default() };
    let mut sess = Session::new(&small, CpuBackend, 1, &small_state).unwrap();
    let rs = mpc::train::optimizer_step(
        &mut sess,
        N as u64,
        0,
        &opts,
        |m| Ok::<_, String>(rows(&batch, m as usize * B, (m as usize + 1) * B)),
        |m, e| format!("micro-step {m}: {e}"),
    )
    .unwrap();
    let after_small = sess.state().unwrap();

    let (scale, u16) = match p {
        Precision::Fp32 => (1.0, 0.0),
        Precision::Fp16 => (SCALE, f64::powi(2.0, -11)),
    };
    let sum = gamma(N * B) + gamma(B + N - 1);
    let (rel, abs) = (sum * (1.0 + u16) + 2.0 * u16, if u16 > 0.0 { f64::powi(2.0, -24) } else { 0.0 });
    let lr = 0.5;
    let mut worst: f64 = 0.0;
    for (param, gname) in &grads_big {
        let ops: Vec<&Tensor> = operands[param].iter().map(|o| &rb.fetched[o]).collect();
        if p == Precision::Fp16 {
            // Per-row operands are 0 or normal f16: scaled by N exactly.
            for (o, t) in operands[param].iter().zip(&ops) {
                for v in t.to_f32_vec() {
                    assert!(v == 0.0 || v.abs() >= f32::powi(2.0, -14), "{param}: `{o}` holds the subnormal {v}");
                }
            }
        }
        let terms = abs_terms(&ops);
        let gb = rb.fetched[gname].to_f32_vec();
        let gs = rs.fetched[&grads_small[param]].to_f32_vec();
        let (pb, ps, p0) =
            (after_big[param].to_f32_vec(), after_small[param].to_f32_vec(), big_state[param].to_f32_vec());
        assert_eq!((gb.len(), gs.len(), terms.len()), (pb.len(), ps.len(), pb.len()), "{param}");
        for j in 0..gb.len() {
            let bound = (rel * terms[j] + abs) / scale;
            let d = (gb[j] as f64 - gs[j] as f64).abs();
            assert!(d <= bound, "{p:?} {param}[{j}]: gradients {} and {} differ by {d:e} > {bound:e}", gb[j], gs[j]);
            worst = worst.max(d / bound.max(f64::MIN_POSITIVE));
            let dp = (pb[j] as f64 - ps[j] as f64).abs();
            let pbound = lr * bound * (1.0 + 1e-6) + f64::powi(2.0, -23) * (pb[j] as f64).abs();
            assert!(dp <= pbound, "{p:?} {param}[{j}]: params differ by {dp:e} > {pbound:e}");
            assert_ne!(pb[j], p0[j], "{p:?} {param}[{j}]: the step did not move it");
        }
    }
    eprintln!("{p:?}: the largest difference is {worst:.3} of its bound");

    let (lb, ls) = (rb.loss.unwrap() as f64, rs.loss.unwrap() as f64);
    let lbound = (sum + f64::powi(2.0, -24)) * lb;
    assert!((lb - ls).abs() <= lbound, "{p:?}: losses {lb} and {ls} differ by more than {lbound:e}");
    if p == Precision::Fp16 {
        assert_eq!(rs.found_inf, Some(false));
        assert_eq!(rs.loss_scale, Some(SCALE as f32));
        assert_eq!(after_small["loss_scale_tracker"].item_f32(), Some(1.0), "the tracker counts optimizer steps");
    }
    // The accumulators start the next step from zero.
    assert_eq!(after_small["accumulate_step"].item_f32(), Some(0.0));
    for name in ["w1", "b1", "w2", "b2"] {
        assert!(after_small[&format!("{name}.grad_acc")].to_f32_vec().iter().all(|&v| v == 0.0), "{name}");
    }
}

#[test]
fn four_micro_batches_match_one_batch_in_fp32() {
    micro_batches_match_one_big_batch(Precision::Fp32);
}

#[test]
fn four_micro_batches_match_one_batch_in_fp16_with_loss_scaling() {
    micro_batches_match_one_big_batch(Precision::Fp16);
}

/// The fp16 model with batch B accumulating N, its data layout, and its
/// initial state for `seed`.
fn accumulating_fp16(seed: u64) -> (Graph, Layout, State) {
    let g = lowered(&model(B, N as u32, SGD), Precision::Fp16);
    let layout = Layout::of(&mpc::parse_str(&model(B, N as u32, SGD)).unwrap()).unwrap();
    let state = init_state(&g, seed).unwrap();
    (g, layout, state)
}

/// An overflow in the second of four micro-batches: the micro-steps before
/// the last change nothing but the accumulators and the counter; the last
/// finds the inf in the sum, skips the whole step (params bit-identical)
/// and backs the scale off once; the next step trains at the halved scale.
#[test]
fn an_overflow_in_one_micro_batch_skips_the_whole_step() {
    let (g, layout, state0) = accumulating_fp16(3);
    let mut sess = Session::new(&g, CpuBackend, 3, &state0).unwrap();
    let opts = RunOptions { inject_inf: Some(("dw1".into(), 1)), ..RunOptions::default() };
    for m in 0..N as u64 - 1 {
        let r = sess.step(&synthetic_batch(&layout, 3, m).unwrap(), m, &opts).unwrap();
        assert_eq!(r.found_inf, Some(m >= 1), "micro-step {m} sees the sum so far");
        let s = sess.state().unwrap();
        assert_eq!(s["accumulate_step"].item_f32(), Some((m + 1) as f32));
        for name in ["w1", "b1", "w2", "b2", "loss_scale", "loss_scale_tracker"] {
            assert!(s[name].bit_eq(&state0[name]), "micro-step {m} changed `{name}`");
        }
    }
    let last = N as u64 - 1;
    let r = sess.step(&synthetic_batch(&layout, 3, last).unwrap(), last, &opts).unwrap();
    assert_eq!((r.found_inf, r.loss_scale, r.growth_tracker), (Some(true), Some(SCALE as f32), Some(0.0)));
    let s = sess.state().unwrap();
    for name in ["w1", "b1", "w2", "b2"] {
        assert!(s[name].bit_eq(&state0[name]), "the skipped step changed `{name}`");
        assert!(s[&format!("{name}.grad_acc")].to_f32_vec().iter().all(|&v| v == 0.0), "{name}");
    }
    assert_eq!(s["loss_scale"].item_f32(), Some((SCALE / 2.0) as f32), "one backoff per step");
    assert_eq!(s["accumulate_step"].item_f32(), Some(0.0));

    // The next optimizer step is clean and trains.
    let batch = |m: u64| synthetic_batch(&layout, 3, m).map_err(|e| e.to_string());
    let r = mpc::train::optimizer_step(&mut sess, N as u64, 1, &opts, batch, |_, e| e.to_string()).unwrap();
    assert_eq!((r.found_inf, r.loss_scale), (Some(false), Some((SCALE / 2.0) as f32)));
    let s = sess.state().unwrap();
    assert!(!s["w1"].bit_eq(&state0["w1"]));
    assert_eq!(s["loss_scale_tracker"].item_f32(), Some(1.0));
    // Growth (interval 2) comes after two clean optimizer steps, not two micro-steps.
    let r = mpc::train::optimizer_step(&mut sess, N as u64, 2, &opts, batch, |_, e| e.to_string()).unwrap();
    assert_eq!(r.found_inf, Some(false));
    assert_eq!(sess.state().unwrap()["loss_scale"].item_f32(), Some(SCALE as f32));
}

/// The lowered graph of a small example with `accumulate: 2`, in fp16
/// with dynamic loss scaling and in fp32, reviewed like generated code.
#[test]
fn lowered_accumulation_snapshots() {
    let text = model(4, 2, r#""kind": "adamw", "lr": 0.001, "clip_grad_norm": 1.0"#);
    let mut g = mpc::parse_str(&text).unwrap();
    passes::lower(&mut g, &Options { verify_each: true, ..Options::default() }).unwrap();
    insta::assert_snapshot!("fp16_adamw_accumulate_2", mpc::format::emit::text::to_string(&g));
    // Lowering the lowered graph changes nothing.
    let again = mpc::parse_str(&mpc::format::emit::json::to_string(&g)).unwrap();
    let mut twice = again.clone();
    passes::lower(&mut twice, &Options { verify_each: true, ..Options::default() }).unwrap();
    assert_eq!(mpc::format::emit::text::to_string(&twice), mpc::format::emit::text::to_string(&again));

    let mut g = mpc::parse_str(&model(4, 2, SGD)).unwrap();
    passes::lower_fp32(&mut g, &Options { verify_each: true, ..Options::default() }).unwrap();
    insta::assert_snapshot!("fp32_sgd_accumulate_2", mpc::format::emit::text::to_string(&g));
}

/// The micro-batch gradient behind each `gradients` value is what backward
/// computed (`mpc compare`'s underflow statistics read it).
#[test]
fn micro_gradients_are_the_backward_values() {
    for p in [Precision::Fp32, Precision::Fp16] {
        let g = lowered(&model(B, N as u32, SGD), p);
        for &(param, v) in &g.gradients {
            let raw = passes::master_weights::micro_gradient(&g, v);
            let want = format!("d{}", g.node(param).name());
            assert_eq!(g.value_name(raw), want, "{p:?}");
            let dtype = if p == Precision::Fp16 && want.starts_with("dw") { DType::F16 } else { DType::F32 };
            assert_eq!(g.ty(raw).dtype, dtype, "{p:?} {want}");
        }
    }
}

/// The CUDA backend (through the SIMT emulation) runs what accumulation
/// adds (the i32 counter, its cast, the selects, the zero constants) as the
/// CPU does over three optimizer steps of four micro-batches, with an
/// overflow injected into the first step: the same skip decisions, scales,
/// counters and (zeroed) accumulators bit for bit; losses and params within
/// a few f32 ulps, as the emulation's warp reductions (softmax, the loss's
/// mean) sum in another order (tests/cuda_emu.rs).
#[test]
fn the_emulated_device_accumulates_as_the_cpu_does() {
    use mpc::exec::cuda::{backend::CudaBackend, emu::EmuGpu};
    let (g, layout, state0) = accumulating_fp16(5);
    let mut cpu = Session::new(&g, CpuBackend, 5, &state0).unwrap();
    let mut emu = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 5, &state0).unwrap();
    let opts = RunOptions { inject_inf: Some(("dw2".into(), 2)), ..RunOptions::default() };
    let batch = |m: u64| synthetic_batch(&layout, 5, m).map_err(|e| e.to_string());
    for s in 0..3 {
        let a = mpc::train::optimizer_step(&mut cpu, N as u64, s, &opts, batch, |_, e| e.to_string()).unwrap();
        let b = mpc::train::optimizer_step(&mut emu, N as u64, s, &opts, batch, |_, e| e.to_string()).unwrap();
        assert_eq!((a.found_inf, a.loss_scale), (b.found_inf, b.loss_scale), "step {s}");
        assert_eq!(a.found_inf, Some(s == 0), "step {s}");
        let (la, lb) = (a.loss.unwrap(), b.loss.unwrap());
        assert!((la - lb).abs() <= 4.0 * f32::EPSILON * la.abs(), "step {s}: losses {la} and {lb}");
    }
    let (a, b) = (cpu.state().unwrap(), emu.state().unwrap());
    for (name, t) in &a {
        if ["w1", "b1", "w2", "b2"].contains(&name.as_str()) {
            for (x, y) in t.to_f32_vec().into_iter().zip(b[name].to_f32_vec()) {
                assert!((x - y).abs() <= 8.0 * f32::EPSILON * x.abs().max(1e-3), "`{name}`: {x} and {y}");
            }
        } else {
            assert!(t.bit_eq(&b[name]), "`{name}` differs");
        }
    }
}
