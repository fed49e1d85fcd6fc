// Loss scaling: unscale, scale_update, select. The loss scale, the growth
// tracker and found_inf live on the device as 1-element tensors; these
// kernels read and write them there, so a step never waits for the host.
//
// Numerics: as the CPU reference (src/exec/cpu/optim.rs, crate::semantics),
// bit for bit: 1/scale is an f64 division rounded to f32, the scale update
// multiplies in f64 and rounds to f32, select copies bits.
#include "common.cuh"
#include "scalar.cuh"

// ---------------------------------------------------------------------------
// unscale_<t>(const T* grad, const float* scale, float* out, i64 n)
//   out = f32(grad) * inv, inv = f32(1 / f64(scale[0])). The output is f32
//   for every gradient type.
// ---------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ void unscale(const T* grad, const float* scale, float* out, i64 n) {
    const float inv = unscale_inverse(scale[0]);
    MPC_GRID_STRIDE(i, n) { out[i] = OpUnscale::f(to_f32(grad[i]), inv); }
}

// ---------------------------------------------------------------------------
// multi_unscale_found_inf_<t>(const u64* tensors, const i64* chunks, i64 chunk,
//     const float* scale, u32* flag)
//   every tensor's unscale (the same element arithmetic as unscale_<t>) and
//   found_inf of the outputs (as found_inf_f32: the flag, set to 0.0 first,
//   gets the bits of 1.0f ORed in by a thread that saw an inf or NaN), in
//   one launch. Per tensor 3 words: n, grad, out (see MPC_CHUNK).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void multi_unscale_found_inf(const u64* tensors, const i64* chunks, i64 chunk,
                                                        const float* scale, u32* flag) {
    MPC_CHUNK(tensors, 3, chunks, chunk, rec, lo, hi);
    const T* grad = (const T*)rec[1];
    float* out = (float*)rec[2];
    const float inv = unscale_inverse(scale[0]);
    bool bad = false;
    MPC_CHUNK_STRIDE(i, lo, hi) {
        const float u = OpUnscale::f(to_f32(grad[i]), inv);
        out[i] = u;
        bad = bad || !isfinite(u);
    }
    if (bad) atomicOr(flag, 0x3f800000u);
}

#define MPC_UNSCALE(T, TN)                                                                                  \
    extern "C" __global__ void unscale_##TN(const T* grad, const float* scale, float* out, i64 n) {         \
        unscale<T>(grad, scale, out, n);                                                                    \
    }                                                                                                       \
    MPC_EXPORT(unscale_##TN)                                                                                \
    extern "C" __global__ void multi_unscale_found_inf_##TN(const u64* tensors, const i64* chunks, i64 chunk, \
                                                            const float* scale, u32* flag) {                \
        multi_unscale_found_inf<T>(tensors, chunks, chunk, scale, flag);                                    \
    }                                                                                                       \
    MPC_EXPORT(multi_unscale_found_inf_##TN)

MPC_UNSCALE(float, f32)
MPC_UNSCALE(__half, f16)
MPC_UNSCALE(__nv_bfloat16, bf16)

// ---------------------------------------------------------------------------
// scale_update_f32(const float* scale, const i32* tracker, const float* found,
//     float* scale_out, i32* tracker_out, double growth_factor,
//     double backoff_factor, u32 growth_interval)
// GradScaler's rule, by thread 0 of block 0 (launch 1 block of 32 threads,
// or any 1-D launch; the rest do nothing). The outputs may be the inputs'
// buffers. found != 0 (NaN counts): scale * backoff, tracker 0. Otherwise
// t = tracker + 1 (saturating); at t == growth_interval the scale grows by
// growth_factor if the product stays finite, and t restarts at 0.
// ---------------------------------------------------------------------------
extern "C" __global__ void scale_update_f32(const float* scale, const i32* tracker, const float* found, float* scale_out,
                                            i32* tracker_out, double growth_factor, double backoff_factor,
                                            u32 growth_interval) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const float s = scale[0];
    const i32 tr = tracker[0];
    float s2;
    i32 t2;
    if (found[0] != 0.0f) {
        s2 = (float)((double)s * backoff_factor);
        t2 = 0;
    } else {
        const i32 t = tr == 2147483647 ? tr : tr + 1;
        if ((i64)t == (i64)growth_interval) {
            const float grown = (float)((double)s * growth_factor);
            s2 = isfinite(grown) ? grown : s;
            t2 = 0;
        } else {
            s2 = s;
            t2 = t;
        }
    }
    scale_out[0] = s2;
    tracker_out[0] = t2;
}
MPC_EXPORT(scale_update_f32)

// ---------------------------------------------------------------------------
// select_<t>(const float* found, const T* on_inf, const T* otherwise, T* out, i64 n)
//   out = on_inf where found[0] != 0 (NaN counts), else otherwise; a bit
//   copy. out may be either input's buffer (a kept step writes in place).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void select_elems(const float* found, const T* on_inf, const T* otherwise, T* out, i64 n) {
    const T* src = found[0] != 0.0f ? on_inf : otherwise;
    if (src == out) return;
    MPC_GRID_STRIDE(i, n) { out[i] = src[i]; }
}

// ---------------------------------------------------------------------------
// multi_select_<t>(tensors, chunks, chunk, const float* found)   n on_inf otherwise out
//   select_<t> over every tensor of a skip-on-overflow's selects in one
//   launch (MPC_CHUNK's tables): the same bit copy, and the same skip of a
//   tensor whose chosen source is its output.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void multi_select(const u64* tensors, const i64* chunks, i64 chunk, const float* found) {
    MPC_CHUNK(tensors, 4, chunks, chunk, rec, lo, hi);
    const T* src = (const T*)(found[0] != 0.0f ? rec[1] : rec[2]);
    T* out = (T*)rec[3];
    if (src == out) return;
    MPC_CHUNK_STRIDE(i, lo, hi) { out[i] = src[i]; }
}

#define MPC_SELECT(T, TN)                                                                                         \
    extern "C" __global__ void select_##TN(const float* found, const T* on_inf, const T* otherwise, T* out, i64 n) { \
        select_elems<T>(found, on_inf, otherwise, out, n);                                                              \
    }                                                                                                             \
    MPC_EXPORT(select_##TN)                                                                                       \
    extern "C" __global__ void multi_select_##TN(const u64* tensors, const i64* chunks, i64 chunk,               \
                                                 const float* found) {                                           \
        multi_select<T>(tensors, chunks, chunk, found);                                                           \
    }                                                                                                             \
    MPC_EXPORT(multi_select_##TN)

MPC_SELECT(float, f32)
MPC_SELECT(__half, f16)
MPC_SELECT(__nv_bfloat16, bf16)
MPC_SELECT(i32, i32)
MPC_SELECT(i64, i64)
MPC_SELECT(u8, bool)
