//! softmax and log_softmax, layer_norm and batch_norm, cross_entropy and
//! mse, with their gradients.

use crate::types::TensorType;

use super::super::tensor::Tensor;
use super::{dims, from_f32, wrap, KResult};

/// `(outer, len, inner)`: the layout of `shape` around `axis`.
fn around(d: &[usize], ax: usize) -> (usize, usize, usize) {
    (d[..ax].iter().product(), d[ax], d[ax + 1..].iter().product())
}

/// `softmax` (or `log_softmax` when `log`) along `axis`. With `causal`
/// (axis last, last two axes square), entry `j` of query row `i` is masked
/// when `j > i`: it takes no part in the sum and its output is 0.
pub fn softmax(x: &Tensor, axis: i64, causal: bool, log: bool, out: &TensorType) -> KResult<Tensor> {
    let d = dims(x.shape());
    let ax = x.shape().axis(axis)?;
    let (outer, len, inner) = around(&d, ax);
    let rows_per_mat = if causal { d[d.len() - 2] } else { 1 };
    let v = x.to_f32_vec();
    let mut y = vec![0f32; v.len()];
    for o in 0..outer {
        // With causal, inner == 1 and the row index on axis -2 is o mod rows.
        let visible = if causal { o % rows_per_mat + 1 } else { len };
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let max = (0..visible).map(|j| v[at(j)]).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..visible).map(|j| (v[at(j)] - max).exp()).sum();
            for j in 0..visible {
                y[at(j)] = if log { v[at(j)] - max - sum.ln() } else { (v[at(j)] - max).exp() / sum };
            }
        }
    }
    from_f32(out, &y)
}

/// `softmax_grad(dy, y)`: `y (dy - Σ dy·y)`; `log_softmax_grad(dy, y)`:
/// `dy - exp(y) Σ dy`, sums along `axis`.
pub fn softmax_grad(dy: &Tensor, y: &Tensor, axis: i64, log: bool, out: &TensorType) -> KResult<Tensor> {
    let d = dims(y.shape());
    let ax = y.shape().axis(axis)?;
    let (outer, len, inner) = around(&d, ax);
    let (g, yv) = (dy.to_f32_vec(), y.to_f32_vec());
    let mut dx = vec![0f32; g.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            if log {
                let s: f32 = (0..len).map(|j| g[at(j)]).sum();
                for j in 0..len {
                    dx[at(j)] = g[at(j)] - yv[at(j)].exp() * s;
                }
            } else {
                let s: f32 = (0..len).map(|j| g[at(j)] * yv[at(j)]).sum();
                for j in 0..len {
                    dx[at(j)] = yv[at(j)] * (g[at(j)] - s);
                }
            }
        }
    }
    from_f32(out, &dx)
}

/// `layer_norm(x, gamma, beta) -> (y, mean, rstd)` over the last axis:
/// biased variance, `rstd = 1/sqrt(var + eps)`, statistics in f32.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, out: &[TensorType]) -> KResult<Vec<Tensor>> {
    let v = x.to_f32_vec();
    let (g, b) = (gamma.to_f32_vec(), beta.to_f32_vec());
    let width = g.len();
    let rows = v.len() / width;
    let (mut y, mut mean, mut rstd) = (vec![0f32; v.len()], vec![0f32; rows], vec![0f32; rows]);
    for r in 0..rows {
        let row = &v[r * width..(r + 1) * width];
        let m = row.iter().sum::<f32>() / width as f32;
        let var = row.iter().map(|&a| (a - m) * (a - m)).sum::<f32>() / width as f32;
        let s = 1.0 / (var + eps as f32).sqrt();
        for (k, &a) in row.iter().enumerate() {
            y[r * width + k] = (a - m) * s * g[k] + b[k];
        }
        (mean[r], rstd[r]) = (m, s);
    }
    Ok(vec![from_f32(&out[0], &y)?, from_f32(&out[1], &mean)?, from_f32(&out[2], &rstd)?])
}

