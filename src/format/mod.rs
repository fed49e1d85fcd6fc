//! The file format layer, above the IR: the JSON model of a graph file
//! ([`raw`]), op attributes as written ([`attrs`]), the parser ([`parse`],
//! file → [`crate::Graph`]) and the emitters ([`emit`]: JSON, text, DOT), and [`load`] of a file with errors
//! that point into it.

pub mod attrs;
pub mod emit;
pub mod load;
pub mod parse;
pub mod raw;

pub use raw::*;
