//! What a training run sets up before its first step, shared by `mpc
//! train`, `mpc compare` and `mpc bench`: the graph loaded and lowered for
//! a precision, the precision table with a table file applied, the data
//! layout, the planned memory checked against a limit, and the test-set
//! accuracy of a classifier.

use std::path::Path;

use crate::choice::Choice;
use crate::diag::{problems_report, syntax_report};
use crate::exec::Trainer;
use crate::format::load::load;
use crate::format::Schedule;
use crate::ir::graph::Graph;
use crate::ir::op::Op;
use crate::ir::types::DType;
use crate::passes::{self, LossScale};
use crate::train::data::{Dataset, Layout};

/// The precision a graph trains in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

impl Choice for Precision {
    const ALL: &'static [Precision] = &[Precision::Fp32, Precision::Fp16, Precision::Bf16];

    fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }
}

impl Precision {
    /// The low type autocast uses, none for FP32.
    pub fn low(self) -> Option<DType> {
        match self {
            Precision::Fp32 => None,
            Precision::Fp16 => Some(DType::F16),
            Precision::Bf16 => Some(DType::Bf16),
        }
    }
}

/// Why a graph could not be set up for training.
#[derive(Debug)]
pub enum SetupError {
    /// A setting the user gave does not fit the graph (the CLI reports it
    /// as a usage error, naming the option).
    Usage(String),
    /// The graph file or a file it names, with its places.
    Input(miette::Report),
}

impl From<miette::Report> for SetupError {
    fn from(r: miette::Report) -> SetupError {
        SetupError::Input(r)
    }
}

/// The default precision table for `low`, with a table file applied.
pub fn precision_table(low: DType, file: Option<&Path>) -> Result<passes::Table, miette::Report> {
    let mut table = passes::Table::default_for(low);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| miette::Report::msg(format!("cannot read {}: {e}", path.display())))?;
        let name = path.display().to_string();
        table.apply_file(&text).map_err(|e| match e {
            passes::table_file::TableFileError::Syntax { line, column, message } => {
                miette::Report::new(syntax_report(&name, &text, line, column, message))
            }
            passes::table_file::TableFileError::Problems(problems) => problems_report(&name, &text, &problems),
        })?;
    }
    Ok(table)
}

/// Loads `model` and lowers it for training in `precision`: the source
/// graph (as read, with `no_decay` patterns and `schedule` applied) and the
/// lowered one.
pub fn load_for_training(
    model: &Path,
    precision: Precision,
    loss_scale: Option<LossScale>,
    table: Option<&Path>,
    no_decay: &[String],
    schedule: Option<&Schedule>,
) -> Result<(Graph, Graph), SetupError> {
    let loaded = load(model).map_err(|e| e.into_report())?;
    let mut source = loaded.graph;
    if let (Some(opt), false) = (source.optimizer.as_mut(), no_decay.is_empty()) {
        opt.no_decay.get_or_insert_with(Vec::new).extend(no_decay.iter().cloned());
    }
    if let (Some(opt), Some(schedule)) = (source.optimizer.as_mut(), schedule) {
        opt.schedule = Some(schedule.clone());
        if let Some((_, m)) = opt.problems().into_iter().find(|(f, _)| *f == "schedule") {
            return Err(SetupError::Usage(format!("--lr-schedule: {m}")));
        }
    }
    if let Err(e) = crate::verify(&source) {
        return Err(problems_report(&model.display().to_string(), &loaded.text, &e.0).into());
    }
    if source.optimizer.is_none() {
        let m = format!("{}: the graph has no optimizer: nothing to train", model.display());
        return Err(miette::Report::msg(m).into());
    }
    let mut g = source.clone();
    let fail = |e: passes::PassError| miette::Report::msg(format!("{}: {e}", model.display()));
    match precision.low() {
        // Backward and FP32 optimizer only: no autocast, no loss scaling.
        None => passes::lower_fp32(&mut g, &passes::Options::default()).map_err(fail)?,
        Some(low) => {
            let table = Some(precision_table(low, table)?);
            let opts = passes::Options { low, loss_scale, table, ..passes::Options::default() };
            passes::lower(&mut g, &opts).map_err(fail)?;
        }
    }
    Ok((source, g))
}

/// The names of the logits and labels values when the loss is a
/// `cross_entropy` whose labels are a graph input.
pub fn classifier(g: &Graph) -> Option<(String, String)> {
    let loss = g.loss?;
    if !matches!(g.node(loss.node).op(), Op::CrossEntropy) {
        return None;
    }
    let ins = g.inputs(loss.node);
    let (logits, labels) = (*ins.first()?, *ins.get(1)?);
    if !matches!(g.node(labels.node).op(), Op::Input { .. }) {
        return None;
    }
    Some((g.value_name(logits).to_string(), g.value_name(labels).to_string()))
}

/// The fraction of test rows whose argmax logit is the label, computing
/// only the forward nodes the logits need.
pub fn test_accuracy(
    sess: &mut dyn Trainer,
    data: &Dataset,
    (logits, labels): &(String, String),
    step: u64,
) -> Result<f64, String> {
    let msg = |e: String| format!("evaluating the test set: {e}");
    let fetch = [logits.clone()];
    let (mut right, mut total) = (0usize, 0usize);
    for (batch, real) in data.test_batches().map_err(|e| msg(e.to_string()))? {
        let fetched = sess.eval(&batch, step, &fetch).map_err(|e| msg(e.to_string()))?;
        let t = fetched.get(logits).ok_or_else(|| msg(format!("`{logits}` was not computed")))?;
        let classes = t.shape().0.last().copied().unwrap_or(1).max(1) as usize;
        let v = t.to_f32_vec();
        let want = batch[labels].data().to_i64_vec().unwrap_or_default();
        for (i, row) in v.chunks(classes).take(real).enumerate() {
            let best = row.iter().enumerate().fold(0, |b, (j, &x)| if x > row[b] { j } else { b });
            right += usize::from(want.get(i) == Some(&(best as i64)));
            total += 1;
        }
    }
    Ok(right as f64 / total.max(1) as f64)
}

/// How synthetic or CSV data feeds `source`'s inputs; for a language model
/// (token ids into an embedding) the error says to give it a text.
pub fn data_layout(path: &Path, source: &Graph) -> Result<Layout, String> {
    Layout::of(source).map_err(|e| {
        let lm = source.node_ids().any(|n| matches!(source.node(n).op(), Op::Embedding));
        let hint = match lm {
            true => " (a language model: train it on a text, e.g. --data ir-examples/data/declaration.txt)",
            false => "",
        };
        format!("{}: {e}{hint}", path.display())
    })
}

/// The planned step memory of `g`, refused above `max_memory` bytes.
pub fn plan_memory(g: &Graph, seed: u64, max_memory: u64) -> Result<crate::exec::memory::MemoryReport, String> {
    let r = crate::exec::Plan::new(g, seed).and_then(|p| crate::exec::memory::report(&p)).map_err(|e| e.to_string())?;
    crate::exec::memory::check_limit("a training step of this graph", r.peak(), max_memory)?;
    Ok(r)
}
