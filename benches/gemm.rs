//! The CPU reference executor's matmul against numpy (OpenBLAS) on the same
//! shapes, side by side in one run.
//!
//! Times the `matmul` op through the CPU backend (including the conversion
//! to and from f32 that the op does) for f32 and f16 operands, and numpy's
//! `a @ b` in f32 with one BLAS thread (the executor is single-threaded) when
//! python3 can import numpy. Prints GFLOP/s and the ratio to numpy.
//!
//! Run: `cargo bench --bench gemm`.

use std::process::Command;
use std::time::Instant;

use mpc::exec::{Backend, CpuBackend, OpCtx, Tensor};
use mpc::{DType, Op, TensorType};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHAPES: [(usize, usize, usize); 5] =
    [(64, 128, 64), (64, 10, 128), (256, 256, 256), (512, 512, 512), (1024, 1024, 1024)];

fn ours(m: usize, n: usize, k: usize, dtype: DType) -> f64 {
    let vals = |len: usize| (0..len).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect::<Vec<f32>>();
    let a = Tensor::from_f32(dtype, vec![m as u64, k as u64], &vals(m * k)).expect("a tensor");
    let b = Tensor::from_f32(dtype, vec![k as u64, n as u64], &vals(k * n)).expect("a tensor");
    let out = [TensorType::new(dtype, vec![m as u64, n as u64])];
    let op = Op::Matmul { transpose_a: false, transpose_b: false };
    let ctx = OpCtx { node: "bench", step: 0, seed: 0 };
    let reps = (2e8 / (m * n * k) as f64).clamp(1.0, 1000.0) as usize;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(CpuBackend.run(&op, &ctx, &[&a, &b], &out).expect("matmul runs"));
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn numpy() -> Option<Vec<f64>> {
    let shapes: Vec<String> = SHAPES.iter().map(|(m, n, k)| format!("({m},{n},{k})")).collect();
    let script = format!(
        "import time, numpy as np\n\
         for m,n,k in [{}]:\n\
         \x20   a=np.random.rand(m,k).astype(np.float32); b=np.random.rand(k,n).astype(np.float32)\n\
         \x20   reps=int(min(1000,max(1,2e8/(m*n*k)))); best=1e9\n\
         \x20   for _ in range(3):\n\
         \x20       t=time.perf_counter()\n\
         \x20       for _ in range(reps): a@b\n\
         \x20       best=min(best,(time.perf_counter()-t)/reps)\n\
         \x20   print(2*m*n*k/best/1e9)\n",
        shapes.join(",")
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().ok()).collect()
}

fn main() {
    let np = numpy();
    println!(
        "{:>18} {:>12} {:>12} {:>14} {:>10}",
        "m x n x k", "f32 GFLOP/s", "f16 GFLOP/s", "numpy GFLOP/s", "f32/numpy"
    );
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        let (f, h) = (ours(m, n, k, DType::F32), ours(m, n, k, DType::F16));
        let (npv, ratio) = match np.as_ref().and_then(|v| v.get(i)) {
            Some(&g) => (format!("{g:.1}"), format!("{:.0}%", 100.0 * f / g)),
            None => ("-".into(), "-".into()),
        };
        println!("{:>18} {:>12.1} {:>12.1} {:>14} {:>10}", format!("{m}x{n}x{k}"), f, h, npv, ratio);
    }
}
