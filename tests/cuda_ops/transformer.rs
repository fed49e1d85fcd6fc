//! Cases of the transformer family's ops (kernels/layout.cu, norm.cu,
//! embed.cu, dropout in elementwise.cu, clip_coef in optim.cu) and the
//! bounds of those that sum a row in another order than the CPU.
//!
//! Bounds, per output element, in the notation of the module comment
//! (u = 2^-24, γ(k) = k·u/(1 - k·u), `ulp32`): each is propagated through
//! the kernel's f32 operations in the CPU's order. The rule for one
//! rounded operation whose exact inputs differ between the two sides: the
//! exact results differ by what the operation makes of the input
//! differences, and each side then rounds by at most half an ulp, so
//! |Δ fl(r)| ≤ |Δ r| + ulp32(r). A row sum of n terms in two orders is
//! within 2·γ(n-1)·Σ|terms| (plus the terms' own differences).
//! Magnitudes are the exact f64 values of the CPU's formulas at the inputs.

use super::*;

pub fn cases(src: &mut Src, out: &mut Vec<Case>) {
    layouts(src, out);
    norms(src, out);
    softmaxes(src, out);
    dropouts(src, out);
    embeddings(src, out);
    clips(out);
}

/// reshape and transpose copy bits in every dtype.
fn layouts(src: &mut Src, out: &mut Vec<Case>) {
    let perms: [(&[u64], &[usize]); 7] = [
        (&[], &[]),
        (&[7], &[0]),
        (&[3, 347], &[1, 0]),
        (&[8, 32, 4, 16], &[0, 2, 1, 3]),
        (&[3, 1, 5, 2], &[3, 0, 2, 1]),
        (&[2, 3, 4], &[2, 0, 1]),
        (&[2, 3, 1, 2, 3, 2], &[5, 4, 3, 2, 1, 0]),
    ];
    for d in DType::ALL {
        for (shape, perm) in perms {
            let x = src.values(d, shape);
            out.push(case(Op::Transpose { perm: perm.to_vec() }, vec![x], Tol::Bits).note(format!("perm {perm:?}")));
        }
        for (from, to) in [(vec![], vec![1]), (vec![3, 347], vec![347, 3]), (vec![8, 32, 64], vec![8, 32, 4, 16])] {
            let x = src.values(d, &from);
            out.push(case(Op::Reshape { shape: to.iter().map(|&v| v as i64).collect() }, vec![x], Tol::Bits));
        }
    }
}

/// layer_norm in every (x, gamma) pair of float types and its gradient;
/// rows of one element, fewer and more than a warp, more than a block.
fn norms(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [&[u64]; 6] = [&[1, 1], &[7, 5], &[300, 64], &[3, 1000], &[45, 33], &[4, 5, 64]];
    for d in FLOATS {
        for g in FLOATS {
            for (i, &shape) in shapes.iter().enumerate() {
                let w = *shape.last().unwrap();
                let mut x = src.mixed(F32, shape).to_f32_vec();
                // A row offset far from 0 (cancellation in x - mean), one constant row.
                if x.len() > w as usize * 2 {
                    x.iter_mut().take(w as usize).for_each(|v| *v += 300.0);
                    x.iter_mut().skip(w as usize).take(w as usize).for_each(|v| *v = 1.5);
                }
                let x = tf(d, shape, &x);
                let (gamma, beta) = (src.normals(g, &[w], 1.0), src.normals(g, &[w], 0.5));
                let eps = [1e-5, 1e-2][i % 2];
                let op = Op::LayerNorm { eps };
                let (y, mean, rstd) = layer_norm_bounds(&x, &gamma, &beta, eps);
                let tol = Tol::PerOutput(vec![
                    Tol::Within { bound: y, round: low(d) },
                    Tol::Within { bound: mean, round: None },
                    Tol::Within { bound: rstd, round: None },
                ]);
                out.push(
                    case(op.clone(), vec![x.clone(), gamma.clone(), beta.clone()], tol).note(format!("eps {eps}")),
                );
                // The gradient at the CPU's statistics (its inputs, the same on both sides).
                let stats = CpuBackend::new()
                    .run(&op, &OpCtx { node: "n", step: 0, seed: 0 }, &[&x, &gamma, &beta], &{
                        let t = [x.ty(), gamma.ty(), beta.ty()];
                        mpc::ir::infer::infer(&op, &[&t[0], &t[1], &t[2]]).unwrap()
                    })
                    .unwrap();
                let dy = src.mixed(d, shape);
                let dx = layer_norm_grad_bound(&dy, &x, &gamma, &stats[1], &stats[2]);
                let tol = Tol::PerOutput(vec![Tol::Within { bound: dx, round: low(d) }, Tol::Exact, Tol::Exact]);
                let inputs = vec![dy, x, gamma, stats[1].clone(), stats[2].clone()];
                out.push(case(Op::LayerNormGrad, inputs, tol));
            }
        }
    }
}

