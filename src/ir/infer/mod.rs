//! Shape and dtype inference for every op: the public entry points and the
//! checks every family shares here, one file per op family (as in
//! `exec/cpu/`) for the rules.
//!
//! `infer` is the single definition of what types an op accepts and returns;
//! the parser uses it to type a graph and the verifier re-runs it to check one.

use crate::ir::op::{Op, Window};
use crate::ir::opinfo::Outputs;
use crate::ir::types::{DType, Shape, TensorType};

mod elementwise;
mod layout;
mod linalg;
mod nn;
mod optim;

type Result<T> = std::result::Result<T, String>;

/// Number of inputs each op takes: (at least, at most), from the op table.
pub fn arity(op: &Op) -> (usize, usize) {
    op.info().arity()
}

/// Whether `n` inputs fit the op's arity.
pub fn arity_ok(op: &Op, n: usize) -> bool {
    let (lo, hi) = arity(op);
    (lo..=hi).contains(&n)
}

/// The arity as words, for messages.
pub fn arity_text(op: &Op) -> String {
    match arity(op) {
        (1, usize::MAX) => "at least 1 input".to_string(),
        (n, _) => format!("{n} input{}", if n == 1 { "" } else { "s" }),
    }
}

/// Number of outputs each op produces, from the op table.
pub fn num_outputs(op: &Op) -> usize {
    match (op.info().outputs, op) {
        (Outputs::Fixed(n), _) => n,
        // One output per piece; at least one, so that a node always has a value.
        (Outputs::PerSize, Op::Split { sizes, .. }) => sizes.len().max(1),
        (Outputs::PerSize, other) => unreachable!("only split has an output per size, not {}", other.name()),
    }
}

/// Names of the inputs, for error messages and documentation (the table's).
pub fn input_names(op: &Op) -> &'static [&'static str] {
    op.info().inputs
}

fn float(t: &TensorType, what: &str) -> Result<()> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("{what} must be a float tensor, found {t}"))
    }
}

fn int(t: &TensorType, what: &str) -> Result<()> {
    if t.dtype.is_int() {
        Ok(())
    } else {
        Err(format!("{what} must be an integer tensor (i32 or i64), found {t}"))
    }
}

fn same_dtype(a: &TensorType, b: &TensorType, what: &str) -> Result<()> {
    if a.dtype == b.dtype {
        Ok(())
    } else {
        Err(format!("{what}: operands must have the same dtype, found {} and {} (insert a cast)", a.dtype, b.dtype))
    }
}

fn same_type(a: &TensorType, b: &TensorType, what: &str) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(format!("{what} must have the same type, found {a} and {b}"))
    }
}

fn rank(t: &TensorType, r: usize, what: &str) -> Result<()> {
    if t.shape.rank() == r {
        Ok(())
    } else {
        Err(format!("{what} must have rank {r}, found {t}"))
    }
}

fn checked(shape: Shape) -> Result<Shape> {
    shape.validate()?;
    Ok(shape)
}

/// NumPy broadcasting of two shapes.
pub fn broadcast(a: &Shape, b: &Shape) -> Result<Shape> {
    let r = a.rank().max(b.rank());
    let mut out = vec![0; r];
    for (i, o) in out.iter_mut().enumerate() {
        let da = dim_from_end(a, r - 1 - i);
        let db = dim_from_end(b, r - 1 - i);
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a} and {b} do not broadcast")),
        };
    }
    Ok(Shape(out))
}

fn dim_from_end(s: &Shape, k: usize) -> u64 {
    if k < s.rank() {
        s.0[s.rank() - 1 - k]
    } else {
        1
    }
}

/// Whether `from` broadcasts to exactly `to`.
pub fn broadcasts_to(from: &Shape, to: &Shape) -> bool {
    from.rank() <= to.rank() && broadcast(from, to).is_ok_and(|s| &s == to)
}

fn window_out(x: &TensorType, w: &Window, what: &str) -> Result<Shape> {
    rank(x, 4, &format!("{what} input (NCHW)"))?;
    let d = x.shape.dims();
    let hw = w.output_hw(d[2], d[3]).ok_or_else(|| {
        format!(
            "{what}: window kernel={:?} stride={:?} padding={:?}{} does not fit input {}",
            w.kernel,
            w.stride,
            w.padding,
            if w.padding_end == w.padding { String::new() } else { format!(" padding_end={:?}", w.padding_end) },
            x.shape
        )
    })?;
    Ok(Shape(vec![d[0], d[1], hw[0], hw[1]]))
}

