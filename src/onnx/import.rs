//! `mpc import`: an ONNX inference model becomes an mpc training graph
//! (or, with no loss, an inference graph for `mpc lower model.onnx`).
//!
//! Float initializers become params (their values go to a safetensors file
//! beside the graph, `init: file`), BatchNormalization statistics and
//! constants become state, shape arithmetic (Shape, Gather, Concat,
//! Unsqueeze, ... on constants) is folded at import, and a loss is added on
//! the model's first output. Every op is mapped onto mpc's vocabulary (see
//! [`super::convert`]); an op mpc has no mapping for is reported together
//! with every other such node before anything is converted.

use std::borrow::Cow;
use std::rc::Rc;

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};

use super::proto::{data_type as dt, DimensionValue, GraphProto, ModelProto, NodeProto, TypeValue};
use super::raw::{RawTensor, RawWeights};
use super::tensor::{decode, Const, ConstData};
use crate::format::Optimizer;
use crate::ir::graph::{Graph, ValueId};
use crate::ir::op::{Init, Op, Role};
use crate::ir::types::{DType, TensorType};

/// The loss added on the model's first output (each one's
/// [`Choice::help`](crate::choice::Choice::help) says what it needs).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Loss {
    CrossEntropy,
    Mse,
}

impl crate::choice::Choice for Loss {
    const ALL: &'static [Loss] = &[Loss::CrossEntropy, Loss::Mse];

    fn name(self) -> &'static str {
        match self {
            Loss::CrossEntropy => "cross-entropy",
            Loss::Mse => "mse",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Loss::CrossEntropy => {
                "Cross-entropy against integer labels (a `labels` input `[N]` is added). A final Softmax is skipped: \
                 the loss reads the logits before it"
            }
            Loss::Mse => "Mean squared error against a `target` input shaped like the output",
        }
    }
}

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The loss that makes a training graph; `None` imports the inference
    /// graph as it is (no loss, no optimizer), for `mpc lower model.onnx`.
    pub loss: Option<Loss>,
    pub optimizer: Optimizer,
    /// The `weights` file name written into the graph (relative to it).
    pub weights_file: String,
    /// Sizes for inputs with symbolic dimensions (or to override them).
    pub input_shapes: Vec<(String, Vec<u64>)>,
    /// Seed of the first Dropout's mask; later ones count up from it.
    pub dropout_seed: u64,
}

/// An imported model.
#[derive(Debug)]
pub struct Imported {
    pub graph: Graph,
    /// Values of the `init: file` params and state, by node name: slices
    /// of the model's bytes where the model stores them raw.
    pub weights: RawWeights,
    /// What the importer decided that a user should know.
    pub notes: Vec<String>,
    pub onnx_nodes: usize,
}

/// Why a model cannot be imported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(pub String);

/// The ONNX ops (default domain) that `onnx/convert.rs` converts by its
/// own rules; the table's `Onnx::Direct` ops are imported too.
const CONVERTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LRN",
    "LayerNormalization",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "Reshape",
    "Shape",
    "Softmax",
    "Squeeze",
    "Sub",
    "Sum",
    "Transpose",
    "Unsqueeze",
];

/// The ONNX ops (default domain) mpc imports, sorted.
pub fn supported() -> &'static [&'static str] {
    static ALL: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let direct = crate::ir::op::OPS.iter().filter_map(|r| match r.onnx {
            crate::ir::opinfo::Onnx::Direct(t) => Some(t),
            _ => None,
        });
        let mut all: Vec<&'static str> = CONVERTED.iter().copied().chain(direct).collect();
        all.sort_unstable();
        all.dedup();
        all
    })
}

/// The name suffix of the reshape to 2-D before an old-opset Softmax.
pub(super) const SOFTMAX_2D: &str = ".softmax2d";

/// Where a constant came from: decides param (trainable) or state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Initializer,
    Node,
}

/// An ONNX value during import.
#[derive(Clone, Debug)]
pub(super) enum Val {
    T(ValueId),
    C(Rc<Const>, Source),
}

/// How a node reads a value: a weight port makes a constant a param, a
/// statistics port makes it state; plain data follows the constant's source.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Port {
    Data,
    Weight,
    Stats,
}

