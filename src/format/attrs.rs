//! Op attributes: between the flat fields of a [`RawNode`] and [`Op`].

use crate::format::RawNode;
use crate::ir::op::{Conv, Op, OpKind, Window};
use crate::ir::types::{DType, TensorType};

/// An attribute problem: the field and what was expected.
pub type AttrError = (&'static str, String);

/// Every attribute field of a node, in the order the text form prints them.
pub const ATTRS: [&str; N_ATTRS] = [
    "transpose_a",
    "transpose_b",
    "axis",
    "causal",
    "axes",
    "keepdims",
    "sizes",
    "shape",
    "perm",
    "dtype",
    "to",
    "value",
    "p",
    "seed",
    "eps",
    "momentum",
    "size",
    "alpha",
    "beta",
    "bias",
    "kernel",
    "stride",
    "padding",
    "padding_end",
    "dilation",
    "count_include_pad",
    "groups",
    "num_embeddings",
    "lr",
    "beta1",
    "beta2",
    "weight_decay",
    "decoupled",
    "growth_factor",
    "backoff_factor",
    "growth_interval",
    "max_norm",
    "warmup",
    "total",
    "min_lr",
];
pub const N_ATTRS: usize = 40;

fn present(n: &RawNode) -> impl Iterator<Item = &'static str> {
    // Same length as ATTRS, checked by the type.
    let set: [bool; N_ATTRS] = [
        n.transpose_a.is_some(),
        n.transpose_b.is_some(),
        n.axis.is_some(),
        n.causal.is_some(),
        n.axes.is_some(),
        n.keepdims.is_some(),
        n.sizes.is_some(),
        n.shape.is_some(),
        n.perm.is_some(),
        n.dtype.is_some(),
        n.to.is_some(),
        n.value.is_some(),
        n.p.is_some(),
        n.seed.is_some(),
        n.eps.is_some(),
        n.momentum.is_some(),
        n.size.is_some(),
        n.alpha.is_some(),
        n.beta.is_some(),
        n.bias.is_some(),
        n.kernel.is_some(),
        n.stride.is_some(),
        n.padding.is_some(),
        n.padding_end.is_some(),
        n.dilation.is_some(),
        n.count_include_pad.is_some(),
        n.groups.is_some(),
        n.num_embeddings.is_some(),
        n.lr.is_some(),
        n.beta1.is_some(),
        n.beta2.is_some(),
        n.weight_decay.is_some(),
        n.decoupled.is_some(),
        n.growth_factor.is_some(),
        n.backoff_factor.is_some(),
        n.growth_interval.is_some(),
        n.max_norm.is_some(),
        n.warmup.is_some(),
        n.total.is_some(),
        n.min_lr.is_some(),
    ];
    ATTRS.into_iter().zip(set).filter_map(|(a, s)| s.then_some(a))
}

/// The attributes each op takes (its row in the op table).
pub fn allowed(kind: OpKind) -> &'static [&'static str] {
    kind.info().attrs
}

fn need<T: Clone>(v: &Option<T>, field: &'static str, kind: OpKind) -> Result<T, AttrError> {
    v.clone().ok_or_else(|| (field, format!("{kind} needs the attribute `{field}`")))
}

fn dims(v: &[i64], field: &'static str) -> Result<Vec<u64>, AttrError> {
    v.iter()
        .map(|&d| if d >= 1 { Ok(d as u64) } else { Err((field, format!("dimensions must be at least 1, found {d}"))) })
        .collect()
}

fn window(n: &RawNode, kind: OpKind) -> Result<Window, AttrError> {
    let kernel = need(&n.kernel, "kernel", kind)?;
    let padding = n.padding.unwrap_or([0, 0]);
    let w =
        Window { kernel, stride: n.stride.unwrap_or(kernel), padding, padding_end: n.padding_end.unwrap_or(padding) };
    check_window(&w)?;
    Ok(w)
}