/// `layer_norm_grad(dy, x, gamma, mean, rstd) -> (dx, dgamma, dbeta)`:
/// `dx = rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))` with `ĝ = dy·gamma`.
pub fn layer_norm_grad(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    out: &[TensorType],
) -> KResult<Vec<Tensor>> {
    let (d, v, g) = (dy.to_f32_vec(), x.to_f32_vec(), gamma.to_f32_vec());
    let (mu, rs) = (mean.to_f32_vec(), rstd.to_f32_vec());
    let width = g.len();
    let rows = v.len() / width;
    let (mut dx, mut dg, mut db) = (vec![0f32; v.len()], vec![0f32; width], vec![0f32; width]);
    for r in 0..rows {
        let span = r * width..(r + 1) * width;
        let xhat: Vec<f32> = v[span.clone()].iter().map(|&a| (a - mu[r]) * rs[r]).collect();
        let gh: Vec<f32> = d[span.clone()].iter().zip(&g).map(|(&a, &b)| a * b).collect();
        let m1 = gh.iter().sum::<f32>() / width as f32;
        let m2 = gh.iter().zip(&xhat).map(|(&a, &b)| a * b).sum::<f32>() / width as f32;
        for k in 0..width {
            dx[r * width + k] = rs[r] * (gh[k] - m1 - xhat[k] * m2);
            dg[k] += d[r * width + k] * xhat[k];
            db[k] += d[r * width + k];
        }
    }
    Ok(vec![from_f32(&out[0], &dx)?, from_f32(&out[1], &dg)?, from_f32(&out[2], &db)?])
}

/// Calls `f(channel, flat index)` for every element of an `[N, C, ...]` tensor, channel-major.
fn per_channel(d: &[usize], mut f: impl FnMut(usize, usize)) {
    let (n, c) = (d[0], d[1]);
    let s: usize = d[2..].iter().product();
    for ch in 0..c {
        for b in 0..n {
            for k in 0..s {
                f(ch, (b * c + ch) * s + k);
            }
        }
    }
}

/// `batch_norm(x, gamma, beta) -> (y, mean, var)`: batch statistics over
/// every axis but 1, biased variance (PyTorch's training mode). The op's
/// `momentum` attribute does not enter: there are no running statistics.
pub fn batch_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, out: &[TensorType]) -> KResult<Vec<Tensor>> {
    let d = dims(x.shape());
    let v = x.to_f32_vec();
    let (g, b) = (gamma.to_f32_vec(), beta.to_f32_vec());
    let count = (v.len() / d[1]) as f32;
    let (mut mean, mut var) = (vec![0f32; d[1]], vec![0f32; d[1]]);
    per_channel(&d, |c, i| mean[c] += v[i]);
    mean.iter_mut().for_each(|m| *m /= count);
    per_channel(&d, |c, i| var[c] += (v[i] - mean[c]) * (v[i] - mean[c]));
    var.iter_mut().for_each(|s| *s /= count);
    let rstd: Vec<f32> = var.iter().map(|&s| 1.0 / (s + eps as f32).sqrt()).collect();
    let mut y = vec![0f32; v.len()];
    per_channel(&d, |c, i| y[i] = (v[i] - mean[c]) * rstd[c] * g[c] + b[c]);
    Ok(vec![from_f32(&out[0], &y)?, from_f32(&out[1], &mean)?, from_f32(&out[2], &var)?])
}

/// `batch_norm_grad(dy, x, gamma, mean, var) -> (dx, dgamma, dbeta)`:
/// `dx = gamma rstd / M (M dy - dbeta - x̂ dgamma)` per channel, `M = N·H·W`.
pub fn batch_norm_grad(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    out: &[TensorType],
) -> KResult<Vec<Tensor>> {
    let d = dims(x.shape());
    let (gd, v, g) = (dy.to_f32_vec(), x.to_f32_vec(), gamma.to_f32_vec());
    let mu = mean.to_f32_vec();
    let rstd: Vec<f32> = var.to_f32_vec().iter().map(|&s| 1.0 / (s + eps as f32).sqrt()).collect();
    let m = (v.len() / d[1]) as f32;
    let (mut dg, mut db) = (vec![0f32; d[1]], vec![0f32; d[1]]);
    per_channel(&d, |c, i| {
        db[c] += gd[i];
        dg[c] += gd[i] * (v[i] - mu[c]) * rstd[c];
    });
    let mut dx = vec![0f32; v.len()];
    per_channel(&d, |c, i| {
        let xhat = (v[i] - mu[c]) * rstd[c];
        dx[i] = g[c] * rstd[c] / m * (m * gd[i] - db[c] - xhat * dg[c]);
    });
    Ok(vec![from_f32(&out[0], &dx)?, from_f32(&out[1], &dg)?, from_f32(&out[2], &db)?])
}

