//! Reading a graph: JSON text -> [`RawGraph`] -> typed [`Graph`].
//!
//! [`parse_str`] first reads a valid file in one streaming pass straight
//! into the graph ([`fast`]); every other file takes the two steps,
//! [`parse_raw`] and [`from_raw`], which report the problems.

use std::collections::BTreeMap;

use crate::diag::{pointer_token, Problem};
use crate::format::attrs::op_from_raw;
use crate::format::{Optimizer, RawGraph, RawNode, RawState, RawTensor, FORMAT_VERSION};
use crate::ir::graph::{default_output_names, Graph, GraphError, NodeId, Origin, ValueId};
use crate::ir::infer;
use crate::ir::op::{Init, Op, Role};
use crate::ir::types::{Shape, TensorType};
use crate::ir::verify::cycle_problem;

/// Why a graph could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The text is not JSON, or not shaped like the format.
    #[error("{line}:{column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    /// The JSON is well formed but describes an invalid graph.
    #[error("{} problem(s), the first: {}", .0.len(), .0[0])]
    Invalid(Vec<Problem>),
}

/// Parses and types a graph from JSON text.
///
/// A valid file is read in one streaming pass straight into the graph
/// ([`fast`]); anything that pass does not accept (a syntax or format error,
/// an invalid graph, sections out of their usual order) is read again by
/// [`parse_raw`] and [`from_raw`], which report every problem. Both give the
/// same graph for every file the streaming pass accepts.
pub fn parse_str(text: &str) -> Result<Graph, ParseError> {
    if let Some(g) = fast::parse(text) {
        return Ok(g);
    }
    let raw = parse_raw(text)?;
    from_raw(&raw).map_err(ParseError::Invalid)
}

/// Parses the JSON text into the file's serde types.
pub fn parse_raw(text: &str) -> Result<RawGraph, ParseError> {
    // Tracking the path costs as much as the parse itself: only pay for it
    // when there is an error to explain.
    if let Ok(raw) = serde_json::from_str::<RawGraph>(text) {
        return Ok(raw);
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawGraph = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_json appends " at line L column C"; the caller prints the position itself.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        message = suggest_variant(&message);
        let path = path.trim_end_matches(".?");
        if path != "." && !path.is_empty() {
            message = format!("{message} (in `{path}`)");
        }
        ParseError::Syntax { line: inner.line(), column: inner.column(), message }
    })?;
    Ok(raw)
}

/// Adds "did you mean" to serde's unknown-variant messages.
fn suggest_variant(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown variant `") else {
        return message.to_string();
    };
    let Some((bad, expected)) = rest.split_once("`, expected one of ") else {
        return message.to_string();
    };
    let candidates: Vec<&str> = expected.split(", ").map(|v| v.trim_matches('`')).collect();
    match crate::diag::closest(bad, &candidates) {
        Some(v) => format!("unknown variant `{bad}`, did you mean `{v}`? (expected one of {expected})"),
        None => message.to_string(),
    }
}

/// A JSON pointer to a node, formatted only when an error needs it.
#[derive(Copy, Clone)]
struct Ptr(&'static str, usize);

impl std::fmt::Display for Ptr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}/{}", self.0, self.1)
    }
}

struct Builder {
    g: Graph,
    problems: Vec<Problem>,
    /// Names whose declaration failed: references to them are not reported again.
    failed: rustc_hash::FxHashSet<String>,
}

impl Builder {
    fn problem(&mut self, node: Option<&str>, pointer: String, message: impl Into<String>) {
        self.problems.push(Problem::new(node, Some(pointer), message));
    }

    fn shape(&mut self, name: &str, ptr: Ptr, dims: &[i64]) -> Option<Shape> {
        let mut out = Vec::with_capacity(dims.len());
        for (i, &d) in dims.iter().enumerate() {
            if d < 1 {
                self.problem(
                    Some(name),
                    format!("{ptr}/shape/{i}"),
                    format!("dimension {i} is {d}; every dimension must be at least 1"),
                );
                return None;
            }
            out.push(d as u64);
        }
        let s = Shape(out);
        if let Err(m) = s.validate() {
            self.problem(Some(name), format!("{ptr}/shape"), m);
            return None;
        }
        Some(s)
    }

