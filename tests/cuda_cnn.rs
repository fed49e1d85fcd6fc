//! The CNN family trained through the CUDA backend on the SIMT emulation
//! against the CPU reference, from the same state and the same synthetic
//! batches: ir-examples/cnn.json (conv2d, batch_norm, relu, max and avg
//! pooling, flatten, matmul, SGD with momentum) and tests/onnx/cnn_ops.json
//! (grouped, dilated conv2d, frozen_batch_norm, erf, lrn, max pooling with
//! ceil-mode padding, split, avg pooling with and without
//! count_include_pad, concat),
//! lowered in FP16 and BF16 (autocast, loss scaling for FP16) and in FP32
//! (`--precision fp32`: gradients and the optimizer only).
//! SqueezeNet imported from ONNX (tests/data/onnx/light_squeezenet.onnx:
//! `reduce_mean` and `broadcast_to` besides the ops above) trains the same
//! way in BF16 and FP32, its losses held as below ([`squeezenet`]).
//!
//! What may differ, and the tolerances that follow (tests/cuda_ops/cnn.rs):
//! pooling, batch norms, lrn, the copies, the elementwise ops, the
//! optimizer and the scaler give the CPU's bits; the emulated GEMM
//! accumulates as the CPU's does. Only the convolutions (a thread adding
//! its products in tap order where the CPU runs im2col and a blocked GEMM)
//! and the row sums of cross_entropy add in another order: a few f32 ulps
//! (2^-24 relative each). Where such a value is rounded to the low type it
//! can land one ulp `u` of that type apart (2^-11 relative for f16, 2^-8
//! for bf16), and those flips propagate (batch norm spreads one over its
//! channel's statistics).
//! - The loss, a mean of 32 (cnn) or 2 (cnn_ops) per-sample terms, each a
//!   smooth function of such values: held to half an ulp of the compute
//!   type, relative (2^-12 for f16, 2^-9 for bf16; 1e-5 in f32, where only
//!   f32 ulps differ), as tests/cuda_gpt.rs and `mpc selftest` do.
//! - found_inf and the loss scale are exact (the scaler only changes on an
//!   overflow or after `growth_interval` steps).
//! - SGD with momentum is linear in the gradients: buf' = μ·buf + g, p' =
//!   p - lr·buf'. A gradient element differs by (a) low-type flips, a few
//!   ulps u of the gradients' size (u = 2^-10 for f16, 2^-7 for bf16), and
//!   (b) the reordered sums, each within 2·γ(n)·Σ|terms| of the other
//!   side's, n at most [`LONGEST_SUM`] (γ(n) = n·2^-24/(1 - n·2^-24)); the
//!   terms' size is taken as the gradients', so e = max(8u, 2·γ(n)) relative
//!   (in fp32, where there are no flips, (b) alone: 2.4e-4). With the
//!   gradients' size measured by the tensor's largest |buf| (what they
//!   accumulate to), buf moves by e·max|buf| and p by lr times that each
//!   step: momentum buffers are held to e·max|buf| and params to
//!   e·lr·steps·max|buf|, both plus 2 f32 ulps of the tensor's largest
//!   magnitude for the final roundings. (8 f32 ulps of max|buf| instead of
//!   (b) would hold only barely in fp32: bn1_g's gradient Σ dy·x̂ cancels
//!   over 2048 terms, and its momentum differs by about 5e-6 of its value,
//!   0.91 of that.)
//! - Frozen statistics (cnn_ops' `mean`, `var`) are state that no step
//!   changes: bit-equal.

use std::time::Instant;

use mpc::exec::cuda::backend::CudaBackend;
use mpc::exec::cuda::emu::EmuGpu;
use mpc::exec::rng::SplitMix64;
use mpc::exec::{init_state, CpuBackend, RunOptions, Session};
use mpc::format::{Optimizer, OptimizerKind};
use mpc::onnx::{import, ImportOptions, Loss};
use mpc::passes::{self, Options};
use mpc::train::data::{synthetic_batch, Layout};
use mpc::{DType, Op};

const STEPS: u64 = 4;

/// The longest f32 sum that runs in another order on the two sides: conv1's
/// weight gradient in cnn.json (N·OH·OW = 32·8·8 products); cnn_ops' are
/// shorter.
const LONGEST_SUM: f64 = 2048.0;

