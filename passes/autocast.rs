//! autocast: gives every op a compute precision and inserts the casts.
//!
//! The op classes come from a [`Table`] (overridable by file and per node);
//! [`paint`](super::paint) decides which nodes compute in the low type. Then, in
//! topological order, every float input of a node that is not already in the
//! node's compute type gets a cast, one per (value, type) shared by all
//! consumers. A cast back to the type a value was widened from returns the
//! original value (an exact round trip); no other chain is folded.

use compact_str::CompactString;
use rustc_hash::FxHashMap;

use crate::ir::graph::{name_hash, Graph, NodeId, ValueId};
use crate::ir::op::{Op, OpKind, Precision};
use crate::ir::types::DType;

use super::cleanup::exact_via;
use super::paint::{paint_with, Adjacency, Kind, Packed, Pin, Rule};
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
    /// A bias add of a low matmul or conv computes low with the op (see
    /// `bias_of`), for targets that fold it into the op. mpc's executors
    /// round every op's output, where this would add a rounding.
    pub fold_bias: bool,
    /// Filled in by `run`.
    pub report: Report,
}

impl Autocast {
    pub fn new(table: Table, strict: bool) -> Autocast {
        Autocast { table, strict, explain: false, fold_bias: false, report: Report::default() }
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
    g.output_types(n).next().is_some_and(|t| t.dtype.is_float())
}

impl Pass for Autocast {
    fn name(&self) -> &'static str {
        "autocast"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        // A lowered graph lowers again only to itself: a new autocast over
        // its casts would round twice (an f16 copy cast to f32, or to bf16)
        // where lowering the source would round once.
        let Some(mark) = super::lowered_mark(g) else { return self.paint_and_cast(g) };
        let dtype = |g: &Graph, n: NodeId| g.output_types(n).next().map(|t| t.dtype);
        let before: Vec<_> = g.node_ids().map(|n| (n, dtype(g, n))).collect();
        let changed = self.paint_and_cast(g)?;
        let moved = before.iter().find(|&&(n, dt)| g.contains(n) && dtype(g, n) != dt);
        let known: rustc_hash::FxHashSet<NodeId> = before.iter().map(|&(n, _)| n).collect();
        let what = match (moved, g.node_ids().find(|n| !known.contains(n))) {
            (Some(&(n, _)), _) => format!("node `{}` would compute in another type", g.node(n).name()),
            (None, Some(n)) => format!("it would gain casts, e.g. `{}`", g.node(n).name()),
            (None, None) => return Ok(changed),
        };
        Err(PassError::Failed {
            pass: "autocast",
            message: format!(
                "the graph was lowered already (it has optimizer node `{}`) and these options would change its \
                 precisions ({what}), rounding twice where one lowering rounds once; lower the unlowered graph \
                 with these options instead",
                g.node(mark).name()
            ),
        })
    }
}

