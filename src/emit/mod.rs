//! Emitters: JSON (the input format, round-trips), text and DOT.

pub mod dot;
pub mod json;
pub mod text;

/// The output formats of `mpc lower --emit`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    Json,
    Text,
    Dot,
}

/// Renders a graph in the given format.
pub fn emit(g: &crate::Graph, how: Emit) -> String {
    match how {
        Emit::Json => json::to_string(g),
        Emit::Text => text::to_string(g),
        Emit::Dot => dot::to_string(g),
    }
}
