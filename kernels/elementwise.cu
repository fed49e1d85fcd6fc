// Elementwise kernels: binary arithmetic with NumPy broadcasting, unary
// math and its gradients, identity (a copy) and constant fills.
//
// Numerics (as src/exec/cpu/elementwise.rs): float inputs widen to f32
// exactly, the op computes in f32 with the CPU's expression order, and the
// result rounds once to the output type. Kernels are compiled with
// --fmad=false, so no multiply-add is contracted and +, -, *, / and sqrtf are
// IEEE operations, bit for bit as on the CPU. Where results can differ:
// - expf, logf, tanhf (exp, log, tanh, sigmoid, gelu, gelu_grad,
//   erf_grad) are CUDA's, within 2 ulp of the exact value (CUDA C
//   Programming Guide, "Mathematical Functions"); the CPU calls the host
//   libm (glibc's are correctly rounded in most cases). Expect f32 results to
//   differ by a few ulp; in f16/bf16 the single rounding mostly hides it, but
//   a value near a rounding boundary can land one low-type ulp apart.
// - erf is the CPU's own f64 series (crate::semantics::erf) evaluated the
//   same way; only the f64 exp inside differs (CUDA's exp is within 1 ulp of
//   f64), so the f32 result differs only if that moves it across an f32
//   rounding boundary (rare; allow 1 f32 ulp).
// - integer div by zero: the CPU reports an error; here the result is 0.
// - NaN payloads may differ (CUDA's conversions make a canonical NaN).
#include "common.cuh"
#include "scalar.cuh"

// ---------------------------------------------------------------------------
// Binary ops with broadcasting.
//
// Every binary kernel takes (a, b, y, n, rank, d0..d5, sa0..sa5, sb0..sb5):
// - rank 0: a, b and y all have n elements in the same (row-major) order;
//   the dims and strides are ignored (the fast path: no index arithmetic).
// - rank r in 1..6: the output shape is d0..d5, NumPy's shape padded on the
//   left with 1s to six axes (d5 is the last, fastest axis); only the last r
//   axes are read, so d(6-r)..d5 must multiply to n. sa_k and sb_k are a's
//   and b's element strides along output axis k, 0 where that input is
//   broadcast (its size is 1 there, or it has fewer axes). The host may
//   merge adjacent axes that are contiguous for both inputs, which lowers
//   the rank and so the divisions per element.
// ---------------------------------------------------------------------------

struct Bcast {
    int rank;
    i64 d[6], sa[6], sb[6];
};

#define MPC_BCAST_PARAMS                                                                                          \
    i32 rank, i64 d0, i64 d1, i64 d2, i64 d3, i64 d4, i64 d5, i64 sa0, i64 sa1, i64 sa2, i64 sa3, i64 sa4, i64 sa5, \
        i64 sb0, i64 sb1, i64 sb2, i64 sb3, i64 sb4, i64 sb5
#define MPC_BCAST_INIT                                                                  \
    Bcast bc;                                                                           \
    bc.rank = rank;                                                                     \
    bc.d[0] = d0; bc.d[1] = d1; bc.d[2] = d2; bc.d[3] = d3; bc.d[4] = d4; bc.d[5] = d5; \
    bc.sa[0] = sa0; bc.sa[1] = sa1; bc.sa[2] = sa2; bc.sa[3] = sa3; bc.sa[4] = sa4; bc.sa[5] = sa5; \
    bc.sb[0] = sb0; bc.sb[1] = sb1; bc.sb[2] = sb2; bc.sb[3] = sb3; bc.sb[4] = sb4; bc.sb[5] = sb5;

// The offsets into a and b of output element i.
__device__ __forceinline__ void bcast_offsets(const Bcast& bc, i64 i, i64* oa, i64* ob) {
    i64 a = 0, b = 0;
    for (int k = 5; k >= 6 - bc.rank; --k) {
        const i64 c = i % bc.d[k];
        i /= bc.d[k];
        a += c * bc.sa[k];
        b += c * bc.sb[k];
    }
    *oa = a;
    *ob = b;
}

// The ops' scalar definitions (OpAdd, ...) are in scalar.cuh.