impl Autocast {
    fn paint_and_cast(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let fail = |message: String| PassError::Failed { pass: "autocast", message };
        let order = g.topo_order().map_err(|_| fail("the graph has a cycle".into()))?;
        let bound = order.iter().map(|n| n.index() + 1).max().unwrap_or(0);
        let low = self.table.low;
        let (max, min_sub) = low_range(low);
        // The table as an array over op kinds.
        let mut classes = vec![None; OpKind::ALL.iter().map(|&k| k as usize + 1).max().unwrap_or(0)];
        for &k in OpKind::ALL {
            classes[k as usize] = self.table.class(k);
        }

        // The painter's view: dense indices are node indices, and the float
        // edges, producers per consumer in port order (`fanin`) and
        // consumers per producer in the same order (`fanout`).
        let mut kinds = vec![Kind::Fixed; bound];
        let mut warnings = Vec::new();
        let mut fanin = Packed { span: vec![(0, 0); bound], data: Vec::with_capacity(2 * order.len()) };
        let mut out_count = vec![0u32; bound];
        for (k, &n) in order.iter().enumerate() {
            prefetch_ahead(g, &order, k);
            let node = g.node(n);
            let start = fanin.data.len() as u32;
            for v in g.inputs(n) {
                if g.ty(v).dtype.is_float() {
                    fanin.data.push(v.node.index() as u32);
                    out_count[v.node.index()] += 1;
                }
            }
            fanin.span[n.index()] = (start, fanin.data.len() as u32 - start);
            let k = node.op().kind();
            if is_unpainted(k) || !has_float_output(g, n) {
                continue;
            }
            let mut pin = node.precision().map(|p| match p {
                Precision::Low => Pin::Low,
                Precision::Fp32 => Pin::Fp32,
            });
            let class = classes.get(k as usize).copied().flatten();
            if pin.is_none() && g.loss.is_some_and(|l| l.node == n) {
                pin = Some(Pin::Fp32);
            }
            if let Op::Constant { value, .. } = node.op() {
                let a = value.abs();
                if pin.is_none() && (a > max || (a > 0.0 && a < min_sub)) {
                    warnings.push(format!(
                        "constant `{}` = {value} does not fit {low}: it stays f32, and so do the ops it feeds",
                        node.name()
                    ));
                    pin = Some(Pin::Fp32);
                }
            }
            if class.is_none() {
                if self.strict {
                    return Err(fail(format!("node `{}`: op `{k}` has no precision class (--strict)", node.name())));
                }
                warnings.push(format!("node `{}`: op `{k}` has no precision class; it computes in f32", node.name()));
            }
            kinds[n.index()] = Kind::Op { class, pin };
        }
        let mut fanout = Packed { span: Vec::with_capacity(bound), data: vec![0; fanin.data.len()] };
        let mut at = 0u32;
        for &c in &out_count {
            fanout.span.push((at, 0));
            at += c;
        }
        drop(out_count);
        for &n in &order {
            for &p in fanin.of(n.index() as u32) {
                let (start, len) = &mut fanout.span[p as usize];
                fanout.data[(*start + *len) as usize] = n.index() as u32;
                *len += 1;
            }
        }
        let mut biases = Vec::new();
        if self.fold_bias {
            for &n in &order {
                if let Some(p) = bias_of(g, n, &kinds, &fanout) {
                    kinds[n.index()] = Kind::Op { class: Some(Class::Low), pin: None };
                    biases.push((n.index(), p));
                }
            }
        }
        let bf16 = low == DType::Bf16;
        // The order matters to the painter only for bf16; the rules, only to explain.
        let order32: Vec<u32> = if bf16 { order.iter().map(|n| n.index() as u32).collect() } else { Vec::new() };
        let mut painting = paint_with(&kinds, &fanin, &fanout, &order32, bf16, self.explain);
        drop(order32);
        for (n, p) in biases {
            if let Some(r) = painting.rule.get_mut(n) {
                *r = Rule::BiasOf(p);
            }
        }
        if let Some(l) = g.loss {
            if let Some(r) = painting.rule.get_mut(l.node.index()) {
                if g.node(l.node).precision().is_none() && *r == Rule::PinnedFp32 {
                    *r = Rule::Loss;
                }
            }
        }
        // Apply: casts on the inputs, then re-type, in topological order.
        // At most one cast per float edge; usually far fewer.
        let mut cache = CastCache::new(bound, low);
        let mut casts = 0usize;
        let mut named_back = Vec::new();
        let applied = apply(g, low, &order, &kinds, &painting, &mut cache, &mut casts, &mut warnings, &mut named_back);
        cache.register(g);
        applied.map_err(fail)?;
        name_outputs_back(g, &named_back).map_err(fail)?;

        let input = Painted { kinds: &kinds, fanin: &fanin, fanout: &fanout };
        self.report = report(g, &order, &input, &painting, &self.table, self.explain, casts, warnings);
        Ok(casts > 0)
    }
}

