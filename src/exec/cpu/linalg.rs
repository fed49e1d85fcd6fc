//! matmul, conv2d and its gradients (im2col + GEMM), max/avg pooling and
//! their gradients. Products accumulate in f32 over the contracted index
//! in increasing order.

use crate::ir::op::{Conv, Window};
use crate::ir::types::TensorType;

use super::{broadcast_map, dims, from_f32, KResult};
use crate::tensor::Tensor;

/// `c[m×n] += a[m×k] · b[k×n]`, all row-major f32.
pub fn gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_strided(m, n, k, (a, k, 1), (b, n, 1), c);
}

/// `c[m×n] += A · B` with A and B given as (data, row stride, column
/// stride), so a transposed operand is read in place. matrixmultiply's
/// kernel accumulates in f32, single-threaded, so results are
/// reproducible; every product is formed (0 · inf stays NaN).
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    (a, rsa, csa): (&[f32], usize, usize),
    (b, rsb, csb): (&[f32], usize, usize),
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + cols.saturating_sub(1) * cs;
    // The kernel reads through raw pointers: every index it can form must be in bounds.
    assert!(k == 0 || (last(m, k, rsa, csa) < a.len() && last(k, n, rsb, csb) < b.len()), "gemm operand too short");
    assert!(c.len() >= m * n, "gemm output too short");
    if k == 0 {
        return;
    }
    // SAFETY: the asserts above bound every element the kernel reads or writes.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            1.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// The row-major transpose of an `r×c` matrix.
fn transposed(x: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = x[i * c + j];
        }
    }
    t
}

/// NumPy `matmul` with batch broadcasting; a flagged operand has its last
/// two axes swapped first.
pub fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, out: &TensorType) -> KResult<Tensor> {
    let (ad, bd, od) = (dims(a.shape()), dims(b.shape()), dims(&out.shape));
    let (ar, br, or) = (ad.len(), bd.len(), od.len());
    let (m, n) = (od[or - 2], od[or - 1]);
    let k = if ta { ad[ar - 2] } else { ad[ar - 1] };
    let amap = broadcast_map(&ad[..ar - 2], &od[..or - 2]);
    let bmap = broadcast_map(&bd[..br - 2], &od[..or - 2]);
    let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
    let mut c = vec![0f32; amap.len() * m * n];
    for (bi, (&ia, &ib)) in amap.iter().zip(&bmap).enumerate() {
        let asl = &x[ia * m * k..(ia + 1) * m * k];
        let bsl = &y[ib * k * n..(ib + 1) * k * n];
        // A transposed operand is stored k×m (or n×k) row-major: swap its strides.
        let ap = if ta { (asl, 1, m) } else { (asl, k, 1) };
        let bp = if tb { (bsl, 1, k) } else { (bsl, n, 1) };
        gemm_strided(m, n, k, ap, bp, &mut c[bi * m * n..(bi + 1) * m * n]);
    }
    from_f32(out, &c)
}

/// Geometry of a convolution: input `[N, C, H, W]`, kernel `kh×kw`, output `OH×OW`.
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    /// The step between kernel taps (1 for pooling).
    dil: [usize; 2],
}

impl Geom {
    fn new(x: &[usize], kernel: [usize; 2], y: &[usize], stride: [u64; 2], pad: [u64; 2], dil: [u64; 2]) -> Geom {
        Geom {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            kh: kernel[0],
            kw: kernel[1],
            oh: y[2],
            ow: y[3],
            stride: [stride[0] as usize, stride[1] as usize],
            pad: [pad[0] as usize, pad[1] as usize],
            dil: [dil[0] as usize, dil[1] as usize],
        }
    }

    /// The input position read by output `(o, kernel offset)` along axis `ax`, if inside.
    fn src(&self, ax: usize, o: usize, i: usize) -> Option<usize> {
        let p = (o * self.stride[ax] + i * self.dil[ax]).checked_sub(self.pad[ax])?;
        (p < if ax == 0 { self.h } else { self.w }).then_some(p)
    }

