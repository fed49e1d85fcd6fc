// Optimizers: sgd, sgd_momentum, adam (L2 or decoupled AdamW). Each updates
// a parameter (the f32 master in mixed precision) and its state, elementwise.
//
// Numerics: the CPU reference's formulas (src/exec/cpu/optim.rs) in the
// same f32 operation order. Hyper-parameters arrive as the op's f64
// attributes and are rounded to f32 here, as the CPU's `as f32`. Adam's bias
// corrections 1 - beta^step are computed in f64 by the same repeated
// squaring as Rust's f64::powi (compiler-builtins' __powidf2), then rounded
// to f32. With --fmad=false (no contraction) and IEEE division and sqrtf,
// every result is bit for bit the CPU's.
//
// Outputs may be the inputs' own buffers (an in-place update): each element
// is read before it is written, by the same thread.
#include "common.cuh"

// ---------------------------------------------------------------------------
// sgd_<t>(const T* p, const T* g, T* p_out, i64 n, double lr, double weight_decay)
//   p' = p - lr (g + wd p)
// ---------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ void sgd_elem(const T* p, const T* g, T* p_out, i64 i, float lr, float wd) {
    const float pv = to_f32(p[i]);
    p_out[i] = from_f32<T>(pv - lr * (to_f32(g[i]) + wd * pv));
}

template <typename T> __device__ __forceinline__ void sgd(const T* p, const T* g, T* p_out, i64 n, float lr, double wd_d) {
    const float wd = (float)wd_d;
    MPC_GRID_STRIDE(i, n) { sgd_elem<T>(p, g, p_out, i, lr, wd); }
}

// ---------------------------------------------------------------------------
// sgd_momentum_<t>(const T* p, const T* g, const T* buf, T* p_out, T* buf_out,
//     i64 n, double lr, double momentum, double weight_decay)
//   buf' = momentum buf + g + wd p;  p' = p - lr buf'
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void sgd_momentum_elem(const T* p, const T* g, const T* buf, T* p_out, T* buf_out, i64 i,
                                                  float lr, float mu, float wd) {
    const float pv = to_f32(p[i]);
    const float b2 = mu * to_f32(buf[i]) + to_f32(g[i]) + wd * pv;
    buf_out[i] = from_f32<T>(b2);
    p_out[i] = from_f32<T>(pv - lr * b2);
}

template <typename T>
__device__ __forceinline__ void sgd_momentum(const T* p, const T* g, const T* buf, T* p_out, T* buf_out, i64 n,
                                             float lr, double mu_d, double wd_d) {
    const float mu = (float)mu_d, wd = (float)wd_d;
    MPC_GRID_STRIDE(i, n) { sgd_momentum_elem<T>(p, g, buf, p_out, buf_out, i, lr, mu, wd); }
}

// ---------------------------------------------------------------------------
// adam_<t>_<s>(const T* p, const T* g, const T* m, const T* v, const S* step,
//     T* p_out, T* m_out, T* v_out, i64 n, double lr, double beta1,
//     double beta2, double eps, double weight_decay, i32 decoupled)
// step: the 1-based step, a device scalar (i32 or i64). decoupled != 0:
// AdamW (p *= 1 - lr wd), else L2 (g += wd p); then
//   m' = b1 m + (1-b1) g,  v' = b2 v + (1-b2) g^2,
//   p' = p - lr (m'/bc1) / (sqrt(v'/bc2) + eps),  bc = 1 - b^step.
// A step below 1 is an error on the CPU; here it gives bc1 = 0 (inf/NaN).
// ---------------------------------------------------------------------------

// Rust's f64::powi(b, e): compiler-builtins' __powidf2, square-and-multiply.
__device__ __forceinline__ double powi_ref(double a, i32 b) {
    const bool recip = b < 0;
    u32 e = recip ? 0u - (u32)b : (u32)b;
    double r = 1.0;
    for (;;) {
        if (e & 1u) r *= a;
        e >>= 1;
        if (e == 0u) break;
        a *= a;
    }
    return recip ? 1.0 / r : r;
}

// The step as the CPU's exponent: i32::try_from(t).unwrap_or(i32::MAX).
__device__ __forceinline__ i32 step_exponent(i32 t) { return t; }
__device__ __forceinline__ i32 step_exponent(i64 t) {
    return (t >= -2147483647LL - 1 && t <= 2147483647LL) ? (i32)t : 2147483647;
}

// Adam's constants, rounded to f32 as the CPU rounds them.
struct AdamK {
    float lr, b1, b2, eps, wd, bc1, bc2;
    i32 decoupled;
};

