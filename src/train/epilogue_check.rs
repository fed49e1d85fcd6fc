//! The GEMM epilogues (a bias add and the relu or gelu after it, fused
//! into cuBLASLt's GEMM: [`Epilogue`]) on a device, against a host
//! reference: cases of `mpc selftest`, so that the first session with a
//! GPU checks the cuBLASLt path that the SIMT emulation stands in for.
//! The gelu that stores its input (training's) is checked on both outputs,
//! and the weight-gradient GEMM that also makes the bias gradient on both.
//!
//! The operands are small multiples of 1/4 and 1/16 (k = 24): every
//! product and partial sum is exact in f32 whatever the order, and so is
//! the bias add. What is left is the activation (the CPU's f32 formula in
//! the emulation; cuBLASLt's own tanh on a device, a few f32 ulps apart)
//! and the one rounding to the low type. The emulation must therefore give
//! the reference bit for bit; a device may be one low-type ulp away, where
//! an activation a few f32 ulps off crosses a rounding boundary. The stored
//! gelu input has no activation in it: it must be exact on a device too.

use std::time::Instant;

use crate::exec::cpu::elementwise::{gelu, relu};
use crate::exec::cuda::gpu::{Epilogue, Extra, Gemm, Gpu, GpuError};
use crate::ir::types::DType;
use crate::tensor::Data;

use super::selftest::Row;

const M: u64 = 40;
const N: u64 = 24;
const K: u64 = 24;
const BATCH: u64 = 2;

/// One case per low type: every epilogue on a batched GEMM whose bias is
/// shared by the batch. `exact` asks for bit equality (the emulation).
pub fn run<G: Gpu>(gpu: &mut G, exact: bool) -> Vec<Row> {
    [DType::F16, DType::Bf16]
        .into_iter()
        .map(|t| {
            let started = Instant::now();
            let mut row = Row {
                case: format!("gemm epilogues {}", t.name()),
                steps: 3,
                loss_rel: 0.0,
                state_ratio: 0.0,
                cpu_ms: 0.0,
                device_ms: 0.0,
                failure: String::new(),
            };
            let grads = [Epilogue::BiasGradA { f32: true }, Epilogue::BiasGradA { f32: false }];
            let fwd = [Epilogue::Bias, Epilogue::ReluBias, Epilogue::GeluBias, Epilogue::GeluAuxBias];
            for e in fwd.into_iter().chain(grads) {
                let ran = if e.is_bias_grad() { grad_case(gpu, t, e) } else { case(gpu, t, e) };
                match ran {
                    Ok(ulps) => {
                        let allowed = if exact { 0 } else { 1 };
                        // The state column: ulps over those allowed (no loss here).
                        row.state_ratio = row.state_ratio.max(ulps as f64 / allowed.max(1) as f64);
                        if ulps > allowed && row.failure.is_empty() {
                            row.failure =
                                format!("{e:?}: {ulps} {} ulps from the reference (allowed {allowed})", t.name());
                        }
                    }
                    Err(err) if row.failure.is_empty() => row.failure = format!("{e:?}: {err}"),
                    Err(_) => {}
                }
            }
            row.device_ms = started.elapsed().as_secs_f64() * 1e3;
            row
        })
        .collect()
}

