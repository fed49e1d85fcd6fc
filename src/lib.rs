//! mpc: a mixed-precision training compiler.
//!
//! A training graph is read from JSON ([`parse`]), checked ([`verify`]),
//! rewritten by the passes ([`passes`]) and written out ([`emit`]).
//!
//! ```
//! let text = std::fs::read_to_string("ir-examples/mlp.json").unwrap();
//! let mut graph = mpc::parse_str(&text).unwrap();
//! mpc::verify(&graph).unwrap();
//! mpc::passes::lower(&mut graph, &mpc::passes::Options::default()).unwrap();
//! println!("{}", mpc::emit::text::to_string(&graph));
//! ```

pub mod attrs;
pub mod bench;
pub mod checkpoint;
pub mod cost;
pub mod data;
pub mod diag;
pub mod emit;
pub mod exec;
pub mod format;
pub mod gen;
pub mod graph;
pub mod infer;
pub mod io;
pub mod onnx;
pub mod op;
pub mod opinfo;
pub mod parse;
pub mod semantics;
pub mod timings;
pub mod training;
pub mod types;
pub mod verify;

#[path = "../passes/mod.rs"]
pub mod passes;

pub use diag::Problem;
pub use graph::{Graph, Node, NodeId, ValueId};
pub use op::{Op, OpKind, Precision, Role};
pub use parse::{parse_str, ParseError};
pub use types::{DType, Shape, TensorType};
pub use verify::{verify, VerifyError};
