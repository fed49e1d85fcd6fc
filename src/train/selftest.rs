//! The CUDA backend checked against the CPU reference on the examples it
//! runs: what `mpc selftest` prints on a GPU, and what the tests run on the
//! SIMT emulation. The examples are embedded, so a folder of prebuilt
//! binaries needs nothing else.
//!
//! Each case trains a lowered example for a few steps on both backends from
//! the same state and batches, and compares every step's loss, found_inf
//! and loss scale, and the final params and optimizer state. A last case
//! injects an overflow into a gradient and checks that the device skips the
//! step (params and moments bit-identical) and halves the scale.

use std::time::Instant;

use crate::exec::{init_state, Backend, CpuBackend, RunOptions, Session, State};
use crate::ir::types::DType;
use crate::passes::{self, Options};
use crate::train::data::{synthetic_batch, Layout};
use crate::Op;

/// The examples of the MLP family, by file name.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("mlp.json", include_str!("../../ir-examples/mlp.json")),
    ("mlp_backward.json", include_str!("../../ir-examples/mlp_backward.json")),
    ("underflow.json", include_str!("../../ir-examples/underflow.json")),
    ("regression_mse.json", include_str!("../../ir-examples/regression_mse.json")),
];

/// How far the device may be from the CPU reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// The SIMT emulation: the same kernels, the same GEMM accumulation as
    /// the CPU; only the order of warp reductions differs (a few f32 ulps:
    /// the loss is held to 1e-5 relative). A value a few f32 ulps off can
    /// round one low-type ulp (`u`: 2^-10 for f16, 2^-7 for bf16, 2^-23
    /// in f32) apart when it is cast down, so gradients, and through them
    /// the Adam moments, differ by a few `u` of their size: each moment
    /// tensor is held to `8u` of its largest magnitude; a param moves by
    /// Adam's update (at most about `lr` a step), so params are held to
    /// `8u · lr · steps`; either plus 2 f32 ulps of the tensor's largest
    /// magnitude for the final rounding of `p - update`.
    Emulated,
    /// A GPU: cuBLASLt accumulates in another order and CUDA's `expf`,
    /// `logf`, `tanhf` are within 2 ulp, so some low-type values round one
    /// ulp apart (2^-11 relative for f16, 2^-8 for bf16), most not at all.
    /// A loss is a mean over many such values: it is held to half an ulp
    /// of the compute type, relative (1e-5 in f32); a kernel that is off
    /// systematically (a 1% error in gelu moves the MLP's loss by 4e-3)
    /// fails. A param may move by up to `lr` per step under Adam wherever
    /// its gradient is near zero and its sign flips between the devices,
    /// so params and moments are held only to `2 · lr · steps` plus 1% of
    /// the tensor's largest magnitude.
    Device,
}

impl Tolerance {
    fn loss(self, low: Option<DType>) -> f64 {
        match (self, low) {
            (Tolerance::Emulated, _) => 1e-5,
            (Tolerance::Device, Some(DType::Bf16)) => 2f64.powi(-9),
            (Tolerance::Device, Some(_)) => 2f64.powi(-12),
            (Tolerance::Device, None) => 1e-5,
        }
    }

    /// The bound on `|cpu - device|` for every element of a state tensor
    /// whose largest CPU magnitude is `max_abs`.
    pub fn state(self, low: Option<DType>, lr: f64, steps: u64, is_param: bool, max_abs: f64) -> f64 {
        let u = match low {
            Some(DType::F16) => 2f64.powi(-10),
            Some(DType::Bf16) => 2f64.powi(-7),
            _ => 2f64.powi(-23),
        };
        match self {
            Tolerance::Emulated => {
                let scale = if is_param { lr * steps as f64 } else { max_abs };
                8.0 * u * scale + 2f64.powi(-22) * max_abs
            }
            Tolerance::Device => 2.0 * lr * steps as f64 + 1e-2 * max_abs,
        }
    }
}

/// One line of the check's table.
#[derive(Clone, Debug)]
pub struct Row {
    /// What ran: "mlp.json fp16", "overflow skip".
    pub case: String,
    /// Steps compared.
    pub steps: u64,
    /// The largest relative loss difference seen.
    pub loss_rel: f64,
    /// The largest state difference over its allowed bound (pass: ≤ 1).
    pub state_ratio: f64,
    /// Milliseconds per step on the CPU and on the device (device steps
    /// include the wait for the loss).
    pub cpu_ms: f64,
    pub device_ms: f64,
    /// Empty when the case passed, else why not.
    pub failure: String,
}

