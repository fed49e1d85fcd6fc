//! `mpc compare`'s runs: the same model and seed trained in FP32, FP16 without
//! loss scaling, FP16 with a static scale, FP16 with dynamic scaling and
//! BF16, on a device the caller opens; a table, `compare.json` and three
//! SVG plots (loss curves, the dynamic loss scale, and the FP32 gradient
//! histogram against FP16's range, after Micikevicius et al. 2018, Fig. 3).
//!
//! The underflow share of a low-precision mode is measured, not estimated:
//! every step fetches the raw parameter gradients as the backward pass
//! produced them in that mode (still multiplied by the loss scale, before
//! `unscale`; in a lowered graph `gradients` points at `<grad>.unscaled`,
//! whose input 0 is that raw gradient) and compares them element by element
//! with the FP32 run's gradients at the same step. An element counts when
//! FP32 has it nonzero and the low mode has it exactly zero; the share is
//! over every element of every step. The two runs follow their own
//! trajectories, so the comparison is of the same step, not the same
//! weights: from step 0 (same init, same batch) on, it shows what the low
//! type does to gradients of the size FP32 training produces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::exec::{init::init_state_from, RunOptions, State, Trainer};
use crate::format::Schedule;
use crate::io::write_atomic;
use crate::ir::graph::Graph;
use crate::passes::LossScale;
use crate::train::data::{synthetic_batch, Dataset};
use crate::train::plots;
use crate::train::setup::{
    classifier, data_layout, load_for_training, plan_memory, test_accuracy, Precision, SetupError,
};

/// What to compare.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The graph file.
    pub model: PathBuf,
    /// Steps per mode.
    pub steps: u64,
    /// Seed of the init and the data order (the same for every mode).
    pub seed: u64,
    /// CSV or CSV.GZ data, or a .txt text for a language model (None: synthetic data).
    pub data: Option<PathBuf>,
    /// The scale of the FP16 static mode.
    pub static_scale: f64,
    /// The scaler of the fp16-dynamic mode (a `LossScale::Dynamic`).
    pub dynamic: LossScale,
    /// A table file for the fp16 and bf16 modes.
    pub table: Option<PathBuf>,
    /// The learning-rate schedule of every mode, replacing the graph's.
    pub lr_schedule: Option<Schedule>,
    /// Read the graph's `weights` file even outside the graph's folder.
    pub allow_outside_weights: bool,
    /// The most memory a step may plan, in bytes.
    pub max_memory: u64,
}

/// Opens a training session for a lowered graph, its state uploaded.
pub type Open<'a> = dyn FnMut(&Graph, u64, &State) -> Result<Box<dyn Trainer>, miette::Report> + 'a;

/// Final losses within this relative distance of FP32's "match" it.
const MATCH: f64 = 0.01;

/// One line on a mode: how its final loss compares with FP32's, and what
/// the low type did to it (skipped steps, gradients lost to underflow).
fn verdict(mode: &str, loss: f64, fp32: f64, skipped: u64, steps: u64, underflow: Option<f64>) -> String {
    if mode == "fp32" {
        return "the reference".into();
    }
    let mut v = if !loss.is_finite() {
        "diverged (the final loss is not finite)".to_string()
    } else if !fp32.is_finite() || fp32 == 0.0 {
        format!("final loss {loss:.5e} (FP32's is {fp32:.5e}: no ratio)")
    } else {
        let rel = (loss - fp32) / fp32.abs();
        match rel.abs() <= MATCH {
            true => format!("matches FP32 (final loss within {:.2}%)", 100.0 * rel.abs()),
            false => {
                format!("final loss {:.1}% {} FP32's", 100.0 * rel.abs(), if rel > 0.0 { "above" } else { "below" })
            }
        }
    };
    if skipped > 0 {
        v += &format!("; {skipped} of {steps} steps skipped on overflow");
    }
    if let Some(u) = underflow.filter(|&u| u > MATCH) {
        v += &format!("; {:.1}% of the gradient elements underflow to zero", 100.0 * u);
    }
    v
}

