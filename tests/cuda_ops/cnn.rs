//! Cases of the CNN family's ops (kernels/conv.cu, pool.cu, bnorm.cu,
//! lrn.cu, `slab_copy` in layout.cu; flatten is `identity`).
//!
//! Tolerances:
//! - conv2d, conv2d_grad_input, conv2d_grad_weight: [`Tol::Within`] with
//!   [`conv_bounds`]. Each output is a sum of n products of widened (exact
//!   f32) operands. The CPU forms it by im2col and an f32 GEMM
//!   (matrixmultiply: blocked, possibly fused multiply-adds), the kernel by
//!   a thread adding in tap order (grad_input: per tap an inner sum over the
//!   group's output channels; grad_weight: per image a sum over the output
//!   positions, then image after image). Every such evaluation is a
//!   summation order of the same n products, within γ(n)·Σ|products| of
//!   the exact sum (Higham §3.1; an FMA only removes roundings), so the two
//!   are within 2·γ(n)·Σ|products| of each other, u = 2^-24; a low-type
//!   output then rounds once on each side (`round`: one ulp of it). Taps in
//!   the padding count as products with 0 where the CPU forms them (conv2d
//!   and grad_weight read im2col's zeros; grad_input scatters only in-bounds
//!   taps).
//! - max_pool2d, avg_pool2d and their gradients, batch_norm,
//!   frozen_batch_norm and their gradients, lrn and lrn_grad: [`Tol::Exact`].
//!   The kernels do the CPU's f32 operations in its order (pooling: taps in
//!   window order, avg's sum from -0.0 like Rust's f32 `sum`, the
//!   gradients added in output order; batch norm: a thread per channel sums
//!   in the CPU's image-then-position order; lrn: window sums in channel
//!   order from -0.0, powf the host's libm as the CPU's), so the same bits
//!   (a NaN matching any NaN).
//! - flatten, concat, split: [`Tol::Bits`] (copies).

use super::*;
use mpc::ir::op::{Conv, Window};

pub fn cases(src: &mut Src, out: &mut Vec<Case>) {
    convs(src, out);
    pools(src, out);
    batch_norms(src, out);
    lrns(src, out);
    copies(src, out);
}

/// (x shape, weight shape, convolution): one element; odd sizes with a
/// non-square kernel and different paddings per axis; groups with stride;
/// stride larger than the kernel; depthwise; more outputs than a block
/// (and, for grad_weight, long sums); then dilated: per axis with odd sizes,
/// with groups, stride and padding together (leaving inputs no tap reads),
/// depthwise, and a dilation wider than the input reaching only padding
/// on some taps.
type ConvCase = ([u64; 4], [u64; 4], Conv);

const fn cv(stride: [u64; 2], padding: [u64; 2], dilation: [u64; 2], groups: u64) -> Conv {
    Conv { stride, padding, dilation, groups }
}

const CONVS: [ConvCase; 10] = [
    ([1, 1, 1, 1], [1, 1, 1, 1], cv([1, 1], [0, 0], [1, 1], 1)),
    ([2, 3, 7, 5], [4, 3, 3, 2], cv([1, 1], [1, 0], [1, 1], 1)),
    ([2, 4, 9, 8], [6, 2, 3, 3], cv([2, 3], [1, 2], [1, 1], 2)),
    ([1, 2, 7, 7], [3, 2, 2, 2], cv([3, 3], [1, 1], [1, 1], 1)),
    ([2, 6, 5, 5], [6, 1, 3, 3], cv([1, 1], [1, 1], [1, 1], 6)),
    ([4, 8, 12, 12], [16, 8, 3, 3], cv([1, 1], [1, 1], [1, 1], 1)),
    ([2, 3, 9, 7], [4, 3, 3, 2], cv([1, 1], [0, 1], [2, 3], 1)),
    ([2, 4, 11, 9], [6, 2, 3, 3], cv([2, 3], [2, 1], [3, 2], 2)),
    ([2, 6, 7, 7], [6, 1, 3, 3], cv([1, 1], [2, 2], [2, 2], 6)),
    ([1, 2, 3, 4], [2, 2, 2, 2], cv([1, 2], [2, 3], [4, 5], 1)),
];

