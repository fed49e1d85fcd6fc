// The backend conformance suite: every op's gradient against finite
// differences, the low-precision numerics the op docs promise, and lowered
// training steps of every example, on any `Backend`. A test crate defines
// `fn backend() -> B` and includes this file (tests/exec.rs: the CPU
// reference; tests/conformance_emu.rs: the CUDA backend on the SIMT
// emulation); a new backend is dropped in the same way. The includer also
// sets `STOPS_ON_BAD_LABELS`: the CPU reference stops a step at a label
// outside [0, classes) with an error naming the node; a device cannot stop
// mid-step without a host sync, so its loss is NaN there and the loss
// scaler skips the step (kernels/loss.cu).

use std::collections::BTreeMap;

use half::f16;
use mpc::exec::rng::SplitMix64;
use mpc::exec::{init_state, Backend, Data, ExecError, Executor, OpCtx, RunOptions, State, Tensor};
use mpc::ir::op::{Conv, Init, Op, Window};
use mpc::passes::grad::Grad;
use mpc::passes::Pass;
use mpc::{DType, Graph, Role, TensorType, ValueId};

// ---------------------------------------------------------------------------
// Finite-difference checks of the grad pass.
//
// Each case is a tiny f32 graph: every float operand is a parameter, the op's
// output y is weighted by a fixed random input r and summed, L = Σ r·y (or L is
// the op's own scalar loss). The grad pass derives the backward graph, the
// executor runs it, and each parameter gradient is compared with the central
// difference (L(p+h) - L(p-h)) / 2h, each L computed by running the step with
// the perturbed parameter.
//
// Tolerance, from first principles. Values are O(1) and h = 5e-3.
// - Truncation: the central difference errs by h²/6·|L'''|; with |L'''| ≲ 20
//   for these ops on O(1) values (log at 0.5 gives 16) that is ≲ 1e-4.
// - Rounding: L is an f32 sum of ≲ 100 terms of size O(1), so it carries an
//   absolute error of ≲ 100·eps_f32 ≈ 1e-5 in the worst case (≈ 1e-6
//   typically); divided by 2h = 1e-2 that is ≲ 1e-3 in the difference.
// - The analytic gradient is itself f32 with relative error ≈ 1e-6.
// So |fd - g| ≤ 2e-2·max(|g|, |fd|) + 2e-3 leaves a margin of 2 over the
// worst case while a wrong rule (a missing term, a factor, a wrong axis)
// is off by O(|g|) and fails. Kinks (relu at 0, ties in max-pool) must be
// farther than h from every test point; the inputs are chosen so.
// ---------------------------------------------------------------------------

const H: f32 = 5e-3;

struct Case {
    g: Graph,
    state: State,
    batch: State,
    rng: SplitMix64,
}

fn ty(shape: &[u64]) -> TensorType {
    TensorType::new(DType::F32, shape.to_vec())
}

fn numel(shape: &[u64]) -> usize {
    shape.iter().product::<u64>() as usize
}

impl Case {
    fn new(seed: u64) -> Case {
        Case { g: Graph::new("fd"), state: State::new(), batch: State::new(), rng: SplitMix64::new(seed) }
    }

    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.rng.next_f64() as f32).collect()
    }

    /// Values with |v| in [0.2, 1]: at least 0.2 from relu's kink and from 0.
    fn away_from_zero(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let m = 0.2 + 0.8 * self.rng.next_f64() as f32;
                if self.rng.next_u64() & 1 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect()
    }

    fn param(&mut self, name: &str, shape: &[u64], values: Vec<f32>) -> ValueId {
        let id = self.g.add_node(name, Op::Param { ty: ty(shape), init: Init::Zeros }, Role::Forward, &[]).unwrap();
        self.state.insert(name.into(), Tensor::from_f32(DType::F32, shape.to_vec(), &values).unwrap());
        ValueId { node: id, slot: 0 }
    }

    fn random_param(&mut self, name: &str, shape: &[u64]) -> ValueId {
        let v = self.uniform(numel(shape), -1.0, 1.0);
        self.param(name, shape, v)
    }

    fn input(&mut self, name: &str, t: Tensor) -> ValueId {
        let id = self.g.add_node(name, Op::Input { ty: t.ty() }, Role::Forward, &[]).unwrap();
        self.batch.insert(name.into(), t);
        ValueId { node: id, slot: 0 }
    }

    fn op(&mut self, name: &str, op: Op, ins: &[ValueId]) -> ValueId {
        let id = self.g.add_node(name, op, Role::Forward, ins).unwrap();
        ValueId { node: id, slot: 0 }
    }

    /// L = Σ r·y with r a fixed random input of y's shape.
    fn weighted_loss(&mut self, y: ValueId) {
        let shape = self.g.ty(y).shape.0.clone();
        let r = self.uniform(numel(&shape), -1.0, 1.0);
        let r = self.input("r", Tensor::from_f32(DType::F32, shape.clone(), &r).unwrap());
        let p = self.op("ry", Op::Mul, &[y, r]);
        let axes = (0..shape.len() as i64).collect();
        let l = self.op("loss", Op::ReduceSum { axes, keepdims: false }, &[p]);
        self.g.loss = Some(l);
    }

    /// Differentiates the graph and checks every parameter gradient; returns
    /// the executor, the gradients and the first step's result for more checks.
    fn check(mut self) -> (Graph, State, State, BTreeMap<String, Tensor>) {
        if self.g.loss.is_none() {
            panic!("no loss");
        }
        Grad.run(&mut self.g).unwrap();
        mpc::verify(&self.g).unwrap();
        let grads: Vec<(String, String)> = self
            .g
            .gradients
            .iter()
            .map(|&(p, v)| (self.g.node(p).name().to_string(), self.g.value_name(v).to_string()))
            .collect();
        let mut ex = Executor::new(&self.g, backend(), 7).unwrap();
        let opts = RunOptions { fetch: grads.iter().map(|(_, v)| v.clone()).collect(), ..RunOptions::default() };
        let base = ex.step(&self.state, &self.batch, 0, &opts).unwrap();
        let mut failures = Vec::new();
        let mut nonzero = 0;
        for (p, gname) in &grads {
            let g = base.fetched[gname].to_f32_vec();
            let x0 = self.state[p].to_f32_vec();
            let shape = self.state[p].shape().clone();
            for i in 0..x0.len() {
                let mut eval = |d: f32| {
                    let mut x = x0.clone();
                    x[i] += d;
                    let mut st = self.state.clone();
                    st.insert(p.clone(), Tensor::from_f32(DType::F32, shape.clone(), &x).unwrap());
                    ex.step(&st, &self.batch, 0, &RunOptions::default()).unwrap().loss_f32().unwrap()
                };
                let fd = (eval(H) - eval(-H)) / (2.0 * H);
                let tol = 2e-2 * g[i].abs().max(fd.abs()) + 2e-3;
                if (fd - g[i]).abs() > tol {
                    failures.push(format!("d{p}[{i}]: analytic {} vs finite difference {fd}", g[i]));
                }
                if g[i].abs() > 1e-3 {
                    nonzero += 1;
                }
            }
        }
        assert!(failures.is_empty(), "{} gradient mismatches:\n{}", failures.len(), failures.join("\n"));
        assert!(nonzero > 0, "every gradient is zero: the check would prove nothing");
        (self.g, self.state, self.batch, base.fetched)
    }
}

