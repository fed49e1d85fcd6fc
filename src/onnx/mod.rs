//! ONNX interchange: `mpc import` reads an ONNX model into mpc's IR, and
//! `--emit onnx` writes the forward part of a lowered graph back out.

pub mod export;
pub mod proto;
