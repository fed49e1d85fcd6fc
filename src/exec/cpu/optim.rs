//! Loss-scaling and optimizer kernels. All compute in f32 (the scalar
//! rules come from [`crate::ir::semantics`]); global_norm and found_inf scan in f64.

use crate::ir::semantics;
use crate::ir::types::TensorType;

use super::{from_f32, KResult};
use crate::tensor::Tensor;

fn scalar(t: &Tensor, what: &str) -> KResult<f32> {
    t.item_f32().ok_or_else(|| format!("{what} must be a scalar"))
}

/// `unscale(grad, scale)`: `f32(grad) * inv`, `inv = 1/scale` in f64 rounded to f32.
pub fn unscale(grad: &Tensor, scale: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let inv = semantics::inv_scale(scalar(scale, "the scale")?);
    let v: Vec<f32> = grad.to_f32_vec().into_iter().map(|g| g * inv).collect();
    from_f32(out, &v)
}

/// `found_inf(g1, …, gn)`: 1.0 when any element is inf or NaN, else 0.0.
pub fn found_inf(xs: &[&Tensor]) -> Tensor {
    let bad = xs.iter().any(|t| t.to_f32_vec().iter().any(|v| !v.is_finite()));
    Tensor::scalar_f32(if bad { 1.0 } else { 0.0 })
}

/// `scale_update(scale, tracker, found_inf) -> (scale', tracker')`, GradScaler's rule.
pub fn scale_update(
    scale: &Tensor,
    tracker: &Tensor,
    found: &Tensor,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
) -> KResult<Vec<Tensor>> {
    let t = tracker.data().to_i64_vec().and_then(|v| v.first().copied()).ok_or("the tracker must be an i32 scalar")?;
    let (s, t) = semantics::scale_update(
        scalar(scale, "the scale")?,
        t as i32,
        scalar(found, "found_inf")? != 0.0,
        growth_factor,
        backoff_factor,
        growth_interval,
    );
    Ok(vec![Tensor::scalar_f32(s), Tensor::scalar_i32(t)])
}

/// `global_norm(g1, …, gn)`: the L2 norm of every element, summed in f64.
pub fn global_norm(xs: &[&Tensor]) -> Tensor {
    let sum: f64 = xs.iter().flat_map(|t| t.to_f32_vec()).map(|v| (v as f64) * (v as f64)).sum();
    Tensor::scalar_f32(sum.sqrt() as f32)
}

/// `clip_coef(norm)`: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_coef(norm: &Tensor, max_norm: f64) -> KResult<Tensor> {
    Ok(Tensor::scalar_f32(semantics::clip_coef(scalar(norm, "the norm")?, max_norm)))
}

/// The learning rate of an optimizer op: its optional `lr` input (an f32
/// scalar), else its attribute.
pub fn lr(given: Option<&&Tensor>, attr: f64) -> KResult<f64> {
    match given {
        Some(t) => Ok(f64::from(scalar(t, "the lr input")?)),
        None => Ok(attr),
    }
}

/// `lr_schedule(step)`: see [`semantics::lr_schedule`].
pub fn lr_schedule(step: &Tensor, lr: f64, warmup: u32, total: u32, min_lr: f64) -> KResult<Tensor> {
    let k = step.data().to_i64_vec().and_then(|s| s.first().copied()).ok_or("the step must be an integer scalar")?;
    Ok(Tensor::scalar_f32(semantics::lr_schedule(k, lr, warmup, total, min_lr)))
}

/// `sgd(p, g)`: `p - lr (g + wd p)`.
pub fn sgd(p: &Tensor, g: &Tensor, lr: f64, wd: f64, out: &TensorType) -> KResult<Tensor> {
    let (lr, wd) = (lr as f32, wd as f32);
    let v: Vec<f32> = p.to_f32_vec().iter().zip(g.to_f32_vec()).map(|(&p, g)| p - lr * (g + wd * p)).collect();
    from_f32(out, &v)
}

