//! What a training run watches between steps, as pure functions that `mpc
//! train` and `mpc compare` share: when to stop (a non-finite loss with no
//! scaler to skip the step, a loss scale that fell to zero, too many
//! overflows in a row), how metrics go into a JSON log (NaN and infinities
//! as strings, which JSON has no numbers for), and what a checkpoint must
//! hold to be resumed.

pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod data;
pub mod epilogue_check;
pub mod plots;
pub mod selftest;
pub mod setup;

use std::path::Path;

use crate::exec::{ExecError, RunOptions, State, StepReport, Trainer};
use crate::ir::graph::Graph;
use crate::ir::op::Op;

/// The default of `--max-skipped`: consecutive skipped steps before a run
/// stops (PyTorch's GradScaler never stops; 100 halvings take a scale of
/// 2^16 below f32's smallest value, so the run could no longer recover).
pub const MAX_SKIPPED: u64 = 100;

/// Counts skipped steps and decides when a run must stop.
#[derive(Clone, Debug)]
pub struct Watch {
    max_skipped: u64,
    /// Skipped steps in a row, ending at the last observed one.
    run: u64,
    /// Skipped steps in all.
    pub skipped: u64,
}

impl Watch {
    /// Stops after `max_skipped` consecutive skipped steps (0: never).
    pub fn new(max_skipped: u64) -> Watch {
        Watch { max_skipped, run: 0, skipped: 0 }
    }

    /// Looks at step `step` (1-based) after it ran; Err says why training
    /// must stop there.
    pub fn observe(&mut self, step: u64, r: &StepReport) -> Result<(), String> {
        if r.found_inf == Some(true) {
            self.skipped += 1;
            self.run += 1;
        } else {
            self.run = 0;
        }
        if let Some(scale) = r.loss_scale {
            if scale == 0.0 || !scale.is_finite() {
                return Err(format!(
                    "step {step}: the loss scale is {} after {} overflowing step(s) in a row: the gradients \
                     overflow even unscaled, so no step can be taken (lower the learning rate, check the data for \
                     NaN or huge values, or train in bf16 or fp32)",
                    number(scale),
                    self.run
                ));
            }
        }
        let loss = r.loss.unwrap_or(0.0);
        if !loss.is_finite() && r.found_inf != Some(true) {
            return Err(format!(
                "step {step}: the loss is {}{}: with no loss scaler to skip the step, its update would make \
                 the weights non-finite, so training stops (lower the learning rate, check the data, or train \
                 in fp16 with dynamic loss scaling)",
                number(loss),
                match r.found_inf {
                    None => "",
                    Some(_) => " but no gradient overflowed",
                }
            ));
        }
        if self.max_skipped > 0 && self.run >= self.max_skipped {
            return Err(format!(
                "step {step}: {} steps in a row overflowed and were skipped (since step {}), the last at loss scale \
                 {}: the run is not training (--max-skipped {} stops it; lower the learning rate or check the data)",
                self.run,
                step + 1 - self.run,
                r.loss_scale.map_or("unknown".to_string(), number),
                self.max_skipped
            ));
        }
        Ok(())
    }
}

/// The micro-batches one optimizer step of `g` takes: its optimizer's
/// `accumulate` (1 without an optimizer).
pub fn micro_batches(g: &Graph) -> u64 {
    g.optimizer.as_ref().map_or(1, |o| u64::from(o.accumulate()))
}

/// Runs optimizer step `step` (0-based) of a graph lowered with
/// `accumulate: n`: the graph runs once per micro-batch, as micro-steps
/// `step·n` to `step·n + n − 1`, the numbers that `batch`, dropout masks
/// and [`RunOptions::inject_inf`] see. (A CSV's batch `step·n + k` of B
/// rows is rows `k·B..(k+1)·B` of its batch `step` of `n·B` rows.) The
/// report is the last micro-step's, where the step is taken or skipped:
/// `found_inf`, the scale the step used, the gradient norm, the tracker and
/// the fetched values; its `loss` is the mean of the micro-batches' losses
/// (summed in f64), the loss of the whole batch. `failed` turns an error of
/// micro-step `m` into the caller's. With n = 1 this is one
/// [`Trainer::step`].
pub fn optimizer_step<E>(
    sess: &mut dyn Trainer,
    n: u64,
    step: u64,
    opts: &RunOptions,
    mut batch: impl FnMut(u64) -> Result<State, E>,
    mut failed: impl FnMut(u64, ExecError) -> E,
) -> Result<StepReport, E> {
    let mut report = StepReport::default();
    let mut sum = 0.0f64;
    for micro in step * n..(step + 1) * n {
        let b = batch(micro)?;
        report = sess.step(&b, micro, opts).map_err(|e| failed(micro, e))?;
        sum += report.loss.map_or(0.0, f64::from);
    }
    if n > 1 {
        report.loss = report.loss.map(|_| (sum / n as f64) as f32);
    }
    Ok(report)
}

