//! mpc: a mixed-precision training compiler.
//!
//! A training graph is read from JSON ([`format::parse`]), checked
//! ([`ir::verify`]), rewritten by the passes ([`passes`]) and written out
//! ([`format::emit`]) or run ([`exec`]).
//!
//! The layers, each using only those before it: [`diag`] and [`io`]
//! (problems with places, atomic files); [`ir`] (graph, op table, types,
//! inference, verifier); [`tensor`] (host tensors, roundings, safetensors
//! files); [`format`](mod@format) (the file format); [`passes`]; [`exec`]
//! (executors: the CPU reference and CUDA); [`onnx`] (import and export);
//! [`train`] (training runs: data, checkpoints, benchmarks). The `mpc`
//! binary (`src/cli/`) is a thin layer over them and the only place that
//! knows about command-line parsing.
//!
//! ```
//! let text = std::fs::read_to_string("ir-examples/mlp.json").unwrap();
//! let mut graph = mpc::parse_str(&text).unwrap();
//! mpc::verify(&graph).unwrap();
//! mpc::passes::lower(&mut graph, &mpc::passes::Options::default()).unwrap();
//! println!("{}", mpc::format::emit::text::to_string(&graph));
//! ```

pub mod choice;
pub mod cost;
pub mod diag;
pub mod exec;
pub mod format;
pub mod gen;
pub mod io;
pub mod ir;
pub mod onnx;
pub mod tensor;
pub mod timings;
pub mod train;

#[path = "../passes/mod.rs"]
pub mod passes;

pub use diag::Problem;
pub use format::parse::{parse_str, ParseError};
pub use ir::graph::{Graph, Node, NodeId, ValueId};
pub use ir::op::{Op, OpKind, Precision, Role};
pub use ir::types::{DType, Shape, TensorType};
pub use ir::verify::{verify, VerifyError};
