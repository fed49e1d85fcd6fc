//! The SIMT emulation (`exec::cuda::emu`) against values computed here: the
//! self-test kernels of kernels/selftest.cu with odd sizes, the 16-bit float
//! conversions against the `half` crate, the CPU GEMM against a naive loop,
//! and the errors (unknown kernels, bad pointers and configurations,
//! barriers that not every thread reaches).

use bytemuck::Pod;
use half::{bf16, f16};
use mpc::exec::cuda::emu::{EmuGpu, EmuMem};
use mpc::exec::cuda::gpu::{Epilogue, Extra, Gemm, Gpu, GpuError, KArg, Launch};
use mpc::ir::types::DType;

fn up<T: Pod>(gpu: &mut EmuGpu, data: &[T]) -> EmuMem {
    let m = gpu.alloc(std::mem::size_of_val(data)).unwrap();
    gpu.write(&m, 0, bytemuck::cast_slice(data)).unwrap();
    m
}

fn zeros<T: Pod>(gpu: &mut EmuGpu, n: usize) -> EmuMem {
    gpu.alloc(n * std::mem::size_of::<T>()).unwrap()
}

fn down<T: Pod>(gpu: &mut EmuGpu, m: &EmuMem) -> Vec<T> {
    let mut v = vec![T::zeroed(); m.len() / std::mem::size_of::<T>()];
    gpu.read(m, 0, bytemuck::cast_slice_mut(&mut v)).unwrap();
    v
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An integer-valued float in [-8, 8]: sums of a few thousand are exact.
    fn small(&mut self) -> f32 {
        self.below(17) as f32 - 8.0
    }
}

fn lin(blocks: u32, threads: u32) -> Launch {
    Launch::linear(blocks, threads)
}

#[test]
fn block_sum_over_odd_sizes() {
    let mut gpu = EmuGpu::new();
    let mut rng = Rng(1);
    // (n, threads per block, blocks): one element, sizes not a multiple of
    // the block, more blocks than data, full 1024-thread blocks.
    for (n, threads, blocks) in
        [(1, 1, 1), (1, 32, 4), (255, 100, 1), (1000, 256, 3), (1000, 1024, 2), (5, 64, 16), (4097, 33, 7), (0, 8, 2)]
    {
        let x: Vec<f32> = (0..n).map(|_| rng.small()).collect();
        let xm = up(&mut gpu, &x);
        let pm = zeros::<f32>(&mut gpu, blocks as usize);
        gpu.launch(
            "selftest_block_sum",
            lin(blocks, threads),
            &[KArg::Ptr(&xm, 0), KArg::Ptr(&pm, 0), KArg::U32(n as u32)],
        )
        .unwrap();
        let partial: Vec<f32> = down(&mut gpu, &pm);
        let stride = (threads * blocks) as usize;
        for (b, got) in partial.iter().enumerate() {
            // Block b's slice: the grid-stride indices of its threads.
            let mut want = 0.0f32;
            for t in 0..threads as usize {
                let mut i = b * threads as usize + t;
                while i < n {
                    want += x[i];
                    i += stride;
                }
            }
            assert_eq!(*got, want, "n {n}, {blocks} x {threads}, block {b}");
        }
        assert_eq!(partial.iter().sum::<f32>(), x.iter().sum::<f32>());
    }
}

#[test]
fn warp_reductions_with_both_shuffles() {
    let mut gpu = EmuGpu::new();
    let mut rng = Rng(2);
    for (n, threads, blocks) in [(1, 32, 1), (31, 32, 2), (33, 64, 1), (1000, 256, 4), (100, 1024, 1), (3, 96, 3)] {
        let total = (threads * blocks) as usize;
        let warps = total / 32;
        let xf: Vec<f32> = (0..n).map(|_| rng.small()).collect();
        let xi: Vec<i32> = (0..n).map(|_| rng.below(2001) as i32 - 1000).collect();
        let xd: Vec<f64> = (0..n).map(|_| rng.below(1 << 20) as f64 / 64.0 - 8000.0).collect();
        let (xfm, xim, xdm) = (up(&mut gpu, &xf), up(&mut gpu, &xi), up(&mut gpu, &xd));
        let sfm = zeros::<f32>(&mut gpu, warps);
        let sim = zeros::<i32>(&mut gpu, total);
        let mdm = zeros::<f64>(&mut gpu, warps);
        let sdm = zeros::<f64>(&mut gpu, warps);
        gpu.launch(
            "selftest_warp_reduce",
            lin(blocks, threads),
            &[
                KArg::Ptr(&xfm, 0),
                KArg::Ptr(&xim, 0),
                KArg::Ptr(&xdm, 0),
                KArg::Ptr(&sfm, 0),
                KArg::Ptr(&sim, 0),
                KArg::Ptr(&mdm, 0),
                KArg::Ptr(&sdm, 0),
                KArg::U32(n as u32),
            ],
        )
        .unwrap();
        let (sf, si, md, sd): (Vec<f32>, Vec<i32>, Vec<f64>, Vec<f64>) =
            (down(&mut gpu, &sfm), down(&mut gpu, &sim), down(&mut gpu, &mdm), down(&mut gpu, &sdm));
        for w in 0..warps {
            let r = w * 32..((w + 1) * 32).min(n).max(w * 32);
            let want_f: f32 = xf.get(r.clone()).unwrap_or(&[]).iter().sum();
            let want_i: i32 = xi.get(r.clone()).unwrap_or(&[]).iter().sum();
            let want_max = xd.get(r.clone()).unwrap_or(&[]).iter().copied().fold(-1e300, f64::max);
            let want_d: f64 = xd.get(r.clone()).unwrap_or(&[]).iter().sum();
            assert_eq!(sf[w], want_f, "n {n}, {blocks} x {threads}, warp {w}");
            assert_eq!(md[w], want_max, "n {n}, warp {w}");
            assert_eq!(sd[w], want_d, "n {n}, warp {w}");
            for lane in 0..32 {
                assert_eq!(si[w * 32 + lane], want_i, "n {n}, warp {w}, lane {lane}");
            }
        }
    }
}

