// 2-D convolution (NCHW input, OIHW weight, cross-correlation with zero
// padding, stride, dilation and groups) and its two gradients (src/exec/cpu/linalg.rs
// `conv2d`, `conv2d_grad_input`, `conv2d_grad_weight`). Direct kernels: a
// thread per output element, products and sums in f32 from the widened
// operands, one rounding to the output type.
//
// Where results can differ from the CPU: the order of the sums. The CPU
// runs im2col and an f32 GEMM (matrixmultiply, blocked, possibly with fused
// multiply-adds), a thread here adds its products in tap order. Both are
// summation orders of the same products, each within γ(n)·Σ|products| of
// the exact value (n the number of products, γ(n) = n·2^-24/(1 - n·2^-24)),
// so they are within 2·γ(n)·Σ|products| of each other (tests/cuda_ops/cnn.rs).
// As on the CPU, a tap in the padding is the product of the weight with
// 0 (so an infinite weight there gives NaN, as the CPU's GEMM does).
#include "common.cuh"

// The dimensions every conv kernel takes, after its pointers:
//   n, c, h, w       the input [N, C, H, W]
//   o, oh, ow        the output channels and spatial size [N, O, OH, OW]
//   kh, kw           the kernel (the weight is [O, C/groups, kh, kw])
//   sh, sw, ph, pw   stride and (symmetric) padding
//   dh, dl           dilation (height, width): tap (i, j) reads input row
//                    oy·sh + i·dh - ph, column ox·sw + j·dl - pw
//   groups
#define MPC_CONV_DIMS                                                                                               \
    i64 n, i64 c, i64 h, i64 w, i64 o, i64 oh, i64 ow, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, i64 dh,      \
        i64 dl, i64 groups
#define MPC_CONV_ARGS n, c, h, w, o, oh, ow, kh, kw, sh, sw, ph, pw, dh, dl, groups

// ---------------------------------------------------------------------------
// conv2d_<t>(const T* x, const T* wt, T* y, dims): work = N·O·OH·OW.
// y[b, oc, oy, ox] = Σ_{ci, i, j} wt[oc, ci, i, j] · x[b, g·C/groups + ci,
// oy·sh + i·dh - ph, ox·sw + j·dl - pw], in (ci, i, j) order (the CPU's
// im2col row).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void conv_fwd(const T* x, const T* wt, T* y, MPC_CONV_DIMS) {
    const i64 cg = c / groups, og = o / groups;
    MPC_GRID_STRIDE(e, n * o * oh * ow) {
        const i64 ox = e % ow, oy = (e / ow) % oh, oc = (e / (ow * oh)) % o, b = e / (ow * oh * o);
        const i64 g = oc / og;
        float acc = 0.0f;
        for (i64 ci = 0; ci < cg; ++ci) {
            const T* plane = x + (b * c + g * cg + ci) * h * w;
            const T* wk = wt + (oc * cg + ci) * kh * kw;
            for (i64 i = 0; i < kh; ++i) {
                const i64 iy = oy * sh + i * dh - ph;
                for (i64 j = 0; j < kw; ++j) {
                    const i64 ix = ox * sw + j * dl - pw;
                    const float xv = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? to_f32(plane[iy * w + ix]) : 0.0f;
                    acc += to_f32(wk[i * kw + j]) * xv;
                }
            }
        }
        y[e] = from_f32<T>(acc);
    }
}