/// One unary op on a random parameter, weighted-sum loss.
fn check_unary(op: Op, shape: &[u64], values: Option<Vec<f32>>) {
    let mut c = Case::new(11);
    let x = match values {
        Some(v) => c.param("x", shape, v),
        None => c.random_param("x", shape),
    };
    let y = c.op("y", op, &[x]);
    c.weighted_loss(y);
    c.check();
}

fn mm(ta: bool, tb: bool) -> Op {
    Op::Matmul { transpose_a: ta, transpose_b: tb }
}

#[test]
fn fd_matmul_all_transpose_combinations() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut c = Case::new(1);
        let a = c.random_param("a", if ta { &[4, 3] } else { &[3, 4] });
        let b = c.random_param("b", if tb { &[5, 4] } else { &[4, 5] });
        let y = c.op("y", mm(ta, tb), &[a, b]);
        c.weighted_loss(y);
        c.check();
    }
}

#[test]
fn fd_matmul_batched_broadcast() {
    let cases: [(&[u64], &[u64], bool, bool); 4] = [
        (&[2, 3, 4], &[4, 5], false, false),
        (&[2, 3, 4], &[5, 4], false, true),
        (&[2, 1, 3, 4], &[3, 4, 5], false, false),
        (&[4, 3], &[2, 4, 5], true, false),
    ];
    for (sa, sb, ta, tb) in cases {
        let mut c = Case::new(2);
        let a = c.random_param("a", sa);
        let b = c.random_param("b", sb);
        let y = c.op("y", mm(ta, tb), &[a, b]);
        c.weighted_loss(y);
        c.check();
    }
}

#[test]
fn fd_binary_ops_with_broadcasting() {
    let shapes: [(&[u64], &[u64]); 3] = [(&[3, 4], &[4]), (&[3, 1], &[3, 4]), (&[2, 3], &[2, 3])];
    for op in [Op::Add, Op::Sub, Op::Mul, Op::Div] {
        for (sa, sb) in shapes {
            let mut c = Case::new(3);
            let a = c.random_param("a", sa);
            // Divisors stay at least 0.2 from zero.
            let bv = c.away_from_zero(numel(sb));
            let b = c.param("b", sb, bv);
            let y = c.op("y", op.clone(), &[a, b]);
            c.weighted_loss(y);
            c.check();
        }
    }
}

#[test]
fn fd_unary_ops() {
    let mut r = Case::new(4);
    let away = r.away_from_zero(12);
    let positive = r.uniform(12, 0.5, 1.5);
    check_unary(Op::Relu, &[3, 4], Some(away));
    check_unary(Op::Gelu, &[3, 4], Some(r.uniform(12, -2.0, 2.0)));
    check_unary(Op::Tanh, &[3, 4], None);
    check_unary(Op::Sigmoid, &[3, 4], None);
    check_unary(Op::Exp, &[3, 4], None);
    check_unary(Op::Log, &[3, 4], Some(positive));
    check_unary(Op::Scale { value: 2.5 }, &[3, 4], None);
    check_unary(Op::Identity, &[3, 4], None);
}

#[test]
fn fd_erf() {
    let mut r = Case::new(21);
    check_unary(Op::Erf, &[3, 4], Some(r.uniform(12, -2.0, 2.0)));
}

#[test]
fn fd_sqrt() {
    let mut r = Case::new(22);
    check_unary(Op::Sqrt, &[3, 4], Some(r.uniform(12, 0.5, 2.0)));
}

#[test]
fn fd_lrn() {
    // alpha large enough that the window term is a sizeable part of the
    // gradient; an even size (asymmetric window) and one wider than C.
    for (size, alpha, beta, bias) in [(3, 1.0, 0.75, 1.0), (4, 2.0, 0.5, 2.0), (7, 1.5, 0.75, 1.0), (1, 1.0, 1.0, 1.0)]
    {
        check_unary(Op::Lrn { size, alpha, beta, bias }, &[2, 5, 2, 2], None);
    }
}