#[test]
fn shuffles_within_a_width_and_in_a_partial_warp() {
    let mut gpu = EmuGpu::new();
    // 48 threads: the second warp has 16 lanes, two whole segments of 8, so
    // every source lane exists.
    for (threads, blocks) in [(32, 1), (64, 2), (48, 1), (48, 3), (8, 1)] {
        let total = (threads * blocks) as usize;
        let om = zeros::<u32>(&mut gpu, 2 * total);
        gpu.launch("selftest_shfl_width", lin(blocks, threads), &[KArg::Ptr(&om, 0)]).unwrap();
        let out: Vec<u32> = down(&mut gpu, &om);
        let value = |i: usize| (i * 7 + 1) as u32;
        for b in 0..blocks as usize {
            for t in 0..threads as usize {
                let i = b * threads as usize + t;
                let lane = t % 32;
                let xor_src = lane ^ 5; // stays in the segment of 8
                let down_src = if lane % 8 + 3 < 8 { lane + 3 } else { lane };
                let warp_base = i - lane;
                assert_eq!(out[2 * i], value(warp_base + xor_src), "{blocks} x {threads}, thread {i}");
                assert_eq!(out[2 * i + 1], value(warp_base + down_src), "{blocks} x {threads}, thread {i}");
            }
        }
    }
}

#[test]
fn atomics_over_grid_stride_loops() {
    let mut gpu = EmuGpu::new();
    let mut rng = Rng(3);
    for (n, threads, blocks) in [(1, 1, 1), (1, 64, 8), (1000, 128, 3), (12345, 256, 16), (77, 32, 100)] {
        let x: Vec<f32> = (0..n).map(|_| rng.small()).collect();
        let v: Vec<i32> = (0..n).map(|_| rng.below(1 << 30) as i32 - (1 << 29)).collect();
        let b: Vec<u32> = (0..n).map(|_| 1 << rng.below(32)).collect();
        let (xm, vm, bm) = (up(&mut gpu, &x), up(&mut gpu, &v), up(&mut gpu, &b));
        let fsum = zeros::<f32>(&mut gpu, 1);
        let count = zeros::<u32>(&mut gpu, 1);
        let vmax = up(&mut gpu, &[i32::MIN]);
        let bits = zeros::<u32>(&mut gpu, 1);
        let order = zeros::<u32>(&mut gpu, n);
        gpu.launch(
            "selftest_atomics",
            lin(blocks, threads),
            &[
                KArg::Ptr(&xm, 0),
                KArg::Ptr(&vm, 0),
                KArg::Ptr(&bm, 0),
                KArg::U32(n as u32),
                KArg::Ptr(&fsum, 0),
                KArg::Ptr(&count, 0),
                KArg::Ptr(&vmax, 0),
                KArg::Ptr(&bits, 0),
                KArg::Ptr(&order, 0),
            ],
        )
        .unwrap();
        assert_eq!(down::<f32>(&mut gpu, &fsum)[0], x.iter().sum::<f32>(), "n {n}");
        assert_eq!(down::<u32>(&mut gpu, &count)[0], n as u32);
        assert_eq!(down::<i32>(&mut gpu, &vmax)[0], *v.iter().max().unwrap());
        assert_eq!(down::<u32>(&mut gpu, &bits)[0], b.iter().fold(0, |a, b| a | b));
        let mut order: Vec<u32> = down(&mut gpu, &order);
        order.sort_unstable();
        assert!(order.iter().enumerate().all(|(i, o)| *o == i as u32), "n {n}: not a permutation");
    }
}

#[test]
fn two_and_three_dimensional_grids_and_blocks() {
    let mut gpu = EmuGpu::new();
    // (box, block, grid): grids that cover the box raggedly or exceed it.
    let cases = [
        ([5, 3, 1], [4, 2, 1], [2, 2, 1]),
        ([7, 5, 3], [2, 3, 2], [4, 2, 2]),
        ([1, 1, 1], [1, 1, 1], [1, 1, 1]),
        ([3, 4, 5], [8, 4, 2], [1, 2, 4]),
        ([2, 2, 2], [1, 1, 64], [3, 3, 1]),
        ([33, 2, 1], [32, 1, 1], [2, 3, 2]),
    ];
    for (size, block, grid) in cases {
        let cells = (size[0] * size[1] * size[2]) as usize;
        let ids = zeros::<u32>(&mut gpu, 4 * cells);
        let visits = zeros::<u32>(&mut gpu, cells);
        let dims = zeros::<u32>(&mut gpu, 6);
        gpu.launch(
            "selftest_index3d",
            Launch { grid, block, shared_bytes: 0 },
            &[
                KArg::Ptr(&ids, 0),
                KArg::Ptr(&visits, 0),
                KArg::Ptr(&dims, 0),
                KArg::U32(size[0]),
                KArg::U32(size[1]),
                KArg::U32(size[2]),
            ],
        )
        .unwrap();
        let (ids, visits, dims): (Vec<u32>, Vec<u32>, Vec<u32>) =
            (down(&mut gpu, &ids), down(&mut gpu, &visits), down(&mut gpu, &dims));
        assert_eq!(dims, [block[0], block[1], block[2], grid[0], grid[1], grid[2]]);
        for z in 0..size[2] {
            for y in 0..size[1] {
                for x in 0..size[0] {
                    let c = ((z * size[1] + y) * size[0] + x) as usize;
                    let covered = x < block[0] * grid[0] && y < block[1] * grid[1] && z < block[2] * grid[2];
                    if !covered {
                        assert_eq!(visits[c], 0);
                        continue;
                    }
                    assert_eq!(visits[c], 1, "{size:?} {block:?} {grid:?}: cell ({x}, {y}, {z})");
                    let t = (x % block[0]) | (y % block[1]) << 10 | (z % block[2]) << 20;
                    let want = [t, x / block[0], y / block[1], z / block[2]];
                    assert_eq!(ids[4 * c..4 * c + 4], want, "cell ({x}, {y}, {z})");
                }
            }
        }
    }
}