fn check_window(w: &Window) -> Result<(), AttrError> {
    if w.kernel.contains(&0) {
        return Err(("kernel", "kernel sizes must be at least 1".into()));
    }
    if w.stride.contains(&0) {
        return Err(("stride", "strides must be at least 1".into()));
    }
    if let Some((field, i)) = w.padding_too_wide() {
        return Err((field, w.padding_message(field, i)));
    }
    Ok(())
}

/// `count_include_pad` as read (default true: today's avg_pool2d).
fn count_include_pad(n: &RawNode) -> bool {
    n.count_include_pad.unwrap_or(true)
}

/// A convolution's attributes.
fn conv(n: &RawNode) -> Result<Conv, AttrError> {
    let stride = n.stride.unwrap_or([1, 1]);
    if stride.contains(&0) {
        return Err(("stride", "strides must be at least 1".into()));
    }
    let dilation = n.dilation.unwrap_or([1, 1]);
    if dilation.contains(&0) {
        return Err(("dilation", format!("dilations must be at least 1, found {dilation:?}")));
    }
    let groups = n.groups.unwrap_or(1);
    if groups == 0 {
        return Err(("groups", "groups must be at least 1".into()));
    }
    Ok(Conv { stride, padding: n.padding.unwrap_or([0, 0]), dilation, groups })
}

fn in_range(v: f64, field: &'static str, ok: bool, want: &str) -> Result<f64, AttrError> {
    if ok {
        Ok(v)
    } else {
        Err((field, format!("expected {want}, found {v}")))
    }
}

fn prob(v: f64) -> Result<f64, AttrError> {
    in_range(v, "p", (0.0..1.0).contains(&v), "a drop probability in [0, 1)")
}

fn eps(n: &RawNode) -> Result<f64, AttrError> {
    let v = n.eps.unwrap_or(1e-5);
    in_range(v, "eps", v > 0.0 && v.is_finite(), "a positive eps")
}

/// LRN's `(size, alpha, beta, bias)`: ONNX's defaults, a positive size and
/// bias (so the base of the power is positive), alpha ≥ 0, finite beta.
fn lrn(n: &RawNode, kind: OpKind) -> Result<(u64, f64, f64, f64), AttrError> {
    let size = need(&n.size, "size", kind)?;
    if size == 0 {
        return Err(("size", "expected at least 1 channel, found 0".into()));
    }
    let alpha = n.alpha.unwrap_or(1e-4);
    let alpha = in_range(alpha, "alpha", alpha >= 0.0 && alpha.is_finite(), "a finite alpha ≥ 0")?;
    let beta = finite(n.beta.unwrap_or(0.75), "beta")?;
    let bias = n.bias.unwrap_or(1.0);
    let bias = in_range(bias, "bias", bias > 0.0 && bias.is_finite(), "a positive bias")?;
    Ok((size, alpha, beta, bias))
}

fn finite(v: f64, field: &'static str) -> Result<f64, AttrError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err((field, format!("expected a finite number, found {v}")))
    }
}