/// `sgd_momentum(p, g, buf) -> (p', buf')`: `buf' = momentum buf + g + wd p`, `p' = p - lr buf'`.
pub fn sgd_momentum(
    p: &Tensor,
    g: &Tensor,
    buf: &Tensor,
    lr: f64,
    momentum: f64,
    wd: f64,
    out: &[TensorType],
) -> KResult<Vec<Tensor>> {
    let (lr, mu, wd) = (lr as f32, momentum as f32, wd as f32);
    let (pv, gv, bv) = (p.to_f32_vec(), g.to_f32_vec(), buf.to_f32_vec());
    let mut np = Vec::with_capacity(pv.len());
    let mut nb = Vec::with_capacity(pv.len());
    for ((&p, &g), &b) in pv.iter().zip(&gv).zip(&bv) {
        let b2 = mu * b + g + wd * p;
        nb.push(b2);
        np.push(p - lr * b2);
    }
    Ok(vec![from_f32(&out[0], &np)?, from_f32(&out[1], &nb)?])
}

/// Adam's hyper-parameters (the op's attributes).
#[derive(Clone, Copy, Debug)]
pub struct AdamHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
}

/// `adam(p, g, m, v, step) -> (p', m', v')` with `step` the 1-based step:
/// L2 (`g += wd p`) or AdamW (`p *= 1 - lr wd`), then
/// `m' = b1 m + (1-b1) g`, `v' = b2 v + (1-b2) g²`,
/// `p' = p - lr (m'/(1-b1^step)) / (sqrt(v'/(1-b2^step)) + eps)`.
/// The bias corrections `1 - b^step` are computed in f64 and rounded to f32.
pub fn adam(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: &Tensor,
    h: &AdamHyper,
    out: &[TensorType],
) -> KResult<Vec<Tensor>> {
    let t = step.data().to_i64_vec().and_then(|s| s.first().copied()).ok_or("the step must be an integer scalar")?;
    if t < 1 {
        return Err(format!("the step is 1-based, found {t}"));
    }
    let exp = i32::try_from(t).unwrap_or(i32::MAX);
    let bc1 = (1.0 - h.beta1.powi(exp)) as f32;
    let bc2 = (1.0 - h.beta2.powi(exp)) as f32;
    let (lr, b1, b2, eps, wd) = (h.lr as f32, h.beta1 as f32, h.beta2 as f32, h.eps as f32, h.weight_decay as f32);
    let (pv, gv, mv, vv) = (p.to_f32_vec(), g.to_f32_vec(), m.to_f32_vec(), v.to_f32_vec());
    let n = pv.len();
    let (mut np, mut nm, mut nv) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (mut p, mut g) = (pv[i], gv[i]);
        if h.decoupled {
            p *= 1.0 - lr * wd;
        } else {
            g += wd * p;
        }
        let m2 = b1 * mv[i] + (1.0 - b1) * g;
        let v2 = b2 * vv[i] + (1.0 - b2) * g * g;
        np.push(p - lr * (m2 / bc1) / ((v2 / bc2).sqrt() + eps));
        nm.push(m2);
        nv.push(v2);
    }
    Ok(vec![from_f32(&out[0], &np)?, from_f32(&out[1], &nm)?, from_f32(&out[2], &nv)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::types::DType;

    #[test]
    fn first_adam_step_moves_by_lr() {
        let ty = TensorType::new(DType::F32, vec![2]);
        let p = Tensor::from_f32(DType::F32, vec![2], &[1.0, -1.0]).unwrap();
        let g = Tensor::from_f32(DType::F32, vec![2], &[0.5, -2.0]).unwrap();
        let z = Tensor::zeros(&ty).unwrap();
        let h = AdamHyper { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: true };
        let out = adam(&p, &g, &z, &z, &Tensor::scalar_i32(1), &h, &[ty.clone(), ty.clone(), ty]).unwrap();
        let np = out[0].to_f32_vec();
        assert!((np[0] - 0.9).abs() < 1e-5 && (np[1] + 0.9).abs() < 1e-5, "{np:?}");
        assert!(adam(&p, &g, &z, &z, &Tensor::scalar_i32(0), &h, &[p.ty(), p.ty(), p.ty()]).is_err());
    }

    #[test]
    fn found_inf_sees_nan_and_inf() {
        let a = Tensor::from_f32(DType::F32, vec![2], &[1.0, f32::NAN]).unwrap();
        let b = Tensor::from_f32(DType::F16, vec![1], &[1e6]).unwrap();
        let c = Tensor::from_f32(DType::F32, vec![1], &[1.0]).unwrap();
        assert_eq!(found_inf(&[&c, &a]).item_f32(), Some(1.0));
        assert_eq!(found_inf(&[&b]).item_f32(), Some(1.0));
        assert_eq!(found_inf(&[&c]).item_f32(), Some(0.0));
    }
}
