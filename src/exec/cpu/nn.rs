//! softmax and log_softmax, layer_norm, batch_norm and frozen_batch_norm,
//! lrn, cross_entropy and mse, with their gradients.

use crate::ir::types::TensorType;

use super::{dims, from_f32, wrap, KResult};
use crate::tensor::Tensor;

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

/// `frozen_batch_norm(x, gamma, beta, mean, var)`: per channel `c` (axis 1),
/// `y = (x - mean) · r · gamma + beta` with `r = 1/sqrt(var + eps)`, in f32.
pub fn frozen_batch_norm(inputs: &[&Tensor], eps: f64, out: &TensorType) -> KResult<Tensor> {
    let d = dims(inputs[0].shape());
    let v = inputs[0].to_f32_vec();
    let [g, b, mu, var] = [1, 2, 3, 4].map(|i| inputs[i].to_f32_vec());
    let rstd: Vec<f32> = var.iter().map(|&s| 1.0 / (s + eps as f32).sqrt()).collect();
    let mut y = vec![0f32; v.len()];
    per_channel(&d, |c, i| y[i] = (v[i] - mu[c]) * rstd[c] * g[c] + b[c]);
    from_f32(out, &y)
}

/// `frozen_batch_norm_grad(dy, x, gamma, mean, var) -> (dx, dgamma, dbeta)`:
/// `dx = dy · gamma · r`, `dgamma = Σ dy · (x - mean) · r`, `dbeta = Σ dy`,
/// sums per channel over every axis but 1 (f32, channel-major order).
pub fn frozen_batch_norm_grad(inputs: &[&Tensor], eps: f64, out: &[TensorType]) -> KResult<Vec<Tensor>> {
    let d = dims(inputs[1].shape());
    let [gd, v, g, mu, var] = [0, 1, 2, 3, 4].map(|i| inputs[i].to_f32_vec());
    let rstd: Vec<f32> = var.iter().map(|&s| 1.0 / (s + eps as f32).sqrt()).collect();
    let (mut dx, mut dg, mut db) = (vec![0f32; v.len()], vec![0f32; d[1]], vec![0f32; d[1]]);
    per_channel(&d, |c, i| {
        dx[i] = gd[i] * g[c] * rstd[c];
        dg[c] += gd[i] * (v[i] - mu[c]) * rstd[c];
        db[c] += gd[i];
    });
    Ok(vec![from_f32(&out[0], &dx)?, from_f32(&out[1], &dg)?, from_f32(&out[2], &db)?])
}

/// LRN's attributes as the f32 the kernels compute with.
pub struct LrnHyper {
    /// Channels before and after `c` in its window: ⌊(size-1)/2⌋, ⌈(size-1)/2⌉.
    before: usize,
    after: usize,
    /// `alpha / size`, rounded once from f64.
    scale: f32,
    beta: f32,
    bias: f32,
}

impl LrnHyper {
    pub fn new(size: u64, alpha: f64, beta: f64, bias: f64) -> LrnHyper {
        let before = size.saturating_sub(1) / 2;
        let after = size.saturating_sub(1) - before;
        LrnHyper {
            before: usize::try_from(before).unwrap_or(usize::MAX),
            after: usize::try_from(after).unwrap_or(usize::MAX),
            scale: (alpha / size as f64) as f32,
            beta: beta as f32,
            bias: bias as f32,
        }
    }

    /// The channels `[lo, hi)` of `c`'s window among `channels`.
    fn window(&self, c: usize, channels: usize) -> std::ops::Range<usize> {
        c.saturating_sub(self.before)..c.saturating_add(self.after).saturating_add(1).min(channels)
    }

    /// `d = bias + alpha/size · Σ x²` over each element's window, for x laid
    /// out `[N, C, S]`.
    fn denominators(&self, v: &[f32], d: &[usize]) -> Vec<f32> {
        let (n, c) = (d[0], d[1]);
        let s: usize = d[2..].iter().product();
        let mut den = vec![0f32; v.len()];
        for b in 0..n {
            for k in 0..s {
                let at = |ch: usize| (b * c + ch) * s + k;
                for ch in 0..c {
                    let sq: f32 = self.window(ch, c).map(|w| v[at(w)] * v[at(w)]).sum();
                    den[at(ch)] = self.bias + self.scale * sq;
                }
            }
        }
        den
    }
}

/// `lrn(x)`: `y = x / d^beta`, `d = bias + alpha/size · Σ x²` over the window
/// of channels `[c - ⌊(size-1)/2⌋, c + ⌈(size-1)/2⌉]` (ONNX LRN), in f32.
pub fn lrn(x: &Tensor, h: &LrnHyper, out: &TensorType) -> KResult<Tensor> {
    let v = x.to_f32_vec();
    let den = h.denominators(&v, &dims(x.shape()));
    let y: Vec<f32> = v.iter().zip(&den).map(|(&a, &d)| a / d.powf(h.beta)).collect();
    from_f32(out, &y)
}

