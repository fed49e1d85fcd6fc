//! `--emit onnx`: the forward (inference) part of a lowered graph as an
//! ONNX model (opset 17, IR version 8). See docs/ONNX.md.
//!
//! What is exported: the graph's `outputs` that forward nodes compute, and
//! the forward nodes they depend on. Graph inputs are the `input` nodes
//! reached; params, state and constants reached become initializers holding
//! their values (from their `init`, seeded as `mpc train` does, or from the
//! graph's weights file). A `cast` of an initializer folds into a converted
//! initializer, so casts act only on activations.
//!
//! Every mpc value keeps its name. A value of type `bf16` is stored as
//! `BFLOAT16` ([`Bf16Mode::Native`]) or, in [`Bf16Mode::Emulated`], as
//! `FLOAT` holding bf16-rounded values: every op then computes in FLOAT and
//! the bf16 value it produces is rounded by `Cast(→BFLOAT16)`,
//! `Cast(→FLOAT)` right after it, which is mpc's reference numerics
//! (compute in f32, round once to the output type, nearest even) in a form
//! onnxruntime's CPU provider can run.

use std::borrow::Cow;
use std::path::PathBuf;

use bytes::Bytes;
use prost::Message;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::exec::{ExecError, State, Tensor};
use crate::ir::graph::{DenseMap, DenseSet, Graph, NodeId, ValueId};
use crate::ir::op::{Init, Op, Role, Window};
use crate::ir::opinfo::Onnx;
use crate::ir::types::{DType, TensorType};

use super::ahead::{self, Ahead};
use super::proto::{
    attr_type, data_type, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TypeValue, ValueInfoProto,
};
use super::raw::{self, RawTensor, RawWeights, Rounding};

/// The ONNX opset the exporter writes (default domain).
mod layout;
mod linalg;
mod nn;
mod norm;
mod operands;
mod test_data;
mod values;

use test_data::initial_values;
pub use test_data::{test_data, TestData};

pub const OPSET: i64 = 17;
/// The ONNX IR version the exporter writes.
pub const IR_VERSION: i64 = 8;

/// How bf16 values are written (each mode's [`Choice::help`](crate::choice::Choice::help) says how).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Bf16Mode {
    #[default]
    Native,
    Emulated,
}

impl crate::choice::Choice for Bf16Mode {
    const ALL: &'static [Bf16Mode] = &[Bf16Mode::Native, Bf16Mode::Emulated];

    fn name(self) -> &'static str {
        match self {
            Bf16Mode::Native => "native",
            Bf16Mode::Emulated => "emulated",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Bf16Mode::Native => {
                "As `BFLOAT16` tensors. Conv and pooling, which opset 17 defines for no bf16 type, compute in FLOAT \
                 between casts"
            }
            Bf16Mode::Emulated => {
                "As `FLOAT` tensors holding bf16-rounded values: every op computes in FLOAT and each bf16 value is \
                 rounded by `Cast(→BFLOAT16)`, `Cast(→FLOAT)` after the op that produces it. Runs on any onnxruntime \
                 provider and reproduces mpc's reference numerics"
            }
        }
    }
}

impl Bf16Mode {
    /// Whether an export in this mode folds a bias add into its Conv or
    /// Gemm for a lowering to `low` (so autocast's `fold_bias` applies):
    /// not where bf16 is emulated, which rounds every op as mpc's
    /// executors do.
    pub fn folds_bias(self, low: DType) -> bool {
        !(low == DType::Bf16 && self == Bf16Mode::Emulated)
    }
}

/// Settings of the exporter.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// How bf16 values are written.
    pub bf16: Bf16Mode,
    /// The seed of the params' and state's `init` (as `mpc train --seed`).
    pub seed: u64,
    /// The graph file's folder: the graph's `weights` file is relative to it.
    pub base_dir: Option<PathBuf>,
    /// Read a `weights` file outside `base_dir` too (see `exec::init::weights_path`).
    pub allow_outside_weights: bool,
}