/// frozen_batch_norm with x, gamma and beta as parameters and fixed mean
/// and var (inputs, as ONNX's running statistics are `state`).
fn frozen_bn_case(seed: u64) -> (Case, ValueId) {
    let mut c = Case::new(seed);
    let x = c.random_param("x", &[3, 2, 2, 2]);
    let gv = c.uniform(2, 0.5, 1.5);
    let gamma = c.param("gamma", &[2], gv);
    let beta = c.random_param("beta", &[2]);
    let mean = c.uniform(2, -0.5, 0.5);
    let mean = c.input("mean", Tensor::from_f32(DType::F32, vec![2], &mean).unwrap());
    let var = c.uniform(2, 0.5, 2.0);
    let var = c.input("var", Tensor::from_f32(DType::F32, vec![2], &var).unwrap());
    let y = c.op("y", Op::FrozenBatchNorm { eps: 1e-5 }, &[x, gamma, beta, mean, var]);
    (c, y)
}

#[test]
fn fd_frozen_batch_norm() {
    let (mut c, y) = frozen_bn_case(22);
    c.weighted_loss(y);
    let (g, _, _, grads) = c.check();
    // dx, dgamma and dbeta all come from the one grad node.
    assert_eq!(g.node_ids().filter(|&n| matches!(g.node(n).op(), Op::FrozenBatchNormGrad { .. })).count(), 1);
    assert!(["dx", "dgamma", "dbeta"].iter().all(|k| grads.contains_key(*k)));
}

#[test]
fn frozen_batch_norm_statistics_get_no_gradient() {
    // mean and var declared as parameters: grad still succeeds, and their
    // gradients are zeros (no gradient flows to the statistics).
    let mut c = Case::new(23);
    let x = c.random_param("x", &[3, 2, 2, 2]);
    let gamma = c.random_param("gamma", &[2]);
    let beta = c.random_param("beta", &[2]);
    let mean = c.random_param("mean", &[2]);
    let var = c.param("var", &[2], vec![1.0, 2.0]);
    let y = c.op("y", Op::FrozenBatchNorm { eps: 1e-5 }, &[x, gamma, beta, mean, var]);
    c.weighted_loss(y);
    Grad.run(&mut c.g).unwrap();
    mpc::verify(&c.g).unwrap();
    for &(p, v) in &c.g.gradients {
        let stat = ["mean", "var"].contains(&c.g.node(p).name());
        assert_eq!(matches!(c.g.node(v.node).op(), Op::Constant { value: 0.0, .. }), stat, "{}", c.g.node(p).name());
    }
    // Only the statistics as parameters: no gradient node at all.
    let mut c = Case::new(24);
    let x = c.input("x", Tensor::from_f32(DType::F32, vec![1, 2, 1, 1], &[0.5, -0.5]).unwrap());
    let ones = c.input("ones", Tensor::from_f32(DType::F32, vec![2], &[1.0, 1.0]).unwrap());
    let mean = c.random_param("mean", &[2]);
    let y = c.op("y", Op::FrozenBatchNorm { eps: 1e-5 }, &[x, ones, ones, mean, ones]);
    c.weighted_loss(y);
    Grad.run(&mut c.g).unwrap();
    assert!(!c.g.node_ids().any(|n| matches!(c.g.node(n).op(), Op::FrozenBatchNormGrad { .. })));
}

#[test]
fn fd_softmax_and_log_softmax() {
    check_unary(Op::Softmax { axis: -1, causal: false }, &[3, 5], None);
    check_unary(Op::Softmax { axis: 1, causal: false }, &[2, 3, 4], None);
    check_unary(Op::Softmax { axis: -1, causal: true }, &[2, 4, 4], None);
    check_unary(Op::LogSoftmax { axis: -1 }, &[3, 5], None);
    check_unary(Op::LogSoftmax { axis: 0 }, &[3, 5], None);
}

#[test]
fn fd_layer_norm() {
    let mut c = Case::new(5);
    let x = c.random_param("x", &[3, 5]);
    let gv = c.uniform(5, 0.5, 1.5);
    let gamma = c.param("gamma", &[5], gv);
    let beta = c.random_param("beta", &[5]);
    let y = c.op("y", Op::LayerNorm { eps: 1e-5 }, &[x, gamma, beta]);
    c.weighted_loss(y);
    c.check();
}

#[test]
fn fd_batch_norm() {
    let mut c = Case::new(6);
    let x = c.random_param("x", &[3, 2, 2, 2]);
    let gv = c.uniform(2, 0.5, 1.5);
    let gamma = c.param("gamma", &[2], gv);
    let beta = c.random_param("beta", &[2]);
    let y = c.op("y", Op::BatchNorm { eps: 1e-5, momentum: 0.1 }, &[x, gamma, beta]);
    c.weighted_loss(y);
    c.check();
}

#[test]
fn fd_embedding_with_repeated_ids() {
    let mut c = Case::new(7);
    let table = c.random_param("table", &[5, 3]);
    let ids = c.input("ids", Tensor::new(vec![2, 3], Data::I64(vec![0, 2, 2, 4, 0, 1])).unwrap());
    let y = c.op("y", Op::Embedding, &[table, ids]);
    c.weighted_loss(y);
    let (_, _, _, grads) = c.check();
    // Row 3 is never looked up: its gradient is exactly zero.
    assert!(grads["dtable"].to_f32_vec()[9..12].iter().all(|&v| v == 0.0));
}

#[test]
fn fd_conv2d_stride_2_padding_1() {
    let mut c = Case::new(8);
    let x = c.random_param("x", &[2, 2, 5, 5]);
    let w = c.random_param("w", &[3, 2, 3, 3]);
    let y = c.op("y", Op::Conv2d(Box::new(Conv::new([2, 2], [1, 1], 1))), &[x, w]);
    assert_eq!(c.g.ty(y).shape.0, vec![2, 3, 3, 3]);
    c.weighted_loss(y);
    c.check();
}

