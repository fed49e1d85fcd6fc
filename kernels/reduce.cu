// Reductions: sum_to (to a broadcast-compatible smaller shape), reduce_sum and
// reduce_mean (a thread per output in the CPU's order: its bits), global_norm
// (two passes, f64) and found_inf.
//
// Numerics: sum_to accumulates in f32 and rounds once to the output type,
// like the CPU (src/exec/cpu/layout.rs). When the input's last axis is kept
// (a bias gradient: [N, C] -> [C]) each output is one thread's sum in the
// CPU's order (increasing input index), so the result is bit for bit the
// CPU's. When the last axis is reduced, a warp shares each output and adds
// strided partial sums in a tree: the order differs, so f32 results differ
// by rounding (relative error of order count * 2^-24 at worst; typically a
// few ulp). global_norm sums squares in f64 like the CPU but in a different
// order (per-thread, then a tree per block, then the blocks): the f64 totals
// may differ in their last bits, which the final rounding to f32 almost
// always hides. found_inf is exact. Results do not depend on timing: no
// float atomics, so a launch with the same grid repeats bit for bit.
#include "common.cuh"

// ---------------------------------------------------------------------------
// sum_to_<t>(const T* x, T* y, i64 m, i64 count, i64 d0..d5, u32 reduce_mask)
//
// x's shape padded on the left with 1s to six axes is d0..d5 (d5 the last
// axis). Bit k of reduce_mask (bit 0 for d0, ..., bit 5 for d5) is set when
// axis k is summed away: the target shape, right-aligned against x's, has 1
// there or lacks the axis. m is the product of the kept axes (y's element
// count) and count the product of the summed ones; y's elements are in the
// row-major order of the kept axes. Merging adjacent axes of the same kind
// on the host changes nothing but speed. Any 1-D launch works: a thread per
// output when bit 5 is clear, a warp per output when it is set.
// ---------------------------------------------------------------------------

// The offset into x of the idx-th combination (row-major) of the axes whose
// bit in `mask` is `want`.
__device__ __forceinline__ i64 axes_offset(i64 idx, const i64* d, const i64* st, u32 mask, u32 want) {
    i64 off = 0;
    for (int k = 5; k >= 0; --k) {
        if (((mask >> k) & 1u) != want) continue;
        off += (idx % d[k]) * st[k];
        idx /= d[k];
    }
    return off;
}

template <typename T>
__device__ __forceinline__ void sum_to(const T* x, T* y, i64 m, i64 count, const i64* d, u32 mask) {
    i64 st[6];
    st[5] = 1;
    for (int k = 4; k >= 0; --k) st[k] = st[k + 1] * d[k + 1];
    if (((mask >> 5) & 1u) == 0u) {
        // A thread per output; the summed axes are walked like an odometer
        // (last axis fastest), so inputs are added in increasing index order.
        MPC_GRID_STRIDE(o, m) {
            const i64 base = axes_offset(o, d, st, mask, 0u);
            i64 c[6] = {0, 0, 0, 0, 0, 0};
            i64 off = 0;
            float acc = 0.0f;
            for (i64 r = 0; r < count; ++r) {
                acc += to_f32(x[base + off]);
                for (int k = 5; k >= 0; --k) {
                    if (((mask >> k) & 1u) == 0u) continue;
                    off += st[k];
                    if (++c[k] < d[k]) break;
                    off -= st[k] * d[k];
                    c[k] = 0;
                }
            }
            y[o] = from_f32<T>(acc);
        }
    } else {
        // A warp per output: lane l adds elements l, l + 32, ... of the
        // summed axes (the last of them contiguous), then the warp's tree.
        const int lane = threadIdx.x % MPC_WARP;
        const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / MPC_WARP;
        const i64 warps = ((i64)blockDim.x * gridDim.x) / MPC_WARP;
        for (i64 o = warp; o < m; o += warps) {
            const i64 base = axes_offset(o, d, st, mask, 0u);
            float acc = 0.0f;
            for (i64 r = lane; r < count; r += MPC_WARP) acc += to_f32(x[base + axes_offset(r, d, st, mask, 1u)]);
            acc = warp_sum_down(acc);
            if (lane == 0) y[o] = from_f32<T>(acc);
        }
    }
}

