//! `mpc lower model.onnx`: an ONNX model straight to a mixed-precision ONNX
//! model (or the text or DOT form of the lowered graph), in memory; see
//! `mpc::onnx::lower`.

use std::path::{Path, PathBuf};

use crate::emit::{self, Emit};
use bytes::Bytes;
use std::io::{BufWriter, Write};

use mpc::io::{write_atomic_with, EarlyWriteback};
use mpc::onnx::lower::{self, InferenceOptions};

/// What `mpc lower` was asked to do with an ONNX model.
pub struct OnnxLower {
    pub model: PathBuf,
    pub output: Option<PathBuf>,
    pub emit: Emit,
    pub opts: InferenceOptions,
    /// Lower this many times in the process and report the times (benchmarking).
    pub repeat: usize,
}

fn at(model: &Path, m: impl std::fmt::Display) -> miette::Report {
    miette::Report::msg(format!("{}: {m}", model.display()))
}

/// Lowers and emits once; the chunks of the output.
fn once(job: &OnnxLower, bytes: &Bytes, quiet: bool) -> Result<(Vec<Bytes>, usize), miette::Report> {
    let model = &job.model;
    let l = lower::lower(bytes.clone(), &job.opts).map_err(|e| at(model, e))?;
    if !quiet {
        for note in &l.notes {
            eprintln!("note: {note}");
        }
        if let Some(r) = &l.report {
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("{}: {}", model.display(), r.summary());
        }
    }
    let chunks = match job.emit {
        Emit::Onnx => l.to_onnx(job.opts.bf16).map_err(|e| at(model, e))?,
        how => {
            let exp = mpc::onnx::export::Options { bf16: job.opts.bf16, ..Default::default() };
            vec![Bytes::from(emit::emit(&l.graph, how, &exp).map_err(|e| at(model, e))?)]
        }
    };
    let nodes = l.onnx_nodes;
    if job.repeat <= 1 {
        // The one run: nothing reads the graph again.
        crate::exit_without_freeing(l);
    }
    Ok((chunks, nodes))
}

pub fn lower(job: OnnxLower) -> Result<(), miette::Report> {
    let model = &job.model;
    let bytes =
        std::fs::read(model).map_err(|e| miette::Report::msg(format!("cannot read {}: {e}", model.display())))?;
    let bytes = Bytes::from(bytes);
    mpc::timings::mark("read");
    // From the model's bytes in memory to the output's: reading the file
    // and writing the output are disk time, not counted.
    let started = std::time::Instant::now();
    let (chunks, nodes) = once(&job, &bytes, false)?;
    let first = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("{}: {nodes} ONNX nodes imported, lowered and emitted in {first:.3} ms", model.display());
    if job.repeat > 1 {
        let mut times = vec![first];
        for _ in 1..job.repeat {
            let t = std::time::Instant::now();
            std::hint::black_box(once(&job, &bytes, true)?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{}: {} runs in this process: best {:.3} ms, median {:.3} ms, first {first:.3} ms",
            model.display(),
            times.len(),
            times[0],
            times[times.len() / 2]
        );
    }
    write_output(job.output.as_deref(), &chunks)?;
    mpc::timings::mark("write");
    Ok(())
}

/// Writes `mpc lower`'s output: to `path` atomically, or to stdout.
pub fn write_output(path: Option<&Path>, chunks: &[Bytes]) -> Result<(), miette::Report> {
    write_output_with(path, |w| chunks.iter().try_for_each(|c| w.write_all(c)))
}

/// Writes `mpc lower`'s output as `write` makes it, through a buffer: to
/// `path` atomically (see `write_atomic_with`), or to stdout.
pub fn write_output_with(
    path: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), miette::Report> {
    // Large enough that a streamed emitter's small writes reach the file in few calls.
    const BUFFER: usize = 1 << 20;
    match path {
        Some(path) => write_atomic_with(path, |tmp| {
            let mut w = BufWriter::with_capacity(BUFFER, EarlyWriteback::new(tmp.as_file()));
            write(&mut w)?;
            w.flush()
        })
        .map_err(|e| miette::Report::msg(format!("cannot write {}: {e}", path.display())))?,
        None => {
            let mut w = BufWriter::with_capacity(BUFFER, std::io::stdout().lock());
            // A closed pipe (`mpc lower ... | head`) is not an error worth a message.
            let _ = write(&mut w).and_then(|()| w.flush());
        }
    }
    Ok(())
}

/// Whether a model path names an ONNX file (by its extension).
pub fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}