    /// Adds a node; `outs: None` gives it one output named after it.
    fn add(
        &mut self,
        name: &str,
        ptr: Ptr,
        op: Op,
        role: Role,
        outs: Option<Vec<String>>,
        origin: Origin,
    ) -> Option<NodeId> {
        let added = match outs {
            None => self.g.add_single(name.into(), op, role, Some(origin)),
            Some(outs) => self.g.add_untyped(name.to_string(), op, role, outs, Some(origin)),
        };
        match added {
            Ok(id) => Some(id),
            Err(GraphError::DuplicateName(n)) => {
                let earlier = self
                    .g
                    .node_named(&n)
                    .and_then(|id| self.g.origin(id))
                    .map(|o| format!(" (first defined at {})", o.pointer()))
                    .unwrap_or_default();
                self.problem(Some(name), format!("{ptr}/name"), format!("the name `{n}` is already defined{earlier}"));
                None
            }
            Err(e) => {
                self.problem(Some(name), ptr.to_string(), e.to_string());
                None
            }
        }
    }

    /// Declares a graph input.
    fn input(&mut self, index: usize, t: &RawTensor) -> Option<NodeId> {
        let op = self.input_op(index, t)?;
        self.add(&t.name, Ptr("inputs", index), op, Role::Forward, None, Origin::new("inputs", index as u32))
    }

    /// Checks a graph input and builds its op.
    fn input_op(&mut self, index: usize, t: &RawTensor) -> Option<Op> {
        let ptr = Ptr("inputs", index);
        if t.name.is_empty() {
            self.problem(None, format!("{ptr}/name"), "a name must not be empty");
            return None;
        }
        let shape = self.shape(&t.name, ptr, &t.shape)?;
        Some(Op::Input { ty: TensorType { dtype: t.dtype, shape } })
    }

    fn declare(&mut self, section: &'static str, index: usize, s: &RawState) -> Option<NodeId> {
        let op = self.declare_op(section, index, s)?;
        let origin = Origin::new(section, index as u32);
        self.add(&s.name, Ptr(section, index), op, Role::Forward, None, origin)
    }

    /// Checks a param or state declaration and builds its op.
    fn declare_op(&mut self, section: &'static str, index: usize, s: &RawState) -> Option<Op> {
        let ptr = Ptr(section, index);
        if s.name.is_empty() {
            self.problem(None, format!("{ptr}/name"), "a name must not be empty");
            return None;
        }
        let shape = self.shape(&s.name, ptr, &s.shape)?;
        let ty = TensorType { dtype: s.dtype, shape };
        let op = if section == "params" {
            if !s.dtype.is_float() {
                self.problem(
                    Some(&s.name),
                    format!("{ptr}/dtype"),
                    format!("a parameter must be a float tensor, found {}", s.dtype),
                );
                return None;
            }
            let Some(init) = s.init.clone() else {
                self.problem(
                    Some(&s.name),
                    ptr.to_string(),
                    "a parameter needs an `init` (e.g. {\"kind\": \"normal\", \"std\": 0.02})",
                );
                return None;
            };
            if let Some(m) = init_problem(&init) {
                self.problem(Some(&s.name), format!("{ptr}/init"), m);
                return None;
            }
            Op::Param { ty, init }
        } else {
            let init = s.init.clone().unwrap_or(Init::Zeros);
            if let Some(m) = init_problem(&init) {
                self.problem(Some(&s.name), format!("{ptr}/init"), m);
                return None;
            }
            Op::State { ty, init }
        };
        Some(op)
    }