template <typename S>
__device__ __forceinline__ AdamK adam_k(const S* step, float lr, double beta1_d, double beta2_d, double eps_d,
                                        double wd_d, i32 decoupled) {
    const i32 e = step_exponent(step[0]);
    AdamK k;
    k.lr = lr;
    k.bc1 = (float)(1.0 - powi_ref(beta1_d, e));
    k.bc2 = (float)(1.0 - powi_ref(beta2_d, e));
    k.b1 = (float)beta1_d;
    k.b2 = (float)beta2_d;
    k.eps = (float)eps_d;
    k.wd = (float)wd_d;
    k.decoupled = decoupled;
    return k;
}

template <typename T>
__device__ __forceinline__ void adam_elem(const T* p, const T* g, const T* m, const T* v, T* p_out, T* m_out, T* v_out,
                                          i64 i, const AdamK& k) {
    float pv = to_f32(p[i]);
    float gv = to_f32(g[i]);
    if (k.decoupled != 0) {
        pv *= 1.0f - k.lr * k.wd;
    } else {
        gv += k.wd * pv;
    }
    const float m2 = k.b1 * to_f32(m[i]) + (1.0f - k.b1) * gv;
    const float v2 = k.b2 * to_f32(v[i]) + (1.0f - k.b2) * gv * gv;
    p_out[i] = from_f32<T>(pv - k.lr * (m2 / k.bc1) / (sqrtf(v2 / k.bc2) + k.eps));
    m_out[i] = from_f32<T>(m2);
    v_out[i] = from_f32<T>(v2);
}

template <typename T, typename S>
__device__ __forceinline__ void adam(const T* p, const T* g, const T* m, const T* v, const S* step, T* p_out, T* m_out,
                                     T* v_out, i64 n, float lr, double beta1_d, double beta2_d, double eps_d,
                                     double wd_d, i32 decoupled) {
    const AdamK k = adam_k(step, lr, beta1_d, beta2_d, eps_d, wd_d, decoupled);
    MPC_GRID_STRIDE(i, n) { adam_elem<T>(p, g, m, v, p_out, m_out, v_out, i, k); }
}

// ---------------------------------------------------------------------------
// The multi-tensor optimizers (MPC_CHUNK's tables; per tensor: n, the
// pointers in the per-tensor kernel's order, then weight_decay as f64 bits,
// so that params without decay share the launch). The element arithmetic is
// the per-tensor kernels' (the same _elem functions), so the bits are.
// multi_sgd_<t>(tensors, chunks, chunk, double lr)           n p g p_out wd
// multi_sgd_momentum_<t>(tensors, chunks, chunk, double lr, double momentum)
//                                                n p g buf p_out buf_out wd
// multi_adam_<t>_<s>(tensors, chunks, chunk, const S* step, double lr,
//     double beta1, double beta2, double eps, i32 decoupled)
//                                                n p g m v p_out m_out v_out wd
// and each `_lr_` with `const float* lr` for `double lr`.
// ---------------------------------------------------------------------------
__device__ __forceinline__ double word_f64(u64 w) { return __longlong_as_double((long long)w); }

template <typename T>
__device__ __forceinline__ void multi_sgd(const u64* tensors, const i64* chunks, i64 chunk, float lr) {
    MPC_CHUNK(tensors, 5, chunks, chunk, rec, lo, hi);
    const float wd = (float)word_f64(rec[4]);
    MPC_CHUNK_STRIDE(i, lo, hi) { sgd_elem<T>((const T*)rec[1], (const T*)rec[2], (T*)rec[3], i, lr, wd); }
}

template <typename T>
__device__ __forceinline__ void multi_sgd_momentum(const u64* tensors, const i64* chunks, i64 chunk, float lr,
                                                   double mu_d) {
    MPC_CHUNK(tensors, 7, chunks, chunk, rec, lo, hi);
    const float mu = (float)mu_d, wd = (float)word_f64(rec[6]);
    MPC_CHUNK_STRIDE(i, lo, hi) {
        sgd_momentum_elem<T>((const T*)rec[1], (const T*)rec[2], (const T*)rec[3], (T*)rec[4], (T*)rec[5], i, lr, mu,
                             wd);
    }
}

