// Included first by every kernels/*.cu file. The same sources compile two
// ways: by NVRTC for the GPU, and by g++ for the host under the SIMT
// emulation (MPC_EMU, kernels/emu/simt.h), which the tests run against the
// CPU reference. Kernels may use only what both provide; the list is in
// kernels/README.md.
#pragma once

#ifdef MPC_EMU
#include "emu/simt.h"
#else
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// After each kernel: registers it with the emulation; nothing on the GPU.
#define MPC_EXPORT(name)
#endif

// NVRTC has no <cstdint>.
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;
