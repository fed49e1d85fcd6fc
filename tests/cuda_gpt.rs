//! gpt_block (the transformer family) trained through the CUDA backend on
//! the SIMT emulation against the CPU reference, in FP16 and BF16, from the
//! same state and the same batches of ir-examples/data/declaration.txt (as
//! `mpc train --data` builds them).
//!
//! What may differ, and the tolerances that follow (kernels/norm.cu,
//! tests/cuda_ops.rs): the emulated GEMM accumulates as the CPU's does and
//! the elementwise kernels, casts, dropout, embeddings, the optimizer and
//! the scaler give the CPU's bits; only the row sums of layer_norm,
//! softmax and cross_entropy (and the f64 sums of global_norm and the loss
//! mean) add in another order, a few f32 ulps (2^-24 relative each). Where
//! such a value is rounded to the low type it can land one ulp `u` of that
//! type apart (2^-11 relative for f16, 2^-8 for bf16, half of the spacing
//! 2^-10 and 2^-7), and those flips propagate. The loss is a mean of 256
//! per-token terms, each a smooth function of such values, so a flip moves
//! it by a small fraction of `u`: held to half an ulp of the compute type,
//! relative (2^-12 for f16, 2^-9 for bf16), the bound `mpc selftest` uses
//! on a GPU, whose differences are of the same kind but more frequent.
//! - The dropout masks are bit-equal (the same counter-based hash of the
//!   same seed, node and step): checked on every step.
//! - found_inf and the loss scale are exact: the scaler's state changes
//!   only on an overflow or after `growth_interval` steps, and found_inf is
//!   a yes/no of values that are finite on both sides.
//! - The final Adam moments: `selftest::Tolerance::Emulated` (8 low-type
//!   ulps of each moment tensor's largest magnitude, plus 2 f32 ulps): a
//!   moment is a running mean of gradients, which differ by such flips.
//! - The final params: `2 · lr · steps`. Adam moves a param by about `lr`
//!   a step whatever its gradient's size (m̂/√v̂ is ±1 for a steady sign),
//!   so an element whose gradient is near zero, where the flips above can
//!   change its sign, may step +lr on one side and -lr on the other (seen:
//!   up to 2·lr after 3 steps in weights of both layers).
//! - The key biases `l*_bk` have a gradient that is zero in exact
//!   arithmetic (a softmax does not change when every score of its row
//!   shifts by the same q_i·bk), so both sides' gradients are rounding
//!   noise, and so are their moments: those are only checked to be noise,
//!   below 1e-4 of the largest first moment of the other params.

use std::path::Path;
use std::time::Instant;

use mpc::exec::cuda::backend::CudaBackend;
use mpc::exec::cuda::emu::EmuGpu;
use mpc::exec::{init_state, CpuBackend, RunOptions, Session};
use mpc::passes::{self, Options};
use mpc::train::data::Dataset;
use mpc::train::selftest::Tolerance;
use mpc::{DType, Op};

const STEPS: u64 = 3;

