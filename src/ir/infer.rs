//! Shape and dtype inference for every op.
//!
//! `infer` is the single definition of what types an op accepts and returns;
//! the parser uses it to type a graph and the verifier re-runs it to check one.

use crate::ir::op::{Op, Window};
use crate::ir::opinfo::Outputs;
use crate::ir::types::{DType, Shape, TensorType};

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

fn normalize_axes(shape: &Shape, axes: &[i64]) -> Result<Vec<usize>> {
    let mut seen = vec![false; shape.rank()];
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let ax = shape.axis(a)?;
        if seen[ax] {
            return Err(format!("axis {a} is listed twice"));
        }
        seen[ax] = true;
        out.push(ax);
    }
    Ok(out)
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

/// [`window_out`] for pooling, whose padding must be smaller than the
/// kernel on each side (a convolution's may be wider: zeros in, zeros out).
fn pool_out(x: &TensorType, w: &Window, what: &str) -> Result<Shape> {
    if let Some((field, i)) = w.padding_too_wide() {
        return Err(format!("{what}: {}", w.padding_message(field, i)));
    }
    window_out(x, w, what)
}

/// Input channels per group of a convolution with `cin` input and `cout`
/// output channels, or why `groups` does not divide them.
fn conv_groups(groups: u64, cin: u64, cout: u64) -> Result<u64> {
    if groups == 0 {
        return Err("conv2d: groups must be at least 1".into());
    }
    if !cin.is_multiple_of(groups) {
        return Err(format!("conv2d: groups={groups} does not divide the input's {cin} channels"));
    }
    if !cout.is_multiple_of(groups) {
        return Err(format!("conv2d: groups={groups} does not divide the weight's {cout} output channels"));
    }
    Ok(cin / groups)
}

fn matmul_shape(a: &TensorType, b: &TensorType, ta: bool, tb: bool) -> Result<Shape> {
    if a.shape.rank() < 2 || b.shape.rank() < 2 {
        return Err(format!("matmul operands must have rank at least 2, found {a} and {b}"));
    }
    let (ad, bd) = (a.shape.dims(), b.shape.dims());
    let (ar, br) = (ad.len(), bd.len());
    let (m, ka) = if ta { (ad[ar - 1], ad[ar - 2]) } else { (ad[ar - 2], ad[ar - 1]) };
    let (kb, n) = if tb { (bd[br - 1], bd[br - 2]) } else { (bd[br - 2], bd[br - 1]) };
    if ka != kb {
        return Err(format!(
            "matmul inner dimensions differ: {a}{} · {b}{} contracts {ka} with {kb}",
            if ta { "ᵀ" } else { "" },
            if tb { "ᵀ" } else { "" }
        ));
    }
    let batch = broadcast(&Shape(ad[..ar - 2].to_vec()), &Shape(bd[..br - 2].to_vec()))
        .map_err(|e| format!("matmul batch dimensions: {e}"))?;
    let mut out = batch.0;
    out.extend([m, n]);
    checked(Shape(out))
}