    /// Calls `f(column row, column, input index)` for every in-bounds tap of
    /// image `n` (input index relative to the image).
    fn taps(&self, mut f: impl FnMut(usize, usize, usize)) {
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = (c * self.kh + i) * self.kw + j;
                    for oy in 0..self.oh {
                        let Some(iy) = self.src(0, oy, i) else { continue };
                        for ox in 0..self.ow {
                            if let Some(ix) = self.src(1, ox, j) {
                                f(row, oy * self.ow + ox, (c * self.h + iy) * self.w + ix);
                            }
                        }
                    }
                }
            }
        }
    }

    /// im2col of image `img` (`C·H·W` values) into `[C·kh·kw, OH·OW]`.
    fn im2col(&self, img: &[f32]) -> Vec<f32> {
        let p = self.oh * self.ow;
        let mut cols = vec![0f32; self.c * self.kh * self.kw * p];
        self.taps(|row, col, src| cols[row * p + col] = img[src]);
        cols
    }
}

/// The geometry of one group of a convolution with input `x`, weight `w`
/// (`[O, C/groups, kh, kw]`) and output `y`, and `(O/groups, C/groups·kh·kw, OH·OW)`.
fn group_geom(x: &[usize], w: &[usize], y: &[usize], cv: &Conv) -> (Geom, usize, usize, usize) {
    let g = Geom::new(&[x[0], w[1], x[2], x[3]], [w[2], w[3]], y, cv.stride, cv.padding, cv.dilation);
    let (og, kk, p) = (w[0] / cv.groups as usize, g.c * g.kh * g.kw, g.oh * g.ow);
    (g, og, kk, p)
}

/// `conv2d(x [N,C,H,W], w [O,C/groups,kh,kw])` with stride, zero padding,
/// dilation and groups: per image and group `g`, `W_g · im2col(x_g)`.
pub fn conv2d(x: &Tensor, w: &Tensor, cv: &Conv, out: &TensorType) -> KResult<Tensor> {
    let (xd, wd, yd) = (dims(x.shape()), dims(w.shape()), dims(&out.shape));
    let (g, og, kk, p) = group_geom(&xd, &wd, &yd, cv);
    let (o, groups) = (wd[0], cv.groups as usize);
    let (xv, wv) = (x.to_f32_vec(), w.to_f32_vec());
    let mut y = vec![0f32; g.n * o * p];
    // One group's slice of an image: its C/groups channels are consecutive.
    let img = g.c * g.h * g.w;
    for n in 0..g.n {
        for gi in 0..groups {
            let xo = (n * groups + gi) * img;
            let cols = g.im2col(&xv[xo..xo + img]);
            let yo = (n * o + gi * og) * p;
            gemm(og, p, kk, &wv[gi * og * kk..(gi + 1) * og * kk], &cols, &mut y[yo..yo + og * p]);
        }
    }
    from_f32(out, &y)
}

/// `conv2d_grad_input(dy, w)`: `W_gᵀ·dy_g` per image and group, scattered back (col2im).
pub fn conv2d_grad_input(dy: &Tensor, w: &Tensor, cv: &Conv, out: &TensorType) -> KResult<Tensor> {
    let (xd, wd, yd) = (dims(&out.shape), dims(w.shape()), dims(dy.shape()));
    let (g, og, kk, p) = group_geom(&xd, &wd, &yd, cv);
    let (o, groups) = (wd[0], cv.groups as usize);
    let wv = w.to_f32_vec();
    let wt: Vec<Vec<f32>> = (0..groups).map(|gi| transposed(&wv[gi * og * kk..(gi + 1) * og * kk], og, kk)).collect();
    let d = dy.to_f32_vec();
    let img = g.c * g.h * g.w;
    let mut dx = vec![0f32; g.n * groups * img];
    for n in 0..g.n {
        for (gi, wt) in wt.iter().enumerate() {
            let mut dcols = vec![0f32; kk * p];
            let yo = (n * o + gi * og) * p;
            gemm(kk, p, og, wt, &d[yo..yo + og * p], &mut dcols);
            let xo = (n * groups + gi) * img;
            let dst = &mut dx[xo..xo + img];
            g.taps(|row, col, src| dst[src] += dcols[row * p + col]);
        }
    }
    from_f32(out, &dx)
}