    /// Checks node `name` and builds its op: (op, role, output names) where
    /// `None` names mean the defaults (`name`, `name:1`, ...).
    fn node_parts(
        &mut self,
        section: &'static str,
        index: usize,
        name: &str,
        n: &RawNode,
        n_inputs: usize,
    ) -> Option<(Op, Role, Option<Vec<String>>)> {
        let ptr = Ptr(section, index);
        let role = match (section, n.role) {
            ("update", None) => Role::Optimizer,
            ("update", Some(r @ (Role::Optimizer | Role::Scaler))) => r,
            ("update", Some(r)) => {
                self.problem(
                    Some(name),
                    format!("{ptr}/role"),
                    format!("an update node's role is `optimizer` or `scaler`, found `{}`", r.name()),
                );
                return None;
            }
            (_, Some(_)) => {
                self.problem(
                    Some(name),
                    format!("{ptr}/role"),
                    format!(
                        "`role` is only allowed in the `update` section; nodes in `{section}` have the role {section}"
                    ),
                );
                return None;
            }
            ("forward", None) => Role::Forward,
            (_, None) => Role::Backward,
        };
        let op = match op_from_raw(n) {
            Ok(op) => op,
            Err((field, m)) => {
                self.problem(Some(name), format!("{ptr}/{field}"), m);
                return None;
            }
        };
        let want_out = infer::num_outputs(&op);
        if !infer::arity_ok(&op, n_inputs) {
            let names = infer::input_names(&op).join(", ");
            self.problem(
                Some(name),
                format!("{ptr}/inputs"),
                format!("{} takes {} ({names}), found {}", op.name(), infer::arity_text(&op), n_inputs),
            );
            return None;
        }
        let outs = match &n.outputs {
            None if want_out == 1 => None,
            None => Some(default_output_names(name, want_out)),
            Some(o) if o.len() == want_out => Some(o.clone()),
            Some(o) => {
                self.problem(
                    Some(name),
                    format!("{ptr}/outputs"),
                    format!("{} has {want_out} output(s), found {} names", op.name(), o.len()),
                );
                return None;
            }
        };
        if let Some(i) = outs.iter().flatten().position(|o| o.is_empty()) {
            self.problem(Some(name), format!("{ptr}/outputs/{i}"), "an output name must not be empty");
            return None;
        }
        Some((op, role, outs))
    }

    /// Adds a node (its inputs are wired later).
    fn node(&mut self, section: &'static str, index: usize, n: &RawNode) -> Option<NodeId> {
        let (op, role, outs) = self.node_parts(section, index, &n.name, n, n.inputs.len())?;
        let id = self.add(&n.name, Ptr(section, index), op, role, outs, Origin::new(section, index as u32))?;
        self.g.set_precision(id, n.precision);
        Some(id)
    }

    fn resolve(&mut self, node: Option<&str>, ptr: impl FnOnce() -> String, name: &str) -> Option<ValueId> {
        let v = self.g.value(name);
        if v.is_none() && !self.failed.contains(name) {
            let hint = match self.g.node_named(name) {
                Some(id) => format!(
                    "; `{name}` is a node with outputs {}",
                    self.g.node(id).output_names().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
                ),
                None => String::new(),
            };
            self.problem(node, ptr(), format!("no value is named `{name}`{hint}"));
        }
        v
    }
}

fn init_problem(init: &Init) -> Option<String> {
    let bad = |v: f64| !v.is_finite();
    match *init {
        Init::Constant { value } if bad(value) => Some("the value must be finite".into()),
        Init::Normal { mean, std } if bad(mean) || bad(std) || std < 0.0 => {
            Some(format!("expected a finite mean and std ≥ 0, found mean {mean}, std {std}"))
        }
        Init::Uniform { low, high } if bad(low) || bad(high) || low > high => {
            Some(format!("expected finite low ≤ high, found {low}, {high}"))
        }
        Init::XavierUniform { gain } | Init::KaimingNormal { gain } if bad(gain) || gain < 0.0 => {
            Some(format!("expected a finite gain ≥ 0, found {gain}"))
        }
        _ => None,
    }
}