/// Builds the op a node describes; sources (`input`, `param`, `state`) are
/// declared in their own sections and are rejected here.
pub fn op_from_raw(n: &RawNode) -> Result<Op, AttrError> {
    let kind = n.op;
    if let Some(extra) = present(n).find(|a| !allowed(kind).contains(a)) {
        let takes = allowed(kind);
        let hint = if takes.is_empty() {
            format!("{kind} takes no attributes")
        } else {
            format!("{kind} takes {}", takes.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", "))
        };
        return Err((extra, format!("attribute `{extra}` does not apply here: {hint}")));
    }
    // An op without attributes is made from its declaration in the op table.
    if let Some(op) = Op::plain(kind) {
        return Ok(op);
    }
    use OpKind as K;
    Ok(match kind {
        K::Unset => return Err(("op", "the node has no op".into())),
        K::Input | K::Param | K::State => {
            return Err((
                "op",
                format!("`{kind}` values are declared in the `{kind}s` section, not as nodes")
                    .replace("states", "state"),
            ))
        }
        K::Constant => {
            let shape = dims(&need(&n.shape, "shape", kind)?, "shape")?;
            Op::Constant {
                value: finite(need(&n.value, "value", kind)?, "value")?,
                ty: TensorType::new(n.dtype.unwrap_or(DType::F32), shape),
            }
        }
        K::Cast => Op::Cast { to: need(&n.to, "to", kind)? },
        K::Scale => Op::Scale { value: finite(need(&n.value, "value", kind)?, "value")? },
        K::Matmul => {
            Op::Matmul { transpose_a: n.transpose_a.unwrap_or(false), transpose_b: n.transpose_b.unwrap_or(false) }
        }
        K::LayerNorm => Op::LayerNorm { eps: eps(n)? },
        K::Softmax => Op::Softmax { axis: n.axis.unwrap_or(-1), causal: n.causal.unwrap_or(false) },
        K::LogSoftmax => Op::LogSoftmax { axis: n.axis.unwrap_or(-1) },
        K::Dropout => Op::Dropout { p: prob(need(&n.p, "p", kind)?)?, seed: n.seed.unwrap_or(0) },
        K::Conv2d => Op::Conv2d(conv(n)?.into()),
        K::BatchNorm => {
            let m = n.momentum.unwrap_or(0.1);
            let momentum = in_range(m, "momentum", (0.0..=1.0).contains(&m), "a momentum in [0, 1]")?;
            Op::BatchNorm { eps: eps(n)?, momentum }
        }
        K::FrozenBatchNorm => Op::FrozenBatchNorm { eps: eps(n)? },
        K::Lrn => {
            let (size, alpha, beta, bias) = lrn(n, kind)?;
            Op::Lrn { size, alpha, beta, bias }
        }
        K::MaxPool2d => Op::MaxPool2d(window(n, kind)?.into()),
        K::AvgPool2d => Op::AvgPool2d { window: window(n, kind)?.into(), count_include_pad: count_include_pad(n) },
        K::Flatten => Op::Flatten { axis: n.axis.unwrap_or(1) },
        K::Reshape => Op::Reshape { shape: need(&n.shape, "shape", kind)? },
        K::Transpose => Op::Transpose {
            perm: need(&n.perm, "perm", kind)?
                .iter()
                .map(|&p| usize::try_from(p).map_err(|_| ("perm", format!("perm entries are axes 0..rank, found {p}"))))
                .collect::<Result<_, _>>()?,
        },
        K::Concat => Op::Concat { axis: need(&n.axis, "axis", kind)? },
        K::Split => {
            let sizes = dims(&need(&n.sizes, "sizes", kind)?, "sizes")?;
            if sizes.is_empty() {
                return Err(("sizes", "split needs at least one size".into()));
            }
            Op::Split { axis: n.axis.unwrap_or(0), sizes }
        }
        K::ReduceSum => Op::ReduceSum { axes: need(&n.axes, "axes", kind)?, keepdims: n.keepdims.unwrap_or(false) },
        K::ReduceMean => Op::ReduceMean { axes: need(&n.axes, "axes", kind)?, keepdims: n.keepdims.unwrap_or(false) },
        K::SumTo => Op::SumTo { shape: dims(&need(&n.shape, "shape", kind)?, "shape")? },
        K::BroadcastTo => Op::BroadcastTo { shape: dims(&need(&n.shape, "shape", kind)?, "shape")? },
        K::SoftmaxGrad => Op::SoftmaxGrad { axis: n.axis.unwrap_or(-1) },
        K::LogSoftmaxGrad => Op::LogSoftmaxGrad { axis: n.axis.unwrap_or(-1) },
        K::EmbeddingGrad => {
            let v = need(&n.num_embeddings, "num_embeddings", kind)?;
            if v == 0 {
                return Err(("num_embeddings", "expected at least 1 row".into()));
            }
            Op::EmbeddingGrad { num_embeddings: v }
        }
        K::DropoutGrad => Op::DropoutGrad { p: prob(need(&n.p, "p", kind)?)? },
        K::Conv2dGradInput => {
            Op::Conv2dGradInput { conv: conv(n)?.into(), shape: dims(&need(&n.shape, "shape", kind)?, "shape")? }
        }
        K::Conv2dGradWeight => {
            let conv = conv(n)?;
            let kernel = need(&n.kernel, "kernel", kind)?;
            if kernel.contains(&0) {
                return Err(("kernel", "kernel sizes must be at least 1".into()));
            }
            Op::Conv2dGradWeight { conv: conv.into(), kernel }
        }
        K::BatchNormGrad => Op::BatchNormGrad { eps: eps(n)? },
        K::FrozenBatchNormGrad => Op::FrozenBatchNormGrad { eps: eps(n)? },
        K::LrnGrad => {
            let (size, alpha, beta, bias) = lrn(n, kind)?;
            Op::LrnGrad { size, alpha, beta, bias }
        }
        K::MaxPool2dGrad => Op::MaxPool2dGrad(window(n, kind)?.into()),
        K::ScaleUpdate => Op::ScaleUpdate {
            growth_factor: n.growth_factor.unwrap_or(2.0),
            backoff_factor: n.backoff_factor.unwrap_or(0.5),
            growth_interval: n.growth_interval.unwrap_or(2000),
        },
        K::ClipCoef => Op::ClipCoef { max_norm: need(&n.max_norm, "max_norm", kind)? },
        K::LrSchedule => Op::LrSchedule {
            lr: need(&n.lr, "lr", kind)?,
            warmup: n.warmup.unwrap_or(0),
            total: need(&n.total, "total", kind)?,
            min_lr: n.min_lr.unwrap_or(0.0),
        },
        K::Sgd => Op::Sgd { lr: need(&n.lr, "lr", kind)?, weight_decay: n.weight_decay.unwrap_or(0.0) },
        K::SgdMomentum => Op::SgdMomentum {
            lr: need(&n.lr, "lr", kind)?,
            momentum: need(&n.momentum, "momentum", kind)?,
            weight_decay: n.weight_decay.unwrap_or(0.0),
        },
        K::Adam => Op::Adam {
            lr: need(&n.lr, "lr", kind)?,
            beta1: n.beta1.unwrap_or(0.9),
            beta2: n.beta2.unwrap_or(0.999),
            eps: n.eps.unwrap_or(1e-8),
            weight_decay: n.weight_decay.unwrap_or(0.0),
            decoupled: n.decoupled.unwrap_or(false),
        },
        K::AvgPool2dGrad => Op::AvgPool2dGrad {
            window: window(n, kind)?.into(),
            count_include_pad: count_include_pad(n),
            shape: dims(&need(&n.shape, "shape", kind)?, "shape")?,
        },
        // `Op::plain` made the ops without attributes above; the test
        // `every_op_is_made_from_its_attributes` builds every op.
        plain => return Err(("op", format!("{plain} has attributes that nothing reads"))),
    })
}