/// Labels as row indices, each checked against the class count.
fn labels(l: &Tensor, classes: usize) -> KResult<Vec<usize>> {
    let v = l.data().to_i64_vec().ok_or("the labels must be integers")?;
    v.into_iter()
        .enumerate()
        .map(|(n, c)| {
            usize::try_from(c)
                .ok()
                .filter(|&u| u < classes)
                .ok_or_else(|| format!("label {c} of row {n} is out of range for {classes} classes"))
        })
        .collect()
}

/// Row-wise log-sum-exp of `[N, C]` logits, in f32.
fn logsumexp(x: &[f32], c: usize) -> Vec<f32> {
    x.chunks(c)
        .map(|row| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            m + row.iter().map(|&a| (a - m).exp()).sum::<f32>().ln()
        })
        .collect()
}

/// `cross_entropy(logits [N, C], labels [N])`: the mean over N of
/// `logsumexp(row) - row[label]` (rows in f32, the mean in f64).
pub fn cross_entropy(logits: &Tensor, label: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let c = dims(logits.shape())[1];
    let ls = labels(label, c)?;
    let x = logits.to_f32_vec();
    let lse = logsumexp(&x, c);
    let total: f64 = ls.iter().enumerate().map(|(n, &l)| (lse[n] - x[n * c + l]) as f64).sum();
    wrap(Tensor::full(out, total / ls.len() as f64))
}

/// `cross_entropy_grad(dloss, logits, labels)`: `dloss (softmax - onehot) / N`.
pub fn cross_entropy_grad(dl: &Tensor, logits: &Tensor, label: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let c = dims(logits.shape())[1];
    let ls = labels(label, c)?;
    let x = logits.to_f32_vec();
    let lse = logsumexp(&x, c);
    let s = dl.item_f32().ok_or("dloss must be a scalar")? / ls.len() as f32;
    let mut dx = vec![0f32; x.len()];
    for (n, &l) in ls.iter().enumerate() {
        for k in 0..c {
            let p = (x[n * c + k] - lse[n]).exp();
            dx[n * c + k] = s * (p - if k == l { 1.0 } else { 0.0 });
        }
    }
    from_f32(out, &dx)
}

/// `mse(prediction, target)`: the mean of the squared differences
/// (squares in f32, the mean in f64).
pub fn mse(p: &Tensor, t: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let (a, b) = (p.to_f32_vec(), t.to_f32_vec());
    let total: f64 = a.iter().zip(&b).map(|(&x, &y)| ((x - y) * (x - y)) as f64).sum();
    wrap(Tensor::full(out, total / a.len() as f64))
}

/// `mse_grad(dloss, prediction, target)`: `dloss · 2 (p - t) / numel`.
pub fn mse_grad(dl: &Tensor, p: &Tensor, t: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let (a, b) = (p.to_f32_vec(), t.to_f32_vec());
    let s = dl.item_f32().ok_or("dloss must be a scalar")? * 2.0 / a.len() as f32;
    let v: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| s * (x - y)).collect();
    from_f32(out, &v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DType;

    #[test]
    fn causal_softmax_masks_the_future() {
        let x = Tensor::from_f32(DType::F32, vec![2, 2], &[1., 5., 2., 2.]).unwrap();
        let y = softmax(&x, -1, true, false, &x.ty()).unwrap();
        assert_eq!(y.to_f32_vec(), vec![1., 0., 0.5, 0.5]);
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_c() {
        let x = Tensor::from_f32(DType::F32, vec![2, 4], &[0.; 8]).unwrap();
        let l = Tensor::new(vec![2], crate::exec::Data::I32(vec![0, 3])).unwrap();
        let v = cross_entropy(&x, &l, &TensorType::scalar(DType::F32)).unwrap();
        assert!((v.item_f32().unwrap() - 4f32.ln()).abs() < 1e-6);
        let bad = Tensor::new(vec![2], crate::exec::Data::I32(vec![0, 4])).unwrap();
        assert!(cross_entropy(&x, &bad, &TensorType::scalar(DType::F32)).unwrap_err().contains("out of range"));
    }
}
