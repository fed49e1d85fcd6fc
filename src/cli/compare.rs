//! `mpc compare`: the same model and seed trained in FP32, FP16 without
//! loss scaling, FP16 with a static scale, FP16 with dynamic scaling and
//! BF16, on the CPU reference executor; a table, `compare.json` and three
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

use mpc::exec::{init::init_state_from, RunOptions};
use mpc::io::write_atomic;
use mpc::passes::LossScale;
use mpc::train::data::{synthetic_batch, Dataset};

mod plots;

use crate::{classifier, data_layout, load_for_training, open_session, test_accuracy, DeviceArgs, TrainPrecision};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The graph file (JSON, format mpc/1).
    model: PathBuf,
    /// Steps per mode.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Seed of the init and the data order (the same for every mode).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CSV or CSV.GZ data, one example a row, or a .txt character-level text
    /// for a language model (default: synthetic data).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// The scale of the FP16 static mode.
    #[arg(long, value_name = "S", default_value_t = 1024.0)]
    static_scale: f64,
    /// The scaler of the fp16-dynamic mode, e.g. dynamic:init=1024,growth=2,backoff=0.5,interval=500.
    #[arg(long, value_name = "MODE", default_value = "dynamic")]
    dynamic: LossScale,
    /// Write compare.json, loss.svg, loss_scale.svg and grad_hist.svg here.
    #[arg(long, value_name = "DIR", default_value = "compare")]
    out: PathBuf,
    /// A JSON file that moves ops between precision classes for the fp16 and bf16 modes.
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    /// The learning-rate schedule of every mode, replacing the graph's (as `train --lr-schedule`).
    #[arg(long, value_name = "SCHEDULE")]
    lr_schedule: Option<mpc::format::Schedule>,
    /// Read the graph's `weights` file even when it is outside the graph's folder.
    #[arg(long)]
    allow_outside_weights: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

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
    precision: TrainPrecision,
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
fn raw_gradients(g: &mpc::Graph) -> BTreeMap<String, String> {
    g.gradients
        .iter()
        .map(|&(p, v)| {
            (g.node(p).name.clone(), g.value_name(mpc::passes::master_weights::micro_gradient(g, v)).to_string())
        })
        .collect()
}