/// `conv2d_grad_weight(dy, x)`: `Σₙ dyₙ,g · im2col(xₙ,g)ᵀ` per group.
pub fn conv2d_grad_weight(dy: &Tensor, x: &Tensor, cv: &Conv, out: &TensorType) -> KResult<Tensor> {
    let (xd, wd, yd) = (dims(x.shape()), dims(&out.shape), dims(dy.shape()));
    let (g, og, kk, p) = group_geom(&xd, &wd, &yd, cv);
    let (o, groups) = (wd[0], cv.groups as usize);
    let (xv, d) = (x.to_f32_vec(), dy.to_f32_vec());
    let img = g.c * g.h * g.w;
    let mut dw = vec![0f32; o * kk];
    for n in 0..g.n {
        for gi in 0..groups {
            let xo = (n * groups + gi) * img;
            let cols_t = transposed(&g.im2col(&xv[xo..xo + img]), kk, p);
            let yo = (n * o + gi * og) * p;
            gemm(og, kk, p, &d[yo..yo + og * p], &cols_t, &mut dw[gi * og * kk..(gi + 1) * og * kk]);
        }
    }
    from_f32(out, &dw)
}

/// Calls `f(plane, output index, in-bounds input indices)` for every pooling window.
fn pool_windows(xd: &[usize], win: &Window, yd: &[usize], mut f: impl FnMut(usize, usize, &[usize])) {
    let g = Geom::new(xd, [win.kernel[0] as usize, win.kernel[1] as usize], yd, win.stride, win.padding, [1, 1]);
    let mut taps = Vec::with_capacity(g.kh * g.kw);
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                taps.clear();
                for i in 0..g.kh {
                    let Some(iy) = g.src(0, oy, i) else { continue };
                    for j in 0..g.kw {
                        if let Some(ix) = g.src(1, ox, j) {
                            taps.push(plane * g.h * g.w + iy * g.w + ix);
                        }
                    }
                }
                f(plane, (plane * g.oh + oy) * g.ow + ox, &taps);
            }
        }
    }
}

/// The first maximum of a window (padding never wins; NaN propagates).
fn argmax(x: &[f32], taps: &[usize]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for &t in taps {
        match best {
            None => best = Some(t),
            Some(b) if x[b].is_nan() => {}
            Some(b) if x[t] > x[b] || x[t].is_nan() => best = Some(t),
            _ => {}
        }
    }
    best
}

/// `max_pool2d`: the maximum over the in-bounds part of each window
/// (padding acts as -inf).
pub fn max_pool(x: &Tensor, win: &Window, out: &TensorType) -> KResult<Tensor> {
    let xv = x.to_f32_vec();
    let mut y = vec![f32::NEG_INFINITY; out.shape.numel().unwrap_or(0) as usize];
    pool_windows(&dims(x.shape()), win, &dims(&out.shape), |_, o, taps| {
        if let Some(a) = argmax(&xv, taps) {
            y[o] = xv[a];
        }
    });
    from_f32(out, &y)
}

/// `max_pool2d_grad(dy, x)`: each window's gradient goes to its first maximum.
pub fn max_pool_grad(dy: &Tensor, x: &Tensor, win: &Window, out: &TensorType) -> KResult<Tensor> {
    let (xv, d) = (x.to_f32_vec(), dy.to_f32_vec());
    let mut dx = vec![0f32; xv.len()];
    pool_windows(&dims(x.shape()), win, &dims(dy.shape()), |_, o, taps| {
        if let Some(a) = argmax(&xv, taps) {
            dx[a] += d[o];
        }
    });
    from_f32(out, &dx)
}

/// The divisor of an average-pooling window with `taps` in-bounds taps:
/// `kh·kw` with `count_include_pad` (padding counts as zeros), else the
/// in-bounds count (never 0: a window always overlaps the input).
fn pool_divisor(win: &Window, count_include_pad: bool, taps: usize) -> f32 {
    if count_include_pad {
        (win.kernel[0] * win.kernel[1]) as f32
    } else {
        taps as f32
    }
}

/// `avg_pool2d`: the sum of the in-bounds values over [`pool_divisor`].
pub fn avg_pool(x: &Tensor, win: &Window, count_include_pad: bool, out: &TensorType) -> KResult<Tensor> {
    let xv = x.to_f32_vec();
    let mut y = vec![0f32; out.shape.numel().unwrap_or(0) as usize];
    pool_windows(&dims(x.shape()), win, &dims(&out.shape), |_, o, taps| {
        y[o] = taps.iter().map(|&t| xv[t]).sum::<f32>() / pool_divisor(win, count_include_pad, taps.len());
    });
    from_f32(out, &y)
}