fn train_both(path: &str, low: Option<DType>) {
    let text = std::fs::read_to_string(path).unwrap();
    let source = mpc::parse_str(&text).unwrap();
    let mut g = source.clone();
    match low {
        Some(low) => {
            passes::lower(&mut g, &Options { low, ..Options::default() }).unwrap();
        }
        None => {
            passes::lower_fp32(&mut g, &Options::default()).unwrap();
        }
    }
    let name = format!("{path} {}", low.map_or("fp32".to_string(), |d| d.to_string()));
    let layout = Layout::of(&source).unwrap();
    let state = init_state(&g, 0).unwrap();
    let mut cpu = Session::new(&g, CpuBackend::new(), 0, &state).unwrap();
    let mut dev = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).unwrap();
    let opts = RunOptions::default();
    let loss_tol = match low {
        Some(DType::F16) => 2f64.powi(-12),
        Some(_) => 2f64.powi(-9),
        None => 1e-5,
    };
    let (mut cpu_s, mut dev_s, mut worst_loss) = (0.0, 0.0, 0f64);
    for s in 0..STEPS {
        let batch = synthetic_batch(&layout, 0, s).unwrap();
        let t = Instant::now();
        let a = cpu.step(&batch, s, &opts).unwrap();
        cpu_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = dev.step(&batch, s, &opts).unwrap();
        dev_s += t.elapsed().as_secs_f64();
        let (la, lb) = (f64::from(a.loss.unwrap()), f64::from(b.loss.unwrap()));
        let rel = (la - lb).abs() / la.abs();
        worst_loss = worst_loss.max(rel);
        eprintln!(
            "{name} step {s}: loss cpu {la} device {lb} (rel {rel:.3e}), scale {:?}/{:?}, found_inf {:?}/{:?}",
            a.loss_scale, b.loss_scale, a.found_inf, b.found_inf
        );
        assert!(rel <= loss_tol, "{name} step {s}: loss {lb} on the device, {la} on the CPU");
        assert_eq!((a.found_inf, a.loss_scale), (b.found_inf, b.loss_scale), "{name} step {s}: the scaler");
        assert_ne!(a.found_inf, Some(true), "{name} step {s}: an overflow in the reference run");
    }
    eprintln!("{name}: {STEPS} steps, cpu {cpu_s:.2} s, emulated device {dev_s:.2} s, loss within {worst_loss:.3e}");
    let u = match low {
        Some(DType::F16) => 2f64.powi(-10),
        Some(_) => 2f64.powi(-7),
        None => 0.0,
    };
    let u32 = 2f64.powi(-24);
    let e = (8.0 * u).max(2.0 * LONGEST_SUM * u32 / (1.0 - LONGEST_SUM * u32));
    let lr = source.optimizer.as_ref().unwrap().lr;
    // The source's own state (cnn_ops' frozen statistics), which no step changes.
    let frozen: Vec<String> = source
        .node_ids()
        .map(|n| source.node(n))
        .filter(|n| matches!(n.op(), Op::State { .. }))
        .map(|n| n.name().to_string())
        .collect();
    let params: Vec<String> = g.params().map(|n| g.node(n).name().to_string()).collect();
    let (sa, sb) = (cpu.state().unwrap(), dev.state().unwrap());
    let max_abs = |t: &mpc::exec::Tensor| t.to_f32_vec().iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    // The momentum buffer of a param: the state entry named after it.
    let buf_of = |k: &str| sa.iter().find(|(b, _)| b.starts_with(&format!("{k}.")) && !params.contains(b));
    let (mut worst, mut bits, mut bad, mut worst_at) = (0f64, 0usize, Vec::new(), String::new());
    for (k, a) in &sa {
        let b = &sb[k];
        assert_eq!(a.ty(), b.ty(), "{k}");
        if a.bit_eq(b) {
            bits += 1;
        }
        let own = max_abs(a);
        let limit = if params.contains(k) {
            let (_, buf) =
                buf_of(k).unwrap_or_else(|| panic!("{name}: no momentum buffer for `{k}` in {:?}", sa.keys()));
            e * lr * STEPS as f64 * max_abs(buf) + 2f64.powi(-22) * own
        } else if frozen.contains(k) {
            0.0
        } else {
            e * own + 2f64.powi(-22) * own
        };
        for (x, y) in a.to_f32_vec().into_iter().zip(b.to_f32_vec()) {
            let d = (f64::from(x) - f64::from(y)).abs();
            if (d > limit || d.is_nan()) && bad.last().is_none_or(|b: &String| !b.contains(&format!("`{k}`"))) {
                bad.push(format!("{name} `{k}`: {y} on the device, {x} on the CPU (allowed {limit:e}, max {own:e})"));
            }
            if limit > 0.0 && d / limit > worst {
                worst = d / limit;
                worst_at = format!("`{k}` ({x} vs {y})");
            }
        }
    }
    eprintln!("{name}: final state: {bits} of {} tensors bit-equal, the rest within {worst:.3} of the tolerance (at {worst_at})", sa.len());
    assert!(bad.is_empty(), "{} tensors out of tolerance:\n{bad:#?}", bad.len());
}

