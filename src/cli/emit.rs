//! `mpc lower --emit`: which form the lowered graph is written in.

use mpc::format::emit::{dot, json, text};
use mpc::onnx::export::{export_bytes, ExportError, Options};

/// The output formats of `mpc lower --emit`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    Json,
    Text,
    Dot,
    /// The forward (inference) part as an ONNX model (binary protobuf).
    Onnx,
}

/// Renders a graph in the given format. Only the ONNX export can fail
/// (unsupported ops, no inference outputs, initial values); `onnx` holds
/// its settings and is ignored by the text formats.
pub fn emit(g: &mpc::Graph, how: Emit, onnx: &Options) -> Result<Vec<u8>, ExportError> {
    Ok(match how {
        Emit::Json => json::to_string(g).into_bytes(),
        Emit::Text => text::to_string(g).into_bytes(),
        Emit::Dot => dot::to_string(g).into_bytes(),
        Emit::Onnx => export_bytes(g, onnx)?,
    })
}