#[test]
fn saxpy_grid_stride_loop_with_u64_count() {
    let mut gpu = EmuGpu::new();
    let mut rng = Rng(4);
    for (n, threads, blocks) in [(1usize, 1, 1), (1000, 32, 1), (1000, 256, 64), (3, 1024, 3), (4099, 96, 5)] {
        let x: Vec<f32> = (0..n).map(|_| rng.small()).collect();
        let y: Vec<f32> = (0..n).map(|_| rng.small()).collect();
        let (xm, ym) = (up(&mut gpu, &x), up(&mut gpu, &y));
        gpu.launch(
            "selftest_saxpy",
            lin(blocks, threads),
            &[KArg::F32(0.5), KArg::Ptr(&xm, 0), KArg::Ptr(&ym, 0), KArg::U64(n as u64)],
        )
        .unwrap();
        let got: Vec<f32> = down(&mut gpu, &ym);
        let want: Vec<f32> = x.iter().zip(&y).map(|(x, y)| 0.5 * x + y).collect();
        assert_eq!(got, want, "n {n}, {blocks} x {threads}");
    }
    // Part of a buffer, by offset: elements 10..20 only.
    let x = vec![1.0f32; 30];
    let (xm, ym) = (up(&mut gpu, &x), up(&mut gpu, &x));
    gpu.launch("selftest_saxpy", lin(1, 4), &[KArg::F32(2.0), KArg::Ptr(&xm, 40), KArg::Ptr(&ym, 40), KArg::U64(10)])
        .unwrap();
    let got: Vec<f32> = down(&mut gpu, &ym);
    assert!(got.iter().enumerate().all(|(i, v)| *v == if (10..20).contains(&i) { 3.0 } else { 1.0 }), "{got:?}");
}

#[test]
fn every_scalar_kind_reaches_the_kernel() {
    let mut gpu = EmuGpu::new();
    let of = zeros::<f64>(&mut gpu, 2);
    let oi = zeros::<i64>(&mut gpu, 4);
    for (a, b, c, d, e, f) in
        [(i32::MIN, u32::MAX, i64::MIN, u64::MAX, f32::MIN_POSITIVE, f64::MAX), (-1, 7, 1 << 40, 3, -2.5, 1e-300)]
    {
        gpu.launch(
            "selftest_scalars",
            lin(2, 3),
            &[
                KArg::I32(a),
                KArg::U32(b),
                KArg::I64(c),
                KArg::U64(d),
                KArg::F32(e),
                KArg::F64(f),
                KArg::Ptr(&of, 0),
                KArg::Ptr(&oi, 0),
            ],
        )
        .unwrap();
        assert_eq!(down::<f64>(&mut gpu, &of), [e as f64, f]);
        assert_eq!(down::<i64>(&mut gpu, &oi), [a as i64, b as i64, c, d as i64]);
    }
}

/// Runs a conversion kernel over `x` (a grid smaller than the data).
fn convert<A: Pod, B: Pod>(gpu: &mut EmuGpu, kernel: &str, x: &[A]) -> Vec<B> {
    let xm = up(gpu, x);
    let ym = zeros::<B>(gpu, x.len());
    gpu.launch(kernel, lin(61, 128), &[KArg::Ptr(&xm, 0), KArg::Ptr(&ym, 0), KArg::U64(x.len() as u64)]).unwrap();
    down(gpu, &ym)
}

fn same_f32(got: f32, want: f32) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else {
        got.to_bits() == want.to_bits()
    }
}

#[test]
fn f16_and_bf16_to_f32_on_every_pattern() {
    let mut gpu = EmuGpu::new();
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let got: Vec<f32> = convert(&mut gpu, "selftest_f16_to_f32", &all);
    for (bits, g) in all.iter().zip(&got) {
        let want = f16::from_bits(*bits).to_f32();
        assert!(same_f32(*g, want), "f16 {bits:#06x}: {g:e} ({:#010x}), want {want:e}", g.to_bits());
    }
    let got: Vec<f32> = convert(&mut gpu, "selftest_bf16_to_f32", &all);
    for (bits, g) in all.iter().zip(&got) {
        let want = bf16::from_bits(*bits).to_f32();
        assert!(same_f32(*g, want), "bf16 {bits:#06x}: {g:e}, want {want:e}");
    }
}

/// f32 values where rounding to 16 bits is hard: every 16-bit value, the
/// midpoints between neighbours (ties) and one f32 ulp either side, the
/// edges (overflow, subnormals, zero, inf, NaN), and a sweep over all f32
/// bit patterns.
fn hard_f32s(to_f32: impl Fn(u16) -> f32) -> Vec<f32> {
    let mut v = Vec::new();
    for bits in 0..=u16::MAX {
        let a = to_f32(bits);
        let b = to_f32(bits.wrapping_add(1));
        v.push(a);
        if a.is_finite() && b.is_finite() && (bits & 0x7fff) != 0x7fff {
            let mid = ((a as f64 + b as f64) / 2.0) as f32; // exact in f32
            v.extend([mid, f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1)]);
        }
    }
    let mut x: u64 = 0;
    while x <= u64::from(u32::MAX) {
        v.push(f32::from_bits(x as u32));
        x += 4093;
    }
    v.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX, f32::MIN_POSITIVE]);
    v.extend([65504.0, 65519.99, 65520.0, 65536.0, 5.96e-8, 2.98e-8, 2.9802322e-8, 2.9802326e-8, 1e-10]);
    v.extend([f32::from_bits(0x7f80_0001), f32::from_bits(0xffc0_1234), f32::from_bits(0x7f7f_ffff)]);
    v
}

