//! Host arithmetic of the CUDA backend's launches, as pure functions:
//! grid sizes, broadcast strides, `sum_to` masks, and the GEMM that a
//! row-major `matmul` is. Tested here, without a device.

use crate::ir::op::Conv;
use crate::ir::types::DType;

use super::gpu::{Epilogue, Gemm};

/// Threads per block of every 1-D launch (kernels/README.md, "Launches").
pub const THREADS: u32 = 256;

/// The kernels' axis limit for broadcasting and `sum_to`.
pub const MAX_RANK: usize = 6;

/// Blocks for `work` threads' worth of work: enough to cover it once, at
/// most 65536 (every kernel loops grid-stride, so fewer is still correct).
pub fn blocks(work: u64) -> u32 {
    work.div_ceil(u64::from(THREADS)).clamp(1, 65536) as u32
}

/// Blocks of a two-pass reduction's first pass: one f64 partial each, at
/// most 1024 (the second pass is one block that sums them).
pub fn partial_blocks(work: u64) -> u32 {
    work.div_ceil(u64::from(THREADS)).clamp(1, 1024) as u32
}

/// A binary elementwise op's geometry: `rank` 0 when no index arithmetic
/// is needed, else the output's dims padded on the left to six axes and
/// each input's element strides along them (0 where broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broadcast {
    pub rank: i32,
    pub dims: [i64; MAX_RANK],
    pub sa: [i64; MAX_RANK],
    pub sb: [i64; MAX_RANK],
}

/// Row-major strides of `shape` read as `out` (right-aligned), 0 on the
/// axes where it is broadcast.
fn strides_in(shape: &[u64], out: &[u64]) -> Result<Vec<i64>, String> {
    if shape.len() > out.len() {
        return Err(format!("cannot broadcast {shape:?} to {out:?}"));
    }
    let lead = out.len() - shape.len();
    let mut st = vec![0i64; out.len()];
    let mut acc = 1i64;
    for i in (0..shape.len()).rev() {
        let (d, o) = (shape[i], out[lead + i]);
        if d == o && d != 1 {
            st[lead + i] = acc;
        } else if d != 1 {
            return Err(format!("cannot broadcast {shape:?} to {out:?}"));
        }
        acc = acc.saturating_mul(d as i64);
    }
    Ok(st)
}

impl Broadcast {
    /// The geometry of `a ∘ b -> out`. Adjacent axes that both inputs read
    /// contiguously (or both broadcast) merge, and size-1 axes drop, so
    /// the kernel divides as little as it can.
    pub fn new(a: &[u64], b: &[u64], out: &[u64]) -> Result<Broadcast, String> {
        let none = Broadcast { rank: 0, dims: [0; MAX_RANK], sa: [0; MAX_RANK], sb: [0; MAX_RANK] };
        if a == out && b == out {
            return Ok(none);
        }
        let (sa, sb) = (strides_in(a, out)?, strides_in(b, out)?);
        // (dim, stride a, stride b), innermost last, size-1 axes dropped.
        let mut axes: Vec<(i64, i64, i64)> = Vec::new();
        for i in 0..out.len() {
            let d = out[i] as i64;
            if d == 1 {
                continue;
            }
            if let Some(last) = axes.last_mut() {
                // Merge the outer axis `last` into this one when each input
                // steps over the inner axis exactly (or broadcasts both).
                if last.1 == sa[i] * d && last.2 == sb[i] * d {
                    *last = (last.0 * d, sa[i], sb[i]);
                    continue;
                }
            }
            axes.push((d, sa[i], sb[i]));
        }
        if axes.len() > MAX_RANK {
            return Err(format!("broadcasting {a:?} and {b:?} to {out:?} needs more than {MAX_RANK} axes"));
        }
        let mut bc =
            Broadcast { rank: axes.len().max(1) as i32, dims: [1; MAX_RANK], sa: [0; MAX_RANK], sb: [0; MAX_RANK] };
        let lead = MAX_RANK - axes.len();
        for (k, &(d, x, y)) in axes.iter().enumerate() {
            bc.dims[lead + k] = d;
            bc.sa[lead + k] = x;
            bc.sb[lead + k] = y;
        }
        Ok(bc)
    }
}