// ---------------------------------------------------------------------------
// conv2d_grad_input_<t>(const T* dy, const T* wt, T* dx, dims): work =
// N·C·H·W. dx[b, ci, iy, ix] = Σ_{i, j} (Σ_{oc in the group} wt[oc, ci, i, j]
// · dy[b, oc, oy, ox]) over the taps (i, j) whose output (oy, ox) =
// ((iy + ph - i·dh)/sh, (ix + pw - j·dl)/sw) exists: the CPU's col2im order (i, j),
// each term its GEMM entry (Wᵀ·dy).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void conv_dx(const T* dy, const T* wt, T* dx, MPC_CONV_DIMS) {
    const i64 cg = c / groups, og = o / groups;
    MPC_GRID_STRIDE(e, n * c * h * w) {
        const i64 ix = e % w, iy = (e / w) % h, ch = (e / (w * h)) % c, b = e / (w * h * c);
        const i64 g = ch / cg, cl = ch % cg;
        float acc = 0.0f;
        for (i64 i = 0; i < kh; ++i) {
            const i64 ty = iy + ph - i * dh;
            if (ty < 0 || ty % sh != 0 || ty / sh >= oh) continue;
            const i64 oy = ty / sh;
            for (i64 j = 0; j < kw; ++j) {
                const i64 tx = ix + pw - j * dl;
                if (tx < 0 || tx % sw != 0 || tx / sw >= ow) continue;
                const i64 ox = tx / sw;
                float inner = 0.0f;
                for (i64 ol = 0; ol < og; ++ol) {
                    const i64 oc = g * og + ol;
                    inner += to_f32(wt[((oc * cg + cl) * kh + i) * kw + j]) *
                             to_f32(dy[((b * o + oc) * oh + oy) * ow + ox]);
                }
                acc += inner;
            }
        }
        dx[e] = from_f32<T>(acc);
    }
}

// ---------------------------------------------------------------------------
// conv2d_grad_weight_<t>(const T* dy, const T* x, T* dw, dims): work =
// O·(C/groups)·kh·kw. dw[oc, ci, i, j] = Σ_b (Σ_{oy, ox} dy[b, oc, oy, ox] ·
// x[b, g·C/groups + ci, oy·sh + i·dh - ph, ox·sw + j·dl - pw]) (a tap in the
// padding reads 0): per image a GEMM entry, added image after image as the
// CPU's GEMMs accumulate into dw.
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void conv_dw(const T* dy, const T* x, T* dw, MPC_CONV_DIMS) {
    const i64 cg = c / groups, og = o / groups;
    MPC_GRID_STRIDE(e, o * cg * kh * kw) {
        const i64 j = e % kw, i = (e / kw) % kh, ci = (e / (kw * kh)) % cg, oc = e / (kw * kh * cg);
        const i64 g = oc / og;
        float acc = 0.0f;
        for (i64 b = 0; b < n; ++b) {
            const T* plane = x + (b * c + g * cg + ci) * h * w;
            const T* d = dy + (b * o + oc) * oh * ow;
            float inner = 0.0f;
            for (i64 oy = 0; oy < oh; ++oy) {
                const i64 iy = oy * sh + i * dh - ph;
                for (i64 ox = 0; ox < ow; ++ox) {
                    const i64 ix = ox * sw + j * dl - pw;
                    const float xv = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? to_f32(plane[iy * w + ix]) : 0.0f;
                    inner += to_f32(d[oy * ow + ox]) * xv;
                }
            }
            acc += inner;
        }
        dw[e] = from_f32<T>(acc);
    }
}

#define MPC_CONV(T, TN)                                                                                             \
    extern "C" __global__ void conv2d_##TN(const T* x, const T* wt, T* y, MPC_CONV_DIMS) {                          \
        conv_fwd<T>(x, wt, y, MPC_CONV_ARGS);                                                                       \
    }                                                                                                               \
    MPC_EXPORT(conv2d_##TN)                                                                                         \
    extern "C" __global__ void conv2d_grad_input_##TN(const T* dy, const T* wt, T* dx, MPC_CONV_DIMS) {             \
        conv_dx<T>(dy, wt, dx, MPC_CONV_ARGS);                                                                      \
    }                                                                                                               \
    MPC_EXPORT(conv2d_grad_input_##TN)                                                                              \
    extern "C" __global__ void conv2d_grad_weight_##TN(const T* dy, const T* x, T* dw, MPC_CONV_DIMS) {             \
        conv_dw<T>(dy, x, dw, MPC_CONV_ARGS);                                                                       \
    }                                                                                                               \
    MPC_EXPORT(conv2d_grad_weight_##TN)

MPC_CONV(float, f32)
MPC_CONV(__half, f16)
MPC_CONV(__nv_bfloat16, bf16)
