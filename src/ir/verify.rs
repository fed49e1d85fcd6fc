//! The verifier: every invariant a graph must hold between passes.
//!
//! It returns every problem it finds, each naming its node, so one run shows
//! everything wrong with a graph. Passes may assume a verified graph.

use rustc_hash::FxHashSet;

use crate::diag::Problem;
use crate::ir::graph::{Graph, InferMemo, NodeId};
use crate::ir::infer;
use crate::ir::op::{Op, Role};

/// The problems a graph failed verification with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} problem(s), the first: {}", .0.len(), .0[0])]
pub struct VerifyError(pub Vec<Problem>);

fn at(g: &Graph, id: NodeId, field: Option<&str>, message: String) -> Problem {
    let n = g.node(id);
    let pointer = g.origin(id).map(|o| match field {
        Some(f) => format!("{}/{f}", o.pointer()),
        None => o.pointer(),
    });
    Problem { node: Some(n.name().to_string()), pointer, message }
}

fn top(pointer: &str, message: String) -> Problem {
    Problem { node: None, pointer: Some(pointer.to_string()), message }
}

/// Checks every invariant; `Ok` when none is broken.
pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    result(problems(g))
}

/// [`verify`] for an inference graph (an imported ONNX model lowered for
/// inference): the same invariants, except that it has no loss.
pub fn verify_inference(g: &Graph) -> Result<(), VerifyError> {
    result(problems_of(g, false))
}

fn result(problems: Vec<Problem>) -> Result<(), VerifyError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VerifyError(problems))
    }
}

/// Every broken invariant of `g`.
pub fn problems(g: &Graph) -> Vec<Problem> {
    problems_of(g, true)
}