/// Why a graph cannot be exported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    /// No step output is computed by a forward node.
    #[error(
        "nothing to export: no value in the graph's `outputs` is computed by a forward node; \
         list the inference outputs (e.g. the logits) in `outputs`"
    )]
    NoOutputs,
    /// Nodes whose ops have no ONNX form: `(node, op)`.
    #[error("{}", unsupported_message(.0))]
    Unsupported(Vec<(String, &'static str)>),
    /// A param or state value could not be made.
    #[error("initial values: {0}")]
    Init(#[from] ExecError),
    /// Anything else (an inconsistent graph).
    #[error("{0}")]
    Graph(String),
}

impl From<crate::tensor::TensorError> for ExportError {
    fn from(e: crate::tensor::TensorError) -> ExportError {
        ExportError::Init(e.into())
    }
}

fn unsupported_message(nodes: &[(String, &'static str)]) -> String {
    let list: Vec<String> = nodes.iter().map(|(n, op)| format!("`{n}` ({op})")).collect();
    let what = if nodes.len() == 1 { "1 node has an op" } else { "nodes have ops" };
    let what = if nodes.len() == 1 { what.to_string() } else { format!("{} {what}", nodes.len()) };
    format!("cannot export to ONNX: {what} with no ONNX form: {}", list.join(", "))
}

/// What an export covers: the outputs, the nodes they depend on (in
/// topological order) and the values those nodes read.
struct Plan {
    outputs: Vec<ValueId>,
    nodes: Vec<NodeId>,
    needed: DenseSet<ValueId>,
}

fn plan(g: &Graph) -> Result<Plan, ExportError> {
    let super::forward::Reach { outputs, nodes, needed } = super::forward::reach(g)?;
    let unsupported: Vec<(String, &'static str)> = nodes
        .iter()
        .filter(|&&n| !supported(g.node(n).op()))
        .map(|&n| (g.node(n).name().to_string(), g.node(n).op().name()))
        .collect();
    if !unsupported.is_empty() {
        return Err(ExportError::Unsupported(unsupported));
    }
    Ok(Plan { outputs, nodes, needed })
}

/// Exports the forward part of `g` (a lowered graph) as an ONNX model.
pub fn export(g: &Graph, opts: &Options) -> Result<ModelProto, ExportError> {
    export_with(g, opts, None)
}

/// [`export`], taking the values of `init: file` params and state from
/// `weights` instead of the graph's weights file (an imported model's
/// weights, still in memory).
pub fn export_with(g: &Graph, opts: &Options, weights: Option<&RawWeights>) -> Result<ModelProto, ExportError> {
    export_ahead(g, opts, weights, None)
}

/// [`export_with`], taking the weight conversions it needs from `ahead`
/// where they were started there (see [`super::ahead`]).
pub fn export_ahead(
    g: &Graph,
    opts: &Options,
    weights: Option<&RawWeights>,
    ahead: Option<Ahead>,
) -> Result<ModelProto, ExportError> {
    let Plan { outputs, nodes, needed } = plan(g)?;
    let mut state = DenseMap::new(g.index_bound(), 0);
    let mut rest = Vec::new();
    for &n in &nodes {
        let node = g.node(n);
        let (Op::Param { init, ty } | Op::State { init, ty }) = node.op() else { continue };
        if matches!(init, Init::Zeros | Init::Ones | Init::Constant { .. }) {
            // A fill is the same whatever the seed and the name: made here
            // rather than through a graph and a map by name of its own (a
            // 10^6-node model has 333 K small biases). Large fills become
            // ConstantOfShape nodes and hold no data.
            if fill_value(node.op()).is_none() {
                let t = crate::exec::init::init_tensor(node.name(), ty, init, opts.seed)?;
                state.insert(n, Cow::Owned(RawTensor::from_tensor(t)));
            }
            continue;
        }
        let file = match init {
            Init::File => weights.and_then(|w| w.get(node.name())),
            _ => None,
        };
        match file {
            Some(t) => {
                if t.dtype != ty.dtype || t.dims != ty.shape.0 {
                    return Err(ExportError::Graph(format!(
                        "the weights give `{}` as {} {:?}, but the graph says {ty}",
                        node.name(),
                        t.dtype,
                        t.dims
                    )));
                }
                state.insert(n, Cow::Borrowed(t));
            }
            None => rest.push(n),
        }
    }
    // With weights given, nothing is read from the graph's weights file.
    let mut computed = initial_values(g, &rest, opts, false, weights.is_none())?;
    for n in rest {
        if let Some(t) = computed.remove(g.node(n).name()) {
            state.insert(n, Cow::Owned(RawTensor::from_tensor(t)));
        }
    }
    let mut x = Exporter::new(g, opts.bf16, state, needed, nodes.len());
    x.ahead = ahead;
    for &n in &nodes {
        for v in g.values(n) {
            x.reserve(v);
        }
    }
    for &n in &nodes {
        x.node(n)?;
    }
    x.finish(&outputs)
}

/// [`export`], encoded.
pub fn export_bytes(g: &Graph, opts: &Options) -> Result<Vec<u8>, ExportError> {
    Ok(export(g, opts)?.encode_to_vec())
}

/// Whether an op has an ONNX form (the op table's `onnx` column).
pub fn supported(op: &Op) -> bool {
    op.info().onnx != Onnx::No
}

/// The ONNX element type of an mpc dtype (bf16 as BFLOAT16).
pub fn elem_type(d: DType) -> i32 {
    match d {
        DType::F32 => data_type::FLOAT,
        DType::F16 => data_type::FLOAT16,
        DType::Bf16 => data_type::BFLOAT16,
        DType::I32 => data_type::INT32,
        DType::I64 => data_type::INT64,
        DType::Bool => data_type::BOOL,
    }
}

fn elem_suffix(e: i32) -> &'static str {
    match e {
        data_type::FLOAT => "f32",
        data_type::FLOAT16 => "f16",
        data_type::BFLOAT16 => "bf16",
        data_type::INT32 => "i32",
        data_type::INT64 => "i64",
        data_type::BOOL => "bool",
        _ => "t",
    }
}

fn elem_dtype(e: i32) -> DType {
    match e {
        data_type::FLOAT16 => DType::F16,
        data_type::BFLOAT16 => DType::Bf16,
        data_type::INT32 => DType::I32,
        data_type::INT64 => DType::I64,
        data_type::BOOL => DType::Bool,
        _ => DType::F32,
    }
}

/// How an exported mpc value is available.
enum Repr {
    /// An ONNX value (graph input or node output) in its storage type,
    /// under the value's own name (`vname`).
    Act,
    /// A constant: an initializer made on first use, in whatever element
    /// type a reader asks for.
    Init(InitVal),
    /// A param or state whose init is one value everywhere (constant, zeros,
    /// ones): a ConstantOfShape node on first use, so that a model whose
    /// weights are fills (the light models) is neither materialised nor
    /// written out element by element.
    Fill { value: f64, ty: TensorType },
}

/// A constant's values: `raw` converted to `round` (when given), the way a
/// chain of casts would convert them. Converting lazily lets the one
/// conversion an initializer needs run in the batch at the end, straight
/// from the model's bytes.
#[derive(Clone, Debug)]
struct InitVal {
    raw: RawTensor,
    round: Option<DType>,
}

impl InitVal {
    fn of(t: Tensor) -> InitVal {
        InitVal { raw: RawTensor::from_tensor(t), round: None }
    }

    /// The values, as a tensor of their own dtype (a conversion, done now).
    fn settled(&self) -> Result<RawTensor, ExportError> {
        Ok(match self.round {
            Some(r) => self.raw.cast(r)?,
            None => self.raw.clone(),
        })
    }

    /// The values after `Cast(to)`.
    fn cast(&self, to: DType) -> Result<InitVal, ExportError> {
        let raw = match self.round {
            Some(r) if r != self.raw.dtype => self.settled()?,
            _ => self.raw.clone(),
        };
        Ok(InitVal { raw, round: Some(to) })
    }
}

/// Fills smaller than this are plain initializers.
const FILL_NODE_MIN: u64 = 4096;

/// The one value of a fill init of at least [`FILL_NODE_MIN`] elements.
fn fill_value(op: &Op) -> Option<f64> {
    match op {
        Op::Param { init, ty } | Op::State { init, ty } if ty.shape.numel().is_some_and(|n| n >= FILL_NODE_MIN) => {
            match init {
                Init::Zeros => Some(0.0),
                Init::Ones => Some(1.0),
                Init::Constant { value } => Some(*value),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The node being written and what most of its ops read: its inputs, its
/// first output and that output's type.
struct At<'g> {
    n: NodeId,
    node: crate::ir::graph::Node<'g>,
    ins: crate::ir::graph::Inputs,
    v0: ValueId,
    d: DType,
}

struct Exporter<'a> {
    g: &'a Graph,
    mode: Bf16Mode,
    /// The params' and state's values (fills aside).
    state: DenseMap<NodeId, Cow<'a, RawTensor>>,
    /// Initializers whose data the batch conversion at the end makes:
    /// (index in `inits`, f32 source bytes, conversion).
    pending: Vec<(usize, Bytes, Rounding)>,
    /// Conversions started before the export (taken in `finish`).
    ahead: Option<Ahead>,
    /// Values that some exported node reads or that are outputs.
    needed: DenseSet<ValueId>,
    /// Hashes of the names `fresh` gave: every name but the graph's own
    /// value names, which are unique already and which `fresh` avoids by
    /// asking the graph. Two names with one hash only make the second take
    /// a suffix, still unique, still deterministic.
    taken: FxHashSet<u64>,
    vname: DenseMap<ValueId, String>,
    repr: DenseMap<ValueId, Repr>,
    /// A value in another element type: a Cast output or a converted
    /// initializer, by (value, element type, dims where not the value's own).
    converted: FxHashMap<(ValueId, i32, Option<Vec<u64>>), String>,
    /// Bias `add` nodes folded into the Conv before them.
    fused: DenseSet<NodeId>,
    /// Shared scalar and mask initializers.
    consts: FxHashMap<String, String>,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    /// Type of every node output, in order: (node in `nodes`, output, element
    /// type, dims); the name is the node's, not a third copy.
    types: Vec<(u32, u32, i32, Vec<u64>)>,
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attr_type::INT), i: Some(i), ..Default::default() }
}

fn attr_ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attr_type::INTS), ints, ..Default::default() }
}

fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attr_type::FLOAT), f: Some(f), ..Default::default() }
}

fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(attr_type::TENSOR), t: Some(t), ..Default::default() }
}

/// A tensor's values as an initializer of element type `elem` (little-endian
/// `raw_data`). Float data converts exactly to a wider type and rounds
/// (nearest even) to a narrower one.
fn tensor_proto(name: &str, t: &Tensor, elem: i32, dims: &[u64]) -> TensorProto {
    let data = t.data().cast(elem_dtype(elem));
    let mut raw = Vec::with_capacity(data.len() * elem_dtype(elem).size_bytes());
    match &data {
        crate::exec::Data::F32(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        crate::exec::Data::F16(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        crate::exec::Data::Bf16(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        crate::exec::Data::I32(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        crate::exec::Data::I64(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        crate::exec::Data::Bool(v) => raw.extend(v.iter().map(|&b| u8::from(b))),
    }
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(elem),
        name: Some(name.into()),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

/// Whether a name is printable ASCII, which [`sanitize`] keeps as it is.
fn is_plain(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic())
}

/// A name with whitespace and control characters replaced by `_`.
fn sanitize(name: &str) -> String {
    // Almost every name is printable ASCII: copied as it is.
    if is_plain(name) {
        return name.to_string();
    }
    name.chars().map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c }).collect()
}

fn dims_of(ty: &TensorType) -> Vec<u64> {
    ty.shape.0.clone()
}

impl<'a> Exporter<'a> {
    /// An exporter for `nodes` nodes: the tables are sized for them once,
    /// not grown (rehashing was a tenth of a small model's export).
    fn new(
        g: &'a Graph,
        mode: Bf16Mode,
        state: DenseMap<NodeId, Cow<'a, RawTensor>>,
        needed: DenseSet<ValueId>,
        nodes: usize,
    ) -> Exporter<'a> {
        // About one initializer per param (growing the vector was 1 % of a
        // 10^5-node lowering's samples).
        let params = state.len();
        Exporter {
            g,
            mode,
            pending: Vec::with_capacity(params),
            state,
            ahead: None,
            needed,
            taken: FxHashSet::default(),
            vname: DenseMap::new(g.index_bound(), nodes),
            repr: DenseMap::new(g.index_bound(), nodes),
            converted: FxHashMap::default(),
            fused: DenseSet::new(g.index_bound()),
            consts: FxHashMap::default(),
            nodes: Vec::with_capacity(nodes),
            inits: Vec::with_capacity(params),
            inputs: Vec::new(),
            types: Vec::with_capacity(nodes),
        }
    }

    /// An unused name from `base`: `base`, else `base.1`, `base.2`, ...;
    /// never a name of the graph's (the exported values keep theirs).
    fn fresh(&mut self, base: &str) -> String {
        let base = sanitize(base);
        let hash = |n: &str| crate::ir::graph::name_hash(n);
        let free = |x: &Self, n: &str| !x.taken.contains(&hash(n)) && x.g.node_named(n).is_none();
        let name = if free(self, &base) {
            base
        } else {
            (1..).map(|i| format!("{base}.{i}")).find(|n| free(self, n)).expect("an unused name exists")
        };
        self.taken.insert(hash(&name));
        name
    }

    /// Gives an mpc value its ONNX name: its own where ONNX takes it as it
    /// is (unique among the graph's names, which `fresh` avoids), with no
    /// table to probe; one from `fresh` otherwise. Putting each of a
    /// 10^6-node graph's names in `taken` was a third of its export.
    fn reserve(&mut self, v: ValueId) {
        let own = self.g.value_name(v);
        let name = if is_plain(own) { own.to_string() } else { self.fresh(own) };
        self.vname.insert(v, name);
    }

    fn name_of(&self, v: ValueId) -> String {
        self.vname[&v].clone()
    }

    /// The element type a value of dtype `d` is stored in.
    fn store(&self, d: DType) -> i32 {
        match (d, self.mode) {
            (DType::Bf16, Bf16Mode::Emulated) => data_type::FLOAT,
            _ => elem_type(d),
        }
    }

    /// The element type an op computes in for output dtype `d`: its storage
    /// type, except FLOAT for a bf16 op that opset 17 has no bf16 form of.
    fn compute(&self, d: DType, bf16_ok: bool) -> i32 {
        if d == DType::Bf16 && !bf16_ok {
            data_type::FLOAT
        } else {
            self.store(d)
        }
    }

    fn ty(&self, v: ValueId) -> &'a TensorType {
        self.g.ty(v)
    }

    /// Appends a node; `outputs` are (name, element type, dims).
    fn push(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        outputs: Vec<(String, i32, Vec<u64>)>,
        attrs: Vec<AttributeProto>,
    ) {
        let name = outputs.iter().map(|o| o.0.as_str()).find(|n| !n.is_empty()).unwrap_or(op).to_string();
        let at = self.nodes.len() as u32;
        let mut output = Vec::with_capacity(outputs.len());
        for (k, (o, elem, dims)) in outputs.into_iter().enumerate() {
            if !o.is_empty() {
                self.types.push((at, k as u32, elem, dims));
            }
            output.push(o);
        }
        self.nodes.push(NodeProto {
            input: inputs,
            output,
            name: Some(name),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// A fresh temporary: one node output.
    fn tmp(
        &mut self,
        base: &str,
        op: &str,
        inputs: Vec<String>,
        elem: i32,
        dims: &[u64],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let name = self.fresh(base);
        self.push(op, inputs, vec![(name.clone(), elem, dims.to_vec())], attrs);
        name
    }

    /// A shared initializer, made once per key.
    fn constant(&mut self, key: String, make: impl FnOnce(String) -> TensorProto) -> String {
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.fresh(&key);
        self.inits.push(make(name.clone()));
        self.consts.insert(key, name.clone());
        name
    }

    fn node(&mut self, n: NodeId) -> Result<(), ExportError> {
        if self.fused.contains(&n) {
            return Ok(());
        }
        let node = self.g.node(n);
        let v0 = ValueId { node: n, slot: 0 };
        let at = At { n, node, ins: self.g.inputs(n), v0, d: self.ty(v0).dtype };
        // One exhaustive dispatch; each family's file writes its ops.
        match node.op() {
            Op::Input { .. }
            | Op::Param { .. }
            | Op::State { .. }
            | Op::Constant { .. }
            | Op::Cast { .. }
            | Op::Identity
            | Op::Dropout { .. }
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Relu
            | Op::Tanh
            | Op::Sigmoid
            | Op::Exp
            | Op::Log
            | Op::Erf
            | Op::Sqrt
            | Op::Scale { .. }
            | Op::Gelu => self.export_values(&at)?,
            Op::Matmul { .. } | Op::Conv2d(..) | Op::MaxPool2d(..) | Op::AvgPool2d { .. } => self.export_linalg(&at)?,
            Op::LayerNorm { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Lrn { .. }
            | Op::FrozenBatchNorm { .. }
            | Op::BatchNorm { .. } => self.export_nn(&at)?,
            Op::Embedding
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::ReduceSum { .. }
            | Op::ReduceMean { .. }
            | Op::SumTo { .. }
            | Op::BroadcastTo { .. } => self.export_layout(&at)?,
            // No ONNX form (the table's `Onnx::No`): `supported` refused them before.
            Op::CrossEntropy
            | Op::Mse
            | Op::Seed
            | Op::ReluGrad
            | Op::GeluGrad
            | Op::ErfGrad
            | Op::TanhGrad
            | Op::SigmoidGrad
            | Op::SoftmaxGrad { .. }
            | Op::LogSoftmaxGrad { .. }
            | Op::CrossEntropyGrad
            | Op::MseGrad
            | Op::EmbeddingGrad { .. }
            | Op::LayerNormGrad
            | Op::DropoutGrad { .. }
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight { .. }
            | Op::BatchNormGrad { .. }
            | Op::FrozenBatchNormGrad { .. }
            | Op::LrnGrad { .. }
            | Op::MaxPool2dGrad(_)
            | Op::AvgPool2dGrad { .. }
            | Op::Unscale
            | Op::FoundInf
            | Op::ScaleUpdate { .. }
            | Op::Select
            | Op::GlobalNorm
            | Op::ClipCoef { .. }
            | Op::LrSchedule { .. }
            | Op::Sgd { .. }
            | Op::SgdMomentum { .. }
            | Op::Adam { .. } => {
                return Err(ExportError::Unsupported(vec![(node.name().to_string(), node.op().name())]));
            }
        }
        Ok(())
    }

    fn finish(mut self, outputs: &[ValueId]) -> Result<ModelProto, ExportError> {
        let mut graph_outputs = Vec::new();
        let mut out_names = FxHashSet::default();
        for &v in outputs {
            let ty = self.ty(v);
            let store = self.store(ty.dtype);
            let mut name = self.name_of(v);
            if let Some(Repr::Fill { value, ty }) = self.repr.get(&v) {
                let t = Tensor::full(ty, *value)?;
                self.repr.insert(v, Repr::Init(InitVal::of(t)));
            }
            if let Some(Repr::Init(t)) = self.repr.get(&v) {
                // A graph output must be a node's: copy the constant.
                let t = t.clone();
                let src = match self.converted.get(&(v, store, None)) {
                    Some(existing) => {
                        let src = existing.clone();
                        name = self.fresh(&format!("{name}.out"));
                        src
                    }
                    None => {
                        let src = self.fresh(&format!("{name}.value"));
                        self.push_init(&src, &t, store, &dims_of(ty))?;
                        src
                    }
                };
                self.push("Identity", vec![src], vec![(name.clone(), store, dims_of(ty))], vec![]);
            }
            graph_outputs.push(ValueInfoProto::tensor(&name, store, &dims_of(ty)));
            out_names.insert(name);
        }
        let value_infos = std::mem::take(&mut self.types)
            .into_iter()
            .map(|(at, k, e, d)| (&self.nodes[at as usize].output[k as usize], e, d))
            .filter(|(n, _, _)| !out_names.contains(n.as_str()))
            .map(|(n, e, d)| ValueInfoProto::tensor(n, e, &d))
            .collect();
        // Last, so that conversions started ahead had the graph work to overlap.
        let done = self.ahead.take().map(Ahead::finish).unwrap_or_default();
        let (mut jobs, mut slots) = (Vec::new(), Vec::new());
        for (k, b, r) in &self.pending {
            match done.get(&ahead::key(b, *r)) {
                Some(data) => self.inits[*k].raw_data = Some(data.clone()),
                None => {
                    jobs.push((b.clone(), *r));
                    slots.push(*k);
                }
            }
        }
        for (k, data) in slots.into_iter().zip(raw::convert(&jobs)) {
            self.inits[k].raw_data = Some(data);
        }
        let graph = GraphProto {
            node: self.nodes,
            name: Some(if self.g.name.is_empty() { "mpc".into() } else { self.g.name.clone() }),
            initializer: self.inits,
            input: self.inputs,
            output: graph_outputs,
            value_info: value_infos,
            doc_string: None,
        };
        Ok(ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
            producer_name: Some("mpc".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            graph: Some(graph),
            ..Default::default()
        })
    }
}

/// ONNX `pads`: `[top, left, bottom, right]`.
fn pads(begin: &[u64; 2], end: &[u64; 2]) -> Vec<i64> {
    vec![begin[0] as i64, begin[1] as i64, end[0] as i64, end[1] as i64]
}

fn window_attrs(w: &Window) -> Vec<AttributeProto> {
    vec![
        attr_ints("kernel_shape", w.kernel.iter().map(|&k| k as i64).collect()),
        attr_ints("strides", w.stride.iter().map(|&s| s as i64).collect()),
        attr_ints("pads", pads(&w.padding, &w.padding_end)),
    ]
}
