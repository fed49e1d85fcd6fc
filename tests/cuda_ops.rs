//! Op by op, the CUDA backend against the CPU reference: every op that
//! `cuda::backend::supports` accepts, in every dtype its kernels exist for,
//! run on `CudaBackend<EmuGpu>` (kernels/*.cu compiled for the host and run
//! by the SIMT emulation, GEMMs by the emulated GEMM) and on `CpuBackend`,
//! on the same inputs: odd sizes (1, 7, 257, more than one 256-thread
//! block, every bit pattern of f16 and bf16), NumPy broadcasts, both
//! matmul transposes, the edge values of the low types and the f32 values
//! at their rounding ties. One table of cases, one loop.
//!
//! Tolerances, per op class (u = 2^-24, the unit roundoff of f32):
//! - [`Tol::Exact`] for the elementwise ops, casts, constants, mse_grad,
//!   sum_to with the last axis kept and reduce_sum/reduce_mean (a thread
//!   per output adds in the CPU's order), log_softmax and its gradient (a
//!   thread per row, the CPU's order), loss scaling and the optimizers: the kernels widen their
//!   inputs to f32 exactly, do the CPU's f32 operations in the CPU's order
//!   (no contraction: `--fmad=false` on a GPU, `-ffp-contract=off` here;
//!   IEEE `/` and `sqrtf`; adam's `1 - b^step` by the same square and
//!   multiply as `f64::powi`; erf by the same f64 series) and round once to
//!   the output type, as the CPU does. The one place a GPU may differ,
//!   CUDA's `expf`/`logf`/`tanhf`/`exp`, is the host's libm on both sides
//!   here. So the results must be the same bits; a NaN matches any NaN
//!   (a GPU's conversions may make a canonical NaN).
//! - [`Tol::Bits`] for bit copies (identity, a cast to the same type,
//!   select, broadcast_to): every bit, NaN payloads included.
//! - [`Tol::Within`] for what sums in another order (sum_to with the last
//!   axis summed, cross_entropy and its gradient, mse, global_norm,
//!   matmul): a bound per output, computed from the inputs by
//!   the `*_bound(s)` functions below, each derived in its comment. The
//!   summation bound: an order of summing n terms in precision u is within
//!   γ(n-1)·Σ|x_i| of the exact sum, γ(k) = k·u/(1 - k·u) (Higham,
//!   *Accuracy and Stability of Numerical Algorithms*, §4.2 and §3.1 for
//!   dot products), so two orders are within 2·γ(n-1)·Σ|x_i| of each
//!   other. When both sides round their last step to a type, one ulp of it
//!   is added: half an ulp on each side, so that two results rounded from
//!   nearby values (on either side of a rounding boundary) can be one ulp
//!   apart however close the values were.
//!
//! Conversions from f64 and from integers to f16/bf16 (`constant`, integer
//! casts, the loss means) round once on both sides (round to odd in f32,
//! then nearest even: `exec::round`, `common.cuh`);
//! `f64_and_integer_roundings_to_f16_and_bf16_are_single` checks both
//! against an exact rounding at ties.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use half::{bf16, f16};
use mpc::exec::cuda::backend::{supports, CudaBackend};
use mpc::exec::cuda::emu::EmuGpu;
use mpc::exec::rng::SplitMix64;
use mpc::exec::{Backend, CpuBackend, Data, ExecError, OpCtx, Tensor};
use mpc::format::attrs::{allowed, op_from_raw, ATTRS};
use mpc::format::RawNode;
use mpc::ir::op::Init;
use mpc::ir::types::DType::{Bf16, Bool, F16, F32, I32, I64};
use mpc::{DType, Op, OpKind, TensorType};

const FLOATS: [DType; 3] = [F32, F16, Bf16];
const SEED: u64 = 0x6d70_635f_6f70_7321;
/// The unit roundoff of f32, 2^-24.
const U32: f64 = 1.0 / 16_777_216.0;
/// The unit roundoff of f64, 2^-53.
const U64: f64 = 1.0 / 9_007_199_254_740_992.0;

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// How the CUDA result must match the CPU's.
enum Tol {
    /// Every bit, NaN payloads included: the op copies bits.
    Bits,
    /// The same value: equal bits, except that a NaN matches any NaN.
    Exact,
    /// The (single) output within `bound[i]` of the CPU's, plus one ulp of
    /// `round` at the larger result when both sides round their last step
    /// to that type. Non-finite results must agree (the same infinity, or
    /// both NaN).
    Within { bound: Vec<f64>, round: Option<DType> },
    /// One of the above per output, for ops with several outputs.
    PerOutput(Vec<Tol>),
}

struct Case {
    op: Op,
    inputs: Vec<Tensor>,
    tol: Tol,
    /// What the case exercises beyond its op and input types.
    note: String,
}

fn case(op: Op, inputs: Vec<Tensor>, tol: Tol) -> Case {
    Case { op, inputs, tol, note: String::new() }
}

impl Case {
    fn note(mut self, note: impl Into<String>) -> Case {
        self.note = note.into();
        self
    }

    fn label(&self) -> String {
        let types: Vec<String> = self.inputs.iter().map(|t| t.ty().to_string()).collect();
        let note = if self.note.is_empty() { String::new() } else { format!(", {}", self.note) };
        format!("{} ({}){note}", self.op.name(), types.join(" "))
    }

    /// The dtypes of the case for the summary: the inputs', then `->` the
    /// outputs' when they differ.
    fn dtypes(&self, outs: &[TensorType]) -> String {
        let mut ins: Vec<DType> = Vec::new();
        for t in &self.inputs {
            if !ins.contains(&t.dtype()) {
                ins.push(t.dtype());
            }
        }
        let mut o: Vec<DType> = Vec::new();
        for t in outs {
            if !o.contains(&t.dtype) {
                o.push(t.dtype);
            }
        }
        let names = |v: &[DType]| v.iter().map(|d| d.name()).collect::<Vec<_>>().join(",");
        if ins.is_empty() {
            names(&o)
        } else if o.iter().all(|d| ins.contains(d)) {
            names(&ins)
        } else {
            format!("{}->{}", names(&ins), names(&o))
        }
    }
}

/// The whole table.
fn cases(src: &mut Src) -> Vec<Case> {
    let mut v = Vec::new();
    constants_and_casts(src, &mut v);
    elementwise(src, &mut v);
    binary(src, &mut v);
    matmuls(src, &mut v);
    sums(src, &mut v);
    losses(src, &mut v);
    loss_scaling(src, &mut v);
    optimizers(src, &mut v);
    lr_schedules(&mut v);
    transformer::cases(src, &mut v);
    cnn::cases(src, &mut v);
    reduce::cases(src, &mut v);
    v
}

#[path = "cuda_ops/transformer.rs"]
mod transformer;

#[path = "cuda_ops/cnn.rs"]
mod cnn;

#[path = "cuda_ops/reduce.rs"]
mod reduce;

fn constants_and_casts(src: &mut Src, out: &mut Vec<Case>) {
    for d in DType::ALL {
        // Values the type holds or rounds; ties are tested apart (module comment).
        let values: &[f64] = match d {
            F32 => &[0.0, -0.0, 1.0, 0.1, -2.75, 65504.0, 6e-8, 3e38, 1e-45],
            F16 | Bf16 => &[0.0, -0.0, 1.0, 0.1, -2.75, 65504.0, 6e-8, -1e-5],
            I32 => &[0.0, 1.0, -7.0, 2_147_483_647.0, -2_147_483_648.0],
            I64 => &[0.0, 1.0, -7.0, 9.007_199_254_740_992e15, -1e15],
            _ => &[0.0, 1.0],
        };
        for (i, &value) in values.iter().enumerate() {
            let shape = [vec![], vec![7], vec![1041]][i % 3].clone();
            out.push(case(Op::Constant { value, ty: TensorType::new(d, shape) }, vec![], Tol::Exact));
        }
    }
    for d in FLOATS {
        for shape in [vec![], vec![7]] {
            out.push(case(Op::Seed, vec![src.values(d, &shape)], Tol::Exact));
        }
    }
    for from in DType::ALL {
        for to in DType::ALL {
            for shape in src.sizes(from) {
                let x = src.values(from, &shape);
                // A cast to the same type is a copy on both sides.
                let tol = if from == to { Tol::Bits } else { Tol::Exact };
                out.push(case(Op::Cast { to }, vec![x], tol));
            }
        }
    }
    for d in DType::ALL {
        for shape in src.sizes(d) {
            out.push(case(Op::Identity, vec![src.values(d, &shape)], Tol::Bits));
        }
    }
}

