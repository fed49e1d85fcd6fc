// Row normalisations: layer_norm and softmax, with their gradients
// (src/exec/cpu/nn.rs). A warp per row: the row's elements are read in
// lane-strided order, statistics are f32, the output rounds once.
//
// Where results can differ from the CPU: the row sums. The CPU adds a row's
// terms in index order (Rust's f32 `sum`, starting from -0.0); a warp adds
// them as 32 lane-strided partial sums (each in index order) and a butterfly
// (`warp_sum_all`, every lane gets the same bits). Every term is computed
// from the same f32 operations as on the CPU, so only the order of these
// additions differs: a sum of n terms is within 2·γ(n-1)·Σ|term| of the
// CPU's (γ(k) = k·2^-24/(1 - k·2^-24)), and what is computed from it
// inherits that (tests/cuda_ops.rs derives each output's bound). The maxima
// are exact (fmaxf ignores NaN as f32::max does). expf is CUDA's (within 2
// ulp) on a GPU and the host libm in the emulation, as on the CPU.
//
// layer_norm's dgamma and dbeta are column sums over the rows: a thread per
// column adds in row order, as the CPU does, so they are the CPU's bits.
#include "common.cuh"

// MPC_WARP_ROWS and ln_forward are in norm.cuh (fused kernels call ln_forward too).
#include "norm.cuh"
// OpAdd, for layer_norm_grad_add (the residual add fused into the gradient).
#include "scalar.cuh"

// ---------------------------------------------------------------------------
// layer_norm_grad_<x>_<g>(const X* dy, const X* x, const G* gamma,
//     const float* mean, const float* rstd, X* dx, i64 rows, i64 width)
// dx = rstd (ĝ - Σĝ/width - x̂ Σĝx̂/width), ĝ = dy·γ, x̂ = (x - mean)·rstd;
// a warp per row (work = rows · 32).
// layer_norm_grad_add_<x>_<g>(dy, x, gamma, mean, rstd, const X* dres,
//     X* out, i64 rows, i64 width, i64 dx_first)
// out = dres + dx (dx + dres when dx_first) without storing dx: the
// residual add after a transformer's layer_norm_grad (src/exec/fuse.rs),
// the same bits as layer_norm_grad then add_<x>.
// layer_norm_grad_params_<x>_<g>(const X* dy, const X* x, const float* mean,
//     const float* rstd, G* dgamma, G* dbeta, i64 rows, i64 width)
// dgamma = Σ_rows dy·x̂, dbeta = Σ_rows dy; a thread per column, rows in
// order (work = width).
// ---------------------------------------------------------------------------
// `store(i, d)` takes dx's element i, rounded to X: the unfused kernel
// stores it, a fused one adds the residual's gradient first.
template <typename X, typename G, typename Store>
__device__ __forceinline__ void ln_backward_with(const X* dy, const X* x, const G* gamma, const float* mean,
                                                 const float* rstd, i64 rows, i64 width, Store store) {
    MPC_WARP_ROWS
    const float w = (float)width;
    for (i64 r = warp0; r < rows; r += warps) {
        const X* xr = x + r * width;
        const X* dr = dy + r * width;
        const float mu = mean[r], rs = rstd[r];
        float s1 = -0.0f, s2 = -0.0f;
        for (i64 k = lane; k < width; k += MPC_WARP) {
            const float gh = to_f32(dr[k]) * to_f32(gamma[k]);
            s1 += gh;
            s2 += gh * ((to_f32(xr[k]) - mu) * rs);
        }
        const float m1 = warp_sum_all(s1) / w;
        const float m2 = warp_sum_all(s2) / w;
        for (i64 k = lane; k < width; k += MPC_WARP) {
            const float gh = to_f32(dr[k]) * to_f32(gamma[k]);
            const float xhat = (to_f32(xr[k]) - mu) * rs;
            store(r * width + k, from_f32<X>(rs * (gh - m1 - xhat * m2)));
        }
    }
}

template <typename X, typename G>
__device__ __forceinline__ void ln_backward(const X* dy, const X* x, const G* gamma, const float* mean,
                                            const float* rstd, X* dx, i64 rows, i64 width) {
    ln_backward_with<X, G>(dy, x, gamma, mean, rstd, rows, width, [&](i64 i, X d) { dx[i] = d; });
}

// The add after it as add_<x> (elementwise.cu) computes it, in the add's
// operand order (dx_first: dx is its first operand), from dx as stored.
template <typename X, typename G>
__device__ __forceinline__ void ln_backward_add(const X* dy, const X* x, const G* gamma, const float* mean,
                                                const float* rstd, const X* dres, X* out, i64 rows, i64 width,
                                                i64 dx_first) {
    ln_backward_with<X, G>(dy, x, gamma, mean, rstd, rows, width, [&](i64 i, X d) {
        const float a = to_f32(d), b = to_f32(dres[i]);
        out[i] = from_f32<X>(dx_first ? OpAdd::f(a, b) : OpAdd::f(b, a));
    });
}