/// Builds a typed graph from the file's serde types, reporting every problem found.
pub fn from_raw(raw: &RawGraph) -> Result<Graph, Vec<Problem>> {
    let mut b = Builder { g: Graph::new(raw.name.clone()), problems: Vec::new(), failed: Default::default() };
    if raw.format != FORMAT_VERSION {
        b.problem(None, "/format".into(), format!("expected \"{FORMAT_VERSION}\", found \"{}\"", raw.format));
        return Err(b.problems);
    }
    let count = raw.inputs.len()
        + raw.params.len()
        + raw.state.len()
        + raw.forward.len()
        + raw.backward.as_ref().map_or(0, Vec::len)
        + raw.update.len();
    b.g.reserve(count, 2 * count);
    for (i, t) in raw.inputs.iter().enumerate() {
        if b.input(i, t).is_none() && !t.name.is_empty() {
            b.failed.insert(t.name.clone());
        }
    }
    for (section, list) in [("params", &raw.params), ("state", &raw.state)] {
        for (i, p) in list.iter().enumerate() {
            if b.declare(section, i, p).is_none() {
                b.failed.insert(p.name.clone());
            }
        }
    }
    let backward = raw.backward.as_deref().unwrap_or(&[]);
    let sections: [(&'static str, &[Box<RawNode>]); 3] =
        [("forward", &raw.forward), ("backward", backward), ("update", &raw.update)];
    let mut pending = Vec::new();
    for (section, nodes) in sections {
        for (i, n) in nodes.iter().enumerate() {
            if n.name.is_empty() {
                b.problem(None, format!("/{section}/{i}/name"), "a node name must not be empty");
                continue;
            }
            match b.node(section, i, n) {
                Some(id) => pending.push((id, section, i, n)),
                None => {
                    b.failed.insert(n.name.clone());
                    b.failed.extend(n.outputs.iter().flatten().cloned());
                }
            }
        }
    }
    for (id, section, i, n) in pending {
        for (port, input) in n.inputs.iter().enumerate() {
            if let Some(v) = b.resolve(Some(&n.name), || format!("/{section}/{i}/inputs/{port}"), input) {
                b.g.connect(v, id, port as u32);
            }
        }
    }
    finish(
        b,
        Tail {
            loss: &raw.loss,
            backward: raw.backward.is_some(),
            has_params: !raw.params.is_empty(),
            gradients: &raw.gradients,
            updates: &raw.updates,
            outputs: &raw.outputs,
            optimizer: raw.optimizer.as_ref(),
            weights: raw.weights.as_deref(),
        },
    )
}

/// The top-level fields that are resolved after every node is in.
struct Tail<'a> {
    loss: &'a str,
    backward: bool,
    has_params: bool,
    gradients: &'a BTreeMap<String, String>,
    updates: &'a BTreeMap<String, String>,
    outputs: &'a [String],
    optimizer: Option<&'a Optimizer>,
    weights: Option<&'a str>,
}

/// Resolves the loss, gradients, updates and outputs, then types the graph.
fn finish(mut b: Builder, raw: Tail<'_>) -> Result<Graph, Vec<Problem>> {
    b.g.loss = b.resolve(None, || "/loss".into(), raw.loss);
    if !raw.backward && !raw.gradients.is_empty() {
        b.problem(None, "/gradients".into(), "`gradients` needs an explicit `backward` section");
    }
    if raw.backward && raw.gradients.is_empty() && raw.has_params {
        b.problem(
            None,
            "/backward".into(),
            "an explicit `backward` section needs `gradients`: parameter name -> gradient value, for every parameter",
        );
    }
    for (param, grad) in raw.gradients {
        let ptr = format!("/gradients/{}", pointer_token(param));
        let p = b.resolve(None, || ptr.clone(), param);
        let v = b.resolve(None, || ptr.clone(), grad);
        if let (Some(p), Some(v)) = (p, v) {
            b.g.gradients.push((p.node, v));
        }
    }
    for (state, value) in raw.updates {
        let ptr = format!("/updates/{}", pointer_token(state));
        let s = b.resolve(None, || ptr.clone(), state);
        let v = b.resolve(None, || ptr.clone(), value);
        if let (Some(s), Some(v)) = (s, v) {
            b.g.updates.push((s.node, v));
        }
    }
    for (i, o) in raw.outputs.iter().enumerate() {
        if let Some(v) = b.resolve(None, || format!("/outputs/{i}"), o) {
            b.g.outputs.push(v);
        }
    }
    if let Some(opt) = raw.optimizer {
        for (field, m) in opt.problems() {
            b.problem(None, format!("/optimizer/{field}"), m);
        }
        b.g.optimizer = Some(opt.clone());
    }
    b.g.weights = raw.weights.map(str::to_string);
    if !b.problems.is_empty() {
        return Err(b.problems);
    }
    // Declaration order is the stable order for gradients and updates.
    b.g.gradients.sort_by_key(|(n, _)| *n);
    b.g.updates.sort_by_key(|(n, _)| *n);
    let order = match b.g.topo_order() {
        Ok(o) => o,
        Err(stuck) => return Err(vec![cycle_problem(&b.g, &stuck)]),
    };
    let typing = b.g.infer_types(&order);
    if !typing.is_empty() {
        return Err(typing
            .into_iter()
            .map(|(id, m)| {
                let n = b.g.node(id);
                Problem::new(Some(n.name()), b.g.origin(id).map(|o| o.pointer()), m)
            })
            .collect());
    }
    Ok(b.g)
}

/// The keys of a graph file's top-level object, in file order.
pub const TOP_LEVEL_KEYS: [&str; 14] = [
    "format",
    "name",
    "inputs",
    "params",
    "state",
    "forward",
    "loss",
    "backward",
    "gradients",
    "update",
    "updates",
    "outputs",
    "optimizer",
    "weights",
];

#[doc(hidden)]
pub mod fast;