/// Runs one epilogue GEMM of type `t`; returns the largest distance from
/// the reference in ulps of `t` (an auxiliary matrix off by any is an error).
fn case<G: Gpu>(gpu: &mut G, t: DType, e: Epilogue) -> Result<u32, GpuError> {
    // Quarters in [-1, 1], exact in both types; the products are
    // sixteenths and a sum of 24 of them is exact in f32.
    let salt: u32 = match e {
        Epilogue::None => 0,
        Epilogue::Bias => 1,
        Epilogue::ReluBias => 2,
        Epilogue::GeluBias => 3,
        Epilogue::GeluAuxBias => 4,
        Epilogue::BiasGradA { .. } => 5,
    };
    let mut next = quarters(0x2545_f491_u32 ^ (salt << 8) ^ u32::from(t == DType::Bf16));
    let a: Vec<f32> = (0..BATCH * M * K).map(|_| next()).collect();
    let b: Vec<f32> = (0..BATCH * K * N).map(|_| next()).collect();
    let bias: Vec<f32> = (0..M).map(|_| next()).collect();
    let g = Gemm {
        m: M,
        n: N,
        k: K,
        trans_a: false,
        trans_b: false,
        lda: M,
        ldb: K,
        ldc: M,
        ab: t,
        c: t,
        batch: BATCH,
        stride_a: M * K,
        stride_b: K * N,
        stride_c: M * N,
        alpha: 1.0,
        beta: 0.0,
        tf32: false,
        epilogue: e,
    };
    let size = t.size_bytes();
    let am = gpu.alloc(a.len() * size)?;
    let bm = gpu.alloc(b.len() * size)?;
    let cm = gpu.alloc((BATCH * M * N) as usize * size)?;
    let biasm = gpu.alloc(bias.len() * size)?;
    let auxm = gpu.alloc((BATCH * M * N) as usize * size)?;
    gpu.write(&am, 0, &encode(&a, t))?;
    gpu.write(&bm, 0, &encode(&b, t))?;
    gpu.write(&biasm, 0, &encode(&bias, t))?;
    let aux = e.has_aux().then_some((&auxm, 0));
    gpu.gemm_extra(&g, (&am, 0), (&bm, 0), (&cm, 0), Extra { bias: Some((&biasm, 0)), aux })?;
    let elems = (BATCH * M * N) as usize;
    let got = read_bits(gpu, &cm, elems)?;
    let got_aux = if e.has_aux() { read_bits(gpu, &auxm, elems)? } else { Vec::new() };
    let mut worst = 0u32;
    let (m, n, k) = (M as usize, N as usize, K as usize);
    for entry in 0..BATCH as usize {
        for j in 0..n {
            for (i, bi) in bias.iter().enumerate() {
                let sum: f32 = (0..k).map(|p| a[entry * m * k + i + p * m] * b[entry * k * n + p + j * k]).sum();
                let x = sum + bi;
                let want = match e {
                    Epilogue::ReluBias => relu(x),
                    Epilogue::GeluBias | Epilogue::GeluAuxBias => gelu(x),
                    Epilogue::Bias | Epilogue::None | Epilogue::BiasGradA { .. } => x,
                };
                let at = entry * m * n + i + j * m;
                worst = worst.max(ulps(got[at], bits(want, t), t));
                if let Some(&have) = got_aux.get(at) {
                    if have != bits(x, t) {
                        return Err(GpuError(format!(
                            "the stored gelu input at ({i}, {j}) of entry {entry} is {have:#06x}, not {:#06x}",
                            bits(x, t)
                        )));
                    }
                }
            }
        }
    }
    Ok(worst)
}