#[test]
fn fd_grouped_conv2d() {
    // 4 input channels and 6 output channels in 2 groups: weight [6, 2, 3, 3].
    let mut c = Case::new(15);
    let x = c.random_param("x", &[2, 4, 5, 5]);
    let w = c.random_param("w", &[6, 2, 3, 3]);
    let y = c.op("y", Op::Conv2d(Box::new(Conv::new([2, 1], [1, 0], 2))), &[x, w]);
    assert_eq!(c.g.ty(y).shape.0, vec![2, 6, 3, 3]);
    c.weighted_loss(y);
    let (g, state, _, _) = c.check();
    // Both gradients come from grouped ops.
    let grouped = g.node_ids().filter(|&n| match g.node(n).op() {
        Op::Conv2dGradInput { conv, .. } | Op::Conv2dGradWeight { conv, .. } => conv.groups == 2,
        _ => false,
    });
    assert_eq!(grouped.count(), 2);
    // Depthwise (groups = channels) against the same convolution written as
    // one ungrouped conv per channel: the forward values agree exactly.
    let mut d = Case::new(16);
    let xv = state["x"].to_f32_vec();
    let x = d.param("x", &[2, 4, 5, 5], xv.clone());
    let w = d.random_param("w", &[4, 1, 3, 3]);
    let y = d.op("y", Op::Conv2d(Box::new(Conv::new([1, 1], [1, 1], 4))), &[x, w]);
    d.weighted_loss(y);
    let mut ex = Executor::new(&d.g, backend(), 7).unwrap();
    let opts = RunOptions { fetch: vec!["y".into()], ..RunOptions::default() };
    let yv = ex.step(&d.state, &d.batch, 0, &opts).unwrap().fetched["y"].to_f32_vec();
    let wv = d.state["w"].to_f32_vec();
    for ch in 0..4 {
        let mut e = Case::new(17);
        let xc: Vec<f32> = (0..2).flat_map(|n| xv[(n * 4 + ch) * 25..(n * 4 + ch + 1) * 25].to_vec()).collect();
        let xe = e.param("x", &[2, 1, 5, 5], xc);
        let we = e.param("w", &[1, 1, 3, 3], wv[ch * 9..(ch + 1) * 9].to_vec());
        let ye = e.op("y", Op::Conv2d(Box::new(Conv::new([1, 1], [1, 1], 1))), &[xe, we]);
        e.weighted_loss(ye);
        let mut ex = Executor::new(&e.g, backend(), 7).unwrap();
        let got = ex.step(&e.state, &e.batch, 0, &opts).unwrap().fetched["y"].to_f32_vec();
        for n in 0..2 {
            assert_eq!(got[n * 25..(n + 1) * 25], yv[(n * 4 + ch) * 25..(n * 4 + ch + 1) * 25], "channel {ch}");
        }
    }
}

#[test]
fn fd_dilated_conv2d_with_groups_stride_and_padding() {
    // Odd sizes; a 3x2 kernel dilated by [2, 3] spans 5x4:
    // OH = (7 + 2·2 − 5)/2 + 1 = 4, OW = (6 + 2·1 − 4)/1 + 1 = 5.
    let cv = Conv { dilation: [2, 3], ..Conv::new([2, 1], [2, 1], 2) };
    let mut c = Case::new(18);
    let x = c.random_param("x", &[2, 4, 7, 6]);
    let w = c.random_param("w", &[6, 2, 3, 2]);
    let y = c.op("y", Op::Conv2d(Box::new(cv)), &[x, w]);
    assert_eq!(c.g.ty(y).shape.0, vec![2, 6, 4, 5]);
    c.weighted_loss(y);
    let (g, _, _, _) = c.check();
    // grad forwards the whole convolution to both gradients.
    let dilated = g.node_ids().filter(|&n| match g.node(n).op() {
        Op::Conv2dGradInput { conv, .. } | Op::Conv2dGradWeight { conv, .. } => **conv == cv,
        _ => false,
    });
    assert_eq!(dilated.count(), 2);
    // Ungrouped, unit stride, a dilation that leaves input rows no tap reads
    // (rows 1, 3 and 5 of 7 under a 2-tap kernel dilated by 4, stride 2:
    // their gradient is exactly 0).
    let mut d = Case::new(19);
    let x = d.random_param("x", &[1, 3, 7, 5]);
    let w = d.random_param("w", &[2, 3, 2, 3]);
    let y = d.op("y", Op::Conv2d(Box::new(Conv { dilation: [4, 1], ..Conv::new([2, 1], [0, 1], 1) })), &[x, w]);
    assert_eq!(d.g.ty(y).shape.0, vec![1, 2, 2, 5]);
    d.weighted_loss(y);
    let (_, _, _, grads) = d.check();
    let dx = grads["dx"].to_f32_vec();
    for (i, v) in dx.iter().enumerate() {
        let row = (i / 5) % 7;
        if row % 2 == 1 {
            assert_eq!(*v, 0.0, "dx[{i}] (row {row}) is read by no tap");
        }
    }
}

