//! `mpc compare`: the arguments, and the runs of [`mpc::train::compare`]
//! printed and written.

use std::path::{Path, PathBuf};

use mpc::passes::LossScale;
use mpc::train::compare::CompareOptions;

use crate::{open_session, setup_error, DeviceArgs};

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

pub fn compare(args: CompareArgs) -> Result<(), miette::Report> {
    if !matches!(args.dynamic, LossScale::Dynamic { .. }) {
        crate::usage_error(format!("--dynamic: expected dynamic or dynamic:KEY=VALUE,..., found {}", args.dynamic));
    }
    if !(args.static_scale.is_finite() && args.static_scale > 0.0 && args.static_scale <= f32::MAX as f64) {
        crate::usage_error(format!("--static-scale: must be positive and fit f32, found {}", args.static_scale));
    }
    let opts = CompareOptions {
        model: args.model,
        steps: args.steps,
        seed: args.seed,
        data: args.data,
        static_scale: args.static_scale,
        dynamic: args.dynamic,
        table: args.table,
        lr_schedule: args.lr_schedule,
        allow_outside_weights: args.allow_outside_weights,
        max_memory: args.device.max_memory,
    };
    let device = args.device;
    let mut open = |g: &mpc::Graph, seed: u64, state: &mpc::exec::State| open_session(g, seed, state, &device);
    let c = mpc::train::compare::compare(&opts, &mut open, &mut |m| eprintln!("{m}")).map_err(setup_error)?;
    print!("{}", c.table());
    c.write(&args.out).map_err(miette::Report::msg)?;
    eprintln!("wrote {}", Path::new(&args.out).join("{compare.json,loss.svg,loss_scale.svg,grad_hist.svg}").display());
    Ok(())
}