template <typename X, typename G>
__device__ __forceinline__ void ln_params(const X* dy, const X* x, const float* mean, const float* rstd, G* dgamma,
                                          G* dbeta, i64 rows, i64 width) {
    MPC_GRID_STRIDE(k, width) {
        float dg = 0.0f, db = 0.0f;
        for (i64 r = 0; r < rows; ++r) {
            const float d = to_f32(dy[r * width + k]);
            dg += d * ((to_f32(x[r * width + k]) - mean[r]) * rstd[r]);
            db += d;
        }
        dgamma[k] = from_f32<G>(dg);
        dbeta[k] = from_f32<G>(db);
    }
}

#define MPC_LN(X, XN, G, GN)                                                                                       \
    extern "C" __global__ void layer_norm_##XN##_##GN(const X* x, const G* gamma, const G* beta, X* y, float* mean, \
                                                      float* rstd, i64 rows, i64 width, double eps) {               \
        ln_forward<X, G>(x, gamma, beta, y, mean, rstd, rows, width, eps);                                          \
    }                                                                                                               \
    MPC_EXPORT(layer_norm_##XN##_##GN)                                                                              \
    extern "C" __global__ void layer_norm_grad_##XN##_##GN(const X* dy, const X* x, const G* gamma,                 \
                                                           const float* mean, const float* rstd, X* dx, i64 rows,   \
                                                           i64 width) {                                             \
        ln_backward<X, G>(dy, x, gamma, mean, rstd, dx, rows, width);                                               \
    }                                                                                                               \
    MPC_EXPORT(layer_norm_grad_##XN##_##GN)                                                                         \
    extern "C" __global__ void layer_norm_grad_add_##XN##_##GN(const X* dy, const X* x, const G* gamma,             \
                                                               const float* mean, const float* rstd, const X* dres, \
                                                               X* out, i64 rows, i64 width, i64 dx_first) {         \
        ln_backward_add<X, G>(dy, x, gamma, mean, rstd, dres, out, rows, width, dx_first);                          \
    }                                                                                                               \
    MPC_EXPORT(layer_norm_grad_add_##XN##_##GN)                                                                     \
    extern "C" __global__ void layer_norm_grad_params_##XN##_##GN(const X* dy, const X* x, const float* mean,       \
                                                                  const float* rstd, G* dgamma, G* dbeta, i64 rows, \
                                                                  i64 width) {                                      \
        ln_params<X, G>(dy, x, mean, rstd, dgamma, dbeta, rows, width);                                             \
    }                                                                                                               \
    MPC_EXPORT(layer_norm_grad_params_##XN##_##GN)

// x and gamma may differ in type (the passes keep some params in f32).
#define MPC_LN_ALL(X, XN)                 \
    MPC_LN(X, XN, float, f32)             \
    MPC_LN(X, XN, __half, f16)            \
    MPC_LN(X, XN, __nv_bfloat16, bf16)

MPC_LN_ALL(float, f32)
MPC_LN_ALL(__half, f16)
MPC_LN_ALL(__nv_bfloat16, bf16)

// ---------------------------------------------------------------------------
// softmax_<t>(const T* x, T* y, i64 outer, i64 len, i64 inner, i64 causal)
// Along an axis of length `len`, x seen as [outer, len, inner]: row (o, i)
// holds the elements (o·len + j)·inner + i, j < len. y = expf(x - max) / Σ
// over the row. With causal > 0 (the number of query rows of each matrix;
// inner is 1), entry j of row o is masked when j > o mod causal: it takes no
// part in the max and the sum, and its output is 0. A warp per row (work =
// outer · inner · 32).
// softmax_grad_<dy>_<y>(const DY* dy, const Y* y, DY* dx, i64 outer,
//     i64 len, i64 inner): dx = y (dy - Σ dy·y) along the same rows (dy and
//     y may differ in type, as the CPU reference allows; dx is dy's).
// ---------------------------------------------------------------------------
// softmax_rows_with (the rows, the max, the sum and the output in
// norm.cuh) reads x through `load`; here a load from memory.
template <typename T>
__device__ __forceinline__ void softmax_rows(const T* x, T* y, i64 outer, i64 len, i64 inner, i64 causal) {
    softmax_rows_with<T>([&](i64 k) { return to_f32(x[k]); }, y, outer, len, inner, causal);
}

template <typename DY, typename Y>
__device__ __forceinline__ void softmax_grad_rows(const DY* dy, const Y* y, DY* dx, i64 outer, i64 len, i64 inner) {
    MPC_WARP_ROWS
    for (i64 r = warp0; r < outer * inner; r += warps) {
        const i64 o = r / inner, i = r % inner;
        const i64 base = o * len * inner + i;
        float s = -0.0f;
        for (i64 j = lane; j < len; j += MPC_WARP) s += to_f32(dy[base + j * inner]) * to_f32(y[base + j * inner]);
        s = warp_sum_all(s);
        for (i64 j = lane; j < len; j += MPC_WARP) {
            const i64 at = base + j * inner;
            dx[at] = from_f32<DY>(to_f32(y[at]) * (to_f32(dy[at]) - s));
        }
    }
}

#define MPC_SOFTMAX(T, TN)                                                                                      \
    extern "C" __global__ void softmax_##TN(const T* x, T* y, i64 outer, i64 len, i64 inner, i64 causal) {      \
        softmax_rows<T>(x, y, outer, len, inner, causal);                                                       \
    }                                                                                                           \
    MPC_EXPORT(softmax_##TN)

MPC_SOFTMAX(float, f32)
MPC_SOFTMAX(__half, f16)
MPC_SOFTMAX(__nv_bfloat16, bf16)

// ---------------------------------------------------------------------------
// log_softmax_<t>(const T* x, T* y, i64 outer, i64 len, i64 inner)
// Along an axis of length `len`, x seen as [outer, len, inner] (rows as for
// softmax): y = x - max - logf(Σ expf(x - max)). A thread per row (work =
// outer · inner) walks the row in index order, the CPU's order
// (src/exec/cpu/nn.rs `softmax` with `log`): the max is a fold of fmaxf from
// -inf, the sum starts from -0.0 as Rust's f32 `sum` does, so every f32
// operation is the CPU's and the output rounds once. The same bits wherever
// expf/logf are the CPU's (the emulation); CUDA's are within 2 ulp.
// log_softmax_grad_<dy>_<y>(const DY* dy, const Y* y, DY* dx, i64 outer,
//     i64 len, i64 inner): dx = dy - expf(y)·Σ dy along the same rows, a
// thread per row, the sum in index order from -0.0 (dy and y may differ in
// type; dx is dy's).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void log_softmax_rows(const T* x, T* y, i64 outer, i64 len, i64 inner) {
    MPC_GRID_STRIDE(r, outer * inner) {
        const i64 o = r / inner, i = r % inner;
        const i64 base = o * len * inner + i;
        float m = -mpc_inf_f32();
        for (i64 j = 0; j < len; ++j) m = fmaxf(m, to_f32(x[base + j * inner]));
        float s = -0.0f;
        for (i64 j = 0; j < len; ++j) s += expf(to_f32(x[base + j * inner]) - m);
        const float ls = logf(s);
        for (i64 j = 0; j < len; ++j) {
            const i64 at = base + j * inner;
            y[at] = from_f32<T>(to_f32(x[at]) - m - ls);
        }
    }
}