/// Distinct values 0.05 apart (shuffled), so no two taps of a window are within 2h.
fn distinct(c: &mut Case, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - 0.6).collect();
    for i in (1..n).rev() {
        let j = (c.rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

#[test]
fn fd_pooling() {
    let win = |k, s, p| Window::new([k, k], [s, s], [p, p]);
    // Asymmetric: nothing before, one row and column after (ONNX's
    // ceil-mode pattern), and top/left padding only with a 3x3 window.
    let asym = [Window { padding_end: [1, 1], ..win(2, 2, 0) }, Window { padding_end: [0, 0], ..win(3, 2, 1) }];
    for w in [win(2, 2, 0), win(3, 2, 1), asym[0], asym[1]] {
        let mut c = Case::new(9);
        let v = distinct(&mut c, 50);
        let x = c.param("x", &[1, 2, 5, 5], v);
        let y = c.op("y", Op::MaxPool2d(Box::new(w)), &[x]);
        c.weighted_loss(y);
        c.check();
        for count_include_pad in [true, false] {
            check_unary(Op::AvgPool2d { window: Box::new(w), count_include_pad }, &[1, 2, 5, 5], None);
        }
    }
}

#[test]
fn fd_layout_ops() {
    check_unary(Op::Flatten { axis: 1 }, &[2, 3, 2], None);
    check_unary(Op::Reshape { shape: vec![4, -1] }, &[2, 3, 4], None);
    check_unary(Op::Transpose { perm: vec![2, 0, 1] }, &[2, 3, 4], None);
    check_unary(Op::BroadcastTo { shape: vec![2, 3, 4] }, &[3, 1], None);
    check_unary(Op::SumTo { shape: vec![3, 1] }, &[2, 3, 4], None);
}

#[test]
fn fd_concat() {
    // Three inputs along axis 1, then one input twice (its two gradients add).
    let mut c = Case::new(18);
    let a = c.random_param("a", &[2, 2, 3]);
    let b = c.random_param("b", &[2, 1, 3]);
    let d = c.random_param("d", &[2, 3, 3]);
    let y = c.op("y", Op::Concat { axis: 1 }, &[a, b, d]);
    assert_eq!(c.g.ty(y).shape.0, vec![2, 6, 3]);
    c.weighted_loss(y);
    c.check();

    let mut c = Case::new(19);
    let a = c.random_param("a", &[2, 2, 3]);
    let b = c.random_param("b", &[2, 1, 3]);
    let y = c.op("y", Op::Concat { axis: -2 }, &[a, b, a]);
    c.weighted_loss(y);
    c.check();
}

#[test]
fn fd_split_with_unused_pieces() {
    // Pieces [2,1,3], [2,2,3], [2,3,3] of x [2,6,3]; `used` lists the pieces
    // the loss reads (broadcast-added into one [2,3,3] value).
    for used in [vec![0, 2], vec![2], vec![1]] {
        let mut c = Case::new(20);
        let x = c.random_param("x", &[2, 6, 3]);
        let s = c.op("s", Op::Split { axis: 1, sizes: vec![1, 2, 3] }, &[x]);
        let piece = |k: u32| ValueId { node: s.node, slot: k };
        let mut y = piece(used[0]);
        for (i, &k) in used.iter().enumerate().skip(1) {
            y = c.op(&format!("sum{i}"), Op::Add, &[y, piece(k)]);
        }
        c.weighted_loss(y);
        let (_, _, _, grads) = c.check();
        // Rows of x in an unused piece get exactly zero.
        let dx = grads["dx"].to_f32_vec();
        let rows = [0..1, 1..3, 3..6];
        for k in 0..3u32 {
            let zero = (0..2).all(|n| rows[k as usize].clone().all(|r| (0..3).all(|j| dx[(n * 6 + r) * 3 + j] == 0.0)));
            assert_eq!(zero, !used.contains(&k), "piece {k} with {used:?} used");
        }
    }
}

#[test]
fn fd_reductions() {
    for keepdims in [false, true] {
        for axes in [vec![1], vec![0, 2], vec![-1]] {
            check_unary(Op::ReduceSum { axes: axes.clone(), keepdims }, &[2, 3, 4], None);
            check_unary(Op::ReduceMean { axes, keepdims }, &[2, 3, 4], None);
        }
    }
}

#[test]
fn fd_cross_entropy() {
    let mut c = Case::new(10);
    let logits = c.random_param("logits", &[4, 5]);
    let labels = c.input("labels", Tensor::new(vec![4], Data::I32(vec![1, 0, 4, 4])).unwrap());
    let l = c.op("loss", Op::CrossEntropy, &[logits, labels]);
    c.g.loss = Some(l);
    c.check();
}

#[test]
fn fd_mse_both_operands() {
    let mut c = Case::new(12);
    let p = c.random_param("p", &[3, 4]);
    let t = c.random_param("t", &[3, 4]);
    let l = c.op("loss", Op::Mse, &[p, t]);
    c.g.loss = Some(l);
    c.check();
}

#[test]
fn fd_dropout_with_its_mask() {
    let mut c = Case::new(13);
    let x = c.random_param("x", &[4, 8]);
    let y = c.op("y", Op::Dropout { p: 0.5, seed: 3 }, &[x]);
    c.weighted_loss(y);
    let r = c.batch["r"].to_f32_vec();
    let (g, state, batch, _) = c.check();
    // dx must be r·2 exactly where the forward kept, 0 elsewhere.
    let mut ex = Executor::new(&g, backend(), 7).unwrap();
    let opts = RunOptions { fetch: vec!["y:1".into(), "dx".into()], ..RunOptions::default() };
    let out = ex.step(&state, &batch, 0, &opts).unwrap();
    let Data::Bool(mask) = out.fetched["y:1"].data().clone() else { panic!("the mask is not bool") };
    let dx = out.fetched["dx"].to_f32_vec();
    let kept = mask.iter().filter(|&&k| k).count();
    assert!(kept > 4 && kept < 28, "{kept} of 32 kept at p = 0.5");
    for i in 0..32 {
        assert_eq!(dx[i], if mask[i] { r[i] * 2.0 } else { 0.0 }, "element {i}");
    }
    // Same step, same mask; another step, another mask.
    let again = ex.step(&state, &batch, 0, &opts).unwrap();
    assert_eq!(again.fetched["y:1"], out.fetched["y:1"]);
    let next = ex.step(&state, &batch, 1, &opts).unwrap();
    assert_ne!(next.fetched["y:1"], out.fetched["y:1"]);
}

#[test]
fn dropout_masks_differ_between_nodes_with_equal_seeds() {
    let mut c = Case::new(14);
    let x = c.random_param("x", &[64]);
    let a = c.op("a", Op::Dropout { p: 0.5, seed: 1 }, &[x]);
    let b = c.op("b", Op::Dropout { p: 0.5, seed: 1 }, &[x]);
    let s = c.op("s", Op::Add, &[a, b]);
    c.weighted_loss(s);
    let mut ex = Executor::new(&c.g, backend(), 7).unwrap();
    let opts = RunOptions { fetch: vec!["a:1".into(), "b:1".into()], ..RunOptions::default() };
    let out = ex.step(&c.state, &c.batch, 0, &opts).unwrap();
    assert_ne!(out.fetched["a:1"], out.fetched["b:1"]);
    // Another graph seed, other masks.
    let mut ex2 = Executor::new(&c.g, backend(), 8).unwrap();
    let out2 = ex2.step(&c.state, &c.batch, 0, &opts).unwrap();
    assert_ne!(out2.fetched["a:1"], out.fetched["a:1"]);
}

// ---------------------------------------------------------------------------
// Low precision.
// ---------------------------------------------------------------------------

fn run_op(op: Op, inputs: &[&Tensor], out: &[TensorType]) -> Result<Vec<Tensor>, ExecError> {
    let ctx = OpCtx { node: "n", step: 0, seed: 0 };
    let mut be = backend();
    let bufs = inputs.iter().map(|t| be.upload(t)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<_> = bufs.iter().collect();
    let outs = be.run(&op, &ctx, &refs, out)?;
    outs.iter().map(|b| be.download(b)).collect()
}

#[test]
fn low_precision_matmul_rounds_the_f32_product_once() {
    for dtype in [DType::F16, DType::Bf16] {
        let mut rng = SplitMix64::new(21);
        // Multiples of 1/8 up to 32: exact in f16 and bf16, and every product
        // (a multiple of 1/64 below 1024) and sum of 16 of them (below 2^14,
        // 20 significant bits) is exact in f32 in any order.
        let mut vals =
            |n: usize| -> Vec<f32> { (0..n).map(|_| ((rng.next_u64() % 511) as i64 - 255) as f32 / 8.0).collect() };
        let (m, k, n) = (5, 16, 7);
        let (av, bv) = (vals(m * k), vals(k * n));
        let a = Tensor::from_f32(dtype, vec![m as u64, k as u64], &av).unwrap();
        let b = Tensor::from_f32(dtype, vec![k as u64, n as u64], &bv).unwrap();
        assert_eq!(a.to_f32_vec(), av, "inputs must be exact in {dtype}");
        let out = TensorType::new(dtype, vec![m as u64, n as u64]);
        let y = run_op(mm(false, false), &[&a, &b], &[out]).unwrap().remove(0);
        let mut rounded = 0;
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k).map(|p| av[i * k + p] * bv[p * n + j]).sum();
                let want = Tensor::from_f32(dtype, vec![1], &[dot]).unwrap();
                let got = Data::from_f32(dtype, &[y.to_f32_vec()[i * n + j]]);
                assert!(got.bit_eq(want.data()), "{dtype} [{i},{j}]: {got:?} vs {dot}");
                if want.to_f32_vec()[0] != dot {
                    rounded += 1;
                }
            }
        }
        assert!(rounded > 0, "no output needed rounding: the test would not see double rounding");
        if dtype == DType::F16 {
            let Data::F16(h) = y.data() else { panic!("an f16 matmul must return f16") };
            let dot: f32 = (0..k).map(|p| av[p] * bv[p * n]).sum();
            assert_eq!(h[0].to_bits(), f16::from_f32(dot).to_bits());
        }
    }
}

