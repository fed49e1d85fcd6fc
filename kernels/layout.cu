// Layout kernels: transpose (a permuted bit copy). `reshape` has no kernel of
// its own: the launcher copies with identity_<t>, since a value's buffer is
// its planned slot in the step arena, and a view of the input's slot could
// be overwritten once the memory plan ends the input's life at the reshape.
//
// Numerics: none; every element is copied bit for bit, as on the CPU
// (src/exec/cpu/layout.rs `transpose`).
#include "common.cuh"

// ---------------------------------------------------------------------------
// transpose_<t>(const T* x, T* y, i64 n, i32 rank, i64 d0..d5, i64 s0..s5)
// y is x with its axes permuted, in row-major order: d0..d5 is y's shape
// padded on the left with 1s to six axes (d5 the last), of which the last
// `rank` are read (their product is n); s_k is x's element stride along y's
// axis k. The host merges axes that stay adjacent and drops size-1 axes, so
// the rank (divisions per element) is as low as the permutation allows.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void transpose_elems(const T* x, T* y, i64 n, int rank, const i64* d, const i64* s) {
    MPC_GRID_STRIDE(i, n) {
        i64 rest = i, src = 0;
        for (int k = 5; k >= 6 - rank; --k) {
            src += (rest % d[k]) * s[k];
            rest /= d[k];
        }
        y[i] = x[src];
    }
}

#define MPC_TRANSPOSE(T, TN)                                                                                       \
    extern "C" __global__ void transpose_##TN(const T* x, T* y, i64 n, i32 rank, i64 d0, i64 d1, i64 d2, i64 d3,  \
                                              i64 d4, i64 d5, i64 s0, i64 s1, i64 s2, i64 s3, i64 s4, i64 s5) {  \
        const i64 d[6] = {d0, d1, d2, d3, d4, d5};                                                                 \
        const i64 s[6] = {s0, s1, s2, s3, s4, s5};                                                                 \
        transpose_elems<T>(x, y, n, rank, d, s);                                                                   \
    }                                                                                                              \
    MPC_EXPORT(transpose_##TN)

MPC_TRANSPOSE(float, f32)
MPC_TRANSPOSE(__half, f16)
MPC_TRANSPOSE(__nv_bfloat16, bf16)
MPC_TRANSPOSE(i32, i32)
MPC_TRANSPOSE(i64, i64)
MPC_TRANSPOSE(u8, bool)

// ---------------------------------------------------------------------------
// slab_copy_<t>(const T* x, T* y, i64 n, i64 len, i64 xrow, i64 xoff, i64
// yrow, i64 yoff): for i < n, with o = i / len and k = i % len,
// y[o·yrow + yoff + k] = x[o·xrow + xoff + k]. `concat` is one launch per
// input (its rows of len = size·inner elements into the output's rows at the
// input's offset), `split` one per piece (the reverse); bits are copied, as
// src/exec/cpu/layout.rs `concat`/`split` do.
// ---------------------------------------------------------------------------
#define MPC_SLAB_COPY(T, TN)                                                                                        \
    extern "C" __global__ void slab_copy_##TN(const T* x, T* y, i64 n, i64 len, i64 xrow, i64 xoff, i64 yrow,        \
                                              i64 yoff) {                                                           \
        MPC_GRID_STRIDE(i, n) {                                                                                     \
            const i64 o = i / len, k = i % len;                                                                     \
            y[o * yrow + yoff + k] = x[o * xrow + xoff + k];                                                        \
        }                                                                                                           \
    }                                                                                                               \
    MPC_EXPORT(slab_copy_##TN)

MPC_SLAB_COPY(float, f32)
MPC_SLAB_COPY(__half, f16)
MPC_SLAB_COPY(__nv_bfloat16, bf16)
MPC_SLAB_COPY(i32, i32)
MPC_SLAB_COPY(i64, i64)
MPC_SLAB_COPY(u8, bool)