pub fn compare(args: CompareArgs) -> Result<(), miette::Report> {
    let msg = miette::Report::msg;
    if !matches!(args.dynamic, LossScale::Dynamic { .. }) {
        crate::usage_error(format!("--dynamic: expected dynamic or dynamic:KEY=VALUE,..., found {}", args.dynamic));
    }
    if !(args.static_scale.is_finite() && args.static_scale > 0.0 && args.static_scale <= f32::MAX as f64) {
        crate::usage_error(format!("--static-scale: must be positive and fit f32, found {}", args.static_scale));
    }
    let modes = [
        Mode { name: "fp32", precision: TrainPrecision::Fp32, loss_scale: None },
        Mode { name: "fp16-none", precision: TrainPrecision::Fp16, loss_scale: Some(LossScale::None) },
        Mode {
            name: "fp16-static",
            precision: TrainPrecision::Fp16,
            loss_scale: Some(LossScale::Static(args.static_scale)),
        },
        Mode { name: "fp16-dynamic", precision: TrainPrecision::Fp16, loss_scale: Some(args.dynamic) },
        Mode { name: "bf16", precision: TrainPrecision::Bf16, loss_scale: None },
    ];
    let mut runs: Vec<Run> = Vec::new();
    let mut fp32_nonzero: Nonzero = Vec::new();
    let mut hist = vec![0u64; (HIST_HI - HIST_LO) as usize];
    let mut data = None;
    for mode in &modes {
        eprintln!("{}: training {} for {} steps", args.model.display(), mode.name, args.steps);
        let (source, g) = load_for_training(
            &args.model,
            mode.precision,
            mode.loss_scale,
            args.table.as_deref(),
            &[],
            args.lr_schedule.as_ref(),
        )?;
        // A text feeds a language model whose inputs need not share a batch
        // dimension; everything else is laid out by `Layout`.
        let layout = match args.data.as_deref().is_some_and(mpc::train::data::is_text) {
            true => None,
            false => Some(data_layout(&args.model, &source)?),
        };
        if data.is_none() {
            data = match (&args.data, &layout) {
                (Some(path), Some(layout)) => {
                    Some(Dataset::load(path, layout, args.seed).map_err(|e| msg(e.to_string()))?)
                }
                (Some(path), None) => {
                    Some(Dataset::load_text(path, &source, args.seed).map_err(|e| msg(e.to_string()))?)
                }
                (None, _) => None,
            };
        }
        let grads = raw_gradients(&g);
        let fetch: Vec<String> = grads.values().cloned().collect();
        let opts = RunOptions { fetch: fetch.clone(), ..Default::default() };
        args.device.plan_memory(&g, args.seed).map_err(|e| msg(format!("{}: {e}", args.model.display())))?;
        let state = init_state_from(&g, args.seed, args.model.parent(), args.allow_outside_weights)
            .map_err(|e| msg(format!("{}: {e}", args.model.display())))?;
        let mut sess = open_session(&g, args.seed, &state, &args.device)?;
        drop(state);
        let mut run = Run::default();
        let micro = mpc::train::micro_batches(&g);
        for s in 0..args.steps {
            let batch = |m: u64| {
                match (&data, &layout) {
                    (Some(d), _) => d.train_batch(m),
                    (None, Some(layout)) => synthetic_batch(layout, args.seed, m),
                    (None, None) => unreachable!("a text always loads data"),
                }
                .map_err(|e| msg(e.to_string()))
            };
            let failed = |m: u64, e| msg(format!("{}, {}: {e}", mode.name, mpc::train::micro_step_label(micro, m)));
            let r = mpc::train::optimizer_step(sess.as_mut(), micro, s, &opts, batch, failed)?;
            run.losses.push(r.loss.unwrap_or(f32::NAN));
            if let Some(sc) = r.loss_scale {
                run.scales.push(sc);
            }
            if r.found_inf == Some(true) {
                run.skipped += 1;
                run.skipped_steps.push(s as usize);
            }
            let values: Vec<f32> = fetch.iter().flat_map(|f| r.fetched[f].to_f32_vec()).collect();
            if mode.precision == TrainPrecision::Fp32 {
                for &v in &values {
                    if v != 0.0 && v.is_finite() {
                        let b = (v.abs().log2().floor() as i32).clamp(HIST_LO, HIST_HI - 1);
                        hist[(b - HIST_LO) as usize] += 1;
                    }
                }
                fp32_nonzero.push(values.iter().map(|&v| v != 0.0).collect());
            } else if let Some(nz) = fp32_nonzero.get(s as usize) {
                if nz.len() != values.len() {
                    return Err(msg(format!("{}: the gradients differ in size from FP32's", mode.name)));
                }
                run.compared += values.len() as u64;
                run.flushed += nz.iter().zip(&values).filter(|(&nz, &v)| nz && v == 0.0).count() as u64;
            }
        }
        if let (Some(d), Some(names)) = (&data, classifier(&g)) {
            if d.test_rows() > 0 {
                run.accuracy = Some(test_accuracy(sess.as_mut(), d, &names, args.steps)?);
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
            let share = (m.precision != TrainPrecision::Fp32).then(|| r.flushed as f64 / r.compared.max(1) as f64);
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
    println!("{:13}  {:>12}  {:>9}  {:>7}  {:>9}", "mode", "final loss", "test acc", "skipped", "underflow");
    for row in &rows {
        let f = |k: &str, pct: bool| match row[k].as_f64() {
            Some(v) if pct => format!("{:.2}%", 100.0 * v),
            Some(v) => format!("{v:.4}"),
            None => "-".into(),
        };
        println!(
            "{:13}  {:>12.5e}  {:>9}  {:>7}  {:>9}",
            row["mode"].as_str().unwrap_or(""),
            row["final_loss"].as_f64().unwrap_or(f64::NAN),
            f("test_accuracy", false),
            row["skipped"],
            f("underflow_share", true),
        );
    }
    println!("(final loss: mean of the last {FINAL_WINDOW} steps; underflow: gradient elements nonzero in FP32, zero in the low type)");
    let fp32 = rows.first().and_then(|r| r["final_loss"].as_f64()).unwrap_or(f64::NAN);
    for row in &mut rows {
        let v = verdict(
            row["mode"].as_str().unwrap_or(""),
            row["final_loss"].as_f64().unwrap_or(f64::NAN),
            fp32,
            row["skipped"].as_u64().unwrap_or(0),
            args.steps,
            row["underflow_share"].as_f64(),
        );
        println!("{:13}  {v}", row["mode"].as_str().unwrap_or(""));
        row["verdict"] = serde_json::json!(v);
    }

    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| msg(format!("cannot create {}: {e}", out.display())))?;
    let report = serde_json::json!({
        "model": args.model.display().to_string(),
        "steps": args.steps,
        "seed": args.seed,
        "data": args.data.as_ref().map(|p| p.display().to_string()),
        "static_scale": args.static_scale,
        "dynamic": args.dynamic.to_string(),
        "lr_schedule": args.lr_schedule.as_ref().map(|s| s.to_string()),
        "final_window": FINAL_WINDOW,
        "modes": rows,
        "fp32_grad_log2_hist": {"first_binade": HIST_LO, "counts": hist},
    });
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        write_atomic(&path, text.as_bytes()).map_err(|e| msg(format!("cannot write {}: {e}", path.display())))
    };
    write("compare.json", &(serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"))?;
    let plot = |e: String| msg(format!("plotting: {e}"));
    let curves: Vec<(&str, &[f32])> = modes.iter().zip(&runs).map(|(m, r)| (m.name, &r.losses[..])).collect();
    write("loss.svg", &plots::loss_svg(&curves).map_err(plot)?)?;
    write("loss_scale.svg", &plots::scale_svg(&runs[3].scales, &runs[3].skipped_steps).map_err(plot)?)?;
    write("grad_hist.svg", &plots::hist_svg(&hist, HIST_LO).map_err(plot)?)?;
    eprintln!("wrote {}", Path::new(out).join("{compare.json,loss.svg,loss_scale.svg,grad_hist.svg}").display());
    Ok(())
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
