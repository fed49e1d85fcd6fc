// 2-D pooling over NCHW planes (src/exec/cpu/linalg.rs `max_pool`,
// `max_pool_grad`, `avg_pool`, `avg_pool_grad`). A window pads `ph`/`pw`
// before the input (the padding after it, and a ceil mode imported as such
// padding, only enter through the output size OH×OW the host passes); its
// taps are the in-bounds positions (iy, ix) = (oy·sh + i - ph, ox·sw + j -
// pw), in (i, j) order.
//
// Numerics: none differ from the CPU. max: the first maximum of the taps in
// f32 (a NaN tap wins and stays, padding never wins), a copy of an input
// value. avg: the in-bounds taps summed in tap order from -0.0 (Rust's f32
// `sum`), divided by kh·kw (count_include_pad) or the tap count. The
// gradients: a thread per input element adds, in output order (the CPU's
// scatter order), dy of each window that routes to it (max: its first
// maximum is this element; avg: dy / divisor), from 0. Bit-exact.
#include "common.cuh"

// After the pointers: planes (N·C), h, w, oh, ow, kh, kw, sh, sw, ph, pw.
#define MPC_POOL_DIMS i64 planes, i64 h, i64 w, i64 oh, i64 ow, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw

// The index in `plane` of the first maximum of window (oy, ox), or -1 when
// the window has no tap in bounds.
template <typename T>
__device__ __forceinline__ i64 pool_argmax(const T* plane, i64 oy, i64 ox, i64 h, i64 w, i64 kh, i64 kw, i64 sh,
                                           i64 sw, i64 ph, i64 pw) {
    i64 best = -1;
    float bv = 0.0f;
    for (i64 i = 0; i < kh; ++i) {
        const i64 iy = oy * sh + i - ph;
        if (iy < 0 || iy >= h) continue;
        for (i64 j = 0; j < kw; ++j) {
            const i64 ix = ox * sw + j - pw;
            if (ix < 0 || ix >= w) continue;
            const float v = to_f32(plane[iy * w + ix]);
            if (best < 0) {
                best = iy * w + ix;
                bv = v;
            } else if (!isnan(bv) && (v > bv || isnan(v))) {
                best = iy * w + ix;
                bv = v;
            }
        }
    }
    return best;
}

// The first and last output index along one axis whose window holds input
// position p (possibly an empty range).
__device__ __forceinline__ void pool_range(i64 p, i64 pad, i64 k, i64 s, i64 out, i64* lo, i64* hi) {
    // o·s - pad <= p <= o·s - pad + k - 1
    const i64 top = p + pad;
    const i64 a = top - k + 1;
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    *hi = top / s;
    if (*hi > out - 1) *hi = out - 1;
}

// ---------------------------------------------------------------------------
// max_pool2d_<t>(const T* x, T* y, dims): work = planes·OH·OW.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void maxpool_fwd(const T* x, T* y, MPC_POOL_DIMS) {
    MPC_GRID_STRIDE(e, planes * oh * ow) {
        const i64 ox = e % ow, oy = (e / ow) % oh, pl = e / (ow * oh);
        const T* plane = x + pl * h * w;
        const i64 a = pool_argmax(plane, oy, ox, h, w, kh, kw, sh, sw, ph, pw);
        y[e] = a < 0 ? from_f32<T>(-mpc_inf_f32()) : plane[a];
    }
}

// ---------------------------------------------------------------------------
// max_pool2d_grad_<t>(const T* dy, const T* x, T* dx, dims): work =
// planes·H·W, dims those of x and dy.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void maxpool_bwd(const T* dy, const T* x, T* dx, MPC_POOL_DIMS) {
    MPC_GRID_STRIDE(e, planes * h * w) {
        const i64 ix = e % w, iy = (e / w) % h, pl = e / (w * h);
        const T* plane = x + pl * h * w;
        i64 y0, y1, x0, x1;
        pool_range(iy, ph, kh, sh, oh, &y0, &y1);
        pool_range(ix, pw, kw, sw, ow, &x0, &x1);
        float acc = 0.0f;
        for (i64 oy = y0; oy <= y1; ++oy) {
            for (i64 ox = x0; ox <= x1; ++ox) {
                if (pool_argmax(plane, oy, ox, h, w, kh, kw, sh, sw, ph, pw) == iy * w + ix) {
                    acc += to_f32(dy[(pl * oh + oy) * ow + ox]);
                }
            }
        }
        dx[e] = from_f32<T>(acc);
    }
}

