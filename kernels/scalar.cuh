// The scalar definition of every elementwise op the op table marks
// `fusable`: what one output element is, from its input elements widened to
// f32 (or, for a cast, the source value). The unfused kernels
// (elementwise.cu, cast.cu, scale.cu) and the fused kernels mpc generates
// for a chain of these ops (src/exec/cuda/fused.rs) both call these, so a
// fused chain computes each step exactly as its own kernel would; the
// caller rounds each step's result to the step's type (from_f32), as the
// unfused kernel stores it.
#pragma once
#include "common.cuh"

// ---------------------------------------------------------------------------
// Binary arithmetic.
// ---------------------------------------------------------------------------

// The ops on floats (widened to f32) and on integers (exact, wrapping on
// overflow like Rust's wrapping_*; arithmetic in unsigned types, where C++
// defines the wrap).
struct OpAdd {
    __device__ static float f(float p, float q) { return p + q; }
    __device__ static i32 i(i32 p, i32 q) { return (i32)((u32)p + (u32)q); }
    __device__ static i64 i(i64 p, i64 q) { return (i64)((u64)p + (u64)q); }
};
struct OpSub {
    __device__ static float f(float p, float q) { return p - q; }
    __device__ static i32 i(i32 p, i32 q) { return (i32)((u32)p - (u32)q); }
    __device__ static i64 i(i64 p, i64 q) { return (i64)((u64)p - (u64)q); }
};
struct OpMul {
    __device__ static float f(float p, float q) { return p * q; }
    __device__ static i32 i(i32 p, i32 q) { return (i32)((u32)p * (u32)q); }
    __device__ static i64 i(i64 p, i64 q) { return (i64)((u64)p * (u64)q); }
};
// Integer division truncates toward zero; MIN / -1 wraps to MIN (Rust's
// wrapping_div); a zero divisor gives 0 (the CPU reports an error).
struct OpDiv {
    __device__ static float f(float p, float q) { return p / q; }
    __device__ static i32 i(i32 p, i32 q) { return q == 0 ? 0 : q == -1 ? (i32)(0u - (u32)p) : p / q; }
    __device__ static i64 i(i64 p, i64 q) { return q == 0 ? 0 : q == -1 ? (i64)(0ull - (u64)p) : p / q; }
};

// ---------------------------------------------------------------------------
// Unary math and scale, f32 inside; `s` is scale's factor, unused by the rest.
// ---------------------------------------------------------------------------

// gelu's constants as the CPU's f32 constants: sqrt(2/pi) and the cubic
// coefficient of the tanh approximation (GPT-2's).
#define MPC_GELU_C 0.7978846f
#define MPC_GELU_A 0.044715f
// 2/sqrt(pi) as f32 (Rust's FRAC_2_SQRT_PI as f32) and as f64.
#define MPC_2_SQRT_PI_F32 1.12837916709551257390f
#define MPC_2_SQRT_PI_F64 1.12837916709551257390

// The error function of the CPU reference (crate::semantics::erf), in f64:
// for |x| < 6 the series of Abramowitz & Stegun 7.1.6,
// erf x = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)),
// beyond +-1. The same operations in the same order; the sign comes from the
// f32 input's sign bit, so erf(-0) = -0 as on the CPU.
__device__ __forceinline__ float erf_ref(float xf) {
    if (isnan(xf)) return xf;
    const bool neg = (__float_as_uint(xf) >> 31) != 0u;
    const double x = (double)xf;
    const double a = neg ? -x : x;
    double r;
    if (a >= 6.0) {
        r = 1.0;
    } else {
        const double a2 = a * a;
        double term = a, sum = a, k = 1.0;
        while (term > sum * 1e-17) {
            term *= 2.0 * a2 / (2.0 * k + 1.0);
            sum += term;
            k += 1.0;
        }
        r = MPC_2_SQRT_PI_F64 * exp(-a2) * sum;
        if (r > 1.0) r = 1.0;
    }
    return (float)(neg ? -r : r);
}

struct OpRelu {
    // NaN propagates and -0 gives +0, as the CPU's relu.
    __device__ static float f(float v, float) { return (v > 0.0f || isnan(v)) ? v : 0.0f; }
};
struct OpGelu {
    __device__ static float f(float x, float) {
        return 0.5f * x * (1.0f + tanhf(MPC_GELU_C * (x + MPC_GELU_A * x * x * x)));
    }
};
struct OpTanh {
    __device__ static float f(float v, float) { return tanhf(v); }
};
struct OpSigmoid {
    __device__ static float f(float v, float) { return 1.0f / (1.0f + expf(-v)); }
};
struct OpExp {
    __device__ static float f(float v, float) { return expf(v); }
};
struct OpLog {
    __device__ static float f(float v, float) { return logf(v); }
};
struct OpErf {
    __device__ static float f(float v, float) { return erf_ref(v); }
};
struct OpSqrt {
    // IEEE (--fmad=false keeps sqrtf correctly rounded): bit for bit the CPU's.
    __device__ static float f(float v, float) { return sqrtf(v); }
};
struct OpScale {
    __device__ static float f(float v, float s) { return v * s; }
};

// ---------------------------------------------------------------------------
// Gradients of the unary ops: (dy, v) -> dx, v the forward input or output
// as the op's doc comment says (relu_grad, tanh_grad, sigmoid_grad take the
// output y; gelu_grad and erf_grad the input x).
// ---------------------------------------------------------------------------

struct OpReluGrad {
    __device__ static float f(float d, float y) { return y > 0.0f ? d : 0.0f; }
};
struct OpGeluGrad {
    // The exact derivative of gelu (gelu_derivative on the CPU), times dy.
    __device__ static float f(float d, float x) {
        const float t = tanhf(MPC_GELU_C * (x + MPC_GELU_A * x * x * x));
        const float g = 0.5f * (1.0f + t) +
                        0.5f * x * (1.0f - t * t) * MPC_GELU_C * (1.0f + 3.0f * MPC_GELU_A * x * x);
        return d * g;
    }
};
struct OpTanhGrad {
    __device__ static float f(float d, float y) { return d * (1.0f - y * y); }
};
struct OpSigmoidGrad {
    __device__ static float f(float d, float y) { return d * y * (1.0f - y); }
};
struct OpErfGrad {
    __device__ static float f(float d, float x) { return d * (MPC_2_SQRT_PI_F32 * expf(-(x * x))); }
};

// ---------------------------------------------------------------------------
// Casts and loss scaling.
// ---------------------------------------------------------------------------

// A float source widened to f32 exactly, converted to each target.
template <typename To> __device__ __forceinline__ To cast_from_float(float v);
template <> __device__ __forceinline__ float cast_from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half cast_from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 cast_from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ i32 cast_from_float<i32>(float v) { return f64_to_i32_sat((double)v); }
template <> __device__ __forceinline__ i64 cast_from_float<i64>(float v) { return f64_to_i64_sat((double)v); }
template <> __device__ __forceinline__ u8 cast_from_float<u8>(float v) { return v != 0.0f ? 1 : 0; }

// unscale: f32(grad) * inv, inv = f32(1 / f64(scale)), computed once per launch.
__device__ __forceinline__ float unscale_inverse(float scale) { return (float)(1.0 / (double)scale); }
struct OpUnscale {
    __device__ static float f(float g, float inv) { return g * inv; }
};