/// `sum_to`'s geometry: the input's dims padded to six axes, the summed
/// axes as a bit mask (bit k ↔ `dims[k]`), the output size `m` and the
/// number of elements summed into each output, `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SumTo {
    pub m: i64,
    pub count: i64,
    pub dims: [i64; MAX_RANK],
    pub mask: u32,
}

impl SumTo {
    /// Whether the innermost axis is summed (the kernel then takes a warp
    /// per output).
    pub fn last_reduced(&self) -> bool {
        self.mask & (1 << (MAX_RANK - 1)) != 0
    }
}

/// The geometry of `sum_to(x: shape) -> target`.
pub fn sum_to(shape: &[u64], target: &[u64]) -> Result<SumTo, String> {
    if shape.len() > MAX_RANK || target.len() > shape.len() {
        return Err(format!("sum_to from {shape:?} to {target:?} is not supported on the CUDA backend"));
    }
    let lead = MAX_RANK - shape.len();
    let tlead = shape.len() - target.len();
    let mut s = SumTo { m: 1, count: 1, dims: [1; MAX_RANK], mask: 0 };
    for (i, &d) in shape.iter().enumerate() {
        s.dims[lead + i] = d as i64;
        let kept = i >= tlead && target[i - tlead] == d;
        if !kept && i >= tlead && target[i - tlead] != 1 {
            return Err(format!("cannot sum {shape:?} to {target:?}"));
        }
        if kept {
            s.m *= d as i64;
        } else {
            s.mask |= 1 << (lead + i);
            s.count *= d as i64;
        }
    }
    Ok(s)
}

/// The geometry of `reduce_sum`/`reduce_mean(x: shape, axes)` for the
/// `reduce_<t>` kernel (kernels/reduce.cu), in `sum_to`'s terms: `m` outputs
/// (the kept axes, row-major, whether or not they are kept as size 1),
/// `count` elements each, the reduced axes as the mask. Size-1 axes drop and
/// adjacent axes of the same kind merge (neither changes the order in which
/// an output's elements are visited: increasing index), so any rank works
/// whose kept and reduced axes alternate at most six times. Negative axes
/// count from the end; an axis named twice is reduced once (as on the CPU).
pub fn reduce(shape: &[u64], axes: &[i64]) -> Result<SumTo, String> {
    let mut reduced = vec![false; shape.len()];
    for &a in axes {
        reduced[crate::ir::types::resolve_axis(a, shape.len())?] = true;
    }
    // (dim, reduced), outermost first.
    let mut merged: Vec<(u64, bool)> = Vec::new();
    for (&d, &r) in shape.iter().zip(&reduced) {
        if d == 1 {
            continue;
        }
        match merged.last_mut() {
            Some(last) if last.1 == r => last.0 *= d,
            _ => merged.push((d, r)),
        }
    }
    if merged.len() > MAX_RANK {
        return Err(format!("reducing {shape:?} over {axes:?} needs more than {MAX_RANK} axes"));
    }
    let mut s = SumTo { m: 1, count: 1, dims: [1; MAX_RANK], mask: 0 };
    let lead = MAX_RANK - merged.len();
    for (i, &(d, r)) in merged.iter().enumerate() {
        s.dims[lead + i] = d as i64;
        if r {
            s.mask |= 1 << (lead + i);
            s.count *= d as i64;
        } else {
            s.m *= d as i64;
        }
    }
    Ok(s)
}

/// The geometry of `broadcast_to(x: shape) -> out` as a gather by the
/// `transpose_<t>` kernel (kernels/layout.cu): out's dims and x's element
/// strides along them, 0 where x is broadcast (right-aligned, NumPy's
/// rule). Size-1 output axes drop and adjacent axes merge where x steps
/// over them contiguously or broadcasts both.
pub fn broadcast_to(shape: &[u64], out: &[u64]) -> Result<Permute, String> {
    let st = strides_in(shape, out)?;
    let axes = out.iter().zip(&st).map(|(&d, &s)| (d as i64, s));
    Permute::of(axes).ok_or_else(|| format!("broadcasting {shape:?} to {out:?} needs more than {MAX_RANK} axes"))
}