/// The unary ops and their gradients, on every size; the largest size holds
/// every edge value (and for f16/bf16 every bit pattern).
fn elementwise(src: &mut Src, out: &mut Vec<Case>) {
    let unary = [Op::Relu, Op::Gelu, Op::Tanh, Op::Sigmoid, Op::Exp, Op::Log, Op::Erf, Op::Sqrt];
    let grads = [Op::ReluGrad, Op::GeluGrad, Op::TanhGrad, Op::SigmoidGrad, Op::ErfGrad];
    // `value as f32` on both sides: exact, inexact (1/3), a power of two
    // beyond f16, small, and an f32 subnormal.
    let scales = [0.5, 1.0 / 3.0, 65536.0, -2.5e-3, 1e-40];
    for d in FLOATS {
        for (i, shape) in src.sizes(d).into_iter().enumerate() {
            for op in &unary {
                out.push(case(op.clone(), vec![src.values(d, &shape)], Tol::Exact));
            }
            let value = scales[i % scales.len()];
            out.push(case(Op::Scale { value }, vec![src.values(d, &shape)], Tol::Exact).note(format!("value {value}")));
            for op in &grads {
                // dy: the same values in another order, so every pair meets.
                let v = src.values(d, &shape);
                let dy = src.shuffled(&v);
                out.push(case(op.clone(), vec![dy, v], Tol::Exact));
            }
        }
    }
}

/// add, sub, mul, div: equal shapes of every size, broadcasts, and every
/// pair of edge values (65504 + 16 = 65520 rounds to inf in f16, 2^-12 ·
/// 2^-13 = 2^-25 is the tie below f16's smallest subnormal, ...).
fn binary(src: &mut Src, out: &mut Vec<Case>) {
    let broadcasts: [(&[u64], &[u64]); 10] = [
        (&[5, 7], &[7]),
        (&[5, 7], &[5, 1]),
        (&[5, 7], &[]),
        (&[], &[5, 7]),
        (&[7], &[5, 7]),
        (&[1, 7], &[5, 1]),
        (&[3, 1, 4], &[2, 1]),
        (&[300, 7], &[7]),
        (&[7, 1], &[300]),
        (&[2, 3, 4, 5], &[3, 1, 5]),
    ];
    for d in [F32, F16, Bf16, I32, I64] {
        for op in [Op::Add, Op::Sub, Op::Mul, Op::Div] {
            let mut shapes: Vec<(Vec<u64>, Vec<u64>)> =
                src.sizes(d).into_iter().take(4).map(|s| (s.clone(), s)).collect();
            shapes.extend(broadcasts.iter().map(|(a, b)| (a.to_vec(), b.to_vec())));
            let mut pairs: Vec<(Tensor, Tensor)> =
                shapes.iter().map(|(a, b)| (src.values(d, a), src.values(d, b))).collect();
            pairs.push(edge_pairs(d));
            for (a, b) in pairs {
                // An integer division by zero is an error on the CPU and 0 on
                // the device (kernels/README.md): divisors are nonzero.
                let b = if op == Op::Div && d.is_int() { nonzero(&b) } else { b };
                out.push(case(op.clone(), vec![a, b], Tol::Exact));
            }
        }
    }
}

/// A matmul's operands: (batch axes of a, of b, m, k, n).
type MatmulShape = (&'static [u64], &'static [u64], u64, u64, u64);

fn matmuls(src: &mut Src, out: &mut Vec<Case>) {
    // (batch of a, batch of b, m, k, n): k = 257 crosses the GEMM's
    // 256-deep blocks; a batch on one side only repeats the other operand.
    let shapes: [MatmulShape; 6] = [
        (&[], &[], 1, 1, 1),
        (&[], &[], 7, 13, 5),
        (&[], &[], 33, 257, 17),
        (&[3], &[], 5, 7, 4),
        (&[2], &[2], 6, 3, 9),
        (&[], &[4], 3, 300, 2),
    ];
    for d in FLOATS {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for &(ba, bb, m, k, n) in &shapes {
                let sa: Vec<u64> = ba.iter().copied().chain(if ta { [k, m] } else { [m, k] }).collect();
                let sb: Vec<u64> = bb.iter().copied().chain(if tb { [n, k] } else { [k, n] }).collect();
                let (a, b) = (src.normals(d, &sa, 1.0), src.normals(d, &sb, 1.0));
                out.push(matmul_case(a, b, ta, tb));
            }
        }
        // Non-finite entries: row 0 of A holds inf, row 1 a NaN, row 2 -inf.
        let mut x = src.normals(F32, &[7, 13], 1.0).to_f32_vec();
        (x[0], x[14], x[30]) = (f32::INFINITY, f32::NAN, f32::NEG_INFINITY);
        out.push(matmul_case(tf(d, &[7, 13], &x), src.normals(d, &[13, 5], 1.0), false, false).note("inf, nan"));
    }
}

fn matmul_case(a: Tensor, b: Tensor, ta: bool, tb: bool) -> Case {
    let bound = matmul_bound(&a, &b, ta, tb);
    let round = low(a.dtype());
    case(Op::Matmul { transpose_a: ta, transpose_b: tb }, vec![a, b], Tol::Within { bound, round })
        .note(format!("ta {ta} tb {tb}"))
}

fn sums(src: &mut Src, out: &mut Vec<Case>) {
    // With the last axis kept the kernel runs a thread per output (the
    // CPU's order); with it summed, a warp per output.
    let shapes: [(&[u64], &[u64]); 14] = [
        (&[7], &[]),
        (&[5, 7], &[7]),
        (&[5, 7], &[5, 1]),
        (&[5, 7], &[]),
        (&[5, 7], &[5, 7]),
        (&[300, 7], &[7]),
        (&[7, 300], &[7, 1]),
        (&[300, 7], &[300, 1]),
        (&[7, 300], &[300]),
        (&[3, 4, 5], &[4, 1]),
        (&[3, 4, 5], &[3, 1, 5]),
        (&[2, 3, 4, 5], &[3, 1, 1]),
        (&[1041], &[]),
        (&[4, 1, 6], &[1, 6]),
    ];
    for d in FLOATS {
        for &(from, to) in &shapes {
            out.push(sum_case(src.mixed(d, from), to));
        }
        // Non-finite inputs: inf, NaN, and (into one output of the first)
        // inf and -inf.
        let shapes: [(&[u64], &[u64]); 2] = [(&[300, 7], &[7]), (&[7, 300], &[7, 1])];
        for (from, to) in shapes {
            let mut x = src.mixed(F32, from).to_f32_vec();
            let c = from[1] as usize;
            (x[0], x[c + 1], x[2 * c + 2], x[3 * c + 2]) = (f32::INFINITY, f32::NAN, f32::INFINITY, f32::NEG_INFINITY);
            out.push(sum_case(tf(d, from, &x), to).note("inf, nan"));
        }
    }
}

