//! The IR: the graph, the op table, element and tensor types, type
//! inference and the verifier.
//!
//! This layer depends on nothing above it (no file format, no executor, no
//! CLI): the format layer ([`crate::format`]) reads and writes it, the
//! passes rewrite it, the executors ([`crate::exec`]) run it.

pub mod graph;
pub mod infer;
pub mod op;
pub mod opinfo;
pub mod optimizer;
pub mod semantics;
pub mod types;
pub mod verify;