/// A weight gradient's GEMM that also sums its output gradient (cuBLAS's A,
/// m x k, k the rows of the batch) over k into a bias gradient (f32, or
/// the low type: the sums are small multiples of 1/4, exact in both), laid
/// out as the CUDA backend maps `dw = x^T · dy` (A = dy untransposed, B =
/// x transposed). Quarters again: C and the sums are exact, so C must be the
/// reference's rounding (ulps returned) and the gradient exact.
fn grad_case<G: Gpu>(gpu: &mut G, t: DType, e: Epilogue) -> Result<u32, GpuError> {
    let mut next = quarters(0x9e37_79b9_u32 ^ u32::from(t == DType::Bf16));
    let a: Vec<f32> = (0..M * K).map(|_| next()).collect();
    let b: Vec<f32> = (0..N * K).map(|_| next()).collect();
    let g = Gemm { epilogue: e, ..Gemm::packed(M, N, K, (false, true), t, t) };
    let size = t.size_bytes();
    let am = gpu.alloc(a.len() * size)?;
    let bm = gpu.alloc(b.len() * size)?;
    let cm = gpu.alloc((M * N) as usize * size)?;
    let bt = e.bias_type(t);
    let dbm = gpu.alloc(M as usize * bt.size_bytes())?;
    gpu.write(&am, 0, &encode(&a, t))?;
    gpu.write(&bm, 0, &encode(&b, t))?;
    gpu.gemm_extra(&g, (&am, 0), (&bm, 0), (&cm, 0), Extra { bias: Some((&dbm, 0)), aux: None })?;
    let got = read_bits(gpu, &cm, (M * N) as usize)?;
    let mut raw = vec![0u8; M as usize * bt.size_bytes()];
    gpu.read(&dbm, 0, &mut raw)?;
    let db = Data::from_le_bytes(bt, &raw).to_f32_vec();
    let (m, n, k) = (M as usize, N as usize, K as usize);
    let mut worst = 0u32;
    for i in 0..m {
        let want: f32 = (0..k).map(|p| a[i + p * m]).sum();
        if db[i] != want {
            return Err(GpuError(format!("bias gradient [{i}] is {}, not {want}", db[i])));
        }
        for j in 0..n {
            let sum: f32 = (0..k).map(|p| a[i + p * m] * b[j + p * n]).sum();
            worst = worst.max(ulps(got[i + j * m], bits(sum, t), t));
        }
    }
    Ok(worst)
}

/// Quarters in [-1, 1] (exact in f16 and bf16), pseudo-random from `seed`.
fn quarters(mut seed: u32) -> impl FnMut() -> f32 {
    move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (((seed >> 24) % 9) as f32 - 4.0) / 4.0
    }
}

/// The first `n` 16-bit elements of `m`, as bits.
fn read_bits<G: Gpu>(gpu: &mut G, m: &G::Mem, n: usize) -> Result<Vec<u16>, GpuError> {
    let mut raw = vec![0u8; 2 * n];
    gpu.read(m, 0, &mut raw)?;
    Ok(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

/// The bits of `v` rounded to the 16-bit type `t`.
fn bits(v: f32, t: DType) -> u16 {
    let b = encode(&[v], t);
    u16::from_le_bytes([b[0], b[1]])
}

/// `v` rounded to `t` (nearest even, as the tensor's conversion), as the
/// device stores it.
fn encode(v: &[f32], t: DType) -> Vec<u8> {
    Data::from_f32(t, v).to_le_bytes()
}

/// The distance in ulps between two 16-bit floats of type `t` (both signs
/// of zero are one point; a NaN is as far as can be).
fn ulps(a: u16, b: u16, t: DType) -> u32 {
    let exp = if t == DType::Bf16 { 0x7f80 } else { 0x7c00 };
    let nan = |x: u16| x & exp == exp && x & !(exp | 0x8000) != 0;
    if nan(a) || nan(b) {
        return u32::MAX;
    }
    let ord = |x: u16| if x & 0x8000 != 0 { -i32::from(x & 0x7fff) } else { i32::from(x) };
    ord(a).abs_diff(ord(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::cuda::emu::EmuGpu;
    use half::{bf16, f16};

    #[test]
    fn the_emulation_gives_the_reference_bit_for_bit() {
        let rows = run(&mut EmuGpu::new(), true);
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert!(r.passed(), "{}: {}", r.case, r.failure);
        }
    }

    #[test]
    fn ulps_count_across_zero() {
        let one = f16::from_f32(1.0).to_bits();
        assert_eq!(ulps(one, one + 1, DType::F16), 1);
        assert_eq!(ulps(0x0001, 0x8001, DType::F16), 2);
        assert_eq!(ulps(0x0000, 0x8000, DType::Bf16), 0);
        assert_eq!(ulps(f16::NAN.to_bits(), one, DType::F16), u32::MAX);
        assert_eq!(ulps(bf16::NAN.to_bits(), bf16::ONE.to_bits(), DType::Bf16), u32::MAX);
    }
}