template <typename Op, typename T>
__device__ __forceinline__ void binary_float(const T* a, const T* b, T* y, i64 n, const Bcast& bc) {
    if (bc.rank == 0) {
        MPC_GRID_STRIDE(i, n) { y[i] = from_f32<T>(Op::f(to_f32(a[i]), to_f32(b[i]))); }
    } else {
        MPC_GRID_STRIDE(i, n) {
            i64 oa, ob;
            bcast_offsets(bc, i, &oa, &ob);
            y[i] = from_f32<T>(Op::f(to_f32(a[oa]), to_f32(b[ob])));
        }
    }
}

template <typename Op, typename T>
__device__ __forceinline__ void binary_int(const T* a, const T* b, T* y, i64 n, const Bcast& bc) {
    if (bc.rank == 0) {
        MPC_GRID_STRIDE(i, n) { y[i] = Op::i(a[i], b[i]); }
    } else {
        MPC_GRID_STRIDE(i, n) {
            i64 oa, ob;
            bcast_offsets(bc, i, &oa, &ob);
            y[i] = Op::i(a[oa], b[ob]);
        }
    }
}

// <op>_<t>(const T* a, const T* b, T* y, i64 n, i32 rank, i64 d0..d5, i64 sa0..sa5, i64 sb0..sb5)
#define MPC_BINARY(NAME, OP, KIND, T, TN)                                                              \
    extern "C" __global__ void NAME##_##TN(const T* a, const T* b, T* y, i64 n, MPC_BCAST_PARAMS) { \
        MPC_BCAST_INIT                                                                                 \
        KIND<OP, T>(a, b, y, n, bc);                                                                   \
    }                                                                                                  \
    MPC_EXPORT(NAME##_##TN)

#define MPC_BINARY_ALL(NAME, OP)                                  \
    MPC_BINARY(NAME, OP, binary_float, float, f32)                \
    MPC_BINARY(NAME, OP, binary_float, __half, f16)               \
    MPC_BINARY(NAME, OP, binary_float, __nv_bfloat16, bf16)       \
    MPC_BINARY(NAME, OP, binary_int, i32, i32)                    \
    MPC_BINARY(NAME, OP, binary_int, i64, i64)

MPC_BINARY_ALL(add, OpAdd)
MPC_BINARY_ALL(sub, OpSub)
MPC_BINARY_ALL(mul, OpMul)
MPC_BINARY_ALL(div, OpDiv)

// ---------------------------------------------------------------------------
// Unary math, f32 inside.
// ---------------------------------------------------------------------------

// The unary ops' scalar definitions (OpRelu, ...) are in scalar.cuh.

template <typename Op, typename T> __device__ __forceinline__ void unary(const T* x, T* y, i64 n, float s) {
    MPC_GRID_STRIDE(i, n) { y[i] = from_f32<T>(Op::f(to_f32(x[i]), s)); }
}

// <op>_<t>(const T* x, T* y, i64 n)
#define MPC_UNARY(NAME, OP, T, TN)                                                                           \
    extern "C" __global__ void NAME##_##TN(const T* x, T* y, i64 n) { unary<OP, T>(x, y, n, 0.0f); } \
    MPC_EXPORT(NAME##_##TN)

#define MPC_UNARY_ALL(NAME, OP)             \
    MPC_UNARY(NAME, OP, float, f32)         \
    MPC_UNARY(NAME, OP, __half, f16)        \
    MPC_UNARY(NAME, OP, __nv_bfloat16, bf16)

MPC_UNARY_ALL(relu, OpRelu)
MPC_UNARY_ALL(gelu, OpGelu)
MPC_UNARY_ALL(tanh, OpTanh)
MPC_UNARY_ALL(sigmoid, OpSigmoid)
MPC_UNARY_ALL(exp, OpExp)
MPC_UNARY_ALL(log, OpLog)
MPC_UNARY_ALL(erf, OpErf)
MPC_UNARY_ALL(sqrt, OpSqrt)

// scale_<t>(const T* x, T* y, i64 n, double value): y = x * f32(value), the
// attribute rounded to f32 here as the CPU does (`value as f32`).
#define MPC_SCALE(T, TN)                                                                \
    extern "C" __global__ void scale_##TN(const T* x, T* y, i64 n, double value) {    \
        unary<OpScale, T>(x, y, n, (float)value);                                      \
    }                                                                                   \
    MPC_EXPORT(scale_##TN)

MPC_SCALE(float, f32)
MPC_SCALE(__half, f16)
MPC_SCALE(__nv_bfloat16, bf16)

// ---------------------------------------------------------------------------
// Gradients of the unary ops: (dy, v) -> dx, v the forward input or output
// as the op's doc comment says (relu_grad, tanh_grad, sigmoid_grad take the
// output y; gelu_grad and erf_grad the input x).
// ---------------------------------------------------------------------------

// The gradients' scalar definitions (OpReluGrad, ...) are in scalar.cuh.

template <typename Op, typename T> __device__ __forceinline__ void unary_grad(const T* dy, const T* v, T* dx, i64 n) {
    MPC_GRID_STRIDE(i, n) { dx[i] = from_f32<T>(Op::f(to_f32(dy[i]), to_f32(v[i]))); }
}

// <op>_grad_<t>(const T* dy, const T* v, T* dx, i64 n)
#define MPC_GRAD(NAME, OP, T, TN)                                                                                   \
    extern "C" __global__ void NAME##_##TN(const T* dy, const T* v, T* dx, i64 n) { unary_grad<OP, T>(dy, v, dx, n); } \
    MPC_EXPORT(NAME##_##TN)

#define MPC_GRAD_ALL(NAME, OP)             \
    MPC_GRAD(NAME, OP, float, f32)         \
    MPC_GRAD(NAME, OP, __half, f16)        \
    MPC_GRAD(NAME, OP, __nv_bfloat16, bf16)

MPC_GRAD_ALL(relu_grad, OpReluGrad)
MPC_GRAD_ALL(gelu_grad, OpGeluGrad)
MPC_GRAD_ALL(tanh_grad, OpTanhGrad)
MPC_GRAD_ALL(sigmoid_grad, OpSigmoidGrad)
MPC_GRAD_ALL(erf_grad, OpErfGrad)

// ---------------------------------------------------------------------------
// identity_<t>(const T* x, T* y, i64 n): a bit copy.
// constant_<t>(T* y, i64 n, double value): every element `value` rounded
// once to T as the CPU's Data::full (f32: nearest even; f16/bf16: a single
// rounding from f64; integers: truncation, saturating, NaN 0; bool: != 0).
// `seed` is constant_f32 with value 1.0.
// ---------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ void copy_elems(const T* x, T* y, i64 n) {
    MPC_GRID_STRIDE(i, n) { y[i] = x[i]; }
}

template <typename T> __device__ __forceinline__ T constant_value(double v);
template <> __device__ __forceinline__ float constant_value<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ __half constant_value<__half>(double v) { return from_f64<__half>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 constant_value<__nv_bfloat16>(double v) {
    return from_f64<__nv_bfloat16>(v);
}
template <> __device__ __forceinline__ i32 constant_value<i32>(double v) { return f64_to_i32_sat(v); }
template <> __device__ __forceinline__ i64 constant_value<i64>(double v) { return f64_to_i64_sat(v); }
template <> __device__ __forceinline__ u8 constant_value<u8>(double v) { return v != 0.0 ? 1 : 0; }

template <typename T> __device__ __forceinline__ void fill_elems(T* y, i64 n, double value) {
    const T v = constant_value<T>(value);
    MPC_GRID_STRIDE(i, n) { y[i] = v; }
}

#define MPC_COPY_FILL(T, TN)                                                                            \
    extern "C" __global__ void identity_##TN(const T* x, T* y, i64 n) { copy_elems<T>(x, y, n); }             \
    MPC_EXPORT(identity_##TN)                                                                           \
    extern "C" __global__ void constant_##TN(T* y, i64 n, double value) { fill_elems<T>(y, n, value); }       \
    MPC_EXPORT(constant_##TN)

MPC_COPY_FILL(float, f32)
MPC_COPY_FILL(__half, f16)
MPC_COPY_FILL(__nv_bfloat16, bf16)
MPC_COPY_FILL(i32, i32)
MPC_COPY_FILL(i64, i64)
MPC_COPY_FILL(u8, bool)

// ---------------------------------------------------------------------------
// Dropout, with the CPU's counter-based masks (src/exec/rng.rs,
// src/exec/cpu/elementwise.rs `dropout_mask`): element i is kept when
// hash_u01(seed, i) >= f32(p), where the host passes
// seed = combine(node seed, combine(seed attribute, step)). The 64-bit
// integer mixing is exact on both sides and hash_u01 is a 24-bit integer
// times 2^-24 (exact in f32), so the mask is the CPU's bit for bit; kept
// values are scaled by f32(1/(1 - p)) (computed in f64, rounded once).
//
// dropout_<t>(const T* x, T* y, u8* mask, i64 n, u64 seed, double p)
//   y = keep ? x·scale : 0, mask = keep
// dropout_step_<t>(const T* x, T* y, u8* mask, i64 n, u64 node_seed, u64 seed, const u64* step, double p)
//   the same, with the step number read from the device: the seed is
//   combined there (rng_combine is the host's), so that a step's launch
//   arguments do not change from step to step and the step can be
//   replayed as a CUDA graph
// dropout_grad_<t>(const T* dy, const u8* mask, T* dx, i64 n, double p)
//   dx = mask ? dy·scale : 0
// ---------------------------------------------------------------------------

// SplitMix64's finaliser (rng::mix64).
__device__ __forceinline__ u64 rng_mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// rng::combine
__device__ __forceinline__ u64 rng_combine(u64 a, u64 b) { return rng_mix64(a ^ rng_mix64(b + 0x9e3779b97f4a7c15ull)); }

// rng::hash_u01: the top 24 bits of combine(seed, counter), times 2^-24.
__device__ __forceinline__ float rng_hash_u01(u64 seed, u64 counter) {
    return (float)(rng_combine(seed, counter) >> 40) * (1.0f / 16777216.0f);
}

template <typename T> __device__ __forceinline__ void dropout_elems(const T* x, T* y, u8* mask, i64 n, u64 seed, double p) {
    const float pf = (float)p;
    const float s = (float)(1.0 / (1.0 - p));
    MPC_GRID_STRIDE(i, n) {
        const bool keep = rng_hash_u01(seed, (u64)i) >= pf;
        y[i] = from_f32<T>(keep ? to_f32(x[i]) * s : 0.0f);
        mask[i] = keep ? 1 : 0;
    }
}

template <typename T> __device__ __forceinline__ void dropout_grad_elems(const T* dy, const u8* mask, T* dx, i64 n, double p) {
    const float s = (float)(1.0 / (1.0 - p));
    MPC_GRID_STRIDE(i, n) { dx[i] = from_f32<T>(mask[i] != 0 ? to_f32(dy[i]) * s : 0.0f); }
}

#define MPC_DROPOUT(T, TN)                                                                                     \
    extern "C" __global__ void dropout_##TN(const T* x, T* y, u8* mask, i64 n, u64 seed, double p) {          \
        dropout_elems<T>(x, y, mask, n, seed, p);                                                              \
    }                                                                                                          \
    MPC_EXPORT(dropout_##TN)                                                                                   \
    extern "C" __global__ void dropout_step_##TN(const T* x, T* y, u8* mask, i64 n, u64 node_seed, u64 seed,  \
                                                 const u64* step, double p) {                                 \
        dropout_elems<T>(x, y, mask, n, rng_combine(node_seed, rng_combine(seed, *step)), p);                  \
    }                                                                                                          \
    MPC_EXPORT(dropout_step_##TN)                                                                              \
    extern "C" __global__ void dropout_grad_##TN(const T* dy, const u8* mask, T* dx, i64 n, double p) {       \
        dropout_grad_elems<T>(dy, mask, dx, n, p);                                                             \
    }                                                                                                          \
    MPC_EXPORT(dropout_grad_##TN)

MPC_DROPOUT(float, f32)
MPC_DROPOUT(__half, f16)
MPC_DROPOUT(__nv_bfloat16, bf16)
