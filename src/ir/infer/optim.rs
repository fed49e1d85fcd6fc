//! Type inference of the loss scaler, gradient clipping, the learning-rate
//! schedule and the optimizers.

use super::*;

pub(super) fn infer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    let one = |t: TensorType| Ok(vec![t]);
    use Op::*;
    match op {
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
        _ => Err(format!("{}: not a optim op (the dispatch in infer/mod.rs is wrong)", op.name())),
    }
}

/// An optimizer op's optional `lr` input, at `i`: an f32 scalar.
fn lr_input(inputs: &[&TensorType], i: usize) -> Result<()> {
    match inputs.get(i) {
        Some(t) => same_type(t, &TensorType::scalar(DType::F32), "the lr input and an f32 scalar"),
        None => Ok(()),
    }
}