fn sum_case(x: Tensor, to: &[u64]) -> Case {
    // With the last axis kept, a thread per output adds its inputs in
    // increasing index order in f32, as the CPU does: the same bits.
    let last_kept = match (x.shape().dims().last(), to.last()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    let tol = if last_kept { Tol::Exact } else { Tol::Within { bound: sum_bound(&x, to), round: low(x.dtype()) } };
    case(Op::SumTo { shape: to.to_vec() }, vec![x], tol)
}

fn losses(src: &mut Src, out: &mut Vec<Case>) {
    // (rows, classes): a warp per row, so 9 rows or more take more than one
    // block (2100 rows: more partial sums than the mean's 256 threads);
    // more classes than lanes.
    let shapes = [(1u64, 1u64), (7, 5), (300, 10), (3, 1000), (45, 33), (2100, 3)];
    let dlosses = [1.0f32, 65536.0, 0.37];
    for d in FLOATS {
        for l in [I32, I64] {
            for (i, &(rows, classes)) in shapes.iter().enumerate() {
                let mut x = src.normals(F32, &[rows, classes], 3.0).to_f32_vec();
                if rows > 1 {
                    x[0] = 60000.0; // a row dominated by one logit
                }
                let logits = tf(d, &[rows, classes], &x);
                let labels: Vec<i64> = (0..rows).map(|_| src.below(classes) as i64).collect();
                let labels = ti(l, &[rows], &labels);
                let dloss = dlosses[i % dlosses.len()];
                let (loss_bound, grad_bound) = cross_entropy_bounds(&logits, &labels, dloss);
                let inputs = vec![logits.clone(), labels.clone()];
                out.push(case(Op::CrossEntropy, inputs, Tol::Within { bound: vec![loss_bound], round: Some(d) }));
                let inputs = vec![Tensor::scalar_f32(dloss), logits, labels];
                out.push(case(Op::CrossEntropyGrad, inputs, Tol::Within { bound: grad_bound, round: low(d) }));
            }
        }
        for (i, shape) in [vec![], vec![7], vec![257], vec![3, 347], vec![70001]].into_iter().enumerate() {
            let (p, t) = (src.normals(d, &shape, 1.0), src.normals(d, &shape, 1.0));
            let bound = vec![mse_bound(&p, &t)];
            out.push(case(Op::Mse, vec![p.clone(), t.clone()], Tol::Within { bound, round: Some(d) }));
            // mse_grad: s = dloss·2/n and s·(p - t), the same f32 operations.
            let dloss = Tensor::scalar_f32(dlosses[i % dlosses.len()]);
            out.push(case(Op::MseGrad, vec![dloss, p, t], Tol::Exact));
        }
    }
}

fn loss_scaling(src: &mut Src, out: &mut Vec<Case>) {
    // unscale: grad · f32(1/f64(scale)); 0 gives an infinite inverse.
    let scales = [65536.0f32, 3.0, 2f32.powi(-14), 0.0, 1e30];
    for d in FLOATS {
        for (i, shape) in src.sizes(d).into_iter().enumerate() {
            let scale = scales[i % scales.len()];
            let inputs = vec![src.values(d, &shape), Tensor::scalar_f32(scale)];
            out.push(case(Op::Unscale, inputs, Tol::Exact).note(format!("scale {scale}")));
        }
    }

    // found_inf over several gradients of mixed types; the bad element sits
    // in the last block of its launch.
    let finite = |src: &mut Src, d: DType, n: u64, edge: f32| {
        let mut v = src.normals(F32, &[n], 1.0).to_f32_vec();
        v[0] = edge;
        tf(d, &[n], &v)
    };
    let with = |t: &Tensor, at: usize, bad: f32| {
        let mut v = t.to_f32_vec();
        v[at] = bad;
        tf(t.dtype(), t.shape().dims(), &v)
    };
    let g32 = finite(src, F32, 1041, 1e-40);
    let g16 = finite(src, F16, 1041, 65504.0);
    let gb = finite(src, Bf16, 7, bf16::MAX.to_f32());
    let all_f16 = src.values(F16, &[src.big(F16)]);
    let found = [
        vec![g32.clone(), g16.clone(), gb.clone()],
        vec![g32.clone(), with(&g16, 1040, f32::INFINITY), gb.clone()],
        vec![g32.clone(), g16.clone(), with(&gb, 3, f32::NAN)],
        vec![with(&g32, 1040, f32::from_bits(0x7f80_0001)), gb.clone()],
        vec![tf(F32, &[1], &[f32::NEG_INFINITY])],
        vec![all_f16],
        vec![with(&src.normals(F32, &[70001], 1.0), 69999, f32::NAN)],
    ];
    for inputs in found {
        out.push(case(Op::FoundInf, inputs, Tol::Exact));
    }

    // scale_update: GradScaler's rule, f64 products rounded to f32.
    let updates: [(f64, f64, u32, f32, i32, f32); 10] = [
        (2.0, 0.5, 2000, 65536.0, 0, 0.0),
        (2.0, 0.5, 2000, 65536.0, 1998, 0.0),
        (2.0, 0.5, 2000, 65536.0, 1999, 0.0),        // grows
        (2.0, 0.5, 2000, f32::MAX, 1999, 0.0),       // would overflow: kept
        (2.0, 0.5, 2000, 65536.0, 7, 1.0),           // backs off
        (2.0, 0.5, 2000, 65536.0, 7, f32::NAN),      // NaN counts as found
        (2.0, 0.5, 2000, f32::from_bits(1), 3, 1.0), // to 2^-150: a tie, to 0
        (2.0, 0.5, 2000, 65536.0, i32::MAX, 0.0),    // the tracker saturates
        (2.0, 0.5, 2000, 3.0, 0, -0.0),              // -0 is not found
        (1.0001, 0.999, 1, 65536.0, 0, 0.0),         // grows by an inexact factor
    ];
    for (growth_factor, backoff_factor, growth_interval, scale, tracker, found) in updates {
        let op = Op::ScaleUpdate { growth_factor, backoff_factor, growth_interval };
        let inputs = vec![Tensor::scalar_f32(scale), Tensor::scalar_i32(tracker), Tensor::scalar_f32(found)];
        out.push(case(op, inputs, Tol::Exact).note(format!("scale {scale:e} tracker {tracker} found {found}")));
    }

    // select: found_inf nonzero (NaN and a subnormal count, -0 does not)
    // picks on_inf, bit for bit.
    let founds = [0.0f32, 1.0, f32::NAN, -0.0, f32::INFINITY, 1e-45];
    for (i, d) in DType::ALL.into_iter().enumerate() {
        for (j, &found) in founds.iter().enumerate() {
            let shape = [vec![], vec![7], vec![1041]][(i + j) % 3].clone();
            let inputs = vec![Tensor::scalar_f32(found), src.values(d, &shape), src.values(d, &shape)];
            out.push(case(Op::Select, inputs, Tol::Bits).note(format!("found {found}")));
        }
    }

    // global_norm over gradients of mixed types.
    let mut finite_edges: Vec<f32> = edges().into_iter().filter(|v| v.is_finite()).collect();
    let mut norms = vec![
        vec![tf(F32, &[1], &[3.0])],
        vec![g32, g16.clone(), gb.clone()],
        vec![src.normals(F16, &[70001], 100.0)],
        vec![src.normals(Bf16, &[3, 347], 1.0)],
        // f32::MAX squared, twice: the norm overflows f32.
        vec![tf(F32, &[finite_edges.len() as u64], &finite_edges)],
        vec![with(&g16, 1040, f32::INFINITY), gb.clone()],
        vec![g16, with(&gb, 6, f32::NAN)],
    ];
    finite_edges.retain(|v| v.abs() < 1e30);
    let n = finite_edges.len() as u64;
    norms.push(vec![tf(F32, &[n], &finite_edges), tf(F16, &[n], &finite_edges)]);
    for inputs in norms {
        let bound = vec![norm_bound(&inputs)];
        out.push(case(Op::GlobalNorm, inputs, Tol::Within { bound, round: Some(F32) }));
    }
}

/// The optimizers on every size: params and moments normal, gradients from
/// the edge values and random bit patterns. Exact: kernels/optim.cu is
/// src/exec/cpu/optim.rs operation for operation (attributes rounded to
/// f32 alike, no contraction, IEEE division and sqrtf, adam's bias
/// corrections in f64 by the same square and multiply as `f64::powi`).
fn optimizers(src: &mut Src, out: &mut Vec<Case>) {
    for d in FLOATS {
        for (i, shape) in src.sizes(d).into_iter().enumerate() {
            let p = src.normals(d, &shape, 1.0);
            let g = src.values(d, &shape);
            let buf = src.normals(d, &shape, 0.1);
            let (lr, weight_decay) = [(0.1, 0.0), (1e-3, 1e-4), (0.5, 0.01)][i % 3];
            // The lr as a last input (a schedule's f32 output) overrides the attribute.
            let lr_in = tf(F32, &[], &[[0.037, 3e-4, 0.0][i % 3]]);
            out.push(case(Op::Sgd { lr, weight_decay }, vec![p.clone(), g.clone()], Tol::Exact));
            let with_lr = vec![p.clone(), g.clone(), lr_in.clone()];
            out.push(case(Op::Sgd { lr, weight_decay }, with_lr, Tol::Exact).note("lr input"));
            let momentum = [0.9, 0.5, 0.0][i % 3];
            let op = Op::SgdMomentum { lr, momentum, weight_decay };
            out.push(case(op.clone(), vec![p.clone(), g.clone(), buf.clone()], Tol::Exact));
            out.push(case(op, vec![p.clone(), g.clone(), buf, lr_in.clone()], Tol::Exact).note("lr input"));
            for (j, step_type) in [I32, I64].into_iter().enumerate() {
                for decoupled in [false, true] {
                    let m = src.normals(d, &shape, 0.1);
                    let v: Vec<f32> = src.normals(F32, &shape, 0.1).to_f32_vec().iter().map(|x| x * x).collect();
                    let step = [1, 10, 1000, 100_000][(i + j) % 4];
                    let weight_decay = [0.0, 0.01][(i + j) % 2];
                    let op = Op::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, decoupled };
                    let mut inputs = vec![p.clone(), g.clone(), m, tf(d, &shape, &v), ti(step_type, &[], &[step])];
                    out.push(
                        case(op.clone(), inputs.clone(), Tol::Exact).note(format!("step {step} wd {weight_decay}")),
                    );
                    inputs.push(lr_in.clone());
                    out.push(case(op, inputs, Tol::Exact).note(format!("step {step} wd {weight_decay}, lr input")));
                }
            }
        }
    }
}

