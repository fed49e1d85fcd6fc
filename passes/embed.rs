//! Mixed-precision planning for another compiler's graph, with no
//! conversion to mpc's IR.
//!
//! Implement [`MixedPrecisionGraph`] for your graph type (walk nodes and
//! edges, say an op's precision class and an edge's dtype, put a cast on
//! edges) and call [`autocast`]: it paints the graph exactly as mpc's own
//! autocast pass does and inserts one cast per (value, type) through your
//! `insert_cast`. [`plan_loss_scale`] says which edges loss scaling rewrites.

use std::collections::HashMap;
use std::hash::Hash;

use crate::ir::op::Role;
use crate::ir::types::DType;

use super::paint::{paint, Kind, PaintInput, Pin, Rule};
use super::table::Class;

/// How the painter should treat a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NodePrecision {
    /// An op with a precision class.
    Class(Class),
    /// A node the user pinned to the low type or to FP32.
    Pinned(Pin),
    /// An op with no class: FP32, reported as a warning.
    Unknown,
    /// Keeps its type and is never a reason to change others' (inputs,
    /// weights, casts, integer ops).
    Fixed,
}

/// One edge of a foreign graph: output `from_slot` of `from` feeds `to`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ForeignEdge<N, E> {
    pub id: E,
    pub from: N,
    pub from_slot: usize,
    pub to: N,
}

/// The view of another compiler's graph that mixed-precision planning needs.
pub trait MixedPrecisionGraph {
    type Node: Copy + Eq + Hash;
    type Edge: Copy + Eq + Hash;

    /// Every node, in topological order.
    fn nodes(&self) -> Vec<Self::Node>;
    /// Every data edge.
    fn edges(&self) -> Vec<ForeignEdge<Self::Node, Self::Edge>>;
    /// The node's precision class (usually from the op kind and a table).
    fn precision(&self, n: Self::Node) -> NodePrecision;
    /// The element type the edge carries.
    fn edge_dtype(&self, e: Self::Edge) -> DType;
    /// Inserts one cast to `to` of the value that all of `edges` carry (they
    /// share their source) and makes those edges read the cast.
    fn insert_cast(&mut self, edges: &[Self::Edge], to: DType);
    /// The node's role in a training step (for loss-scale planning).
    fn role(&self, _n: Self::Node) -> Role {
        Role::Forward
    }
    /// Whether the node is the loss-gradient seed.
    fn is_loss_seed(&self, _n: Self::Node) -> bool {
        false
    }
}

/// What [`autocast`] did.
#[derive(Clone, Debug)]
pub struct ForeignReport<N> {
    /// Nodes that compute in the low type.
    pub low: Vec<N>,
    /// Casts inserted (one per value and type).
    pub casts: usize,
    /// Unknown ops, which compute in FP32.
    pub unknown: Vec<N>,
}

/// Paints `g` for the low type `low` and inserts the casts.
///
/// Afterwards the nodes in [`ForeignReport::low`] compute in `low` (retype
/// their float outputs); every other painted node computes in FP32.
pub fn autocast<G: MixedPrecisionGraph>(g: &mut G, low: DType) -> ForeignReport<G::Node> {
    let nodes = g.nodes();
    let index: HashMap<G::Node, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let kinds: Vec<Kind> = nodes
        .iter()
        .map(|&n| match g.precision(n) {
            NodePrecision::Class(c) => Kind::Op { class: Some(c), pin: None },
            NodePrecision::Pinned(p) => Kind::Op { class: None, pin: Some(p) },
            NodePrecision::Unknown => Kind::Op { class: None, pin: None },
            NodePrecision::Fixed => Kind::Fixed,
        })
        .collect();
    let edges = g.edges();
    let mut fanin = vec![Vec::new(); nodes.len()];
    let mut fanout = vec![Vec::new(); nodes.len()];
    for e in &edges {
        if !g.edge_dtype(e.id).is_float() {
            continue;
        }
        if let (Some(&a), Some(&b)) = (index.get(&e.from), index.get(&e.to)) {
            fanin[b].push(a as u32);
            fanout[a].push(b as u32);
        }
    }
    let input = PaintInput { kinds, fanin, fanout, order: (0..nodes.len() as u32).collect() };
    let painting = paint(&input, low == DType::Bf16);

    // One cast per (source value, type), shared by every edge that needs it.
    // A painted producer's output will be in its painted type, whatever the
    // edge says now.
    let mut groups: HashMap<(G::Node, usize, DType), Vec<G::Edge>> = HashMap::new();
    let mut group_order = Vec::new();
    for e in &edges {
        let Some(&to) = index.get(&e.to) else { continue };
        let declared = g.edge_dtype(e.id);
        let have = match index.get(&e.from) {
            Some(&from) if declared.is_float() && !matches!(input.kinds[from], Kind::Fixed) => {
                if painting.low[from] {
                    low
                } else {
                    DType::F32
                }
            }
            _ => declared,
        };
        if !have.is_float() || matches!(input.kinds[to], Kind::Fixed) {
            continue;
        }
        let want = if painting.low[to] { low } else { DType::F32 };
        if have != want {
            let key = (e.from, e.from_slot, want);
            groups
                .entry(key)
                .or_insert_with(|| {
                    group_order.push(key);
                    Vec::new()
                })
                .push(e.id);
        }
    }
    for key in &group_order {
        g.insert_cast(&groups[key], key.2);
    }
    ForeignReport {
        low: nodes.iter().zip(&painting.low).filter(|(_, &l)| l).map(|(&n, _)| n).collect(),
        casts: group_order.len(),
        unknown: nodes.iter().zip(&painting.rule).filter(|(_, &r)| r == Rule::Unknown).map(|(&n, _)| n).collect(),
    }
}

/// The edges loss scaling rewrites.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScalePlan<E> {
    /// Edges out of the loss seed: multiply by the scale S.
    pub seed_edges: Vec<E>,
    /// Parameter-gradient edges entering the optimizer: unscale in FP32
    /// (multiply by 1/S computed in f64), check all together for inf/NaN,
    /// skip the step on overflow.
    pub gradient_edges: Vec<E>,
}

/// Which edges a loss-scale rewrite touches: exactly the seed's outgoing
/// edges and the edges from a backward node into an optimizer node.
pub fn plan_loss_scale<G: MixedPrecisionGraph>(g: &G) -> LossScalePlan<G::Edge> {
    let mut plan = LossScalePlan { seed_edges: Vec::new(), gradient_edges: Vec::new() };
    for e in g.edges() {
        if g.is_loss_seed(e.from) {
            plan.seed_edges.push(e.id);
        } else if g.role(e.from) == Role::Backward && g.role(e.to) == Role::Optimizer {
            plan.gradient_edges.push(e.id);
        }
    }
    plan
}
