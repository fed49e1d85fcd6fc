//! Type inference of matmul, convolution and pooling.

use super::*;
use crate::ir::op::Conv;

pub(super) fn infer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    let one = |t: TensorType| Ok(vec![t]);
    use Op::*;
    match op {
        Matmul { transpose_a, transpose_b } => {
            let (a, b) = (inputs[0], inputs[1]);
            float(a, "matmul operand a")?;
            same_dtype(a, b, "matmul")?;
            one(TensorType { dtype: a.dtype, shape: matmul_shape(a, b, *transpose_a, *transpose_b)? })
        }
        Conv2d(cv) => one(conv2d(cv, inputs[0], inputs[1])?),
        MaxPool2d(w) | AvgPool2d { window: w, .. } => {
            float(inputs[0], "the input")?;
            one(TensorType { dtype: inputs[0].dtype, shape: pool_out(inputs[0], w, op.name())? })
        }
        Conv2dGradInput { conv, shape } => {
            let (dy, w) = (inputs[0], inputs[1]);
            let x = TensorType { dtype: dy.dtype, shape: checked(Shape(shape.clone()))? };
            same_type(dy, &conv2d(conv, &x, w)?, "dy and conv2d's output")?;
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
            same_type(dy, &conv2d(conv, x, &w)?, "dy and conv2d's output")?;
            one(w)
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
        _ => Err(format!("{}: not a linalg op (the dispatch in infer/mod.rs is wrong)", op.name())),
    }
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

/// conv2d's output type for input `x` and weight `w` (its gradients check
/// their `dy` against it).
fn conv2d(cv: &Conv, x: &TensorType, w: &TensorType) -> Result<TensorType> {
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
    let kernel = cv
        .extent([wd[2], wd[3]])
        .ok_or_else(|| format!("conv2d: the kernel {:?} dilated by {:?} is too large", [wd[2], wd[3]], cv.dilation))?;
    let what = if cv.dilation == [1, 1] {
        "conv2d".to_string()
    } else {
        format!("conv2d (the {}x{} kernel dilated by {:?})", wd[2], wd[3], cv.dilation)
    };
    let win = Window::new(kernel, cv.stride, cv.padding);
    let mut s = window_out(x, &win, &what)?;
    s.0[1] = wd[0];
    Ok(TensorType { dtype: x.dtype, shape: s })
}