/// The learning-rate schedule at steps around its warmup and its end, from
/// both integer step types. Exact: the kernel is semantics::lr_schedule's
/// f64 arithmetic in its order, and cos is the host's libm on both sides
/// here (a GPU's is within 2 ulp of f64, which can move the f32 result only
/// at a rounding boundary).
fn lr_schedules(out: &mut Vec<Case>) {
    for (lr, warmup, total, min_lr) in [(3e-4, 10, 100, 0.0), (0.1, 0, 1000, 1e-5), (1.0, 5, 5, 0.5)] {
        for step_type in [I32, I64] {
            for step in [-3, 0, 1, 4, 5, 9, 10, 11, 50, 99, 100, 101, 999, 1000, 5000] {
                let op = Op::LrSchedule { lr, warmup, total, min_lr };
                out.push(case(op, vec![ti(step_type, &[], &[step])], Tol::Exact).note(format!("step {step}")));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Bounds of the reductions
// ---------------------------------------------------------------------------

/// γ(k) = k·u/(1 - k·u): the relative error bound of k roundings in precision u.
fn gamma(k: usize, u: f64) -> f64 {
    let ku = k as f64 * u;
    assert!(ku < 0.5, "γ({k}) is not small");
    ku / (1.0 - ku)
}

/// The distance between consecutive values of `d` at magnitude `v`
/// (subnormal spacing below the smallest normal).
fn ulp(d: DType, v: f64) -> f64 {
    let (mant, emin) = match d {
        F16 => (10, -14),
        Bf16 => (7, -126),
        _ => (23, -126),
    };
    let e =
        if v == 0.0 || !v.is_finite() { emin } else { (((v.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023).max(emin) };
    2f64.powi(e - mant)
}

/// An f32 ulp at an estimated value: a computed value just below a power of
/// two may round up to it, where the ulp doubles, so take the ulp a little
/// above the estimate.
fn ulp32(v: f64) -> f64 {
    ulp(F32, v.abs() * 1.001)
}

/// `Some(d)` for f16 and bf16: the output type an f32 result rounds to.
fn low(d: DType) -> Option<DType> {
    d.is_low().then_some(d)
}

/// sum_to with the last axis summed: output j adds its n_j inputs in f32
/// on both sides, the CPU in index order, a warp in 32 strided lane sums
/// and a tree: |Δ| ≤ 2·γ(n_j - 1)·Σ|x_i|, u = 2^-24. A low-type output then
/// rounds once on each side (`round`).
fn sum_bound(x: &Tensor, target: &[u64]) -> Vec<f64> {
    let xd = x.shape().dims().to_vec();
    let lead = xd.len() - target.len();
    let tstride: Vec<usize> = (0..target.len()).map(|i| target[i + 1..].iter().product::<u64>() as usize).collect();
    let mut abs = vec![0.0f64; numel(target)];
    let mut count = vec![0usize; abs.len()];
    for (i, v) in f64s(x).into_iter().enumerate() {
        let (mut rest, mut o) = (i, 0);
        for ax in (0..xd.len()).rev() {
            let c = rest % xd[ax] as usize;
            rest /= xd[ax] as usize;
            if ax >= lead && target[ax - lead] != 1 {
                o += c * tstride[ax - lead];
            }
        }
        abs[o] += v.abs();
        count[o] += 1;
    }
    abs.iter().zip(&count).map(|(s, &n)| 2.0 * gamma(n.saturating_sub(1), U32) * s).collect()
}

/// matmul: output (i, j) is Σ_l a_il·b_lj over the k contracted elements,
/// accumulated in f32 from the widened operands on both sides (the CPU's
/// GEMM and the emulated one): each within γ(k)·Σ_l|a_il||b_lj| of the
/// exact value (the products' roundings included; with or without fused
/// multiply-adds), so |Δ| ≤ 2·γ(k)·Σ_l|a_il||b_lj|, u = 2^-24. A low-type
/// output then rounds once on each side (`round`).
fn matmul_bound(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Vec<f64> {
    let (ad, bd) = (a.shape().dims(), b.shape().dims());
    let (ar, br) = (ad.len(), bd.len());
    let (m, k) = if ta { (ad[ar - 1], ad[ar - 2]) } else { (ad[ar - 2], ad[ar - 1]) };
    let n = if tb { bd[br - 2] } else { bd[br - 1] };
    let (m, k, n) = (m as usize, k as usize, n as usize);
    let (na, nb) = (numel(&ad[..ar - 2]), numel(&bd[..br - 2]));
    let batches = na.max(nb);
    let (x, y) = (f64s(a), f64s(b));
    let g = 2.0 * gamma(k, U32);
    let mut out = Vec::with_capacity(batches * m * n);
    for batch in 0..batches {
        let a0 = if na == batches { batch * m * k } else { 0 };
        let b0 = if nb == batches { batch * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|l| {
                        let av = if ta { x[a0 + l * m + i] } else { x[a0 + i * k + l] };
                        let bv = if tb { y[b0 + j * k + l] } else { y[b0 + l * n + j] };
                        (av * bv).abs()
                    })
                    .sum();
                out.push(g * s);
            }
        }
    }
    out
}

/// cross_entropy and its gradient. Row r (logits x, max m, label l, C
/// classes): the terms e_k = expf(x_k - m) are the same bits on both sides
/// (the max is exact, then the same f32 subtraction and expf); their f32 sum
/// s is not (the CPU adds in column order, a warp 32 strided lane sums and a
/// butterfly). With logf and expf within 1 ulp on each side:
/// - |Δs| ≤ 2γ(C-1)·s = δ·s;
/// - |Δ logf(s)| ≤ δ/(1 - δ) + 2 ulp(ln s)         (ln's slope is 1/s);
/// - |Δlse| ≤ |Δ logf(s)| + ulp(lse)               (m + logf(s), rounded);
/// - |Δterm| ≤ |Δlse| + ulp(term)                  (lse - x_l, rounded).
///
/// The loss: Σ_r term_r / N in f64 in another order (the CPU in row order,
/// the kernel per warp, block and then across blocks): |Δ| is at most
/// Σ_r|Δterm_r|/N plus 2γ(N)·Σ_r|term_r|/N (u = 2^-53, the division
/// included), then each side rounds to the output type (`round`).
///
/// The gradient, element k of row r, with s = dloss/N (the same f32):
/// - a = x_k - lse:     |Δa| ≤ |Δlse| + ulp(a);
/// - p = expf(a):       |Δp| ≤ p·(e^|Δa| - 1) + 2 ulp(p);
/// - q = p - [k = l]:   |Δq| ≤ |Δp| + ulp(q);
/// - g = s·q:           |Δg| ≤ |s|·|Δq| + ulp(g), then rounded to a low
///   output type (`round`).
fn cross_entropy_bounds(logits: &Tensor, labels: &Tensor, dloss: f32) -> (f64, Vec<f64>) {
    let c = logits.shape().dims()[1] as usize;
    let x = f64s(logits);
    let ls = labels.data().to_i64_vec().expect("integer labels");
    let rows = ls.len();
    let s = f64::from(dloss / rows as f32);
    let delta = 2.0 * gamma(c - 1, U32);
    let (mut dterms, mut terms) = (0.0, 0.0);
    let mut grad = Vec::with_capacity(x.len());
    for (row, &l) in x.chunks(c).zip(&ls) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ln_s = row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let lse = m + ln_s;
        let dlse = delta / (1.0 - delta) + 2.0 * ulp32(ln_s) + ulp32(lse);
        let term = lse - row[l as usize];
        dterms += dlse + ulp32(term);
        terms += term.abs();
        for (k, &v) in row.iter().enumerate() {
            let a = v - lse;
            let da = dlse + ulp32(a);
            let p = a.exp();
            let dp = p * da.exp_m1() + 2.0 * ulp32(p);
            let q = p - if k == l as usize { 1.0 } else { 0.0 };
            let dq = dp + ulp32(q);
            grad.push(s.abs() * dq + ulp32(s * q));
        }
    }
    let n = rows as f64;
    let loss = terms / n;
    let bound = dterms / n + 2.0 * gamma(rows + 1, U64) * loss;
    (bound, grad)
}

/// mse: the terms (p - t)² are the same f32 bits on both sides, widened
/// exactly to f64 and summed in another order (the CPU in element order,
/// the kernel per thread, block and then across blocks); with the division
/// by n, |Δmean| ≤ 2γ(n)·mean (u = 2^-53); then each side rounds to the
/// output type (`round`).
fn mse_bound(p: &Tensor, t: &Tensor) -> f64 {
    let d2: Vec<f64> = p.to_f32_vec().iter().zip(t.to_f32_vec()).map(|(&a, b)| f64::from((a - b) * (a - b))).collect();
    let mean = d2.iter().sum::<f64>() / d2.len() as f64;
    2.0 * gamma(d2.len(), U64) * mean
}

/// global_norm: the squares of the f32-widened elements are exact in f64
/// (24-bit mantissas), their f64 sum S runs in another order: |ΔS| ≤
/// 2γ(n-1)·S (u = 2^-53); a square root halves a relative error, and each
/// side's sqrt rounds by half an f64 ulp: |Δ√S| ≤ (γ(n-1)(1 + γ(n-1)) +
/// 2^-52)·√S; then both round to f32 (`round`).
fn norm_bound(xs: &[Tensor]) -> f64 {
    let n: usize = xs.iter().map(Tensor::len).sum();
    let s: f64 = xs.iter().flat_map(f64s).map(|v| v * v).sum();
    let g = gamma(n - 1, U64);
    (g * (1.0 + g) + 2.0 * U64) * s.sqrt()
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// Edge values, as f32 (an f16 or bf16 input rounds them once), with both
/// signs, and NaNs (quiet, negative, with a payload, signalling).
fn edges() -> Vec<f32> {
    let p = |e: i32| 2f32.powi(e);
    let below = |v: f32| f32::from_bits(v.to_bits() - 1);
    let plain = [0.0, 1.0, 0.5, 1.5, 2.0, 3.0, 8.0, 9.0, 16.0, 20.0, 0.1, 2.5];
    // expf overflows past 88.72284, gives subnormals below -87.34 and 0
    // below -103.97.
    let exp = [88.72283, 88.72284, 89.0, 87.3, 103.9, 104.0];
    // f16: the smallest subnormal, 6e-8 (which rounds to it), half of it (a
    // tie, to 0) and 1.5 of it (a tie, to 2^-23); the largest subnormal and
    // the smallest normal; 2^-12 and 2^-13, whose products land there; the
    // largest finite, 65520 (the tie above it, to inf) and the f32 below
    // it; ties at 2048.
    let f16_edges = [
        p(-24),
        6e-8,
        p(-25),
        3.0 * p(-25),
        p(-14) - p(-24),
        p(-14),
        p(-12),
        p(-13),
        65504.0,
        below(65520.0),
        65520.0,
        65536.0,
        2049.0,
        2051.0,
    ];
    // bf16 and f32: the largest finite of each, the tie above bf16's (to
    // inf) and the f32 below it; f32's smallest normal; bf16's smallest
    // subnormal and the ties about it; f32 subnormals; ties at 256.
    let bf16_edges = [
        f32::MAX,
        bf16::MAX.to_f32(),
        f32::from_bits(0x7f7f_8000),
        f32::from_bits(0x7f7f_7fff),
        1e30,
        p(-126),
        p(-133),
        1.5 * p(-133),
        p(-134),
        f32::from_bits(1),
        1e-40,
        257.0,
        259.0,
    ];
    // Ties at 1 in f16 (2^-11) and bf16 (2^-8).
    let at_one = [1.0 + p(-11), 1.0 + 3.0 * p(-11), 1.0 + p(-8), 1.0 + 3.0 * p(-8), f32::INFINITY];
    let all = [&plain[..], &exp, &f16_edges, &bf16_edges, &at_one].concat();
    let mut v: Vec<f32> = all.iter().flat_map(|&x| [x, -x]).collect();
    v.extend([0x7fc0_0000u32, 0xffc0_0000, 0x7fc1_2345, 0x7f80_0001, 0xff80_0001].map(f32::from_bits));
    v
}

/// Integer edge values of `d`: 0, ±1, ±2, ±7, the f16 ties at 2049 and
/// 2051, 65504 and about 65520 (f16's overflow tie), the type's ends.
fn int_edges(d: DType) -> Vec<i64> {
    let (min, max) = if d == I32 { (i64::from(i32::MIN), i64::from(i32::MAX)) } else { (i64::MIN, i64::MAX) };
    let edge = vec![0, 1, -1, 2, -2, 7, -7, 2049, 2051, 65504, 65519, 65520, 65536, -65520, min, max, min + 1, max - 1];
    edge
}

/// The value of the f16 or bf16 pattern `b`.
fn low_value(d: DType, b: u16) -> f64 {
    match d {
        F16 => f16::from_bits(b).to_f64(),
        _ => bf16::from_bits(b).to_f64(),
    }
}

/// (largest finite pattern, smallest normal pattern, infinity's pattern,
/// the value after the largest finite one were the exponent unbounded).
fn low_limits(d: DType) -> (u16, u16, u16, f64) {
    match d {
        F16 => (0x7bff, 0x0400, 0x7c00, 65536.0),
        _ => (0x7f7f, 0x0080, 0x7f80, 2f64.powi(128)),
    }
}

/// f32 values at ties of the low type `d` (halfway between neighbours,
/// where nearest-even decides) and one f32 ulp either side, both signs:
/// `count` random neighbours plus those at zero, at the subnormal/normal
/// boundary and above the largest finite value (the tie that rounds to inf).
fn ties(d: DType, rng: &mut SplitMix64, count: usize) -> Vec<f32> {
    let (max_finite, min_normal, _, beyond) = low_limits(d);
    let mut lows = vec![0, min_normal - 1, max_finite];
    lows.extend((0..count).map(|_| (rng.next_u64() % (u64::from(max_finite) + 1)) as u16));
    let mut out = Vec::with_capacity(lows.len() * 6);
    for b in lows {
        let hi = if b == max_finite { beyond } else { low_value(d, b + 1) };
        let mid = (low_value(d, b) + hi) / 2.0;
        let bits = (mid as f32).to_bits();
        assert_eq!(f64::from(f32::from_bits(bits)), mid, "a tie of {d} is an f32");
        for x in [bits - 1, bits, bits + 1].map(f32::from_bits) {
            out.extend([x, -x]);
        }
    }
    out
}

/// Deterministic inputs: a SplitMix64 stream and, per float type, a pool of
/// interesting values (see [`pool`]).
struct Src {
    rng: SplitMix64,
    pools: Vec<Data>,
}

/// The inputs of dtype `d` that the largest case of an op sees: the edge
/// values; for f32, the values at the ties of f16 and bf16 and random bit
/// patterns; random values over twelve decades; for f16 and bf16, every bit
/// pattern (every subnormal, both infinities, every NaN).
fn pool(d: DType, rng: &mut SplitMix64) -> Data {
    let mut v = edges();
    if d == F32 {
        v.extend(ties(F16, rng, 300));
        v.extend(ties(Bf16, rng, 300));
        v.extend((0..2000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    }
    v.extend((0..2000).map(|_| (rng.normal() * 10f64.powf(12.0 * rng.next_f64() - 6.0)) as f32));
    let mut data = Data::from_f32(d, &v);
    match &mut data {
        Data::F16(h) => h.extend((0..=u16::MAX).map(f16::from_bits)),
        Data::Bf16(h) => h.extend((0..=u16::MAX).map(bf16::from_bits)),
        _ => {}
    }
    data
}

impl Src {
    fn new(seed: u64) -> Src {
        let mut rng = SplitMix64::new(seed);
        let pools = FLOATS.iter().map(|&d| pool(d, &mut rng)).collect();
        Src { rng, pools }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn pool(&self, d: DType) -> &Data {
        &self.pools[FLOATS.iter().position(|&f| f == d).expect("a float type")]
    }

    /// The largest size of `d`'s cases: its whole pool and 7 more.
    fn big(&self, d: DType) -> u64 {
        if d.is_float() {
            self.pool(d).len() as u64 + 7
        } else {
            4099
        }
    }

    /// The shapes every elementwise op runs on: a scalar, less than a warp,
    /// one more than a block, several blocks in two axes, the whole pool.
    fn sizes(&self, d: DType) -> Vec<Vec<u64>> {
        vec![vec![], vec![7], vec![257], vec![3, 347], vec![self.big(d)]]
    }

    /// A tensor of `shape` of any type: floats from the pool (all of it, in
    /// order, when the shape holds it; else a random sample), integers from
    /// [`Src::ints`], random bools.
    fn values(&mut self, d: DType, shape: &[u64]) -> Tensor {
        let n = numel(shape);
        let data = if d.is_float() {
            let len = self.pool(d).len();
            if n >= len {
                // The whole pool, then random normals.
                let tail: Vec<f32> = (0..n - len).map(|_| self.rng.normal() as f32).collect();
                let tail = Data::from_f32(d, &tail);
                Data::interleave(&[self.pool(d), &tail], 1, &[len, n - len]).expect("one dtype")
            } else {
                let idx: Vec<usize> = (0..n).map(|_| self.below(len as u64) as usize).collect();
                self.pool(d).gather(&idx)
            }
        } else if d == Bool {
            Data::from_i64(Bool, &(0..n).map(|_| self.below(2) as i64).collect::<Vec<_>>())
        } else {
            Data::from_i64(d, &self.ints(d, n))
        };
        Tensor::new(shape.to_vec(), data).expect("consistent")
    }

    /// `n` integers of `d`: with n ≥ 64, first every [`int_edges`], then a
    /// quarter edges and the rest random.
    fn ints(&mut self, d: DType, n: usize) -> Vec<i64> {
        let edge = int_edges(d);
        (0..n)
            .map(|i| {
                if n >= 64 && i < edge.len() {
                    edge[i]
                } else if self.below(4) == 0 {
                    edge[self.below(edge.len() as u64) as usize]
                } else if d == I32 {
                    i64::from(self.rng.next_u64() as i32)
                } else {
                    self.rng.next_u64() as i64
                }
            })
            .collect()
    }

    /// Standard normals times `scale`, rounded to `d`.
    fn normals(&mut self, d: DType, shape: &[u64], scale: f64) -> Tensor {
        let v: Vec<f32> = (0..numel(shape)).map(|_| (self.rng.normal() * scale) as f32).collect();
        tf(d, shape, &v)
    }

    /// Normals over four decades (1e-2 to 1e2 times a normal), so that sums
    /// cancel and mix magnitudes.
    fn mixed(&mut self, d: DType, shape: &[u64]) -> Tensor {
        let v: Vec<f32> = (0..numel(shape))
            .map(|_| (self.rng.normal() * 10f64.powf(4.0 * self.rng.next_f64() - 2.0)) as f32)
            .collect();
        tf(d, shape, &v)
    }

    /// The elements of `t` in a random order.
    fn shuffled(&mut self, t: &Tensor) -> Tensor {
        let mut idx: Vec<usize> = (0..t.len()).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, self.below(i as u64 + 1) as usize);
        }
        Tensor::new(t.shape().clone(), t.data().gather(&idx)).expect("consistent")
    }
}

/// Every pair of edge values of `d` ([`edges`], [`int_edges`]) as two flat
/// tensors.
fn edge_pairs(d: DType) -> (Tensor, Tensor) {
    let e = if d.is_float() { Data::from_f32(d, &edges()) } else { Data::from_i64(d, &int_edges(d)) };
    let n = e.len();
    let a: Vec<usize> = (0..n * n).map(|i| i / n).collect();
    let b: Vec<usize> = (0..n * n).map(|i| i % n).collect();
    let shape = vec![(n * n) as u64];
    (
        Tensor::new(shape.clone(), e.gather(&a)).expect("consistent"),
        Tensor::new(shape, e.gather(&b)).expect("consistent"),
    )
}

/// `t` with its zeros replaced by 1.
fn nonzero(t: &Tensor) -> Tensor {
    let v: Vec<i64> =
        t.data().to_i64_vec().expect("integers").into_iter().map(|x| if x == 0 { 1 } else { x }).collect();
    ti(t.dtype(), t.shape().dims(), &v)
}

fn numel(shape: &[u64]) -> usize {
    shape.iter().product::<u64>() as usize
}

/// f32 values rounded once to `d`.
fn tf(d: DType, shape: &[u64], v: &[f32]) -> Tensor {
    Tensor::from_f32(d, shape.to_vec(), v).expect("consistent")
}

/// Integers into `d`.
fn ti(d: DType, shape: &[u64], v: &[i64]) -> Tensor {
    Tensor::new(shape.to_vec(), Data::from_i64(d, v)).expect("consistent")
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f32_vec().into_iter().map(f64::from).collect()
}

// ---------------------------------------------------------------------------
// Running and comparing
// ---------------------------------------------------------------------------

fn run<B: Backend>(be: &mut B, op: &Op, inputs: &[Tensor], outs: &[TensorType]) -> Result<Vec<Tensor>, ExecError> {
    let bufs = inputs.iter().map(|t| be.upload(t)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&B::Buffer> = bufs.iter().collect();
    let ctx = OpCtx { node: "n", step: 0, seed: 0 };
    let ys = be.run(op, &ctx, &refs, outs)?;
    ys.iter().map(|y| be.download(y)).collect()
}

fn out_types(c: &Case) -> Vec<TensorType> {
    let types: Vec<TensorType> = c.inputs.iter().map(Tensor::ty).collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    mpc::ir::infer::infer(&c.op, &refs).unwrap_or_else(|e| panic!("{}: {e}", c.label()))
}

/// Each element as (value, bits).
fn elems(t: &Tensor) -> Vec<(f64, u64)> {
    match t.data() {
        Data::F32(v) => v.iter().map(|x| (f64::from(*x), u64::from(x.to_bits()))).collect(),
        Data::F16(v) => v.iter().map(|x| (x.to_f64(), u64::from(x.to_bits()))).collect(),
        Data::Bf16(v) => v.iter().map(|x| (x.to_f64(), u64::from(x.to_bits()))).collect(),
        Data::I32(v) => v.iter().map(|&x| (f64::from(x), u64::from(x as u32))).collect(),
        Data::I64(v) => v.iter().map(|&x| (x as f64, x as u64)).collect(),
        Data::Bool(v) => v.iter().map(|&x| (f64::from(u8::from(x)), u64::from(x))).collect(),
    }
}

/// What one comparison found.
#[derive(Default)]
struct Seen {
    elements: usize,
    /// The largest |Δ| in ulps of the output type at the CPU's value.
    max_ulps: f64,
    /// The largest |Δ| / allowed (`Within` only).
    max_of_bound: f64,
    failures: Vec<String>,
}

fn compare(c: &Case, k: usize, cpu: &Tensor, dev: &Tensor, seen: &mut Seen) {
    let label = c.label();
    let tol = match &c.tol {
        Tol::PerOutput(per) => per.get(k).expect("a tolerance per output"),
        t => t,
    };
    if cpu.ty() != dev.ty() {
        seen.failures.push(format!("{label}: output {k} is {} on the CPU but {} on the device", cpu.ty(), dev.ty()));
        return;
    }
    let d = cpu.dtype();
    let (a, b) = (elems(cpu), elems(dev));
    seen.elements += a.len();
    let mut bad = 0;
    for (i, (&(x, xb), &(y, yb))) in a.iter().zip(&b).enumerate() {
        let (ok, allowed) = match tol {
            Tol::PerOutput(_) => panic!("{label}: nested PerOutput"),
            Tol::Bits => (xb == yb, 0.0),
            Tol::Exact => (xb == yb || (x.is_nan() && y.is_nan()), 0.0),
            Tol::Within { bound, round } => {
                let allowed = bound.get(i).expect("a bound per element of the single output")
                    + round.map_or(0.0, |r| ulp(r, x.abs().max(y.abs())));
                let ok = if x.is_finite() && y.is_finite() {
                    (x - y).abs() <= allowed
                } else {
                    (x.is_nan() && y.is_nan()) || x == y
                };
                if ok && x != y && allowed > 0.0 {
                    seen.max_of_bound = seen.max_of_bound.max((x - y).abs() / allowed);
                }
                (ok, allowed)
            }
        };
        let ulps = if xb == yb || (x.is_nan() && y.is_nan()) || x == y {
            0.0
        } else if x.is_nan() || y.is_nan() {
            f64::INFINITY
        } else if d.is_float() {
            (x - y).abs() / ulp(d, x)
        } else {
            (x - y).abs()
        };
        seen.max_ulps = seen.max_ulps.max(ulps);
        if ok {
            continue;
        }
        bad += 1;
        if bad <= 3 {
            // The inputs at the same index, where they line up with the output.
            let ins: Vec<String> = c
                .inputs
                .iter()
                .filter(|t| t.len() == a.len())
                .map(|t| {
                    let (v, bits) = elems(t)[i];
                    format!("{v:e} ({bits:#x})")
                })
                .collect();
            seen.failures.push(format!(
                "{label}: output {k}[{i}]: cpu {x:e} ({xb:#x}) vs cuda {y:e} ({yb:#x}), |Δ| {:e} = {ulps:.3} ulp, allowed {allowed:e}; inputs there: {}",
                (x - y).abs(),
                ins.join(", ")
            ));
        }
    }
    if bad > 3 {
        seen.failures.push(format!("{label}: output {k}: {bad} elements differ in all"));
    }
}

/// Per (op, dtypes, tolerance kind): cases, elements, the largest |Δ| in
/// ulps and against the allowed difference.
#[derive(Default)]
struct Summary {
    cases: usize,
    elements: usize,
    max_ulps: f64,
    max_of_bound: f64,
}

#[test]
fn every_supported_op_matches_the_cpu_reference() {
    let start = Instant::now();
    let mut src = Src::new(SEED);
    let cases = cases(&mut src);
    let built = start.elapsed();
    let mut cpu = CpuBackend::new();
    let mut dev = CudaBackend::new(EmuGpu::new(), false);
    let mut summary: BTreeMap<(&'static str, String, &'static str), Summary> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in &cases {
        let outs = out_types(c);
        let mut seen = Seen::default();
        match (run(&mut cpu, &c.op, &c.inputs, &outs), run(&mut dev, &c.op, &c.inputs, &outs)) {
            (Ok(want), Ok(got)) => {
                for (k, (w, g)) in want.iter().zip(&got).enumerate() {
                    compare(c, k, w, g, &mut seen);
                }
            }
            (Err(e), _) => seen.failures.push(format!("{}: the CPU fails: {e}", c.label())),
            (_, Err(e)) => seen.failures.push(format!("{}: the device fails: {e}", c.label())),
        }
        let tol = match &c.tol {
            Tol::Bits => "bits",
            Tol::Exact => "exact",
            Tol::Within { .. } => "bound",
            Tol::PerOutput(per) if per.iter().any(|t| matches!(t, Tol::Within { .. })) => "bound",
            Tol::PerOutput(_) => "exact",
        };
        let s = summary.entry((c.op.name(), c.dtypes(&outs), tol)).or_default();
        s.cases += 1;
        s.elements += seen.elements;
        s.max_ulps = s.max_ulps.max(seen.max_ulps);
        s.max_of_bound = s.max_of_bound.max(seen.max_of_bound);
        failures.extend(seen.failures);
    }
    eprintln!(
        "{:<20} {:<16} {:>5} {:>9} {:>12} {:>9}  tolerance",
        "op", "dtypes", "cases", "elements", "max|Δ| ulp", "of bound"
    );
    for ((op, dtypes, tol), s) in &summary {
        let of_bound = if *tol == "bound" { format!("{:.3}", s.max_of_bound) } else { "-".into() };
        eprintln!("{op:<20} {dtypes:<16} {:>5} {:>9} {:>12.3} {of_bound:>9}  {tol}", s.cases, s.elements, s.max_ulps);
    }
    eprintln!("{} cases in {:.2?} ({built:.2?} to build them)", cases.len(), start.elapsed());
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Coverage
// ---------------------------------------------------------------------------

/// A valid value of every attribute, to build any op from its kind.
const SAMPLE_ATTRS: &str = r#"{
    "transpose_a": false, "transpose_b": false, "axis": 0, "causal": false, "axes": [0],
    "keepdims": false, "sizes": [1], "shape": [1], "perm": [0], "dtype": "f32", "to": "f32",
    "value": 1.0, "p": 0.5, "seed": 0, "eps": 1e-5, "momentum": 0.5, "size": 1, "alpha": 1e-4,
    "beta": 0.75, "bias": 1.0, "kernel": [1, 1], "stride": [1, 1], "padding": [0, 0],
    "padding_end": [0, 0], "dilation": [1, 1], "count_include_pad": true, "groups": 1, "num_embeddings": 1,
    "lr": 0.1, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "decoupled": true,
    "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 1, "max_norm": 1.0,
    "warmup": 1, "total": 2, "min_lr": 0.0
}"#;

/// The kinds `supports` accepts, asked of one op of every kind (built from
/// its kind and sample attributes, so a new op kind is asked too).
fn supported_kinds() -> BTreeSet<OpKind> {
    let samples: serde_json::Map<String, serde_json::Value> = serde_json::from_str(SAMPLE_ATTRS).expect("json");
    for a in ATTRS {
        assert!(samples.contains_key(a), "SAMPLE_ATTRS has no value for the attribute `{a}`");
    }
    let mut kinds = BTreeSet::new();
    for &kind in OpKind::ALL {
        let mut node = serde_json::Map::new();
        node.insert("name".into(), "n".into());
        node.insert("op".into(), kind.name().into());
        for &a in allowed(kind) {
            node.insert(a.into(), samples[a].clone());
        }
        let raw: RawNode = serde_json::from_value(node.into()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let ty = TensorType::scalar(F32);
        let op = match (op_from_raw(&raw), kind) {
            (Ok(op), _) => op,
            // Sources are declared in their own sections, not as nodes.
            (Err(_), OpKind::Input) => Op::Input { ty },
            (Err(_), OpKind::Param) => Op::Param { ty, init: Init::Zeros },
            (Err(_), OpKind::State) => Op::State { ty, init: Init::Zeros },
            (Err(e), _) => panic!("{kind} from sample attributes: {e:?}"),
        };
        assert_eq!(op.kind(), kind);
        if supports(&op) {
            kinds.insert(kind);
        }
    }
    kinds
}

#[test]
fn every_supported_op_has_cases_in_every_float_type() {
    let supported = supported_kinds();
    // The discovery itself: what the MLP family needs, and not what it does not.
    for k in [OpKind::Adam, OpKind::Matmul, OpKind::CrossEntropy, OpKind::Cast] {
        assert!(supported.contains(&k), "{k}");
    }
    for k in [OpKind::Input, OpKind::Param, OpKind::State] {
        assert!(!supported.contains(&k), "{k}");
    }

    let mut seen: BTreeMap<OpKind, Vec<DType>> = BTreeMap::new();
    for c in cases(&mut Src::new(SEED)) {
        assert!(supports(&c.op), "{} is not an op the CUDA backend runs", c.label());
        let types = seen.entry(c.op.kind()).or_default();
        types.extend(c.inputs.iter().map(Tensor::dtype).chain(out_types(&c).iter().map(|t| t.dtype)));
    }
    let missing: Vec<&OpKind> = supported.iter().filter(|k| !seen.contains_key(k)).collect();
    assert!(missing.is_empty(), "supported ops without a case: {missing:?}");
    for (kind, types) in &seen {
        // scale_update's types are fixed: f32 scale and found_inf, i32 tracker;
        // clip_coef's: an f32 norm and coefficient; lr_schedule's: an integer
        // step and an f32 rate.
        if matches!(kind, OpKind::ScaleUpdate | OpKind::ClipCoef | OpKind::LrSchedule) {
            continue;
        }
        for d in FLOATS {
            assert!(types.contains(&d), "{kind} has no case in {d}");
        }
    }
}

// ---------------------------------------------------------------------------
// Single roundings from f64
// ---------------------------------------------------------------------------

/// The f16/bf16 pattern nearest `v`, ties to even, as an oracle independent
/// of both sides: among the neighbours of a first guess (within one ulp of
/// the answer), the nearest by exact f64 distances (a guess and v are
/// within a factor 2, so the subtraction is exact), ties to the even
/// pattern; past the largest finite value the next value is taken as the
/// unbounded exponent's (IEEE overflow: at or past that tie, inf).
/// The bf16 pattern nearest the integer `v`, ties to even, in integer
/// arithmetic (every finite bf16 value at or above 1 is an integer, and
/// those in i64's range are exact in i128).
fn round_int_exact_bf16(v: i64) -> u16 {
    let sign = if v < 0 { 0x8000 } else { 0 };
    let a = i128::from(v).abs();
    // The largest positive pattern whose value is at most |v| (values grow with patterns).
    let mut b: u16 = 0;
    for bit in (0..15).rev() {
        let c = b | (1 << bit);
        if c <= 0x7f7f && (low_value(Bf16, c) as i128) <= a {
            b = c;
        }
    }
    let (lo, hi) = (low_value(Bf16, b) as i128, low_value(Bf16, b + 1) as i128);
    let up = match (2 * a).cmp(&(lo + hi)) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => b % 2 == 1,
    };
    sign | (b + u16::from(up))
}

fn round_exact(d: DType, v: f64) -> u16 {
    let (_, _, inf, beyond) = low_limits(d);
    let value = |b: u16| if b == inf { beyond } else { low_value(d, b) };
    let a = v.abs();
    let guess = match d {
        F16 => f16::from_f64(a).to_bits(),
        _ => bf16::from_f64(a).to_bits(),
    }
    .min(inf);
    let mut best = (guess, f64::INFINITY);
    for b in guess.saturating_sub(1)..=(guess + 1).min(inf) {
        let dist = (value(b) - a).abs();
        if dist < best.1 || (dist == best.1 && b % 2 == 0) {
            best = (b, dist);
        }
    }
    best.0 | if v.is_sign_negative() { 0x8000 } else { 0 }
}

fn low_bits(t: &Tensor) -> Vec<u16> {
    match t.data() {
        Data::F16(v) => v.iter().map(|x| x.to_bits()).collect(),
        Data::Bf16(v) => v.iter().map(|x| x.to_bits()).collect(),
        other => panic!("not a 16-bit float: {:?}", other.dtype()),
    }
}

/// Conversions to f16/bf16 near ties round once on both sides: f32 ties
/// cast, `constant` values a tie ± 2^-30 relative (which `half`'s
/// `from_f64`, going through f32 or dropping low bits, used to round the
/// wrong way), and integers near bf16 ties beyond 2^21 and 2^53 (which
/// used to go through f64), against [`round_exact`] and integer arithmetic.
#[test]
fn f64_and_integer_roundings_to_f16_and_bf16_are_single() {
    let mut rng = SplitMix64::new(SEED ^ 1);
    let mut cpu = CpuBackend::new();
    let mut dev = CudaBackend::new(EmuGpu::new(), false);
    let mut failures = Vec::new();
    for d in [F16, Bf16] {
        let (max_finite, _, _, _) = low_limits(d);

        // f32 ties (and one f32 ulp either side) cast to d: both sides exact.
        let x = ties(d, &mut rng, 2000);
        let input = tf(F32, &[x.len() as u64], &x);
        let outs = [input.ty().with_dtype(d)];
        let want: Vec<u16> = x.iter().map(|&v| round_exact(d, f64::from(v))).collect();
        for (side, got) in [
            ("cpu", run(&mut cpu, &Op::Cast { to: d }, std::slice::from_ref(&input), &outs)),
            ("cuda", run(&mut dev, &Op::Cast { to: d }, &[input], &outs)),
        ] {
            let got = low_bits(&got.expect("cast runs")[0]);
            for ((v, w), g) in x.iter().zip(&want).zip(&got) {
                if w != g {
                    failures.push(format!("cast f32 {v:e} to {d} on the {side}: {g:#06x}, exact {w:#06x}"));
                }
            }
        }

        // constant(value) near ties: the value a tie plus or minus 2^-30 of
        // itself, which the CPU loses (f64 -> f32 first, or truncation to 20
        // mantissa bits) before rounding.
        let mut values = Vec::new();
        for _ in 0..150 {
            let b = (rng.next_u64() % u64::from(max_finite)) as u16; // below the largest: the tie is finite
            let tie = (low_value(d, b) + low_value(d, b + 1)) / 2.0;
            values.extend([tie, tie * (1.0 + 2f64.powi(-30)), tie * (1.0 - 2f64.powi(-30))]);
        }
        for &value in &values {
            let op = Op::Constant { value, ty: TensorType::scalar(d) };
            let outs = [TensorType::scalar(d)];
            let (c, g) = (run(&mut cpu, &op, &[], &outs), run(&mut dev, &op, &[], &outs));
            let (c, g) = (low_bits(&c.expect("constant runs")[0])[0], low_bits(&g.expect("constant runs")[0])[0]);
            let w = round_exact(d, value);
            for (side, got) in [("cpu", c), ("cuda", g)] {
                if got != w {
                    failures.push(format!("constant {value:e} in {d} on the {side}: {got:#06x}, exact {w:#06x}"));
                }
            }
        }

        // Integers near bf16 ties, beyond 2^21 (f16 has no such integers:
        // past 65520 they are inf), cast to bf16, beyond 2^53 too, where
        // going through f64 would round twice: against integer arithmetic.
        if d == Bf16 {
            for from in [I32, I64] {
                let top = if from == I32 { 0x4f00 } else { 0x5f00 }; // 2^31, 2^63
                let mut ints = vec![(1 << 24) + (1 << 16) + 1];
                for _ in 0..300 {
                    let b = 0x4a00 + (rng.next_u64() % (top - 0x4a00 - 1)) as u16; // from 2^21
                    let tie = (low_value(Bf16, b) + low_value(Bf16, b + 1)) / 2.0;
                    let t = tie as i64;
                    ints.extend([t - 1, t, t + 1, -t - 1, -t, -t + 1]);
                }
                if from == I32 {
                    ints.retain(|&v| i32::try_from(v).is_ok());
                }
                let input = ti(from, &[ints.len() as u64], &ints);
                let outs = [input.ty().with_dtype(Bf16)];
                let op = Op::Cast { to: Bf16 };
                let c = low_bits(&run(&mut cpu, &op, std::slice::from_ref(&input), &outs).expect("cast runs")[0]);
                let g = low_bits(&run(&mut dev, &op, &[input], &outs).expect("cast runs")[0]);
                for ((&v, &c), &g) in ints.iter().zip(&c).zip(&g) {
                    let w = round_int_exact_bf16(v);
                    for (side, got) in [("cpu", c), ("cuda", g)] {
                        if got != w {
                            failures.push(format!("cast {from} {v} to bf16 on the {side}: {got:#06x}, exact {w:#06x}"));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} roundings are not exact:\n{}", failures.len(), failures.join("\n"));
}
