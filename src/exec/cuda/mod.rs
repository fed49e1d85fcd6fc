//! The CUDA backend: the device layer ([`gpu::Gpu`]), implemented on cudarc
//! for a real GPU and by the SIMT emulation for tests without one, and the
//! NVRTC compilation of the kernels ([`nvrtc`]).

pub mod backend;
pub mod device;
pub mod emu;
mod emu_jit;
pub mod fused;
pub mod gpu;
pub mod graph;
pub mod kcache;
pub mod launch;
pub mod multi;
pub mod nvrtc;
pub mod probe;
