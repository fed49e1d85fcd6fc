//! Loading a graph file, with errors that point into the file.

use std::path::{Path, PathBuf};

use crate::diag::{problems_report, syntax_report};
use crate::format::parse::{parse_str, ParseError};
use crate::ir::graph::Graph;

/// A graph read from a file, with the text kept for error messages.
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub graph: Graph,
}

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {err}", .path.display())]
    Parse { path: PathBuf, text: String, err: ParseError },
    #[error(
        "{}: an ONNX model, not an mpc graph file: `mpc import {0} -o model.json` makes a training graph of it, \
         `mpc lower {0} --emit onnx` converts it to FP16/BF16 directly",
        .path.display()
    )]
    Onnx { path: PathBuf },
}

impl LoadError {
    /// A report with source snippets, for a terminal.
    pub fn into_report(self) -> miette::Report {
        match self {
            LoadError::Io { .. } | LoadError::Onnx { .. } => miette::Report::msg(self.to_string()),
            LoadError::Parse { path, text, err } => {
                let p = path.display().to_string();
                match err {
                    ParseError::Syntax { line, column, message } => {
                        miette::Report::new(syntax_report(&p, &text, line, column, message))
                    }
                    ParseError::Invalid(problems) => problems_report(&p, &text, &problems),
                }
            }
        }
    }
}

/// Reads and parses a graph file.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        return Err(LoadError::Onnx { path: path.to_path_buf() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    crate::timings::mark("read");
    let parsed = parse_str(&text);
    crate::timings::mark("parse");
    match parsed {
        Ok(graph) => Ok(Loaded { path: path.to_path_buf(), text, graph }),
        Err(err) => Err(LoadError::Parse { path: path.to_path_buf(), text, err }),
    }
}