impl Row {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failure.is_empty()
    }
}

/// The table of rows, as printed by `mpc selftest`.
pub fn table(device: &str, rows: &[Row]) -> String {
    let mut s = format!("mpc selftest on {device}\n");
    s += &format!(
        "{:<28} {:>5} {:>11} {:>11} {:>9} {:>9}  result\n",
        "case", "steps", "loss rel", "state/tol", "cpu ms", "dev ms"
    );
    for r in rows {
        let result = if r.passed() { "ok".to_string() } else { format!("FAILED: {}", r.failure) };
        s += &format!(
            "{:<28} {:>5} {:>11.3e} {:>11.3e} {:>9.2} {:>9.2}  {result}\n",
            r.case, r.steps, r.loss_rel, r.state_ratio, r.cpu_ms, r.device_ms
        );
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    s += &format!("{} of {} cases passed\n", rows.len() - failed, rows.len());
    s
}

fn lowered(text: &str, low: Option<DType>) -> Result<(crate::Graph, crate::Graph), String> {
    let source = crate::parse_str(text).map_err(|e| e.to_string())?;
    let mut g = source.clone();
    match low {
        Some(low) => passes::lower(&mut g, &Options { low, ..Options::default() }).map(drop),
        None => passes::lower_fp32(&mut g, &Options::default()),
    }
    .map_err(|e| e.to_string())?;
    Ok((source, g))
}

fn precision_name(low: Option<DType>) -> &'static str {
    match low {
        Some(DType::F16) => "fp16",
        Some(DType::Bf16) => "bf16",
        _ => "fp32",
    }
}

/// Runs every case, opening a fresh device backend for each with `open`.
pub fn run<B: Backend>(mut open: impl FnMut() -> Result<B, String>, tol: Tolerance, steps: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (file, text) in EXAMPLES {
        let lows: &[Option<DType>] =
            if *file == "mlp.json" { &[Some(DType::F16), Some(DType::Bf16), None] } else { &[Some(DType::F16)] };
        for &low in lows {
            let case = format!("{file} {}", precision_name(low));
            let mut row = Row {
                case,
                steps,
                loss_rel: 0.0,
                state_ratio: 0.0,
                cpu_ms: 0.0,
                device_ms: 0.0,
                failure: String::new(),
            };
            if let Err(e) = compare(text, low, steps, tol, &mut open, &mut row) {
                row.failure = e;
            }
            rows.push(row);
        }
    }
    rows.push(overflow(&mut open));
    rows
}

/// Trains `text` lowered to `low` on both backends and fills `row`.
fn compare<B: Backend>(
    text: &str,
    low: Option<DType>,
    steps: u64,
    tol: Tolerance,
    open: &mut impl FnMut() -> Result<B, String>,
    row: &mut Row,
) -> Result<(), String> {
    let (source, g) = lowered(text, low)?;
    let lr = source.optimizer.as_ref().map_or(0.0, |o| o.lr);
    let layout = Layout::of(&source).map_err(|e| e.to_string())?;
    let state = init_state(&g, 1).map_err(|e| e.to_string())?;
    let mut cpu = Session::new(&g, CpuBackend, 1, &state).map_err(|e| e.to_string())?;
    let mut dev = Session::new(&g, open()?, 1, &state).map_err(|e| e.to_string())?;
    let opts = RunOptions::default();
    for s in 0..steps {
        let batch = synthetic_batch(&layout, 1, s).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let a = cpu.step(&batch, s, &opts).map_err(|e| format!("cpu step {s}: {e}"))?;
        row.cpu_ms += t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let t = Instant::now();
        let b = dev.step(&batch, s, &opts).map_err(|e| format!("device step {s}: {e}"))?;
        row.device_ms += t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let (la, lb) = (a.loss.unwrap_or(f32::NAN) as f64, b.loss.unwrap_or(f32::NAN) as f64);
        let rel = (la - lb).abs() / la.abs().max(1e-12);
        row.loss_rel = row.loss_rel.max(if la.to_bits() == lb.to_bits() { 0.0 } else { rel });
        // A NaN difference is a failure too.
        let within = rel <= tol.loss(low) || la.to_bits() == lb.to_bits();
        if !within {
            return Err(format!("step {s}: loss {lb} on the device, {la} on the CPU"));
        }
        if a.found_inf != b.found_inf || a.loss_scale != b.loss_scale {
            return Err(format!(
                "step {s}: found_inf/scale {:?}/{:?} on the device, {:?}/{:?} on the CPU",
                b.found_inf, b.loss_scale, a.found_inf, a.loss_scale
            ));
        }
    }
    let (sa, sb) = (cpu.state().map_err(|e| e.to_string())?, dev.state().map_err(|e| e.to_string())?);
    let params: Vec<&str> =
        g.node_ids().map(|n| g.node(n)).filter(|n| matches!(n.op(), Op::Param { .. })).map(|n| n.name()).collect();
    row.state_ratio =
        state_ratio(&sa, &sb, |name, max_abs| tol.state(low, lr, steps, params.contains(&name), max_abs))?;
    if row.state_ratio > 1.0 {
        return Err(format!("the final state is {:.2}x its tolerance away from the CPU's", row.state_ratio));
    }
    Ok(())
}

