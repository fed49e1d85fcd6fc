//! `mpc train`: its arguments and the training loop over a session.

use std::path::PathBuf;

use mpc::passes;
use mpc::train::setup::{classifier, data_layout, test_accuracy, Precision};

use crate::{load_for_training, open_session, usage_error, DeviceArgs};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The graph file (JSON, format mpc/1).
    model: PathBuf,
    /// Train until this many steps are done (counting the resumed ones).
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// fp32: grad and master-weights only; fp16/bf16: the full pipeline.
    #[arg(long, value_parser = crate::choice::of::<Precision>(), default_value = "fp16")]
    precision: Precision,
    /// Loss scaling: dynamic, static:S or none [default: dynamic for fp16, none for bf16].
    #[arg(long, value_name = "MODE")]
    loss_scale: Option<passes::LossScale>,
    /// Seed of the init and the data order [default: 0, or the checkpoint's].
    #[arg(long)]
    seed: Option<u64>,
    /// CSV or CSV.GZ data, one example a row, or a .txt character-level text
    /// for a language model (default: synthetic data).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Write metrics here, one JSON object a line (appended to when resuming).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Write checkpoints (DIR/step-K.safetensors) into this directory.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Checkpoint every K steps (and always after the last one).
    #[arg(long, value_name = "K", requires = "checkpoint")]
    checkpoint_every: Option<u64>,
    /// Resume from a checkpoint written by --checkpoint.
    #[arg(long, value_name = "FILE")]
    resume: Option<PathBuf>,
    /// A JSON file that moves ops between precision classes, e.g. {"fp32": ["gelu"]} (`mpc table` shows them).
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    /// Params that get no weight decay, by name pattern (`*`, `?`; repeatable), added to the
    /// graph's `optimizer.no_decay`, e.g. --no-decay 'b*' --no-decay '*_gain'.
    #[arg(long, value_name = "PATTERN", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    no_decay: Vec<String>,
    /// The learning-rate schedule, replacing the graph's `optimizer.schedule`:
    /// constant, or cosine:warmup=W,total=T,min=M (linear warmup over W steps,
    /// cosine decay to M at step T; Hugging Face's, see docs/FORMAT.md).
    #[arg(long, value_name = "SCHEDULE")]
    lr_schedule: Option<mpc::format::Schedule>,
    /// Read the graph's `weights` file even when it is outside the graph's folder.
    #[arg(long)]
    allow_outside_weights: bool,
    /// Stop after this many skipped (overflowing) steps in a row (0: never).
    #[arg(long, value_name = "N", default_value_t = mpc::train::MAX_SKIPPED)]
    max_skipped: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn train(args: TrainArgs) -> Result<(), miette::Report> {
    use mpc::exec::{init::init_state_from, RunOptions};
    use mpc::train::checkpoint::{self, Checkpoint};
    use mpc::train::data::{synthetic_batch, Dataset};
    use std::io::{IsTerminal, Write};

    if args.precision == Precision::Fp32 && args.loss_scale.is_some_and(|m| m != passes::LossScale::None) {
        usage_error("--loss-scale: fp32 training has no loss scaling (only `none`)".into());
    }
    if args.checkpoint_every == Some(0) {
        usage_error("--checkpoint-every: must be at least 1".into());
    }
    let msg = miette::Report::msg;
    if args.precision == Precision::Fp32 && args.table.is_some() {
        usage_error("--table: fp32 training has no autocast".into());
    }
    let (source, g) = load_for_training(
        &args.model,
        args.precision,
        args.loss_scale,
        args.table.as_deref(),
        &args.no_decay,
        args.lr_schedule.as_ref(),
    )?;
    // A text feeds a language model whose inputs need not share a batch
    // dimension; everything else is laid out by `Layout`.
    let text = args.data.as_deref().is_some_and(mpc::train::data::is_text);
    let layout = match text {
        true => None,
        false => Some(data_layout(&args.model, &source).map_err(miette::Report::msg)?),
    };
    let resumed = match &args.resume {
        Some(path) => Some(checkpoint::load(path).map_err(|e| msg(e.to_string()))?),
        None => None,
    };
    let seed = match (&resumed, args.seed) {
        (Some(ck), Some(s)) if s != ck.seed => {
            return Err(msg(format!("--seed {s} differs from the checkpoint's seed {}", ck.seed)));
        }
        (Some(ck), _) => ck.seed,
        (None, s) => s.unwrap_or(0),
    };
    let data = match (&args.data, &layout) {
        (Some(path), Some(layout)) => Some(Dataset::load(path, layout, seed).map_err(|e| msg(e.to_string()))?),
        (Some(path), None) => Some(Dataset::load_text(path, &source, seed).map_err(|e| msg(e.to_string()))?),
        (None, _) => None,
    };
    let memory = args.device.plan_memory(&g, seed).map_err(|e| msg(format!("{}: {e}", args.model.display())))?;
    let fresh = init_state_from(&g, seed, args.model.parent(), args.allow_outside_weights)
        .map_err(|e| msg(format!("{}: {e}", args.model.display())))?;
    let (start, state) = match resumed {
        Some(ck) => {
            let path = args.resume.as_deref().unwrap_or(std::path::Path::new(""));
            let (step, state) =
                mpc::train::resume(&g, &fresh, ck).map_err(|e| msg(format!("{}: {e}", path.display())))?;
            if let Some(log) = &args.log {
                mpc::train::truncate_log(log, step)
                    .map_err(|e| msg(format!("cannot rewrite {}: {e}", log.display())))?;
            }
            (step, state)
        }
        None => (0, fresh),
    };
    if start > args.steps {
        return Err(msg(format!("the checkpoint is at step {start}, past --steps {}", args.steps)));
    }
    if let Some(dir) = &args.checkpoint {
        std::fs::create_dir_all(dir).map_err(|e| msg(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut log = match &args.log {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(args.resume.is_some())
                .truncate(args.resume.is_none())
                .open(path)
                .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))?;
            Some((path, std::io::BufWriter::new(f)))
        }
        None => None,
    };
    println!("{memory}");
    let mut sess = open_session(&g, seed, &state, &args.device)?;
    drop(state);
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(args.steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    let scaler = match passes::loss_scale::existing(&g) {
        passes::LossScale::None => None,
        ls => Some(ls.to_string()),
    };
    let schedule = mpc::train::schedule_of(&g);
    let save = |sess: &mut dyn mpc::exec::Trainer, step: u64| -> Result<(), miette::Report> {
        let Some(dir) = &args.checkpoint else { return Ok(()) };
        let state = sess.state().map_err(|e| msg(format!("step {step}: {e}")))?;
        let ck = Checkpoint { step, seed, state, loss_scale: scaler.clone(), lr_schedule: schedule.clone() };
        checkpoint::save(&dir.join(format!("step-{step}.safetensors")), &ck).map_err(|e| msg(e.to_string()))
    };
    let (mut last_loss, mut saved_at) = (None, None);
    let mut watch = mpc::train::Watch::new(args.max_skipped);
    // Without a terminal, a progress line every tenth of the run.
    let every = if std::io::stderr().is_terminal() { u64::MAX } else { ((args.steps - start) / 10).max(1) };
    // One step is one optimizer step: `micro` runs of the graph, one per micro-batch.
    let micro = mpc::train::micro_batches(&g);
    for s in start..args.steps {
        let batch = |m: u64| {
            match (&data, &layout) {
                (Some(d), _) => d.train_batch(m),
                (None, Some(layout)) => synthetic_batch(layout, seed, m),
                (None, None) => unreachable!("a text always loads data"),
            }
            .map_err(|e| msg(e.to_string()))
        };
        let failed = |m: u64, e| msg(format!("{}: {e}", mpc::train::micro_step_label(micro, m)));
        let r = mpc::train::optimizer_step(sess.as_mut(), micro, s, &RunOptions::default(), batch, failed)?;
        let verdict = watch.observe(s + 1, &r);
        let (loss, scale, found_inf, grad_norm) = (r.loss, r.loss_scale, r.found_inf, r.grad_norm);
        if let Some((path, w)) = &mut log {
            use mpc::train::json_metric;
            let mut line = serde_json::json!({
                "step": s + 1, "loss": json_metric(loss), "loss_scale": json_metric(scale), "found_inf": found_inf,
            });
            if grad_norm.is_some() {
                line["grad_norm"] = json_metric(grad_norm);
            }
            if r.growth_tracker.is_some() {
                line["growth_tracker"] = json_metric(r.growth_tracker);
            }
            if r.lr.is_some() {
                line["lr"] = json_metric(r.lr);
            }
            writeln!(w, "{line}")
                .and_then(|_| w.flush())
                .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))?;
        }
        if let Err(why) = verdict {
            bar.finish_and_clear();
            let kept = match (saved_at, &args.checkpoint) {
                (Some(k), Some(dir)) => {
                    format!("; the last checkpoint is {}", dir.join(format!("step-{k}.safetensors")).display())
                }
                (None, Some(_)) => "; no checkpoint was written".to_string(),
                _ => String::new(),
            };
            return Err(msg(format!("{why}{kept}")));
        }
        let mut m = format!("loss {:.4}", loss.unwrap_or(f32::NAN));
        if let Some(sc) = scale {
            m += &format!(" scale {sc}");
        }
        m += &format!(" skipped {}", watch.skipped);
        if every != u64::MAX && ((s + 1 - start) % every == 0 || s + 1 == args.steps) {
            eprintln!("step {}/{}: {m}", s + 1, args.steps);
        }
        bar.set_message(m);
        bar.inc(1);
        last_loss = loss.or(last_loss);
        if args.checkpoint_every.is_some_and(|k| (s + 1) % k == 0) {
            save(sess.as_mut(), s + 1)?;
            saved_at = Some(s + 1);
        }
    }
    bar.finish_and_clear();
    if saved_at != Some(args.steps) {
        save(sess.as_mut(), args.steps)?;
    }
    let skipped = watch.skipped;
    match last_loss {
        Some(l) => println!("step {}: final train loss {l:.6}, {skipped} skipped step(s)", args.steps),
        None => println!("step {}: no steps run", args.steps),
    }
    if let Some(line) = sess.graph_runs().summary() {
        eprintln!("{line}");
    }
    if skipped > 0 && skipped == args.steps - start {
        eprintln!("warning: every step overflowed and was skipped: the weights did not change");
    }
    if let (Some(d), Some(names)) = (&data, classifier(&g)) {
        if d.test_rows() > 0 {
            let acc = test_accuracy(sess.as_mut(), d, &names, args.steps).map_err(miette::Report::msg)?;
            println!("test accuracy {acc:.4} ({} {})", d.test_rows(), d.test_unit());
        }
    }
    Ok(())
}