fn convs(src: &mut Src, out: &mut Vec<Case>) {
    for d in FLOATS {
        for (xs, ws, conv) in CONVS {
            let x = src.mixed(d, &xs);
            let w = src.normals(d, &ws, 0.5);
            let op = Op::Conv2d(Box::new(conv));
            let yt = mpc::ir::infer::infer(&op, &[&x.ty(), &w.ty()]).unwrap().remove(0);
            let dy = src.mixed(d, yt.shape.dims());
            let b = conv_bounds(&x, &w, &dy, &conv);
            let Conv { stride, padding, dilation, groups } = conv;
            let note = format!("stride {stride:?} padding {padding:?} dilation {dilation:?} groups {groups}");
            out.push(case(op, vec![x.clone(), w.clone()], Tol::Within { bound: b.y, round: low(d) }).note(&note));
            let gi = Op::Conv2dGradInput { conv: Box::new(conv), shape: xs.to_vec() };
            out.push(case(gi, vec![dy.clone(), w], Tol::Within { bound: b.dx, round: low(d) }).note(&note));
            let gw = Op::Conv2dGradWeight { conv: Box::new(conv), kernel: [ws[2], ws[3]] };
            out.push(case(gw, vec![dy, x], Tol::Within { bound: b.dw, round: low(d) }).note(&note));
        }
    }
}

