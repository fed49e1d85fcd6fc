//! The CUDA backend, run through the SIMT emulation (the kernel sources of
//! kernels/*.cu compiled for the host), against the CPU reference: whole
//! training runs of the examples, step by step.
//!
//! Tolerances, from the kernels' numerics (kernels/README.md): elementwise
//! ops, casts, the optimizers and loss scaling give the CPU's bits, and the
//! emulated GEMM accumulates in f32 with the same matrixmultiply kernel as
//! the CPU. What differs is summation order: the warp reductions of
//! `cross_entropy` (the log-sum-exp of a row) and of `sum_to` over a batch,
//! a few f32 ulps (2^-24 relative each) in a value, which can move an f16
//! rounding at a tie. So losses agree to 1e-5 relative (measured: equal
//! bits in all but one of 21 steps, that one 8e-8), and after four Adam
//! steps (each moving a param by at most about lr = 1e-3, insensitive to a
//! gradient's last bits) params and moments to 1e-6 + 1e-4 relative
//! (measured: at most 3e-8, one f32 ulp of the params).

use mpc::data::{synthetic_batch, Layout};
use mpc::exec::cuda::backend::CudaBackend;
use mpc::exec::cuda::emu::EmuGpu;
use mpc::exec::{init_state, CpuBackend, RunOptions, Session};
use mpc::passes::{self, LossScale, Options};
use mpc::DType;

fn lowered(path: &str, low: Option<DType>, scale: Option<LossScale>) -> (mpc::Graph, mpc::Graph) {
    let source = mpc::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut g = source.clone();
    match low {
        Some(low) => {
            passes::lower(&mut g, &Options { low, loss_scale: scale, ..Options::default() }).unwrap();
        }
        None => {
            passes::lower_fp32(&mut g, &Options::default()).unwrap();
        }
    }
    (source, g)
}

fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / b.abs().max(1e-6)
}

/// Trains `steps` steps on both backends and compares the losses.
fn agree(path: &str, low: Option<DType>, steps: u64) {
    let (source, g) = lowered(path, low, None);
    let layout = Layout::of(&source).unwrap();
    let state = init_state(&g, 2).unwrap();
    let mut cpu = Session::new(&g, CpuBackend, 2, &state).unwrap();
    let mut gpu = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 2, &state).unwrap();
    for s in 0..steps {
        let batch = synthetic_batch(&layout, 2, s).unwrap();
        let a = cpu.step(&batch, s, &RunOptions::default()).unwrap();
        let b = gpu.step(&batch, s, &RunOptions::default()).unwrap();
        let (la, lb) = (a.loss.unwrap(), b.loss.unwrap());
        assert!(rel(lb, la) <= 1e-5, "{path} {low:?} step {s}: cuda {lb} cpu {la}");
        assert_eq!(a.found_inf, b.found_inf, "{path} step {s}");
        assert_eq!(a.loss_scale, b.loss_scale, "{path} step {s}");
    }
    // The state came back from the device with every param and moment.
    let (sa, sb) = (cpu.state().unwrap(), gpu.state().unwrap());
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (k, t) in &sa {
        assert_eq!(t.ty(), sb[k].ty(), "{k}");
        for (a, b) in t.to_f32_vec().into_iter().zip(sb[k].to_f32_vec()) {
            assert!((a - b).abs() <= 1e-6 + 1e-4 * a.abs(), "{path} {low:?} `{k}`: cuda {b} cpu {a}");
        }
    }
}

#[test]
fn the_mlp_trains_alike_on_both_backends() {
    for low in [Some(DType::F16), Some(DType::Bf16), None] {
        agree("ir-examples/mlp.json", low, 4);
    }
}

#[test]
fn the_underflow_and_regression_examples_train_alike() {
    for path in ["ir-examples/underflow.json", "ir-examples/regression_mse.json", "ir-examples/mlp_backward.json"] {
        agree(path, Some(DType::F16), 3);
    }
}

/// An overflow injected into a gradient at step 1: on the device the step
/// is skipped (params and Adam moments bit-identical to before), and the
/// scale halves, exactly as on the CPU.
#[test]
fn an_injected_overflow_is_skipped_on_the_device() {
    let (source, g) = lowered("ir-examples/mlp.json", Some(DType::F16), None);
    let layout = Layout::of(&source).unwrap();
    let state = init_state(&g, 0).unwrap();
    let mut gpu = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).unwrap();
    let opts = RunOptions { inject_inf: Some(("dw2".into(), 1)), ..RunOptions::default() };
    let r0 = gpu.step(&synthetic_batch(&layout, 0, 0).unwrap(), 0, &opts).unwrap();
    assert_eq!((r0.found_inf, r0.loss_scale), (Some(false), Some(65536.0)));
    let before = gpu.state().unwrap();
    let r1 = gpu.step(&synthetic_batch(&layout, 0, 1).unwrap(), 1, &opts).unwrap();
    assert_eq!(r1.found_inf, Some(true));
    let after = gpu.state().unwrap();
    for (k, t) in &before {
        if k == "loss_scale" || k == "loss_scale_tracker" {
            continue;
        }
        assert!(t.bit_eq(&after[k]), "`{k}` changed on a skipped step");
    }
    assert_eq!(after["loss_scale"].item_f32(), Some(32768.0));
    let r2 = gpu.step(&synthetic_batch(&layout, 0, 2).unwrap(), 2, &opts).unwrap();
    assert_eq!((r2.found_inf, r2.loss_scale), (Some(false), Some(32768.0)));
}

/// After the first step the pool has every buffer a step needs: later
/// steps allocate nothing on the device.
#[test]
fn steps_after_the_first_allocate_nothing() {
    let (source, g) = lowered("ir-examples/mlp.json", Some(DType::F16), None);
    let layout = Layout::of(&source).unwrap();
    let state = init_state(&g, 0).unwrap();
    let mut gpu = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).unwrap();
    gpu.step(&synthetic_batch(&layout, 0, 0).unwrap(), 0, &RunOptions::default()).unwrap();
    let after_first = gpu.backend().allocations();
    for s in 1..4 {
        gpu.step(&synthetic_batch(&layout, 0, s).unwrap(), s, &RunOptions::default()).unwrap();
    }
    assert_eq!(gpu.backend().allocations(), after_first);
}

/// A graph with an op the CUDA backend cannot run yet is refused when the
/// session opens, naming the nodes.
#[test]
fn unsupported_ops_are_refused_up_front() {
    let (_, g) = lowered("ir-examples/gpt_block.json", Some(DType::F16), None);
    let state = init_state(&g, 0).unwrap();
    let e = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).err().unwrap().to_string();
    assert!(e.contains("does not run these ops yet") && e.contains("layer_norm"), "{e}");
}
