// Losses: cross_entropy (mean over rows) and mse, and their gradients, with
// the CPU reference's formulas (src/exec/cpu/nn.rs): per-row or
// per-element terms in f32, the mean in f64, rounded once to the output.
//
// The means take two launches: <loss>_partial_* writes one f64 partial sum
// per block to `partial[blockIdx.x]` (gridDim.x slots of scratch), then
// loss_mean_<t>(partial, parts = that grid size, count, out) with one block
// writes out[0] = T(total / count), a single rounding from f64.
//
// Where results can differ from the CPU:
// - cross_entropy's log-sum-exp: a warp per row takes the max (exact) and
//   sums exp(x - max) in f32 as 32 strided partial sums and a tree, where the
//   CPU adds in column order; expf and logf are CUDA's (within 2 ulp).
//   Expect the row terms (and the gradient) to differ by a few f32 ulp.
// - the f64 sums of the means run in another order (rows/elements per
//   thread or warp, then a tree); the f64 total may differ in its last
//   bits, which the rounding to f32 almost always hides.
// - a label outside [0, classes) is an error on the CPU; here that row's
//   loss term and gradient row are NaN (found_inf then skips the step).
// - mse_partial and mse_grad are elementwise IEEE operations in the CPU's
//   order: the terms are bit for bit the CPU's.
#include "common.cuh"

// The log-sum-exp of a row of `classes` logits, by a whole warp; every lane
// returns the same value. max ignores NaN like the CPU's f32::max fold.
template <typename T> __device__ __forceinline__ float row_lse(const T* row, i64 classes, int lane) {
    float m = -mpc_inf_f32();
    for (i64 k = lane; k < classes; k += MPC_WARP) m = fmaxf(m, to_f32(row[k]));
    m = warp_max_all(m);
    float s = 0.0f;
    for (i64 k = lane; k < classes; k += MPC_WARP) s += expf(to_f32(row[k]) - m);
    s = warp_sum_all(s);
    return m + logf(s);
}

__device__ __forceinline__ i64 label_value(i32 v) { return (i64)v; }
__device__ __forceinline__ i64 label_value(i64 v) { return v; }

// A row's loss term, lse(row) - row[label] in f32 (NaN for a bad label).
template <typename T> __device__ __forceinline__ float ce_term(const T* row, float lse, i64 l, i64 classes) {
    return (l >= 0 && l < classes) ? lse - to_f32(row[l]) : mpc_nan_f32();
}

// A row's gradient s (softmax(row) - onehot(label)) into `out`, by a warp.
template <typename T>
__device__ __forceinline__ void ce_grad_row(const T* row, float lse, i64 l, i64 classes, float s, T* out, int lane) {
    const bool ok = l >= 0 && l < classes;
    for (i64 k = lane; k < classes; k += MPC_WARP) {
        const float p = expf(to_f32(row[k]) - lse);
        const float g = ok ? s * (p - (k == l ? 1.0f : 0.0f)) : mpc_nan_f32();
        out[k] = from_f32<T>(g);
    }
}