/// Where micro-step `micro` of a run with `n` micro-batches per step is,
/// for messages: `step S` (S 0-based, as `n` = 1 runs write it), with the
/// micro-batch when n > 1.
pub fn micro_step_label(n: u64, micro: u64) -> String {
    match n {
        0 | 1 => format!("step {micro}"),
        _ => format!("step {}, micro-batch {} of {n}", micro / n, micro % n + 1),
    }
}

/// A float for people: "NaN", "inf", "-inf" or the number.
fn number(v: f32) -> String {
    match v {
        _ if v.is_nan() => "NaN".into(),
        f32::INFINITY => "inf".into(),
        f32::NEG_INFINITY => "-inf".into(),
        _ => v.to_string(),
    }
}

/// A metric for a JSON log: null when absent, a number when finite, else
/// the string "NaN", "inf" or "-inf" (serde_json would write null).
pub fn json_metric(v: Option<f32>) -> serde_json::Value {
    match v {
        None => serde_json::Value::Null,
        Some(x) if x.is_finite() => serde_json::json!(x),
        Some(x) => serde_json::Value::String(number(x)),
    }
}

/// The names of the state values `g` reads as its loss scale (the scale
/// input of its `unscale` nodes).
pub fn scale_names(g: &Graph) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in g.node_ids() {
        if !matches!(g.node(n).op(), Op::Unscale) {
            continue;
        }
        if let Some(v) = g.inputs(n).get(1) {
            let src = g.node(v.node);
            if matches!(src.op(), Op::State { .. }) && !out.iter().any(|s| *s == src.name()) {
                out.push(src.name().to_string());
            }
        }
    }
    out
}

/// The step and state to resume `g` from `ck`, checked against the
/// graph's `fresh` state (every name there, of the same type, nothing
/// else), the values (finite, a live loss scale), the scaler and the
/// learning-rate schedule; the error names what differs.
pub fn resume(g: &Graph, fresh: &State, ck: checkpoint::Checkpoint) -> Result<(u64, State), String> {
    let checkpoint::Checkpoint { step, state, loss_scale, lr_schedule, .. } = ck;
    for (name, t) in fresh {
        match state.get(name) {
            None => return Err(format!("`{name}` is missing (another graph or precision?)")),
            Some(c) if c.ty() != t.ty() => return Err(format!("`{name}` is {}, the graph wants {}", c.ty(), t.ty())),
            _ => {}
        }
    }
    if let Some(extra) = state.keys().find(|k| !fresh.contains_key(*k)) {
        return Err(format!("`{extra}` is not a param or state of this graph"));
    }
    let cannot = |e: String| format!("cannot resume: {e}");
    check_resumable(g, &state).map_err(cannot)?;
    if let Some(was) = loss_scale {
        check_same_scaler(g, &was).map_err(cannot)?;
    }
    check_same_schedule(g, lr_schedule.as_deref()).map_err(cannot)?;
    Ok((step, state))
}

/// Why `state` (a checkpoint of `g`) cannot be resumed: a non-finite
/// value, or a loss scale that is zero.
pub fn check_resumable(g: &Graph, state: &State) -> Result<(), String> {
    for (name, t) in state {
        if t.dtype().is_float() {
            let values = t.to_f32_vec();
            if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                let v = values[i];
                return Err(format!("`{name}` holds {} (element {i}): the run that wrote it had diverged", number(v)));
            }
        }
    }
    for name in scale_names(g) {
        if let Some(s) = state.get(&name).and_then(|t| t.item_f32()) {
            if s <= 0.0 {
                return Err(format!("the loss scale `{name}` is {s}: the run that wrote it could take no step"));
            }
        }
    }
    Ok(())
}

/// Err when `g`'s loss scaler is not the one a checkpoint was written with
/// (`was`, as `--loss-scale` writes it): a resumed run would change its
/// scaler's factors silently. A dynamic scaler's init is not compared: the
/// checkpoint holds the scale reached.
pub fn check_same_scaler(g: &Graph, was: &str) -> Result<(), String> {
    use crate::passes::LossScale;
    let before: LossScale = was.parse().map_err(|e| format!("its loss scaler `{was}` does not read: {e}"))?;
    let now = crate::passes::loss_scale::existing(g);
    let same = match (&before, &now) {
        (
            LossScale::Dynamic { init: _, growth_factor: g1, backoff_factor: b1, growth_interval: i1 },
            LossScale::Dynamic { init: _, growth_factor: g2, backoff_factor: b2, growth_interval: i2 },
        ) => (g1, b1, i1) == (g2, b2, i2),
        _ => before == now,
    };
    match same {
        true => Ok(()),
        false => Err(format!("it was trained with --loss-scale {before}, this run has {now}")),
    }
}