fn problems_of(g: &Graph, need_loss: bool) -> Vec<Problem> {
    let mut out: Vec<Problem> = g.name_map_problems().into_iter().map(|m| Problem::new(None, None, m)).collect();
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(stuck) => {
            out.push(cycle_problem(g, &stuck));
            return out;
        }
    };
    let mut bad_type = vec![false; g.index_bound()];
    let mut memo = InferMemo::default();
    let mut has_backward = false;
    for &id in &order {
        let n = g.node(id);
        has_backward |= n.role() == Role::Backward;
        let ins = g.inputs(id);
        // Ports must be exactly 0..arity, once each.
        let mut ports = g.in_ports(id);
        ports.sort_unstable();
        let ok = infer::arity_ok(n.op(), ports.len()) && ports.iter().enumerate().all(|(i, &p)| p as usize == i);
        if !ok {
            let want = infer::arity_text(n.op());
            out.push(at(
                g,
                id,
                Some("inputs"),
                format!("{} takes {want} on consecutive ports from 0, found ports {ports:?}", n.op().name()),
            ));
            bad_type[id.index()] = true;
            continue;
        }
        if let Some(v) = ins.iter().find(|v| v.slot as usize >= g.node(v.node).num_outputs()) {
            out.push(at(
                g,
                id,
                Some("inputs"),
                format!(
                    "reads output {} of `{}`, which has {}",
                    v.slot,
                    g.node(v.node).name(),
                    g.node(v.node).num_outputs()
                ),
            ));
            bad_type[id.index()] = true;
            continue;
        }
        for (port, v) in ins.iter().enumerate() {
            let p = g.node(v.node);
            let allowed = match n.role() {
                Role::Forward => p.role() == Role::Forward,
                Role::Backward => matches!(p.role(), Role::Forward | Role::Backward | Role::Scaler),
                Role::Optimizer | Role::Scaler => true,
            };
            if !allowed {
                out.push(at(
                    g,
                    id,
                    Some(&format!("inputs/{port}")),
                    format!(
                        "a {} node may not read `{}`, a value of the {} part",
                        n.role().name(),
                        g.value_name(*v),
                        p.role().name()
                    ),
                ));
            }
        }
        if n.op().is_source() && n.role() != Role::Forward {
            out.push(at(
                g,
                id,
                None,
                format!("{} nodes have the forward role, found {}", n.op().name(), n.role().name()),
            ));
        }
        if let Op::Seed = n.op() {
            if Some(ins[0]) != g.loss {
                out.push(at(g, id, Some("inputs/0"), "a seed must read the loss".into()));
            }
            if n.role() != Role::Backward {
                out.push(at(g, id, None, "a seed belongs to the backward part".into()));
            }
        }
        if ins.iter().any(|v| bad_type[v.node.index()]) {
            bad_type[id.index()] = true;
            continue;
        }
        let tys = g.types_of(&ins);
        match memo.infer(n.op(), &tys) {
            Ok(want) => {
                if want.len() != n.num_outputs() || !want.iter().eq(g.output_types(id)) {
                    let have: Vec<&crate::TensorType> = g.output_types(id).collect();
                    let show = |v: Vec<String>| v.join(", ");
                    out.push(at(
                        g,
                        id,
                        None,
                        format!(
                            "output types are recorded as ({}) but the inputs give ({})",
                            show(have.iter().map(|t| t.to_string()).collect()),
                            show(want.iter().map(|t| t.to_string()).collect())
                        ),
                    ));
                    bad_type[id.index()] = true;
                }
            }
            Err(m) => {
                out.push(at(g, id, None, m));
                bad_type[id.index()] = true;
            }
        }
    }
    match g.loss {
        None if !need_loss => {}
        None => out.push(top("/loss", "the graph has no loss".into())),
        Some(l) => {
            let t = g.ty(l);
            if t.shape.rank() != 0 || !t.dtype.is_float() {
                out.push(top("/loss", format!("the loss `{}` must be a float scalar, found {t}", g.value_name(l))));
            }
            if g.node(l.node).role() != Role::Forward {
                out.push(top("/loss", format!("the loss `{}` must be computed by a forward node", g.value_name(l))));
            }
        }
    }
    let mut seen = FxHashSet::default();
    for &(p, v) in &g.gradients {
        let ptr = format!("/gradients/{}", crate::diag::pointer_token(g.node(p).name()));
        let Op::Param { ty, .. } = g.node(p).op() else {
            out.push(top(&ptr, format!("`{}` is not a parameter", g.node(p).name())));
            continue;
        };
        if !seen.insert(p) {
            out.push(top(&ptr, format!("parameter `{}` has two gradients", g.node(p).name())));
        }
        let gt = g.ty(v);
        if gt.shape != ty.shape || !gt.dtype.is_float() {
            out.push(top(
                &ptr,
                format!(
                    "the gradient of `{}` must be a float tensor of shape {}, found `{}`: {gt}",
                    g.node(p).name(),
                    ty.shape,
                    g.value_name(v)
                ),
            ));
        }
        if !matches!(g.node(v.node).role(), Role::Backward | Role::Scaler) {
            out.push(top(
                &ptr,
                format!("the gradient `{}` must be computed by a backward or scaler node", g.value_name(v)),
            ));
        }
    }
    if !g.gradients.is_empty() || has_backward {
        for p in g.params() {
            if !seen.contains(&p) {
                out.push(at(
                    g,
                    p,
                    None,
                    "the backward section gives no gradient for this parameter (add it to `gradients`)".into(),
                ));
            }
        }
    }
    let mut updated = FxHashSet::default();
    for &(s, v) in &g.updates {
        let name = &g.node(s).name();
        let ptr = format!("/updates/{}", crate::diag::pointer_token(name));
        let (Op::Param { ty, .. } | Op::State { ty, .. }) = g.node(s).op() else {
            out.push(top(&ptr, format!("`{name}` is not a param or state, so it cannot be updated")));
            continue;
        };
        if !updated.insert(s) {
            out.push(top(&ptr, format!("`{name}` is updated twice")));
        }
        if g.ty(v) != ty {
            out.push(top(&ptr, format!("`{name}` is {ty} but its update `{}` is {}", g.value_name(v), g.ty(v))));
        }
    }
    out.extend(dead_optimizer_nodes(g, &order));
    out
}

/// Optimizer (`update` section) nodes whose values reach no `updates`
/// entry, output or loss: lowering deletes them as dead code, and the
/// graph would train nothing (an `update` section without its `updates` map).
fn dead_optimizer_nodes(g: &Graph, order: &[NodeId]) -> Vec<Problem> {
    let mut live = vec![false; g.index_bound()];
    let roots = g.updates.iter().map(|&(_, v)| v).chain(g.outputs.iter().copied()).chain(g.loss);
    for v in roots {
        live[v.node.index()] = true;
    }
    for &id in order.iter().rev() {
        if live[id.index()] {
            for v in g.inputs(id) {
                live[v.node.index()] = true;
            }
        }
    }
    order
        .iter()
        .filter(|&&id| g.node(id).role() == Role::Optimizer && !live[id.index()])
        .map(|&id| {
            at(
                g,
                id,
                None,
                "this update node reaches no `updates` entry, so lowering would delete it and nothing would \
                 train: map the param or state it updates in `updates`"
                    .into(),
            )
        })
        .collect()
}

