//! Running the `mpc` binary from integration tests.

use std::process::{Command, Output};

pub fn mpc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpc")).args(args).output().unwrap()
}

/// stdout, and stderr with miette's line wrapping and gutter undone.
pub fn text(o: &Output) -> (String, String) {
    let err = String::from_utf8_lossy(&o.stderr);
    let err = err.split_whitespace().filter(|w| !matches!(*w, "│" | "×")).collect::<Vec<_>>().join(" ");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}