/// `(rows, width)`: everything before the last axis, and the last axis.
pub fn last_axis(shape: &[u64]) -> (i64, i64) {
    let width = shape.last().copied().unwrap_or(1) as i64;
    let rows = shape[..shape.len().saturating_sub(1)].iter().product::<u64>() as i64;
    (rows, width)
}

/// `(rows, classes)` of `[N, C]` logits.
pub fn rows_classes(shape: &[u64]) -> Result<(i64, i64), String> {
    match shape {
        [n, c] => Ok((*n as i64, *c as i64)),
        _ => Err(format!("logits must be [N, C], found {shape:?}")),
    }
}

/// A transpose's geometry: y's dims padded on the left to six axes and x's
/// element strides along them (kernels/layout.cu).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permute {
    pub rank: i32,
    pub dims: [i64; MAX_RANK],
    pub strides: [i64; MAX_RANK],
}

impl Permute {
    /// The geometry of output axes given as (dim, x's stride), outermost
    /// first: size-1 axes drop, an axis whose stride is the next one's
    /// extent merges with it; None past [`MAX_RANK`] axes.
    fn of(axes: impl Iterator<Item = (i64, i64)>) -> Option<Permute> {
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (d, s) in axes.filter(|&(d, _)| d != 1) {
            match merged.last_mut() {
                Some(last) if last.1 == s * d => *last = (last.0 * d, s),
                _ => merged.push((d, s)),
            }
        }
        if merged.len() > MAX_RANK {
            return None;
        }
        let mut g = Permute { rank: merged.len() as i32, dims: [1; MAX_RANK], strides: [0; MAX_RANK] };
        let lead = MAX_RANK - merged.len();
        for (i, &(d, s)) in merged.iter().enumerate() {
            g.dims[lead + i] = d;
            g.strides[lead + i] = s;
        }
        Some(g)
    }
}

/// The geometry of `transpose(x: shape, perm)`: output axis `i` is input
/// axis `perm[i]`. Size-1 axes drop and output axes that stay adjacent in
/// x merge (x's stride over the outer one is the inner one's extent), so
/// an identity permutation is one contiguous axis.
pub fn transpose(shape: &[u64], perm: &[usize]) -> Result<Permute, String> {
    let mut sorted = perm.to_vec();
    sorted.sort_unstable();
    if sorted != (0..shape.len()).collect::<Vec<_>>() {
        return Err(format!("perm {perm:?} does not permute the axes of {shape:?}"));
    }
    let mut st = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1].saturating_mul(shape[i + 1] as i64);
    }
    let axes = perm.iter().map(|&p| (shape[p] as i64, st[p]));
    Permute::of(axes).ok_or_else(|| format!("transpose of {shape:?} by {perm:?} needs more than {MAX_RANK} axes"))
}

/// `(outer, len, inner)`: `shape` seen as three axes around `axis`
/// (negative counts from the end), for the row kernels of softmax.
pub fn around(shape: &[u64], axis: i64) -> Result<(i64, i64, i64), String> {
    let ax = crate::ir::types::resolve_axis(axis, shape.len())?;
    let prod = |s: &[u64]| s.iter().product::<u64>() as i64;
    Ok((prod(&shape[..ax]), shape[ax] as i64, prod(&shape[ax + 1..])))
}