/// The bounds of a convolution's three outputs (module comment).
struct ConvBounds {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

/// 2·γ(n)·Σ|products| per output of conv2d(x, w), conv2d_grad_input(dy, w)
/// and conv2d_grad_weight(dy, x), n the products the CPU forms for it.
fn conv_bounds(x: &Tensor, w: &Tensor, dy: &Tensor, cv: &Conv) -> ConvBounds {
    let Conv { stride, padding: pad, dilation: dil, groups } = *cv;
    let [n, c, h, wd] = <[u64; 4]>::try_from(x.shape().dims()).unwrap().map(|v| v as usize);
    let [o, cg, kh, kw] = <[u64; 4]>::try_from(w.shape().dims()).unwrap().map(|v| v as usize);
    let [_, _, oh, ow] = <[u64; 4]>::try_from(dy.shape().dims()).unwrap().map(|v| v as usize);
    let og = o / groups as usize;
    let (xv, wv, dv) = (f64s(x), f64s(w), f64s(dy));
    let (mut y, mut ny) = (vec![0.0; n * o * oh * ow], vec![0usize; n * o * oh * ow]);
    let (mut dx, mut ndx) = (vec![0.0; n * c * h * wd], vec![0usize; n * c * h * wd]);
    let (mut dw, mut ndw) = (vec![0.0; o * cg * kh * kw], vec![0usize; o * cg * kh * kw]);
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for ci in 0..cg {
                let ch = g * cg + ci;
                for i in 0..kh {
                    for j in 0..kw {
                        let wi = ((oc * cg + ci) * kh + i) * kw + j;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let yi = ((b * o + oc) * oh + oy) * ow + ox;
                                let at = |o: usize, t: usize, a: usize| {
                                    (o * stride[a] as usize + t * dil[a] as usize).checked_sub(pad[a] as usize)
                                };
                                let iy = at(oy, i, 0).filter(|&v| v < h);
                                let ix = at(ox, j, 1).filter(|&v| v < wd);
                                ny[yi] += 1;
                                ndw[wi] += 1;
                                if let (Some(iy), Some(ix)) = (iy, ix) {
                                    let xi = ((b * c + ch) * h + iy) * wd + ix;
                                    y[yi] += (wv[wi] * xv[xi]).abs();
                                    dw[wi] += (dv[yi] * xv[xi]).abs();
                                    dx[xi] += (wv[wi] * dv[yi]).abs();
                                    ndx[xi] += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let bound = |s: Vec<f64>, k: Vec<usize>| s.iter().zip(&k).map(|(s, &k)| 2.0 * gamma(k, U32) * s).collect();
    ConvBounds { y: bound(y, ny), dx: bound(dx, ndx), dw: bound(dw, ndw) }
}

/// (x shape, window): one element; odd sizes, a non-square window with
/// different strides and paddings per axis and extra padding after
/// (ceil mode); stride larger than the kernel; overlapping windows over more
/// than a block of outputs; cnn_ops.json's 3×3/2 with padding_end 1.
fn pool_shapes() -> Vec<([u64; 4], Window)> {
    vec![
        ([1, 1, 1, 1], Window::new([1, 1], [1, 1], [0, 0])),
        ([2, 3, 7, 9], Window { padding_end: [1, 1], ..Window::new([3, 2], [2, 3], [1, 0]) }),
        ([1, 2, 8, 8], Window::new([2, 2], [3, 3], [0, 0])),
        ([4, 8, 16, 16], Window::new([3, 3], [2, 2], [1, 1])),
        ([2, 8, 8, 8], Window { padding_end: [1, 1], ..Window::new([3, 3], [2, 2], [0, 0]) }),
        ([2, 3, 5, 6], Window { padding_end: [0, 1], ..Window::new([2, 3], [1, 2], [1, 2]) }),
    ]
}

fn pools(src: &mut Src, out: &mut Vec<Case>) {
    for d in FLOATS {
        for (k, (xs, win)) in pool_shapes().into_iter().enumerate() {
            // Edge values (NaN, ±inf, ±0, ties of the low types) from the
            // pool, or small integers (many equal maxima: the first wins).
            let x = if k % 2 == 0 {
                src.values(d, &xs)
            } else {
                let v: Vec<f32> = (0..numel(&xs)).map(|_| src.below(4) as f32 - 2.0).collect();
                tf(d, &xs, &v)
            };
            let note = format!(
                "kernel {:?} stride {:?} padding {:?}/{:?}",
                win.kernel, win.stride, win.padding, win.padding_end
            );
            let op = Op::MaxPool2d(Box::new(win));
            let yt = mpc::ir::infer::infer(&op, &[&x.ty()]).unwrap().remove(0);
            let dy = src.mixed(d, yt.shape.dims());
            out.push(case(op, vec![x.clone()], Tol::Exact).note(&note));
            out.push(case(Op::MaxPool2dGrad(Box::new(win)), vec![dy.clone(), x.clone()], Tol::Exact).note(&note));
            for cip in [true, false] {
                let note = format!("{note} count_include_pad {cip}");
                let op = Op::AvgPool2d { window: Box::new(win), count_include_pad: cip };
                out.push(case(op, vec![x.clone()], Tol::Exact).note(&note));
                let op = Op::AvgPool2dGrad { window: Box::new(win), count_include_pad: cip, shape: xs.to_vec() };
                out.push(case(op, vec![dy.clone()], Tol::Exact).note(&note));
            }
        }
    }
}

/// batch_norm, frozen_batch_norm and their gradients on x of every float
/// type with per-channel vectors in f32 and in x's type: a single element,
/// rank 2 and 3, odd sizes, channels offset far from 0 (cancellation in
/// x - mean) or constant (var 0), more elements than a block.
fn batch_norms(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [&[u64]; 5] = [&[1, 1, 1, 1], &[3, 5], &[2, 3, 4], &[2, 3, 5, 7], &[4, 16, 8, 8]];
    let ctx = OpCtx { node: "n", step: 0, seed: 0 };
    for d in FLOATS {
        for pd in [F32, d] {
            for (k, &shape) in shapes.iter().enumerate() {
                let c = shape[1];
                let s: u64 = shape[2..].iter().product();
                let mut v = src.mixed(F32, shape).to_f32_vec();
                for (i, e) in v.iter_mut().enumerate() {
                    let ch = (i as u64 / s) % c;
                    if ch == 0 && c > 2 {
                        *e += 300.0;
                    } else if ch == 1 && c > 2 {
                        *e = 1.5;
                    }
                }
                let x = tf(d, shape, &v);
                let (gamma, beta) = (src.normals(pd, &[c], 1.0), src.normals(pd, &[c], 0.5));
                let eps = [1e-5, 1e-3][k % 2];
                let op = Op::BatchNorm { eps, momentum: 0.1 };
                out.push(
                    case(op.clone(), vec![x.clone(), gamma.clone(), beta.clone()], Tol::Exact)
                        .note(format!("eps {eps}")),
                );
                let t = [x.ty(), gamma.ty(), beta.ty()];
                let outs = mpc::ir::infer::infer(&op, &[&t[0], &t[1], &t[2]]).unwrap();
                let stats = CpuBackend::new().run(&op, &ctx, &[&x, &gamma, &beta], &outs).unwrap();
                let dy = src.mixed(d, shape);
                let inputs = vec![dy.clone(), x.clone(), gamma.clone(), stats[1].clone(), stats[2].clone()];
                out.push(case(Op::BatchNormGrad { eps }, inputs, Tol::Exact).note(format!("eps {eps}")));
                // Given statistics in gamma's type, var positive.
                let mean = src.normals(pd, &[c], 1.0);
                let var: Vec<f32> = (0..c).map(|_| (src.rng.normal().abs() * 2.0) as f32 + 0.01).collect();
                let var = tf(pd, &[c], &var);
                let inputs = vec![x.clone(), gamma.clone(), beta, mean.clone(), var.clone()];
                out.push(case(Op::FrozenBatchNorm { eps }, inputs, Tol::Exact).note(format!("eps {eps}")));
                let inputs = vec![dy, x, gamma, mean, var];
                out.push(case(Op::FrozenBatchNormGrad { eps }, inputs, Tol::Exact).note(format!("eps {eps}")));
            }
        }
    }
}

/// lrn and lrn_grad: window sizes 1, 2 (asymmetric), 3, 5 (wider than some
/// channel counts), rank 3 and 4, more elements than a block.
fn lrns(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [&[u64]; 4] = [&[1, 1, 1], &[2, 7, 3, 3], &[3, 4, 5], &[2, 16, 8, 8]];
    let hypers = [(1, 1.0, 0.75, 2.0), (2, 0.2, 0.5, 1.0), (3, 1e-3, 0.75, 2.0), (5, 1e-4, 0.75, 1.0)];
    for d in FLOATS {
        for (k, &shape) in shapes.iter().enumerate() {
            for &(size, alpha, beta, bias) in &hypers[k % 2..] {
                let x = src.mixed(d, shape);
                let dy = src.mixed(d, shape);
                let note = format!("size {size} alpha {alpha} beta {beta} bias {bias}");
                out.push(case(Op::Lrn { size, alpha, beta, bias }, vec![x.clone()], Tol::Exact).note(&note));
                out.push(case(Op::LrnGrad { size, alpha, beta, bias }, vec![dy, x], Tol::Exact).note(&note));
            }
        }
    }
}

/// flatten, concat, split copy bits in every dtype.
fn copies(src: &mut Src, out: &mut Vec<Case>) {
    for d in DType::ALL {
        for (shape, axis) in [(vec![2, 3, 4, 5], 1), (vec![7], 0), (vec![3, 347], -1), (vec![2, 3, 4], 0)] {
            let x = src.values(d, &shape);
            out.push(case(Op::Flatten { axis }, vec![x], Tol::Bits).note(format!("axis {axis}")));
        }
        // concat of three along a middle axis, of two along the first and the last.
        for (shapes, axis) in [
            (vec![vec![2, 3, 4], vec![2, 1, 4], vec![2, 5, 4]], 1i64),
            (vec![vec![1, 300], vec![2, 300]], 0),
            (vec![vec![3, 5], vec![3, 1]], -1),
        ] {
            let xs: Vec<Tensor> = shapes.iter().map(|s| src.values(d, s)).collect();
            out.push(case(Op::Concat { axis }, xs, Tol::Bits).note(format!("axis {axis}")));
        }
        for (shape, axis, sizes) in
            [(vec![2, 9, 4], 1i64, vec![3, 5, 1]), (vec![300, 2], 0, vec![1, 299]), (vec![3, 6], -1, vec![2, 4])]
        {
            let x = src.values(d, &shape);
            out.push(case(Op::Split { axis, sizes: sizes.clone() }, vec![x], Tol::Bits).note(format!("axis {axis}")));
        }
    }
}