/// The number of last steps whose mean loss is the final loss.
const FINAL_WINDOW: usize = 10;

/// Histogram bins of log2 |g|: one per binade from 2^HIST_LO to 2^HIST_HI.
const HIST_LO: i32 = -60;
const HIST_HI: i32 = 20;

struct Mode {
    name: &'static str,
    precision: Precision,
    loss_scale: Option<LossScale>,
}

/// What one mode's run produced.
#[derive(Default)]
struct Run {
    losses: Vec<f32>,
    scales: Vec<f32>,
    skipped: u64,
    /// The steps (from 0) whose gradients overflowed, skipped.
    skipped_steps: Vec<usize>,
    accuracy: Option<f64>,
    /// Elements nonzero in FP32 and zero here, and elements compared.
    flushed: u64,
    compared: u64,
}

/// FP32 gradients by step: for each gradient element (in `names` order),
/// whether it is nonzero.
type Nonzero = Vec<Vec<bool>>;

/// The value names of the raw parameter gradients, by parameter name.
fn raw_gradients(g: &crate::Graph) -> BTreeMap<String, String> {
    g.gradients
        .iter()
        .map(|&(p, v)| {
            (
                g.node(p).name().to_string(),
                g.value_name(crate::passes::master_weights::micro_gradient(g, v)).to_string(),
            )
        })
        .collect()
}

/// The runs of every mode, compared.
pub struct Comparison {
    /// One JSON object per mode (mode, final_loss, test_accuracy, skipped,
    /// underflow_share, underflow_elements, compared_elements, verdict).
    pub rows: Vec<serde_json::Value>,
    /// compare.json's contents.
    pub report: serde_json::Value,
    modes: Vec<&'static str>,
    runs: Vec<Run>,
    hist: Vec<u64>,
}