fn set_window(n: &mut RawNode, w: &Window) {
    n.kernel = Some(w.kernel);
    n.stride = Some(w.stride);
    n.padding = Some(w.padding);
    // Written only when asymmetric, so symmetric windows read as before.
    n.padding_end = (w.padding_end != w.padding).then_some(w.padding_end);
}

fn set_conv(n: &mut RawNode, c: &Conv) {
    n.stride = Some(c.stride);
    n.padding = Some(c.padding);
    // Written only when dilated or grouped, so plain convolutions read as before.
    n.dilation = (c.dilation != [1, 1]).then_some(c.dilation);
    n.groups = (c.groups != 1).then_some(c.groups);
}

fn ishape(s: &[u64]) -> Option<Vec<i64>> {
    Some(s.iter().map(|&d| d as i64).collect())
}

/// Writes the attributes of `op` into `n` (every attribute, explicitly, but
/// `false` flags).
pub fn op_to_raw(op: &Op, n: &mut RawNode) {
    let flag = |b: bool| b.then_some(true);
    match op {
        Op::Constant { value, ty } => {
            n.value = Some(*value);
            n.shape = ishape(ty.shape.dims());
            n.dtype = Some(ty.dtype);
        }
        Op::Cast { to } => n.to = Some(*to),
        Op::Scale { value } => n.value = Some(*value),
        Op::Matmul { transpose_a, transpose_b } => {
            n.transpose_a = flag(*transpose_a);
            n.transpose_b = flag(*transpose_b);
        }
        Op::LayerNorm { eps }
        | Op::BatchNormGrad { eps }
        | Op::FrozenBatchNorm { eps }
        | Op::FrozenBatchNormGrad { eps } => n.eps = Some(*eps),
        Op::Lrn { size, alpha, beta, bias } | Op::LrnGrad { size, alpha, beta, bias } => {
            n.size = Some(*size);
            n.alpha = Some(*alpha);
            n.beta = Some(*beta);
            n.bias = Some(*bias);
        }
        Op::Softmax { axis, causal } => {
            n.axis = Some(*axis);
            n.causal = flag(*causal);
        }
        Op::LogSoftmax { axis } | Op::SoftmaxGrad { axis } | Op::LogSoftmaxGrad { axis } | Op::Flatten { axis } => {
            n.axis = Some(*axis)
        }
        Op::Dropout { p, seed } => {
            n.p = Some(*p);
            n.seed = Some(*seed);
        }
        Op::DropoutGrad { p } => n.p = Some(*p),
        Op::Conv2d(c) => set_conv(n, c),
        Op::Conv2dGradInput { conv, shape } => {
            set_conv(n, conv);
            n.shape = ishape(shape);
        }
        Op::Conv2dGradWeight { conv, kernel } => {
            set_conv(n, conv);
            n.kernel = Some(*kernel);
        }
        Op::BatchNorm { eps, momentum } => {
            n.eps = Some(*eps);
            n.momentum = Some(*momentum);
        }
        Op::MaxPool2d(w) | Op::MaxPool2dGrad(w) => set_window(n, w),
        Op::AvgPool2d { window, count_include_pad } => {
            set_window(n, window);
            n.count_include_pad = (!count_include_pad).then_some(false);
        }
        Op::AvgPool2dGrad { window, count_include_pad, shape } => {
            set_window(n, window);
            n.count_include_pad = (!count_include_pad).then_some(false);
            n.shape = ishape(shape);
        }
        Op::Reshape { shape } => n.shape = Some(shape.clone()),
        Op::Concat { axis } => n.axis = Some(*axis),
        Op::Split { axis, sizes } => {
            n.axis = Some(*axis);
            n.sizes = ishape(sizes);
        }
        Op::Transpose { perm } => n.perm = Some(perm.iter().map(|&p| p as i64).collect()),
        Op::ReduceSum { axes, keepdims } | Op::ReduceMean { axes, keepdims } => {
            n.axes = Some(axes.clone());
            n.keepdims = flag(*keepdims);
        }
        Op::SumTo { shape } | Op::BroadcastTo { shape } => n.shape = ishape(shape),
        Op::EmbeddingGrad { num_embeddings } => n.num_embeddings = Some(*num_embeddings),
        Op::ScaleUpdate { growth_factor, backoff_factor, growth_interval } => {
            n.growth_factor = Some(*growth_factor);
            n.backoff_factor = Some(*backoff_factor);
            n.growth_interval = Some(*growth_interval);
        }
        Op::ClipCoef { max_norm } => n.max_norm = Some(*max_norm),
        Op::LrSchedule { lr, warmup, total, min_lr } => {
            n.lr = Some(*lr);
            n.warmup = Some(*warmup);
            n.total = Some(*total);
            n.min_lr = Some(*min_lr);
        }
        Op::Sgd { lr, weight_decay } => {
            n.lr = Some(*lr);
            n.weight_decay = Some(*weight_decay);
        }
        Op::SgdMomentum { lr, momentum, weight_decay } => {
            n.lr = Some(*lr);
            n.momentum = Some(*momentum);
            n.weight_decay = Some(*weight_decay);
        }
        Op::Adam { lr, beta1, beta2, eps, weight_decay, decoupled } => {
            n.lr = Some(*lr);
            n.beta1 = Some(*beta1);
            n.beta2 = Some(*beta2);
            n.eps = Some(*eps);
            n.weight_decay = Some(*weight_decay);
            n.decoupled = flag(*decoupled);
        }
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } => {}
        // Ops without attributes write none (the test
        // `every_op_is_made_from_its_attributes` checks every op).
        plain => debug_assert!(Op::plain(plain.kind()).is_some(), "{} writes no attributes", plain.name()),
    }
}