/// With `fold_bias`: the low matmul or conv whose bias `n` adds, if `n` is
/// such an add (the op's only reader, adding a param shaped as the ONNX
/// export folds it; the add has the table's infer class and no pin). It computes low with its op rather than with its neighbours, as
/// PyTorch's linear and conv take their bias: a target that folds it into
/// the op (ONNX Conv's B, Gemm's C, cuBLASLt's bias epilogue) adds it to
/// the FP32 accumulator before the output's one rounding. Painted by its
/// neighbours, a bias before FP32 work (a classifier before its softmax)
/// would be added in FP32 to the rounded product instead: one rounding
/// either way, but the folded form measured the smaller error in
/// onnxruntime (docs/ONNX.md).
fn bias_of(g: &Graph, n: NodeId, kinds: &[Kind], fanout: &Packed) -> Option<u32> {
    let infer = Kind::Op { class: Some(Class::Infer), pin: None };
    if g.node(n).op().kind() != OpKind::Add || kinds[n.index()] != infer {
        return None;
    }
    let &[a, b] = g.inputs(n).as_slice() else {
        return None;
    };
    let out = g.output_types(n).next()?;
    [(a, b), (b, a)].into_iter().find_map(|(x, bias)| {
        let p = x.node;
        let low = match kinds[p.index()] {
            Kind::Op { pin: Some(pin), .. } => pin == Pin::Low,
            Kind::Op { class, pin: None } => class == Some(Class::Low),
            Kind::Fixed => false,
        };
        // The bias as declared: a param, or (lowered before) a cast of one.
        let src = if g.is_cast(bias.node) { g.inputs(bias.node).first()?.node } else { bias.node };
        let source = g.node(src).op().kind() == OpKind::Param;
        let only_reader = x.slot == 0 && fanout.of(p.index() as u32) == [n.index() as u32];
        // Exactly what the ONNX export folds: Conv's B `[C, 1, 1]`, Gemm's C
        // `[N]` for a product of two matrices. Another shape would be added
        // low after the op's rounding: a second rounding.
        let (shape, b) = (&g.ty(x).shape.0, &g.ty(bias).shape.0[..]);
        let per_channel = match g.node(p).op().kind() {
            OpKind::Conv2d => shape.len() == 4 && b == [shape[1], 1, 1],
            OpKind::Matmul => {
                let matrices = g.inputs(p).iter().all(|&v| g.ty(v).shape.rank() == 2);
                matrices && shape.len() == 2 && b == [shape[1]]
            }
            _ => false,
        };
        let into = g.ty(x).shape == out.shape && g.ty(bias).dtype.is_float();
        (low && source && per_channel && only_reader && into).then_some(p.index() as u32)
    })
}

/// Starts loading the nodes a loop over `order` at `k` reads a few steps on.
#[inline]
fn prefetch_ahead(g: &Graph, order: &[NodeId], k: usize) {
    if let Some(&m) = order.get(k + 16) {
        g.prefetch_node(m);
    }
}