/// The output types of `op` applied to `inputs`, or why they do not fit.
/// Every output shape is checked against [`crate::ir::types::MAX_ELEMENTS`].
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    let out = infer_unchecked(op, inputs)?;
    for t in &out {
        t.shape.validate()?;
    }
    Ok(out)
}

fn infer_unchecked(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    if !arity_ok(op, inputs.len()) {
        return Err(format!(
            "{} takes {} ({}), found {}",
            op.name(),
            arity_text(op),
            input_names(op).join(", "),
            inputs.len()
        ));
    }
    use Op::*;
    match op {
        Input { .. }
        | Param { .. }
        | State { .. }
        | Constant { .. }
        | Seed
        | Cast { .. }
        | Identity
        | Add
        | Sub
        | Mul
        | Div
        | Scale { .. }
        | Relu
        | Gelu
        | Tanh
        | Sigmoid
        | Exp
        | Log
        | Erf
        | Sqrt
        | Dropout { .. }
        | ReluGrad
        | GeluGrad
        | ErfGrad
        | TanhGrad
        | SigmoidGrad
        | SoftmaxGrad { .. }
        | LogSoftmaxGrad { .. }
        | DropoutGrad { .. } => elementwise::infer(op, inputs),
        Matmul { .. }
        | Conv2d(..)
        | MaxPool2d(..)
        | AvgPool2d { .. }
        | Conv2dGradInput { .. }
        | Conv2dGradWeight { .. }
        | MaxPool2dGrad(..)
        | AvgPool2dGrad { .. } => linalg::infer(op, inputs),
        Embedding
        | Flatten { .. }
        | Reshape { .. }
        | Transpose { .. }
        | Concat { .. }
        | Split { .. }
        | ReduceSum { .. }
        | ReduceMean { .. }
        | SumTo { .. }
        | BroadcastTo { .. }
        | EmbeddingGrad { .. } => layout::infer(op, inputs),
        LayerNorm { .. }
        | Softmax { .. }
        | LogSoftmax { .. }
        | BatchNorm { .. }
        | FrozenBatchNorm { .. }
        | Lrn { .. }
        | LrnGrad { .. }
        | CrossEntropy
        | Mse
        | CrossEntropyGrad
        | MseGrad
        | LayerNormGrad
        | BatchNormGrad { .. }
        | FrozenBatchNormGrad { .. } => nn::infer(op, inputs),
        Unscale
        | FoundInf
        | GlobalNorm
        | ScaleUpdate { .. }
        | Select
        | ClipCoef { .. }
        | LrSchedule { .. }
        | Sgd { .. }
        | SgdMomentum { .. }
        | Adam { .. } => optim::infer(op, inputs),
    }
}

fn non_negative(v: f64, what: &str) -> Result<()> {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{what} must be at least 0, found {v}"))
    }
}

fn positive(v: f64, what: &str) -> Result<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{what} must be positive, found {v}"))
    }
}

#[cfg(test)]
mod reduce_tests {
    use super::*;

