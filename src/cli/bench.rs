//! `mpc bench`: timed training steps of one graph in fp32, fp16 and bf16 on
//! a device, with tokens/s, MFU and peak memory, the mpc half of the
//! side-by-side benchmark against PyTorch (benches/torch_gpt.py).

use std::path::PathBuf;
use std::time::Instant;

use mpc::exec::RunOptions;

use crate::{cost, load_for_training, open_session, DeviceArgs};
use mpc::train::setup::Precision;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The graph file (JSON, format mpc/1).
    model: PathBuf,
    /// The precisions to time, in order (repeatable) [default: fp32, fp16, bf16].
    #[arg(long, value_parser = crate::choice::of::<Precision>())]
    precision: Vec<Precision>,
    /// Steps timed, after the warmup.
    #[arg(long, default_value_t = 10)]
    steps: u64,
    /// Steps run first and not timed (kernel loading, the memory pool, and
    /// on a CUDA device the two steps captured as graphs: the fifth step is
    /// the first replayed).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// The GPU whose peak MFU is measured against: h100, h200 or a100.
    #[arg(long, default_value = "h100")]
    gpu: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON lines (one per precision) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn bench(args: BenchArgs) -> Result<(), miette::Report> {
    let gpu = cost::gpu(&args.gpu);
    if args.steps == 0 {
        crate::usage_error("--steps: time at least one step".into());
    }
    let precisions = match args.precision.is_empty() {
        true => vec![Precision::Fp32, Precision::Fp16, Precision::Bf16],
        false => args.precision.clone(),
    };
    let at = |e: &dyn std::fmt::Display| miette::Report::msg(format!("{}: {e}", args.model.display()));
    if !args.json {
        println!(
            "{:9}  {:8}  {:>10}  {:>10}  {:>12}  {:>6}  {:>12}  {:>12}",
            "precision", "device", "ms/step", "min ms", "tokens/s", "MFU", "planned", "measured"
        );
    }
    for precision in precisions {
        let (source, g) = load_for_training(&args.model, precision, None, None, &[], None)?;
        let planned = args.device.plan_memory(&g, args.seed)?;
        let state = mpc::exec::init::init_state_from(&g, args.seed, args.model.parent(), false).map_err(|e| at(&e))?;
        let mut sess = open_session(&g, args.seed, &state, &args.device)?;
        drop(state);
        let opts = RunOptions::default();
        let mut times = Vec::new();
        for s in 0..args.warmup + args.steps {
            let batch = mpc::train::bench::batch(&source, args.seed, s).map_err(|e| at(&e))?;
            let t = Instant::now();
            // The step returns its loss on the host: the device has finished.
            sess.step(&batch, s, &opts).map_err(|e| at(&format!("step {s}: {e}")))?;
            if s >= args.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let Some(stats) = mpc::train::bench::Stats::of(&times) else { continue };
        let model_flops = mpc::cost::estimate(&mpc::cost::kernels(&g), &gpu, args.device.tf32).gemm_flops;
        let tokens = mpc::train::bench::tokens(&source);
        let mfu = mpc::train::bench::mfu(model_flops, stats.median, gpu.low);
        let measured = sess.memory_in_use().or_else(mpc::train::bench::peak_rss);
        let name = format!("{precision:?}").to_lowercase();
        let human = |b: Option<u64>| b.map_or("-".to_string(), mpc::exec::memory::human);
        if args.json {
            let row = serde_json::json!({
                "precision": name, "device": sess.device(), "stats": stats, "tokens_per_step": tokens,
                "tokens_per_s": tokens as f64 / stats.median, "model_flops": model_flops, "mfu": mfu,
                "gpu": gpu.name, "planned_bytes": planned.peak(), "measured_bytes": measured,
                "graph_replays": sess.graph_runs().replayed,
            });
            println!("{row}");
        } else {
            println!(
                "{:9}  {:8}  {:>10.3}  {:>10.3}  {:>12.0}  {:>5.1}%  {:>12}  {:>12}",
                name,
                sess.device(),
                stats.median * 1e3,
                stats.min * 1e3,
                tokens as f64 / stats.median,
                100.0 * mfu,
                human(Some(planned.peak())),
                human(measured),
            );
            if let Some(line) = sess.graph_runs().summary() {
                println!("  {line}");
            }
        }
    }
    if !args.json {
        println!(
            "(median of {} steps after {} warmup; MFU: the step's GEMM and convolution FLOPs per second over {}'s \
             {:.0} TFLOP/s dense f16/bf16; measured: device memory in use, or this process's peak RSS on the CPU)",
            args.steps,
            args.warmup,
            gpu.name,
            gpu.low / 1e12
        );
    }
    Ok(())
}