/// `'m` is the decoded model's: the tables are keyed by its names, not
/// copies of them (an allocation and a free per value saved).
pub(super) struct Importer<'m> {
    pub g: Graph,
    pub opset: i64,
    pub vals: FxHashMap<Cow<'m, str>, Val>,
    /// Constants already turned into param/state nodes, by ONNX name.
    materialized: FxHashMap<&'m str, ValueId>,
    pub weights: RawWeights,
    pub notes: Vec<String>,
    pub dropout_seed: u64,
    /// The Dropout mask outputs that some node or graph output reads.
    pub used: rustc_hash::FxHashSet<String>,
}

/// The Dropout mask outputs that a node or a graph output reads (the only
/// values whose readers the import asks about; a model rarely has any).
fn read_masks(graph: &GraphProto) -> rustc_hash::FxHashSet<String> {
    let masks: rustc_hash::FxHashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Dropout"))
        .filter_map(|n| n.output.get(1).map(String::as_str))
        .filter(|m| !m.is_empty())
        .collect();
    if masks.is_empty() {
        return Default::default();
    }
    graph
        .node
        .iter()
        .flat_map(|n| n.input.iter())
        .chain(graph.output.iter().filter_map(|o| o.name.as_ref()))
        .filter(|x| masks.contains(x.as_str()))
        .cloned()
        .collect()
}

/// Imports an ONNX model from its bytes (kept, not copied: float
/// initializers stored raw become slices of them).
pub fn import(bytes: impl Into<Bytes>, opts: &ImportOptions) -> Result<Imported, ImportError> {
    import_model(&decode_model(bytes.into())?, opts)
}

/// Decodes an ONNX model; its raw initializer data stay slices of `bytes`.
pub fn decode_model(bytes: Bytes) -> Result<ModelProto, ImportError> {
    super::proto::decode_for_import(bytes).map_err(|e| ImportError(format!("not an ONNX model (protobuf: {e})")))
}

/// [`import`] of a decoded model.
pub fn import_model(model: &ModelProto, opts: &ImportOptions) -> Result<Imported, ImportError> {
    import_verified(model, opts, true)
}