#[test]
fn casts_round_to_nearest_even_and_underflow() {
    let u = 2f32.powi(-11);
    let x = Tensor::from_f32(
        DType::F32,
        vec![7],
        &[1.0 + u, 1.0 + 3.0 * u, 1e-8, 65519.0, 65520.0, 2f32.powi(-25), 1.5 * 2f32.powi(-25)],
    )
    .unwrap();
    let y = run_op(Op::Cast { to: DType::F16 }, &[&x], &[TensorType::new(DType::F16, vec![7])]).unwrap().remove(0);
    let Data::F16(h) = y.data() else { panic!("not f16") };
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even, 1.0.
    assert_eq!(h[0], f16::ONE);
    // 1 + 3·2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: ties to even, up.
    assert_eq!(h[1].to_f32(), 1.0 + 2f32.powi(-9));
    // 1e-8 is below half of f16's smallest subnormal (2^-24 ≈ 5.96e-8): 0.
    assert_eq!(h[2].to_bits(), 0);
    assert_eq!(h[3].to_f32(), 65504.0);
    assert_eq!(h[4], f16::INFINITY);
    assert_eq!(h[5].to_bits(), 0, "2^-25 ties to even (0)");
    assert_eq!(h[6].to_bits(), 1, "1.5·2^-25 rounds up to the smallest subnormal");
    // Back to f32 is exact.
    let back = run_op(Op::Cast { to: DType::F32 }, &[&y], &[TensorType::new(DType::F32, vec![7])]).unwrap().remove(0);
    assert_eq!(back.to_f32_vec()[1], 1.0 + 2f32.powi(-9));
}

