//! The pass manager and the passes, one file each.
//!
//! A pass is a graph rewrite behind the [`Pass`] trait. [`lower`] runs the
//! pipeline, written out in [`pipeline`], verifying the graph after every
//! pass when asked (always in debug builds and tests) so that a broken
//! invariant is reported as "after <pass>".

use crate::emit::text;
use crate::graph::Graph;
use crate::verify::{self, VerifyError};

pub mod dce;
pub mod grad;

/// A graph rewrite.
pub trait Pass {
    /// The name used by `--print-after` and in error messages.
    fn name(&self) -> &'static str;
    /// Rewrites the graph; returns whether anything changed.
    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError>;
}

/// An error from a pass or from verification after one.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{pass}: {message}")]
    Failed { pass: &'static str, message: String },
    #[error("the graph is invalid after {pass}: {err}")]
    Invalid { pass: &'static str, err: VerifyError },
}

/// Options of the pipeline.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Verify after every pass. Always on in debug builds.
    pub verify_each: bool,
    /// Print the text IR to stderr after these passes.
    pub print_after: Vec<String>,
}

/// The pipeline, in order.
pub fn pipeline(_opts: &Options) -> Vec<Box<dyn Pass>> {
    vec![Box::new(grad::Grad), Box::new(dce::Dce)]
}

/// The names of every pass, for `--print-after` validation.
pub fn pass_names() -> Vec<&'static str> {
    pipeline(&Options::default()).iter().map(|p| p.name()).collect()
}

/// Runs the whole pipeline on `g`.
pub fn lower(g: &mut Graph, opts: &Options) -> Result<(), PassError> {
    run_passes(g, &mut pipeline(opts), opts)
}

/// Runs the given passes in order, with verification and printing as `opts` say.
pub fn run_passes(g: &mut Graph, passes: &mut [Box<dyn Pass>], opts: &Options) -> Result<(), PassError> {
    let verify_each = opts.verify_each || cfg!(debug_assertions);
    for pass in passes.iter_mut() {
        pass.run(g)?;
        if verify_each {
            verify::verify(g).map_err(|err| PassError::Invalid { pass: pass.name(), err })?;
        }
        if opts.print_after.iter().any(|p| p == pass.name()) {
            eprintln!("// after {}\n{}", pass.name(), text::to_string(g));
        }
    }
    Ok(())
}
