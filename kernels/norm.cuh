// layer_norm's forward pass, shared by norm.cu's layer_norm kernels and
// the generated kernels that fuse an elementwise chain with the
// layer_norm after it (src/exec/cuda/fused.rs): there the chain writes its
// output row by row with the same warp-per-row, lane-strided mapping, so
// each lane of ln_forward reads back only elements it wrote itself, and
// the statistics are those of the unfused layer_norm bit for bit.
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