#[test]
fn cnn_trains_alike_on_the_emulated_device_in_fp16() {
    train_both("ir-examples/cnn.json", Some(DType::F16));
}

#[test]
fn cnn_trains_alike_on_the_emulated_device_in_bf16() {
    train_both("ir-examples/cnn.json", Some(DType::Bf16));
}

#[test]
fn cnn_trains_alike_on_the_emulated_device_in_fp32() {
    train_both("ir-examples/cnn.json", None);
}

#[test]
fn cnn_ops_trains_alike_on_the_emulated_device_in_every_precision() {
    for low in [Some(DType::F16), Some(DType::Bf16), None] {
        train_both("tests/onnx/cnn_ops.json", low);
    }
}

/// SqueezeNet 1.0 imported from ONNX (tests/data/onnx/light_squeezenet.onnx,
/// its own input shape [1, 3, 224, 224]): conv2d, relu, max pooling with
/// ceil-mode padding, concat, dropout, and the global average pooling as
/// `reduce_mean` (its gradient a `broadcast_to`), trained on the emulated
/// device and on the CPU for [`SQUEEZENET_STEPS`] steps from the same state
/// (the file's biases, He-initialised random convolution weights) and
/// batches, in BF16 and FP32 (the file's constant weights overflow FP16 in
/// the forward pass on both devices). The losses are held as in [`train_both`]:
/// half an ulp of the compute type (2^-9 relative in bf16, 1e-5 in f32);
/// the scaler and found_inf exactly. The final state's largest relative
/// difference is printed, not held: the convolutions' sums here are up to
/// 111·111 products long, and after two steps the parameters have moved by
/// `lr` times a gradient whose reordered sums alone are a few f32 ulps.
fn squeezenet(low: Option<DType>) {
    let bytes = std::fs::read("tests/data/onnx/light_squeezenet.onnx").unwrap();
    let opts = ImportOptions {
        loss: Some(Loss::CrossEntropy),
        optimizer: Optimizer { momentum: Some(0.9), ..Optimizer::new(OptimizerKind::Sgd, 0.01) },
        weights_file: "model.safetensors".into(),
        input_shapes: vec![],
        dropout_seed: 0,
    };
    let im = import(bytes, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    mpc::onnx::raw::write_safetensors(&dir.path().join("model.safetensors"), &im.weights).unwrap();
    let source = im.graph;
    let ops: Vec<&str> = source.node_ids().map(|n| source.node(n).op().name()).collect();
    assert!(ops.contains(&"reduce_mean"), "the import pools with reduce_mean: {ops:?}");
    let mut g = source.clone();
    match low {
        Some(low) => {
            passes::lower(&mut g, &Options { low, ..Options::default() }).unwrap();
        }
        None => {
            passes::lower_fp32(&mut g, &Options::default()).unwrap();
        }
    }
    let lowered: Vec<&str> = g.node_ids().map(|n| g.node(n).op().name()).collect();
    assert!(lowered.contains(&"broadcast_to"), "reduce_mean's gradient is a broadcast_to: {lowered:?}");
    let name = format!("squeezenet {}", low.map_or("fp32".to_string(), |d| d.to_string()));
    let layout = Layout::of(&source).unwrap();
    let mut state = mpc::exec::init_state_with(&g, 0, Some(dir.path())).unwrap();
    // The light model's weights are all 0.02 (every channel alike, logits
    // of 7e9 whose cross-entropy cancels to 0 in f32): He-initialised
    // random convolution weights instead, so the steps learn something.
    let mut rng = SplitMix64::new(7);
    let params: Vec<String> = g.params().map(|n| g.node(n).name().to_string()).collect();
    for (k, t) in state.iter_mut() {
        let d = t.shape().dims().to_vec();
        if params.contains(k) && d.len() == 4 {
            let scale = (2.0 / (d[1] * d[2] * d[3]) as f64).sqrt();
            let v: Vec<f32> = (0..t.len()).map(|_| (rng.normal() * scale) as f32).collect();
            *t = mpc::exec::Tensor::from_f32(t.dtype(), d, &v).unwrap();
        }
    }
    let mut cpu = Session::new(&g, CpuBackend::new(), 0, &state).unwrap();
    let mut dev = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).unwrap();
    let opts = RunOptions::default();
    let loss_tol = if low.is_some() { 2f64.powi(-9) } else { 1e-5 };
    let (mut cpu_s, mut dev_s, mut worst_loss) = (0.0, 0.0, 0f64);
    for s in 0..SQUEEZENET_STEPS {
        let batch = synthetic_batch(&layout, 0, s).unwrap();
        let t = Instant::now();
        let a = cpu.step(&batch, s, &opts).unwrap();
        cpu_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = dev.step(&batch, s, &opts).unwrap();
        dev_s += t.elapsed().as_secs_f64();
        let (la, lb) = (f64::from(a.loss.unwrap()), f64::from(b.loss.unwrap()));
        let rel = if la == lb { 0.0 } else { (la - lb).abs() / la.abs() };
        worst_loss = worst_loss.max(rel);
        eprintln!(
            "{name} step {s}: loss cpu {la} device {lb} (rel {rel:.3e}), scale {:?}/{:?}, found_inf {:?}/{:?}",
            a.loss_scale, b.loss_scale, a.found_inf, b.found_inf
        );
        assert!(la.is_finite(), "{name} step {s}: the CPU's loss is {la}");
        assert!(rel <= loss_tol, "{name} step {s}: loss {lb} on the device, {la} on the CPU");
        assert_eq!((a.found_inf, a.loss_scale), (b.found_inf, b.loss_scale), "{name} step {s}: the scaler");
        assert_ne!(a.found_inf, Some(true), "{name} step {s}: an overflow in the reference run");
    }
    let (sa, sb) = (cpu.state().unwrap(), dev.state().unwrap());
    let (mut bits, mut worst, mut worst_at) = (0, 0f64, String::new());
    for (k, a) in &sa {
        let b = &sb[k];
        assert_eq!(a.ty(), b.ty(), "{k}");
        bits += usize::from(a.bit_eq(b));
        let own = a.to_f32_vec().iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
        for (x, y) in a.to_f32_vec().into_iter().zip(b.to_f32_vec()) {
            let d = (f64::from(x) - f64::from(y)).abs() / own.max(f64::MIN_POSITIVE);
            assert!(d.is_finite() || x.is_nan() == y.is_nan(), "{name} `{k}`: {y} on the device, {x} on the CPU");
            if d > worst {
                (worst, worst_at) = (d, format!("`{k}` ({x} vs {y})"));
            }
        }
    }
    eprintln!(
        "{name}: {SQUEEZENET_STEPS} steps, cpu {cpu_s:.2} s, emulated device {dev_s:.2} s, loss within {worst_loss:.3e}; \
         final state: {bits} of {} tensors bit-equal, the rest within {worst:.3e} of their largest magnitude (at {worst_at})",
        sa.len()
    );
}

const SQUEEZENET_STEPS: u64 = 2;

#[test]
fn imported_squeezenet_trains_alike_on_the_emulated_device_in_bf16() {
    squeezenet(Some(DType::Bf16));
}

#[test]
fn imported_squeezenet_trains_alike_on_the_emulated_device_in_fp32() {
    squeezenet(None);
}
