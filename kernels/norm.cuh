// The row passes that fused kernels share with norm.cu: layer_norm's
// forward pass and softmax. A generated kernel that fuses an elementwise
// chain with the layer_norm after it (src/exec/cuda/fused.rs) writes the
// chain's output row by row with the same warp-per-row, lane-strided
// mapping, so each lane of ln_forward reads back only elements it wrote
// itself, and the statistics are those of the unfused layer_norm bit for
// bit; one that ends in a softmax recomputes the chain at each read.
#pragma once
#include "common.cuh"

#define MPC_WARP_ROWS                                                                \
    const int lane = threadIdx.x % MPC_WARP;                                         \
    const i64 warp0 = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / MPC_WARP;       \
    const i64 warps = ((i64)blockDim.x * gridDim.x) / MPC_WARP;

// ---------------------------------------------------------------------------
// layer_norm_<x>_<g>(const X* x, const G* gamma, const G* beta, X* y,
//     float* mean, float* rstd, i64 rows, i64 width, double eps)
// Over the last axis of x [rows, width]: m = Σx / width, var = Σ(x - m)² /
// width (biased), rstd = 1 / sqrtf(var + f32(eps)), y = (x - m)·rstd·γ + β.
// Launch a warp per row (work = rows · 32).
// ---------------------------------------------------------------------------
template <typename X, typename G>
__device__ __forceinline__ void ln_forward(const X* x, const G* gamma, const G* beta, X* y, float* mean, float* rstd,
                                           i64 rows, i64 width, double eps) {
    MPC_WARP_ROWS
    const float w = (float)width, e = (float)eps;
    for (i64 r = warp0; r < rows; r += warps) {
        const X* row = x + r * width;
        float s = -0.0f;
        for (i64 k = lane; k < width; k += MPC_WARP) s += to_f32(row[k]);
        const float m = warp_sum_all(s) / w;
        float q = -0.0f;
        for (i64 k = lane; k < width; k += MPC_WARP) {
            const float d = to_f32(row[k]) - m;
            q += d * d;
        }
        const float var = warp_sum_all(q) / w;
        const float rs = 1.0f / sqrtf(var + e);
        for (i64 k = lane; k < width; k += MPC_WARP) {
            y[r * width + k] = from_f32<X>((to_f32(row[k]) - m) * rs * to_f32(gamma[k]) + to_f32(beta[k]));
        }
        if (lane == 0) {
            mean[r] = m;
            rstd[r] = rs;
        }
    }
}


// softmax along rows, as softmax_<t> of norm.cu (see there): `load(k)` is
// element k of x widened to f32. The unfused kernel loads from memory; a
// fused kernel (src/exec/cuda/fused.rs) computes the elementwise chain that
// made x instead, rounded to x's type, so every pass sees the same bits.
template <typename T, typename Load>
__device__ __forceinline__ void softmax_rows_with(Load load, T* y, i64 outer, i64 len, i64 inner, i64 causal) {
    MPC_WARP_ROWS
    for (i64 r = warp0; r < outer * inner; r += warps) {
        const i64 o = r / inner, i = r % inner;
        const i64 base = o * len * inner + i;
        const i64 visible = causal > 0 ? o % causal + 1 : len;
        float m = -mpc_inf_f32();
        for (i64 j = lane; j < visible; j += MPC_WARP) m = fmaxf(m, load(base + j * inner));
        m = warp_max_all(m);
        float s = -0.0f;
        for (i64 j = lane; j < visible; j += MPC_WARP) s += expf(load(base + j * inner) - m);
        s = warp_sum_all(s);
        for (i64 j = lane; j < len; j += MPC_WARP) {
            const float v = j < visible ? expf(load(base + j * inner) - m) / s : 0.0f;
            y[base + j * inner] = from_f32<T>(v);
        }
    }
}
