// Batch normalisation over the channel axis of x [N, C, S...] (S the
// product of the axes after C): batch_norm (training mode, batch
// statistics), frozen_batch_norm (given statistics) and their gradients
// (src/exec/cpu/nn.rs). The per-channel vectors (gamma, beta, mean, var and
// the f32 sums dgamma, dbeta) are f32 here: the launcher widens a low-type
// one into f32 scratch first (exact) and rounds a per-channel output to its
// type afterwards (one rounding), as the CPU's `to_f32_vec`/`from_f32` do.
//
// Numerics: none differ from the CPU. The per-channel sums (mean, var, and
// the gradient's Σdy and Σdy·x̂) take a thread per channel adding in the
// CPU's order (image by image, then position), from 0; every other value is
// the CPU's f32 expression in its order; rstd = 1 / sqrtf(var + f32(eps)).
// Bit-exact. (A thread per channel is slow on a GPU for large N·S; a
// parallel sum would differ from the CPU by the order of its additions.)
#include "common.cuh"

// ---------------------------------------------------------------------------
// batch_norm_stats_<t>(const T* x, float* mean, float* var, i64 n, i64 c,
// i64 s): work = C. mean = Σx / M, var = Σ(x - mean)² / M (biased), M = N·S.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void bn_stats(const T* x, float* mean, float* var, i64 n, i64 c, i64 s) {
    const float count = (float)(n * s);
    MPC_GRID_STRIDE(ch, c) {
        float m = 0.0f;
        for (i64 b = 0; b < n; ++b)
            for (i64 k = 0; k < s; ++k) m += to_f32(x[(b * c + ch) * s + k]);
        m /= count;
        float q = 0.0f;
        for (i64 b = 0; b < n; ++b)
            for (i64 k = 0; k < s; ++k) {
                const float v = to_f32(x[(b * c + ch) * s + k]);
                q += (v - m) * (v - m);
            }
        mean[ch] = m;
        var[ch] = q / count;
    }
}

// ---------------------------------------------------------------------------
// batch_norm_apply_<t>(const T* x, const float* gamma, const float* beta,
// const float* mean, const float* var, T* y, i64 n, i64 c, i64 s, double
// eps): work = N·C·S. y = (x - mean)·rstd·gamma + beta (both batch norms).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void bn_apply(const T* x, const float* gamma, const float* beta, const float* mean,
                                         const float* var, T* y, i64 n, i64 c, i64 s, double eps) {
    const float e = (float)eps;
    MPC_GRID_STRIDE(i, n * c * s) {
        const i64 ch = (i / s) % c;
        const float rstd = 1.0f / sqrtf(var[ch] + e);
        y[i] = from_f32<T>((to_f32(x[i]) - mean[ch]) * rstd * gamma[ch] + beta[ch]);
    }
}

// ---------------------------------------------------------------------------
// batch_norm_grad_params_<t>(const T* dy, const T* x, const float* mean,
// const float* var, float* dgamma, float* dbeta, i64 n, i64 c, i64 s,
// double eps): work = C. dbeta = Σdy, dgamma = Σ dy·(x - mean)·rstd (both
// batch norms' gradients).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void bn_grad_params(const T* dy, const T* x, const float* mean, const float* var,
                                               float* dgamma, float* dbeta, i64 n, i64 c, i64 s, double eps) {
    const float e = (float)eps;
    MPC_GRID_STRIDE(ch, c) {
        const float rstd = 1.0f / sqrtf(var[ch] + e), mu = mean[ch];
        float dg = 0.0f, db = 0.0f;
        for (i64 b = 0; b < n; ++b)
            for (i64 k = 0; k < s; ++k) {
                const i64 i = (b * c + ch) * s + k;
                const float g = to_f32(dy[i]);
                db += g;
                dg += g * (to_f32(x[i]) - mu) * rstd;
            }
        dgamma[ch] = dg;
        dbeta[ch] = db;
    }
}