#[test]
fn f32_to_f16_and_bf16_round_like_half() {
    let mut gpu = EmuGpu::new();
    let xs = hard_f32s(|b| f16::from_bits(b).to_f32());
    let got: Vec<u16> = convert(&mut gpu, "selftest_f32_to_f16", &xs);
    for (x, g) in xs.iter().zip(&got) {
        let want = f16::from_f32(*x);
        let ok = if want.is_nan() { f16::from_bits(*g).is_nan() } else { *g == want.to_bits() };
        assert!(ok, "f16 of {x:e} ({:#010x}): {g:#06x}, want {:#06x}", x.to_bits(), want.to_bits());
    }
    let xs = hard_f32s(|b| bf16::from_bits(b).to_f32());
    let got: Vec<u16> = convert(&mut gpu, "selftest_f32_to_bf16", &xs);
    for (x, g) in xs.iter().zip(&got) {
        let want = bf16::from_f32(*x);
        let ok = if want.is_nan() { bf16::from_bits(*g).is_nan() } else { *g == want.to_bits() };
        assert!(ok, "bf16 of {x:e} ({:#010x}): {g:#06x}, want {:#06x}", x.to_bits(), want.to_bits());
    }
}

fn close(got: f32, want: f32, ulps: u32) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want == got {
        return true;
    }
    let (a, b) = (got.to_bits() as i64, want.to_bits() as i64);
    got.is_sign_positive() == want.is_sign_positive() && (a - b).unsigned_abs() <= u64::from(ulps)
}

