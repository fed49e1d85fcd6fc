// Local response normalisation across channels (ONNX LRN) of x [N, C, S...]
// and its gradient (src/exec/cpu/nn.rs `lrn`, `lrn_grad`, `LrnHyper`). A
// thread per element recomputes the window sums it needs.
//
// With before = ⌊(size-1)/2⌋, after = ⌈(size-1)/2⌉ (the host passes both),
// scale = f32(alpha / size) (f64, rounded once), beta and bias rounded to
// f32: d_c = bias + scale·Σ_{c' ∈ [c - before, c + after] ∩ [0, C)} x_c'²,
// y = x / powf(d, beta);
// dx_j = dy_j·powf(d_j, -beta) - (2·scale·beta)·x_j·Σ_c t_c over the
// channels c whose window holds j (c ∈ [j - after, j + before]), t_c = dy_c
// · x_c · powf(d_c, -beta - 1).
//
// Numerics: the CPU's f32 operations in its order, sums from -0.0 in channel
// order (Rust's f32 `sum`). Only powf can differ: CUDA's is within 2 ulp, the
// emulation uses the host's, as the CPU does (bit-exact there).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ float lrn_den(const T* x, i64 at0, i64 ch, i64 c, i64 s, i64 before, i64 after,
                                         float scale, float bias) {
    const i64 lo = ch - before < 0 ? 0 : ch - before;
    const i64 hi = ch + after + 1 < c ? ch + after + 1 : c;
    float sq = -0.0f;
    for (i64 w = lo; w < hi; ++w) {
        const float v = to_f32(x[at0 + w * s]);
        sq += v * v;
    }
    return bias + scale * sq;
}

// ---------------------------------------------------------------------------
// lrn_<t>(const T* x, T* y, i64 n, i64 c, i64 s, i64 before, i64 after,
// double alpha, i64 size, double beta, double bias): work = N·C·S.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void lrn_fwd(const T* x, T* y, i64 n, i64 c, i64 s, i64 before, i64 after, double alpha,
                                        i64 size, double beta, double bias) {
    const float scale = (float)(alpha / (double)size), b = (float)beta, k = (float)bias;
    MPC_GRID_STRIDE(i, n * c * s) {
        const i64 p = i % s, ch = (i / s) % c, img = i / (s * c);
        const i64 at0 = img * c * s + p;
        const float d = lrn_den(x, at0, ch, c, s, before, after, scale, k);
        y[i] = from_f32<T>(to_f32(x[i]) / powf(d, b));
    }
}

// ---------------------------------------------------------------------------
// lrn_grad_<t>(const T* dy, const T* x, T* dx, i64 n, i64 c, i64 s, i64
// before, i64 after, double alpha, i64 size, double beta, double bias):
// work = N·C·S.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void lrn_bwd(const T* dy, const T* x, T* dx, i64 n, i64 c, i64 s, i64 before, i64 after,
                                        double alpha, i64 size, double beta, double bias) {
    const float scale = (float)(alpha / (double)size), b = (float)beta, k = (float)bias;
    const float kk = 2.0f * scale * b;
    MPC_GRID_STRIDE(i, n * c * s) {
        const i64 p = i % s, j = (i / s) % c, img = i / (s * c);
        const i64 at0 = img * c * s + p;
        // The channels whose window holds j: [j - after, j + before].
        const i64 lo = j - after < 0 ? 0 : j - after;
        const i64 hi = j + before + 1 < c ? j + before + 1 : c;
        float sum = -0.0f;
        for (i64 w = lo; w < hi; ++w) {
            const float dw = lrn_den(x, at0, w, c, s, before, after, scale, k);
            sum += to_f32(dy[at0 + w * s]) * to_f32(x[at0 + w * s]) * powf(dw, -b - 1.0f);
        }
        const float dj = lrn_den(x, at0, j, c, s, before, after, scale, k);
        dx[i] = from_f32<T>(to_f32(dy[i]) * powf(dj, -b) - kk * to_f32(x[i]) * sum);
    }
}

#define MPC_LRN(T, TN)                                                                                              \
    extern "C" __global__ void lrn_##TN(const T* x, T* y, i64 n, i64 c, i64 s, i64 before, i64 after, double alpha, \
                                        i64 size, double beta, double bias) {                                       \
        lrn_fwd<T>(x, y, n, c, s, before, after, alpha, size, beta, bias);                                          \
    }                                                                                                               \
    MPC_EXPORT(lrn_##TN)                                                                                            \
    extern "C" __global__ void lrn_grad_##TN(const T* dy, const T* x, T* dx, i64 n, i64 c, i64 s, i64 before,       \
                                             i64 after, double alpha, i64 size, double beta, double bias) {         \
        lrn_bwd<T>(dy, x, dx, n, c, s, before, after, alpha, size, beta, bias);                                     \
    }                                                                                                               \
    MPC_EXPORT(lrn_grad_##TN)

MPC_LRN(float, f32)
MPC_LRN(__half, f16)
MPC_LRN(__nv_bfloat16, bf16)
