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
        /// The low-precision type. Accepted now; the autocast pass that uses it is not in the pipeline yet.
        #[arg(long, value_enum, default_value = "fp16")]
        precision: LowType,
        /// Verify the graph after every pass (always on in debug builds).
        #[arg(long)]
        verify_each: bool,
        /// Print the text IR to stderr after this pass (repeatable).
        #[arg(long, value_name = "PASS")]
        print_after: Vec<String>,
    },
    /// Print the JSON Schema of the graph format.
    Schema,
}

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
        Command::Lower { model, output, emit: how, precision, verify_each, print_after } => {
            let names = passes::pass_names();
            if let Some(p) = print_after.iter().find(|p| !names.contains(&p.as_str())) {
                usage_error(format!("--print-after: no pass is named `{p}`; the passes are: {}", names.join(", ")));
            }
            if precision == LowType::Bf16 {
                eprintln!("note: --precision has no effect yet: the autocast pass is not in the pipeline");
            }
            let loaded = load(&model).map_err(|e| e.into_report())?;
            let mut g = loaded.graph;
            if let Err(e) = mpc::verify(&g) {
                return Err(problems_report(&model.display().to_string(), &loaded.text, &e.0));
            }
            let opts = passes::Options { verify_each, print_after };
            passes::lower(&mut g, &opts).map_err(|e| miette::Report::msg(format!("{}: {e}", model.display())))?;
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
        Command::Schema => {
            print!("{}", mpc::format::json_schema());
            Ok(())
        }
    }
}