/// `avg_pool2d_grad(dy)`: every in-bounds tap of a window gets `dy / divisor`.
pub fn avg_pool_grad(dy: &Tensor, win: &Window, count_include_pad: bool, out: &TensorType) -> KResult<Tensor> {
    let d = dy.to_f32_vec();
    let mut dx = vec![0f32; out.shape.numel().unwrap_or(0) as usize];
    pool_windows(&dims(&out.shape), win, &dims(dy.shape()), |_, o, taps| {
        let div = pool_divisor(win, count_include_pad, taps.len());
        for &t in taps {
            dx[t] += d[o] / div;
        }
    });
    from_f32(out, &dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::types::DType;

    #[test]
    fn gemm_small() {
        let mut c = vec![0.0; 4];
        gemm(2, 2, 3, &[1., 2., 3., 4., 5., 6.], &[1., 0., 0., 1., 1., 1.], &mut c);
        assert_eq!(c, vec![4., 5., 10., 11.]);
    }

    #[test]
    fn conv_identity_kernel() {
        let x = Tensor::from_f32(DType::F32, vec![1, 1, 2, 2], &[1., 2., 3., 4.]).unwrap();
        let w = Tensor::from_f32(DType::F32, vec![1, 1, 1, 1], &[2.]).unwrap();
        let cv = Conv::new([1, 1], [0, 0], 1);
        let y = conv2d(&x, &w, &cv, &TensorType::new(DType::F32, vec![1, 1, 2, 2])).unwrap();
        assert_eq!(y.to_f32_vec(), vec![2., 4., 6., 8.]);
    }

    #[test]
    fn grouped_conv_keeps_the_groups_apart() {
        // Two channels, two groups, a 1x1 kernel per group: each output
        // channel scales only its own input channel.
        let x = Tensor::from_f32(DType::F32, vec![1, 2, 1, 2], &[1., 2., 3., 4.]).unwrap();
        let w = Tensor::from_f32(DType::F32, vec![2, 1, 1, 1], &[10., 100.]).unwrap();
        let cv = Conv::new([1, 1], [0, 0], 2);
        let y = conv2d(&x, &w, &cv, &x.ty()).unwrap();
        assert_eq!(y.to_f32_vec(), vec![10., 20., 300., 400.]);
        let dx = conv2d_grad_input(&x, &w, &cv, &x.ty()).unwrap();
        assert_eq!(dx.to_f32_vec(), vec![10., 20., 300., 400.]);
        let dw = conv2d_grad_weight(&x, &x, &cv, &w.ty()).unwrap();
        assert_eq!(dw.to_f32_vec(), vec![1. + 4., 9. + 16.]);
    }

    #[test]
    fn dilated_conv_reads_every_other_input() {
        // x = 1..16 as 4x4, a 2x2 kernel dilated by 2 spans 3x3: y[oy, ox] =
        // 1·x[oy, ox] + 2·x[oy, ox+2] + 3·x[oy+2, ox] + 4·x[oy+2, ox+2].
        let x = ramp(4, 4);
        let w = Tensor::from_f32(DType::F32, vec![1, 1, 2, 2], &[1., 2., 3., 4.]).unwrap();
        let cv = Conv { dilation: [2, 2], ..Conv::new([1, 1], [0, 0], 1) };
        let yt = TensorType::new(DType::F32, vec![1, 1, 2, 2]);
        let y = conv2d(&x, &w, &cv, &yt).unwrap();
        assert_eq!(y.to_f32_vec(), vec![78., 88., 118., 128.]);
        // With dy = 1 each input is read by exactly one (output, tap) pair:
        // dx[r, c] = w[r/2, c/2]; dw[i, j] sums the 2x2 block at (2i, 2j).
        let dy = Tensor::from_f32(DType::F32, vec![1, 1, 2, 2], &[1., 1., 1., 1.]).unwrap();
        let dx = conv2d_grad_input(&dy, &w, &cv, &x.ty()).unwrap();
        assert_eq!(dx.to_f32_vec(), vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
        let dw = conv2d_grad_weight(&dy, &x, &cv, &w.ty()).unwrap();
        assert_eq!(dw.to_f32_vec(), vec![14., 22., 46., 54.]);
    }

    #[test]
    fn dilated_strided_padded_conv() {
        // x = 1..15 as 3x5, padding [1, 2], stride [2, 3], dilation [2, 3], a
        // 2x2 kernel [[1, 10], [100, 1000]]: the taps of output (oy, ox) are
        // rows 2·oy − 1 + {0, 2}, columns 3·ox − 2 + {0, 3}; output 2x2.
        let x = ramp(3, 5);
        let w = Tensor::from_f32(DType::F32, vec![1, 1, 2, 2], &[1., 10., 100., 1000.]).unwrap();
        let cv = Conv { dilation: [2, 3], ..Conv::new([2, 3], [1, 2], 1) };
        let y = conv2d(&x, &w, &cv, &TensorType::new(DType::F32, vec![1, 1, 2, 2])).unwrap();
        // (0,0): rows -1, 1; cols -2, 1 → only x[1,1] = 7 under w[1,1].
        // (0,1): rows -1, 1; cols 1, 4 → x[1,1] = 7 (w[1,0]), x[1,4] = 10 (w[1,1]).
        // (1,0): rows 1, 3; cols -2, 1 → x[1,1] = 7 (w[0,1]).
        // (1,1): rows 1, 3; cols 1, 4 → x[1,1] = 7 (w[0,0]), x[1,4] = 10 (w[0,1]).
        assert_eq!(y.to_f32_vec(), vec![7000., 700. + 10000., 70., 7. + 100.]);
    }

    #[test]
    fn max_pool_routes_to_the_first_maximum() {
        let x = Tensor::from_f32(DType::F32, vec![1, 1, 2, 2], &[5., 5., 1., 2.]).unwrap();
        let w = Window::new([2, 2], [2, 2], [0, 0]);
        let dy = Tensor::from_f32(DType::F32, vec![1, 1, 1, 1], &[3.]).unwrap();
        let dx = max_pool_grad(&dy, &x, &w, &x.ty()).unwrap();
        assert_eq!(dx.to_f32_vec(), vec![3., 0., 0., 0.]);
    }

    /// `1, 2, …, h·w` as one `[1, 1, h, w]` image.
    fn ramp(h: u64, w: u64) -> Tensor {
        let v: Vec<f32> = (1..=h * w).map(|v| v as f32).collect();
        Tensor::from_f32(DType::F32, vec![1, 1, h, w], &v).unwrap()
    }

    fn three_by_three() -> Tensor {
        ramp(3, 3)
    }

    #[test]
    fn avg_pool_count_include_pad_false_divides_by_the_taps_in_bounds() {
        // [[1 2 3] [4 5 6] [7 8 9]], 2x2 windows, stride 2, one row/column of
        // padding on every side: the corner window holds only x[0][0].
        let x = three_by_three();
        let w = Window::new([2, 2], [2, 2], [1, 1]);
        let out = TensorType::new(DType::F32, vec![1, 1, 2, 2]);
        let y = avg_pool(&x, &w, false, &out).unwrap();
        assert_eq!(y.to_f32_vec(), vec![1.0, (2. + 3.) / 2., (4. + 7.) / 2., (5. + 6. + 8. + 9.) / 4.]);
        let y = avg_pool(&x, &w, true, &out).unwrap();
        assert_eq!(y.to_f32_vec(), vec![0.25, (2. + 3.) / 4., (4. + 7.) / 4., (5. + 6. + 8. + 9.) / 4.]);
        // The gradient spreads each dy over the same divisor.
        let dy = Tensor::from_f32(DType::F32, vec![1, 1, 2, 2], &[1., 1., 1., 1.]).unwrap();
        let dx = avg_pool_grad(&dy, &w, false, &x.ty()).unwrap();
        assert_eq!(dx.to_f32_vec(), vec![1., 0.5, 0.5, 0.5, 0.25, 0.25, 0.5, 0.25, 0.25]);
    }

    #[test]
    fn asymmetric_padding_pads_only_the_end() {
        // No padding before, one row and column after: (3 + 0 + 1 - 2) / 2 + 1 = 2.
        let x = three_by_three();
        let w = Window { padding_end: [1, 1], ..Window::new([2, 2], [2, 2], [0, 0]) };
        assert_eq!(w.output_hw(3, 3), Some([2, 2]));
        let out = TensorType::new(DType::F32, vec![1, 1, 2, 2]);
        assert_eq!(max_pool(&x, &w, &out).unwrap().to_f32_vec(), vec![5., 6., 8., 9.]);
        let avg = avg_pool(&x, &w, false, &out).unwrap().to_f32_vec();
        assert_eq!(avg, vec![(1. + 2. + 4. + 5.) / 4., (3. + 6.) / 2., (7. + 8.) / 2., 9.]);
        let avg = avg_pool(&x, &w, true, &out).unwrap().to_f32_vec();
        assert_eq!(avg, vec![(1. + 2. + 4. + 5.) / 4., (3. + 6.) / 4., (7. + 8.) / 4., 9. / 4.]);
    }
}
