//! The `mpc` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use emit::Emit;
use mpc::diag::problems_report;
use mpc::format::load::load;
use mpc::io::write_atomic;
use mpc::passes;
use mpc::train::setup::{precision_table, Precision};

mod bench;
mod choice;
mod compare;
mod cost;
mod emit;
mod fusion;
mod import;
mod lower_onnx;
mod train;

#[derive(Parser)]
#[command(name = "mpc", version, about = "A mixed-precision training compiler", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LowType {
    Fp16,
    Bf16,
    /// No mixed precision: grad, master-weights and cleanup only (as `mpc train --precision fp32`).
    Fp32,
}

/// Settings of the mixed-precision passes, shared by `lower` and `explain`.
#[derive(clap::Args)]
struct PassArgs {
    /// The low-precision type (fp32: no autocast and no loss scaling; `lower` only).
    #[arg(long, value_enum, default_value = "fp16")]
    precision: LowType,
    /// A JSON file that moves ops between precision classes, e.g. {"fp32": ["gelu"]}.
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    /// Make ops without a precision class an error instead of FP32 with a warning.
    #[arg(long)]
    strict: bool,
    /// Loss scaling: dynamic, static:S or none [default: dynamic for fp16, none for bf16].
    #[arg(long, value_name = "MODE")]
    loss_scale: Option<passes::LossScale>,
}