/// Attributes as `key=value` text, for the text form.
pub fn op_attrs_text(op: &Op) -> String {
    let mut n = RawNode { op: op.kind(), ..RawNode::default() };
    op_to_raw(op, &mut n);
    let v = serde_json::to_value(&n).unwrap_or_default();
    let mut out = String::new();
    if let serde_json::Value::Object(map) = v {
        for key in ATTRS.iter() {
            if let Some(val) = map.get(*key) {
                out.push(' ');
                out.push_str(key);
                out.push('=');
                match val {
                    serde_json::Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_its_attributes() {
        let w = Window::new([3, 3], [2, 2], [1, 1]);
        let asym = Window { padding_end: [0, 1], ..w };
        let ops = vec![
            Op::Constant { value: -1e9, ty: TensorType::new(DType::F32, vec![4, 4]) },
            Op::Cast { to: DType::Bf16 },
            Op::Scale { value: 0.125 },
            Op::Matmul { transpose_a: true, transpose_b: false },
            Op::Softmax { axis: -1, causal: true },
            Op::Dropout { p: 0.1, seed: 7 },
            Op::Conv2dGradInput { conv: Box::new(Conv::new([1, 1], [1, 1], 1)), shape: vec![2, 3, 8, 8] },
            Op::Conv2dGradInput { conv: Box::new(Conv::new([1, 1], [1, 1], 3)), shape: vec![2, 3, 8, 8] },
            Op::Conv2dGradInput {
                conv: Box::new(Conv { dilation: [2, 3], ..Conv::new([1, 2], [1, 1], 3) }),
                shape: vec![2, 3, 8, 8],
            },
            Op::Conv2dGradWeight { conv: Box::new(Conv::new([2, 1], [0, 1], 2)), kernel: [3, 1] },
            Op::Conv2dGradWeight {
                conv: Box::new(Conv { dilation: [1, 2], ..Conv::new([2, 1], [0, 1], 2) }),
                kernel: [3, 1],
            },
            Op::Conv2d(Box::new(Conv::new([1, 1], [0, 0], 1))),
            Op::Conv2d(Box::new(Conv::new([2, 2], [1, 1], 4))),
            Op::Conv2d(Box::new(Conv { dilation: [3, 1], ..Conv::new([2, 2], [1, 1], 4) })),
            Op::AvgPool2dGrad { window: Box::new(w), count_include_pad: true, shape: vec![1, 1, 4, 4] },
            Op::AvgPool2dGrad { window: Box::new(asym), count_include_pad: false, shape: vec![1, 1, 4, 4] },
            Op::MaxPool2d(Box::new(w)),
            Op::MaxPool2d(Box::new(asym)),
            Op::MaxPool2dGrad(Box::new(asym)),
            Op::AvgPool2d { window: Box::new(w), count_include_pad: true },
            Op::AvgPool2d { window: Box::new(asym), count_include_pad: false },
            Op::Reshape { shape: vec![-1, 4] },
            Op::Transpose { perm: vec![0, 2, 1, 3] },
            Op::Concat { axis: -1 },
            Op::Split { axis: 1, sizes: vec![2, 1, 5] },
            Op::ReduceMean { axes: vec![0], keepdims: true },
            Op::EmbeddingGrad { num_embeddings: 65 },
            Op::BatchNorm { eps: 1e-3, momentum: 0.2 },
            Op::FrozenBatchNorm { eps: 1e-3 },
            Op::FrozenBatchNormGrad { eps: 1e-5 },
            Op::Lrn { size: 5, alpha: 1e-4, beta: 0.75, bias: 2.0 },
            Op::LrnGrad { size: 4, alpha: 2e-5, beta: 0.5, bias: 1.0 },
            Op::Erf,
            Op::ErfGrad,
            Op::ScaleUpdate { growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 },
            Op::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, decoupled: true },
            Op::SgdMomentum { lr: 0.1, momentum: 0.9, weight_decay: 0.0 },
            Op::ClipCoef { max_norm: 1.0 },
            Op::LrSchedule { lr: 0.1, warmup: 10, total: 100, min_lr: 0.001 },
        ];
        for op in ops {
            let mut n = RawNode { name: "n".into(), op: op.kind(), ..RawNode::default() };
            op_to_raw(&op, &mut n);
            assert_eq!(op_from_raw(&n).unwrap(), op);
        }
    }

    /// A valid value of every attribute, not its default.
    const SAMPLES: &str = r#"{
        "transpose_a": true, "transpose_b": true, "axis": 1, "causal": true, "axes": [0], "keepdims": true,
        "sizes": [1, 2], "shape": [3, 2], "perm": [0], "dtype": "f16", "to": "bf16", "value": 3.0, "p": 0.25,
        "seed": 5, "eps": 1e-3, "momentum": 0.5, "size": 3, "alpha": 2e-4, "beta": 0.5, "bias": 2.0,
        "kernel": [3, 2], "stride": [2, 1], "padding": [1, 0], "padding_end": [2, 1], "dilation": [2, 3],
        "count_include_pad": false, "groups": 2, "num_embeddings": 7, "lr": 0.1, "beta1": 0.8, "beta2": 0.99,
        "weight_decay": 0.01, "decoupled": true, "growth_factor": 3.0, "backoff_factor": 0.25,
        "growth_interval": 9, "max_norm": 4.0, "warmup": 2, "total": 20, "min_lr": 0.01
    }"#;

    /// Every op (sources aside) is made from a node with its table's
    /// attributes, writes them all back, and reads back as itself: an op
    /// added to the table with attributes nothing reads or writes fails here.
    #[test]
    fn every_op_is_made_from_its_attributes() {
        let samples: serde_json::Map<String, serde_json::Value> = serde_json::from_str(SAMPLES).unwrap();
        assert!(ATTRS.iter().all(|a| samples.contains_key(*a)));
        for &kind in OpKind::ALL.iter().filter(|k| !k.info().source) {
            let mut node = serde_json::Map::new();
            node.insert("name".into(), "n".into());
            node.insert("op".into(), kind.name().into());
            for &a in allowed(kind) {
                node.insert(a.into(), samples[a].clone());
            }
            let raw: RawNode = serde_json::from_value(node.into()).unwrap();
            let op = op_from_raw(&raw).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
            assert_eq!(op.kind(), kind);
            let mut back = RawNode { name: "n".into(), op: kind, ..RawNode::default() };
            op_to_raw(&op, &mut back);
            assert_eq!(present(&back).collect::<Vec<_>>(), present(&raw).collect::<Vec<_>>(), "{kind}");
            assert_eq!(op_from_raw(&back).unwrap(), op, "{kind}");
            // Type inference reaches the op's family (it may refuse these inputs).
            let x = crate::TensorType::new(crate::DType::F32, vec![2, 2]);
            let inputs = vec![&x; crate::ir::infer::arity(&op).0];
            if let Err(e) = crate::ir::infer::infer(&op, &inputs) {
                assert!(!e.contains("dispatch"), "{kind}: {e}");
            }
        }
    }

    #[test]
    fn later_attributes_at_their_defaults_are_not_written() {
        let w = Window::new([3, 3], [2, 2], [1, 1]);
        for op in [
            Op::AvgPool2d { window: Box::new(w), count_include_pad: true },
            Op::AvgPool2dGrad { window: Box::new(w), count_include_pad: true, shape: vec![1, 1, 4, 4] },
            Op::MaxPool2d(Box::new(w)),
            Op::Conv2d(Box::new(Conv::new([1, 1], [1, 1], 1))),
            Op::Conv2dGradWeight { conv: Box::new(Conv::new([1, 1], [1, 1], 1)), kernel: [3, 3] },
        ] {
            let mut n = RawNode { name: "n".into(), op: op.kind(), ..RawNode::default() };
            op_to_raw(&op, &mut n);
            assert_eq!((n.padding_end, n.count_include_pad, n.groups, n.dilation), (None, None, None, None), "{op:?}");
        }
        let dilated = Op::Conv2d(Box::new(Conv { dilation: [2, 1], ..Conv::new([1, 1], [2, 0], 1) }));
        assert_eq!(op_attrs_text(&dilated), " stride=[1,1] padding=[2,0] dilation=[2,1]");
        let mut n = RawNode { name: "n".into(), op: OpKind::AvgPool2d, ..RawNode::default() };
        op_to_raw(
            &Op::AvgPool2d { window: Box::new(Window { padding_end: [0, 1], ..w }), count_include_pad: false },
            &mut n,
        );
        assert_eq!((n.padding_end, n.count_include_pad), (Some([0, 1]), Some(false)));
        assert_eq!(op_attrs_text(&Op::MaxPool2d(Box::new(w))), " kernel=[3,3] stride=[2,2] padding=[1,1]");
    }

    #[test]
    fn pooling_padding_is_checked_on_both_sides() {
        let n = RawNode {
            name: "n".into(),
            op: OpKind::MaxPool2d,
            kernel: Some([3, 3]),
            padding_end: Some([1, 3]),
            ..RawNode::default()
        };
        let (field, msg) = op_from_raw(&n).unwrap_err();
        assert_eq!(field, "padding_end");
        assert!(msg.contains("padding_end 3 for kernel 3 (width)"), "{msg}");
        // Up to kernel - 1 (what a ceil_mode ONNX pool can need) is fine.
        op_from_raw(&RawNode { padding_end: Some([2, 2]), ..n }).expect("padding_end 2 for kernel 3");
    }

    #[test]
    fn a_zero_dilation_is_refused() {
        for (op, kernel) in [(OpKind::Conv2d, None), (OpKind::Conv2dGradWeight, Some([3, 3]))] {
            let n = RawNode { name: "n".into(), op, dilation: Some([1, 0]), kernel, ..RawNode::default() };
            let (field, msg) = op_from_raw(&n).unwrap_err();
            assert_eq!(field, "dilation");
            assert!(msg.contains("dilations must be at least 1, found [1, 0]"), "{msg}");
        }
    }

    #[test]
    fn a_stray_attribute_is_named() {
        let n = RawNode { name: "n".into(), op: OpKind::Relu, axis: Some(1), ..RawNode::default() };
        let (field, msg) = op_from_raw(&n).unwrap_err();
        assert_eq!(field, "axis");
        assert!(msg.contains("relu takes no attributes"), "{msg}");
    }

    #[test]
    fn a_missing_attribute_is_named() {
        let n = RawNode { name: "n".into(), op: OpKind::Cast, ..RawNode::default() };
        assert_eq!(op_from_raw(&n).unwrap_err().0, "to");
    }
}
