//! Dead-code elimination: removes nodes that nothing observable depends on.
//!
//! Observable: the loss, parameter gradients, state updates, step outputs,
//! and every input, param and state declaration (they are the step's
//! interface, so they stay even when unread).

use crate::ir::graph::{Graph, NodeId};

use super::{Pass, PassError};

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let fail = |message: String| PassError::Failed { pass: "dce", message };
        if !maybe_dead(g) {
            return Ok(false);
        }
        let live = live(g, |_| {}).ok_or_else(|| fail(CYCLE.into()))?;
        remove_dead(g, &live).map_err(fail)
    }
}

/// Whether some node may be dead: in an acyclic graph, exactly when some
/// node that no node reads is not itself observable (following readers from
/// any node ends at such a node, and the walk back from the observable ones
/// reaches everything on the way). One scan, no walk, for the usual answer.
/// (On a graph with a cycle, which the verifier rejects, a dead cycle with
/// no such node is not noticed.)
pub(crate) fn maybe_dead(g: &Graph) -> bool {
    let mut observable = vec![false; g.index_bound()];
    let values = g.loss.iter().chain(g.gradients.iter().map(|(_, v)| v)).chain(g.updates.iter().map(|(_, v)| v));
    for v in values.chain(g.outputs.iter()) {
        observable[v.node.index()] = true;
    }
    g.sinks().any(|n| !observable[n.index()] && !g.is_source(n))
}

pub(crate) const CYCLE: &str = "the graph has a cycle";

/// Which nodes are live (by node index), walking back from the observable
/// values and the declarations; `visit` sees every live node. `None` when
/// the live nodes hold a cycle.
pub(crate) fn live(g: &Graph, mut visit: impl FnMut(NodeId)) -> Option<Vec<bool>> {
    let bound = g.index_bound();
    // 0: not seen, 1: on the current path, 2: done.
    let mut state = vec![0u8; bound];
    let mut stack: Vec<(NodeId, bool)> = Vec::new();
    let mut walk = |root: NodeId, state: &mut [u8], stack: &mut Vec<(NodeId, bool)>| -> Option<()> {
        stack.push((root, true));
        while let Some((n, enter)) = stack.pop() {
            if !enter {
                state[n.index()] = 2;
                continue;
            }
            match state[n.index()] {
                2 => {}
                1 => return None,
                _ => {
                    visit(n);
                    let before = stack.len();
                    stack.extend(g.input_nodes(n).filter(|m| state[m.index()] != 2).map(|m| (m, true)));
                    if stack.len() == before {
                        // Nothing left to walk below: done at once.
                        state[n.index()] = 2;
                    } else {
                        state[n.index()] = 1;
                        stack.insert(before, (n, false));
                    }
                }
            }
        }
        Some(())
    };
    let roots = g.loss.iter().chain(g.gradients.iter().map(|(_, v)| v)).chain(g.updates.iter().map(|(_, v)| v));
    for v in roots.chain(g.outputs.iter()) {
        walk(v.node, &mut state, &mut stack)?;
    }
    for i in 0..bound {
        if state[i] == 0 {
            if let Some(n) = g.node_at(i).filter(|&n| g.is_source(n)) {
                walk(n, &mut state, &mut stack)?;
            }
        }
    }
    Some(state.into_iter().map(|s| s == 2).collect())
}

/// Removes the nodes `live` does not hold, consumers before producers
/// (reverse topological order); whether any was removed.
pub(crate) fn remove_dead(g: &mut Graph, live: &[bool]) -> Result<bool, String> {
    if (0..g.index_bound()).all(|i| live[i] || g.node_at(i).is_none()) {
        return Ok(false);
    }
    let order = g.topo_order().map_err(|_| CYCLE.to_string())?;
    for &n in order.iter().rev() {
        if !live[n.index()] {
            g.remove_node(n).map_err(|e| e.to_string())?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::op::{Op, Role};
    use crate::ir::types::{DType, TensorType};
    use crate::ValueId;

    #[test]
    fn removes_unused_chains_only() {
        let mut g = Graph::new("t");
        let x = g.add_node("x", Op::Input { ty: TensorType::new(DType::F32, vec![4]) }, Role::Forward, &[]).unwrap();
        let xv = ValueId { node: x, slot: 0 };
        let a = g.add_node("a", Op::Relu, Role::Forward, &[xv]).unwrap();
        let dead1 = g.add_node("d1", Op::Tanh, Role::Forward, &[xv]).unwrap();
        let dead2 = g.add_node("d2", Op::Exp, Role::Forward, &[ValueId { node: dead1, slot: 0 }]).unwrap();
        let l = g
            .add_node(
                "l",
                Op::ReduceSum { axes: vec![0], keepdims: false },
                Role::Forward,
                &[ValueId { node: a, slot: 0 }],
            )
            .unwrap();
        g.loss = Some(ValueId { node: l, slot: 0 });
        assert!(Dce.run(&mut g).unwrap());
        assert!(!g.contains(dead1) && !g.contains(dead2));
        assert!(g.contains(a) && g.contains(x));
        assert!(!Dce.run(&mut g).unwrap(), "a second run changes nothing");
    }

    #[test]
    fn a_cycle_with_dead_code_is_an_error() {
        let mut g = Graph::new("t");
        let x = g.add_node("x", Op::Input { ty: TensorType::new(DType::F32, vec![4]) }, Role::Forward, &[]).unwrap();
        let xv = ValueId { node: x, slot: 0 };
        let a = g.add_node("a", Op::Relu, Role::Forward, &[xv]).unwrap();
        let b = g.add_node("b", Op::Relu, Role::Forward, &[ValueId { node: a, slot: 0 }]).unwrap();
        g.add_node("dead", Op::Relu, Role::Forward, &[xv]).unwrap();
        g.set_input(a, 0, ValueId { node: b, slot: 0 });
        assert!(Dce.run(&mut g.clone()).is_err(), "a dead cycle");
        g.loss = Some(ValueId { node: b, slot: 0 });
        assert!(Dce.run(&mut g).is_err(), "a live cycle");
    }
}