#[test]
fn select_copies_bits_and_bad_labels_are_errors() {
    let a = Tensor::from_f32(DType::F32, vec![2], &[f32::NAN, -0.0]).unwrap();
    let b = Tensor::from_f32(DType::F32, vec![2], &[1.0, 2.0]).unwrap();
    let t = TensorType::new(DType::F32, vec![2]);
    let y = run_op(Op::Select, &[&Tensor::scalar_f32(1.0), &a, &b], std::slice::from_ref(&t)).unwrap().remove(0);
    assert!(y.bit_eq(&a));
    let y = run_op(Op::Select, &[&Tensor::scalar_f32(0.0), &a, &b], &[t]).unwrap().remove(0);
    assert!(y.bit_eq(&b));
    let logits = Tensor::from_f32(DType::F32, vec![2, 3], &[0.0; 6]).unwrap();
    let labels = Tensor::new(vec![2], Data::I32(vec![0, 3])).unwrap();
    let r = run_op(Op::CrossEntropy, &[&logits, &labels], &[TensorType::scalar(DType::F32)]);
    match (STOPS_ON_BAD_LABELS, r) {
        (true, Err(e)) => assert!(matches!(&e, ExecError::Op { node, op: "cross_entropy", .. } if node == "n"), "{e}"),
        (false, Ok(y)) => assert!(y[0].to_f32_vec()[0].is_nan(), "{y:?}"),
        (stops, r) => panic!("a label out of range (stops: {stops}): {r:?}"),
    }
    let e = run_op(mm(false, false), &[&logits, &logits], &[TensorType::new(DType::F32, vec![2, 3])]).unwrap_err();
    // Each backend words it its own way (the CPU re-infers types, a device checks its GEMM's shape).
    assert!(matches!(&e, ExecError::Op { node, op: "matmul", .. } if node == "n"), "{e}");
}

// ---------------------------------------------------------------------------
// A full lowered step: fp16 with dynamic loss scaling.
// ---------------------------------------------------------------------------

fn lowered(file: &str, opts: &mpc::passes::Options) -> Graph {
    let text = std::fs::read_to_string(file).unwrap();
    let mut g = mpc::parse_str(&text).unwrap();
    mpc::passes::lower(&mut g, opts).unwrap();
    g
}

fn mlp_batch() -> State {
    let mut rng = SplitMix64::new(5);
    let x: Vec<f32> = (0..64 * 64).map(|_| rng.normal() as f32).collect();
    let labels: Vec<i32> = (0..64).map(|i| i * 7 % 10).collect();
    let mut b = State::new();
    b.insert("x".into(), Tensor::from_f32(DType::F32, vec![64, 64], &x).unwrap());
    b.insert("labels".into(), Tensor::new(vec![64], Data::I32(labels)).unwrap());
    b
}

fn same_state(a: &State, b: &State) -> bool {
    a.len() == b.len() && a.iter().all(|(k, t)| b.get(k).is_some_and(|u| u.bit_eq(t)))
}

#[test]
fn lowered_mlp_trains_deterministically() {
    let g = lowered("ir-examples/mlp.json", &mpc::passes::Options::default());
    let batch = mlp_batch();
    let run = || {
        let mut ex = Executor::new(&g, backend(), 1).unwrap();
        let mut state = init_state(&g, 42).unwrap();
        let mut losses = Vec::new();
        for step in 0..2 {
            let r = ex.step(&state, &batch, step, &RunOptions::default()).unwrap();
            assert!(r.peak_live < ex.num_values(), "liveness frees nothing");
            losses.push(r.loss.unwrap());
            state = r.state;
        }
        (state, losses)
    };
    let (s1, l1) = run();
    let (s2, l2) = run();
    assert!(same_state(&s1, &s2), "two runs from the same seed differ");
    assert!(l1.iter().zip(&l2).all(|(a, b)| a.bit_eq(b)));
    let loss0 = l1[0].item_f32().unwrap();
    assert!(loss0.is_finite() && loss0 > 0.5 && loss0 < 10.0, "loss {loss0}");
    assert_eq!(l1[0].dtype(), DType::F32);
    // A different init seed gives different params.
    assert!(!same_state(&init_state(&g, 42).unwrap(), &init_state(&g, 43).unwrap()));
}

#[test]
fn overflow_skips_the_step_and_halves_the_scale() {
    let g = lowered("ir-examples/mlp.json", &mpc::passes::Options::default());
    let batch = mlp_batch();
    let mut ex = Executor::new(&g, backend(), 1).unwrap();
    let s0 = init_state(&g, 42).unwrap();
    let opts = RunOptions { inject_inf: Some(("dw1".into(), 1)), ..RunOptions::default() };
    let r0 = ex.step(&s0, &batch, 0, &opts).unwrap();
    assert_eq!(r0.outputs["found_inf"].item_f32(), Some(0.0), "step 0 overflowed by itself");
    assert_eq!(r0.state["loss_scale"].item_f32(), Some(65536.0));
    assert_eq!(r0.state["loss_scale_tracker"].data(), &Data::I32(vec![1]));
    assert!(!r0.state["w1"].bit_eq(&s0["w1"]), "step 0 did not train");

    let r1 = ex.step(&r0.state, &batch, 1, &opts).unwrap();
    assert_eq!(r1.outputs["found_inf"].item_f32(), Some(1.0));
    assert_eq!(r1.outputs["loss_scale"].item_f32(), Some(65536.0), "the scale used by the step");
    assert_eq!(r1.state["loss_scale"].item_f32(), Some(32768.0));
    assert_eq!(r1.state["loss_scale_tracker"].data(), &Data::I32(vec![0]));
    for (name, t) in &r0.state {
        if !name.starts_with("loss_scale") {
            assert!(r1.state[name].bit_eq(t), "`{name}` changed on a skipped step");
        }
    }

    let r2 = ex.step(&r1.state, &batch, 2, &opts).unwrap();
    assert_eq!(r2.outputs["found_inf"].item_f32(), Some(0.0));
    assert_eq!(r2.outputs["loss_scale"].item_f32(), Some(32768.0));
    assert!(!r2.state["w1"].bit_eq(&r1.state["w1"]), "training did not resume");
    assert_eq!(r2.state["optimizer_step"].data(), &Data::I32(vec![2]));
    assert!(r2.loss_f32().is_some_and(f32::is_finite));
}