/// [`import_model`]; `verify: false` skips the final check of the graph
/// (an importer bug would show there), as the pass manager checks only in
/// debug builds or when asked: the in-memory lowering's choice.
pub(crate) fn import_verified(model: &ModelProto, opts: &ImportOptions, verify: bool) -> Result<Imported, ImportError> {
    let err = |m: String| ImportError(m);
    let graph = model.graph.as_ref().ok_or_else(|| err("the model has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| err("the model imports no version of the default ONNX opset".into()))?;

    let unsupported: Vec<String> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            !matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"))
                || supported().binary_search(&n.op_type.as_deref().unwrap_or("")).is_err()
        })
        .map(|(i, n)| format!("  {}: {}", node_label(n, i), op_label(n)))
        .collect();
    if !unsupported.is_empty() {
        return Err(err(format!(
            "the model uses {} node(s) with ops mpc cannot import:\n{}\nmpc imports: {}",
            unsupported.len(),
            unsupported.join("\n"),
            supported().join(", ")
        )));
    }

    // An --input-shape for a name that is not an input would be ignored silently.
    let inits: FxHashSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let inputs: Vec<&str> =
        graph.input.iter().filter_map(|v| v.name.as_deref()).filter(|n| !inits.contains(n)).collect();
    for (n, _) in &opts.input_shapes {
        if !inputs.contains(&n.as_str()) {
            let known = if inputs.is_empty() { "none".to_string() } else { inputs.join(", ") };
            return Err(err(format!(
                "--input-shape {n}=...: the model has no input named `{n}` (its inputs: {known})"
            )));
        }
    }

    let name = graph.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "onnx_model".into());
    // Sized once (growing the tables was a tenth of a small model's import):
    // a node makes about two mpc nodes (an op and its bias add, a param, a
    // cast) and a name for each output.
    // Capped: a hostile file's many tiny nodes may fail at the first one.
    // The room is address space until used, and the decoded nodes already
    // hold about as much memory, so the cap is high: at 2^20 a 10^6-node
    // model's tables grew twice during import (import 2.41 -> 2.13 s,
    // autocast 0.52 -> 0.33 s with 2^23; BENCHMARKS.md).
    const CAP: usize = 1 << 23;
    let values = graph.initializer.len() + graph.input.len() + graph.node.iter().map(|n| n.output.len()).sum::<usize>();
    let values = values.min(CAP);
    let nodes = (2 * graph.node.len() + graph.initializer.len() + graph.input.len() + 4).min(CAP);
    let mut g = Graph::new(name);
    g.reserve(nodes, (4 * graph.node.len() + 4).min(CAP));
    let mut im = Importer {
        g,
        opset,
        vals: FxHashMap::with_capacity_and_hasher(values, Default::default()),
        materialized: FxHashMap::with_capacity_and_hasher(graph.initializer.len().min(CAP), Default::default()),
        weights: RawWeights::with_capacity_and_hasher(graph.initializer.len().min(CAP), Default::default()),
        notes: Vec::new(),
        dropout_seed: opts.dropout_seed,
        used: read_masks(graph),
    };
    for t in &graph.initializer {
        let tname = t.name.as_deref().unwrap_or_default();
        let c = decode(t).map_err(|m| err(format!("initializer `{tname}`: {m}")))?;
        im.vals.insert(Cow::Borrowed(tname), Val::C(Rc::new(c), Source::Initializer));
    }
    for input in &graph.input {
        let iname = input.name.as_deref().unwrap_or_default();
        if im.vals.contains_key(iname) {
            continue; // an initializer also listed as an input (ONNX IR < 4)
        }
        let ty = input_type(input, opts).map_err(|m| err(format!("graph input `{iname}`: {m}")))?;
        let id =
            im.g.add_node(iname, Op::Input { ty }, Role::Forward, &[])
                .map_err(|e| err(format!("graph input `{iname}`: {e}")))?;
        im.vals.insert(Cow::Borrowed(iname), Val::T(ValueId { node: id, slot: 0 }));
    }
    for (i, n) in graph.node.iter().enumerate() {
        im.node(n).map_err(|m| err(format!("{} ({}): {m}", node_label(n, i), op_label(n))))?;
    }

    let mut outputs = Vec::new();
    for o in &graph.output {
        let oname = o.name.as_deref().unwrap_or_default();
        match im.vals.get(oname) {
            Some(Val::T(v)) => outputs.push(*v),
            Some(Val::C(..)) => {
                return Err(err(format!("graph output `{oname}` is a constant; mpc trains computed values")))
            }
            None => return Err(err(format!("graph output `{oname}` is not computed by any node"))),
        }
    }
    let first = *outputs.first().ok_or_else(|| err("the model has no outputs".into()))?;
    im.g.outputs = outputs;
    if let Some(loss) = opts.loss {
        im.add_loss(first, loss).map_err(|m| err(format!("adding the {loss:?} loss: {m}")))?;
        im.g.optimizer = Some(opts.optimizer.clone());
    }
    if !im.weights.is_empty() {
        im.g.weights = Some(opts.weights_file.clone());
    }
    let checked = match (verify, opts.loss) {
        (false, _) => Ok(()),
        (true, Some(_)) => crate::verify(&im.g),
        (true, None) => crate::ir::verify::verify_inference(&im.g),
    };
    checked.map_err(|e| err(format!("the imported graph does not verify (a bug in mpc import): {e:?}")))?;
    Ok(Imported { graph: im.g, weights: im.weights, notes: im.notes, onnx_nodes: graph.node.len() })
}

fn node_label(n: &NodeProto, i: usize) -> String {
    match n.name.as_deref() {
        Some(name) if !name.is_empty() => format!("node `{name}`"),
        _ => format!("node #{i} (unnamed, output `{}`)", n.output.first().map(String::as_str).unwrap_or("")),
    }
}

fn op_label(n: &NodeProto) -> String {
    let op = n.op_type.as_deref().unwrap_or("<no op_type>");
    match n.domain.as_deref() {
        None | Some("") | Some("ai.onnx") => op.to_string(),
        Some(d) => format!("{d}::{op}"),
    }
}