/// A problem naming the nodes of one cycle among the `stuck` nodes.
pub fn cycle_problem(g: &Graph, stuck: &[NodeId]) -> Problem {
    let cycle = find_cycle(g, stuck);
    let names: Vec<&str> = cycle.iter().map(|&n| g.node(n).name()).collect();
    let first = cycle.first().copied().unwrap_or(stuck[0]);
    Problem::new(
        Some(g.node(first).name()),
        g.origin(first).map(|o| o.pointer()),
        format!("the graph has a cycle: {} -> {}", names.join(" -> "), names.first().unwrap_or(&"?")),
    )
}

/// Walks backwards through stuck nodes until one repeats.
fn find_cycle(g: &Graph, stuck: &[NodeId]) -> Vec<NodeId> {
    let stuck_set: rustc_hash::FxHashSet<NodeId> = stuck.iter().copied().collect();
    let mut path = vec![stuck[0]];
    let mut seen: rustc_hash::FxHashMap<NodeId, usize> = Default::default();
    seen.insert(stuck[0], 0);
    loop {
        let cur = *path.last().expect("path is never empty");
        let Some(prev) = g.inputs(cur).into_iter().map(|v| v.node).find(|n| stuck_set.contains(n)) else {
            return path;
        };
        if let Some(&i) = seen.get(&prev) {
            let mut cyc = path[i..].to_vec();
            cyc.reverse();
            return cyc;
        }
        seen.insert(prev, path.len());
        path.push(prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::ValueId;
    use crate::ir::op::Init;
    use crate::ir::types::{DType, TensorType};

    #[test]
    fn forward_may_not_read_backward() {
        let mut g = Graph::new("t");
        let x = g
            .add_node(
                "x",
                Op::Param { ty: TensorType::new(DType::F32, vec![2]), init: Init::Zeros },
                Role::Forward,
                &[],
            )
            .unwrap();
        let l = g
            .add_node(
                "l",
                Op::ReduceSum { axes: vec![0], keepdims: false },
                Role::Forward,
                &[ValueId { node: x, slot: 0 }],
            )
            .unwrap();
        g.loss = Some(ValueId { node: l, slot: 0 });
        let b = g.add_node("b", Op::Relu, Role::Backward, &[ValueId { node: x, slot: 0 }]).unwrap();
        g.add_node("f", Op::Relu, Role::Forward, &[ValueId { node: b, slot: 0 }]).unwrap();
        g.gradients.push((x, ValueId { node: b, slot: 0 }));
        let p = problems(&g);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("may not read `b`"), "{}", p[0]);
        assert_eq!(p[0].node.as_deref(), Some("f"));
    }

    #[test]
    fn stale_types_are_caught() {
        let mut g = Graph::new("t");
        let x = g.add_node("x", Op::Input { ty: TensorType::new(DType::F32, vec![2]) }, Role::Forward, &[]).unwrap();
        let r = g
            .add_node(
                "r",
                Op::ReduceSum { axes: vec![0], keepdims: false },
                Role::Forward,
                &[ValueId { node: x, slot: 0 }],
            )
            .unwrap();
        g.loss = Some(ValueId { node: r, slot: 0 });
        assert!(verify(&g).is_ok());
        g.set_op(x, Op::Input { ty: TensorType::new(DType::F16, vec![2]) });
        let p = problems(&g);
        assert!(p.iter().any(|p| p.node.as_deref() == Some("x")), "{p:?}");
    }

    #[test]
    fn update_must_match_state_type() {
        let mut g = Graph::new("t");
        let w = g
            .add_node(
                "w",
                Op::Param { ty: TensorType::new(DType::F32, vec![2]), init: Init::Zeros },
                Role::Forward,
                &[],
            )
            .unwrap();
        let wv = ValueId { node: w, slot: 0 };
        let l = g.add_node("l", Op::ReduceSum { axes: vec![0], keepdims: false }, Role::Forward, &[wv]).unwrap();
        g.loss = Some(ValueId { node: l, slot: 0 });
        let c = g.add_node("c", Op::Cast { to: DType::F16 }, Role::Optimizer, &[wv]).unwrap();
        g.updates.push((w, ValueId { node: c, slot: 0 }));
        let p = problems(&g);
        assert!(p[0].message.contains("`w` is f32[2] but its update `c` is f16[2]"), "{p:?}");
    }
}
