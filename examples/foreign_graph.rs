//! Mixed precision on another compiler's graph, with no conversion to mpc's IR.
//!
//! `Toy` is a stand-in for your compiler's IR: a petgraph graph whose nodes
//! are op names and whose edges carry a dtype. Implementing
//! `mpc::passes::embed::MixedPrecisionGraph` for it (about 40 lines) is all
//! it takes to get mpc's TensorFlow-style autocast and its loss-scale plan.
//!
//! Run: `cargo run --example foreign_graph`

use mpc::passes::embed::{self, ForeignEdge, MixedPrecisionGraph, NodePrecision};
use mpc::passes::Class;
use mpc::{DType, Role};
use petgraph::graph::{DiGraph, EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;

/// A node of the toy IR.
#[derive(Clone, Debug)]
pub struct ToyNode {
    pub op: &'static str,
    pub role: Role,
}

/// The toy compiler's graph: edges carry the dtype of the value on them.
pub struct Toy {
    pub g: DiGraph<ToyNode, DType>,
}

impl Toy {
    /// x -> MatMul(w1) -> BiasAdd -> Relu -> MatMul(w2) -> Softmax -> loss,
    /// with a backward MatMul feeding the optimizer.
    pub fn mlp() -> (Toy, Vec<NodeIndex>) {
        let mut g = DiGraph::new();
        let mut n = |op, role| g.add_node(ToyNode { op, role });
        let ids = vec![
            n("Input", Role::Forward),       // 0
            n("Weight", Role::Forward),      // 1
            n("MatMul", Role::Forward),      // 2
            n("BiasAdd", Role::Forward),     // 3
            n("Relu", Role::Forward),        // 4
            n("Weight", Role::Forward),      // 5
            n("MatMul", Role::Forward),      // 6
            n("Softmax", Role::Forward),     // 7
            n("LossGrad", Role::Backward),   // 8: the seed
            n("MatMul", Role::Backward),     // 9: dW2
            n("ApplyAdam", Role::Optimizer), // 10
            n("FancyNewOp", Role::Forward),  // 11: an op nobody has classified
        ];
        for (a, b) in [(0, 2), (1, 2), (2, 3), (3, 4), (4, 6), (5, 6), (6, 7), (8, 9), (4, 9), (9, 10), (7, 11)] {
            g.add_edge(ids[a], ids[b], DType::F32);
        }
        (Toy { g }, ids)
    }
}

impl MixedPrecisionGraph for Toy {
    type Node = NodeIndex;
    type Edge = EdgeIndex;

    fn nodes(&self) -> Vec<NodeIndex> {
        petgraph::algo::toposort(&self.g, None).expect("the toy graph is acyclic")
    }

    fn edges(&self) -> Vec<ForeignEdge<NodeIndex, EdgeIndex>> {
        self.g
            .edge_references()
            .map(|e| ForeignEdge { id: e.id(), from: e.source(), from_slot: 0, to: e.target() })
            .collect()
    }

    fn precision(&self, n: NodeIndex) -> NodePrecision {
        match self.g[n].op {
            "MatMul" => NodePrecision::Class(Class::Low),
            "BiasAdd" => NodePrecision::Class(Class::Infer),
            "Relu" => NodePrecision::Class(Class::Clear),
            "Softmax" | "LossGrad" | "ApplyAdam" => NodePrecision::Class(Class::Fp32),
            "Input" | "Weight" | "Cast" => NodePrecision::Fixed,
            _ => NodePrecision::Unknown,
        }
    }

    fn edge_dtype(&self, e: EdgeIndex) -> DType {
        self.g[e]
    }

    fn insert_cast(&mut self, edges: &[EdgeIndex], to: DType) {
        let (src, _) = self.g.edge_endpoints(edges[0]).expect("edge of this graph");
        let cast = self.g.add_node(ToyNode { op: "Cast", role: self.g[src].role });
        let from = self.g[edges[0]];
        self.g.add_edge(src, cast, from);
        for &e in edges {
            let (_, dst) = self.g.edge_endpoints(e).expect("edge of this graph");
            self.g.add_edge(cast, dst, to);
        }
        // Remove after adding: petgraph moves the last edge into a removed slot.
        let mut old: Vec<EdgeIndex> = edges.to_vec();
        old.sort();
        for e in old.into_iter().rev() {
            self.g.remove_edge(e);
        }
    }

    fn role(&self, n: NodeIndex) -> Role {
        self.g[n].role
    }

    fn is_loss_seed(&self, n: NodeIndex) -> bool {
        self.g[n].op == "LossGrad"
    }
}

/// Applies a report: low nodes' float outputs become `low`.
pub fn retype(toy: &mut Toy, low_nodes: &[NodeIndex], low: DType) {
    for &n in low_nodes {
        let out: Vec<EdgeIndex> = toy.g.edges_directed(n, petgraph::Direction::Outgoing).map(|e| e.id()).collect();
        for e in out {
            if toy.g[e].is_float() {
                toy.g[e] = low;
            }
        }
    }
}

#[allow(dead_code)]
fn main() {
    let (mut toy, _) = Toy::mlp();
    let plan = embed::plan_loss_scale(&toy);
    println!(
        "loss scaling rewrites {} seed edge(s) and {} gradient edge(s)",
        plan.seed_edges.len(),
        plan.gradient_edges.len()
    );
    let report = embed::autocast(&mut toy, DType::F16);
    retype(&mut toy, &report.low, DType::F16);
    println!("{} node(s) in f16, {} cast(s) inserted", report.low.len(), report.casts);
    for n in &report.unknown {
        println!("warning: `{}` has no precision class; it computes in f32", toy.g[*n].op);
    }
    for e in toy.g.edge_references() {
        println!("{:>10} -> {:<10} {}", toy.g[e.source()].op, toy.g[e.target()].op, e.weight());
    }
}