#[test]
fn math_functions_of_the_subset() {
    let mut gpu = EmuGpu::new();
    let x = [0.0f32, -0.0, 1.0, -1.0, 0.5, 2.0, 10.0, -3.5, 1e-3, 88.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    let n = x.len();
    let xm = up(&mut gpu, &x);
    let (ym, ydm, fm) = (zeros::<f32>(&mut gpu, 10 * n), zeros::<f64>(&mut gpu, 5 * n), zeros::<u32>(&mut gpu, 4 * n));
    gpu.launch(
        "selftest_math",
        lin(2, 4),
        &[KArg::Ptr(&xm, 0), KArg::Ptr(&ym, 0), KArg::Ptr(&ydm, 0), KArg::Ptr(&fm, 0), KArg::U32(n as u32)],
    )
    .unwrap();
    let (y, yd, flags): (Vec<f32>, Vec<f64>, Vec<u32>) =
        (down(&mut gpu, &ym), down(&mut gpu, &ydm), down(&mut gpu, &fm));
    for (i, v) in x.iter().copied().enumerate() {
        let o = &y[10 * i..10 * i + 10];
        let want = [
            v.exp(),
            v.ln(),
            v.tanh(),
            f32::NAN, // erf: checked below
            v.sqrt(),
            v.abs(),
            v.max(0.5),
            v.min(0.5),
            v.abs().powf(1.5),
            -v,
        ];
        for (k, (g, w)) in o.iter().zip(want).enumerate() {
            if k != 3 {
                assert!(close(*g, w, 2), "x = {v}: function {k}: {g:e}, want {w:e}");
            }
        }
        let d = v as f64;
        let od = &yd[5 * i..5 * i + 5];
        for (k, (g, w)) in od.iter().zip([d.exp(), d.ln(), d.sqrt(), d.powi(3)]).enumerate() {
            let ok = (g.is_nan() && w.is_nan()) || g == &w || ((g - w) / w).abs() < 1e-15;
            assert!(ok, "x = {v}: double function {k}: {g:e}, want {w:e}");
        }
        assert_eq!(od[4], if d.is_finite() { 1.0 } else { 0.0 });
        assert_eq!(
            flags[4 * i..4 * i + 4],
            [v.to_bits(), v.is_infinite() as u32, v.is_nan() as u32, v.is_finite() as u32],
            "x = {v}"
        );
    }
    // erf: odd, erf(0) = 0, erf(±inf) = ±1, erf(1) and erf(0.5) to 1e-6.
    let erf = |i: usize| y[10 * i + 3];
    assert_eq!(erf(0), 0.0);
    assert!((erf(2) - 0.842_700_8).abs() < 1e-6 && erf(3) == -erf(2));
    assert!((erf(4) - 0.520_499_9).abs() < 1e-6);
    assert_eq!((erf(10), erf(11)), (1.0, -1.0));
    assert!(erf(12).is_nan());
}

#[test]
fn launches_on_several_threads_at_once_keep_their_shared_memory_apart() {
    let handles: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut gpu = EmuGpu::new();
                for round in 0..20u32 {
                    let v = (t * 100 + round) as f32;
                    let x = vec![v; 3000];
                    let xm = up(&mut gpu, &x);
                    let pm = zeros::<f32>(&mut gpu, 3);
                    gpu.launch(
                        "selftest_block_sum",
                        lin(3, 1000),
                        &[KArg::Ptr(&xm, 0), KArg::Ptr(&pm, 0), KArg::U32(3000)],
                    )
                    .unwrap();
                    assert_eq!(down::<f32>(&mut gpu, &pm), [1000.0 * v; 3], "thread {t}, round {round}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn err_text(r: Result<(), GpuError>) -> String {
    r.unwrap_err().0
}

#[test]
fn unknown_kernels_wrong_arguments_and_bad_pointers_are_errors() {
    let mut gpu = EmuGpu::new();
    let m = zeros::<f32>(&mut gpu, 4);
    let e = err_text(gpu.launch("selftest_saxpi", lin(1, 1), &[]));
    assert!(
        e.contains("no emulated kernel named `selftest_saxpi`") && e.contains("did you mean `selftest_saxpy`"),
        "{e}"
    );
    assert!(e.contains(" exported: adam_"), "the list of kernels: {e}");

    // Arity and kinds are checked against the kernel's parameters.
    let e = err_text(gpu.launch("selftest_saxpy", lin(1, 1), &[KArg::F32(1.0), KArg::Ptr(&m, 0)]));
    assert!(e.contains("takes 4 parameters (f32, pointer, pointer, u64); the launch passes 2 (f32, pointer)"), "{e}");
    let e = err_text(gpu.launch(
        "selftest_saxpy",
        lin(1, 1),
        &[KArg::F32(1.0), KArg::Ptr(&m, 0), KArg::Ptr(&m, 0), KArg::U32(4)],
    ));
    assert!(e.contains("the launch passes 4 (f32, pointer, pointer, u32)"), "{e}");

    // A pointer may sit at the end of its allocation, not past it.
    gpu.launch("selftest_saxpy", lin(1, 1), &[KArg::F32(1.0), KArg::Ptr(&m, 16), KArg::Ptr(&m, 16), KArg::U64(0)])
        .unwrap();
    let e = err_text(gpu.launch(
        "selftest_saxpy",
        lin(1, 1),
        &[KArg::F32(1.0), KArg::Ptr(&m, 0), KArg::Ptr(&m, 17), KArg::U64(0)],
    ));
    assert!(e.contains("argument 2") && e.contains("offset 17") && e.contains("16 bytes"), "{e}");
    // Two arguments into one allocation (aliasing) are fine: y = 2 y + y.
    gpu.write(&m, 0, bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0])).unwrap();
    gpu.launch("selftest_saxpy", lin(1, 2), &[KArg::F32(2.0), KArg::Ptr(&m, 0), KArg::Ptr(&m, 0), KArg::U64(4)])
        .unwrap();
    assert_eq!(down::<f32>(&mut gpu, &m), [3.0, 6.0, 9.0, 12.0]);

    // Memory of another device.
    let mut other = EmuGpu::new();
    let e = err_text(other.launch("selftest_shfl_width", lin(1, 1), &[KArg::Ptr(&m, 0)]));
    assert!(e.contains("another emulated device"), "{e}");

    // Copies out of bounds.
    let e = err_text(gpu.write(&m, 12, &[0; 5]));
    assert!(e.contains("5 bytes at offset 12") && e.contains("16 bytes"), "{e}");
    let e = err_text(gpu.read(&m, usize::MAX, &mut [0; 2]));
    assert!(e.contains("do not fit"), "{e}");
    gpu.write(&m, 16, &[]).unwrap();
}

#[test]
fn launch_configurations_outside_cuda_limits_are_errors() {
    let mut gpu = EmuGpu::new();
    let m = zeros::<u32>(&mut gpu, 1 << 16);
    let bad = [
        (Launch { grid: [1, 1, 1], block: [0, 1, 1], shared_bytes: 0 }, "block (0, 1, 1)"),
        (Launch { grid: [1, 1, 1], block: [1025, 1, 1], shared_bytes: 0 }, "block (1025, 1, 1)"),
        (Launch { grid: [1, 1, 1], block: [32, 32, 2], shared_bytes: 0 }, "1024 threads"),
        (Launch { grid: [1, 1, 1], block: [1, 1, 65], shared_bytes: 0 }, "block (1, 1, 65)"),
        (Launch { grid: [0, 1, 1], block: [1, 1, 1], shared_bytes: 0 }, "grid (0, 1, 1)"),
        (Launch { grid: [1, 65536, 1], block: [1, 1, 1], shared_bytes: 0 }, "grid (1, 65536, 1)"),
        (Launch { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 16 }, "dynamic shared memory"),
    ];
    for (cfg, what) in bad {
        let e = err_text(gpu.launch("selftest_shfl_width", cfg, &[KArg::Ptr(&m, 0)]));
        assert!(e.contains("selftest_shfl_width") && e.contains(what), "{cfg:?}: {e}");
    }
    gpu.launch(
        "selftest_shfl_width",
        Launch { grid: [1, 1, 1], block: [32, 32, 1], shared_bytes: 0 },
        &[KArg::Ptr(&m, 0)],
    )
    .unwrap();
}

#[test]
fn barriers_that_not_every_thread_reaches_are_reported_not_hung() {
    let mut gpu = EmuGpu::new();
    let m = zeros::<f32>(&mut gpu, 1024);
    // Every thread reaches the barrier: fine.
    gpu.launch("selftest_bad_sync_after_exit", lin(2, 64), &[KArg::Ptr(&m, 0), KArg::U32(64)]).unwrap();
    assert!(down::<f32>(&mut gpu, &m)[..64].iter().all(|v| *v == 2.0));
    // Threads 40.. return first: the others wait for ever on a GPU, maybe.
    let e = err_text(gpu.launch("selftest_bad_sync_after_exit", lin(2, 64), &[KArg::Ptr(&m, 0), KArg::U32(40)]));
    assert!(e.contains("deadlock") && e.contains("block (0, 0, 0)"), "{e}");
    assert!(e.contains("40 wait at __syncthreads(), 0 at a warp shuffle, 24 have exited"), "{e}");

    let e = err_text(gpu.launch("selftest_bad_divergent_sync", lin(1, 32), &[KArg::Ptr(&m, 0)]));
    assert!(e.contains("16 wait at __syncthreads()") && e.contains("16 have exited"), "{e}");
    // The whole block in the branch: fine.
    gpu.launch("selftest_bad_divergent_sync", lin(3, 16), &[KArg::Ptr(&m, 0)]).unwrap();

    let e = err_text(gpu.launch("selftest_bad_divergent_shfl", lin(1, 32), &[KArg::Ptr(&m, 0)]));
    assert!(e.contains("16 at a warp shuffle") && e.contains("lanes 0x0000ffff wait"), "{e}");
    assert!(e.contains("lanes 0xffff0000 never came"), "{e}");

    // The device works on after a failed launch.
    let xm = up(&mut gpu, &[1.0f32; 100]);
    let pm = zeros::<f32>(&mut gpu, 1);
    gpu.launch("selftest_block_sum", lin(1, 128), &[KArg::Ptr(&xm, 0), KArg::Ptr(&pm, 0), KArg::U32(100)]).unwrap();
    assert_eq!(down::<f32>(&mut gpu, &pm), [100.0]);
}

// ---- GEMM --------------------------------------------------------------------

fn encode(v: &[f32], dt: DType) -> Vec<u8> {
    match dt {
        DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_bits().to_ne_bytes()).collect(),
        DType::Bf16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_bits().to_ne_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
    }
}

