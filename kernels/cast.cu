// cast: elementwise conversion between f32, f16, bf16, i32, i64 and bool
// (`cast_<from>_<to>`), with the CPU reference's rules (Data::cast):
// - float to float rounds once, nearest even (f16 <-> bf16 widen to f32
//   exactly, then round once);
// - float to integer truncates toward zero and saturates, NaN giving 0;
// - integer to integer keeps the low bits (i64 -> i32 wraps), as Rust's `as`;
// - integer to float rounds once, nearest even (i64 -> f32 directly; to
//   f16/bf16 rounded to odd in f32 from the integer, then once to the type);
// - anything to bool is `x != 0` (NaN is nonzero); bool reads as 0 or 1.
// Every result is exact or a single rounding, so it matches the CPU bit for
// bit, except that NaN payloads may differ (CUDA makes a canonical NaN).
#include "common.cuh"
#include "scalar.cuh"

// cast_from_float<To>, a float source's conversion, is in scalar.cuh.

// An integer (or bool) source read as i64, converted to each target.
template <typename To> __device__ __forceinline__ To cast_from_int(i64 v);
template <> __device__ __forceinline__ float cast_from_int<float>(i64 v) { return (float)v; }
template <> __device__ __forceinline__ __half cast_from_int<__half>(i64 v) { return from_f32<__half>(i64_to_f32_odd(v)); }
template <> __device__ __forceinline__ __nv_bfloat16 cast_from_int<__nv_bfloat16>(i64 v) {
    return from_f32<__nv_bfloat16>(i64_to_f32_odd(v));
}
template <> __device__ __forceinline__ i32 cast_from_int<i32>(i64 v) { return (i32)(u32)(u64)v; }
template <> __device__ __forceinline__ i64 cast_from_int<i64>(i64 v) { return v; }
template <> __device__ __forceinline__ u8 cast_from_int<u8>(i64 v) { return v != 0 ? 1 : 0; }

__device__ __forceinline__ i64 int_value(i32 v) { return (i64)v; }
__device__ __forceinline__ i64 int_value(i64 v) { return v; }
__device__ __forceinline__ i64 int_value(u8 v) { return v != 0 ? 1 : 0; }

template <typename From, typename To> __device__ __forceinline__ void cast_float(const From* x, To* y, i64 n) {
    MPC_GRID_STRIDE(i, n) { y[i] = cast_from_float<To>(to_f32(x[i])); }
}

template <typename From, typename To> __device__ __forceinline__ void cast_int(const From* x, To* y, i64 n) {
    MPC_GRID_STRIDE(i, n) { y[i] = cast_from_int<To>(int_value(x[i])); }
}

// A cast to the same type copies the bits, as the CPU's clone.
template <typename From, typename To> __device__ __forceinline__ void cast_copy(const From* x, To* y, i64 n) {
    MPC_GRID_STRIDE(i, n) { y[i] = x[i]; }
}

// cast_<from>_<to>(const From* x, To* y, i64 n)
#define MPC_CAST(KIND, FROM, FN, TO, TN)                                                        \
    extern "C" __global__ void cast_##FN##_##TN(const FROM* x, TO* y, i64 n) { KIND(x, y, n); } \
    MPC_EXPORT(cast_##FN##_##TN)

MPC_CAST(cast_copy, float, f32, float, f32)
MPC_CAST(cast_float, float, f32, __half, f16)
MPC_CAST(cast_float, float, f32, __nv_bfloat16, bf16)
MPC_CAST(cast_float, float, f32, i32, i32)
MPC_CAST(cast_float, float, f32, i64, i64)
MPC_CAST(cast_float, float, f32, u8, bool)

MPC_CAST(cast_float, __half, f16, float, f32)
MPC_CAST(cast_copy, __half, f16, __half, f16)
MPC_CAST(cast_float, __half, f16, __nv_bfloat16, bf16)
MPC_CAST(cast_float, __half, f16, i32, i32)
MPC_CAST(cast_float, __half, f16, i64, i64)
MPC_CAST(cast_float, __half, f16, u8, bool)

MPC_CAST(cast_float, __nv_bfloat16, bf16, float, f32)
MPC_CAST(cast_float, __nv_bfloat16, bf16, __half, f16)
MPC_CAST(cast_copy, __nv_bfloat16, bf16, __nv_bfloat16, bf16)
MPC_CAST(cast_float, __nv_bfloat16, bf16, i32, i32)
MPC_CAST(cast_float, __nv_bfloat16, bf16, i64, i64)
MPC_CAST(cast_float, __nv_bfloat16, bf16, u8, bool)

MPC_CAST(cast_int, i32, i32, float, f32)
MPC_CAST(cast_int, i32, i32, __half, f16)
MPC_CAST(cast_int, i32, i32, __nv_bfloat16, bf16)
MPC_CAST(cast_copy, i32, i32, i32, i32)
MPC_CAST(cast_int, i32, i32, i64, i64)
MPC_CAST(cast_int, i32, i32, u8, bool)

MPC_CAST(cast_int, i64, i64, float, f32)
MPC_CAST(cast_int, i64, i64, __half, f16)
MPC_CAST(cast_int, i64, i64, __nv_bfloat16, bf16)
MPC_CAST(cast_int, i64, i64, i32, i32)
MPC_CAST(cast_copy, i64, i64, i64, i64)
MPC_CAST(cast_int, i64, i64, u8, bool)

MPC_CAST(cast_int, u8, bool, float, f32)
MPC_CAST(cast_int, u8, bool, __half, f16)
MPC_CAST(cast_int, u8, bool, __nv_bfloat16, bf16)
MPC_CAST(cast_int, u8, bool, i32, i32)
MPC_CAST(cast_int, u8, bool, i64, i64)
MPC_CAST(cast_copy, u8, bool, u8, bool)
