//! autocast: gives every op a compute precision and inserts the casts.
//!
//! The op classes come from a [`Table`] (overridable by file and per node);
//! [`paint`] decides which nodes compute in the low type. Then, in
//! topological order, every float input of a node that is not already in the
//! node's compute type gets a cast, one per (value, type) shared by all
//! consumers. A cast back to the type a value was widened from returns the
//! original value (an exact round trip); no other chain is folded.

use rustc_hash::FxHashMap;

use crate::graph::{Graph, NodeId, ValueId};
use crate::infer;
use crate::op::{Op, OpKind, Precision};
use crate::types::DType;

use super::cleanup::exact_via;
use super::paint::{paint, Kind, PaintInput, Pin, Rule};
use super::table::{is_unpainted, Class, Table};
use super::{Pass, PassError};

/// What autocast decided for one node.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    pub node: String,
    pub op: &'static str,
    /// The op's class in the table; `None` for unpainted ops (sources, casts) and unknown ops.
    pub class: Option<Class>,
    /// The compute type chosen (the dtype of the first output after the pass).
    pub dtype: String,
    pub rule: String,
}

/// Everything autocast decided, for `mpc explain`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub low: String,
    pub decisions: Vec<Decision>,
    /// Paintable float nodes computing in the low type / all paintable float nodes.
    pub low_nodes: usize,
    pub float_nodes: usize,
    pub casts_inserted: usize,
    /// Connected groups of FP32 nodes among paintable float nodes.
    pub fp32_islands: usize,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "Converted {}/{} nodes to {} using {} cast(s); {} FP32 island(s)",
            self.low_nodes, self.float_nodes, self.low, self.casts_inserted, self.fp32_islands
        )
    }
}

pub struct Autocast {
    pub table: Table,
    /// Unknown ops are an error instead of FP32 with a warning.
    pub strict: bool,
    /// Record a decision per node in the report (for `mpc explain`).
    pub explain: bool,
    /// Filled in by `run`.
    pub report: Report,
}

impl Autocast {
    pub fn new(table: Table, strict: bool) -> Autocast {
        Autocast { table, strict, explain: false, report: Report::default() }
    }
}

/// Largest finite value and smallest positive subnormal of a low type.
fn low_range(low: DType) -> (f64, f64) {
    match low {
        DType::F16 => (65504.0, 5.960_464_477_539_063e-8),
        _ => (3.389_531_389_251_535e38, 9.183_549_615_799_121e-41),
    }
}

/// Inputs whose type an op keeps whatever its compute type (statistics and
/// affine parameters of the norms, which stay FP32 next to low activations).
fn kept_ports(op: &Op) -> &'static [usize] {
    match op {
        Op::BatchNorm { .. } | Op::LayerNorm { .. } => &[1, 2],
        Op::FrozenBatchNorm { .. } => &[1, 2, 3, 4],
        Op::BatchNormGrad { .. } | Op::LayerNormGrad | Op::FrozenBatchNormGrad { .. } => &[2, 3, 4],
        // The seed takes the loss in whatever type it has; unscale is itself
        // the cast of a gradient to FP32.
        Op::Seed | Op::Unscale => &[0],
        _ => &[],
    }
}

fn has_float_output(g: &Graph, n: NodeId) -> bool {
    g.node(n).outputs.first().is_some_and(|o| o.ty.dtype.is_float())
}

impl Pass for Autocast {
    fn name(&self) -> &'static str {
        "autocast"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let fail = |message: String| PassError::Failed { pass: "autocast", message };
        let order = g.topo_order().map_err(|_| fail("the graph has a cycle".into()))?;
        let bound = order.iter().map(|n| n.index() + 1).max().unwrap_or(0);
        let low = self.table.low;
        let (max, min_sub) = low_range(low);