// ---------------------------------------------------------------------------
// cross_entropy_partial_<t>_<l>(const T* logits, const L* labels, i64 rows,
//     i64 classes, double* partial)
// A warp per row (logits [rows, classes] row-major, labels [rows]): the row's
// term lse(row) - row[label] in f32, added in f64; block b writes the sum of
// its rows' terms to partial[b]. Then loss_mean_<t>(partial, gridDim.x,
// rows, out).
// ---------------------------------------------------------------------------
template <typename T, typename L>
__device__ __forceinline__ void ce_partial(const T* logits, const L* labels, i64 rows, i64 classes, double* partial) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x % MPC_WARP;
    const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / MPC_WARP;
    const i64 warps = ((i64)blockDim.x * gridDim.x) / MPC_WARP;
    double acc = 0.0;
    for (i64 r = warp; r < rows; r += warps) {
        const T* row = logits + r * classes;
        const float lse = row_lse(row, classes, lane);
        const i64 l = label_value(labels[r]);
        if (lane == 0) acc += (double)ce_term(row, lse, l, classes);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// ---------------------------------------------------------------------------
// cross_entropy_grad_<t>_<l>(const float* dloss, const T* logits,
//     const L* labels, i64 rows, i64 classes, T* dx)
// dx = s (softmax(row) - onehot(label)) with s = dloss / rows in f32 and
// softmax = exp(x - lse(row)), a warp per row. dloss is the f32 scalar the
// graph's seed gives (the launcher casts a low-type dloss to f32 first).
// ---------------------------------------------------------------------------
template <typename T, typename L>
__device__ __forceinline__ void ce_grad(const float* dloss, const T* logits, const L* labels, i64 rows, i64 classes,
                                        T* dx) {
    const int lane = threadIdx.x % MPC_WARP;
    const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / MPC_WARP;
    const i64 warps = ((i64)blockDim.x * gridDim.x) / MPC_WARP;
    const float s = dloss[0] / (float)rows;
    for (i64 r = warp; r < rows; r += warps) {
        const T* row = logits + r * classes;
        ce_grad_row(row, row_lse(row, classes, lane), label_value(labels[r]), classes, s, dx + r * classes, lane);
    }
}

// ---------------------------------------------------------------------------
// cross_entropy_fused_<t>_<l>(const float* dloss, const T* logits,
//     const L* labels, i64 rows, i64 classes, T* dx, double* partial)
// cross_entropy_partial and cross_entropy_grad in one launch (a pair that
// src/exec/fuse.rs finds): each warp computes a row's lse once, adds the
// row's term to its block's partial sum and writes the row's gradient.
// Launched on cross_entropy_partial's grid, every block sums the same rows
// in the same order, so with loss_mean after it the loss and dx are the
// unfused kernels' bits.
// ---------------------------------------------------------------------------
template <typename T, typename L>
__device__ __forceinline__ void ce_fused(const float* dloss, const T* logits, const L* labels, i64 rows, i64 classes,
                                         T* dx, double* partial) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x % MPC_WARP;
    const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / MPC_WARP;
    const i64 warps = ((i64)blockDim.x * gridDim.x) / MPC_WARP;
    const float s = dloss[0] / (float)rows;
    double acc = 0.0;
    for (i64 r = warp; r < rows; r += warps) {
        const T* row = logits + r * classes;
        const float lse = row_lse(row, classes, lane);
        const i64 l = label_value(labels[r]);
        if (lane == 0) acc += (double)ce_term(row, lse, l, classes);
        ce_grad_row(row, lse, l, classes, s, dx + r * classes, lane);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

#define MPC_CE(T, TN, L, LN)                                                                                    \
    extern "C" __global__ void cross_entropy_partial_##TN##_##LN(const T* logits, const L* labels, i64 rows,     \
                                                                 i64 classes, double* partial) {                \
        ce_partial<T, L>(logits, labels, rows, classes, partial);                                               \
    }                                                                                                           \
    MPC_EXPORT(cross_entropy_partial_##TN##_##LN)                                                               \
    extern "C" __global__ void cross_entropy_grad_##TN##_##LN(const float* dloss, const T* logits, const L* labels, \
                                                              i64 rows, i64 classes, T* dx) {                   \
        ce_grad<T, L>(dloss, logits, labels, rows, classes, dx);                                                \
    }                                                                                                           \
    MPC_EXPORT(cross_entropy_grad_##TN##_##LN)                                                                  \
    extern "C" __global__ void cross_entropy_fused_##TN##_##LN(const float* dloss, const T* logits,             \
                                                               const L* labels, i64 rows, i64 classes, T* dx,   \
                                                               double* partial) {                               \
        ce_fused<T, L>(dloss, logits, labels, rows, classes, dx, partial);                                      \
    }                                                                                                           \
    MPC_EXPORT(cross_entropy_fused_##TN##_##LN)

MPC_CE(float, f32, i32, i32)
MPC_CE(float, f32, i64, i64)
MPC_CE(__half, f16, i32, i32)
MPC_CE(__half, f16, i64, i64)
MPC_CE(__nv_bfloat16, bf16, i32, i32)
MPC_CE(__nv_bfloat16, bf16, i64, i64)

// ---------------------------------------------------------------------------
// mse_partial_<t>(const T* p, const T* t, i64 n, double* partial): block b
// writes the f64 sum of its elements' (p - t)^2, each squared in f32 as the
// CPU does, to partial[b]. Then loss_mean_<t>(partial, gridDim.x, n, out).
// mse_grad_<t>(const float* dloss, const T* p, const T* t, i64 n, T* dx):
// dx = s (p - t) with s = dloss * 2 / n in f32 (dloss f32, as above).
// ---------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ void mse_partial(const T* p, const T* t, i64 n, double* partial) {
    __shared__ double scratch[32];
    double acc = 0.0;
    MPC_GRID_STRIDE(i, n) {
        const float d = to_f32(p[i]) - to_f32(t[i]);
        acc += (double)(d * d);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename T> __device__ __forceinline__ void mse_grad(const float* dloss, const T* p, const T* t, i64 n, T* dx) {
    const float s = dloss[0] * 2.0f / (float)n;
    MPC_GRID_STRIDE(i, n) { dx[i] = from_f32<T>(s * (to_f32(p[i]) - to_f32(t[i]))); }
}

// loss_mean_<t>(const double* partial, i64 parts, double count, T* out), one
// block: out[0] = T(sum of partial[0..parts) / count), rounded once.
template <typename T> __device__ __forceinline__ void loss_mean(const double* partial, i64 parts, double count, T* out) {
    __shared__ double scratch[32];
    double acc = 0.0;
    if (blockIdx.x == 0) {
        for (i64 i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
    }
    acc = block_sum(acc, scratch);
    if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = from_f64<T>(acc / count);
}

#define MPC_MSE_MEAN(T, TN)                                                                                    \
    extern "C" __global__ void mse_partial_##TN(const T* p, const T* t, i64 n, double* partial) {             \
        mse_partial<T>(p, t, n, partial);                                                                      \
    }                                                                                                          \
    MPC_EXPORT(mse_partial_##TN)                                                                               \
    extern "C" __global__ void mse_grad_##TN(const float* dloss, const T* p, const T* t, i64 n, T* dx) {      \
        mse_grad<T>(dloss, p, t, n, dx);                                                                       \
    }                                                                                                          \
    MPC_EXPORT(mse_grad_##TN)                                                                                  \
    extern "C" __global__ void loss_mean_##TN(const double* partial, i64 parts, double count, T* out) {       \
        loss_mean<T>(partial, parts, count, out);                                                              \
    }                                                                                                          \
    MPC_EXPORT(loss_mean_##TN)

MPC_MSE_MEAN(float, f32)
MPC_MSE_MEAN(__half, f16)
MPC_MSE_MEAN(__nv_bfloat16, bf16)