fn input_type(v: &super::proto::ValueInfoProto, opts: &ImportOptions) -> Result<TensorType, String> {
    let name = v.name.as_deref().unwrap_or("");
    let Some(TypeValue::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err("only tensor inputs are supported".into());
    };
    let dtype = match t.elem_type.unwrap_or(0) {
        dt::FLOAT => DType::F32,
        dt::INT64 => DType::I64,
        dt::INT32 => DType::I32,
        other => return Err(format!("element type {} is not supported (FLOAT, INT64, INT32)", dt::name(other))),
    };
    if let Some((_, dims)) = opts.input_shapes.iter().find(|(n, _)| n == name) {
        return Ok(TensorType::new(dtype, dims.clone()));
    }
    let shape =
        t.shape.as_ref().ok_or_else(|| format!("its shape is unknown: give it with --input-shape {name}=D0,D1,..."))?;
    let mut dims = Vec::new();
    for (k, d) in shape.dim.iter().enumerate() {
        match d.value {
            Some(DimensionValue::DimValue(x)) if x > 0 => dims.push(x as u64),
            Some(DimensionValue::DimParam(ref p)) => {
                return Err(format!(
                    "dimension {k} is symbolic (`{p}`): give every size with --input-shape {name}=D0,D1,..."
                ))
            }
            _ => return Err(format!("dimension {k} has no size: give every size with --input-shape {name}=D0,D1,...")),
        }
    }
    Ok(TensorType::new(dtype, dims))
}

impl<'m> Importer<'m> {
    /// The value an ONNX name stands for.
    pub fn val(&self, name: &str) -> Result<Val, String> {
        self.vals.get(name).cloned().ok_or_else(|| {
            if name.is_empty() {
                "a required input is missing".to_string()
            } else {
                format!("it reads `{name}`, which no graph input, initializer or earlier node defines")
            }
        })
    }

    /// A constant input (shapes, axes), or an error naming what was expected.
    pub fn constant(&self, name: &str, what: &str) -> Result<Rc<Const>, String> {
        match self.val(name)? {
            Val::C(c, _) => Ok(c),
            Val::T(_) => Err(format!("{what} `{name}` must be a constant (an initializer or computed from constants)")),
        }
    }

    /// An mpc value for an ONNX value; constants become param or state nodes.
    pub fn tensor(&mut self, name: &'m str, port: Port) -> Result<ValueId, String> {
        self.tensor_shaped(name, port, None)
    }

    /// As [`Importer::tensor`]; a constant not yet materialised takes `dims`
    /// (same element count), otherwise a reshape is added.
    pub fn tensor_shaped(&mut self, name: &'m str, port: Port, dims: Option<&[u64]>) -> Result<ValueId, String> {
        let val = self.val(name)?;
        self.tensor_of(name, val, port, dims)
    }

    /// [`Importer::tensor_shaped`] of `name`'s value `val`, looked up already.
    pub fn tensor_of(&mut self, name: &'m str, val: Val, port: Port, dims: Option<&[u64]>) -> Result<ValueId, String> {
        let v = match val {
            Val::T(v) => v,
            Val::C(c, source) => match self.materialized.get(name) {
                Some(&v) => v,
                None => {
                    let v = self.materialize(name, &c, source, port, dims)?;
                    self.materialized.insert(name, v);
                    v
                }
            },
        };
        match dims {
            Some(d) if self.g.ty(v).shape.0 != d => {
                let shape = d.iter().map(|&x| x as i64).collect();
                self.add(&format!("{name}.reshaped"), Op::Reshape { shape }, &[v])
            }
            _ => Ok(v),
        }
    }

    pub(super) fn materialize(
        &mut self,
        name: &str,
        c: &Const,
        source: Source,
        port: Port,
        dims: Option<&[u64]>,
    ) -> Result<ValueId, String> {
        let dims = match dims {
            Some(d) if d.iter().product::<u64>() == c.numel() => d.to_vec(),
            _ => c.dims.clone(),
        };
        let dtype = if c.float { DType::F32 } else { DType::I64 };
        let ty = TensorType::new(dtype, dims.clone());
        let trainable = c.float
            && match port {
                Port::Weight => true,
                Port::Stats => false,
                Port::Data => source == Source::Initializer,
            };
        let (init, raw) = match &c.data {
            ConstData::Fill(x) => (Init::Constant { value: *x }, None),
            data => (Init::File, Some(RawTensor::new(dtype, dims, data.le_bytes())?)),
        };
        let op = if trainable { Op::Param { ty, init } } else { Op::State { ty, init } };
        let id = self.g.add_fresh(name, op, Role::Forward, &[]).map_err(|e| e.to_string())?;
        if let Some(t) = raw {
            // Under the node's name, which `add_fresh` made unique.
            self.weights.insert(self.g.node(id).name().to_string(), t);
        }
        Ok(ValueId { node: id, slot: 0 })
    }

