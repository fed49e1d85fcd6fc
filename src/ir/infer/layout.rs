//! Type inference of embedding, reshapes, transposes, concat and split,
//! reductions and broadcasts.

use super::*;

pub(super) fn infer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    let one = |t: TensorType| Ok(vec![t]);
    use Op::*;
    match op {
        Embedding => {
            let (table, ids) = (inputs[0], inputs[1]);
            float(table, "the embedding table")?;
            rank(table, 2, "the embedding table")?;
            int(ids, "the ids")?;
            let mut s = ids.shape.0.clone();
            s.push(table.shape.0[1]);
            one(TensorType { dtype: table.dtype, shape: checked(Shape(s))? })
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
        _ => Err(format!("{}: not a layout op (the dispatch in infer/mod.rs is wrong)", op.name())),
    }
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
