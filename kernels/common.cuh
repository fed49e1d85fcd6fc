// Included first by every kernels/*.cu file. The same sources compile two
// ways: by NVRTC for the GPU, and by g++ for the host under the SIMT
// emulation (MPC_EMU, kernels/emu/simt.h), which the tests run against the
// CPU reference. Kernels may use only what both provide; the list is in
// kernels/README.md.
#pragma once

#ifdef MPC_EMU
#include "emu/simt.h"
#else
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// After each kernel: registers it with the emulation; nothing on the GPU.
#define MPC_EXPORT(name)
#endif

// NVRTC has no <cstdint>.
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;
// bool is stored as one byte, 0 or 1.
typedef unsigned char u8;

// ---------------------------------------------------------------------------
// Helpers shared by the kernel families. Only what kernels/README.md lists
// as the allowed subset is used here, so the emulation compiles them too.
// ---------------------------------------------------------------------------

// Grid-stride loop over [0, n) with i64 indices: any n, any (bounded) grid.
#define MPC_GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// Multi-tensor launches (apex's multi_tensor_apply): one launch updates many
// tensors. `tensors` is a table of u64 words, `words` per tensor: its
// element count, its pointers, then per-tensor values as bits; `chunks`
// holds, per block b, the tensor chunks[2b] and its first element
// chunks[2b+1]: the block runs elements [first, min(first + chunk, n)) of
// that tensor, its threads striding by the block size. Packed on the host
// by src/exec/cuda/multi.rs.
#define MPC_CHUNK(tensors, words, chunks, chunk, rec, lo, hi)                 \
    const u64* rec = (tensors) + (i64)(words) * (chunks)[2 * (i64)blockIdx.x]; \
    const i64 lo = (chunks)[2 * (i64)blockIdx.x + 1];                          \
    const i64 hi = lo + (chunk) < (i64)rec[0] ? lo + (chunk) : (i64)rec[0]
#define MPC_CHUNK_STRIDE(i, lo, hi) for (i64 i = (lo) + threadIdx.x; i < (hi); i += (i64)blockDim.x)

// Lanes per warp; every block is a multiple of it (kernels/README.md).
#define MPC_WARP 32

__device__ __forceinline__ float mpc_inf_f32() { return __uint_as_float(0x7f800000u); }
__device__ __forceinline__ float mpc_nan_f32() { return __uint_as_float(0x7fc00000u); }

// Widening to f32: exact for every float type.
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Rounding an f32 once to the storage type, nearest even.
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// f64 to f32 rounded to odd: an inexact result gets the neighbour whose last
// mantissa bit is 1. Rounding that once more, nearest even, to a type with at
// least two bits fewer (f16: 11, bf16: 8 of f32's 24) gives the correctly
// rounded f64 -> f16/bf16 conversion: a single rounding, where going through
// an f32 rounded to nearest would round twice.
__device__ __forceinline__ float f64_to_f32_odd(double d) {
    float f = (float)d;
    if ((double)f != d && isfinite(f)) {
        u32 b = __float_as_uint(f);
        if ((b & 1u) == 0u) {
            if (f == 0.0f) {
                b = d < 0.0 ? 0x80000001u : 1u;
            } else if (((double)f > d) == (f > 0.0f)) {
                b -= 1u; // |f| > |d|: one ulp toward zero
            } else {
                b += 1u;
            }
        }
        f = __uint_as_float(b);
    }
    return f;
}

// An integer to f32 rounded to odd (as f64_to_f32_odd): through f64 where
// that is exact (below 2^53), else from the integer's own bits, since
// (double)v would round once more.
__device__ __forceinline__ float i64_to_f32_odd(i64 v) {
    u64 u = v < 0 ? (u64)0 - (u64)v : (u64)v;
    if (u < (1ull << 53)) return f64_to_f32_odd((double)v);
    u32 shift = 0;
    while ((u >> shift) >= (1ull << 24)) shift++;
    u64 m = u >> shift;
    if ((u & ((1ull << shift) - 1ull)) != 0ull) m |= 1ull; // sticky: odd when inexact
    // m < 2^24 is exact in f32, and so is its product with 2^shift (< 2^64).
    float f = (float)m * __uint_as_float((127u + shift) << 23);
    return v < 0 ? -f : f;
}

// Rounding an f64 once to a float storage type, nearest even.
template <typename T> __device__ __forceinline__ T from_f64(double v) { return from_f32<T>(f64_to_f32_odd(v)); }
template <> __device__ __forceinline__ float from_f64<float>(double v) { return (float)v; }

// Float to integer as Rust's `as`: truncation toward zero, saturating at the
// type's bounds, NaN giving 0 (C++'s conversion is undefined out of range).
__device__ __forceinline__ i32 f64_to_i32_sat(double v) {
    if (isnan(v)) return 0;
    if (v >= 2147483648.0) return 2147483647;
    if (v <= -2147483648.0) return (i32)(-2147483647 - 1);
    return (i32)v;
}
__device__ __forceinline__ i64 f64_to_i64_sat(double v) {
    if (isnan(v)) return 0;
    if (v >= 9223372036854775808.0) return 9223372036854775807LL;
    if (v <= -9223372036854775808.0) return (i64)(-9223372036854775807LL - 1);
    return (i64)v;
}

// Sums over a warp (all 32 lanes take part). The `_down` forms leave the sum
// in lane 0; the `_all` forms (a butterfly) leave the same value in every
// lane: each step adds a lane's value and its partner's, and IEEE addition
// is commutative, so partners hold equal bits after every step.
__device__ __forceinline__ double warp_sum_down(double v) {
    for (int o = MPC_WARP / 2; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_sum_down(float v) {
    for (int o = MPC_WARP / 2; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_sum_all(float v) {
    for (int o = MPC_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max_all(float v) {
    for (int o = MPC_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum of `v` over a 1-D block (blockDim.x a multiple of 32, at most
// 1024), valid in thread 0. `scratch` is a __shared__ double[32] of the
// caller; every thread of the block must call this (it synchronises).
__device__ __forceinline__ double block_sum(double v, double* scratch) {
    const int lane = threadIdx.x % MPC_WARP;
    const int warp = threadIdx.x / MPC_WARP;
    v = warp_sum_down(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / MPC_WARP;
    v = (int)threadIdx.x < warps ? scratch[threadIdx.x] : 0.0;
    if (warp == 0) v = warp_sum_down(v);
    __syncthreads();
    return v;
}