template <typename T, typename S>
__device__ __forceinline__ void multi_adam(const u64* tensors, const i64* chunks, i64 chunk, const S* step, float lr,
                                           double beta1, double beta2, double eps, i32 decoupled) {
    MPC_CHUNK(tensors, 9, chunks, chunk, rec, lo, hi);
    const AdamK k = adam_k(step, lr, beta1, beta2, eps, word_f64(rec[8]), decoupled);
    MPC_CHUNK_STRIDE(i, lo, hi) {
        adam_elem<T>((const T*)rec[1], (const T*)rec[2], (const T*)rec[3], (const T*)rec[4], (T*)rec[5], (T*)rec[6],
                     (T*)rec[7], i, k);
    }
}

// Each optimizer twice: `_<t>` takes lr as the op's attribute, `_lr_<t>` as
// a device f32 scalar (a learning-rate schedule's output, the op's last
// input); the CPU rounds either to f32 alike.
#define MPC_SGD(T, TN)                                                                                           \
    extern "C" __global__ void sgd_##TN(const T* p, const T* g, T* p_out, i64 n, double lr, double weight_decay) { \
        sgd<T>(p, g, p_out, n, (float)lr, weight_decay);                                                         \
    }                                                                                                            \
    MPC_EXPORT(sgd_##TN)                                                                                         \
    extern "C" __global__ void sgd_lr_##TN(const T* p, const T* g, const float* lr, T* p_out, i64 n,             \
                                           double weight_decay) {                                                \
        sgd<T>(p, g, p_out, n, lr[0], weight_decay);                                                             \
    }                                                                                                            \
    MPC_EXPORT(sgd_lr_##TN)                                                                                      \
    extern "C" __global__ void sgd_momentum_##TN(const T* p, const T* g, const T* buf, T* p_out, T* buf_out,      \
                                                 i64 n, double lr, double momentum, double weight_decay) {       \
        sgd_momentum<T>(p, g, buf, p_out, buf_out, n, (float)lr, momentum, weight_decay);                        \
    }                                                                                                            \
    MPC_EXPORT(sgd_momentum_##TN)                                                                                \
    extern "C" __global__ void sgd_momentum_lr_##TN(const T* p, const T* g, const T* buf, const float* lr,        \
                                                    T* p_out, T* buf_out, i64 n, double momentum,                \
                                                    double weight_decay) {                                       \
        sgd_momentum<T>(p, g, buf, p_out, buf_out, n, lr[0], momentum, weight_decay);                            \
    }                                                                                                            \
    MPC_EXPORT(sgd_momentum_lr_##TN)                                                                             \
    extern "C" __global__ void multi_sgd_##TN(const u64* tensors, const i64* chunks, i64 chunk, double lr) {      \
        multi_sgd<T>(tensors, chunks, chunk, (float)lr);                                                         \
    }                                                                                                            \
    MPC_EXPORT(multi_sgd_##TN)                                                                                   \
    extern "C" __global__ void multi_sgd_lr_##TN(const u64* tensors, const i64* chunks, i64 chunk,               \
                                                 const float* lr) {                                              \
        multi_sgd<T>(tensors, chunks, chunk, lr[0]);                                                             \
    }                                                                                                            \
    MPC_EXPORT(multi_sgd_lr_##TN)                                                                                \
    extern "C" __global__ void multi_sgd_momentum_##TN(const u64* tensors, const i64* chunks, i64 chunk,         \
                                                       double lr, double momentum) {                             \
        multi_sgd_momentum<T>(tensors, chunks, chunk, (float)lr, momentum);                                      \
    }                                                                                                            \
    MPC_EXPORT(multi_sgd_momentum_##TN)                                                                          \
    extern "C" __global__ void multi_sgd_momentum_lr_##TN(const u64* tensors, const i64* chunks, i64 chunk,      \
                                                          const float* lr, double momentum) {                    \
        multi_sgd_momentum<T>(tensors, chunks, chunk, lr[0], momentum);                                          \
    }                                                                                                            \
    MPC_EXPORT(multi_sgd_momentum_lr_##TN)

#define MPC_ADAM(T, TN, S, SN)                                                                                 \
    extern "C" __global__ void adam_##TN##_##SN(const T* p, const T* g, const T* m, const T* v, const S* step,  \
                                                T* p_out, T* m_out, T* v_out, i64 n, double lr, double beta1,  \
                                                double beta2, double eps, double weight_decay, i32 decoupled) { \
        adam<T, S>(p, g, m, v, step, p_out, m_out, v_out, n, (float)lr, beta1, beta2, eps, weight_decay,       \
                   decoupled);                                                                                 \
    }                                                                                                          \
    MPC_EXPORT(adam_##TN##_##SN)                                                                               \
    extern "C" __global__ void adam_lr_##TN##_##SN(const T* p, const T* g, const T* m, const T* v,             \
                                                   const S* step, const float* lr, T* p_out, T* m_out,         \
                                                   T* v_out, i64 n, double beta1, double beta2, double eps,    \
                                                   double weight_decay, i32 decoupled) {                       \
        adam<T, S>(p, g, m, v, step, p_out, m_out, v_out, n, lr[0], beta1, beta2, eps, weight_decay,          \
                   decoupled);                                                                                 \
    }                                                                                                          \
    MPC_EXPORT(adam_lr_##TN##_##SN)                                                                            \
    extern "C" __global__ void multi_adam_##TN##_##SN(const u64* tensors, const i64* chunks, i64 chunk,         \
                                                      const S* step, double lr, double beta1, double beta2,     \
                                                      double eps, i32 decoupled) {                              \
        multi_adam<T, S>(tensors, chunks, chunk, step, (float)lr, beta1, beta2, eps, decoupled);                \
    }                                                                                                          \
    MPC_EXPORT(multi_adam_##TN##_##SN)                                                                         \
    extern "C" __global__ void multi_adam_lr_##TN##_##SN(const u64* tensors, const i64* chunks, i64 chunk,      \
                                                         const S* step, const float* lr, double beta1,          \
                                                         double beta2, double eps, i32 decoupled) {             \
        multi_adam<T, S>(tensors, chunks, chunk, step, lr[0], beta1, beta2, eps, decoupled);                    \
    }                                                                                                          \
    MPC_EXPORT(multi_adam_lr_##TN##_##SN)

MPC_SGD(float, f32)
MPC_SGD(__half, f16)
MPC_SGD(__nv_bfloat16, bf16)

MPC_ADAM(float, f32, i32, i32)
MPC_ADAM(float, f32, i64, i64)
MPC_ADAM(__half, f16, i32, i32)
MPC_ADAM(__half, f16, i64, i64)
MPC_ADAM(__nv_bfloat16, bf16, i32, i32)
MPC_ADAM(__nv_bfloat16, bf16, i64, i64)

// ---------------------------------------------------------------------------
// clip_coef_f32(const float* norm, float* out, double max_norm), one thread:
//   out = f32(min(1, max_norm / (f64(norm) + 1e-6))) in f64 (semantics::clip_coef).
// A NaN quotient gives 1, as Rust's f64::min(NaN, 1.0).
// ---------------------------------------------------------------------------
extern "C" __global__ void clip_coef_f32(const float* norm, float* out, double max_norm) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const double c = max_norm / ((double)norm[0] + 1e-6);
        out[0] = (float)(c < 1.0 ? c : 1.0);
    }
}
MPC_EXPORT(clip_coef_f32)

