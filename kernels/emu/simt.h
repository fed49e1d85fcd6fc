// The SIMT emulation: makes the kernel subset (docs/EMULATION.md) compile
// with g++ (C++20) for the host and runs a launch there, so the same
// kernels/*.cu sources that NVRTC compiles for the GPU run in `cargo test`.
// Included by kernels/common.cuh under MPC_EMU only; the runtime (fibers,
// barriers, the scheduler) is in simt.cpp beside it.
//
// How a launch runs: the blocks one after the other; the threads of a block
// as cooperative fibers on the launching OS thread, each on its own stack.
// A fiber runs until it finishes or waits at __syncthreads() or a warp
// shuffle; nothing preempts it. See docs/EMULATION.md.
#pragma once

#ifndef MPC_EMU
#error "emu/simt.h is the host build of the kernels (MPC_EMU); NVRTC uses the CUDA headers"
#endif

#include <math.h>  // expf, logf, ... in the global namespace, and isnan/isinf/isfinite overloads
#include <stdint.h>
#include <string.h>

#include <bit>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------
// The C ABI of a launch, shared with src/exec/cuda/emu.rs (keep in step).

extern "C" {
// One launch: the grid and block sizes, the dynamic shared memory (must be 0:
// the subset has static __shared__ arrays only), and the kinds of the
// arguments the caller passes (MPC_EMU_ARG_*), checked against the
// kernel's parameters.
struct MpcEmuLaunch {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t shared_bytes;
    uint32_t num_args;
    const uint8_t* arg_kinds;
};

// The message of the last failed launch on the calling OS thread (valid until
// its next launch); "" when there was none.
const char* mpc_emu_last_error(void);
}

// Kinds of kernel arguments (MpcEmuLaunch::arg_kinds).
enum : uint8_t {
    MPC_EMU_ARG_PTR = 0,
    MPC_EMU_ARG_I32 = 1,
    MPC_EMU_ARG_U32 = 2,
    MPC_EMU_ARG_I64 = 3,
    MPC_EMU_ARG_U64 = 4,
    MPC_EMU_ARG_F32 = 5,
    MPC_EMU_ARG_F64 = 6,
};

// What mpc_emu_<name> returns.
enum : int {
    MPC_EMU_OK = 0,
    MPC_EMU_ERR_CONFIG = 1,     // grid/block sizes out of CUDA's limits, dynamic shared memory
    MPC_EMU_ERR_ARGS = 2,       // arguments do not match the kernel's parameters
    MPC_EMU_ERR_DEADLOCK = 3,   // a barrier that not all threads (or lanes) reach
    MPC_EMU_ERR_WARP = 4,       // a bad shuffle: lane not in its mask, masks differ, bad width
    MPC_EMU_ERR_RESOURCES = 5,  // fiber stacks could not be allocated
    MPC_EMU_ERR_NESTED = 6,     // a launch from inside a launch on the same OS thread
};

// ---------------------------------------------------------------------------
// Keywords and built-in variables.

#define __global__
#define __device__
#define __forceinline__ inline
// No restrict on the host: a kernel's threads run interleaved in one address
// space, and g++ must not keep a value loaded through one thread's restrict
// pointer across a barrier where another thread stores it.
#define __restrict__
// One array per kernel and OS thread. Correct because the blocks of a launch
// run one at a time on the launching OS thread: the fibers (threads) of the
// running block share the array as a block shares its shared memory, and
// the next block reuses it (its contents at block start are undefined on a
// GPU too). thread_local, not plain static, so launches on different OS
// threads (parallel tests) do not share it. `static __shared__` is not
// accepted (it would read `static static`).
#define __shared__ static thread_local

struct uint3 {
    unsigned int x, y, z;
};

namespace mpc_emu {

// What the running thread sees as its built-in variables.
struct ThreadIds {
    uint3 thread_idx;
    uint3 block_idx;
    uint3 block_dim;
    uint3 grid_dim;
    unsigned int lane;  // index in its warp: the linear thread index % 32
};

// The running fiber's ids, set by the scheduler before it switches to a
// fiber (initial-exec: one load from the thread pointer). A copy of the
// runtime in a library loaded later with dlopen (generated kernels,
// src/exec/cuda/emu_jit.rs) defines MPC_EMU_DLOPEN and takes the default
// model: the static TLS block has no room left for it by then.
#ifdef MPC_EMU_DLOPEN
#define MPC_EMU_TLS_MODEL
#else
#define MPC_EMU_TLS_MODEL __attribute__((tls_model("initial-exec")))
#endif
extern __thread const ThreadIds* cur_ids MPC_EMU_TLS_MODEL;

void syncthreads();
// Writes `bits` to the calling lane's slot, waits until every lane in `mask`
// that exists has written, and returns lane `src`'s value (the caller's own
// when `src` is not one of those lanes).
uint64_t warp_exchange(unsigned int mask, uint64_t bits, unsigned int src);
// The shuffle width, checked (a power of 2 up to 32; fails the launch otherwise).
unsigned int shfl_width(int width);

}  // namespace mpc_emu