fn train_both(low: DType) {
    let text = std::fs::read_to_string("ir-examples/gpt_block.json").unwrap();
    let source = mpc::parse_str(&text).unwrap();
    let mut g = source.clone();
    passes::lower(&mut g, &Options { low, ..Options::default() }).unwrap();
    let data = Dataset::load_text(Path::new("ir-examples/data/declaration.txt"), &source, 0).unwrap();
    let state = init_state(&g, 0).unwrap();
    let mut cpu = Session::new(&g, CpuBackend::new(), 0, &state).unwrap();
    let mut dev = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).unwrap();
    // The dropout masks of both layers.
    let masks: Vec<String> = g
        .node_ids()
        .map(|n| g.node(n))
        .filter(|n| matches!(n.op(), Op::Dropout { .. }))
        .map(|n| n.output_name(1).to_string())
        .collect();
    assert_eq!(masks.len(), 2, "{masks:?}");
    let opts = RunOptions { fetch: masks.clone(), ..RunOptions::default() };
    let loss_tol = if low == DType::F16 { 2f64.powi(-12) } else { 2f64.powi(-9) };
    let (mut cpu_s, mut dev_s) = (0.0, 0.0);
    for s in 0..STEPS {
        let batch = data.train_batch(s).unwrap();
        let t = Instant::now();
        let a = cpu.step(&batch, s, &opts).unwrap();
        cpu_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = dev.step(&batch, s, &opts).unwrap();
        dev_s += t.elapsed().as_secs_f64();
        let (la, lb) = (f64::from(a.loss.unwrap()), f64::from(b.loss.unwrap()));
        let rel = (la - lb).abs() / la.abs();
        eprintln!(
            "{low} step {s}: loss cpu {la} device {lb} (rel {rel:.3e}), scale {:?}/{:?}, found_inf {:?}/{:?}, \
             grad_norm {:?}/{:?}",
            a.loss_scale, b.loss_scale, a.found_inf, b.found_inf, a.grad_norm, b.grad_norm
        );
        assert!(rel <= loss_tol, "{low} step {s}: loss {lb} on the device, {la} on the CPU");
        assert_eq!((a.found_inf, a.loss_scale), (b.found_inf, b.loss_scale), "{low} step {s}: the scaler");
        // bf16 has no loss scaling (found_inf None); fp16 must not overflow here.
        assert_ne!(a.found_inf, Some(true), "{low} step {s}: an overflow in the reference run");
        for m in &masks {
            let (x, y) = (&a.fetched[m], &b.fetched[m]);
            assert!(x.bit_eq(y), "{low} step {s}: the dropout mask `{m}` differs");
        }
    }
    eprintln!("{low}: {STEPS} steps, cpu {cpu_s:.2} s, emulated device {dev_s:.2} s");
    let lr = source.optimizer.as_ref().unwrap().lr;
    let params: Vec<String> = g.params().map(|n| g.node(n).name().to_string()).collect();
    let (sa, sb) = (cpu.state().unwrap(), dev.state().unwrap());
    let max_abs = |t: &mpc::exec::Tensor| t.to_f32_vec().iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let is_key_bias = |k: &str| k.starts_with('l') && k.contains("_bk.");
    let largest_m = sa.iter().filter(|(k, _)| k.ends_with(".adam_m") && !is_key_bias(k)).map(|(_, t)| max_abs(t));
    let largest_m = largest_m.fold(0f64, f64::max);
    let mut worst = 0f64;
    let mut bad = Vec::new();
    for (k, a) in &sa {
        let b = &sb[k];
        assert_eq!(a.ty(), b.ty(), "{k}");
        if is_key_bias(k) {
            let (x, y) = (max_abs(a), max_abs(b));
            assert!(x.max(y) <= 1e-4 * largest_m, "{low} `{k}`: {x:e} / {y:e} is not noise");
            continue;
        }
        let max_abs = max_abs(a);
        let (a, b) = (a.to_f32_vec(), b.to_f32_vec());
        let limit = if params.contains(k) {
            2.0 * lr * STEPS as f64 + 2f64.powi(-22) * max_abs
        } else {
            Tolerance::Emulated.state(Some(low), lr, STEPS, false, max_abs)
        };
        for (x, y) in a.into_iter().zip(b) {
            let d = (f64::from(x) - f64::from(y)).abs();
            if d > limit && bad.last().is_none_or(|b: &String| !b.contains(&format!("`{k}`"))) {
                bad.push(format!(
                    "{low} `{k}`: {y} on the device, {x} on the CPU (allowed {limit:e}, max {max_abs:e})"
                ));
            }
            if limit > 0.0 {
                worst = worst.max(d / limit);
            }
        }
    }
    eprintln!("{low}: final state within {worst:.3} of its tolerance");
    let shown: Vec<&String> = bad.iter().take(40).collect();
    assert!(bad.is_empty(), "{} elements out of tolerance:\n{shown:#?}", bad.len());
}

#[test]
fn gpt_block_trains_alike_on_the_emulated_device_in_fp16() {
    train_both(DType::F16);
}

#[test]
fn gpt_block_trains_alike_on_the_emulated_device_in_bf16() {
    train_both(DType::Bf16);
}