// ---------------------------------------------------------------------------
// lr_schedule_<s>(const S* step, float* out, double lr, u32 warmup, u32 total,
//     double min_lr), one thread: semantics::lr_schedule in f64, rounded to f32.
//   k = max(step, 0); k < warmup: lr k / warmup;
//   else min_lr + (lr - min_lr) (1 + cos(pi p)) / 2, p = min((k - w) / max(total - w, 1), 1).
// The host's cos (the emulation) is the CPU's; a GPU's double cos is within
// 2 ulp of f64, which moves the f32 result only at a rounding boundary.
// ---------------------------------------------------------------------------
template <typename S>
__device__ __forceinline__ void lr_schedule(const S* step, float* out, double lr, u32 warmup, u32 total,
                                            double min_lr) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const i64 s = (i64)step[0];
    const double k = (double)(s > 0 ? s : 0);
    const double w = (double)warmup;
    if (k < w) {
        out[0] = (float)(lr * k / w);
        return;
    }
    const double span = (double)total - w;
    const double frac = (k - w) / (span > 1.0 ? span : 1.0);
    const double pr = frac < 1.0 ? frac : 1.0;
    out[0] = (float)(min_lr + (lr - min_lr) * 0.5 * (1.0 + cos(3.141592653589793 * pr)));
}

#define MPC_LR_SCHEDULE(S, SN)                                                                                   \
    extern "C" __global__ void lr_schedule_##SN(const S* step, float* out, double lr, u32 warmup, u32 total,      \
                                                double min_lr) {                                                 \
        lr_schedule<S>(step, out, lr, warmup, total, min_lr);                                                    \
    }                                                                                                            \
    MPC_EXPORT(lr_schedule_##SN)

MPC_LR_SCHEDULE(i32, i32)
MPC_LR_SCHEDULE(i64, i64)