    /// Reducing a rank-100,000 input over every other axis: linear work
    /// (the axes were looked up with `contains`, 5·10^9 steps here).
    #[test]
    fn reduce_axes_at_high_rank() {
        let r = 100_000usize;
        let x = TensorType::new(DType::F32, vec![1; r]);
        let axes: Vec<i64> = (0..r as i64).step_by(2).collect();
        let y = infer(&Op::ReduceSum { axes: axes.clone(), keepdims: false }, &[&x]).unwrap();
        assert_eq!(y[0].shape.rank(), r / 2);
        let y = infer(&Op::ReduceMean { axes, keepdims: true }, &[&x]).unwrap();
        assert_eq!(y[0].shape.rank(), r);
        let e = infer(&Op::ReduceSum { axes: vec![3, -(r as i64) + 3], keepdims: false }, &[&x]).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::op::Conv;

    fn t(dtype: DType, s: &[u64]) -> TensorType {
        TensorType::new(dtype, s.to_vec())
    }

    #[test]
    fn matmul_batched_and_transposed() {
        let a = t(DType::F16, &[8, 4, 16, 32]);
        let b = t(DType::F16, &[8, 4, 16, 32]);
        let out = infer(&Op::Matmul { transpose_a: false, transpose_b: true }, &[&a, &b]).unwrap();
        assert_eq!(out[0], t(DType::F16, &[8, 4, 16, 16]));
        let w = t(DType::F16, &[32, 64]);
        let out = infer(&Op::Matmul { transpose_a: false, transpose_b: false }, &[&a, &w]).unwrap();
        assert_eq!(out[0], t(DType::F16, &[8, 4, 16, 64]));
        let err = infer(&Op::Matmul { transpose_a: false, transpose_b: false }, &[&a, &b]).unwrap_err();
        assert!(err.contains("inner dimensions"), "{err}");
    }

    #[test]
    fn broadcasting() {
        let a = t(DType::F32, &[64, 128]);
        let b = t(DType::F32, &[128]);
        assert_eq!(infer(&Op::Add, &[&a, &b]).unwrap()[0], a);
        assert!(infer(&Op::Add, &[&a, &t(DType::F32, &[64])]).is_err());
        assert!(infer(&Op::Add, &[&a, &t(DType::F16, &[128])]).unwrap_err().contains("cast"));
    }

    #[test]
    fn reshape_infers_minus_one() {
        let x = t(DType::F32, &[2, 3, 4]);
        let out = infer(&Op::Reshape { shape: vec![6, -1] }, &[&x]).unwrap();
        assert_eq!(out[0], t(DType::F32, &[6, 4]));
        assert!(infer(&Op::Reshape { shape: vec![5, -1] }, &[&x]).is_err());
        assert!(infer(&Op::Reshape { shape: vec![-1, -1] }, &[&x]).is_err());
    }

    #[test]
    fn conv_and_pool() {
        let x = t(DType::F32, &[8, 1, 8, 8]);
        let w = t(DType::F32, &[4, 1, 3, 3]);
        let y = infer(&Op::Conv2d(Box::new(Conv::new([1, 1], [1, 1], 1))), &[&x, &w]).unwrap();
        assert_eq!(y[0], t(DType::F32, &[8, 4, 8, 8]));
        let win = Window::new([2, 2], [2, 2], [0, 0]);
        let p = infer(&Op::MaxPool2d(Box::new(win)), &[&y[0]]).unwrap();
        assert_eq!(p[0], t(DType::F32, &[8, 4, 4, 4]));
        let dx = infer(
            &Op::Conv2dGradInput { conv: Box::new(Conv::new([1, 1], [1, 1], 1)), shape: vec![8, 1, 8, 8] },
            &[&y[0], &w],
        )
        .unwrap();
        assert_eq!(dx[0], x);
        let dw =
            infer(&Op::Conv2dGradWeight { conv: Box::new(Conv::new([1, 1], [1, 1], 1)), kernel: [3, 3] }, &[&y[0], &x])
                .unwrap();
        assert_eq!(dw[0], w);
    }

    #[test]
    fn grouped_conv() {
        let conv = |groups| Op::Conv2d(Box::new(Conv::new([1, 1], [0, 0], groups)));
        let x = t(DType::F32, &[2, 6, 5, 5]);
        let w = t(DType::F32, &[4, 3, 3, 3]);
        assert_eq!(infer(&conv(2), &[&x, &w]).unwrap()[0], t(DType::F32, &[2, 4, 3, 3]));
        let err = infer(&conv(4), &[&x, &w]).unwrap_err();
        assert!(err.contains("groups=4 does not divide the input's 6 channels"), "{err}");
        let err = infer(&conv(3), &[&x, &t(DType::F32, &[4, 2, 3, 3])]).unwrap_err();
        assert!(err.contains("groups=3 does not divide the weight's 4 output channels"), "{err}");
        let err = infer(&conv(2), &[&x, &t(DType::F32, &[4, 6, 3, 3])]).unwrap_err();
        assert!(err.contains("6 channels in 2 groups (3 per group)"), "{err}");
        assert!(infer(&conv(0), &[&x, &w]).unwrap_err().contains("at least 1"));
        let dy = t(DType::F32, &[2, 4, 3, 3]);
        let dw = Op::Conv2dGradWeight { conv: Box::new(Conv::new([1, 1], [0, 0], 2)), kernel: [3, 3] };
        assert_eq!(infer(&dw, &[&dy, &x]).unwrap()[0], w);
        let dx = Op::Conv2dGradInput { conv: Box::new(Conv::new([1, 1], [0, 0], 2)), shape: vec![2, 6, 5, 5] };
        assert_eq!(infer(&dx, &[&dy, &w]).unwrap()[0], x);
        let bad = Op::Conv2dGradWeight { conv: Box::new(Conv::new([1, 1], [0, 0], 4)), kernel: [3, 3] };
        assert!(infer(&bad, &[&dy, &x]).unwrap_err().contains("does not divide"));
    }

    #[test]
    fn dilated_conv() {
        // A 3x2 kernel dilated by [2, 3] spans 5x4: (9 + 2·1 − 5)/2 + 1 = 4, (7 − 4)/1 + 1 = 4.
        let cv = Conv { dilation: [2, 3], ..Conv::new([2, 1], [1, 0], 2) };
        let x = t(DType::F32, &[2, 4, 9, 7]);
        let w = t(DType::F32, &[6, 2, 3, 2]);
        let y = infer(&Op::Conv2d(Box::new(cv)), &[&x, &w]).unwrap().remove(0);
        assert_eq!(y, t(DType::F32, &[2, 6, 4, 4]));
        let dx = Op::Conv2dGradInput { conv: Box::new(cv), shape: vec![2, 4, 9, 7] };
        assert_eq!(infer(&dx, &[&y, &w]).unwrap()[0], x);
        let dw = Op::Conv2dGradWeight { conv: Box::new(cv), kernel: [3, 2] };
        assert_eq!(infer(&dw, &[&y, &x]).unwrap()[0], w);
        // The undilated conv's output does not fit the dilated gradients.
        let y1 = infer(&Op::Conv2d(Box::new(Conv { dilation: [1, 1], ..cv })), &[&x, &w]).unwrap().remove(0);
        assert!(infer(&dw, &[&y1, &x]).unwrap_err().contains("conv2d's output"));
        // Too wide a dilation for the input, and a zero one.
        let wide = Op::Conv2d(Box::new(Conv { dilation: [6, 1], ..cv }));
        let err = infer(&wide, &[&x, &w]).unwrap_err();
        assert!(err.contains("conv2d (the 3x2 kernel dilated by [6, 1]): window kernel=[13, 2]"), "{err}");
        let zero = Op::Conv2d(Box::new(Conv { dilation: [0, 1], ..cv }));
        assert!(infer(&zero, &[&x, &w]).unwrap_err().contains("dilations must be at least 1"));
        let huge = Op::Conv2d(Box::new(Conv { dilation: [u64::MAX, 1], ..cv }));
        assert!(infer(&huge, &[&x, &w]).unwrap_err().contains("too large"));
    }

    #[test]
    fn sum_to_reverses_broadcast() {
        let x = t(DType::F32, &[64, 128]);
        assert_eq!(infer(&Op::SumTo { shape: vec![128] }, &[&x]).unwrap()[0], t(DType::F32, &[128]));
        assert!(infer(&Op::SumTo { shape: vec![64] }, &[&x]).is_err());
    }

    #[test]
    fn concat_and_split() {
        let (a, b) = (t(DType::F16, &[2, 3, 4]), t(DType::F16, &[2, 5, 4]));
        let c = infer(&Op::Concat { axis: 1 }, &[&a, &b, &a]).unwrap();
        assert_eq!(c, vec![t(DType::F16, &[2, 11, 4])]);
        assert_eq!(infer(&Op::Concat { axis: -2 }, &[&a]).unwrap(), vec![a.clone()]);
        let err = infer(&Op::Concat { axis: 0 }, &[&a, &b]).unwrap_err();
        assert!(err.contains("differ on axis 1 (5 vs 3)"), "{err}");
        let err = infer(&Op::Concat { axis: 1 }, &[&a, &t(DType::F16, &[2, 3])]).unwrap_err();
        assert!(err.contains("different ranks"), "{err}");
        let err = infer(&Op::Concat { axis: 1 }, &[&a, &t(DType::F32, &[2, 3, 4])]).unwrap_err();
        assert!(err.contains("same dtype"), "{err}");
        assert!(infer(&Op::Concat { axis: 3 }, &[&a]).unwrap_err().contains("out of range"));
        assert!(infer(&Op::Concat { axis: 0 }, &[]).unwrap_err().contains("at least 1 input"));

        let s = infer(&Op::Split { axis: -2, sizes: vec![1, 4] }, &[&b]).unwrap();
        assert_eq!(s, vec![t(DType::F16, &[2, 1, 4]), t(DType::F16, &[2, 4, 4])]);
        assert_eq!(num_outputs(&Op::Split { axis: 1, sizes: vec![1, 4] }), 2);
        let err = infer(&Op::Split { axis: 1, sizes: vec![1, 3] }, &[&b]).unwrap_err();
        assert!(err.contains("sum to 4, but axis 1 of the input f16[2,5,4] has size 5"), "{err}");
        let err = infer(&Op::Split { axis: 1, sizes: vec![u64::MAX, 6] }, &[&b]).unwrap_err();
        assert!(err.contains("more than 2^64"), "{err}");
        assert!(infer(&Op::Split { axis: 1, sizes: vec![0, 5] }, &[&b]).is_err());
        assert!(infer(&Op::Split { axis: 1, sizes: vec![] }, &[&b]).is_err());
    }

    #[test]
    fn frozen_batch_norm_checks_its_statistics() {
        let x = t(DType::F16, &[2, 3, 4, 4]);
        let c = t(DType::F32, &[3]);
        let op = Op::FrozenBatchNorm { eps: 1e-5 };
        assert_eq!(infer(&op, &[&x, &c, &c, &c, &c]).unwrap(), vec![x.clone()]);
        let err = infer(&op, &[&x, &t(DType::F32, &[4]), &c, &c, &c]).unwrap_err();
        assert!(err.contains("gamma and the channel axis must have the same type, found f32[4] and f32[3]"), "{err}");
        let err = infer(&op, &[&x, &c, &c, &t(DType::F32, &[3, 1]), &c]).unwrap_err();
        assert!(err.contains("mean and gamma"), "{err}");
        let err = infer(&op, &[&x, &c, &c, &c, &t(DType::F16, &[3])]).unwrap_err();
        assert!(err.contains("var and gamma"), "{err}");
        assert!(infer(&op, &[&t(DType::F32, &[3]), &c, &c, &c, &c]).unwrap_err().contains("rank ≥ 2"));
        assert!(infer(&Op::FrozenBatchNorm { eps: 0.0 }, &[&x, &c, &c, &c, &c]).is_err());
        let grad = infer(&Op::FrozenBatchNormGrad { eps: 1e-5 }, &[&x, &x, &c, &c, &c]).unwrap();
        assert_eq!(grad, vec![x.clone(), c.clone(), c.clone()]);
        assert!(infer(&Op::FrozenBatchNormGrad { eps: 1e-5 }, &[&c, &x, &c, &c, &c]).is_err());
    }

    #[test]
    fn lrn_needs_channels() {
        let lrn = Op::Lrn { size: 5, alpha: 1e-4, beta: 0.75, bias: 1.0 };
        let x = t(DType::F32, &[2, 8, 3, 3]);
        assert_eq!(infer(&lrn, &[&x]).unwrap(), vec![x.clone()]);
        assert!(infer(&lrn, &[&t(DType::F32, &[2, 8])]).unwrap_err().contains("rank ≥ 3"));
        assert!(infer(&lrn, &[&t(DType::I32, &[2, 8, 3])]).is_err());
        let bad = Op::Lrn { size: 0, alpha: 1e-4, beta: 0.75, bias: 1.0 };
        assert!(infer(&bad, &[&x]).is_err());
        let bad = Op::Lrn { size: 3, alpha: 1e-4, beta: 0.75, bias: 0.0 };
        assert!(infer(&bad, &[&x]).unwrap_err().contains("bias"));
        let grad = Op::LrnGrad { size: 5, alpha: 1e-4, beta: 0.75, bias: 1.0 };
        assert_eq!(infer(&grad, &[&x, &x]).unwrap(), vec![x.clone()]);
        assert!(infer(&grad, &[&t(DType::F16, &[2, 8, 3, 3]), &x]).unwrap_err().contains("dy and x"));
    }

    #[test]
    fn arity_is_checked() {
        let x = t(DType::F32, &[2]);
        let err = infer(&Op::Add, &[&x]).unwrap_err();
        assert!(err.contains("takes 2 inputs (a, b), found 1"), "{err}");
    }
}