fn decode(b: &[u8], dt: DType) -> Vec<f32> {
    match dt {
        DType::F16 => b.chunks_exact(2).map(|c| f16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32()).collect(),
        DType::Bf16 => b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32()).collect(),
        _ => b.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect(),
    }
}

/// The naive reference: C(i, j) = alpha sum_p op(A)(i, p) op(B)(p, j) + beta C(i, j),
/// column-major, in f64; elements of C outside the m x n matrices keep their value.
fn naive(g: &Gemm, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f64> {
    let mut out: Vec<f64> = c.iter().map(|v| *v as f64).collect();
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
    for e in 0..g.batch as usize {
        let (oa, ob, oc) = (e * g.stride_a as usize, e * g.stride_b as usize, e * g.stride_c as usize);
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let av = if g.trans_a { a[oa + p + i * lda] } else { a[oa + i + p * lda] };
                    let bv = if g.trans_b { b[ob + j + p * ldb] } else { b[ob + p + j * ldb] };
                    acc += av as f64 * bv as f64;
                }
                let cv = if g.beta == 0.0 { 0.0 } else { g.beta as f64 * c[oc + i + j * ldc] as f64 };
                out[oc + i + j * ldc] = g.alpha as f64 * acc + cv;
            }
        }
    }
    out
}

fn gemm_case(gpu: &mut EmuGpu, rng: &mut Rng, g: &Gemm) {
    let extent = |rows: u64, cols: u64, ld: u64, stride: u64| -> usize {
        let one = if rows == 0 || cols == 0 { 0 } else { (cols - 1) * ld + rows };
        ((g.batch.max(1) - 1) * stride + one) as usize
    };
    let (ra, ca) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let (rb, cb) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    let na = extent(ra, ca, g.lda, g.stride_a);
    let nb = extent(rb, cb, g.ldb, g.stride_b);
    let nc = extent(g.m, g.n, g.ldc, g.stride_c);
    // Values exact in every type (small integers / 4), and C's gaps a marker.
    let a: Vec<f32> = (0..na).map(|_| rng.small() / 4.0).collect();
    let b: Vec<f32> = (0..nb).map(|_| rng.small() / 4.0).collect();
    let c: Vec<f32> = (0..nc).map(|_| if g.beta == 0.0 { f32::NAN } else { rng.small() }).collect();
    // Operands at offsets inside bigger allocations.
    let (ea, ec) = (g.ab.size_bytes(), g.c.size_bytes());
    let am = gpu.alloc(8 * ea + na * ea).unwrap();
    let bm = gpu.alloc(nb * ea + 3 * ea).unwrap();
    let cm = gpu.alloc(2 * ec + nc * ec + ec).unwrap();
    gpu.write(&am, 8 * ea, &encode(&a, g.ab)).unwrap();
    gpu.write(&bm, 0, &encode(&b, g.ab)).unwrap();
    gpu.write(&cm, 2 * ec, &encode(&c, g.c)).unwrap();
    // The epilogue's bias: C's type, m elements, at an offset.
    let bias: Vec<f32> = (0..g.m).map(|_| rng.small() / 4.0).collect();
    let biasm = gpu.alloc(ec + bias.len() * ec).unwrap();
    gpu.write(&biasm, ec, &encode(&bias, g.c)).unwrap();
    let bias_at = g.epilogue.has_bias().then_some((&biasm, ec));
    // The stored gelu input: C's layout, at an offset; its gaps a marker.
    let auxm = gpu.alloc(4 * ec + nc * ec).unwrap();
    gpu.write(&auxm, 4 * ec, &encode(&vec![f32::NAN; nc], g.c)).unwrap();
    let aux_at = g.epilogue.has_aux().then_some((&auxm, 4 * ec));
    let extra = Extra { bias: bias_at, aux: aux_at };
    gpu.gemm_extra(g, (&am, 8 * ea), (&bm, 0), (&cm, 2 * ec), extra).unwrap();
    let mut raw = vec![0u8; nc * ec];
    gpu.read(&cm, 2 * ec, &mut raw).unwrap();
    let got = decode(&raw, g.c);
    gpu.read(&auxm, 4 * ec, &mut raw).unwrap();
    let got_aux = decode(&raw, g.c);
    let mut want_aux = vec![f64::NAN; nc];
    let mut want = naive(g, &a, &b, &c);
    if g.epilogue.has_bias() {
        // The sums are exact in f32 (below), and so is the bias: the f32
        // activation of the exact pre-activation is what the GEMM rounds.
        let (m, ldc) = (g.m as usize, g.ldc as usize);
        for e in 0..g.batch as usize {
            for j in 0..g.n as usize {
                for (i, b) in bias.iter().enumerate().take(m) {
                    let at = e * g.stride_c as usize + i + j * ldc;
                    let x = (want[at] + *b as f64) as f32;
                    want_aux[at] = x as f64;
                    want[at] = match g.epilogue {
                        Epilogue::ReluBias => mpc::exec::cpu::elementwise::relu(x),
                        Epilogue::GeluBias | Epilogue::GeluAuxBias => mpc::exec::cpu::elementwise::gelu(x),
                        _ => x,
                    } as f64;
                }
            }
        }
    }
    // Products of quarters sum exactly in f32 here; the only error is C's
    // rounding to its type.
    let rel = match g.c {
        DType::F16 => 1.0 / 1024.0,
        DType::Bf16 => 1.0 / 128.0,
        _ => 1e-6,
    };
    // Below the normal range the rounding is absolute: half the subnormal
    // spacing (gelu's small negative outputs reach it in f16).
    let abs = match g.c {
        DType::F16 => 2f64.powi(-25),
        DType::Bf16 => 2f64.powi(-134),
        _ => 1e-30,
    };
    for (i, (g_, w)) in got.iter().zip(&want).enumerate() {
        let ok = if w.is_nan() { g_.is_nan() } else { (*g_ as f64 - w).abs() <= rel * w.abs() + abs };
        assert!(ok, "{g:?}: C[{i}] = {g_}, want {w}");
    }
    // The gelu input is the biased sum, exact in f32: only its rounding to
    // C's type; without an aux matrix nothing is written there.
    for (i, (g_, w)) in got_aux.iter().zip(&want_aux).enumerate() {
        let ok = if w.is_nan() || !g.epilogue.has_aux() {
            g_.is_nan()
        } else {
            (*g_ as f64 - w).abs() <= rel * w.abs() + abs
        };
        assert!(ok, "{g:?}: aux[{i}] = {g_}, want {w}");
    }
}

