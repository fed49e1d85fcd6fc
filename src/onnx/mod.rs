//! ONNX interchange: `mpc import` reads an ONNX model into mpc's IR, and
//! `--emit onnx` writes the forward part of a lowered graph back out.

pub mod ahead;
pub mod chunks;
mod convert;
pub mod export;
mod forward;
pub mod import;
pub mod lower;
pub mod proto;
pub mod raw;
pub mod tensor;

pub use forward::{default_output, forward_part, lower_forward};
pub use import::{import, ImportError, ImportOptions, Imported, Loss};