// ---------------------------------------------------------------------------
// batch_norm_grad_dx_<t>(const T* dy, const T* x, const float* gamma,
// const float* mean, const float* var, const float* dgamma, const float*
// dbeta, T* dx, i64 n, i64 c, i64 s, double eps): work = N·C·S.
// dx = gamma·rstd / M · (M·dy - dbeta - x̂·dgamma), x̂ = (x - mean)·rstd.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void bn_grad_dx(const T* dy, const T* x, const float* gamma, const float* mean,
                                           const float* var, const float* dgamma, const float* dbeta, T* dx, i64 n,
                                           i64 c, i64 s, double eps) {
    const float e = (float)eps, m = (float)(n * s);
    MPC_GRID_STRIDE(i, n * c * s) {
        const i64 ch = (i / s) % c;
        const float rstd = 1.0f / sqrtf(var[ch] + e);
        const float xhat = (to_f32(x[i]) - mean[ch]) * rstd;
        dx[i] = from_f32<T>(gamma[ch] * rstd / m * (m * to_f32(dy[i]) - dbeta[ch] - xhat * dgamma[ch]));
    }
}

// ---------------------------------------------------------------------------
// frozen_batch_norm_grad_dx_<t>(const T* dy, const float* gamma, const
// float* var, T* dx, i64 n, i64 c, i64 s, double eps): work = N·C·S.
// dx = dy·gamma·rstd.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void fbn_grad_dx(const T* dy, const float* gamma, const float* var, T* dx, i64 n, i64 c,
                                            i64 s, double eps) {
    const float e = (float)eps;
    MPC_GRID_STRIDE(i, n * c * s) {
        const i64 ch = (i / s) % c;
        const float rstd = 1.0f / sqrtf(var[ch] + e);
        dx[i] = from_f32<T>(to_f32(dy[i]) * gamma[ch] * rstd);
    }
}

#define MPC_BNORM(T, TN)                                                                                            \
    extern "C" __global__ void batch_norm_stats_##TN(const T* x, float* mean, float* var, i64 n, i64 c, i64 s) {    \
        bn_stats<T>(x, mean, var, n, c, s);                                                                         \
    }                                                                                                               \
    MPC_EXPORT(batch_norm_stats_##TN)                                                                               \
    extern "C" __global__ void batch_norm_apply_##TN(const T* x, const float* gamma, const float* beta,             \
                                                     const float* mean, const float* var, T* y, i64 n, i64 c,       \
                                                     i64 s, double eps) {                                           \
        bn_apply<T>(x, gamma, beta, mean, var, y, n, c, s, eps);                                                    \
    }                                                                                                               \
    MPC_EXPORT(batch_norm_apply_##TN)                                                                               \
    extern "C" __global__ void batch_norm_grad_params_##TN(const T* dy, const T* x, const float* mean,              \
                                                           const float* var, float* dgamma, float* dbeta, i64 n,    \
                                                           i64 c, i64 s, double eps) {                              \
        bn_grad_params<T>(dy, x, mean, var, dgamma, dbeta, n, c, s, eps);                                           \
    }                                                                                                               \
    MPC_EXPORT(batch_norm_grad_params_##TN)                                                                         \
    extern "C" __global__ void batch_norm_grad_dx_##TN(const T* dy, const T* x, const float* gamma,                 \
                                                       const float* mean, const float* var, const float* dgamma,    \
                                                       const float* dbeta, T* dx, i64 n, i64 c, i64 s,              \
                                                       double eps) {                                                \
        bn_grad_dx<T>(dy, x, gamma, mean, var, dgamma, dbeta, dx, n, c, s, eps);                                    \
    }                                                                                                               \
    MPC_EXPORT(batch_norm_grad_dx_##TN)                                                                             \
    extern "C" __global__ void frozen_batch_norm_grad_dx_##TN(const T* dy, const float* gamma, const float* var,    \
                                                              T* dx, i64 n, i64 c, i64 s, double eps) {             \
        fbn_grad_dx<T>(dy, gamma, var, dx, n, c, s, eps);                                                           \
    }                                                                                                               \
    MPC_EXPORT(frozen_batch_norm_grad_dx_##TN)

MPC_BNORM(float, f32)
MPC_BNORM(__half, f16)
MPC_BNORM(__nv_bfloat16, bf16)
