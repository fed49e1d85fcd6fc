//! Dead-code elimination: removes nodes that nothing observable depends on.
//!
//! Observable: the loss, parameter gradients, state updates, step outputs,
//! and every input, param and state declaration (they are the step's
//! interface, so they stay even when unread).

use crate::graph::{Graph, NodeId};

use super::{Pass, PassError};

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let mut live = vec![false; g.node_ids().map(|n| n.index() + 1).max().unwrap_or(0)];
        let mut stack: Vec<NodeId> = g
            .loss
            .iter()
            .chain(g.gradients.iter().map(|(_, v)| v))
            .chain(g.updates.iter().map(|(_, v)| v))
            .chain(g.outputs.iter())
            .map(|v| v.node)
            .chain(g.node_ids().filter(|&n| g.node(n).op.is_source()))
            .collect();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut live[n.index()], true) {
                continue;
            }
            stack.extend(g.inputs(n).into_iter().map(|v| v.node));
        }
        // Remove consumers before producers: reverse topological order.
        let order =
            g.topo_order().map_err(|_| PassError::Failed { pass: "dce", message: "the graph has a cycle".into() })?;
        let mut changed = false;
        for &n in order.iter().rev() {
            if !live[n.index()] {
                g.remove_node(n).map_err(|e| PassError::Failed { pass: "dce", message: e.to_string() })?;
                changed = true;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Op, Role};
    use crate::types::{DType, TensorType};
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
}