impl PassArgs {
    fn options(&self) -> Result<passes::Options, miette::Report> {
        let low = match self.precision {
            LowType::Fp16 => mpc::DType::F16,
            LowType::Bf16 => mpc::DType::Bf16,
            LowType::Fp32 => {
                for (set, flag) in [
                    (self.table.is_some(), "--table"),
                    (self.strict, "--strict"),
                    (self.loss_scale.is_some_and(|m| m != passes::LossScale::None), "--loss-scale"),
                ] {
                    if set {
                        usage_error(format!("{flag}: --precision fp32 has no autocast and no loss scaling"));
                    }
                }
                return Ok(passes::Options::default());
            }
        };
        let table = precision_table(low, self.table.as_deref())?;
        Ok(passes::Options {
            low,
            table: Some(table),
            strict: self.strict,
            loss_scale: self.loss_scale,
            ..passes::Options::default()
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Parse and verify a graph.
    Check {
        /// The graph file (JSON, format mpc/1).
        model: PathBuf,
    },
    /// Run the lowering pipeline and write the result.
    ///
    /// An ONNX model (a `.onnx` file) is lowered for inference: imported
    /// with no loss, autocast and cleanup, and emitted (`--emit onnx` for a
    /// mixed-precision ONNX model), the weights converted once in memory.
    Lower {
        /// The graph file (JSON, format mpc/1), or an ONNX model (.onnx).
        model: PathBuf,
        /// Write here (atomically) instead of to standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        emit: Emit,
        #[command(flatten)]
        passes: PassArgs,
        /// Verify the graph after every pass (always on in debug builds).
        #[arg(long)]
        verify_each: bool,
        /// Print the text IR to stderr after this pass (repeatable).
        #[arg(long, value_name = "PASS")]
        print_after: Vec<String>,
        /// With --emit onnx and --precision bf16: `native` writes BFLOAT16
        /// tensors; `emulated` writes FLOAT tensors holding bf16-rounded
        /// values, rounding after every op, so that onnxruntime's CPU
        /// provider (which has almost no BF16 kernels) can run it.
        #[arg(long, value_parser = choice::of::<mpc::onnx::export::Bf16Mode>(), value_name = "MODE")]
        onnx_bf16: Option<mpc::onnx::export::Bf16Mode>,
        /// With --emit onnx: the seed of the params' init (as `mpc train --seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// With --emit onnx: also write seeded inputs and the outputs mpc's CPU
        /// executor computes from them, as DIR/input_K.pb and DIR/output_K.pb
        /// (ONNX TensorProto, the ONNX test-data layout).
        #[arg(long, value_name = "DIR")]
        onnx_test_data: Option<PathBuf>,
        /// With an ONNX model: the shape of an input, for symbolic or to
        /// override dimensions: NAME=D0,D1,... (repeatable).
        #[arg(long = "input-shape", value_name = "NAME=DIMS", value_parser = import::parse_shape)]
        input_shapes: Vec<(String, Vec<u64>)>,
        /// Read the graph's `weights` file even when it is outside the graph's folder.
        #[arg(long)]
        allow_outside_weights: bool,
        /// With --emit dot: only the forward part (a training graph's backward and
        /// optimizer parts make big graphs too slow for Graphviz to lay out).
        #[arg(long)]
        dot_forward_only: bool,
        /// With --emit onnx: the most memory the params, state and constants
        /// may take (e.g. 64G); a bigger graph is refused before allocating.
        #[arg(long, value_name = "SIZE", default_value = "32G", value_parser = mpc::exec::memory::parse_size)]
        max_memory: u64,
        /// With an ONNX model: lower it N times in this process and print
        /// the best and median time (benchmarking); the output is written once.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
    /// Show, for every node, its precision class, chosen type and the rule that chose it.
    Explain {
        /// The graph file (JSON, format mpc/1).
        model: PathBuf,
        #[command(flatten)]
        passes: PassArgs,
        /// Print JSON for tools instead of a table.
        #[arg(long)]
        json: bool,
        /// Instead of autocast's decisions: each kernel's FLOPs and bytes moved, and a
        /// roofline estimate of the training step in fp32, fp16 and bf16 on --gpu.
        #[arg(long)]
        cost: bool,
        /// The GPU of --cost: h100, h200 or a100.
        #[arg(long, default_value = "h100", requires = "cost")]
        gpu: String,
        /// With --cost: f32 GEMMs on the tensor cores as TF32 (as `train --tf32`).
        #[arg(long, requires = "cost")]
        tf32: bool,
        /// Instead of autocast's decisions: the fusion groups of the lowered step (each
        /// group one kernel), the values they no longer store and the planned peak memory.
        #[arg(long, conflicts_with = "cost")]
        fusion: bool,
    },
    /// Train a graph (on a CUDA GPU when one is usable, else the CPU reference).
    Train(train::TrainArgs),
    /// Train one graph in FP32, FP16 (no, static and dynamic loss scaling) and BF16; tabulate and plot.
    Compare(compare::CompareArgs),
    /// Import an ONNX model as a training graph (weights beside it as safetensors).
    Import(import::ImportArgs),
    /// Print the JSON Schema of the graph format.
    Schema,
    /// Write a generated training graph (mpc/1 JSON).
    #[command(subcommand)]
    Gen(GenCommand),
    /// Time training steps in fp32, fp16 and bf16 on a device: ms/step, tokens/s, MFU, memory.
    Bench(bench::BenchArgs),
    /// Lower a graph in fp32, fp16 and bf16 and print each one's planned
    /// step memory, allocating nothing (for graphs too big to try).
    Plan {
        /// The graph file (JSON, format mpc/1).
        model: PathBuf,
    },
    /// Print the op precision table: each class, what it means, its ops.
    Table {
        /// The low type whose default table to print.
        #[arg(long, value_enum, default_value = "fp16")]
        precision: TableType,
        /// A table file to apply first (as lower, train and compare take it).
        #[arg(long, value_name = "FILE")]
        table: Option<PathBuf>,
        /// Print JSON ({"class": ["op", ...]}) for tools instead.
        #[arg(long)]
        json: bool,
    },
    /// Show the CUDA driver, NVRTC, cuBLASLt and GPUs found, and whether
    /// `--device cuda` can run (and if not, why).
    Devices,
    /// Train the examples the CUDA backend runs on a device and on the CPU
    /// reference side by side, and compare losses, loss scale and state.
    Selftest {
        /// cuda: the GPU; cuda-emu: the kernels on the CPU through the SIMT emulation.
        #[arg(long, default_value = "cuda", value_parser = parse_selftest_device)]
        device: mpc::exec::device::Device,
        /// Steps per example.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
        steps: u64,
        /// Let f32 GEMMs use TF32 tensor cores (the tolerances assume off).
        #[arg(long)]
        tf32: bool,
    },
}

/// Where a training session runs.
#[derive(clap::Args, Clone, Debug)]
struct DeviceArgs {
    /// cpu, cuda (a GPU, or an error saying what is missing), cuda-emu (the
    /// CUDA kernels on the CPU through the SIMT emulation: slow, for
    /// checking kernels) or auto (cuda when a GPU is usable and runs every
    /// op of the graph, else cpu with a notice).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: mpc::exec::device::Device,
    /// Let f32 GEMMs on the GPU use TF32 tensor cores (10-bit mantissa
    /// products, f32 accumulation); off: f32 GEMMs are exact f32.
    #[arg(long)]
    tf32: bool,
    /// On a CUDA device: run each fusion group (`mpc explain --fusion`) as
    /// one launch. Elementwise chains, cross-entropy pairs and norm-gradient
    /// adds give the unfused kernels' bits; a matmul with its bias add (and
    /// relu or gelu) is one epilogue GEMM that rounds the sum once, not
    /// twice, and a weight gradient sums its bias's gradient as it reads
    /// the output gradient (in its own order).
    #[arg(long)]
    fuse: bool,
    /// With --fuse, off: no fusion into GEMMs (matmuls with their bias add
    /// and activation, weight gradients with their bias's); every other
    /// group is fused, and the step gives the unfused kernels' bits.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    gemm_epilogues: bool,
    /// The most memory a training step may plan (params, state, batch and
    /// step values), e.g. 64G; a bigger graph is refused before allocating.
    #[arg(long, value_name = "SIZE", default_value = "32G", value_parser = mpc::exec::memory::parse_size)]
    max_memory: u64,
    /// on: on a CUDA device, capture a training step as one CUDA graph once
    /// its launches repeat exactly, and replay it (steps that do not repeat
    /// run launch by launch, and the end of training says why); off: every
    /// step launch by launch.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    cuda_graph: bool,
}

impl DeviceArgs {
    /// The planned step memory of `g`, refused above `--max-memory`.
    fn plan_memory(&self, g: &mpc::Graph, seed: u64) -> Result<mpc::exec::memory::MemoryReport, miette::Report> {
        mpc::train::setup::plan_memory(g, seed, self.max_memory).map_err(miette::Report::msg)
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
    }
}

fn parse_device(s: &str) -> Result<mpc::exec::device::Device, String> {
    s.parse()
}

fn parse_selftest_device(s: &str) -> Result<mpc::exec::device::Device, String> {
    use mpc::exec::device::Device;
    match s.parse()? {
        d @ (Device::Cuda | Device::CudaEmu) => Ok(d),
        _ => Err("the self-test compares a CUDA device with the CPU: use cuda or cuda-emu".into()),
    }
}

#[derive(Subcommand)]
enum GenCommand {
    /// A GPT (GPT-2's layout) trained with AdamW; GPT-2 small by default.
    Gpt {
        #[arg(long, default_value_t = 12)]
        layers: u64,
        #[arg(long, default_value_t = 768)]
        d_model: u64,
        #[arg(long, default_value_t = 12)]
        heads: u64,
        /// Sequence length (positions).
        #[arg(long, default_value_t = 1024)]
        seq: u64,
        #[arg(long, default_value_t = 50257)]
        vocab: u64,
        #[arg(long, default_value_t = 8)]
        batch: u64,
        /// Dropout on the attention weights (0: none).
        #[arg(long, default_value_t = 0.1)]
        dropout: f64,
        /// Write here (atomically) instead of to standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn gen(cmd: GenCommand) -> Result<(), miette::Report> {
    let GenCommand::Gpt { layers, d_model, heads, seq, vocab, batch, dropout, output } = cmd;
    let cfg = mpc::gen::Gpt { layers, d_model, heads, seq, vocab, batch, dropout, ..mpc::gen::Gpt::gpt2_small() };
    if let Some(why) = cfg.problem() {
        usage_error(why);
    }
    let text = serde_json::to_string_pretty(&cfg.graph()).unwrap_or_default() + "\n";
    match output {
        Some(path) => {
            write_atomic(&path, text.as_bytes())
                .map_err(|e| miette::Report::msg(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("{}: {} parameters", path.display(), cfg.parameters());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `mpc plan`: the planned step memory in each precision.
fn plan(model: &std::path::Path) -> Result<(), miette::Report> {
    for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
        let (_, g) = load_for_training(model, precision, None, None, &[], None)?;
        let r = mpc::exec::Plan::new(&g, 0)
            .and_then(|p| mpc::exec::memory::report(&p))
            .map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
        let name = format!("{precision:?}").to_lowercase();
        println!("{name:<5} {r}");
    }
    Ok(())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TableType {
    Fp16,
    Bf16,
}

/// `mpc table`: the classes, what they mean and their ops.
fn print_table(precision: TableType, file: Option<&std::path::Path>, json: bool) -> Result<(), miette::Report> {
    let low = if precision == TableType::Fp16 { mpc::DType::F16 } else { mpc::DType::Bf16 };
    let table = precision_table(low, file)?;
    let mut by_class: std::collections::BTreeMap<passes::Class, Vec<&str>> = Default::default();
    for (op, class) in table.entries() {
        by_class.entry(class).or_default().push(op.name());
    }
    if json {
        let obj: serde_json::Map<String, serde_json::Value> =
            by_class.iter().map(|(c, ops)| (c.name().to_string(), serde_json::json!(ops))).collect();
        println!("{}", serde_json::to_string_pretty(&obj).unwrap_or_default());
        return Ok(());
    }
    println!("op precision table for {} (autocast; --table FILE moves ops between classes, a forward op's", low);
    println!("gradient ops moving with it; loss scaling, clipping and the optimizer stay fp32)");
    for class in passes::Class::ALL {
        let ops = by_class.get(&class).cloned().unwrap_or_default();
        println!("\n{:<6} {}", class.name(), class.meaning());
        let mut line = String::from("      ");
        for op in ops {
            if line.len() + op.len() > 78 {
                println!("{line}");
                line = String::from("      ");
            }
            line += " ";
            line += op;
        }
        if line.trim().is_empty() {
            line += " (none)";
        }
        println!("{line}");
    }
    Ok(())
}

// glibc's allocator spends much of a large lowering consolidating free lists.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad input (the graph or a file); clap uses 2 for bad usage.
const BAD_INPUT: u8 = 1;

fn main() -> ExitCode {
    huge_pages_off();
    mpc::timings::start();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

/// Turns transparent huge pages off for this process, unless
/// `MIMALLOC_ALLOW_THP` is set (then mimalloc does as it says). The first
/// touch of a 2 MiB page zeroes all of it in the kernel, and on the machine
/// measured that cost more than the TLB misses huge pages spare: lowering a
/// 10^6-op chain took 9.25 s (2.6 s system) against 10.50 s (4.1 s), medians
/// of 5 interleaved runs, with the same user time; converting a 10^5-node
/// ONNX model 0.81-0.94 s against 0.63-1.88 s (BENCHMARKS.md, issue 17).
fn huge_pages_off() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: this prctl takes integers, touches no memory of ours, and
        // on a kernel without it fails harmlessly (the result is ignored).
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// Leaves a graph (or what holds one) for the process's exit to free:
/// `mpc lower` is done with it, and freeing millions of nodes one
/// allocation at a time is work that unmapping the heap at exit does at once.
fn exit_without_freeing<T>(g: T) {
    std::mem::forget(g);
}

/// [`mpc::train::setup::load_for_training`], its errors reported as the CLI does.
fn load_for_training(
    model: &std::path::Path,
    precision: Precision,
    loss_scale: Option<passes::LossScale>,
    table: Option<&std::path::Path>,
    no_decay: &[String],
    schedule: Option<&mpc::format::Schedule>,
) -> Result<(mpc::Graph, mpc::Graph), miette::Report> {
    mpc::train::setup::load_for_training(model, precision, loss_scale, table, no_decay, schedule).map_err(setup_error)
}

/// A training setup's error: bad usage exits as clap does, the rest is reported.
fn setup_error(e: mpc::train::setup::SetupError) -> miette::Report {
    match e {
        mpc::train::setup::SetupError::Usage(m) => usage_error(m),
        mpc::train::setup::SetupError::Input(r) => r,
    }
}

fn usage_error(message: String) -> ! {
    use clap::CommandFactory;
    Cli::command().error(clap::error::ErrorKind::InvalidValue, message).exit()
}

/// Writes `DIR/input_K.pb` and `DIR/output_K.pb`, each atomically.
fn write_test_data(dir: &std::path::Path, data: &mpc::onnx::export::TestData) -> Result<(), miette::Report> {
    let fail = |e: std::io::Error| miette::Report::msg(format!("cannot write {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    for (what, tensors) in [("input", &data.inputs), ("output", &data.outputs)] {
        for (k, t) in tensors.iter().enumerate() {
            write_atomic(&dir.join(format!("{what}_{k}.pb")), &prost::Message::encode_to_vec(t)).map_err(fail)?;
        }
    }
    Ok(())
}

/// Reads and verifies a graph file.
fn load_verified(model: &std::path::Path) -> Result<mpc::Graph, miette::Report> {
    let loaded = load(model).map_err(|e| e.into_report())?;
    if let Err(e) = mpc::verify(&loaded.graph) {
        return Err(problems_report(&model.display().to_string(), &loaded.text, &e.0));
    }
    mpc::timings::mark("verify");
    Ok(loaded.graph)
}

fn load_and_lower(
    model: &std::path::Path,
    opts: &passes::Options,
) -> Result<(mpc::Graph, passes::Lowered), miette::Report> {
    let mut g = load_verified(model)?;
    let lowered = passes::lower(&mut g, opts).map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
    Ok((g, lowered))
}

/// Says which value an export takes when the graph lists no forward output.
fn note_default_output(g: &mpc::Graph) {
    if let Some(v) = mpc::onnx::default_output(g) {
        eprintln!(
            "note: `outputs` lists no forward value: exporting `{}`, the loss's first input (list the outputs to choose)",
            g.value_name(v)
        );
    }
}

fn run(cli: Cli) -> Result<(), miette::Report> {
    match cli.command {
        Command::Check { model } => {
            let loaded = load(&model).map_err(|e| e.into_report())?;
            let g = &loaded.graph;
            if let Err(e) = mpc::verify(g) {
                return Err(problems_report(&model.display().to_string(), &loaded.text, &e.0));
            }
            let count =
                |r: mpc::Role| g.node_ids().filter(|&n| g.node(n).role() == r && !g.node(n).op().is_source()).count();
            println!(
                "{}: ok, {} nodes ({} params, {} forward, {} backward, {} update)",
                model.display(),
                g.node_count(),
                g.params().count(),
                count(mpc::Role::Forward),
                count(mpc::Role::Backward),
                count(mpc::Role::Optimizer) + count(mpc::Role::Scaler),
            );
            Ok(())
        }
        Command::Lower {
            model,
            output,
            emit: how,
            passes: pass_args,
            verify_each,
            print_after,
            onnx_bf16,
            seed,
            onnx_test_data,
            input_shapes,
            allow_outside_weights,
            dot_forward_only,
            max_memory,
            repeat,
        } => {
            let names = passes::pass_names();
            if let Some(p) = print_after.iter().find(|p| !names.contains(&p.as_str())) {
                usage_error(format!("--print-after: no pass is named `{p}`; the passes are: {}", names.join(", ")));
            }
            if how == Emit::Onnx && output.is_none() {
                usage_error("--emit onnx writes a binary file: give it with -o FILE".into());
            }
            if how != Emit::Onnx && (onnx_bf16.is_some() || seed.is_some() || onnx_test_data.is_some()) {
                usage_error("--onnx-bf16, --seed and --onnx-test-data apply only to --emit onnx".into());
            }
            if onnx_bf16.is_some() && pass_args.precision != LowType::Bf16 {
                usage_error("--onnx-bf16: only with --precision bf16".into());
            }
            let opts = passes::Options { verify_each, print_after, ..pass_args.options()? };
            // The export folds a bias into its Conv or Gemm: autocast may then add it low.
            let fold_bias = how == Emit::Onnx && onnx_bf16.unwrap_or_default().folds_bias(opts.low);
            let opts = passes::Options { fold_bias, ..opts };
            if lower_onnx::is_onnx(&model) {
                if how == Emit::Json {
                    usage_error(
                        "an ONNX model lowers to --emit onnx, text or dot; for a training graph (JSON) \
                         use `mpc import` first"
                            .into(),
                    );
                }
                if seed.is_some() || onnx_test_data.is_some() {
                    usage_error(
                        "--seed and --onnx-test-data need a graph file: `mpc import` the ONNX model first".into(),
                    );
                }
                return lower_onnx::lower(lower_onnx::OnnxLower {
                    model,
                    output,
                    emit: how,
                    opts: mpc::onnx::lower::InferenceOptions {
                        passes: (pass_args.precision != LowType::Fp32).then_some(opts),
                        bf16: onnx_bf16.unwrap_or_default(),
                        input_shapes,
                        ahead: how == Emit::Onnx,
                    },
                    repeat: repeat as usize,
                });
            }
            if !input_shapes.is_empty() || repeat > 1 {
                usage_error("--input-shape and --repeat apply only to an ONNX model".into());
            }
            let started = std::time::Instant::now();
            let g = if pass_args.precision == LowType::Fp32 {
                let mut g = load_verified(&model)?;
                passes::lower_fp32(&mut g, &opts)
                    .map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
                g
            } else {
                let (g, lowered) = if how == Emit::Onnx {
                    let g = load_verified(&model)?;
                    note_default_output(&g);
                    mpc::onnx::lower_forward(&g, &opts)
                        .map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?
                } else {
                    load_and_lower(&model, &opts)?
                };
                for w in &lowered.autocast.warnings {
                    eprintln!("warning: {w}");
                }
                eprintln!("{}: {}", model.display(), lowered.autocast.summary());
                g
            };
            let onnx = mpc::onnx::export::Options {
                bf16: onnx_bf16.unwrap_or_default(),
                seed: seed.unwrap_or(0),
                base_dir: model.parent().map(|p| p.to_path_buf()),
                allow_outside_weights,
            };
            let fail = |e: mpc::onnx::export::ExportError| miette::Report::msg(format!("{}: {e}", model.display()));
            if how == Emit::Onnx {
                let bytes = mpc::exec::memory::materialized_bytes(&g);
                mpc::exec::memory::check_limit("its params, state and constants", bytes, max_memory)
                    .map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
            }
            if how == Emit::Json {
                // Streamed into the output: the text of a large graph is never whole in memory.
                let lowered = started.elapsed().as_secs_f64() * 1e3;
                let written = std::time::Instant::now();
                lower_onnx::write_output_with(output.as_deref(), |w| mpc::format::emit::json::write(&g, w))?;
                mpc::timings::mark("emit+write");
                exit_without_freeing(g);
                eprintln!(
                    "{}: read and lowered in {lowered:.3} ms, emitted and written in {:.3} ms",
                    model.display(),
                    written.elapsed().as_secs_f64() * 1e3
                );
                return Ok(());
            }
            let out = match &onnx_test_data {
                Some(dir) => {
                    let m = mpc::onnx::export::export(&g, &onnx).map_err(fail)?;
                    let data = mpc::onnx::export::test_data(&g, &onnx, &m).map_err(fail)?;
                    write_test_data(dir, &data)?;
                    mpc::onnx::chunks::encode(m)
                }
                None if how == Emit::Onnx => {
                    mpc::onnx::chunks::encode(mpc::onnx::export::export(&g, &onnx).map_err(fail)?)
                }
                None if how == Emit::Dot => {
                    let opts = mpc::format::emit::dot::Options { forward_only: dot_forward_only };
                    vec![mpc::format::emit::dot::to_string_with(&g, &opts).into_bytes().into()]
                }
                None => vec![emit::emit(&g, how, &onnx).map_err(fail)?.into()],
            };
            // Protobuf cannot hold a message of 2 GiB or more (and onnx refuses it).
            let size: usize = out.iter().map(|c| c.len()).sum();
            if how == Emit::Onnx && size > i32::MAX as usize {
                return Err(miette::Report::msg(format!(
                    "{}: the ONNX model would be {size} bytes, over protobuf's 2 GiB limit (mpc does not write \
                     external data yet); nothing was written",
                    model.display()
                )));
            }
            // Reading, verifying, lowering and emitting (an ONNX export reads the
            // weights file too, and --onnx-test-data runs the executor); writing
            // the output is not counted.
            eprintln!(
                "{}: read, lowered and emitted in {:.3} ms",
                model.display(),
                started.elapsed().as_secs_f64() * 1e3
            );
            mpc::timings::mark("emit");
            lower_onnx::write_output(output.as_deref(), &out)?;
            mpc::timings::mark("write");
            exit_without_freeing(g);
            Ok(())
        }
        Command::Explain { model, passes: pass_args, json, cost, gpu, tf32, fusion } => {
            if fusion {
                let opts = pass_args.options()?;
                let g = if pass_args.precision == LowType::Fp32 {
                    // As `lower --precision fp32` lowers it: no autocast, no scaling.
                    let mut g = load_verified(&model)?;
                    passes::lower_fp32(&mut g, &opts)
                        .map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
                    g
                } else {
                    load_and_lower(&model, &opts)?.0
                };
                return fusion::explain_fusion(&model, &g, json);
            }
            if cost {
                if pass_args.table.is_some() || pass_args.strict || pass_args.loss_scale.is_some() {
                    usage_error("--cost lowers the graph in fp32, fp16 and bf16 with their defaults".into());
                }
                return cost::explain_cost(&model, cost::gpu(&gpu), tf32, json);
            }
            if pass_args.precision == LowType::Fp32 {
                usage_error("--precision fp32: explain shows autocast's decisions, and fp32 has none".into());
            }
            let opts = passes::Options { explain: true, ..pass_args.options()? };
            let (_, lowered) = load_and_lower(&model, &opts)?;
            let r = &lowered.autocast;
            if json {
                println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
                return Ok(());
            }
            let w = r.decisions.iter().map(|d| d.node.len()).max().unwrap_or(4).max(4);
            println!("{:w$}  {:18}  {:6}  {:5}  rule", "node", "op", "class", "type");
            for d in &r.decisions {
                let class = d.class.map(|c| c.name()).unwrap_or("-");
                println!("{:w$}  {:18}  {:6}  {:5}  {}", d.node, d.op, class, d.dtype, d.rule);
            }
            for warning in &r.warnings {
                println!("warning: {warning}");
            }
            println!("{}", r.summary());
            Ok(())
        }
        Command::Train(args) => train::train(args),
        Command::Compare(args) => compare::compare(args),
        Command::Import(args) => import::import(args),
        Command::Gen(cmd) => gen(cmd),
        Command::Plan { model } => plan(&model),
        Command::Bench(args) => bench::bench(args),
        Command::Table { precision, table, json } => print_table(precision, table.as_deref(), json),
        Command::Devices => {
            println!("{}", mpc::exec::cuda::probe::probe());
            Ok(())
        }
        Command::Selftest { device, steps, tf32 } => selftest(device, steps, tf32),
        Command::Schema => {
            print!("{}", mpc::format::json_schema());
            Ok(())
        }
    }
}

/// A training session for `g` on the chosen device, its state uploaded.
/// Opens a training session where `dev` says; prints, once per process,
/// the device and, when `auto` fell back to the CPU, why (to stderr).
fn open_session(
    g: &mpc::Graph,
    seed: u64,
    state: &mpc::exec::State,
    dev: &DeviceArgs,
) -> Result<Box<dyn mpc::exec::Trainer>, miette::Report> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TOLD: AtomicBool = AtomicBool::new(false);
    let mut opened = mpc::exec::device::open(g, seed, state, dev.device, dev.tf32, (dev.fuse, dev.gemm_epilogues))
        .map_err(miette::Report::msg)?;
    opened.trainer.set_graphs(dev.cuda_graph);
    if !TOLD.swap(true, Ordering::Relaxed) {
        if let Some(n) = &opened.notice {
            eprintln!("note: {n}");
        }
        eprintln!("device: {}", opened.describe);
    }
    Ok(opened.trainer)
}

/// `mpc selftest`: the CUDA backend against the CPU on the MLP family.
fn selftest(device: mpc::exec::device::Device, steps: u64, tf32: bool) -> Result<(), miette::Report> {
    use mpc::exec::cuda::{backend::CudaBackend, device::CudaGpu, emu::EmuGpu, gpu::Gpu, probe};
    use mpc::exec::device::Device;
    use mpc::train::{epilogue_check, selftest};
    let rows = match device {
        Device::CudaEmu => {
            let mut rows =
                selftest::run(|| Ok(CudaBackend::new(EmuGpu::new(), tf32)), selftest::Tolerance::Emulated, steps);
            rows.extend(epilogue_check::run(&mut EmuGpu::new(), true));
            println!("{}", selftest::table("cuda-emu (SIMT emulation on the CPU)", &rows));
            rows
        }
        _ => {
            let report = probe::probe();
            let mut gpu = CudaGpu::open(&report, 0).map_err(|e| miette::Report::msg(e.to_string()))?;
            let name = gpu.describe();
            let open = || CudaGpu::open(&report, 0).map(|g| CudaBackend::new(g, tf32)).map_err(|e| e.to_string());
            let mut rows = selftest::run(open, selftest::Tolerance::Device, steps);
            rows.extend(epilogue_check::run(&mut gpu, false));
            println!("{}", selftest::table(&name, &rows));
            rows
        }
    };
    let failed = rows.iter().filter(|r| !r.passed()).count();
    match failed {
        0 => Ok(()),
        n => Err(miette::Report::msg(format!("{n} of {} self-test case(s) failed", rows.len()))),
    }
}