fn reshape_shape(x: &Shape, target: &[i64]) -> Result<Shape> {
    let n = x.numel().ok_or("input too large")?;
    let mut known: u64 = 1;
    let mut infer_at = None;
    let mut out = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        if d == -1 {
            if infer_at.replace(i).is_some() {
                return Err("reshape: at most one dimension may be -1".into());
            }
            out.push(1);
        } else if d >= 1 {
            known = known.checked_mul(d as u64).ok_or("reshape: target shape is too large")?;
            out.push(d as u64);
        } else {
            return Err(format!("reshape: dimension {d} is invalid (use -1 or a size ≥ 1)"));
        }
    }
    if let Some(i) = infer_at {
        if known == 0 || n % known != 0 {
            return Err(format!("reshape: cannot reshape {x} to {target:?}"));
        }
        out[i] = n / known;
    } else if known != n {
        return Err(format!("reshape: {x} has {n} elements but {target:?} has {known}"));
    }
    checked(Shape(out))
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
    let one = |t: TensorType| Ok(vec![t]);
    use Op::*;
    match op {
        Input { ty } | Param { ty, .. } | State { ty, .. } | Constant { ty, .. } => {
            ty.shape.validate()?;
            if let Constant { value, .. } = op {
                let fits = match ty.dtype {
                    DType::Bool => *value == 0.0 || *value == 1.0,
                    DType::I32 => value.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(value),
                    DType::I64 => value.fract() == 0.0 && value.abs() <= 9.007_199_254_740_992e15,
                    DType::F16 => value.abs() <= 65504.0,
                    DType::Bf16 | DType::F32 => value.abs() <= f32::MAX as f64,
                };
                if !fits {
                    return Err(format!("the value {value} does not fit the type {}", ty.dtype));
                }
            }
            if matches!(op, Param { .. }) {
                float(ty, "a parameter")?;
            }
            one(ty.clone())
        }
        Seed => {
            let l = inputs[0];
            float(l, "the loss")?;
            one(TensorType { dtype: DType::F32, shape: l.shape.clone() })
        }
        Cast { to } => one(inputs[0].with_dtype(*to)),
        Identity => one(inputs[0].clone()),
        Add | Sub | Mul | Div => {
            let (a, b) = (inputs[0], inputs[1]);
            same_dtype(a, b, op.name())?;
            if a.dtype == DType::Bool {
                return Err(format!("{} is not defined on bool", op.name()));
            }
            one(TensorType { dtype: a.dtype, shape: broadcast(&a.shape, &b.shape)? })
        }
        Scale { .. } | Relu | Gelu | Tanh | Sigmoid | Exp | Log | Erf | Sqrt => {
            float(inputs[0], "the input")?;
            one(inputs[0].clone())
        }
        Matmul { transpose_a, transpose_b } => {
            let (a, b) = (inputs[0], inputs[1]);
            float(a, "matmul operand a")?;
            same_dtype(a, b, "matmul")?;
            one(TensorType { dtype: a.dtype, shape: matmul_shape(a, b, *transpose_a, *transpose_b)? })
        }
        Embedding => {
            let (table, ids) = (inputs[0], inputs[1]);
            float(table, "the embedding table")?;
            rank(table, 2, "the embedding table")?;
            int(ids, "the ids")?;
            let mut s = ids.shape.0.clone();
            s.push(table.shape.0[1]);
            one(TensorType { dtype: table.dtype, shape: checked(Shape(s))? })
        }
        LayerNorm { eps } => {
            positive(*eps, "eps")?;
            let (x, g, b) = (inputs[0], inputs[1], inputs[2]);
            float(x, "x")?;
            if x.shape.rank() == 0 {
                return Err("layer_norm input must have rank at least 1".into());
            }
            let d = *x.shape.0.last().unwrap_or(&1);
            float(g, "gamma")?;
            same_type(g, &TensorType::new(g.dtype, vec![d]), "gamma and the normalised axis")?;
            same_type(b, g, "beta and gamma")?;
            let stats = TensorType::new(DType::F32, x.shape.0[..x.shape.rank() - 1].to_vec());
            Ok(vec![x.clone(), stats.clone(), stats])
        }
        Softmax { axis, causal } => {
            let x = inputs[0];
            float(x, "the input")?;
            let ax = x.shape.axis(*axis)?;
            if *causal {
                let r = x.shape.rank();
                if r < 2 || ax != r - 1 {
                    return Err("a causal softmax needs rank ≥ 2 and axis = -1".into());
                }
                let d = x.shape.dims();
                if d[r - 1] != d[r - 2] {
                    return Err(format!("a causal softmax needs square last axes, found {}", x.shape));
                }
            }
            one(x.clone())
        }
        LogSoftmax { axis } => {
            float(inputs[0], "the input")?;
            inputs[0].shape.axis(*axis)?;
            one(inputs[0].clone())
        }
        Dropout { p, .. } => {
            if !(0.0..1.0).contains(p) {
                return Err(format!("dropout p must be in [0, 1), found {p}"));
            }
            let x = inputs[0];
            float(x, "the input")?;
            Ok(vec![x.clone(), x.with_dtype(DType::Bool)])
        }
        Conv2d(cv) => {
            let (x, w) = (inputs[0], inputs[1]);
            float(x, "x")?;
            same_dtype(x, w, "conv2d")?;
            rank(w, 4, "the conv2d weight (OIHW)")?;
            rank(x, 4, "the conv2d input (NCHW)")?;
            let (xd, wd) = (x.shape.dims(), w.shape.dims());
            let groups = cv.groups;
            let per_group = conv_groups(groups, xd[1], wd[0])?;
            if per_group != wd[1] {
                return Err(if groups == 1 {
                    format!("conv2d: input has {} channels but the weight expects {}", xd[1], wd[1])
                } else {
                    format!(
                        "conv2d: input has {} channels in {groups} groups ({per_group} per group) but the weight {} expects {} per group",
                        xd[1], w.shape, wd[1]
                    )
                });
            }
            if cv.dilation.contains(&0) {
                return Err(format!("conv2d: dilations must be at least 1, found {:?}", cv.dilation));
            }
            let kernel = cv.extent([wd[2], wd[3]]).ok_or_else(|| {
                format!("conv2d: the kernel {:?} dilated by {:?} is too large", [wd[2], wd[3]], cv.dilation)
            })?;
            let what = if cv.dilation == [1, 1] {
                "conv2d".to_string()
            } else {
                format!("conv2d (the {}x{} kernel dilated by {:?})", wd[2], wd[3], cv.dilation)
            };
            let win = Window::new(kernel, cv.stride, cv.padding);
            let mut s = window_out(x, &win, &what)?;
            s.0[1] = wd[0];
            one(TensorType { dtype: x.dtype, shape: s })
        }
        BatchNorm { eps, momentum } => {
            positive(*eps, "eps")?;
            if !(0.0..=1.0).contains(momentum) {
                return Err(format!("momentum must be in [0, 1], found {momentum}"));
            }
            let (x, g, b) = (inputs[0], inputs[1], inputs[2]);
            float(x, "x")?;
            if x.shape.rank() < 2 {
                return Err(format!("batch_norm input must have rank ≥ 2 (N, C, ...), found {x}"));
            }
            let c = x.shape.0[1];
            float(g, "gamma")?;
            same_type(g, &TensorType::new(g.dtype, vec![c]), "gamma and the channel axis")?;
            same_type(b, g, "beta and gamma")?;
            let stats = TensorType::new(DType::F32, vec![c]);
            Ok(vec![x.clone(), stats.clone(), stats])
        }
        FrozenBatchNorm { eps } => {
            positive(*eps, "eps")?;
            let (x, g) = (inputs[0], inputs[1]);
            float(x, "x")?;
            if x.shape.rank() < 2 {
                return Err(format!("frozen_batch_norm input must have rank ≥ 2 (N, C, ...), found {x}"));
            }
            let c = x.shape.0[1];
            float(g, "gamma")?;
            same_type(g, &TensorType::new(g.dtype, vec![c]), "gamma and the channel axis")?;
            for (t, what) in inputs[2..].iter().zip(["beta and gamma", "mean and gamma", "var and gamma"]) {
                same_type(t, g, what)?;
            }
            one(x.clone())
        }
        Lrn { size, alpha, beta, bias } | LrnGrad { size, alpha, beta, bias } => {
            check_lrn(*size, *alpha, *beta, *bias)?;
            let x = inputs[inputs.len() - 1];
            float(x, "x")?;
            if x.shape.rank() < 3 {
                return Err(format!("{} input must have rank ≥ 3 (N, C, ...), found {x}", op.name()));
            }
            if let LrnGrad { .. } = op {
                same_type(inputs[0], x, "dy and x")?;
            }
            one(x.clone())
        }
        MaxPool2d(w) | AvgPool2d { window: w, .. } => {
            float(inputs[0], "the input")?;
            one(TensorType { dtype: inputs[0].dtype, shape: pool_out(inputs[0], w, op.name())? })
        }
        Flatten { axis } => {
            let x = inputs[0];
            let r = x.shape.rank() as i64;
            let a = if *axis < 0 { axis + r } else { *axis };
            if a < 0 || a > r {
                return Err(format!("flatten axis {axis} is out of range for rank {r}"));
            }
            let a = a as usize;
            let outer = Shape(x.shape.0[..a].to_vec()).numel().ok_or("flatten: the input is too large")?;
            let inner = Shape(x.shape.0[a..].to_vec()).numel().ok_or("flatten: the input is too large")?;
            one(TensorType::new(x.dtype, vec![outer, inner]))
        }
        Reshape { shape } => one(TensorType { dtype: inputs[0].dtype, shape: reshape_shape(&inputs[0].shape, shape)? }),
        Transpose { perm } => {
            let x = inputs[0];
            let r = x.shape.rank();
            let mut seen = vec![false; r];
            if perm.len() != r || !perm.iter().all(|&p| p < r && !std::mem::replace(&mut seen[p], true)) {
                return Err(format!("perm {perm:?} is not a permutation of 0..{r}"));
            }
            one(TensorType::new(x.dtype, perm.iter().map(|&p| x.shape.0[p]).collect::<Vec<_>>()))
        }
        Concat { axis } => {
            let x0 = inputs[0];
            let ax = x0.shape.axis(*axis).map_err(|e| format!("concat: {e}"))?;
            let mut total: u64 = 0;
            for (i, &t) in inputs.iter().enumerate() {
                same_dtype(x0, t, "concat")?;
                if t.shape.rank() != x0.shape.rank() {
                    return Err(format!("concat: input {i} {t} and input 0 {x0} have different ranks"));
                }
                if let Some(d) = (0..t.shape.rank()).find(|&d| d != ax && t.shape.0[d] != x0.shape.0[d]) {
                    return Err(format!(
                        "concat along axis {axis}: input {i} {t} and input 0 {x0} differ on axis {d} ({} vs {})",
                        t.shape.0[d], x0.shape.0[d]
                    ));
                }
                total = total.checked_add(t.shape.0[ax]).ok_or("concat: the result is too large")?;
            }
            let mut s = x0.shape.0.clone();
            s[ax] = total;
            one(TensorType { dtype: x0.dtype, shape: checked(Shape(s))? })
        }
        Split { axis, sizes } => {
            let x = inputs[0];
            let ax = x.shape.axis(*axis).map_err(|e| format!("split: {e}"))?;
            if sizes.is_empty() {
                return Err("split needs at least one size".into());
            }
            if sizes.contains(&0) {
                return Err(format!("split sizes must be at least 1, found {sizes:?}"));
            }
            let sum = sizes.iter().try_fold(0u64, |a, &b| a.checked_add(b));
            if sum != Some(x.shape.0[ax]) {
                let sum = sum.map_or("more than 2^64".to_string(), |s| s.to_string());
                return Err(format!(
                    "split sizes {sizes:?} sum to {sum}, but axis {axis} of the input {x} has size {}",
                    x.shape.0[ax]
                ));
            }
            Ok(sizes
                .iter()
                .map(|&n| {
                    let mut s = x.shape.0.clone();
                    s[ax] = n;
                    TensorType::new(x.dtype, s)
                })
                .collect())
        }
        ReduceSum { axes, keepdims } | ReduceMean { axes, keepdims } => {
            let x = inputs[0];
            if x.dtype == DType::Bool || (matches!(op, ReduceMean { .. }) && !x.dtype.is_float()) {
                return Err(format!("{} is not defined on {}", op.name(), x.dtype));
            }
            if axes.is_empty() {
                return Err("axes must name at least one axis".into());
            }
            // A mask, not `contains`: a rank-r input with r axes was r² work.
            let mut reduced = vec![false; x.shape.rank()];
            for a in normalize_axes(&x.shape, axes)? {
                reduced[a] = true;
            }
            let mut s = Vec::new();
            for (i, &d) in x.shape.0.iter().enumerate() {
                if !reduced[i] {
                    s.push(d);
                } else if *keepdims {
                    s.push(1);
                }
            }
            one(TensorType::new(x.dtype, s))
        }
        SumTo { shape } => {
            let x = inputs[0];
            let target = checked(Shape(shape.clone()))?;
            if !broadcasts_to(&target, &x.shape) {
                return Err(format!("sum_to: {target} does not broadcast to the input {}", x.shape));
            }
            one(TensorType { dtype: x.dtype, shape: target })
        }
        BroadcastTo { shape } => {
            let x = inputs[0];
            let target = checked(Shape(shape.clone()))?;
            if !broadcasts_to(&x.shape, &target) {
                return Err(format!("broadcast_to: {} does not broadcast to {target}", x.shape));
            }
            one(TensorType { dtype: x.dtype, shape: target })
        }
        CrossEntropy => {
            let (logits, labels) = (inputs[0], inputs[1]);
            check_cross_entropy(logits, labels)?;
            one(TensorType::scalar(logits.dtype))
        }
        Mse => {
            float(inputs[0], "the prediction")?;
            same_type(inputs[0], inputs[1], "prediction and target")?;
            one(TensorType::scalar(inputs[0].dtype))
        }
        ReluGrad | GeluGrad | ErfGrad | TanhGrad | SigmoidGrad | SoftmaxGrad { .. } | LogSoftmaxGrad { .. } => {
            let (dy, y) = (inputs[0], inputs[1]);
            float(dy, "dy")?;
            if dy.shape != y.shape {
                return Err(format!("dy {dy} and {} {y} must have the same shape", input_names(op)[1]));
            }
            float(y, input_names(op)[1])?;
            match op {
                SoftmaxGrad { axis } | LogSoftmaxGrad { axis } => {
                    y.shape.axis(*axis)?;
                }
                _ => {}
            }
            one(dy.clone())
        }
        CrossEntropyGrad => {
            let (dl, logits, labels) = (inputs[0], inputs[1], inputs[2]);
            float(dl, "dloss")?;
            rank(dl, 0, "dloss")?;
            check_cross_entropy(logits, labels)?;
            one(logits.clone())
        }
        MseGrad => {
            let (dl, p, t) = (inputs[0], inputs[1], inputs[2]);
            float(dl, "dloss")?;
            rank(dl, 0, "dloss")?;
            float(p, "the prediction")?;
            same_type(p, t, "prediction and target")?;
            one(p.clone())
        }
        EmbeddingGrad { num_embeddings } => {
            let (dy, ids) = (inputs[0], inputs[1]);
            float(dy, "dy")?;
            int(ids, "the ids")?;
            if dy.shape.rank() != ids.shape.rank() + 1 || dy.shape.0[..ids.shape.rank()] != ids.shape.0[..] {
                return Err(format!("dy {dy} must be the ids' shape {} plus one axis", ids.shape));
            }
            let d = *dy.shape.0.last().unwrap_or(&1);
            one(TensorType { dtype: dy.dtype, shape: checked(Shape(vec![*num_embeddings, d]))? })
        }
        LayerNormGrad => {
            let (dy, x, g, mean, rstd) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
            float(x, "x")?;
            same_type(dy, x, "dy and x")?;
            let fwd = infer(&LayerNorm { eps: 1.0 }, &[x, g, g])?;
            float(dy, "dy")?;
            same_type(mean, &fwd[1], "mean and layer_norm's mean")?;
            same_type(rstd, &fwd[2], "rstd and layer_norm's rstd")?;
            Ok(vec![x.clone(), g.clone(), g.clone()])
        }
        DropoutGrad { p } => {
            if !(0.0..1.0).contains(p) {
                return Err(format!("dropout p must be in [0, 1), found {p}"));
            }
            let (dy, mask) = (inputs[0], inputs[1]);
            float(dy, "dy")?;
            same_type(mask, &dy.with_dtype(DType::Bool), "the mask and dy (as bool)")?;
            one(dy.clone())
        }
        Conv2dGradInput { conv, shape } => {
            let (dy, w) = (inputs[0], inputs[1]);
            let x = TensorType { dtype: dy.dtype, shape: checked(Shape(shape.clone()))? };
            let fwd = infer(&Conv2d(*conv), &[&x, w])?;
            same_type(dy, &fwd[0], "dy and conv2d's output")?;
            one(x)
        }
        Conv2dGradWeight { conv, kernel } => {
            let (dy, x) = (inputs[0], inputs[1]);
            rank(dy, 4, "dy (NCHW)")?;
            rank(x, 4, "x (NCHW)")?;
            let per_group = conv_groups(conv.groups, x.shape.0[1], dy.shape.0[1])?;
            let w = TensorType {
                dtype: x.dtype,
                shape: checked(Shape(vec![dy.shape.0[1], per_group, kernel[0], kernel[1]]))?,
            };
            let fwd = infer(&Conv2d(*conv), &[x, &w])?;
            same_type(dy, &fwd[0], "dy and conv2d's output")?;
            one(w)
        }
        BatchNormGrad { eps } => {
            let (dy, x, g, mean, var) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
            let fwd = infer(&BatchNorm { eps: *eps, momentum: 0.0 }, &[x, g, g])?;
            same_type(dy, x, "dy and x")?;
            same_type(mean, &fwd[1], "mean and batch_norm's mean")?;
            same_type(var, &fwd[2], "var and batch_norm's var")?;
            Ok(vec![x.clone(), g.clone(), g.clone()])
        }
        FrozenBatchNormGrad { eps } => {
            let (dy, x, g, mean, var) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
            infer(&FrozenBatchNorm { eps: *eps }, &[x, g, g, mean, var])?;
            same_type(dy, x, "dy and x")?;
            Ok(vec![x.clone(), g.clone(), g.clone()])
        }
        MaxPool2dGrad(w) => {
            let (dy, x) = (inputs[0], inputs[1]);
            same_type(
                dy,
                &TensorType { dtype: x.dtype, shape: pool_out(x, w, "max_pool2d")? },
                "dy and max_pool2d's output",
            )?;
            one(x.clone())
        }
        AvgPool2dGrad { window, shape, .. } => {
            let dy = inputs[0];
            let x = TensorType { dtype: dy.dtype, shape: checked(Shape(shape.clone()))? };
            float(dy, "dy")?;
            same_type(
                dy,
                &TensorType { dtype: dy.dtype, shape: pool_out(&x, window, "avg_pool2d")? },
                "dy and avg_pool2d's output",
            )?;
            one(x)
        }
        Unscale => {
            float(inputs[0], "the gradient")?;
            same_type(inputs[1], &TensorType::scalar(DType::F32), "the scale and an f32 scalar")?;
            one(inputs[0].with_dtype(DType::F32))
        }
        FoundInf | GlobalNorm => {
            for (i, t) in inputs.iter().enumerate() {
                float(t, &format!("input {i}"))?;
            }
            one(TensorType::scalar(DType::F32))
        }
        ScaleUpdate { growth_factor, backoff_factor, growth_interval } => {
            if !(*growth_factor >= 1.0 && growth_factor.is_finite()) {
                return Err(format!("growth_factor must be at least 1, found {growth_factor}"));
            }
            if !(*backoff_factor > 0.0 && *backoff_factor <= 1.0) {
                return Err(format!("backoff_factor must be in (0, 1], found {backoff_factor}"));
            }
            if *growth_interval == 0 {
                return Err("growth_interval must be at least 1".into());
            }
            let f = TensorType::scalar(DType::F32);
            same_type(inputs[0], &f, "the scale and an f32 scalar")?;
            same_type(inputs[1], &TensorType::scalar(DType::I32), "the growth tracker and an i32 scalar")?;
            same_type(inputs[2], &f, "found_inf and an f32 scalar")?;
            Ok(vec![f, TensorType::scalar(DType::I32)])
        }
        Select => {
            same_type(inputs[0], &TensorType::scalar(DType::F32), "found_inf and an f32 scalar")?;
            same_type(inputs[1], inputs[2], "on_inf and otherwise")?;
            one(inputs[1].clone())
        }
        ClipCoef { max_norm } => {
            positive(*max_norm, "max_norm")?;
            same_type(inputs[0], &TensorType::scalar(DType::F32), "the norm and an f32 scalar")?;
            one(TensorType::scalar(DType::F32))
        }
        LrSchedule { lr, warmup, total, min_lr } => {
            positive(*lr, "lr")?;
            if *total == 0 || warmup > total {
                return Err(format!("expected 1 ≤ total and warmup ≤ total, found warmup {warmup}, total {total}"));
            }
            if !(*min_lr >= 0.0 && min_lr <= lr) {
                return Err(format!("min_lr must be in [0, lr], found {min_lr}"));
            }
            int(inputs[0], "the step")?;
            rank(inputs[0], 0, "the step")?;
            one(TensorType::scalar(DType::F32))
        }
        Sgd { lr, weight_decay } => {
            lr_input(inputs, 2)?;
            positive(*lr, "lr")?;
            non_negative(*weight_decay, "weight_decay")?;
            float(inputs[0], "the parameter")?;
            same_type(inputs[1], inputs[0], "the gradient and the parameter")?;
            one(inputs[0].clone())
        }
        SgdMomentum { lr, momentum, weight_decay } => {
            lr_input(inputs, 3)?;
            positive(*lr, "lr")?;
            non_negative(*weight_decay, "weight_decay")?;
            if !(0.0..1.0).contains(momentum) {
                return Err(format!("momentum must be in [0, 1), found {momentum}"));
            }
            float(inputs[0], "the parameter")?;
            same_type(inputs[1], inputs[0], "the gradient and the parameter")?;
            same_type(inputs[2], inputs[0], "the momentum buffer and the parameter")?;
            Ok(vec![inputs[0].clone(), inputs[0].clone()])
        }
        Adam { lr, beta1, beta2, eps, weight_decay, .. } => {
            lr_input(inputs, 5)?;
            positive(*lr, "lr")?;
            positive(*eps, "eps")?;
            non_negative(*weight_decay, "weight_decay")?;
            for (b, name) in [(beta1, "beta1"), (beta2, "beta2")] {
                if !(0.0..1.0).contains(b) {
                    return Err(format!("{name} must be in [0, 1), found {b}"));
                }
            }
            float(inputs[0], "the parameter")?;
            same_type(inputs[1], inputs[0], "the gradient and the parameter")?;
            same_type(inputs[2], inputs[0], "m and the parameter")?;
            same_type(inputs[3], inputs[0], "v and the parameter")?;
            int(inputs[4], "the step")?;
            rank(inputs[4], 0, "the step")?;
            let p = inputs[0].clone();
            Ok(vec![p.clone(), p.clone(), p])
        }
    }
}