#define threadIdx (::mpc_emu::cur_ids->thread_idx)
#define blockIdx (::mpc_emu::cur_ids->block_idx)
#define blockDim (::mpc_emu::cur_ids->block_dim)
#define gridDim (::mpc_emu::cur_ids->grid_dim)
constexpr int warpSize = 32;

// The barriers are calls into simt.cpp, which g++ cannot see through, so
// memory is already stored before and reloaded after them; the empty asm
// statements say so for memory the compiler might think private.
inline void __syncthreads() {
    asm volatile("" ::: "memory");
    ::mpc_emu::syncthreads();
    asm volatile("" ::: "memory");
}

// ---------------------------------------------------------------------------
// Warp shuffles (int, unsigned, long long, unsigned long long, float,
// double). Every lane in the mask must call the same shuffle; a lane whose
// source is outside its width segment gets its own value, as in CUDA.

namespace mpc_emu {
template <class T>
inline constexpr bool shfl_type = std::is_same_v<T, int> || std::is_same_v<T, unsigned int> ||
                                  std::is_same_v<T, long long> || std::is_same_v<T, unsigned long long> ||
                                  std::is_same_v<T, float> || std::is_same_v<T, double>;

template <class T>
inline T shfl(unsigned int mask, T var, unsigned int src) {
    static_assert(shfl_type<T>, "warp shuffles take int, unsigned, long long, unsigned long long, float or double");
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof var);
    bits = warp_exchange(mask, bits, src);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}
}  // namespace mpc_emu

template <class T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
    unsigned int w = ::mpc_emu::shfl_width(width);
    unsigned int lane = ::mpc_emu::cur_ids->lane;
    unsigned int src = delta < w - lane % w ? lane + delta : lane;
    return ::mpc_emu::shfl(mask, var, src);
}

template <class T>
inline T __shfl_xor_sync(unsigned int mask, T var, int laneMask, int width = warpSize) {
    unsigned int w = ::mpc_emu::shfl_width(width);
    unsigned int lane = ::mpc_emu::cur_ids->lane;
    unsigned int src = lane ^ static_cast<unsigned int>(laneMask);
    if (src >= (lane / w + 1) * w) src = lane;
    return ::mpc_emu::shfl(mask, var, src);
}

// ---------------------------------------------------------------------------
// Atomics. Plain read-modify-writes are atomic here: a fiber is never
// preempted, it yields only inside __syncthreads() and the shuffles, and a
// launch runs on one OS thread over memory that only its EmuGpu reaches.
// Each returns the old value, as in CUDA.

inline float atomicAdd(float* address, float val) {
    float old = *address;
    *address = old + val;
    return old;
}

inline unsigned int atomicAdd(unsigned int* address, unsigned int val) {
    unsigned int old = *address;
    *address = old + val;
    return old;
}

inline int atomicMax(int* address, int val) {
    int old = *address;
    if (val > old) *address = val;
    return old;
}

inline unsigned int atomicOr(unsigned int* address, unsigned int val) {
    unsigned int old = *address;
    *address = old | val;
    return old;
}

// ---------------------------------------------------------------------------
// Bit casts and the 16-bit float types. The conversions are CUDA's: round to
// nearest even, subnormals kept, overflow to inf (half) and NaN kept NaN
// (sign and top payload bits kept, quiet bit set; a GPU may return a
// canonical NaN instead). The types have no arithmetic: kernels convert
// explicitly, which is what the subset allows.

inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

struct __half {
    unsigned short __x;
};

struct __nv_bfloat16 {
    unsigned short __x;
};

inline __half __float2half_rn(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    uint32_t h;
    if (ax > 0x7f800000u) {
        h = 0x7e00u | ((ax >> 13) & 0x3ffu);  // NaN: quiet, top payload bits
    } else if (ax >= 0x477ff000u) {
        h = 0x7c00u;  // inf, or at least 65520 (halfway to 2^16 and beyond): rounds to inf
    } else if (ax >= 0x38800000u) {
        // Normal: rebias the exponent (127 -> 15) and round 13 mantissa bits
        // away, ties to even; a carry into the exponent is right.
        uint32_t r = ax - 0x38000000u;
        h = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    } else if (ax <= 0x33000000u) {
        h = 0;  // at most 2^-25 (half the smallest subnormal): rounds to 0
    } else {
        // Subnormal: the value in units of 2^-24 is m * 2^(e - 126).
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;  // 14..24
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (q & 1u))) q += 1;  // may reach 0x400: the smallest normal
        h = q;
    }
    return __half{static_cast<unsigned short>(sign | h)};
}

