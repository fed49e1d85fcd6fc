//! grad: derives the backward graph when a file has none.
//!
//! Reverse-mode differentiation over the forward part: starting from
//! `seed(loss)`, each forward node that lies on a path from a parameter to
//! the loss gets the backward nodes of its rule below, contributions to one
//! value are summed with `add`, and broadcasting is undone with `sum_to`.
//! Secondary outputs (layer_norm's and batch_norm's statistics, dropout's
//! mask) are treated as constants: gradients flow only through output 0.
//! `split` is the exception: every piece is differentiable, and a piece the
//! loss does not depend on contributes zeros.

use crate::ir::graph::{DenseMap, Graph, NodeId, ValueId};
use crate::ir::infer::arity_ok;
use crate::ir::op::{Op, Role};
use crate::ir::types::{DType, Shape};

use super::{Pass, PassError};

pub struct Grad;

impl Pass for Grad {
    fn name(&self) -> &'static str {
        "grad"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let has_backward = !g.gradients.is_empty() || g.node_ids().any(|n| g.node(n).role() != Role::Forward);
        if has_backward {
            return Ok(false);
        }
        let derived = derive(g);
        g.register_deferred();
        derived.map_err(|message| PassError::Failed { pass: "grad", message })?;
        Ok(true)
    }
}

fn fail(g: &Graph, n: NodeId, msg: &str) -> String {
    format!("node `{}` ({}): {msg}", g.node(n).name(), g.node(n).op().name())
}

