//! The `mpc` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mpc::emit::{self, Emit};
use mpc::io::{load, problems_report, write_atomic};
use mpc::passes;

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
}

/// Settings of the mixed-precision passes, shared by `lower` and `explain`.
#[derive(clap::Args)]
struct PassArgs {
    /// The low-precision type.
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
        };
        let mut table = passes::Table::default_for(low);
        if let Some(path) = &self.table {
            let text = std::fs::read_to_string(path)
                .map_err(|e| miette::Report::msg(format!("cannot read {}: {e}", path.display())))?;
            table.apply_file(&text).map_err(|e| miette::Report::msg(format!("{}: {e}", path.display())))?;
        }
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
    Lower {
        /// The graph file (JSON, format mpc/1).
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
    },
    /// Print the JSON Schema of the graph format.
    Schema,
}

// glibc's allocator spends much of a large lowering consolidating free lists.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad input (the graph or a file); clap uses 2 for bad usage.
const BAD_INPUT: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

fn usage_error(message: String) -> ! {
    use clap::CommandFactory;
    Cli::command().error(clap::error::ErrorKind::InvalidValue, message).exit()
}

fn load_and_lower(
    model: &std::path::Path,
    opts: &passes::Options,
) -> Result<(mpc::Graph, passes::Lowered), miette::Report> {
    let loaded = load(model).map_err(|e| e.into_report())?;
    let mut g = loaded.graph;
    if let Err(e) = mpc::verify(&g) {
        return Err(problems_report(&model.display().to_string(), &loaded.text, &e.0));
    }
    let lowered = passes::lower(&mut g, opts).map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
    Ok((g, lowered))
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
                |r: mpc::Role| g.node_ids().filter(|&n| g.node(n).role == r && !g.node(n).op.is_source()).count();
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
        Command::Lower { model, output, emit: how, passes: pass_args, verify_each, print_after } => {
            let names = passes::pass_names();
            if let Some(p) = print_after.iter().find(|p| !names.contains(&p.as_str())) {
                usage_error(format!("--print-after: no pass is named `{p}`; the passes are: {}", names.join(", ")));
            }
            let opts = passes::Options { verify_each, print_after, ..pass_args.options()? };
            let (g, lowered) = load_and_lower(&model, &opts)?;
            for w in &lowered.autocast.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("{}: {}", model.display(), lowered.autocast.summary());
            let out = emit::emit(&g, how);
            match output {
                Some(path) => write_atomic(&path, out.as_bytes())
                    .map_err(|e| miette::Report::msg(format!("cannot write {}: {e}", path.display())))?,
                None => {
                    use std::io::Write;
                    let mut stdout = std::io::stdout().lock();
                    // A closed pipe (`mpc lower ... | head`) is not an error worth a message.
                    let _ = stdout.write_all(out.as_bytes());
                }
            }
            Ok(())
        }
        Command::Explain { model, passes: pass_args, json } => {
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
        Command::Schema => {
            print!("{}", mpc::format::json_schema());
            Ok(())
        }
    }
}
