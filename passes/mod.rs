//! The pass manager and the passes, one file each.
//!
//! A pass is a graph rewrite behind the [`Pass`] trait. [`lower`] runs the
//! pipeline, written out in [`Pipeline`], verifying the graph after every
//! pass when asked (always in debug builds and tests) so that a broken
//! invariant is reported as "after `<pass>`".

use crate::format::emit::text;
use crate::ir::graph::Graph;
use crate::ir::types::DType;
use crate::ir::verify::{self, VerifyError};

pub mod autocast;
pub mod cleanup;
pub mod dce;
pub mod embed;
pub mod grad;
pub mod loss_scale;
pub mod master_weights;
pub mod paint;
pub mod table;
pub mod table_file;

pub use loss_scale::LossScale;
pub use table::{Class, Table};

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
#[derive(Clone, Debug)]
pub struct Options {
    /// The low type: f16 or bf16.
    pub low: DType,
    /// The op precision table; `None` means the default for `low`.
    pub table: Option<Table>,
    /// Unknown ops are an error rather than FP32 with a warning.
    pub strict: bool,
    /// Loss scaling; `None` means the default for `low` (dynamic for f16, none for bf16).
    pub loss_scale: Option<LossScale>,
    /// Record autocast's decision for every node (`mpc explain`).
    pub explain: bool,
    /// Verify after every pass. Always on in debug builds.
    pub verify_each: bool,
    /// Print the text IR to stderr after these passes.
    pub print_after: Vec<String>,
    /// The graph is an inference graph: verification asks for no loss
    /// (set by [`lower_inference`]).
    pub inference: bool,
    /// A bias add of a low matmul or conv computes low with it, for a
    /// target that folds the bias into the op (ONNX Conv's B, Gemm's C;
    /// see [`autocast::Autocast::fold_bias`]). Set for an ONNX export
    /// (`mpc lower --emit onnx`, `mpc lower model.onnx`) unless bf16 is
    /// emulated; off for the executors, which round every op.
    pub fold_bias: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            low: DType::F16,
            table: None,
            strict: false,
            loss_scale: None,
            explain: false,
            verify_each: false,
            print_after: Vec::new(),
            inference: false,
            fold_bias: false,
        }
    }
}

/// The passes, in order, with their settings.
pub struct Pipeline {
    pub grad: grad::Grad,
    pub autocast: autocast::Autocast,
    pub loss_scale: loss_scale::LossScaling,
    pub master_weights: master_weights::MasterWeights,
    pub cleanup: cleanup::Cleanup,
}

impl Pipeline {
    pub fn new(opts: &Options) -> Pipeline {
        let table = opts.table.clone().unwrap_or_else(|| Table::default_for(opts.low));
        let mode = opts.loss_scale.unwrap_or_else(|| LossScale::default_for(opts.low));
        let mut autocast = autocast::Autocast::new(table, opts.strict);
        autocast.explain = opts.explain;
        autocast.fold_bias = opts.fold_bias;
        Pipeline {
            grad: grad::Grad,
            autocast,
            loss_scale: loss_scale::LossScaling { mode, explicit: opts.loss_scale.is_some() },
            master_weights: master_weights::MasterWeights,
            cleanup: cleanup::Cleanup,
        }
    }

    /// The pipeline, in the order it runs.
    pub fn passes(&mut self) -> [&mut dyn Pass; 5] {
        [&mut self.grad, &mut self.autocast, &mut self.loss_scale, &mut self.master_weights, &mut self.cleanup]
    }
}

/// The names of every pass, for `--print-after` validation.
pub fn pass_names() -> Vec<&'static str> {
    Pipeline::new(&Options::default()).passes().iter().map(|p| p.name()).collect()
}

/// What lowering decided, for reports.
#[derive(Debug)]
pub struct Lowered {
    pub autocast: autocast::Report,
}

/// Runs the whole pipeline on `g`.
pub fn lower(g: &mut Graph, opts: &Options) -> Result<Lowered, PassError> {
    reserve_for_training(g);
    let mut p = Pipeline::new(opts);
    run_passes(g, &mut p.passes(), opts)?;
    Ok(Lowered { autocast: p.autocast.report })
}

/// The FP32 pipeline (`--precision fp32`): grad, master-weights and
/// cleanup; no autocast and no loss scaling.
pub fn lower_fp32(g: &mut Graph, opts: &Options) -> Result<(), PassError> {
    if let Some(mark) = lowered_mark(g) {
        let low = g.node_ids().find_map(|n| g.output_types(n).map(|t| t.dtype).find(|d| d.is_low()).map(|d| (n, d)));
        if let Some((n, low)) = low {
            return Err(PassError::Failed {
                pass: "autocast",
                message: format!(
                    "the graph is already lowered (it has optimizer node `{}`) and computes in {} (node `{}`); \
                     lower the unlowered graph for fp32 instead",
                    g.node(mark).name(),
                    low,
                    g.node(n).name()
                ),
            });
        }
    }
    reserve_for_training(g);
    let mut p = Pipeline::new(opts);
    run_passes(g, &mut [&mut p.grad, &mut p.master_weights, &mut p.cleanup], opts)
}

/// The inference pipeline, for a graph with no loss and no backward part
/// (an imported ONNX model): autocast and cleanup.
pub fn lower_inference(g: &mut Graph, opts: &Options) -> Result<Lowered, PassError> {
    let opts = Options { inference: true, ..opts.clone() };
    // Autocast adds at most a cast per edge, and a cast has one input.
    g.reserve_storage(g.edge_count(), g.edge_count());
    let mut p = Pipeline::new(&opts);
    run_passes(g, &mut [&mut p.autocast, &mut p.cleanup], &opts)?;
    Ok(Lowered { autocast: p.autocast.report })
}

/// Makes room in one step for what the training passes add. Lowered, the
/// ir-examples have 2.6-5.6 times the nodes and 3.4-9.9 times the edges
/// they had (gpt_block: 105 -> 587 nodes, 112 -> 1109 edges), and the
/// 10^6-op chain 4.5 and 6.2 times. Room costs address space until used,
/// while a vector's doublings each copy all of it into fresh memory (at
/// 10^6, with 4x reserved, the passes' system time was 1.2-1.5 s against
/// 1.7-3.1 s with doublings; BENCHMARKS.md).
fn reserve_for_training(g: &mut Graph) {
    g.reserve_storage(5 * g.node_count(), 9 * g.edge_count());
}

/// Runs the given passes in order, with verification and printing as `opts` say.
pub fn run_passes(g: &mut Graph, passes: &mut [&mut dyn Pass], opts: &Options) -> Result<(), PassError> {
    let verify_each = opts.verify_each || cfg!(debug_assertions);
    for pass in passes.iter_mut() {
        pass.run(g)?;
        crate::timings::mark(pass.name());
        if verify_each {
            let checked = if opts.inference { verify::verify_inference(g) } else { verify::verify(g) };
            checked.map_err(|err| PassError::Invalid { pass: pass.name(), err })?;
        }
        if opts.print_after.iter().any(|p| p == pass.name()) {
            eprintln!("// after {}\n{}", pass.name(), text::to_string(g));
        }
    }
    Ok(())
}

/// A node showing that `g` was lowered already (master-weights' optimizer
/// nodes), or `None`.
pub fn lowered_mark(g: &Graph) -> Option<crate::ir::graph::NodeId> {
    g.node_ids().find(|&n| g.node(n).role() == crate::ir::op::Role::Optimizer)
}
