//! An ONNX model straight to a mixed-precision ONNX model, in memory:
//! import as an inference graph (no loss, no optimizer), autocast and
//! cleanup, export. What `mpc lower model.onnx --emit onnx` runs, and the
//! entry point for a program that embeds mpc as its FP16/BF16 converter.
//!
//! The weights are never copied on the way: an initializer's bytes stay a
//! slice of `bytes` until the export converts them, once, into the buffer
//! the output is written from (see [`super::raw`] and [`super::chunks`]).

use bytes::Bytes;

use std::sync::Mutex;

use rustc_hash::FxHashSet;

use super::ahead::{self, Ahead};
use super::export::{self, Bf16Mode};
use super::proto::{data_type, ModelProto};
use super::raw::{RawWeights, Rounding};
use super::{import, ImportOptions};
use crate::format::{Optimizer, OptimizerKind};
use crate::ir::graph::Graph;
use crate::ir::types::DType;
use crate::passes::{self, autocast};

/// How to lower an ONNX model.
#[derive(Clone, Debug, Default)]
pub struct InferenceOptions {
    /// The mixed-precision settings; `None` keeps FP32 (cleanup only).
    pub passes: Option<passes::Options>,
    /// How bf16 values are written.
    pub bf16: Bf16Mode,
    /// Sizes for inputs with symbolic dimensions (or to override them).
    pub input_shapes: Vec<(String, Vec<u64>)>,
    /// Start converting the weights on other threads while the graph is
    /// imported and lowered, for the ONNX export that follows
    /// ([`Lowered::to_onnx`]; [`convert`] sets it).
    pub ahead: bool,
}

/// A lowered inference graph and the weights its params read.
#[derive(Debug)]
pub struct Lowered {
    pub graph: Graph,
    pub weights: RawWeights,
    /// What autocast decided (`None` for FP32).
    pub report: Option<autocast::Report>,
    /// What the importer decided that a user should know.
    pub notes: Vec<String>,
    pub onnx_nodes: usize,
    /// Weight conversions started at decoding, for [`Lowered::to_onnx`].
    ahead: Mutex<Option<Ahead>>,
}

/// Why a model could not be lowered: the message says where and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct LowerError(pub String);

/// Imports `bytes` (an ONNX model) as an inference graph and lowers it.
pub fn lower(bytes: Bytes, opts: &InferenceOptions) -> Result<Lowered, LowerError> {
    let import_opts = ImportOptions {
        loss: None,
        optimizer: Optimizer::new(OptimizerKind::Sgd, 0.0),
        weights_file: String::new(),
        input_shapes: opts.input_shapes.clone(),
        dropout_seed: 0,
    };
    if opts.ahead && opts.passes.is_some() {
        ahead::wake();
    }
    let model = import::decode_model(bytes).map_err(|e| LowerError(e.to_string()))?;
    crate::timings::mark("decode");
    let ahead = match &opts.passes {
        Some(p) if opts.ahead => Ahead::start(guess_conversions(&model, p.low, opts.bf16)),
        _ => None,
    };
    // Checked as the passes are: in debug builds, or with --verify-each.
    let verify = cfg!(debug_assertions) || opts.passes.as_ref().is_some_and(|p| p.verify_each);
    let im = import::import_verified(&model, &import_opts, verify).map_err(|e| LowerError(e.to_string()))?;
    drop(model);
    crate::timings::mark("import");
    let mut graph = im.graph;
    let report = match &opts.passes {
        Some(p) => {
            let p = passes::Options { fold_bias: opts.bf16.folds_bias(p.low), ..p.clone() };
            Some(passes::lower_inference(&mut graph, &p).map_err(|e| LowerError(e.to_string()))?.autocast)
        }
        None => {
            let p = passes::Options { inference: true, ..passes::Options::default() };
            passes::run_passes(&mut graph, &mut [&mut passes::cleanup::Cleanup], &p)
                .map_err(|e| LowerError(e.to_string()))?;
            None
        }
    };
    Ok(Lowered {
        graph,
        weights: im.weights,
        report,
        notes: im.notes,
        onnx_nodes: im.onnx_nodes,
        ahead: Mutex::new(ahead),
    })
}

/// The conversions the export will most likely ask for: every raw f32
/// initializer rounded to the low type; stored as FLOAT holding bf16
/// values where bf16 is emulated, and for a bf16 Conv's weight and bias
/// (opset 17 has no bf16 Conv). A wrong guess only wastes its conversion.
fn guess_conversions(model: &ModelProto, low: DType, mode: Bf16Mode) -> Vec<(Bytes, Rounding)> {
    let Some(g) = model.graph.as_ref() else { return Vec::new() };
    let conv_inputs: FxHashSet<&str> = g
        .node
        .iter()
        .filter(|n| low == DType::Bf16 && n.op_type.as_deref() == Some("Conv"))
        .flat_map(|n| n.input.iter().skip(1).map(String::as_str))
        .collect();
    g.initializer
        .iter()
        .filter(|t| t.data_type == Some(data_type::FLOAT))
        .filter_map(|t| {
            let raw = t.raw_data.as_ref().filter(|b| !b.is_empty())?;
            let conv = conv_inputs.contains(t.name.as_deref().unwrap_or(""));
            let r = match (low, mode) {
                (DType::F16, _) => Rounding::F16,
                (DType::Bf16, Bf16Mode::Emulated) => Rounding::Bf16AsF32,
                (DType::Bf16, Bf16Mode::Native) if conv => Rounding::Bf16AsF32,
                (DType::Bf16, Bf16Mode::Native) => Rounding::Bf16,
                _ => return None,
            };
            Some((raw.clone(), r))
        })
        .collect()
}

impl Lowered {
    /// Whether weight conversions run ahead for [`Lowered::to_onnx`].
    pub fn converting_ahead(&self) -> bool {
        self.ahead.lock().is_ok_and(|a| a.is_some())
    }

    /// The lowered model as ONNX: its protobuf encoding in chunks (their
    /// concatenation is the file; large weights are chunks of their own).
    pub fn to_onnx(&self, bf16: Bf16Mode) -> Result<Vec<Bytes>, LowerError> {
        let exp = export::Options { bf16, ..Default::default() };
        // A second call converts everything itself.
        let ahead = self.ahead.lock().ok().and_then(|mut a| a.take());
        let m = export::export_ahead(&self.graph, &exp, Some(&self.weights), ahead)
            .map_err(|e| LowerError(e.to_string()))?;
        crate::timings::mark("export");
        let chunks = super::chunks::encode(m);
        crate::timings::mark("encode");
        Ok(chunks)
    }
}

/// [`lower`] then [`Lowered::to_onnx`]: ONNX model bytes in, the
/// mixed-precision model's bytes (in chunks) out.
pub fn convert(bytes: Bytes, opts: &InferenceOptions) -> Result<Vec<Bytes>, LowerError> {
    lower(bytes, &InferenceOptions { ahead: true, ..opts.clone() })?.to_onnx(opts.bf16)
}