template <typename DY, typename Y>
__device__ __forceinline__ void log_softmax_grad_rows(const DY* dy, const Y* y, DY* dx, i64 outer, i64 len,
                                                      i64 inner) {
    MPC_GRID_STRIDE(r, outer * inner) {
        const i64 o = r / inner, i = r % inner;
        const i64 base = o * len * inner + i;
        float s = -0.0f;
        for (i64 j = 0; j < len; ++j) s += to_f32(dy[base + j * inner]);
        for (i64 j = 0; j < len; ++j) {
            const i64 at = base + j * inner;
            dx[at] = from_f32<DY>(to_f32(dy[at]) - expf(to_f32(y[at])) * s);
        }
    }
}

#define MPC_LOG_SOFTMAX(T, TN)                                                                          \
    extern "C" __global__ void log_softmax_##TN(const T* x, T* y, i64 outer, i64 len, i64 inner) {      \
        log_softmax_rows<T>(x, y, outer, len, inner);                                                   \
    }                                                                                                   \
    MPC_EXPORT(log_softmax_##TN)

MPC_LOG_SOFTMAX(float, f32)
MPC_LOG_SOFTMAX(__half, f16)
MPC_LOG_SOFTMAX(__nv_bfloat16, bf16)

// The two row gradients for one (dy, y) type pair: softmax_grad_<dy>_<y>
// (a warp per row) and log_softmax_grad_<dy>_<y> (a thread per row).
#define MPC_ROW_GRADS(DY, DN, Y, YN)                                                                             \
    extern "C" __global__ void softmax_grad_##DN##_##YN(const DY* dy, const Y* y, DY* dx, i64 outer, i64 len,     \
                                                        i64 inner) {                                             \
        softmax_grad_rows<DY, Y>(dy, y, dx, outer, len, inner);                                                  \
    }                                                                                                            \
    MPC_EXPORT(softmax_grad_##DN##_##YN)                                                                         \
    extern "C" __global__ void log_softmax_grad_##DN##_##YN(const DY* dy, const Y* y, DY* dx, i64 outer, i64 len, \
                                                            i64 inner) {                                         \
        log_softmax_grad_rows<DY, Y>(dy, y, dx, outer, len, inner);                                              \
    }                                                                                                            \
    MPC_EXPORT(log_softmax_grad_##DN##_##YN)

#define MPC_ROW_GRADS_ALL(DY, DN)                  \
    MPC_ROW_GRADS(DY, DN, float, f32)              \
    MPC_ROW_GRADS(DY, DN, __half, f16)             \
    MPC_ROW_GRADS(DY, DN, __nv_bfloat16, bf16)

MPC_ROW_GRADS_ALL(float, f32)
MPC_ROW_GRADS_ALL(__half, f16)
MPC_ROW_GRADS_ALL(__nv_bfloat16, bf16)
