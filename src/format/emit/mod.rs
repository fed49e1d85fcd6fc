//! Emitters: JSON (the input format, round-trips), text and DOT (ONNX is
//! [`crate::onnx::export`]).

pub mod dot;
pub mod json;
pub mod text;