#define MPC_SUM_TO(T, TN)                                                                                     \
    extern "C" __global__ void sum_to_##TN(const T* x, T* y, i64 m, i64 count, i64 d0, i64 d1, i64 d2, i64 d3, \
                                           i64 d4, i64 d5, u32 reduce_mask) {                                 \
        const i64 d[6] = {d0, d1, d2, d3, d4, d5};                                                            \
        sum_to<T>(x, y, m, count, d, reduce_mask);                                                            \
    }                                                                                                         \
    MPC_EXPORT(sum_to_##TN)

MPC_SUM_TO(float, f32)
MPC_SUM_TO(__half, f16)
MPC_SUM_TO(__nv_bfloat16, bf16)

// ---------------------------------------------------------------------------
// reduce_<t>(const T* x, T* y, i64 m, i64 count, i64 d0..d5, u32 reduce_mask,
//     i32 mean)
// reduce_sum / reduce_mean over any set of axes (keepdims changes only y's
// shape, not its order). The geometry is sum_to's: d0..d5 x's dims padded on
// the left to six axes, bit k of reduce_mask set for a reduced axis, m the
// product of the kept axes (y's size, in their row-major order) and count
// the product of the reduced ones. A thread per output (work = m) walks its
// reduced elements like an odometer, last axis fastest, i.e. in increasing
// index order, as the CPU does (src/exec/cpu/layout.rs `reduce`): floats
// accumulate in f32 from +0.0, with mean != 0 divide by (float)count, and
// round once; i32/i64 add in i64 wrapping (modulo 2^64, as u64 here), then
// i32 keeps the low 32 bits (Rust's `as i32`). The same bits as the CPU.
// ---------------------------------------------------------------------------
__device__ __forceinline__ float red_add(float a, float v) { return a + v; }
__device__ __forceinline__ float red_add(float a, __half v) { return a + to_f32(v); }
__device__ __forceinline__ float red_add(float a, __nv_bfloat16 v) { return a + to_f32(v); }
__device__ __forceinline__ u64 red_add(u64 a, i32 v) { return a + (u64)(i64)v; }
__device__ __forceinline__ u64 red_add(u64 a, i64 v) { return a + (u64)v; }

__device__ __forceinline__ void red_store(float* y, float a, int mean, i64 count) {
    *y = from_f32<float>(mean ? a / (float)count : a);
}
__device__ __forceinline__ void red_store(__half* y, float a, int mean, i64 count) {
    *y = from_f32<__half>(mean ? a / (float)count : a);
}
__device__ __forceinline__ void red_store(__nv_bfloat16* y, float a, int mean, i64 count) {
    *y = from_f32<__nv_bfloat16>(mean ? a / (float)count : a);
}
// Integer means are refused by the type checker; the sum is stored as is.
__device__ __forceinline__ void red_store(i32* y, u64 a, int, i64) { *y = (i32)(u32)a; }
__device__ __forceinline__ void red_store(i64* y, u64 a, int, i64) { *y = (i64)a; }

template <typename T, typename A>
__device__ __forceinline__ void reduce_axes(const T* x, T* y, i64 m, i64 count, const i64* d, u32 mask, int mean) {
    i64 st[6];
    st[5] = 1;
    for (int k = 4; k >= 0; --k) st[k] = st[k + 1] * d[k + 1];
    MPC_GRID_STRIDE(o, m) {
        const i64 base = axes_offset(o, d, st, mask, 0u);
        i64 c[6] = {0, 0, 0, 0, 0, 0};
        i64 off = 0;
        A acc = (A)0;
        for (i64 r = 0; r < count; ++r) {
            acc = red_add(acc, x[base + off]);
            for (int k = 5; k >= 0; --k) {
                if (((mask >> k) & 1u) == 0u) continue;
                off += st[k];
                if (++c[k] < d[k]) break;
                off -= st[k] * d[k];
                c[k] = 0;
            }
        }
        red_store(y + o, acc, mean, count);
    }
}

#define MPC_REDUCE(T, TN, A)                                                                                 \
    extern "C" __global__ void reduce_##TN(const T* x, T* y, i64 m, i64 count, i64 d0, i64 d1, i64 d2, i64 d3, \
                                           i64 d4, i64 d5, u32 reduce_mask, i32 mean) {                      \
        const i64 d[6] = {d0, d1, d2, d3, d4, d5};                                                           \
        reduce_axes<T, A>(x, y, m, count, d, reduce_mask, mean);                                             \
    }                                                                                                        \
    MPC_EXPORT(reduce_##TN)

MPC_REDUCE(float, f32, float)
MPC_REDUCE(__half, f16, float)
MPC_REDUCE(__nv_bfloat16, bf16, float)
MPC_REDUCE(i32, i32, u64)
MPC_REDUCE(i64, i64, u64)

// ---------------------------------------------------------------------------
// global_norm(g1, ..., gn) = sqrt(sum of every element squared), in f64:
// 1. global_norm_partial_<t>(const T* x, i64 n, double* partial) once per
//    input: block b writes the f64 sum of its elements' squares (each
//    element widened to f32, then squared in f64 as the CPU does) to
//    partial[b]; give each input its own gridDim.x slots of one scratch
//    array (a pointer offset).
// 2. global_norm_finish_f32(const double* partial, i64 parts, float* out)
//    with one block: out[0] = f32(sqrt(sum of the parts)).
// ---------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ void norm_partial(const T* x, i64 n, double* partial) {
    __shared__ double scratch[32];
    double acc = 0.0;
    MPC_GRID_STRIDE(i, n) {
        const double v = (double)to_f32(x[i]);
        acc += v * v;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

#define MPC_NORM_PARTIAL(T, TN)                                                                              \
    extern "C" __global__ void global_norm_partial_##TN(const T* x, i64 n, double* partial) {               \
        norm_partial<T>(x, n, partial);                                                                      \
    }                                                                                                        \
    MPC_EXPORT(global_norm_partial_##TN)

MPC_NORM_PARTIAL(float, f32)
MPC_NORM_PARTIAL(__half, f16)
MPC_NORM_PARTIAL(__nv_bfloat16, bf16)

// The sum of parts[0..count) by one block (the other blocks do nothing).
__device__ __forceinline__ double sum_parts(const double* partial, i64 parts) {
    __shared__ double scratch[32];
    double acc = 0.0;
    if (blockIdx.x == 0) {
        for (i64 i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
    }
    return block_sum(acc, scratch);
}

extern "C" __global__ void global_norm_finish_f32(const double* partial, i64 parts, float* out) {
    const double total = sum_parts(partial, parts);
    if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = (float)sqrt(total);
}
MPC_EXPORT(global_norm_finish_f32)

// ---------------------------------------------------------------------------
// found_inf_<t>(const T* x, i64 n, u32* flag): found_inf(g1, ..., gn) as one
// launch per input into the same flag, which is the f32 output seen as its
// bits: set it to 0.0 first (constant_f32, or zeroed memory); a launch that
// sees an inf or NaN ORs in 0x3f800000, the bits of 1.0f. Exact.
// ---------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ void found_inf(const T* x, i64 n, u32* flag) {
    bool bad = false;
    MPC_GRID_STRIDE(i, n) { bad = bad || !isfinite(to_f32(x[i])); }
    if (bad) atomicOr(flag, 0x3f800000u);
}

#define MPC_FOUND_INF(T, TN)                                                                           \
    extern "C" __global__ void found_inf_##TN(const T* x, i64 n, u32* flag) { found_inf<T>(x, n, flag); } \
    MPC_EXPORT(found_inf_##TN)

MPC_FOUND_INF(float, f32)
MPC_FOUND_INF(__half, f16)
MPC_FOUND_INF(__nv_bfloat16, bf16)