/// The learning-rate schedule `g` trains with, as `--lr-schedule` writes
/// it, when it is not constant (what a checkpoint records).
pub fn schedule_of(g: &Graph) -> Option<String> {
    use crate::format::Schedule;
    match g.optimizer.as_ref()?.schedule.as_ref()? {
        Schedule::Constant => None,
        s => Some(s.to_string()),
    }
}

/// Err when `g`'s learning-rate schedule is not the one a checkpoint was
/// written with (`was`, as [`schedule_of`] gives it; none: constant): the
/// resumed run would jump to another rate at the same step.
pub fn check_same_schedule(g: &Graph, was: Option<&str>) -> Result<(), String> {
    let now = schedule_of(g);
    match now.as_deref() == was {
        true => Ok(()),
        false => Err(format!(
            "it was trained with --lr-schedule {}, this run has {}",
            was.unwrap_or("constant"),
            now.as_deref().unwrap_or("constant")
        )),
    }
}

/// Cuts a JSON-lines metrics log back to the lines of steps up to `step`
/// (a run killed after its last checkpoint logged steps that the resumed
/// run does again); rewritten atomically. A missing log is fine.
pub fn truncate_log(path: &Path, step: u64) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let keep = |line: &str| {
        let v: Option<serde_json::Value> = serde_json::from_str(line).ok();
        v.and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step)
    };
    let kept: String = text.lines().filter(|l| keep(l)).map(|l| format!("{l}\n")).collect();
    if kept.len() != text.len() {
        crate::io::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(loss: f32, scale: Option<f32>, found_inf: Option<bool>) -> StepReport {
        StepReport {
            loss: Some(loss),
            loss_scale: scale,
            found_inf,
            grad_norm: None,
            lr: None,
            growth_tracker: None,
            fetched: Default::default(),
        }
    }

    #[test]
    fn a_non_finite_loss_without_a_scaler_stops() {
        let mut w = Watch::new(MAX_SKIPPED);
        assert!(w.observe(1, &report(2.3, None, None)).is_ok());
        let e = w.observe(2, &report(f32::NAN, None, None)).unwrap_err();
        assert!(e.starts_with("step 2: the loss is NaN: with no loss scaler"), "{e}");
        let e = w.observe(3, &report(f32::INFINITY, Some(1.0), Some(false))).unwrap_err();
        assert!(e.starts_with("step 3: the loss is inf but no gradient overflowed"), "{e}");
        // With a scaler, an overflowing step is skipped: no stop.
        assert!(w.observe(4, &report(f32::NAN, Some(32768.0), Some(true))).is_ok());
        assert_eq!(w.skipped, 1);
    }

    #[test]
    fn too_many_skips_in_a_row_or_a_zero_scale_stop() {
        let mut w = Watch::new(3);
        assert!(w.observe(1, &report(1.0, Some(4.0), Some(true))).is_ok());
        assert!(w.observe(2, &report(1.0, Some(2.0), Some(true))).is_ok());
        assert!(w.observe(3, &report(1.0, Some(2.0), Some(false))).is_ok());
        assert!(w.observe(4, &report(1.0, Some(1.0), Some(true))).is_ok());
        assert!(w.observe(5, &report(1.0, Some(0.5), Some(true))).is_ok());
        let e = w.observe(6, &report(1.0, Some(0.25), Some(true))).unwrap_err();
        assert!(
            e.starts_with(
                "step 6: 3 steps in a row overflowed and were skipped (since step 4), the last at loss scale 0.25"
            ),
            "{e}"
        );
        assert_eq!(w.skipped, 5);
        let e = Watch::new(0).observe(9, &report(1.0, Some(0.0), Some(true))).unwrap_err();
        assert!(e.starts_with("step 9: the loss scale is 0 after 1 overflowing step(s) in a row"), "{e}");
        // 0: never stops for skips.
        let mut w = Watch::new(0);
        for s in 1..500 {
            assert!(w.observe(s, &report(1.0, Some(1.0), Some(true))).is_ok());
        }
    }

    #[test]
    fn micro_steps_are_named_by_their_step() {
        assert_eq!(micro_step_label(1, 7), "step 7");
        assert_eq!(micro_step_label(4, 9), "step 2, micro-batch 2 of 4");
    }

    #[test]
    fn metrics_log_non_finite_values_as_strings() {
        assert_eq!(json_metric(Some(1.5)), serde_json::json!(1.5));
        assert_eq!(json_metric(Some(f32::NAN)), serde_json::json!("NaN"));
        assert_eq!(json_metric(Some(f32::NEG_INFINITY)), serde_json::json!("-inf"));
        assert_eq!(json_metric(None), serde_json::Value::Null);
    }

    #[test]
    fn a_log_is_cut_back_to_the_resumed_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n").unwrap();
        truncate_log(&p, 2).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\n{\"step\":2}\n");
        truncate_log(&dir.path().join("none.jsonl"), 2).unwrap();
    }
}