/// Adds a backward node named after `base` and returns its first output.
/// Its name enters the name table at the next `register_deferred` (before
/// any lookup this pass makes, and at its end): this pass reads no name of
/// a node it added.
fn emit(g: &mut Graph, base: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId, String> {
    let id = g.add_deferred(base, op, Role::Backward, inputs).map_err(|e| e.to_string())?;
    Ok(ValueId { node: id, slot: 0 })
}

/// Adds a backward node whose outputs are named `d<input>` after the inputs
/// they are gradients of.
fn emit_grads(g: &mut Graph, op: Op, inputs: &[ValueId], of: &[ValueId]) -> Result<NodeId, String> {
    // The names below must avoid those of the nodes added so far.
    g.register_deferred();
    let mut names: Vec<String> = Vec::with_capacity(of.len());
    for v in of {
        let mut n = g.fresh_name(&format!("d{}", g.value_name(*v)));
        let mut k = 1;
        while names.contains(&n) {
            n = g.fresh_name(&format!("d{}.{k}", g.value_name(*v)));
            k += 1;
        }
        names.push(n);
    }
    g.add_node_with_outputs(names[0].clone(), op, Role::Backward, inputs, names).map_err(|e| e.to_string())
}

/// `dy` reduced to `shape` when broadcasting widened it.
fn unbroadcast(g: &mut Graph, base: &str, dy: ValueId, shape: &Shape) -> Result<ValueId, String> {
    if &g.ty(dy).shape == shape {
        return Ok(dy);
    }
    emit(g, base, Op::SumTo { shape: shape.0.clone() }, &[dy])
}

fn derive(g: &mut Graph) -> Result<(), String> {
    let loss = g.loss.ok_or("the graph has no loss")?;
    let order = g.topo_order().map_err(|_| "the graph has a cycle".to_string())?;
    // Which nodes depend on a parameter, and which feed the loss.
    let bound = order.iter().map(|n| n.index() + 1).max().unwrap_or(0);
    let mut from_param = vec![false; bound];
    for &n in &order {
        let node = g.node(n);
        from_param[n.index()] = matches!(node.op(), Op::Param { .. })
            || (node.role() == Role::Forward && g.inputs(n).iter().any(|v| from_param[v.node.index()]));
    }
    let mut to_loss = vec![false; bound];
    to_loss[loss.node.index()] = true;
    for &n in order.iter().rev() {
        if to_loss[n.index()] {
            for v in g.inputs(n) {
                to_loss[v.node.index()] = true;
            }
        }
    }
    let needs = |n: NodeId| from_param[n.index()] && to_loss[n.index()];

    let seed = emit(g, &format!("d{}", g.value_name(loss)), Op::Seed, &[loss])?;
    // Gradient contributions per value, summed when a value has several users.
    // By node index: a hash map's probes were half of this pass's own time at 10^6 ops.
    let mut grads: DenseMap<ValueId, ValueId> = DenseMap::new(g.index_bound(), order.len());
    grads.insert(loss, seed);
    for &n in order.iter().rev() {
        if !needs(n) || g.node(n).op().is_source() {
            continue;
        }
        // The gradients of the node's outputs: of every piece for split, of
        // output 0 for every other op.
        let douts: Vec<Option<ValueId>> = if matches!(g.node(n).op(), Op::Split { .. }) {
            g.values(n).map(|v| grads.get(&v).copied()).collect()
        } else {
            vec![grads.get(&ValueId { node: n, slot: 0 }).copied()]
        };
        let Some(&dy) = douts.iter().flatten().next() else { continue };
        let ins = g.inputs(n);
        let want: Vec<bool> = ins.iter().map(|v| needs(v.node) && g.ty(*v).dtype.is_float()).collect();
        let contributions = rule(g, n, dy, &douts, &ins, &want)?;
        for (port, d) in contributions {
            let v = ins[port];
            let total = match grads.get(&v) {
                Some(&prev) => {
                    let base = format!("d{}", g.value_name(v));
                    emit(g, &base, Op::Add, &[prev, d])?
                }
                None => d,
            };
            grads.insert(v, total);
        }
    }
    let params: Vec<NodeId> = g.params().collect();
    for p in params {
        let v = ValueId { node: p, slot: 0 };
        let d = match grads.get(&v) {
            Some(&d) => d,
            None => {
                // A parameter the loss does not depend on gets a zero gradient,
                // so the optimizer (and weight decay) still sees it.
                let ty = g.ty(v).clone();
                emit(g, &format!("d{}", g.node(p).name()), Op::Constant { value: 0.0, ty }, &[])?
            }
        };
        g.gradients.push((p, d));
    }
    Ok(())
}

/// The gradient contributions of node `n` with output gradient `dy`, for
/// the input ports flagged in `want`. `douts` holds the gradient of every
/// output for `split` (`None` where the loss does not depend on a piece);
/// other ops read `dy`, output 0's.
fn rule(
    g: &mut Graph,
    n: NodeId,
    dy: ValueId,
    douts: &[Option<ValueId>],
    ins: &[ValueId],
    want: &[bool],
) -> Result<Vec<(usize, ValueId)>, String> {
    let op = g.node(n).op().clone();
    let y = ValueId { node: n, slot: 0 };
    let base = |g: &Graph, port: usize| format!("d{}", g.value_name(ins[port]));
    let shape = |g: &Graph, port: usize| g.ty(ins[port]).shape.clone();
    let mut out = Vec::new();
    debug_assert!(arity_ok(&op, ins.len()));
    match op {
        Op::Identity => out.push((0, dy)),
        Op::Cast { .. } => {
            let to = g.ty(ins[0]).dtype;
            let d = if g.ty(dy).dtype == to { dy } else { emit(g, &base(g, 0), Op::Cast { to }, &[dy])? };
            out.push((0, d));
        }
        Op::Add | Op::Sub => {
            for port in (0..2).filter(|&p| want[p]) {
                let mut d = dy;
                if port == 1 && op == Op::Sub {
                    d = emit(g, &base(g, 1), Op::Scale { value: -1.0 }, &[d])?;
                }
                let s = shape(g, port);
                out.push((port, unbroadcast(g, &base(g, port), d, &s)?));
            }
        }
        Op::Mul => {
            for port in 0..2 {
                if want[port] {
                    let d = emit(g, &base(g, port), Op::Mul, &[dy, ins[1 - port]])?;
                    let s = shape(g, port);
                    out.push((port, unbroadcast(g, &base(g, port), d, &s)?));
                }
            }
        }
        Op::Div => {
            if want[0] {
                let d = emit(g, &base(g, 0), Op::Div, &[dy, ins[1]])?;
                let s = shape(g, 0);
                out.push((0, unbroadcast(g, &base(g, 0), d, &s)?));
            }
            if want[1] {
                // d(a/b)/db = -(a/b)/b = -y/b
                let t = emit(g, &base(g, 1), Op::Mul, &[dy, y])?;
                let t = emit(g, &base(g, 1), Op::Div, &[t, ins[1]])?;
                let t = emit(g, &base(g, 1), Op::Scale { value: -1.0 }, &[t])?;
                let s = shape(g, 1);
                out.push((1, unbroadcast(g, &base(g, 1), t, &s)?));
            }
        }
        Op::Scale { value } => out.push((0, emit(g, &base(g, 0), Op::Scale { value }, &[dy])?)),
        Op::Relu => out.push((0, emit(g, &base(g, 0), Op::ReluGrad, &[dy, y])?)),
        Op::Gelu => out.push((0, emit(g, &base(g, 0), Op::GeluGrad, &[dy, ins[0]])?)),
        Op::Tanh => out.push((0, emit(g, &base(g, 0), Op::TanhGrad, &[dy, y])?)),
        Op::Sigmoid => out.push((0, emit(g, &base(g, 0), Op::SigmoidGrad, &[dy, y])?)),
        Op::Exp => out.push((0, emit(g, &base(g, 0), Op::Mul, &[dy, y])?)),
        Op::Log => out.push((0, emit(g, &base(g, 0), Op::Div, &[dy, ins[0]])?)),
        Op::Erf => out.push((0, emit(g, &base(g, 0), Op::ErfGrad, &[dy, ins[0]])?)),
        Op::Sqrt => {
            // d sqrt(x)/dx = 1/(2 sqrt(x)) = 0.5/y
            let t = emit(g, &base(g, 0), Op::Div, &[dy, y])?;
            out.push((0, emit(g, &base(g, 0), Op::Scale { value: 0.5 }, &[t])?));
        }
        Op::Lrn { size, alpha, beta, bias } => {
            out.push((0, emit(g, &base(g, 0), Op::LrnGrad { size, alpha, beta, bias }, &[dy, ins[0]])?));
        }
        Op::Matmul { transpose_a: ta, transpose_b: tb } => {
            let (a, b) = (ins[0], ins[1]);
            let mm = |ta, tb| Op::Matmul { transpose_a: ta, transpose_b: tb };
            if want[0] {
                let d = match (ta, tb) {
                    (false, false) => emit(g, &base(g, 0), mm(false, true), &[dy, b])?,
                    (false, true) => emit(g, &base(g, 0), mm(false, false), &[dy, b])?,
                    (true, false) => emit(g, &base(g, 0), mm(false, true), &[b, dy])?,
                    (true, true) => emit(g, &base(g, 0), mm(true, true), &[b, dy])?,
                };
                let s = shape(g, 0);
                out.push((0, unbroadcast(g, &base(g, 0), d, &s)?));
            }
            let (ra, rb) = (g.ty(a).shape.rank(), g.ty(b).shape.rank());
            if want[1] && rb == 2 && ra > 2 && !ta {
                // A weight shared over batch axes: fold the batch axes into the
                // rows, one 2-D product instead of a batched one and a sum.
                let k = g.ty(a).shape.0[ra - 1] as i64;
                let cols = *g.ty(dy).shape.0.last().unwrap_or(&1) as i64;
                let a2 = emit(g, &base(g, 1), Op::Reshape { shape: vec![-1, k] }, &[a])?;
                let dy2 = emit(g, &base(g, 1), Op::Reshape { shape: vec![-1, cols] }, &[dy])?;
                let d = if tb {
                    emit(g, &base(g, 1), mm(true, false), &[dy2, a2])?
                } else {
                    emit(g, &base(g, 1), mm(true, false), &[a2, dy2])?
                };
                out.push((1, d));
            } else if want[1] {
                let d = match (ta, tb) {
                    (false, false) => emit(g, &base(g, 1), mm(true, false), &[a, dy])?,
                    (false, true) => emit(g, &base(g, 1), mm(true, false), &[dy, a])?,
                    (true, false) => emit(g, &base(g, 1), mm(false, false), &[a, dy])?,
                    (true, true) => emit(g, &base(g, 1), mm(true, true), &[dy, a])?,
                };
                let s = shape(g, 1);
                out.push((1, unbroadcast(g, &base(g, 1), d, &s)?));
            }
        }
        Op::Embedding => {
            if want[0] {
                let rows = g.ty(ins[0]).shape.0[0];
                out.push((0, emit(g, &base(g, 0), Op::EmbeddingGrad { num_embeddings: rows }, &[dy, ins[1]])?));
            }
        }
        Op::LayerNorm { .. } => {
            let stats = [ValueId { node: n, slot: 1 }, ValueId { node: n, slot: 2 }];
            let id = emit_grads(g, Op::LayerNormGrad, &[dy, ins[0], ins[1], stats[0], stats[1]], ins)?;
            out.extend((0..3).filter(|&p| want[p]).map(|p| (p, ValueId { node: id, slot: p as u32 })));
        }
        Op::BatchNorm { eps, .. } => {
            let stats = [ValueId { node: n, slot: 1 }, ValueId { node: n, slot: 2 }];
            let id = emit_grads(g, Op::BatchNormGrad { eps }, &[dy, ins[0], ins[1], stats[0], stats[1]], ins)?;
            out.extend((0..3).filter(|&p| want[p]).map(|p| (p, ValueId { node: id, slot: p as u32 })));
        }
        Op::FrozenBatchNorm { eps } => {
            // mean and var (ports 3, 4) are statistics: no gradient flows to them.
            if want[..3].contains(&true) {
                let inputs = [dy, ins[0], ins[1], ins[3], ins[4]];
                let id = emit_grads(g, Op::FrozenBatchNormGrad { eps }, &inputs, &ins[..3])?;
                out.extend((0..3).filter(|&p| want[p]).map(|p| (p, ValueId { node: id, slot: p as u32 })));
            }
        }
        Op::Softmax { axis, .. } => out.push((0, emit(g, &base(g, 0), Op::SoftmaxGrad { axis }, &[dy, y])?)),
        Op::LogSoftmax { axis } => out.push((0, emit(g, &base(g, 0), Op::LogSoftmaxGrad { axis }, &[dy, y])?)),
        Op::Dropout { p, .. } => {
            let mask = ValueId { node: n, slot: 1 };
            out.push((0, emit(g, &base(g, 0), Op::DropoutGrad { p }, &[dy, mask])?));
        }
        Op::Conv2d(conv) => {
            if want[0] {
                let s = shape(g, 0).0;
                let op = Op::Conv2dGradInput { conv: conv.clone(), shape: s };
                out.push((0, emit(g, &base(g, 0), op, &[dy, ins[1]])?));
            }
            if want[1] {
                let w = shape(g, 1).0;
                let op = Op::Conv2dGradWeight { conv, kernel: [w[2], w[3]] };
                out.push((1, emit(g, &base(g, 1), op, &[dy, ins[0]])?));
            }
        }
        Op::MaxPool2d(w) => out.push((0, emit(g, &base(g, 0), Op::MaxPool2dGrad(w), &[dy, ins[0]])?)),
        Op::AvgPool2d { window, count_include_pad } => {
            let s = shape(g, 0).0;
            let op = Op::AvgPool2dGrad { window, count_include_pad, shape: s };
            out.push((0, emit(g, &base(g, 0), op, &[dy])?));
        }
        Op::Flatten { .. } | Op::Reshape { .. } => {
            let s = shape(g, 0).0.iter().map(|&d| d as i64).collect();
            out.push((0, emit(g, &base(g, 0), Op::Reshape { shape: s }, &[dy])?));
        }
        Op::Concat { axis } => {
            let ax = g.ty(ins[0]).shape.axis(axis)?;
            let sizes = ins.iter().map(|&v| g.ty(v).shape.0[ax]).collect();
            let id = emit_grads(g, Op::Split { axis, sizes }, &[dy], ins)?;
            out.extend((0..ins.len()).filter(|&p| want[p]).map(|p| (p, ValueId { node: id, slot: p as u32 })));
        }
        Op::Split { axis, .. } => {
            // The pieces' gradients joined again; a piece without one is zeros.
            let mut parts = Vec::with_capacity(douts.len());
            for (slot, d) in douts.iter().enumerate() {
                let piece = ValueId { node: n, slot: slot as u32 };
                parts.push(match *d {
                    Some(d) => d,
                    None => {
                        let ty = g.ty(piece).clone();
                        emit(g, &format!("d{}", g.value_name(piece)), Op::Constant { value: 0.0, ty }, &[])?
                    }
                });
            }
            let d = match parts[..] {
                [one] => one,
                _ => emit(g, &base(g, 0), Op::Concat { axis }, &parts)?,
            };
            out.push((0, d));
        }
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            out.push((0, emit(g, &base(g, 0), Op::Transpose { perm: inv }, &[dy])?));
        }
        Op::ReduceSum { ref axes, keepdims } | Op::ReduceMean { ref axes, keepdims } => {
            let x = g.ty(ins[0]).shape.clone();
            let norm: Vec<usize> = axes.iter().map(|&a| x.axis(a)).collect::<Result<_, _>>()?;
            let mut d = dy;
            if !keepdims {
                let kept: Vec<i64> =
                    x.0.iter().enumerate().map(|(i, &s)| if norm.contains(&i) { 1 } else { s as i64 }).collect();
                d = emit(g, &base(g, 0), Op::Reshape { shape: kept }, &[d])?;
            }
            d = emit(g, &base(g, 0), Op::BroadcastTo { shape: x.0.clone() }, &[d])?;
            if matches!(op, Op::ReduceMean { .. }) {
                let count: u64 = norm.iter().map(|&i| x.0[i]).product();
                d = emit(g, &base(g, 0), Op::Scale { value: 1.0 / count as f64 }, &[d])?;
            }
            out.push((0, d));
        }
        Op::SumTo { .. } => {
            let s = shape(g, 0).0;
            out.push((0, emit(g, &base(g, 0), Op::BroadcastTo { shape: s }, &[dy])?));
        }
        Op::BroadcastTo { .. } => {
            let s = shape(g, 0);
            out.push((0, unbroadcast(g, &base(g, 0), dy, &s)?));
        }
        Op::CrossEntropy => {
            if want[0] {
                out.push((0, emit(g, &base(g, 0), Op::CrossEntropyGrad, &[dy, ins[0], ins[1]])?));
            }
        }
        Op::Mse => {
            if want[0] {
                out.push((0, emit(g, &base(g, 0), Op::MseGrad, &[dy, ins[0], ins[1]])?));
            }
            if want[1] {
                let d = emit(g, &base(g, 1), Op::MseGrad, &[dy, ins[1], ins[0]])?;
                out.push((1, d));
            }
        }
        Op::Constant { .. } | Op::Seed | Op::Input { .. } | Op::Param { .. } | Op::State { .. } => {}
        Op::ReluGrad
        | Op::GeluGrad
        | Op::ErfGrad
        | Op::LrnGrad { .. }
        | Op::FrozenBatchNormGrad { .. }
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
            return Err(fail(
                g,
                n,
                "gradient ops in the forward part cannot be differentiated (no second-order gradients)",
            ));
        }
    }
    // A gradient takes its input's dtype (differs only when the graph mixes them).
    for (port, d) in out.iter_mut() {
        let want = g.ty(ins[*port]).dtype;
        if g.ty(*d).dtype != want && want != DType::Bool {
            *d = emit(g, &base(g, *port), Op::Cast { to: want }, &[*d])?;
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ir::types::TensorType;

    /// `l = reduce_sum(relu(w))` for a param `w`, beside an input named
    /// `clash` (a name a pass would like to give one of its nodes).
    pub(crate) fn relu_of_a_param(clash: &str) -> (Graph, NodeId) {
        let mut g = Graph::new("t");
        let ty = TensorType::new(DType::F32, vec![4]);
        let init = crate::ir::op::Init::Zeros;
        let w = g.add_node("w", Op::Param { ty: ty.clone(), init }, Role::Forward, &[]).unwrap();
        g.add_node(clash, Op::Input { ty }, Role::Forward, &[]).unwrap();
        let h = g.add_node("h", Op::Relu, Role::Forward, &[ValueId { node: w, slot: 0 }]).unwrap();
        let sum = Op::ReduceSum { axes: vec![0], keepdims: false };
        let l = g.add_node("l", sum, Role::Forward, &[ValueId { node: h, slot: 0 }]).unwrap();
        g.loss = Some(ValueId { node: l, slot: 0 });
        (g, w)
    }

    /// grad's names enter the name table only at the pass's end (or before
    /// it names a multi-output node); a name the forward graph already has
    /// must still send grad's node to `name.1`, as adding it at once would.
    #[test]
    fn a_gradient_named_like_a_forward_value_takes_the_next_name() {
        let (mut g, w) = relu_of_a_param("dw");
        assert!(Grad.run(&mut g).unwrap());
        let (p, dw) = g.gradients[0];
        assert_eq!((p, g.value_name(dw)), (w, "dw.1"));
        assert_eq!(g.value("dw.1"), Some(dw));
        assert!(g.value("dh").is_some() && g.value("dl").is_some());
        assert!(g.name_map_problems().is_empty(), "{:?}", g.name_map_problems());
    }
}