/// softmax along the last, a middle and the first axis, causal, and its gradient.
fn softmaxes(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [(&[u64], i64, bool); 10] = [
        (&[1, 1], -1, false),
        (&[7, 5], -1, false),
        (&[300, 10], -1, false),
        (&[3, 1000], 1, false),
        (&[3, 5, 7], 1, false),
        (&[5, 3], 0, false),
        (&[45, 33], -1, false),
        (&[1, 1], -1, true),
        (&[7, 7], -1, true),
        (&[2, 4, 40, 40], -1, true),
    ];
    for d in FLOATS {
        for &(shape, axis, causal) in &shapes {
            let mut v = src.normals(F32, shape, 4.0).to_f32_vec();
            if v.len() > 8 {
                v[0] = 60.0; // a row dominated by one entry
                v[1] = -60.0;
            }
            let x = tf(d, shape, &v);
            let op = Op::Softmax { axis, causal };
            let bound = softmax_bound(&x, axis, causal);
            out.push(
                case(op.clone(), vec![x.clone()], Tol::Within { bound, round: low(d) })
                    .note(format!("axis {axis}{}", if causal { " causal" } else { "" })),
            );
            // y of every float type under dy of type d (the CPU takes any pair).
            for yd in FLOATS {
                let xy = tf(yd, shape, &v);
                let y = CpuBackend::new().run(&op, &OpCtx { node: "n", step: 0, seed: 0 }, &[&xy], &[xy.ty()]).unwrap();
                let dy = src.mixed(d, shape);
                let bound = softmax_grad_bound(&dy, &y[0], axis);
                let grad = Op::SoftmaxGrad { axis };
                out.push(
                    case(grad, vec![dy, y[0].clone()], Tol::Within { bound, round: low(d) }).note(format!("y {yd}")),
                );
            }
        }
    }
}

/// dropout's mask is the CPU's counter-based one, bit for bit; kept values
/// are scaled by the same f32, so everything is exact.
fn dropouts(src: &mut Src, out: &mut Vec<Case>) {
    let ps = [0.0, 0.1, 0.5, 0.9, 1.0 / 3.0];
    for d in FLOATS {
        for (i, shape) in src.sizes(d).into_iter().enumerate() {
            let (p, seed) = (ps[i % ps.len()], [0, 1, 0xdead_beef, u64::MAX][i % 4]);
            let x = src.values(d, &shape);
            let tol = Tol::PerOutput(vec![Tol::Exact, Tol::Bits]);
            out.push(case(Op::Dropout { p, seed }, vec![x], tol).note(format!("p {p} seed {seed}")));
            let (dy, mask) = (src.values(d, &shape), src.values(Bool, &shape));
            out.push(case(Op::DropoutGrad { p }, vec![dy, mask], Tol::Exact).note(format!("p {p}")));
        }
    }
}

/// embedding copies rows; embedding_grad adds in the CPU's token order
/// (exact). Ids repeat (the scatter-add's collisions), cover the table's
/// first and last rows, and come as i32 and i64.
fn embeddings(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [(u64, u64, &[u64]); 5] =
        [(1, 1, &[]), (65, 64, &[8, 32]), (5, 300, &[7]), (1000, 3, &[300]), (3, 33, &[2, 2, 5])];
    for d in FLOATS {
        for l in [I32, I64] {
            for &(rows, width, ids_shape) in &shapes {
                let table = src.values(d, &[rows, width]);
                let n = numel(ids_shape);
                let mut ids: Vec<i64> = (0..n).map(|_| src.below(rows) as i64).collect();
                if n >= 2 {
                    (ids[0], ids[n - 1]) = (0, rows as i64 - 1);
                }
                let ids = ti(l, ids_shape, &ids);
                out.push(case(Op::Embedding, vec![table, ids.clone()], Tol::Bits));
                let mut dy_shape = ids_shape.to_vec();
                dy_shape.push(width);
                let dy = src.mixed(d, &dy_shape);
                out.push(case(Op::EmbeddingGrad { num_embeddings: rows }, vec![dy, ids], Tol::Exact));
            }
        }
    }
}

