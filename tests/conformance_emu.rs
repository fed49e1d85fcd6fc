//! The CUDA backend, its kernels run by the SIMT emulation, through the
//! backend conformance suite (tests/conformance/suite.rs) that the CPU
//! reference passes in tests/exec.rs.

fn backend() -> mpc::exec::cuda::backend::CudaBackend<mpc::exec::cuda::emu::EmuGpu> {
    mpc::exec::cuda::backend::CudaBackend::new(mpc::exec::cuda::emu::EmuGpu::new(), false)
}

const STOPS_ON_BAD_LABELS: bool = false;

include!("conformance/suite.rs");