/// `lrn_grad(dy, x)`: `dx_j = dy_j d_j^-β - (2αβ/size) x_j Σ_c dy_c x_c d_c^(-β-1)`,
/// the sum over the channels `c` whose window holds `j`, that is
/// `c ∈ [j - ⌈(size-1)/2⌉, j + ⌊(size-1)/2⌋]`.
pub fn lrn_grad(dy: &Tensor, x: &Tensor, h: &LrnHyper, out: &TensorType) -> KResult<Tensor> {
    let d = dims(x.shape());
    let (gd, v) = (dy.to_f32_vec(), x.to_f32_vec());
    let den = h.denominators(&v, &d);
    // t_c = dy_c · x_c · d_c^(-β-1)
    let t: Vec<f32> = (0..v.len()).map(|i| gd[i] * v[i] * den[i].powf(-h.beta - 1.0)).collect();
    let (n, c) = (d[0], d[1]);
    let s: usize = d[2..].iter().product();
    // The reverse window: c holds j when j is in c's window.
    let rev = LrnHyper { before: h.after, after: h.before, ..*h };
    let k = 2.0 * h.scale * h.beta;
    let mut dx = vec![0f32; v.len()];
    for b in 0..n {
        for p in 0..s {
            let at = |ch: usize| (b * c + ch) * s + p;
            for j in 0..c {
                let sum: f32 = rev.window(j, c).map(|w| t[at(w)]).sum();
                dx[at(j)] = gd[at(j)] * den[at(j)].powf(-h.beta) - k * v[at(j)] * sum;
            }
        }
    }
    from_f32(out, &dx)
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
    use crate::ir::types::DType;

    #[test]
    fn causal_softmax_masks_the_future() {
        let x = Tensor::from_f32(DType::F32, vec![2, 2], &[1., 5., 2., 2.]).unwrap();
        let y = softmax(&x, -1, true, false, &x.ty()).unwrap();
        assert_eq!(y.to_f32_vec(), vec![1., 0., 0.5, 0.5]);
    }

    fn close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "[{i}]: {g} vs {w}\n{got:?}");
        }
    }

    #[test]
    fn lrn_matches_the_formula() {
        // x = [1, 2, 3] on the channel axis, alpha 0.2, beta 0.5, bias 1.
        let x = Tensor::from_f32(DType::F32, vec![1, 3, 1, 1], &[1., 2., 3.]).unwrap();
        // size 2: windows [c, c+1], sums of squares 5, 13, 9, d = 1 + 0.1·sq.
        let y = lrn(&x, &LrnHyper::new(2, 0.2, 0.5, 1.0), &x.ty()).unwrap();
        close(&y.to_f32_vec(), &[0.816_496_6, 1.318_760_9, 2.176_428_8], 1e-6);
        // size 3: windows [c-1, c+1], sums 5, 14, 13, d = 1 + 0.2/3·sq.
        let y = lrn(&x, &LrnHyper::new(3, 0.2, 0.5, 1.0), &x.ty()).unwrap();
        close(&y.to_f32_vec(), &[0.866_025_4, 1.438_389_9, 2.195_775_2], 1e-6);
        // size 1: each channel alone, y = x / (2 + 1·x²)^0.75.
        let y = lrn(&x, &LrnHyper::new(1, 1.0, 0.75, 2.0), &x.ty()).unwrap();
        let want: Vec<f32> = [1f32, 2., 3.].iter().map(|&v| v / (2.0 + v * v).powf(0.75)).collect();
        close(&y.to_f32_vec(), &want, 1e-6);
    }

    #[test]
    fn frozen_batch_norm_matches_the_formula() {
        // Two channels of two values: gamma [2, 0.5], beta [0.1, -1],
        // mean [1, 2], var [3, 0.25], eps 1e-5.
        let t = |s: Vec<u64>, v: &[f32]| Tensor::from_f32(DType::F32, s, v).unwrap();
        let x = t(vec![1, 2, 1, 2], &[1., 2., 3., 4.]);
        let (g, b, m, v) =
            (t(vec![2], &[2., 0.5]), t(vec![2], &[0.1, -1.]), t(vec![2], &[1., 2.]), t(vec![2], &[3., 0.25]));
        let y = frozen_batch_norm(&[&x, &g, &b, &m, &v], 1e-5, &x.ty()).unwrap();
        // (x - mean) / sqrt(var + eps) · gamma + beta
        close(&y.to_f32_vec(), &[0.1, 1.254_698_6, -0.000_020, 0.999_96], 1e-6);
        // In f16 the output is the f32 result rounded once.
        let out = TensorType::new(DType::F16, vec![1, 2, 1, 2]);
        let xh = Tensor::new(x.shape().clone(), x.data().cast(DType::F16)).unwrap();
        let h = frozen_batch_norm(&[&xh, &g, &b, &m, &v], 1e-5, &out).unwrap();
        assert_eq!(h.data(), &crate::exec::Data::from_f32(DType::F16, &y.to_f32_vec()));
        // The gradient with dy = 1: dx = gamma·r, dgamma = Σ (x - mean)·r, dbeta = count.
        let dy = t(vec![1, 2, 1, 2], &[1.; 4]);
        let outs = [x.ty(), g.ty(), g.ty()];
        let grads = frozen_batch_norm_grad(&[&dy, &x, &g, &m, &v], 1e-5, &outs).unwrap();
        let r = [1.0 / 3.000_01f32.sqrt(), 1.0 / 0.250_01f32.sqrt()];
        close(&grads[0].to_f32_vec(), &[2. * r[0], 2. * r[0], 0.5 * r[1], 0.5 * r[1]], 1e-6);
        close(&grads[1].to_f32_vec(), &[r[0], 3. * r[1]], 1e-6);
        close(&grads[2].to_f32_vec(), &[2., 2.], 0.0);
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