/// The largest `|cpu - dev| / bound(name, max |cpu|)` over every state
/// element (the bound is per tensor: normwise, as perturbations compare).
fn state_ratio(cpu: &State, dev: &State, bound: impl Fn(&str, f64) -> f64) -> Result<f64, String> {
    let mut worst = 0f64;
    for (k, a) in cpu {
        let b = dev.get(k).ok_or_else(|| format!("`{k}` did not come back from the device"))?;
        if a.ty() != b.ty() {
            return Err(format!("`{k}` came back as {}, expected {}", b.ty(), a.ty()));
        }
        let (a, b) = (a.to_f32_vec(), b.to_f32_vec());
        let max_abs = a.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
        let limit = bound(k, max_abs);
        for (x, y) in a.into_iter().zip(b) {
            let (x, y) = (x as f64, y as f64);
            if x.to_bits() != y.to_bits() {
                worst = worst.max((x - y).abs() / limit);
            }
        }
    }
    Ok(if worst.is_nan() { f64::INFINITY } else { worst })
}

/// An injected overflow at step 1 of the fp16 MLP: the device skips the
/// step (params and moments bit-identical) and halves the scale.
fn overflow<B: Backend>(open: &mut impl FnMut() -> Result<B, String>) -> Row {
    let mut row = Row {
        case: "mlp.json fp16 overflow skip".into(),
        steps: 2,
        loss_rel: 0.0,
        state_ratio: 0.0,
        cpu_ms: 0.0,
        device_ms: 0.0,
        failure: String::new(),
    };
    let result = (|| -> Result<(), String> {
        let (source, g) = lowered(EXAMPLES[0].1, Some(DType::F16))?;
        let layout = Layout::of(&source).map_err(|e| e.to_string())?;
        let state = init_state(&g, 0).map_err(|e| e.to_string())?;
        let mut dev = Session::new(&g, open()?, 0, &state).map_err(|e| e.to_string())?;
        let opts = RunOptions { inject_inf: Some(("dw2".into(), 1)), ..RunOptions::default() };
        let batch = |s| synthetic_batch(&layout, 0, s).map_err(|e| e.to_string());
        dev.step(&batch(0)?, 0, &opts).map_err(|e| e.to_string())?;
        let before = dev.state().map_err(|e| e.to_string())?;
        let r = dev.step(&batch(1)?, 1, &opts).map_err(|e| e.to_string())?;
        if r.found_inf != Some(true) {
            return Err(format!("found_inf is {:?} after an injected inf", r.found_inf));
        }
        let after = dev.state().map_err(|e| e.to_string())?;
        for (k, t) in &before {
            let scaler = k == "loss_scale" || k == "loss_scale_tracker";
            if !scaler && !after.get(k).is_some_and(|a| a.bit_eq(t)) {
                return Err(format!("`{k}` changed on a skipped step"));
            }
        }
        let scale = |st: &State| st.get("loss_scale").and_then(|t| t.item_f32());
        let (s0, s1) = (scale(&before), scale(&after));
        if s1 != s0.map(|s| s / 2.0) {
            return Err(format!("the scale went from {s0:?} to {s1:?}, not halved"));
        }
        Ok(())
    })();
    if let Err(e) = result {
        row.failure = e;
    }
    row
}