        // The painter's view: dense indices are node indices.
        let mut kinds = vec![Kind::Fixed; bound];
        let mut warnings = Vec::new();
        for &n in &order {
            let node = g.node(n);
            let k = node.op.kind();
            if is_unpainted(k) || !has_float_output(g, n) {
                continue;
            }
            let mut pin = node.precision.map(|p| match p {
                Precision::Low => Pin::Low,
                Precision::Fp32 => Pin::Fp32,
            });
            let class = self.table.class(k);
            if pin.is_none() && g.loss.is_some_and(|l| l.node == n) {
                pin = Some(Pin::Fp32);
            }
            if let Op::Constant { value, .. } = node.op {
                let a = value.abs();
                if pin.is_none() && (a > max || (a > 0.0 && a < min_sub)) {
                    warnings.push(format!(
                        "constant `{}` = {value} does not fit {low}: it stays f32, and so do the ops it feeds",
                        node.name
                    ));
                    pin = Some(Pin::Fp32);
                }
            }
            if class.is_none() {
                if self.strict {
                    return Err(fail(format!("node `{}`: op `{k}` has no precision class (--strict)", node.name)));
                }
                warnings.push(format!("node `{}`: op `{k}` has no precision class; it computes in f32", node.name));
            }
            kinds[n.index()] = Kind::Op { class, pin };
        }
        let mut fanin = vec![Vec::new(); bound];
        let mut fanout = vec![Vec::new(); bound];
        let mut all_inputs: Vec<crate::graph::Inputs> = vec![Default::default(); bound];
        for &n in &order {
            all_inputs[n.index()] = g.inputs(n);
            for &v in &all_inputs[n.index()] {
                if g.ty(v).dtype.is_float() {
                    fanin[n.index()].push(v.node.index() as u32);
                    fanout[v.node.index()].push(n.index() as u32);
                }
            }
        }
        let input = PaintInput { kinds, fanin, fanout, order: order.iter().map(|n| n.index() as u32).collect() };
        let mut painting = paint(&input, low == DType::Bf16);
        if let Some(l) = g.loss {
            if g.node(l.node).precision.is_none() && painting.rule[l.node.index()] == Rule::PinnedFp32 {
                painting.rule[l.node.index()] = Rule::Loss;
            }
        }
        // An FP32 constant read by a low op would overflow when cast: say so.
        for &n in &order {
            if painting.low[n.index()] {
                for &v in &all_inputs[n.index()] {
                    if matches!(input.kinds[v.node.index()], Kind::Op { pin: Some(Pin::Fp32), .. })
                        && matches!(g.node(v.node).op, Op::Constant { .. })
                    {
                        warnings.push(format!(
                            "node `{}` computes in {low} and reads the out-of-range constant `{}`",
                            g.node(n).name,
                            g.node(v.node).name
                        ));
                    }
                }
            }
        }

        // Apply: casts on the inputs, then re-type, in topological order.
        // At most one cast per float edge; usually far fewer.
        g.reserve(order.len() / 2, order.len() / 2);
        let mut cache: FxHashMap<(ValueId, DType), ValueId> = FxHashMap::default();
        let mut casts = 0usize;
        for &n in &order {
            let mut ins = std::mem::take(&mut all_inputs[n.index()]);
            if matches!(input.kinds[n.index()], Kind::Fixed) {
                // Types may still change upstream (a cast's input, an int op's float input).
                if !ins.is_empty() {
                    retype(g, n, &ins).map_err(fail)?;
                }
                continue;
            }
            let target = if painting.low[n.index()] { low } else { DType::F32 };
            let kept = kept_ports(&g.node(n).op);
            for (port, v) in ins.iter_mut().enumerate() {
                let have = g.ty(*v).dtype;
                if !have.is_float() || have == target || kept.contains(&port) {
                    continue;
                }
                let c = cast(g, &mut cache, *v, target, &mut casts).map_err(fail)?;
                g.set_input(n, port as u32, c);
                *v = c;
            }
            retype(g, n, &ins).map_err(fail)?;
        }
        // State updates keep their state's type; step outputs leave in FP32.
        for i in 0..g.updates.len() {
            let (s, v) = g.updates[i];
            let want = g.ty(ValueId { node: s, slot: 0 }).dtype;
            if g.ty(v).dtype != want {
                g.updates[i].1 = cast(g, &mut cache, v, want, &mut casts).map_err(fail)?;
            }
        }
        for i in 0..g.outputs.len() {
            let v = g.outputs[i];
            if g.ty(v).dtype.is_low() {
                g.outputs[i] = cast(g, &mut cache, v, DType::F32, &mut casts).map_err(fail)?;
            }
        }

