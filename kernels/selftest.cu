// Self-test kernels: one or more per feature of the kernel subset, so that
// the SIMT emulation (tests/emu.rs) and a real GPU can be checked against
// values computed on the host. They compute nothing mpc needs.
//
// The selftest_bad_* kernels break CUDA's rules on purpose (a barrier not
// every thread reaches); the emulation must report them. They are undefined
// behaviour on a GPU: never launch them there.
#include "common.cuh"

// Sums x: each block reduces a grid-stride slice of x in shared memory (a tree
// with __syncthreads() between the levels) and writes its sum to
// partial[blockIdx.x]. Any 1-D block of up to 1024 threads.
extern "C" __global__ void selftest_block_sum(const float* __restrict__ x, float* __restrict__ partial, u32 n) {
    __shared__ float s[1024];
    u32 t = threadIdx.x;
    float acc = 0.0f;
    for (u32 i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    s[t] = acc;
    __syncthreads();
    // Before the level `stride`, s[0, min(2 stride, blockDim.x)) holds the sum.
    for (u32 stride = 512; stride > 0; stride >>= 1) {
        if (t < stride && t + stride < blockDim.x) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) partial[blockIdx.x] = s[0];
}
MPC_EXPORT(selftest_block_sum)

// Warp reductions of one value per thread (0 past n), for 1-D blocks of whole
// warps: the float sum by __shfl_down_sync (lane 0 has it: sum_f[warp]), the
// int sum by __shfl_xor_sync (every lane has it: sum_i[thread]), the double
// maximum by __shfl_xor_sync and its sum by __shfl_down_sync (max_d[warp],
// sum_d[warp]). `warp` counts warps over the whole grid.
extern "C" __global__ void selftest_warp_reduce(const float* __restrict__ xf, const i32* __restrict__ xi,
                                                const double* __restrict__ xd, float* __restrict__ sum_f,
                                                i32* __restrict__ sum_i, double* __restrict__ max_d,
                                                double* __restrict__ sum_d, u32 n) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    float f = i < n ? xf[i] : 0.0f;
    i32 v = i < n ? xi[i] : 0;
    double m = i < n ? xd[i] : -1e300;
    double d = i < n ? xd[i] : 0.0;
    for (u32 off = 16; off > 0; off >>= 1) f += __shfl_down_sync(0xffffffffu, f, off);
    for (i32 lane_mask = 1; lane_mask < 32; lane_mask <<= 1) v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
    for (i32 lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
        double o = __shfl_xor_sync(0xffffffffu, m, lane_mask);
        m = o > m ? o : m;
    }
    for (u32 off = 16; off > 0; off >>= 1) d += __shfl_down_sync(0xffffffffu, d, off);
    sum_i[i] = v;
    if ((threadIdx.x & 31) == 0) {
        sum_f[i / 32] = f;
        max_d[i / 32] = m;
        sum_d[i / 32] = d;
    }
}
MPC_EXPORT(selftest_warp_reduce)

// Shuffles within segments: width 8 (xor 5 and down 3 inside each group of
// 8 lanes). out[2 i] = the xor result, out[2 i + 1] = the down result.
extern "C" __global__ void selftest_shfl_width(u32* __restrict__ out) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    i32 v = (i32)(i * 7 + 1);
    out[2 * i] = (u32)__shfl_xor_sync(0xffffffffu, v, 5, 8);
    out[2 * i + 1] = (u32)__shfl_down_sync(0xffffffffu, v, 3, 8);
}
MPC_EXPORT(selftest_shfl_width)

// The atomics, over a grid-stride loop: fsum += x[i], count += 1 (its old
// value is i's slot in `order`, so `order` is a permutation of 0..n),
// vmax = max(vmax, v[i]), bits |= b[i].
extern "C" __global__ void selftest_atomics(const float* __restrict__ x, const i32* __restrict__ v,
                                            const u32* __restrict__ b, u32 n, float* fsum, u32* count, i32* vmax,
                                            u32* bits, u32* order) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        atomicAdd(fsum, x[i]);
        u32 slot = atomicAdd(count, 1u);
        order[slot] = i;
        atomicMax(vmax, v[i]);
        atomicOr(bits, b[i]);
    }
}
MPC_EXPORT(selftest_atomics)

// 3-D (or 2-D with z = 1) grids of 3-D blocks over an nx x ny x nz box: each
// thread inside it writes who it is to ids[4 c .. 4 c + 4] (threadIdx packed
// x | y << 10 | z << 20, then blockIdx.x, .y, .z) and counts its visit in
// visits[c], c = (z ny + y) nx + x. Thread (0,0,0) of block (0,0,0) writes
// blockDim and gridDim to dims[0..6].
extern "C" __global__ void selftest_index3d(u32* __restrict__ ids, u32* __restrict__ visits, u32* __restrict__ dims,
                                            u32 nx, u32 ny, u32 nz) {
    u32 x = blockIdx.x * blockDim.x + threadIdx.x;
    u32 y = blockIdx.y * blockDim.y + threadIdx.y;
    u32 z = blockIdx.z * blockDim.z + threadIdx.z;
    if ((threadIdx.x | threadIdx.y | threadIdx.z | blockIdx.x | blockIdx.y | blockIdx.z) == 0) {
        dims[0] = blockDim.x;
        dims[1] = blockDim.y;
        dims[2] = blockDim.z;
        dims[3] = gridDim.x;
        dims[4] = gridDim.y;
        dims[5] = gridDim.z;
    }
    if (x < nx && y < ny && z < nz) {
        u32 c = (z * ny + y) * nx + x;
        ids[4 * c] = threadIdx.x | threadIdx.y << 10 | threadIdx.z << 20;
        ids[4 * c + 1] = blockIdx.x;
        ids[4 * c + 2] = blockIdx.y;
        ids[4 * c + 3] = blockIdx.z;
        atomicAdd(&visits[c], 1u);
    }
}
MPC_EXPORT(selftest_index3d)