    /// Adds a forward node named after `name` (made unique); returns output 0.
    pub fn add(&mut self, name: &str, op: Op, ins: &[ValueId]) -> Result<ValueId, String> {
        let id = self.g.add_fresh(name, op, Role::Forward, ins).map_err(|e| e.to_string())?;
        Ok(ValueId { node: id, slot: 0 })
    }

    pub fn bind(&mut self, onnx_name: impl Into<Cow<'m, str>>, v: Val) {
        let onnx_name = onnx_name.into();
        if !onnx_name.is_empty() {
            self.vals.insert(onnx_name, v);
        }
    }

    pub fn dims(&self, v: ValueId) -> Vec<u64> {
        self.g.ty(v).shape.0.clone()
    }

    fn add_loss(&mut self, y: ValueId, loss: Loss) -> Result<(), String> {
        let loss_name = self.g.fresh_name("loss");
        let l = match loss {
            Loss::CrossEntropy => {
                let logits = self.logits_of(y);
                let d = self.dims(logits);
                if d.is_empty() {
                    return Err("the output is a scalar; cross-entropy needs logits [N, C]".into());
                }
                let n = d[0];
                let logits = if d.len() == 2 {
                    logits
                } else {
                    self.add(&format!("{}.flat", self.g.value_name(logits)), Op::Flatten { axis: 1 }, &[logits])?
                };
                let labels = self.g.fresh_name("labels");
                let ty = TensorType::new(DType::I64, vec![n]);
                let lab = self.g.add_node(labels, Op::Input { ty }, Role::Forward, &[]).map_err(|e| e.to_string())?;
                self.add(&loss_name, Op::CrossEntropy, &[logits, ValueId { node: lab, slot: 0 }])?
            }
            Loss::Mse => {
                let target = self.g.fresh_name("target");
                let ty = self.g.ty(y).clone();
                let t = self.g.add_node(target, Op::Input { ty }, Role::Forward, &[]).map_err(|e| e.to_string())?;
                self.add(&loss_name, Op::Mse, &[y, ValueId { node: t, slot: 0 }])?
            }
        };
        self.g.loss = Some(l);
        Ok(())
    }

    /// The logits behind a classifier output: the input of a final softmax
    /// (through the reshapes the import of an old-opset Softmax adds).
    fn logits_of(&mut self, y: ValueId) -> ValueId {
        let mut v = y;
        for _ in 0..3 {
            let node = self.g.node(v.node);
            match node.op() {
                Op::Softmax { causal: false, .. } => {
                    let x = self.g.inputs(v.node)[0];
                    let x = self.through_reshapes(x);
                    self.notes.push(format!(
                        "cross_entropy reads `{}`, the logits before the final softmax `{}` (it applies log-softmax \
                         itself); they are also a step output",
                        self.g.value_name(x),
                        self.g.node(v.node).name()
                    ));
                    if !self.g.outputs.contains(&x) {
                        self.g.outputs.push(x);
                    }
                    return x;
                }
                Op::Reshape { .. } => v = self.g.inputs(v.node)[0],
                _ => break,
            }
        }
        self.notes.push(format!("cross_entropy treats the output `{}` as logits", self.g.value_name(y)));
        y
    }

    /// Steps back over the reshape to 2-D that an old-opset Softmax's import adds.
    fn through_reshapes(&self, v: ValueId) -> ValueId {
        let n = self.g.node(v.node);
        if matches!(n.op(), Op::Reshape { .. }) && n.name().ends_with(SOFTMAX_2D) {
            self.g.inputs(v.node)[0]
        } else {
            v
        }
    }
}