#[test]
fn lowered_examples_run_a_step_in_f16_and_bf16() {
    for low in [DType::F16, DType::Bf16] {
        let opts = mpc::passes::Options { low, ..mpc::passes::Options::default() };
        for file in ["ir-examples/cnn.json", "ir-examples/gpt_block.json", "ir-examples/regression_mse.json"] {
            let g = lowered(file, &opts);
            let mut rng = SplitMix64::new(9);
            let mut batch = State::new();
            for n in g.node_ids() {
                let node = g.node(n);
                if let Op::Input { ty } = node.op() {
                    let count = numel(&ty.shape.0);
                    let t = if ty.dtype == DType::I32 {
                        let v = (0..count).map(|_| (rng.next_u64() % 10) as i32).collect();
                        Tensor::new(ty.shape.clone(), Data::I32(v)).unwrap()
                    } else {
                        let v: Vec<f32> = (0..count).map(|_| rng.normal() as f32 * 0.5).collect();
                        Tensor::from_f32(ty.dtype, ty.shape.clone(), &v).unwrap()
                    };
                    batch.insert(node.name().to_string(), t);
                }
            }
            let mut ex = Executor::new(&g, backend(), 3).unwrap();
            let state = init_state(&g, 3).unwrap();
            let r = ex.step(&state, &batch, 0, &RunOptions::default()).unwrap();
            let loss = r.loss_f32().unwrap();
            assert!(loss.is_finite(), "{file} ({low}): loss {loss}");
            assert_eq!(r.state.len(), state.len());
            assert!(r.state.iter().all(|(k, t)| t.ty() == state[k].ty()));
        }
    }
}

#[test]
fn missing_batch_values_and_file_inits_are_errors() {
    let g = lowered("ir-examples/mlp.json", &mpc::passes::Options::default());
    let mut ex = Executor::new(&g, backend(), 1).unwrap();
    let state = init_state(&g, 1).unwrap();
    let mut batch = mlp_batch();
    batch.remove("labels");
    let e = ex.step(&state, &batch, 0, &RunOptions::default()).unwrap_err();
    assert!(matches!(&e, ExecError::Value { name, .. } if name == "labels"), "{e}");
    let mut batch = mlp_batch();
    batch.insert("labels".into(), Tensor::new(vec![64], Data::I32(vec![10; 64])).unwrap());
    match (STOPS_ON_BAD_LABELS, ex.step(&state, &batch, 0, &RunOptions::default())) {
        (true, Err(e)) => assert!(matches!(&e, ExecError::Op { op: "cross_entropy", .. }), "{e}"),
        // The loss is NaN, so the scaler skips the step: nothing a user saved changes.
        (false, Ok(r)) => {
            assert!(r.loss_f32().is_some_and(f32::is_nan));
            assert_eq!(r.outputs["found_inf"].to_f32_vec(), [1.0]);
            assert!(state.iter().filter(|(k, _)| !k.starts_with("loss_scale")).all(|(k, t)| r.state[k].bit_eq(t)));
        }
        (stops, r) => panic!("labels out of range (stops: {stops}): {:?}", r.map(|r| r.loss)),
    }
}

// ---------------------------------------------------------------------------
// GradScaler's contract, through the executor.
// ---------------------------------------------------------------------------

fn scaler_graph() -> Graph {
    let mut g = Graph::new("scaler");
    let f = TensorType::scalar(DType::F32);
    let scale = g
        .add_node("scale", Op::State { ty: f.clone(), init: Init::Constant { value: 65536.0 } }, Role::Forward, &[])
        .unwrap();
    let tracker = g
        .add_node("tracker", Op::State { ty: TensorType::scalar(DType::I32), init: Init::Zeros }, Role::Forward, &[])
        .unwrap();
    let found = g.add_node("found", Op::Input { ty: f }, Role::Forward, &[]).unwrap();
    let v = |node| ValueId { node, slot: 0 };
    let up = g
        .add_node(
            "up",
            Op::ScaleUpdate { growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 },
            Role::Scaler,
            &[v(scale), v(tracker), v(found)],
        )
        .unwrap();
    g.updates.push((scale, ValueId { node: up, slot: 0 }));
    g.updates.push((tracker, ValueId { node: up, slot: 1 }));
    g
}

#[test]
fn grad_scaler_contract() {
    let g = scaler_graph();
    let mut ex = Executor::new(&g, backend(), 0).unwrap();
    let batch = |f: f32| State::from([("found".to_string(), Tensor::scalar_f32(f))]);
    let (inf, clean) = (batch(1.0), batch(0.0));
    let read = |s: &State| (s["scale"].item_f32().unwrap(), s["tracker"].data().clone());
    let mut s = init_state(&g, 0).unwrap();
    assert_eq!(read(&s), (65536.0, Data::I32(vec![0])));
    s = ex.step(&s, &inf, 0, &RunOptions::default()).unwrap().state;
    assert_eq!(read(&s), (32768.0, Data::I32(vec![0])));
    for step in 1..2000 {
        s = ex.step(&s, &clean, step, &RunOptions::default()).unwrap().state;
    }
    assert_eq!(read(&s), (32768.0, Data::I32(vec![1999])));
    s = ex.step(&s, &clean, 2000, &RunOptions::default()).unwrap().state;
    assert_eq!(read(&s), (65536.0, Data::I32(vec![0])));
    // An overflow in the middle resets the tracker.
    s = ex.step(&s, &clean, 2001, &RunOptions::default()).unwrap().state;
    s = ex.step(&s, &inf, 2002, &RunOptions::default()).unwrap().state;
    assert_eq!(read(&s), (32768.0, Data::I32(vec![0])));
}