inline float __half2float(__half h) {
    uint32_t sign = static_cast<uint32_t>(h.__x & 0x8000u) << 16;
    uint32_t e = (h.__x >> 10) & 0x1fu;
    uint32_t m = h.__x & 0x3ffu;
    uint32_t x;
    if (e == 0x1f) {
        x = m == 0 ? 0x7f800000u : 0x7fc00000u | (m << 13);  // inf; NaN: quiet, payload kept
    } else if (e != 0) {
        x = ((e + 112u) << 23) | (m << 13);
    } else if (m == 0) {
        x = 0;
    } else {
        // Subnormal: normalise (m * 2^-24 with m < 2^10).
        int shift = std::countl_zero(m) - 21;  // leading zeros within 11 bits
        m = (m << shift) & 0x3ffu;
        x = static_cast<uint32_t>(113 - shift) << 23 | (m << 13);
    }
    return std::bit_cast<float>(sign | x);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return __nv_bfloat16{static_cast<unsigned short>((x >> 16) | 0x40u)};  // NaN: quiet
    }
    // Ties to even; overflow carries into inf, which is right.
    x += 0x7fffu + ((x >> 16) & 1u);
    return __nv_bfloat16{static_cast<unsigned short>(x >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 b) { return std::bit_cast<float>(static_cast<uint32_t>(b.__x) << 16); }

// ---------------------------------------------------------------------------
// Registration: MPC_EXPORT(name) after each kernel defines
//   extern "C" int mpc_emu_<name>(const MpcEmuLaunch* cfg, void** args)
// where args[i] points to the i-th parameter's value (cuLaunchKernel's
// kernelParams). build.rs finds these lines and lists them for Rust.

namespace mpc_emu {

using Body = void (*)(void*);

// Checks the launch's argument kinds against the kernel's parameters.
int check_args(const char* name, const MpcEmuLaunch* cfg, const uint8_t* kinds, uint32_t nparams);
// Runs `body(ctx)` as every thread of the grid.
int run(const char* name, const MpcEmuLaunch* cfg, Body body, void* ctx);

template <class T>
inline constexpr bool always_false = false;

template <class T>
inline constexpr bool elem_type = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                  std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16> ||
                                  std::is_same_v<T, int> || std::is_same_v<T, long long> ||
                                  std::is_same_v<T, unsigned int> || std::is_same_v<T, unsigned long long> ||
                                  std::is_same_v<T, unsigned char>;

template <class P>
constexpr uint8_t arg_kind() {
    if constexpr (std::is_pointer_v<P>) {
        static_assert(elem_type<std::remove_cv_t<std::remove_pointer_t<P>>>,
                      "kernel pointer parameters point to float, double, __half, __nv_bfloat16, i32, i64, u32, "
                      "u64 or unsigned char");
        return MPC_EMU_ARG_PTR;
    } else if constexpr (std::is_same_v<P, int>) {
        return MPC_EMU_ARG_I32;
    } else if constexpr (std::is_same_v<P, unsigned int>) {
        return MPC_EMU_ARG_U32;
    } else if constexpr (std::is_same_v<P, long long>) {
        return MPC_EMU_ARG_I64;
    } else if constexpr (std::is_same_v<P, unsigned long long>) {
        return MPC_EMU_ARG_U64;
    } else if constexpr (std::is_same_v<P, float>) {
        return MPC_EMU_ARG_F32;
    } else if constexpr (std::is_same_v<P, double>) {
        return MPC_EMU_ARG_F64;
    } else {
        static_assert(always_false<P>, "kernel scalar parameters are i32, u32, i64, u64, float or double");
        return 0xff;
    }
}

template <class P>
inline P load_arg(const void* p) {
    P v;
    memcpy(&v, p, sizeof v);
    return v;
}

template <class... P, size_t... I>
int launch(void (*kernel)(P...), const char* name, const MpcEmuLaunch* cfg, [[maybe_unused]] void** args,
           std::index_sequence<I...>) {
    static constexpr uint8_t kinds[sizeof...(P) + 1] = {arg_kind<P>()..., 0};
    int rc = check_args(name, cfg, kinds, sizeof...(P));
    if (rc != MPC_EMU_OK) return rc;
    // Every thread calls the kernel with its own copies of the parameters.
    struct Ctx {
        void (*kernel)(P...);
        std::tuple<P...> params;
    };
    Ctx ctx{kernel, std::tuple<P...>(load_arg<P>(args[I])...)};
    return run(
        name, cfg, [](void* c) { std::apply(static_cast<Ctx*>(c)->kernel, static_cast<Ctx*>(c)->params); }, &ctx);
}

template <class... P>
int launch(void (*kernel)(P...), const char* name, const MpcEmuLaunch* cfg, void** args) {
    return launch(kernel, name, cfg, args, std::index_sequence_for<P...>{});
}

}  // namespace mpc_emu

#define MPC_EXPORT(name)                                                    \
    extern "C" int mpc_emu_##name(const MpcEmuLaunch* cfg, void** args) { \
        return ::mpc_emu::launch(&name, #name, cfg, args);                  \
    }