/// An optimizer op's optional `lr` input, at `i`: an f32 scalar.
fn lr_input(inputs: &[&TensorType], i: usize) -> Result<()> {
    match inputs.get(i) {
        Some(t) => same_type(t, &TensorType::scalar(DType::F32), "the lr input and an f32 scalar"),
        None => Ok(()),
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

fn check_lrn(size: u64, alpha: f64, beta: f64, bias: f64) -> Result<()> {
    if size == 0 {
        return Err("lrn size must be at least 1".into());
    }
    non_negative(alpha, "alpha")?;
    positive(bias, "bias")?;
    if !beta.is_finite() {
        return Err(format!("beta must be finite, found {beta}"));
    }
    Ok(())
}

fn check_cross_entropy(logits: &TensorType, labels: &TensorType) -> Result<()> {
    float(logits, "the logits")?;
    rank(logits, 2, "the logits [N, C]")?;
    int(labels, "the labels")?;
    rank(labels, 1, "the labels [N]")?;
    if labels.shape.0[0] != logits.shape.0[0] {
        return Err(format!("logits {logits} and labels {labels} disagree on the batch size"));
    }
    Ok(())
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
        let y = infer(&Op::Conv2d(Conv::new([1, 1], [1, 1], 1)), &[&x, &w]).unwrap();
        assert_eq!(y[0], t(DType::F32, &[8, 4, 8, 8]));
        let win = Window::new([2, 2], [2, 2], [0, 0]);
        let p = infer(&Op::MaxPool2d(win), &[&y[0]]).unwrap();
        assert_eq!(p[0], t(DType::F32, &[8, 4, 4, 4]));
        let dx =
            infer(&Op::Conv2dGradInput { conv: Conv::new([1, 1], [1, 1], 1), shape: vec![8, 1, 8, 8] }, &[&y[0], &w])
                .unwrap();
        assert_eq!(dx[0], x);
        let dw =
            infer(&Op::Conv2dGradWeight { conv: Conv::new([1, 1], [1, 1], 1), kernel: [3, 3] }, &[&y[0], &x]).unwrap();
        assert_eq!(dw[0], w);
    }

    #[test]
    fn grouped_conv() {
        let conv = |groups| Op::Conv2d(Conv::new([1, 1], [0, 0], groups));
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
        let dw = Op::Conv2dGradWeight { conv: Conv::new([1, 1], [0, 0], 2), kernel: [3, 3] };
        assert_eq!(infer(&dw, &[&dy, &x]).unwrap()[0], w);
        let dx = Op::Conv2dGradInput { conv: Conv::new([1, 1], [0, 0], 2), shape: vec![2, 6, 5, 5] };
        assert_eq!(infer(&dx, &[&dy, &w]).unwrap()[0], x);
        let bad = Op::Conv2dGradWeight { conv: Conv::new([1, 1], [0, 0], 4), kernel: [3, 3] };
        assert!(infer(&bad, &[&dy, &x]).unwrap_err().contains("does not divide"));
    }

    #[test]
    fn dilated_conv() {
        // A 3x2 kernel dilated by [2, 3] spans 5x4: (9 + 2·1 − 5)/2 + 1 = 4, (7 − 4)/1 + 1 = 4.
        let cv = Conv { dilation: [2, 3], ..Conv::new([2, 1], [1, 0], 2) };
        let x = t(DType::F32, &[2, 4, 9, 7]);
        let w = t(DType::F32, &[6, 2, 3, 2]);
        let y = infer(&Op::Conv2d(cv), &[&x, &w]).unwrap().remove(0);
        assert_eq!(y, t(DType::F32, &[2, 6, 4, 4]));
        let dx = Op::Conv2dGradInput { conv: cv, shape: vec![2, 4, 9, 7] };
        assert_eq!(infer(&dx, &[&y, &w]).unwrap()[0], x);
        let dw = Op::Conv2dGradWeight { conv: cv, kernel: [3, 2] };
        assert_eq!(infer(&dw, &[&y, &x]).unwrap()[0], w);
        // The undilated conv's output does not fit the dilated gradients.
        let y1 = infer(&Op::Conv2d(Conv { dilation: [1, 1], ..cv }), &[&x, &w]).unwrap().remove(0);
        assert!(infer(&dw, &[&y1, &x]).unwrap_err().contains("conv2d's output"));
        // Too wide a dilation for the input, and a zero one.
        let wide = Op::Conv2d(Conv { dilation: [6, 1], ..cv });
        let err = infer(&wide, &[&x, &w]).unwrap_err();
        assert!(err.contains("conv2d (the 3x2 kernel dilated by [6, 1]): window kernel=[13, 2]"), "{err}");
        let zero = Op::Conv2d(Conv { dilation: [0, 1], ..cv });
        assert!(infer(&zero, &[&x, &w]).unwrap_err().contains("dilations must be at least 1"));
        let huge = Op::Conv2d(Conv { dilation: [u64::MAX, 1], ..cv });
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