/// The column-major GEMM that computes mpc's row-major `matmul`.
///
/// Row-major `C[M,N] = op(A)·op(B)` is column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`,
/// and a row-major buffer read column-major is its transpose; so cuBLAS's
/// A operand is mpc's B buffer (transposed iff `transpose_b`), its B
/// operand mpc's A buffer (transposed iff `transpose_a`), `m = N`, `n = M`,
/// and C needs no transpose (`ldc = N`). Batch axes must be equal, or
/// absent (size 1) on one side, which then repeats with stride 0.
pub fn matmul_gemm(
    (a, ta): (&[u64], bool),
    (b, tb): (&[u64], bool),
    out: &[u64],
    ab: DType,
    c: DType,
    tf32: bool,
) -> Result<Gemm, String> {
    let split = |s: &[u64]| -> Result<(u64, u64, u64), String> {
        match s {
            [batch @ .., r, c] => Ok((batch.iter().product(), *r, *c)),
            _ => Err(format!("matmul operands need two axes, found {s:?}")),
        }
    };
    let ((ba, ar, ac), (bb, br, bc), (bo, m, n)) = (split(a)?, split(b)?, split(out)?);
    let (ma, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (kb, nb) = if tb { (bc, br) } else { (br, bc) };
    if ma != m || nb != n || kb != k {
        return Err(format!("matmul of {a:?} and {b:?} cannot give {out:?}"));
    }
    let stride = |batch: u64, size: u64, side: &str| match batch {
        _ if batch == bo => Ok(size),
        1 => Ok(0),
        _ => Err(format!("matmul: the batch axes of {side} broadcast partially; not supported on the CUDA backend")),
    };
    Ok(Gemm {
        m: n,
        n: m,
        k,
        trans_a: tb,
        trans_b: ta,
        lda: if tb { k } else { n },
        ldb: if ta { m } else { k },
        ldc: n,
        ab,
        c,
        batch: bo,
        stride_a: stride(bb, k * n, "b")?,
        stride_b: stride(ba, m * k, "a")?,
        stride_c: m * n,
        alpha: 1.0,
        beta: 0.0,
        tf32,
        epilogue: Epilogue::None,
    })
}

/// The dimension arguments of kernels/conv.cu, in order: `n, c, h, w` of the
/// input, `o, oh, ow` of the output, `kh, kw` of the weight `[O, C/groups,
/// kh, kw]`, then stride, padding, dilation and groups. The shapes are the
/// op's (inferred and checked); this checks what the kernels rely on.
pub fn conv(x: &[u64], w: &[u64], y: &[u64], cv: &Conv) -> Result<[i64; 16], String> {
    let [n, c, h, wd] = four(x)?;
    let [o, cg, kh, kw] = four(w)?;
    let [yn, yo, oh, ow] = four(y)?;
    let Conv { stride: [sh, sw], padding: [ph, pw], dilation: [dh, dw], groups } = *cv;
    if groups == 0 || c != cg * groups || o % groups != 0 || yn != n || yo != o || sh == 0 || sw == 0 {
        return Err(format!("conv2d: input {x:?}, weight {w:?}, output {y:?} and groups {groups} do not fit"));
    }
    if dh == 0 || dw == 0 {
        return Err(format!("conv2d: dilations must be at least 1, found {:?}", cv.dilation));
    }
    Ok([n, c, h, wd, o, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups].map(|d| d as i64))
}

fn four(s: &[u64]) -> Result<[u64; 4], String> {
    <[u64; 4]>::try_from(s).map_err(|_| format!("expected an NCHW shape, found {s:?}"))
}

/// The dimension arguments of kernels/pool.cu, in order: `planes` (N·C),
/// `h, w` of the input, `oh, ow` of the output, the window's kernel,
/// stride and leading padding (the trailing padding only sizes the output).
pub fn pool(x: &[u64], y: &[u64], win: &crate::ir::op::Window) -> Result<[i64; 11], String> {
    let [n, c, h, w] = four(x)?;
    let [yn, yc, oh, ow] = four(y)?;
    if yn != n || yc != c || win.stride.contains(&0) {
        return Err(format!("pooling: input {x:?} and output {y:?} do not fit"));
    }
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let [ph, pw] = win.padding;
    Ok([n * c, h, w, oh, ow, kh, kw, sh, sw, ph, pw].map(|d| d as i64))
}

/// `(n, c, s)` of an `[N, C, ...]` tensor: the batch, the channels and the
/// product of the remaining axes (the layout of batch norm and LRN).
pub fn ncs(shape: &[u64]) -> Result<(i64, i64, i64), String> {
    match shape {
        [n, c, rest @ ..] => Ok((*n as i64, *c as i64, rest.iter().product::<u64>() as i64)),
        _ => Err(format!("expected an [N, C, ...] shape, found {shape:?}")),
    }
}

/// concat and split as slab copies: `(outer, inner)` around `axis` of
/// `shape` (a piece's rows are `size · inner` elements long).
pub fn slabs(shape: &[u64], axis: usize) -> (i64, i64) {
    let outer: u64 = shape[..axis].iter().product();
    let inner: u64 = shape[axis + 1..].iter().product();
    (outer as i64, inner as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_the_work_and_stay_bounded() {
        assert_eq!(blocks(0), 1);
        assert_eq!(blocks(1), 1);
        assert_eq!(blocks(256), 1);
        assert_eq!(blocks(257), 2);
        assert_eq!(blocks(u64::MAX), 65536);
        assert_eq!(partial_blocks(10_000_000), 1024);
    }

    #[test]
    fn a_bias_broadcasts_along_rows() {
        let bc = Broadcast::new(&[64, 128], &[128], &[64, 128]).unwrap();
        assert_eq!(bc.rank, 2);
        assert_eq!((bc.dims[4], bc.dims[5]), (64, 128));
        assert_eq!((bc.sa[4], bc.sa[5], bc.sb[4], bc.sb[5]), (128, 1, 0, 1));
        assert_eq!(Broadcast::new(&[3, 4], &[3, 4], &[3, 4]).unwrap().rank, 0);
    }

    #[test]
    fn contiguous_axes_merge_and_unit_axes_drop() {
        // [2,3,4] * scalar: one axis of 24 for a, stride 0 for b.
        let bc = Broadcast::new(&[2, 3, 4], &[], &[2, 3, 4]).unwrap();
        assert_eq!((bc.rank, bc.dims[5], bc.sa[5], bc.sb[5]), (1, 24, 1, 0));
        // [2,1,4] + [3,1]: nothing merges.
        let bc = Broadcast::new(&[2, 1, 4], &[3, 1], &[2, 3, 4]).unwrap();
        assert_eq!(bc.rank, 3);
        assert_eq!(&bc.dims[3..], &[2, 3, 4]);
        assert_eq!(&bc.sa[3..], &[4, 0, 1]);
        assert_eq!(&bc.sb[3..], &[0, 1, 0]);
        assert!(Broadcast::new(&[2, 3], &[4], &[2, 3]).is_err());
        let eight = [2u64; 8];
        let alt: Vec<u64> = (0..8).map(|i| if i % 2 == 0 { 2 } else { 1 }).collect();
        assert!(Broadcast::new(&eight, &alt, &eight).is_err(), "eight axes that cannot merge");
    }

    #[test]
    fn sum_to_masks_the_summed_axes() {
        let s = sum_to(&[64, 128], &[128]).unwrap();
        assert_eq!((s.m, s.count, s.mask, s.dims[4], s.dims[5]), (128, 64, 0b010000, 64, 128));
        assert!(!s.last_reduced());
        let s = sum_to(&[8, 3, 5], &[8, 3, 1]).unwrap();
        assert_eq!((s.m, s.count, s.mask), (24, 5, 0b100000));
        assert!(s.last_reduced());
        let s = sum_to(&[4, 5], &[]).unwrap();
        assert_eq!((s.m, s.count, s.mask), (1, 20, 0b110000));
        assert!(sum_to(&[4, 5], &[3]).is_err());
    }

    #[test]
    fn transposes_merge_adjacent_axes() {
        // The heads split of attention: [8,32,4,16] by [0,2,1,3].
        let g = transpose(&[8, 32, 4, 16], &[0, 2, 1, 3]).unwrap();
        assert_eq!(g.rank, 4);
        assert_eq!(&g.dims[2..], &[8, 4, 32, 16]);
        assert_eq!(&g.strides[2..], &[2048, 16, 64, 1]);
        // An identity (with a size-1 axis) is one contiguous axis.
        let g = transpose(&[3, 1, 5], &[0, 1, 2]).unwrap();
        assert_eq!((g.rank, g.dims[5], g.strides[5]), (1, 15, 1));
        // [2,3,4] by [2,0,1]: the axes 0 and 1 stay adjacent and merge.
        let g = transpose(&[2, 3, 4], &[2, 0, 1]).unwrap();
        assert_eq!((g.rank, &g.dims[4..], &g.strides[4..]), (2, &[4, 6][..], &[1, 4][..]));
        assert!(transpose(&[2, 3], &[0, 0]).is_err());
        assert!(transpose(&[2, 3], &[1]).is_err());
        let seven: Vec<u64> = vec![2; 7];
        assert!(transpose(&seven, &[6, 5, 4, 3, 2, 1, 0]).is_err());
        assert!(transpose(&[], &[]).unwrap().rank == 0);
    }

    #[test]
    fn reductions_merge_axes_of_one_kind() {
        // Global average pooling: [N, C, H, W] over (2, 3).
        let s = reduce(&[2, 3, 4, 5], &[2, -1]).unwrap();
        assert_eq!((s.m, s.count, s.mask), (6, 20, 0b100000));
        assert_eq!(&s.dims[4..], &[6, 20]);
        // The middle axis; size-1 axes drop, a repeated axis counts once.
        let s = reduce(&[3, 1, 4, 5], &[2, 2, -2]).unwrap();
        assert_eq!((s.m, s.count, s.mask, &s.dims[3..]), (15, 4, 0b010000, &[3, 4, 5][..]));
        // Every axis, and an all-ones shape.
        let s = reduce(&[3, 4], &[0, 1]).unwrap();
        assert_eq!((s.m, s.count, s.mask, s.dims[5]), (1, 12, 0b100000, 12));
        let s = reduce(&[1, 1], &[0]).unwrap();
        assert_eq!((s.m, s.count, s.mask, s.dims), (1, 1, 0, [1; MAX_RANK]));
        // Alternating axes: seven cannot merge, six can be run.
        let seven = [2u64; 7];
        assert!(reduce(&seven, &[0, 2, 4, 6]).is_err());
        let s = reduce(&[2, 3, 2, 3, 2, 3, 1], &[1, 3, 5]).unwrap();
        assert_eq!((s.m, s.count, s.mask), (8, 27, 0b101010));
        assert!(reduce(&[2, 3], &[2]).is_err());
    }

    #[test]
    fn broadcasts_are_gathers_with_zero_strides() {
        // A bias [C] to [N, C].
        let g = broadcast_to(&[5], &[3, 5]).unwrap();
        assert_eq!((g.rank, &g.dims[4..], &g.strides[4..]), (2, &[3, 5][..], &[0, 1][..]));
        // [C, 1, 1] to [N, C, H, W]: H and W merge (both broadcast).
        let g = broadcast_to(&[4, 1, 1], &[2, 4, 3, 3]).unwrap();
        assert_eq!((g.rank, &g.dims[3..], &g.strides[3..]), (3, &[2, 4, 9][..], &[0, 1, 0][..]));
        // A copy is one contiguous axis; a scalar is stride 0.
        let g = broadcast_to(&[2, 3], &[2, 3]).unwrap();
        assert_eq!((g.rank, g.dims[5], g.strides[5]), (1, 6, 1));
        let g = broadcast_to(&[], &[7, 1]).unwrap();
        assert_eq!((g.rank, g.dims[5], g.strides[5]), (1, 7, 0));
        assert_eq!(broadcast_to(&[1], &[1, 1]).unwrap().rank, 0);
        assert!(broadcast_to(&[3], &[4]).is_err());
        assert!(broadcast_to(&[2, 3], &[3]).is_err());
        let alt: Vec<u64> = (0..8).map(|i| if i % 2 == 0 { 2 } else { 1 }).collect();
        assert!(broadcast_to(&alt, &[2u64; 8]).is_err(), "eight axes that cannot merge");
    }

    #[test]
    fn rows_around_an_axis() {
        assert_eq!(around(&[2, 3, 4], -1).unwrap(), (6, 4, 1));
        assert_eq!(around(&[2, 3, 4], 1).unwrap(), (2, 3, 4));
        assert_eq!(around(&[5], 0).unwrap(), (1, 5, 1));
        assert!(around(&[2, 3], 2).is_err());
    }

    /// The GEMM of a row-major matmul, checked by evaluating it with
    /// cuBLAS's column-major rules on small matrices.
    #[test]
    fn matmul_maps_onto_a_column_major_gemm() {
        fn eval(g: &Gemm, a: &[f32], b: &[f32]) -> Vec<f32> {
            // cuBLAS: C(i,j) = Σ op(A)(i,l) op(B)(l,j), column-major.
            let at = |i: u64, l: u64| if g.trans_a { a[(i * g.lda + l) as usize] } else { a[(l * g.lda + i) as usize] };
            let bt = |l: u64, j: u64| if g.trans_b { b[(l * g.ldb + j) as usize] } else { b[(j * g.ldb + l) as usize] };
            let mut c = vec![0f32; (g.ldc * g.n) as usize];
            for j in 0..g.n {
                for i in 0..g.m {
                    c[(j * g.ldc + i) as usize] = (0..g.k).map(|l| at(i, l) * bt(l, j)).sum();
                }
            }
            c
        }
        let (m, k, n) = (2u64, 3u64, 4u64);
        let x: Vec<f32> = (0..m * k).map(|v| v as f32 + 1.0).collect(); // [2,3]
        let w: Vec<f32> = (0..k * n).map(|v| (v as f32) * 0.5 - 1.0).collect(); // [3,4]
        let want: Vec<f32> = (0..m * n)
            .map(|e| (0..k).map(|l| x[((e / n) * k + l) as usize] * w[(l * n + e % n) as usize]).sum())
            .collect();
        let tr =
            |v: &[f32], r: u64, c: u64| -> Vec<f32> { (0..r * c).map(|e| v[((e % r) * c + e / r) as usize]).collect() };
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if ta { tr(&x, m, k) } else { x.clone() };
            let b = if tb { tr(&w, k, n) } else { w.clone() };
            let ash = if ta { [k, m] } else { [m, k] };
            let bsh = if tb { [n, k] } else { [k, n] };
            let g = matmul_gemm((&ash, ta), (&bsh, tb), &[m, n], DType::F32, DType::F32, false).unwrap();
            // cuBLAS's A is mpc's B buffer.
            assert_eq!(eval(&g, &b, &a), want, "ta {ta} tb {tb}");
        }
        let g = matmul_gemm((&[5, 2, 3], false), (&[3, 4], false), &[5, 2, 4], DType::F16, DType::F16, false).unwrap();
        assert_eq!((g.batch, g.stride_a, g.stride_b, g.stride_c), (5, 0, 6, 8));
        assert!(matmul_gemm((&[2, 3], false), (&[4, 4], false), &[2, 4], DType::F32, DType::F32, false).is_err());
        let e = matmul_gemm((&[6, 2, 3], false), (&[2, 3, 4], false), &[6, 2, 4], DType::F32, DType::F32, false);
        assert!(e.unwrap_err().contains("partially"));
    }

    #[test]
    fn conv_and_pool_dimensions() {
        // [2, 4, 8, 8] * [8, 2, 3, 3], groups 2, stride 1, padding 1.
        let cv = Conv::new([1, 1], [1, 1], 2);
        let d = conv(&[2, 4, 8, 8], &[8, 2, 3, 3], &[2, 8, 8, 8], &cv).unwrap();
        assert_eq!(d, [2, 4, 8, 8, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 2]);
        let dilated = Conv { dilation: [2, 3], ..cv };
        let d = conv(&[2, 4, 8, 8], &[8, 2, 3, 3], &[2, 8, 6, 4], &dilated).unwrap();
        assert_eq!(d[13..], [2, 3, 2]);
        assert!(conv(&[2, 4, 8, 8], &[8, 4, 3, 3], &[2, 8, 8, 8], &cv).is_err());
        assert!(conv(&[2, 4, 8], &[8, 4, 3, 3], &[2, 8, 8, 8], &Conv { groups: 1, ..cv }).is_err());
        assert!(conv(&[2, 4, 8, 8], &[8, 2, 3, 3], &[2, 8, 8, 8], &Conv { dilation: [0, 1], ..cv }).is_err());
        let w = crate::ir::op::Window { padding_end: [1, 0], ..crate::ir::op::Window::new([3, 2], [2, 1], [0, 1]) };
        assert_eq!(pool(&[2, 3, 8, 7], &[2, 3, 4, 8], &w).unwrap(), [6, 8, 7, 4, 8, 3, 2, 2, 1, 0, 1]);
        assert_eq!(ncs(&[2, 3, 4, 5]).unwrap(), (2, 3, 20));
        assert_eq!(ncs(&[2, 3]).unwrap(), (2, 3, 1));
        assert!(ncs(&[2]).is_err());
        assert_eq!(slabs(&[2, 3, 4, 5], 1), (2, 20));
        assert_eq!(slabs(&[2, 3], 0), (1, 3));
    }
}