// y = a x + y over a grid-stride loop with 64-bit indices.
extern "C" __global__ void selftest_saxpy(float a, const float* __restrict__ x, float* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)blockDim.x * gridDim.x) {
        y[i] = a * x[i] + y[i];
    }
}
MPC_EXPORT(selftest_saxpy)

// Every scalar parameter type, written back: out_f = {e, f},
// out_i = {a, b, c, d as i64}.
extern "C" __global__ void selftest_scalars(i32 a, u32 b, i64 c, u64 d, float e, double f, double* __restrict__ out_f,
                                            i64* __restrict__ out_i) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        out_f[0] = e;
        out_f[1] = f;
        out_i[0] = a;
        out_i[1] = b;
        out_i[2] = c;
        out_i[3] = (i64)d;
    }
}
MPC_EXPORT(selftest_scalars)

// The 16-bit float conversions, element-wise over grid-stride loops.
extern "C" __global__ void selftest_f32_to_f16(const float* __restrict__ x, __half* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)blockDim.x * gridDim.x) {
        y[i] = __float2half_rn(x[i]);
    }
}
MPC_EXPORT(selftest_f32_to_f16)

extern "C" __global__ void selftest_f16_to_f32(const __half* __restrict__ x, float* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)blockDim.x * gridDim.x) {
        y[i] = __half2float(x[i]);
    }
}
MPC_EXPORT(selftest_f16_to_f32)

extern "C" __global__ void selftest_f32_to_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)blockDim.x * gridDim.x) {
        y[i] = __float2bfloat16_rn(x[i]);
    }
}
MPC_EXPORT(selftest_f32_to_bf16)

extern "C" __global__ void selftest_bf16_to_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)blockDim.x * gridDim.x) {
        y[i] = __bfloat162float(x[i]);
    }
}
MPC_EXPORT(selftest_bf16_to_f32)

// The math functions of the subset on each x[i]: y[10 i ..] (float),
// yd[5 i ..] (double on (double)x[i]), flags[4 i ..] (bits and
// classification).
extern "C" __global__ void selftest_math(const float* __restrict__ x, float* __restrict__ y,
                                         double* __restrict__ yd, u32* __restrict__ flags, u32 n) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        float v = x[i];
        float* o = y + 10 * i;
        o[0] = expf(v);
        o[1] = logf(v);
        o[2] = tanhf(v);
        o[3] = erff(v);
        o[4] = sqrtf(v);
        o[5] = fabsf(v);
        o[6] = fmaxf(v, 0.5f);
        o[7] = fminf(v, 0.5f);
        o[8] = powf(fabsf(v), 1.5f);
        o[9] = __uint_as_float(__float_as_uint(v) ^ 0x80000000u);
        double d = v;
        double* od = yd + 5 * i;
        od[0] = exp(d);
        od[1] = log(d);
        od[2] = sqrt(d);
        od[3] = pow(d, 3.0);
        od[4] = isfinite(d) ? 1.0 : 0.0;
        u32* of = flags + 4 * i;
        of[0] = __float_as_uint(v);
        of[1] = isinf(v) ? 1u : 0u;
        of[2] = isnan(v) ? 1u : 0u;
        of[3] = isfinite(v) ? 1u : 0u;
    }
}
MPC_EXPORT(selftest_math)

// ---- emulation-only negative tests (undefined behaviour on a GPU) ---------

// Threads at or past n return before the __syncthreads() the others wait at.
extern "C" __global__ void selftest_bad_sync_after_exit(float* x, u32 n) {
    u32 t = threadIdx.x;
    if (t >= n) return;
    x[t] = 1.0f;
    __syncthreads();
    x[t] += 1.0f;
}
MPC_EXPORT(selftest_bad_sync_after_exit)

// __syncthreads() in a branch only the first 16 threads take.
extern "C" __global__ void selftest_bad_divergent_sync(float* x) {
    if (threadIdx.x < 16) __syncthreads();
    x[threadIdx.x] = 1.0f;
}
MPC_EXPORT(selftest_bad_divergent_sync)

// A full-mask shuffle that only the lower 16 lanes of each warp call.
extern "C" __global__ void selftest_bad_divergent_shfl(float* x) {
    float v = x[threadIdx.x];
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    x[threadIdx.x] = v;
}
MPC_EXPORT(selftest_bad_divergent_shfl)