/// clip_coef: min(1, max_norm / (norm + 1e-6)) in f64 on both sides; a NaN
/// norm gives 1 (f64::min), an infinite one 0.
fn clips(out: &mut Vec<Case>) {
    let norms = [0.0, -0.0, 0.5, 1.0, 1e-7, 3.7, 1e30, f32::INFINITY, f32::NAN, 0.999_999, 1.000_001];
    for (i, &n) in norms.iter().enumerate() {
        let max_norm = [1.0, 0.25, 5.0][i % 3];
        out.push(case(Op::ClipCoef { max_norm }, vec![Tensor::scalar_f32(n)], Tol::Exact).note(format!("norm {n}")));
    }
}

/// Row sums of `n` terms in two orders: 2·γ(n-1)·Σ|terms|.
fn reorder(n: usize, abs_sum: f64) -> f64 {
    2.0 * gamma(n.saturating_sub(1), U32) * abs_sum
}

/// layer_norm, row of w values a (f32-exact), gamma g, beta b:
/// - S = Σa:            |ΔS| ≤ 2γ(w-1)Σ|a|
/// - m = S/w:           |Δm| ≤ |ΔS|/w + ulp(m)                  (output `mean`)
/// - d = a - m:         |Δd| ≤ |Δm| + ulp(d)
/// - q = d²:            |Δq| ≤ (2|d| + |Δd|)|Δd| + ulp(q)
/// - Q = Σq:            |ΔQ| ≤ Σ|Δq| + 2γ(w-1)(Σq + Σ|Δq|)
/// - var = Q/w:         |Δvar| ≤ |ΔQ|/w + ulp(var)
/// - e = var + eps:     |Δe| ≤ |Δvar| + ulp(e)
/// - r = sqrtf(e):      |Δr| ≤ |Δe|/√e + ulp(r)                 (|√a-√b| = |a-b|/(√a+√b))
/// - s = 1/r:           |Δs| ≤ |Δr|/(r(r - |Δr|)) + ulp(s)      (output `rstd`)
/// - t = d·s:           |Δt| ≤ |Δd||s| + |d||Δs| + |Δd||Δs| + ulp(t)
/// - y = t·g + b:       |Δy| ≤ |g||Δt| + ulp(t·g) + ulp(y), then rounded to x's type.
fn layer_norm_bounds(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (a, g, b) = (f64s(x), f64s(gamma), f64s(beta));
    let w = g.len();
    let e32 = f64::from(eps as f32);
    let (mut ys, mut ms, mut ss) = (Vec::new(), Vec::new(), Vec::new());
    for row in a.chunks(w) {
        let m = row.iter().sum::<f64>() / w as f64;
        let dm = reorder(w, row.iter().map(|v| v.abs()).sum()) / w as f64 + ulp32(m);
        let d: Vec<f64> = row.iter().map(|v| v - m).collect();
        let dd: Vec<f64> = d.iter().map(|v| dm + ulp32(*v)).collect();
        let dq: Vec<f64> = d.iter().zip(&dd).map(|(v, e)| (2.0 * v.abs() + e) * e + ulp32(v * v)).collect();
        let q: f64 = d.iter().map(|v| v * v).sum();
        let sdq: f64 = dq.iter().sum();
        let var = q / w as f64;
        let dvar = (sdq + reorder(w, q + sdq)) / w as f64 + ulp32(var);
        let e = var + e32;
        let de = dvar + ulp32(e);
        let r = e.sqrt();
        let dr = de / r + ulp32(r);
        let s = 1.0 / r;
        let ds = if dr < r { dr / (r * (r - dr)) + ulp32(s) } else { f64::INFINITY };
        for k in 0..w {
            let t = d[k] * s;
            let dt = dd[k] * s + d[k].abs() * ds + dd[k] * ds + ulp32(t);
            let y = t * g[k] + b[k];
            ys.push(g[k].abs() * dt + ulp32(t * g[k]) + ulp32(y));
        }
        ms.push(dm);
        ss.push(ds);
    }
    (ys, ms, ss)
}