fn gemm(m: u64, n: u64, k: u64, ta: bool, tb: bool, ab: DType, c: DType) -> Gemm {
    Gemm::packed(m, n, k, (ta, tb), ab, c)
}

#[test]
fn gemm_matches_a_naive_loop() {
    let mut gpu = EmuGpu::new();
    let mut rng = Rng(5);
    let types = [
        (DType::F32, DType::F32),
        (DType::F16, DType::F16),
        (DType::F16, DType::F32),
        (DType::Bf16, DType::Bf16),
        (DType::Bf16, DType::F32),
    ];
    for (ab, c) in types {
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 4, 33), (8, 8, 0), (1, 9, 2), (0, 3, 3)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let g = gemm(m, n, k, ta, tb, ab, c);
                gemm_case(&mut gpu, &mut rng, &g);
                // Leading dimensions beyond the rows, alpha and beta.
                let g2 = Gemm { lda: g.lda + 3, ldb: g.ldb + 1, ldc: g.ldc + 2, alpha: -0.5, beta: 2.0, ..g.clone() };
                gemm_case(&mut gpu, &mut rng, &g2);
                // A batch of 3 with strides (gaps between the matrices), and one
                // that broadcasts B (stride 0).
                let sa = (g2.lda * if ta { m } else { k }) + 5;
                let sb = g2.ldb * if tb { k } else { n } + 1;
                let sc = g2.ldc * n + 4;
                gemm_case(
                    &mut gpu,
                    &mut rng,
                    &Gemm { batch: 3, stride_a: sa, stride_b: sb, stride_c: sc, ..g2.clone() },
                );
                gemm_case(
                    &mut gpu,
                    &mut rng,
                    &Gemm { batch: 2, stride_a: sa, stride_b: 0, stride_c: sc, ..g2.clone() },
                );
                // The epilogues, after alpha and beta, one bias for every batch entry.
                // The stored gelu input asks a leading dimension of eights.
                for epilogue in [Epilogue::Bias, Epilogue::ReluBias, Epilogue::GeluBias, Epilogue::GeluAuxBias] {
                    let ldc = if epilogue.has_aux() { g2.ldc.next_multiple_of(8) } else { g2.ldc };
                    let sc = ldc * n + 4;
                    gemm_case(&mut gpu, &mut rng, &Gemm { epilogue, ldc, ..g2.clone() });
                    let batched =
                        Gemm { batch: 3, stride_a: sa, stride_b: sb, stride_c: sc, epilogue, ldc, ..g2.clone() };
                    gemm_case(&mut gpu, &mut rng, &batched);
                }
            }
        }
    }
}

#[test]
fn gemm_with_beta_zero_ignores_nans_in_c() {
    let mut gpu = EmuGpu::new();
    let g = gemm(2, 2, 1, false, false, DType::F32, DType::F32);
    let a = up(&mut gpu, &[1.0f32, 2.0]);
    let b = up(&mut gpu, &[3.0f32, 4.0]);
    let c = up(&mut gpu, &[f32::NAN; 4]);
    gpu.gemm(&g, (&a, 0), (&b, 0), (&c, 0)).unwrap();
    assert_eq!(down::<f32>(&mut gpu, &c), [3.0, 6.0, 4.0, 8.0]);
}