        self.report = report(g, &order, &input, &painting, &self.table, self.explain, casts, warnings);
        Ok(casts > 0)
    }
}

/// The cast of `v` to `to`, shared: made once per (value, type). Casting a
/// widened value back to its original type returns the original.
fn cast(
    g: &mut Graph,
    cache: &mut FxHashMap<(ValueId, DType), ValueId>,
    v: ValueId,
    to: DType,
    count: &mut usize,
) -> Result<ValueId, String> {
    if g.ty(v).dtype == to {
        return Ok(v);
    }
    if let Some(&c) = cache.get(&(v, to)) {
        return Ok(c);
    }
    if let Op::Cast { .. } = g.node(v.node).op {
        let src = g.inputs(v.node)[0];
        let via = g.ty(v).dtype;
        if g.ty(src).dtype == to && exact_via(to, via) {
            return Ok(src);
        }
    }
    let base = format!("{}.{to}", g.value_name(v));
    let role = g.node(v.node).role;
    // Usually the plain name is free: try it before searching for a fresh one.
    let id = match g.add_node(base, Op::Cast { to }, role, &[v]) {
        Ok(id) => id,
        Err(crate::graph::GraphError::DuplicateName(base)) => {
            let name = g.fresh_name(&base);
            g.add_node(name, Op::Cast { to }, role, &[v]).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let c = ValueId { node: id, slot: 0 };
    cache.insert((v, to), c);
    *count += 1;
    Ok(c)
}

fn retype(g: &mut Graph, n: NodeId, ins: &[ValueId]) -> Result<(), String> {
    let tys = {
        let t: Vec<&crate::TensorType> = ins.iter().map(|&v| g.ty(v)).collect();
        infer::infer(&g.node(n).op, &t).map_err(|m| format!("node `{}`: {m}", g.node(n).name))?
    };
    for (o, t) in g.node_mut(n).outputs.iter_mut().zip(tys) {
        o.ty = t;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    g: &Graph,
    order: &[NodeId],
    input: &PaintInput,
    painting: &super::paint::Painting,
    table: &Table,
    explain: bool,
    casts_inserted: usize,
    warnings: Vec<String>,
) -> Report {
    let (rules, low) = (&painting.rule, &painting.low);
    let mut names = vec![""; if explain { input.kinds.len() } else { 0 }];
    for &n in order.iter().filter(|_| explain) {
        names[n.index()] = g.node(n).name.as_str();
    }
    let name_of = |i: u32| names.get(i as usize).copied().unwrap_or("?").to_string();
    let mut decisions = Vec::with_capacity(order.len());
    let (mut low_nodes, mut float_nodes) = (0, 0);
    for &n in order {
        let node = g.node(n);
        let painted = matches!(input.kinds[n.index()], Kind::Op { .. });
        if painted {
            float_nodes += 1;
            low_nodes += low[n.index()] as usize;
        }
        if !explain {
            continue;
        }
        let kind = node.op.kind();
        decisions.push(Decision {
            node: node.name.clone(),
            op: kind.name(),
            class: if kind == OpKind::Cast { None } else { table.class(kind) },
            dtype: node.outputs.first().map(|o| o.ty.dtype.to_string()).unwrap_or_default(),
            rule: if painted { rules[n.index()].describe(&name_of) } else { Rule::Fixed.describe(&name_of) },
        });
    }
    // FP32 islands: connected components of painted FP32 nodes over float edges.
    let mut seen = vec![false; input.kinds.len()];
    let mut islands = 0;
    let fp32 = |i: usize| matches!(input.kinds[i], Kind::Op { .. }) && !low[i];
    for &n in order {
        let i = n.index();
        if !fp32(i) || seen[i] {
            continue;
        }
        islands += 1;
        let mut stack = vec![i];
        seen[i] = true;
        while let Some(j) = stack.pop() {
            for &k in input.fanin[j].iter().chain(&input.fanout[j]) {
                let k = k as usize;
                if fp32(k) && !seen[k] {
                    seen[k] = true;
                    stack.push(k);
                }
            }
        }
    }
    Report {
        low: table.low.to_string(),
        decisions,
        low_nodes,
        float_nodes,
        casts_inserted,
        fp32_islands: islands,
        warnings,
    }
}