// The in-bounds taps of window (oy, ox).
__device__ __forceinline__ i64 pool_taps(i64 oy, i64 ox, i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph,
                                         i64 pw) {
    i64 ny = 0, nx = 0;
    for (i64 i = 0; i < kh; ++i) {
        const i64 iy = oy * sh + i - ph;
        ny += (iy >= 0 && iy < h) ? 1 : 0;
    }
    for (i64 j = 0; j < kw; ++j) {
        const i64 ix = ox * sw + j - pw;
        nx += (ix >= 0 && ix < w) ? 1 : 0;
    }
    return ny * nx;
}

// ---------------------------------------------------------------------------
// avg_pool2d_<t>(const T* x, T* y, dims, i32 count_include_pad): work =
// planes·OH·OW.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void avgpool_fwd(const T* x, T* y, MPC_POOL_DIMS, i32 cip) {
    MPC_GRID_STRIDE(e, planes * oh * ow) {
        const i64 ox = e % ow, oy = (e / ow) % oh, pl = e / (ow * oh);
        const T* plane = x + pl * h * w;
        float s = -0.0f;
        for (i64 i = 0; i < kh; ++i) {
            const i64 iy = oy * sh + i - ph;
            if (iy < 0 || iy >= h) continue;
            for (i64 j = 0; j < kw; ++j) {
                const i64 ix = ox * sw + j - pw;
                if (ix < 0 || ix >= w) continue;
                s += to_f32(plane[iy * w + ix]);
            }
        }
        const float div = cip ? (float)(kh * kw) : (float)pool_taps(oy, ox, h, w, kh, kw, sh, sw, ph, pw);
        y[e] = from_f32<T>(s / div);
    }
}

// ---------------------------------------------------------------------------
// avg_pool2d_grad_<t>(const T* dy, T* dx, dims, i32 count_include_pad):
// work = planes·H·W.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void avgpool_bwd(const T* dy, T* dx, MPC_POOL_DIMS, i32 cip) {
    MPC_GRID_STRIDE(e, planes * h * w) {
        const i64 ix = e % w, iy = (e / w) % h, pl = e / (w * h);
        i64 y0, y1, x0, x1;
        pool_range(iy, ph, kh, sh, oh, &y0, &y1);
        pool_range(ix, pw, kw, sw, ow, &x0, &x1);
        float acc = 0.0f;
        for (i64 oy = y0; oy <= y1; ++oy) {
            for (i64 ox = x0; ox <= x1; ++ox) {
                const float div = cip ? (float)(kh * kw) : (float)pool_taps(oy, ox, h, w, kh, kw, sh, sw, ph, pw);
                acc += to_f32(dy[(pl * oh + oy) * ow + ox]) / div;
            }
        }
        dx[e] = from_f32<T>(acc);
    }
}

#define MPC_POOL_ARGS planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw
#define MPC_POOL(T, TN)                                                                                             \
    extern "C" __global__ void max_pool2d_##TN(const T* x, T* y, MPC_POOL_DIMS) {                                   \
        maxpool_fwd<T>(x, y, MPC_POOL_ARGS);                                                                        \
    }                                                                                                               \
    MPC_EXPORT(max_pool2d_##TN)                                                                                     \
    extern "C" __global__ void max_pool2d_grad_##TN(const T* dy, const T* x, T* dx, MPC_POOL_DIMS) {                \
        maxpool_bwd<T>(dy, x, dx, MPC_POOL_ARGS);                                                                   \
    }                                                                                                               \
    MPC_EXPORT(max_pool2d_grad_##TN)                                                                                \
    extern "C" __global__ void avg_pool2d_##TN(const T* x, T* y, MPC_POOL_DIMS, i32 cip) {                          \
        avgpool_fwd<T>(x, y, MPC_POOL_ARGS, cip);                                                                   \
    }                                                                                                               \
    MPC_EXPORT(avg_pool2d_##TN)                                                                                     \
    extern "C" __global__ void avg_pool2d_grad_##TN(const T* dy, T* dx, MPC_POOL_DIMS, i32 cip) {                   \
        avgpool_bwd<T>(dy, dx, MPC_POOL_ARGS, cip);                                                                 \
    }                                                                                                               \
    MPC_EXPORT(avg_pool2d_grad_##TN)

MPC_POOL(float, f32)
MPC_POOL(__half, f16)
MPC_POOL(__nv_bfloat16, bf16)
