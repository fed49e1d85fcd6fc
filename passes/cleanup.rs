//! cleanup: folds casts that change nothing, then removes dead code.
//!
//! A cast to the type its input already has vanishes. A chain
//! `cast(cast(x: A -> B) -> A)` folds to `x` only when B holds every value of
//! A exactly (f16 -> f32 -> f16); a chain that rounds (f32 -> f16 -> f32)
//! stays, because it changes the values.

use crate::ir::graph::{Graph, NodeId, ValueId};
use crate::ir::op::Op;
use crate::ir::types::DType;

use super::dce;
use super::{Pass, PassError};

pub struct Cleanup;

/// Whether every value of `from` is exactly representable in `via`.
pub fn exact_via(from: DType, via: DType) -> bool {
    from == via || (from.is_low() && via == DType::F32) || (from == DType::I32 && via == DType::I64)
}

/// What a cast node folds to in the graph as it is: its input when that
/// already has the cast's type, or the source of an exact widening it undoes.
fn fold(g: &Graph, n: NodeId) -> Option<ValueId> {
    if !g.is_cast(n) {
        return None;
    }
    let &Op::Cast { to } = g.node(n).op() else { return None };
    let input = g.first_input(n)?;
    if g.ty(input).dtype == to {
        Some(input)
    } else if !g.is_cast(input.node) {
        None
    } else if let &Op::Cast { to: via } = g.node(input.node).op() {
        let src = g.first_input(input.node)?;
        (g.ty(src).dtype == to && exact_via(to, via)).then_some(src)
    } else {
        None
    }
}

impl Pass for Cleanup {
    fn name(&self) -> &'static str {
        "cleanup"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let fail = |message: String| PassError::Failed { pass: "cleanup", message };
        // Casts fold in topological order (a fold can make the next cast in
        // a chain foldable). When no cast folds in the graph as it is, none
        // would in that order either, and nothing changes.
        let casts: Vec<NodeId> = g.casts().collect();
        let any = casts.iter().enumerate().any(|(k, &n)| {
            // The casts and what they read, fetched a few casts ahead.
            if let Some(&m) = casts.get(k + 16) {
                g.prefetch_node(m);
            }
            if let Some(v) = casts.get(k + 8).and_then(|&m| g.first_input(m)) {
                g.prefetch_node(v.node);
            }
            fold(g, n).is_some()
        });
        let mut changed = false;
        if any {
            let order = g.topo_order().map_err(|_| fail(dce::CYCLE.into()))?;
            for n in order {
                if let Some(r) = fold(g, n) {
                    g.replace_uses(ValueId { node: n, slot: 0 }, r);
                    changed = true;
                }
            }
        }
        if any || dce::maybe_dead(g) {
            let live = dce::live(g, |_| {}).ok_or_else(|| fail(dce::CYCLE.into()))?;
            // A cycle no live node is on shows when the dead are ordered for removal.
            let pass = if any { "dce" } else { "cleanup" };
            changed |= dce::remove_dead(g, &live).map_err(|message| PassError::Failed { pass, message })?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::op::Role;
    use crate::ir::types::TensorType;

    fn chain(first: DType, via: DType) -> (Graph, ValueId, ValueId) {
        let mut g = Graph::new("t");
        let x = g.add_node("x", Op::Input { ty: TensorType::new(first, vec![4]) }, Role::Forward, &[]).unwrap();
        let x = ValueId { node: x, slot: 0 };
        let a = g.add_node("a", Op::Cast { to: via }, Role::Forward, &[x]).unwrap();
        let b = g.add_node("b", Op::Cast { to: first }, Role::Forward, &[ValueId { node: a, slot: 0 }]).unwrap();
        let r = g.add_node("r", Op::Relu, Role::Forward, &[ValueId { node: b, slot: 0 }]).unwrap();
        let l = g.add_node(
            "l",
            Op::ReduceSum { axes: vec![0], keepdims: false },
            Role::Forward,
            &[ValueId { node: r, slot: 0 }],
        );
        g.loss = Some(ValueId { node: l.unwrap(), slot: 0 });
        (g, x, ValueId { node: r, slot: 0 })
    }

    #[test]
    fn exact_round_trip_folds() {
        let (mut g, x, r) = chain(DType::F16, DType::F32);
        assert!(Cleanup.run(&mut g).unwrap());
        assert_eq!(g.inputs(r.node).as_slice(), [x]);
        assert_eq!(g.node_count(), 3);
    }

    #[test]
    fn rounding_round_trip_stays() {
        let (mut g, x, r) = chain(DType::F32, DType::F16);
        assert!(!Cleanup.run(&mut g).unwrap());
        assert_ne!(g.inputs(r.node).as_slice(), [x]);
        assert_eq!(g.node_count(), 5);
        let (mut g, _, _) = chain(DType::F16, DType::Bf16);
        assert!(!Cleanup.run(&mut g).unwrap(), "f16 -> bf16 -> f16 loses mantissa bits");
    }
}