#[test]
fn gemm_fields_are_checked_against_the_buffers() {
    let mut gpu = EmuGpu::new();
    let mem = zeros::<f32>(&mut gpu, 64);
    let small = zeros::<f32>(&mut gpu, 8);
    let g = gemm(4, 4, 4, false, false, DType::F32, DType::F32);
    let run = |gpu: &mut EmuGpu, g: &Gemm, c: (&EmuMem, usize)| gpu.gemm(g, (&mem, 0), (&mem, 0), c).unwrap_err().0;
    let e = run(&mut gpu, &Gemm { lda: 3, ..g.clone() }, (&mem, 0));
    assert!(e.contains("lda = 3 is less than the 4 rows A has"), "{e}");
    let e = run(&mut gpu, &Gemm { trans_b: true, ldb: 2, ..g.clone() }, (&mem, 0));
    assert!(e.contains("ldb = 2"), "{e}");
    let e = run(&mut gpu, &g, (&small, 0));
    assert!(e.contains("C") && e.contains("64 bytes at offset 0 do not fit the allocation of 32 bytes"), "{e}");
    let e = run(&mut gpu, &g, (&mem, 2));
    assert!(e.contains("not aligned"), "{e}");
    let e = run(&mut gpu, &g, (&mem, 4 * 64 - 60));
    assert!(e.contains("do not fit"), "{e}");
    let e = run(&mut gpu, &Gemm { batch: 5, stride_a: 16, stride_b: 16, stride_c: 16, ..g.clone() }, (&mem, 0));
    assert!(e.contains("A") && e.contains("do not fit"), "{e}");
    let e = run(&mut gpu, &Gemm { batch: 2, stride_c: 8, ..g.clone() }, (&mem, 0));
    assert!(e.contains("stride_c = 8") && e.contains("overlap"), "{e}");
    let e = run(&mut gpu, &Gemm { c: DType::F16, ..g.clone() }, (&mem, 0));
    assert!(e.contains("A and B of f32 with C of f16"), "{e}");
    let e = run(&mut gpu, &Gemm { ab: DType::I32, c: DType::I32, ..g.clone() }, (&mem, 0));
    assert!(e.contains("A and B of i32"), "{e}");
    let e = run(&mut gpu, &Gemm { batch: u64::MAX, stride_a: u64::MAX, ..g.clone() }, (&mem, 0));
    assert!(e.contains("overflows"), "{e}");
    // Nothing to do is fine, even with a C too small for anything.
    gpu.gemm(&Gemm { batch: 0, ..g.clone() }, (&mem, 0), (&mem, 0), (&small, 32)).unwrap();
    let mut other = EmuGpu::new();
    let e = other.gemm(&g, (&mem, 0), (&mem, 0), (&mem, 0)).unwrap_err().0;
    assert!(e.contains("another emulated device"), "{e}");
    // A bias exactly when the epilogue adds one, of m elements in a live allocation.
    let biased = Gemm { epilogue: Epilogue::Bias, ..g.clone() };
    let e = gpu.gemm(&biased, (&mem, 0), (&mem, 0), (&mem, 0)).unwrap_err().0;
    assert!(e.contains("no bias vector"), "{e}");
    let e = gpu.gemm_extra(&g, (&mem, 0), (&mem, 0), (&mem, 0), Extra { bias: Some((&small, 0)), aux: None });
    assert!(e.unwrap_err().0.contains("a bias vector was given"));
    let e = gpu.gemm_extra(&biased, (&mem, 0), (&mem, 0), (&mem, 0), Extra { bias: Some((&small, 20)), aux: None });
    let e = e.unwrap_err().0;
    assert!(e.contains("bias") && e.contains("do not fit"), "{e}");
    let bias = |at| Extra { bias: Some((&small, at)), aux: None };
    gpu.gemm_extra(&biased, (&mem, 0), (&mem, 0), (&mem, 0), bias(16)).unwrap();
    // The stored gelu input exactly when the epilogue writes it, C's size, ld of eights.
    let gelu = Gemm { epilogue: Epilogue::GeluAuxBias, m: 8, n: 2, k: 2, lda: 8, ldc: 8, ..g.clone() };
    let e = gpu.gemm_extra(&gelu, (&mem, 0), (&mem, 0), (&mem, 0), bias(0)).unwrap_err().0;
    assert!(e.contains("no auxiliary matrix"), "{e}");
    let with = |at| Extra { bias: Some((&mem, 0)), aux: Some((&small, at)) };
    let e = gpu.gemm_extra(&biased, (&mem, 0), (&mem, 0), (&mem, 0), with(0)).unwrap_err().0;
    assert!(e.contains("an auxiliary matrix was given"), "{e}");
    let e = gpu.gemm_extra(&gelu, (&mem, 0), (&mem, 0), (&mem, 0), with(0)).unwrap_err().0;
    assert!(e.contains("aux") && e.contains("do not fit"), "{e}");
    let e = gpu.gemm_extra(&Gemm { m: 6, lda: 6, ldc: 6, ..gelu.clone() }, (&mem, 0), (&mem, 0), (&mem, 0), with(0));
    assert!(e.unwrap_err().0.contains("leading dimension 6 is not a multiple of 8"));
    let aux = zeros::<f32>(&mut gpu, 16);
    gpu.gemm_extra(&gelu, (&mem, 0), (&mem, 0), (&mem, 0), Extra { bias: Some((&mem, 0)), aux: Some((&aux, 0)) })
        .unwrap();
}

#[test]
fn describe_and_kernel_list() {
    let gpu = EmuGpu::new();
    assert!(gpu.describe().contains("SIMT emulation"), "{}", gpu.describe());
    let names: Vec<&str> = EmuGpu::kernels().collect();
    assert!(names.contains(&"selftest_block_sum") && names.contains(&"selftest_math"), "{names:?}");
}

/// The bias-gradient epilogue leaves C the plain product and writes the sum
/// of op(A) over k (A transposed or not) in f32 or C's type; one matrix only.
#[test]
fn a_bias_gradient_gemm_sums_a_over_k() {
    let mut gpu = EmuGpu::new();
    // op(A) = [[1, 2, 3], [4, 5, 6]] (m = 2, k = 3), B = I3 (n = 3).
    for (trans_a, a) in [(false, [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]), (true, [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])] {
        for f32 in [true, false] {
            let g =
                Gemm { epilogue: Epilogue::BiasGradA { f32 }, ..gemm(2, 3, 3, trans_a, false, DType::F16, DType::F16) };
            let am = gpu.alloc(12).unwrap();
            gpu.write(&am, 0, &encode(&a, DType::F16)).unwrap();
            let bm = gpu.alloc(18).unwrap();
            let eye = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
            gpu.write(&bm, 0, &encode(&eye, DType::F16)).unwrap();
            let cm = gpu.alloc(12).unwrap();
            let t = g.epilogue.bias_type(DType::F16);
            let db = gpu.alloc(2 * t.size_bytes()).unwrap();
            gpu.gemm_extra(&g, (&am, 0), (&bm, 0), (&cm, 0), Extra { bias: Some((&db, 0)), aux: None }).unwrap();
            let mut raw = vec![0u8; 12];
            gpu.read(&cm, 0, &mut raw).unwrap();
            assert_eq!(decode(&raw, DType::F16), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0], "C is op(A)·I");
            let mut raw = vec![0u8; 2 * t.size_bytes()];
            gpu.read(&db, 0, &mut raw).unwrap();
            assert_eq!(decode(&raw, t), [6.0, 15.0], "trans_a {trans_a}, f32 {f32}");
            // One matrix only: a batch has no single bias gradient.
            let batched = Gemm { batch: 2, stride_a: 0, stride_b: 0, stride_c: 6, ..g.clone() };
            let c2 = gpu.alloc(24).unwrap();
            let e = gpu.gemm_extra(&batched, (&am, 0), (&bm, 0), (&c2, 0), Extra { bias: Some((&db, 0)), aux: None });
            assert!(e.unwrap_err().0.contains("batch of 2"));
        }
    }
}