/// layer_norm_grad's dx, row of dy, x, gamma with the given mean μ and rstd
/// s (the same f32 inputs on both sides): x̂ = (x - μ)·s, ĝ = dy·γ and ĝ·x̂
/// are the same bits on both sides; only the row sums differ:
/// - m1 = Σĝ/w:         |Δm1| ≤ 2γ(w-1)Σ|ĝ|/w + ulp(m1)
/// - m2 = Σĝx̂/w:        |Δm2| ≤ 2γ(w-1)Σ|ĝx̂|/w + ulp(m2)
/// - z = (ĝ - m1) - x̂·m2: |Δz| ≤ |Δm1| + ulp(ĝ - m1) + |x̂||Δm2| + ulp(x̂m2) + ulp(z)
/// - dx = s·z:          |Δdx| ≤ |s||Δz| + ulp(dx), then rounded to x's type.
fn layer_norm_grad_bound(dy: &Tensor, x: &Tensor, gamma: &Tensor, mean: &Tensor, rstd: &Tensor) -> Vec<f64> {
    let (d, a, g, mu, rs) = (f64s(dy), f64s(x), f64s(gamma), f64s(mean), f64s(rstd));
    let w = g.len();
    let mut out = Vec::with_capacity(a.len());
    for (r, (drow, arow)) in d.chunks(w).zip(a.chunks(w)).enumerate() {
        let xhat: Vec<f64> = arow.iter().map(|v| (v - mu[r]) * rs[r]).collect();
        let gh: Vec<f64> = drow.iter().zip(&g).map(|(p, q)| p * q).collect();
        let m1 = gh.iter().sum::<f64>() / w as f64;
        let m2 = gh.iter().zip(&xhat).map(|(p, q)| p * q).sum::<f64>() / w as f64;
        let dm1 = reorder(w, gh.iter().map(|v| v.abs()).sum()) / w as f64 + ulp32(m1);
        let dm2 = reorder(w, gh.iter().zip(&xhat).map(|(p, q)| (p * q).abs()).sum()) / w as f64 + ulp32(m2);
        for k in 0..w {
            let z = gh[k] - m1 - xhat[k] * m2;
            let dz = dm1 + ulp32(gh[k] - m1) + xhat[k].abs() * dm2 + ulp32(xhat[k] * m2) + ulp32(z);
            out.push(rs[r].abs() * dz + ulp32(rs[r] * z));
        }
    }
    out
}

/// The flat indices of row `(o, i)` of `shape` along `axis`, and the rows.
fn rows_along(shape: &[u64], axis: i64) -> Vec<Vec<usize>> {
    let ax = mpc::ir::types::resolve_axis(axis, shape.len()).unwrap();
    let (outer, len, inner) = (numel(&shape[..ax]), shape[ax] as usize, numel(&shape[ax + 1..]));
    let mut rows = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            rows.push((0..len).map(|j| (o * len + j) * inner + i).collect());
        }
    }
    rows
}

/// softmax, row of n visible entries (causal: the first o mod L + 1), max
/// m (exact on both sides): e_j = expf(x_j - m) are the same bits, their
/// sum s is not: |Δs| ≤ 2γ(n-1)·s (the terms are positive); y = e/s:
/// |Δy| ≤ e·|Δs|/(s(s - |Δs|)) + ulp(y), then rounded to the type. Masked
/// entries are 0 on both sides.
fn softmax_bound(x: &Tensor, axis: i64, causal: bool) -> Vec<f64> {
    let v = f64s(x);
    let shape = x.shape().dims().to_vec();
    let mut out = vec![0.0; v.len()];
    let rows_per = if causal { shape[shape.len() - 2] as usize } else { 1 };
    for (r, idx) in rows_along(&shape, axis).into_iter().enumerate() {
        let visible = if causal { r % rows_per + 1 } else { idx.len() };
        let m = idx[..visible].iter().map(|&i| v[i]).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = idx[..visible].iter().map(|&i| (v[i] - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let ds = reorder(visible, s);
        for (j, &i) in idx[..visible].iter().enumerate() {
            out[i] = e[j] * ds / (s * (s - ds)) + ulp32(e[j] / s);
        }
    }
    out
}

/// softmax_grad, row of dy g and y: q = g·y are the same bits; S = Σq:
/// |ΔS| ≤ 2γ(n-1)Σ|q|; u = g - S: |Δu| ≤ |ΔS| + ulp(u); dx = y·u:
/// |Δdx| ≤ |y||Δu| + ulp(dx), then rounded to the type.
fn softmax_grad_bound(dy: &Tensor, y: &Tensor, axis: i64) -> Vec<f64> {
    let (g, yv) = (f64s(dy), f64s(y));
    let mut out = vec![0.0; g.len()];
    for idx in rows_along(y.shape().dims(), axis) {
        let s: f64 = idx.iter().map(|&i| g[i] * yv[i]).sum();
        let ds = reorder(idx.len(), idx.iter().map(|&i| (g[i] * yv[i]).abs()).sum());
        for &i in &idx {
            let u = g[i] - s;
            out[i] = yv[i].abs() * (ds + ulp32(u)) + ulp32(yv[i] * u);
        }
    }
    out
}
