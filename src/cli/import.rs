//! `mpc import`: an ONNX model becomes an mpc training graph plus a
//! safetensors file of its weights, both written atomically.

use std::path::{Path, PathBuf};

use mpc::format::{Optimizer, OptimizerKind};
use mpc::io::write_atomic;
use mpc::onnx::{ImportOptions, Loss};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The ONNX model (.onnx, weights inline).
    model: PathBuf,
    /// The graph file to write; the weights go beside it as STEM.safetensors.
    #[arg(short, long)]
    output: PathBuf,
    /// The loss added on the model's first output (cross-entropy: the
    /// model is a classifier whose first output is logits or probabilities).
    #[arg(long, value_parser = crate::choice::of::<Loss>(), default_value = "cross-entropy")]
    loss: Loss,
    /// The optimizer of the training graph.
    #[arg(long, value_parser = ["sgd", "adam", "adamw"], default_value = "sgd")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// The shape of an input, for symbolic or to override dimensions: NAME=D0,D1,... (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    input_shapes: Vec<(String, Vec<u64>)>,
}

pub fn parse_shape(s: &str) -> Result<(String, Vec<u64>), String> {
    let (name, dims) = s.rsplit_once('=').ok_or("expected NAME=D0,D1,...")?;
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<u64>().ok().filter(|&x| x > 0).ok_or(format!("`{d}` is not a positive size")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

fn msg(m: String) -> miette::Report {
    miette::Report::msg(m)
}

pub fn import(args: ImportArgs) -> Result<(), miette::Report> {
    let bytes = std::fs::read(&args.model).map_err(|e| msg(format!("cannot read {}: {e}", args.model.display())))?;
    let stem = args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let weights_file = format!("{stem}.safetensors");
    if args.output.file_name().is_some_and(|n| n.to_string_lossy() == weights_file) {
        return Err(msg(format!(
            "-o {}: the graph would overwrite its own weights file ({weights_file}, named after the graph); \
             give the graph a .json name",
            args.output.display()
        )));
    }
    let kind = match args.optimizer.as_str() {
        "adam" => OptimizerKind::Adam,
        "adamw" => OptimizerKind::Adamw,
        _ => OptimizerKind::Sgd,
    };
    let optimizer =
        Optimizer { momentum: (kind == OptimizerKind::Sgd).then_some(args.momentum), ..Optimizer::new(kind, args.lr) };
    let opts = ImportOptions {
        loss: Some(args.loss),
        optimizer,
        weights_file: weights_file.clone(),
        input_shapes: args.input_shapes,
        dropout_seed: 0,
    };
    let started = std::time::Instant::now();
    let im = mpc::onnx::import(bytes, &opts).map_err(|e| msg(format!("{}: {e}", args.model.display())))?;
    let converted = started.elapsed();
    let dir = args.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !im.weights.is_empty() {
        let path = dir.join(&weights_file);
        mpc::onnx::raw::write_safetensors(&path, &im.weights).map_err(msg)?;
    }
    let json = mpc::format::emit::json::to_string(&im.graph);
    write_atomic(&args.output, json.as_bytes())
        .map_err(|e| msg(format!("cannot write {}: {e}", args.output.display())))?;
    for note in &im.notes {
        eprintln!("note: {note}");
    }
    let g = &im.graph;
    let elements: u64 = im.weights.values().map(|t| t.numel() as u64).sum();
    // The conversion time excludes reading the model and writing the files,
    // which are disk time (the weights file is synced before its rename).
    eprintln!(
        "{}: {} ONNX nodes -> {} mpc nodes ({} params), {} weight tensors ({} elements) in {}; converted in {:.3} ms, \
         files written in {:.1} ms",
        args.model.display(),
        im.onnx_nodes,
        g.node_count(),
        g.params().count(),
        im.weights.len(),
        elements,
        if im.weights.is_empty() { "no file".to_string() } else { dir.join(&weights_file).display().to_string() },
        converted.as_secs_f64() * 1e3,
        (started.elapsed() - converted).as_secs_f64() * 1e3
    );
    Ok(())
}