/// Puts the casts on the inputs and re-types, in topological order.
#[allow(clippy::too_many_arguments)]
fn apply(
    g: &mut Graph,
    low: DType,
    order: &[NodeId],
    kinds: &[Kind],
    painting: &super::paint::Painting,
    cache: &mut CastCache,
    casts: &mut usize,
    warnings: &mut Vec<String>,
    named_back: &mut Vec<(ValueId, ValueId)>,
) -> Result<(), String> {
    let target_of = |n: NodeId| match kinds[n.index()] {
        Kind::Fixed => None,
        Kind::Op { .. } => Some(if painting.low[n.index()] { low } else { DType::F32 }),
    };
    for (k, &n) in order.iter().enumerate() {
        prefetch_ahead(g, order, k);
        let mut ins = g.inputs(n);
        let Some(target) = target_of(n) else {
            // Types may still change upstream (a cast's input, an int op's float input).
            if !ins.is_empty() {
                g.retype(n, &ins)?;
            }
            continue;
        };
        if painting.low[n.index()] {
            // An FP32 constant read by a low op would overflow when cast: say so.
            for v in &ins {
                if matches!(kinds[v.node.index()], Kind::Op { pin: Some(Pin::Fp32), .. })
                    && matches!(g.node(v.node).op(), Op::Constant { .. })
                {
                    warnings.push(format!(
                        "node `{}` computes in {low} and reads the out-of-range constant `{}`",
                        g.node(n).name(),
                        g.node(v.node).name()
                    ));
                }
            }
        }
        let kept = kept_ports(g.node(n).op());
        for (port, v) in ins.iter_mut().enumerate() {
            let have = g.ty(*v).dtype;
            if !have.is_float() || have == target || kept.contains(&port) {
                continue;
            }
            let c = cast(g, cache, *v, target, casts)?;
            g.set_input(n, port as u32, c);
            *v = c;
        }
        g.retype(n, &ins)?;
    }
    // State updates keep their state's type; step outputs leave in FP32.
    for i in 0..g.updates.len() {
        let (s, v) = g.updates[i];
        let want = g.ty(ValueId { node: s, slot: 0 }).dtype;
        if g.ty(v).dtype != want {
            g.updates[i].1 = cast(g, cache, v, want, casts)?;
        }
    }
    for i in 0..g.outputs.len() {
        let v = g.outputs[i];
        if g.ty(v).dtype.is_low() {
            let c = cast(g, cache, v, DType::F32, casts)?;
            g.outputs[i] = c;
            if c != v && !named_back.contains(&(v, c)) {
                named_back.push((v, c));
            }
        }
    }

    Ok(())
}

