//! Emitters: JSON (the input format, round-trips), text, DOT and ONNX.

pub mod dot;
pub mod json;
pub mod text;

/// The output formats of `mpc lower --emit`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    Json,
    Text,
    Dot,
    /// The forward (inference) part as an ONNX model (binary protobuf).
    Onnx,
}

impl crate::choice::Choice for Emit {
    const ALL: &'static [Emit] = &[Emit::Json, Emit::Text, Emit::Dot, Emit::Onnx];

    fn name(self) -> &'static str {
        match self {
            Emit::Json => "json",
            Emit::Text => "text",
            Emit::Dot => "dot",
            Emit::Onnx => "onnx",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Emit::Onnx => "The forward (inference) part as an ONNX model (binary protobuf)",
            _ => "",
        }
    }
}

/// Renders a graph in the given format. Only the ONNX export can fail
/// (unsupported ops, no inference outputs, initial values); `onnx` holds
/// its settings and is ignored by the text formats.
pub fn emit(
    g: &crate::Graph,
    how: Emit,
    onnx: &crate::onnx::export::Options,
) -> Result<Vec<u8>, crate::onnx::export::ExportError> {
    Ok(match how {
        Emit::Json => json::to_string(g).into_bytes(),
        Emit::Text => text::to_string(g).into_bytes(),
        Emit::Dot => dot::to_string(g).into_bytes(),
        Emit::Onnx => crate::onnx::export::export_bytes(g, onnx)?,
    })
}
