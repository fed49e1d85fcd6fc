//! Executors: run a lowered graph, one training step at a time.
//!
//! [`Backend`] is what a device implements: buffers that live on the device
//! and one kernel launch per op. [`CpuBackend`] is the reference: it
//! implements every [`crate::Op`] exactly as the op's doc comment says, with
//! the numerics of docs/DESIGN.md ("Numerics of the CPU reference executor"):
//! values of a low type are stored in that type, an op reads its inputs,
//! computes in f32 (accumulating in f32) and rounds its output once to the
//! output dtype, round to nearest even. A CUDA backend is tested against it.
//!
//! [`Executor`] plans a graph once and runs steps as a pure function of
//! (state, batch, step number); [`init_state`] materialises params and state.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod fuse;
pub mod init;
pub mod memory;
pub mod memplan;
pub mod rng;
pub mod run;
pub mod session;

pub use crate::tensor::{Data, Tensor};
pub use backend::{Backend, OpCtx, StepRun};
pub use cpu::CpuBackend;
pub use init::{init_state, init_state_with};
pub use run::{Executor, Plan, RunOptions, State, StepResult};
pub use session::{GraphRuns, Session, StepReport, Trainer};

/// An error while executing a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// A kernel failed (bad label or id, inconsistent types, ...).
    #[error("node `{node}` ({op}): {message}")]
    Op {
        /// The node's name.
        node: String,
        /// The op's name as written in the format.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A param, state or batch tensor is missing or has the wrong type.
    #[error("value `{name}`: {message}")]
    Value {
        /// The value's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The graph cannot be planned (a cycle, a missing value).
    #[error("the graph cannot be executed: {0}")]
    Graph(String),
    /// A tensor was built from inconsistent parts.
    #[error("tensor: {0}")]
    Tensor(String),
}

impl From<crate::tensor::TensorError> for ExecError {
    fn from(e: crate::tensor::TensorError) -> ExecError {
        ExecError::Tensor(e.0)
    }
}