/// Gives each graph output that autocast re-pointed to a cast back to f32
/// the name of the value it was, so that a step reports its outputs, and
/// an ONNX export names them, as the user did; the low value is renamed
/// `<name>.<low type>`. Run once the casts' names are entered.
fn name_outputs_back(g: &mut Graph, pairs: &[(ValueId, ValueId)]) -> Result<(), String> {
    for &(v, c) in pairs {
        let src = g.inputs(c.node).first().copied();
        if v.slot != 0 || !g.is_cast(c.node) || src != Some(v) || g.outputs.contains(&v) {
            continue;
        }
        let node = g.node(v.node);
        if node.num_outputs() != 1 || node.output_name(0) != node.name() {
            continue;
        }
        let name = node.name().to_string();
        let low = g.fresh_name(&format!("{name}.{}", g.ty(v).dtype.name()));
        g.rename(v.node, low).map_err(|e| e.to_string())?;
        g.rename(c.node, name).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What the painter saw, for the report.
struct Painted<'a> {
    kinds: &'a [Kind],
    fanin: &'a Packed,
    fanout: &'a Packed,
}

/// The casts made so far, per (value, type): a dense table for the first
/// output of each node cast to the low type or to f32, a map for the rest.
struct CastCache {
    low: DType,
    dense: Vec<[u32; 2]>,
    other: FxHashMap<(ValueId, DType), ValueId>,
    /// Casts whose names are not in the name table yet. They are entered
    /// in one batch, in the order the casts were made (so each gets the
    /// name it would have got then), before anything looks names up.
    unnamed: Vec<(NodeId, u64)>,
}

impl CastCache {
    fn new(bound: usize, low: DType) -> CastCache {
        // Zero means none (entries hold index + 1): the table is allocated
        // zeroed, and only the pages of cast values are ever touched.
        CastCache { low, dense: vec![[0; 2]; bound], other: FxHashMap::default(), unnamed: Vec::new() }
    }

    /// Enters the names of the casts made so far.
    fn register(&mut self, g: &mut Graph) {
        g.register_unnamed(&self.unnamed);
        self.unnamed.clear();
    }

    fn dense_slot(&self, v: ValueId, to: DType) -> Option<(usize, usize)> {
        let which = if to == self.low {
            0
        } else if to == DType::F32 {
            1
        } else {
            return None;
        };
        (v.slot == 0 && v.node.index() < self.dense.len()).then_some((v.node.index(), which))
    }

    fn get(&self, g: &Graph, v: ValueId, to: DType) -> Option<ValueId> {
        match self.dense_slot(v, to) {
            Some((i, w)) => {
                let c = self.dense[i][w];
                (c != 0).then(|| ValueId { node: g.node_id(c as usize - 1), slot: 0 })
            }
            None => self.other.get(&(v, to)).copied(),
        }
    }

    fn insert(&mut self, v: ValueId, to: DType, c: ValueId) {
        match self.dense_slot(v, to) {
            Some((i, w)) if c.slot == 0 => self.dense[i][w] = c.node.index() as u32 + 1,
            _ => {
                self.other.insert((v, to), c);
            }
        }
    }
}

/// The cast of `v` to `to`, shared: made once per (value, type). Casting a
/// widened value back to its original type returns the original.
fn cast(g: &mut Graph, cache: &mut CastCache, v: ValueId, to: DType, count: &mut usize) -> Result<ValueId, String> {
    if g.ty(v).dtype == to {
        return Ok(v);
    }
    if let Some(c) = cache.get(g, v, to) {
        return Ok(c);
    }
    if g.is_cast(v.node) {
        let src = g.inputs(v.node)[0];
        let via = g.ty(v).dtype;
        if g.ty(src).dtype == to && exact_via(to, via) {
            return Ok(src);
        }
        // A cast of a cast is named after it: its name must be final.
        cache.register(g);
    }
    let value = g.value_name(v);
    let mut base = CompactString::with_capacity(value.len() + 5);
    base.push_str(value);
    base.push('.');
    base.push_str(to.name());
    let role = g.node(v.node).role();
    // The name is entered later, with the other casts' (see `CastCache::unnamed`).
    let hash = name_hash(&base);
    // A cast's type is its input's in `to`: nothing to infer.
    let ty = g.ty(v).with_dtype(to);
    let id = g.add_unnamed(base, Op::Cast { to }, role, &[v], ty);
    cache.unnamed.push((id, hash));
    let c = ValueId { node: id, slot: 0 };
    cache.insert(v, to, c);
    *count += 1;
    Ok(c)
}

#[allow(clippy::too_many_arguments)]
fn report(
    g: &Graph,
    order: &[NodeId],
    input: &Painted<'_>,
    painting: &super::paint::Painting,
    table: &Table,
    explain: bool,
    casts_inserted: usize,
    warnings: Vec<String>,
) -> Report {
    let (rules, low) = (&painting.rule, &painting.low);
    let mut names = vec![""; if explain { input.kinds.len() } else { 0 }];
    for &n in order.iter().filter(|_| explain) {
        names[n.index()] = g.node(n).name();
    }
    let name_of = |i: u32| names.get(i as usize).copied().unwrap_or("?").to_string();
    let mut decisions = Vec::with_capacity(if explain { order.len() } else { 0 });
    let (mut low_nodes, mut float_nodes) = (0, 0);
    for &n in order {
        let painted = matches!(input.kinds[n.index()], Kind::Op { .. });
        if painted {
            float_nodes += 1;
            low_nodes += low[n.index()] as usize;
        }
        if !explain {
            continue;
        }
        let node = g.node(n);
        let kind = node.op().kind();
        decisions.push(Decision {
            node: node.name().to_string(),
            op: kind.name(),
            class: if kind == OpKind::Cast { None } else { table.class(kind) },
            dtype: g.output_types(n).next().map(|t| t.dtype.to_string()).unwrap_or_default(),
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
            for &k in input.fanin.of(j as u32).iter().chain(input.fanout.of(j as u32)) {
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
