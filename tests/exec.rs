//! The CPU reference executor through the backend conformance suite
//! (tests/conformance/suite.rs): gradients against finite differences,
//! low-precision numerics, a full lowered training step with dynamic loss
//! scaling, and GradScaler's contract.

fn backend() -> mpc::exec::CpuBackend {
    mpc::exec::CpuBackend
}

const STOPS_ON_BAD_LABELS: bool = true;

include!("conformance/suite.rs");