/// Trains every mode of `opts` on sessions `open` makes; `progress` hears
/// of each mode as it starts.
pub fn compare(
    opts: &CompareOptions,
    open: &mut Open<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, SetupError> {
    let msg = miette::Report::msg;
    let modes = [
        Mode { name: "fp32", precision: Precision::Fp32, loss_scale: None },
        Mode { name: "fp16-none", precision: Precision::Fp16, loss_scale: Some(LossScale::None) },
        Mode {
            name: "fp16-static",
            precision: Precision::Fp16,
            loss_scale: Some(LossScale::Static(opts.static_scale)),
        },
        Mode { name: "fp16-dynamic", precision: Precision::Fp16, loss_scale: Some(opts.dynamic) },
        Mode { name: "bf16", precision: Precision::Bf16, loss_scale: None },
    ];
    let mut runs: Vec<Run> = Vec::new();
    let mut fp32_nonzero: Nonzero = Vec::new();
    let mut hist = vec![0u64; (HIST_HI - HIST_LO) as usize];
    let mut data = None;
    for mode in &modes {
        progress(&format!("{}: training {} for {} steps", opts.model.display(), mode.name, opts.steps));
        let (source, g) = load_for_training(
            &opts.model,
            mode.precision,
            mode.loss_scale,
            opts.table.as_deref(),
            &[],
            opts.lr_schedule.as_ref(),
        )?;
        // A text feeds a language model whose inputs need not share a batch
        // dimension; everything else is laid out by `Layout`.
        let layout = match opts.data.as_deref().is_some_and(crate::train::data::is_text) {
            true => None,
            false => Some(data_layout(&opts.model, &source).map_err(msg)?),
        };
        if data.is_none() {
            data = match (&opts.data, &layout) {
                (Some(path), Some(layout)) => {
                    Some(Dataset::load(path, layout, opts.seed).map_err(|e| msg(e.to_string()))?)
                }
                (Some(path), None) => {
                    Some(Dataset::load_text(path, &source, opts.seed).map_err(|e| msg(e.to_string()))?)
                }
                (None, _) => None,
            };
        }
        let grads = raw_gradients(&g);
        let fetch: Vec<String> = grads.values().cloned().collect();
        let run_opts = RunOptions { fetch: fetch.clone(), ..Default::default() };
        plan_memory(&g, opts.seed, opts.max_memory).map_err(|e| msg(format!("{}: {e}", opts.model.display())))?;
        let state = init_state_from(&g, opts.seed, opts.model.parent(), opts.allow_outside_weights)
            .map_err(|e| msg(format!("{}: {e}", opts.model.display())))?;
        let mut sess = open(&g, opts.seed, &state)?;
        drop(state);
        let mut run = Run::default();
        let micro = crate::train::micro_batches(&g);
        for s in 0..opts.steps {
            let batch = |m: u64| {
                match (&data, &layout) {
                    (Some(d), _) => d.train_batch(m),
                    (None, Some(layout)) => synthetic_batch(layout, opts.seed, m),
                    (None, None) => unreachable!("a text always loads data"),
                }
                .map_err(|e| msg(e.to_string()))
            };
            let failed = |m: u64, e| msg(format!("{}, {}: {e}", mode.name, crate::train::micro_step_label(micro, m)));
            let r = crate::train::optimizer_step(sess.as_mut(), micro, s, &run_opts, batch, failed)?;
            run.losses.push(r.loss.unwrap_or(f32::NAN));
            if let Some(sc) = r.loss_scale {
                run.scales.push(sc);
            }
            if r.found_inf == Some(true) {
                run.skipped += 1;
                run.skipped_steps.push(s as usize);
            }
            let values: Vec<f32> = fetch.iter().flat_map(|f| r.fetched[f].to_f32_vec()).collect();
            if mode.precision == Precision::Fp32 {
                for &v in &values {
                    if v != 0.0 && v.is_finite() {
                        let b = (v.abs().log2().floor() as i32).clamp(HIST_LO, HIST_HI - 1);
                        hist[(b - HIST_LO) as usize] += 1;
                    }
                }
                fp32_nonzero.push(values.iter().map(|&v| v != 0.0).collect());
            } else if let Some(nz) = fp32_nonzero.get(s as usize) {
                if nz.len() != values.len() {
                    return Err(msg(format!("{}: the gradients differ in size from FP32's", mode.name)).into());
                }
                run.compared += values.len() as u64;
                run.flushed += nz.iter().zip(&values).filter(|(&nz, &v)| nz && v == 0.0).count() as u64;
            }
        }
        if let (Some(d), Some(names)) = (&data, classifier(&g)) {
            if d.test_rows() > 0 {
                run.accuracy = Some(test_accuracy(sess.as_mut(), d, &names, opts.steps).map_err(msg)?);
            }
        }
        runs.push(run);
    }

    let mut rows: Vec<serde_json::Value> = modes
        .iter()
        .zip(&runs)
        .map(|(m, r)| {
            let tail = &r.losses[r.losses.len().saturating_sub(FINAL_WINDOW)..];
            let final_loss = tail.iter().map(|&l| l as f64).sum::<f64>() / tail.len() as f64; // NaN (null) for no steps
            let share = (m.precision != Precision::Fp32).then(|| r.flushed as f64 / r.compared.max(1) as f64);
            serde_json::json!({
                "mode": m.name,
                "final_loss": final_loss,
                "test_accuracy": r.accuracy,
                "skipped": r.skipped,
                "underflow_share": share,
                "underflow_elements": r.flushed,
                "compared_elements": r.compared,
            })
        })
        .collect();
    let fp32 = rows.first().and_then(|r| r["final_loss"].as_f64()).unwrap_or(f64::NAN);
    for row in &mut rows {
        let v = verdict(
            row["mode"].as_str().unwrap_or(""),
            row["final_loss"].as_f64().unwrap_or(f64::NAN),
            fp32,
            row["skipped"].as_u64().unwrap_or(0),
            opts.steps,
            row["underflow_share"].as_f64(),
        );
        row["verdict"] = serde_json::json!(v);
    }
    let report = serde_json::json!({
        "model": opts.model.display().to_string(),
        "steps": opts.steps,
        "seed": opts.seed,
        "data": opts.data.as_ref().map(|p| p.display().to_string()),
        "static_scale": opts.static_scale,
        "dynamic": opts.dynamic.to_string(),
        "lr_schedule": opts.lr_schedule.as_ref().map(|s| s.to_string()),
        "final_window": FINAL_WINDOW,
        "modes": rows,
        "fp32_grad_log2_hist": {"first_binade": HIST_LO, "counts": hist},
    });
    Ok(Comparison { rows, report, modes: modes.iter().map(|m| m.name).collect(), runs, hist })
}

impl Comparison {
    /// The table of the modes, its footnote and each mode's verdict.
    pub fn table(&self) -> String {
        let mut out =
            format!("{:13}  {:>12}  {:>9}  {:>7}  {:>9}\n", "mode", "final loss", "test acc", "skipped", "underflow");
        for row in &self.rows {
            let f = |k: &str, pct: bool| match row[k].as_f64() {
                Some(v) if pct => format!("{:.2}%", 100.0 * v),
                Some(v) => format!("{v:.4}"),
                None => "-".into(),
            };
            out += &format!(
                "{:13}  {:>12.5e}  {:>9}  {:>7}  {:>9}\n",
                row["mode"].as_str().unwrap_or(""),
                row["final_loss"].as_f64().unwrap_or(f64::NAN),
                f("test_accuracy", false),
                row["skipped"],
                f("underflow_share", true),
            );
        }
        out += &format!("(final loss: mean of the last {FINAL_WINDOW} steps; underflow: gradient elements nonzero in FP32, zero in the low type)\n");
        for row in &self.rows {
            out += &format!("{:13}  {}\n", row["mode"].as_str().unwrap_or(""), row["verdict"].as_str().unwrap_or(""));
        }
        out
    }

    /// Writes compare.json, loss.svg, loss_scale.svg and grad_hist.svg
    /// into `out` (created if missing), each atomically.
    pub fn write(&self, out: &Path) -> Result<(), String> {
        std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let write = |name: &str, text: &str| {
            let path = out.join(name);
            write_atomic(&path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        write("compare.json", &(serde_json::to_string_pretty(&self.report).unwrap_or_default() + "\n"))?;
        let plot = |e: String| format!("plotting: {e}");
        let curves: Vec<(&str, &[f32])> = self.modes.iter().zip(&self.runs).map(|(m, r)| (*m, &r.losses[..])).collect();
        write("loss.svg", &plots::loss_svg(&curves).map_err(plot)?)?;
        let dynamic = &self.runs[3];
        write("loss_scale.svg", &plots::scale_svg(&dynamic.scales, &dynamic.skipped_steps).map_err(plot)?)?;
        write("grad_hist.svg", &plots::hist_svg(&self.hist, HIST_LO).map_err(plot)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_say_how_a_mode_did() {
        assert_eq!(verdict("fp32", 1.0, 1.0, 0, 10, None), "the reference");
        assert_eq!(verdict("bf16", 1.005, 1.0, 0, 10, Some(0.0)), "matches FP32 (final loss within 0.50%)");
        assert_eq!(
            verdict("fp16-none", 1.5, 1.0, 0, 10, Some(0.98)),
            "final loss 50.0% above FP32's; 98.0% of the gradient elements underflow to zero"
        );
        assert_eq!(
            verdict("fp16-dynamic", 1.0, 1.0, 3, 10, Some(0.001)),
            "matches FP32 (final loss within 0.00%); 3 of 10 steps skipped on overflow"
        );
        assert!(verdict("fp16-static", f64::NAN, 1.0, 0, 10, None).starts_with("diverged"));
    }
}
