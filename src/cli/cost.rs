//! `mpc explain --cost`: the step-time model of `mpc::cost` for a graph
//! lowered in fp32, fp16 and bf16, on a named GPU.

use std::path::Path;

use mpc::cost::{self, Estimate, Gpu, Kernel};

use crate::load_for_training;
use mpc::train::setup::Precision;

/// How many of the slowest kernels are listed.
const TOP: usize = 12;

/// The GPU `--gpu` names, or a usage error listing them.
pub fn gpu(name: &str) -> Gpu {
    match cost::GPUS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, g)) => *g,
        None => {
            let names: Vec<&str> = cost::GPUS.iter().map(|(n, _)| *n).collect();
            crate::usage_error(format!("--gpu: no GPU is named `{name}`; known: {}", names.join(", ")))
        }
    }
}

pub fn explain_cost(model: &Path, gpu: Gpu, tf32: bool, json: bool) -> Result<(), miette::Report> {
    // (precision, fused, kernels, estimate): the three precisions unfused, then fused.
    let mut rows: Vec<(&str, bool, Vec<Kernel>, Estimate)> = Vec::new();
    let mut fused_rows = Vec::new();
    for (name, precision) in [("fp32", Precision::Fp32), ("fp16", Precision::Fp16), ("bf16", Precision::Bf16)] {
        let (_, g) = load_for_training(model, precision, None, None, &[], None)?;
        let ks = cost::kernels(&g);
        let plan = mpc::exec::Plan::new(&g, 0).map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
        let fk = cost::fused(&ks, &plan, &plan.fusion_groups());
        let (e, fe) = (cost::estimate(&ks, &gpu, tf32), cost::estimate(&fk, &gpu, tf32));
        rows.push((name, false, ks, e));
        fused_rows.push((name, true, fk, fe));
    }
    rows.extend(fused_rows);
    let fp32 = rows[0].3.seconds;
    if json {
        let modes: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, fused, ks, e)| {
                serde_json::json!({
                    "precision": name,
                    "fused": fused,
                    "estimate": e,
                    "speedup_vs_fp32": fp32 / e.seconds,
                    "kernels": ks.iter().map(|k| serde_json::json!({
                        "kernel": k,
                        "seconds": k.seconds(&gpu, tf32),
                        "memory_bound": k.memory_bound(&gpu, tf32),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let gpu_json = serde_json::json!({
            "name": gpu.name, "fp32": gpu.fp32, "tf32": gpu.tf32, "low": gpu.low, "bandwidth": gpu.bandwidth,
        });
        let report =
            serde_json::json!({"model": model.display().to_string(), "gpu": gpu_json, "tf32": tf32, "modes": modes});
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{}: one training step on {} by the roofline (f32 {:.0} TFLOP/s{}, f16/bf16 tensor cores {:.0} TFLOP/s dense, {:.2} TB/s)",
        model.display(),
        gpu.name,
        gpu.fp32 / 1e12,
        if tf32 { format!(", tf32 {:.0}", gpu.tf32 / 1e12) } else { String::new() },
        gpu.low / 1e12,
        gpu.bandwidth / 1e12
    );
    println!(
        "{:10}  {:>7}  {:>11}  {:>11}  {:>9}  {:>10}  {:>12}  {:>8}",
        "precision", "kernels", "GEMM GFLOP", "other GFLOP", "GB moved", "step ms", "memory-bound", "speed-up"
    );
    for (name, fused, _, e) in &rows {
        let name = if *fused { format!("{name} fused") } else { name.to_string() };
        println!(
            "{:10}  {:>7}  {:>11.3}  {:>11.3}  {:>9.3}  {:>10.4}  {:>11.0}%  {:>7.2}x",
            name,
            e.kernels,
            e.gemm_flops / 1e9,
            (e.flops - e.gemm_flops) / 1e9,
            e.bytes / 1e9,
            e.seconds * 1e3,
            100.0 * e.memory_bound_seconds / e.seconds.max(f64::MIN_POSITIVE),
            fp32 / e.seconds.max(f64::MIN_POSITIVE),
        );
    }
    println!(
        "(a lower bound: each kernel at its peak or at full bandwidth, reading its inputs and writing its outputs \
         once; no launch gaps or caches. fused: as `--fuse` runs the step, each fusion group one kernel that \
         reads its inputs and writes its outputs once. memory-bound: the share of the step in kernels limited by \
         traffic)"
    );
    let (name, _, ks, e) = &rows[1];
    let mut slow: Vec<&Kernel> = ks.iter().collect();
    slow.sort_by(|a, b| b.seconds(&gpu, tf32).total_cmp(&a.seconds(&gpu, tf32)));
    println!("\n{name}: the {} slowest kernels", TOP.min(slow.len()));
    let w = slow.iter().take(TOP).map(|k| k.node.len()).max().unwrap_or(4).max(4);
    println!(
        "{:w$}  {:18}  {:5}  {:>10}  {:>9}  {:6}  {:>9}  {:>6}",
        "node", "op", "type", "GFLOP", "MB", "bound", "µs", "share"
    );
    for k in slow.iter().take(TOP) {
        let s = k.seconds(&gpu, tf32);
        println!(
            "{:w$}  {:18}  {:5}  {:>10.4}  {:>9.3}  {:6}  {:>9.2}  {:>5.1}%",
            k.node,
            k.op,
            k.dtype.to_string(),
            k.flops / 1e9,
            k.bytes / 1e6,
            if k.memory_bound(&gpu, tf32) { "memory" } else { "math" },
            s * 1e6,
            100.0 * s / e.seconds.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}
