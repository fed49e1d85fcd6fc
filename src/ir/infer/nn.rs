//! Type inference of normalisations, softmax, losses and local response
//! normalisation, with their gradients.

use super::*;

pub(super) fn infer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    let one = |t: TensorType| Ok(vec![t]);
    use Op::*;
    match op {
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
        _ => Err(format!("{}: not a nn op (the dispatch in infer/mod.rs is wrong)", op.name())),
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
