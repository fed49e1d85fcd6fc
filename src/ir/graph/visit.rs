//! petgraph's graph traits for `&Graph`, so that petgraph's algorithms
//! (toposort, dominators, DFS and BFS, cycle checks) run on the IR as it is
//! stored: an edge runs from a value's producer to each node reading it.

use petgraph::visit::{
    GraphBase, IntoNeighbors, IntoNeighborsDirected, IntoNodeIdentifiers, NodeCount, NodeIndexable, VisitMap, Visitable,
};
use petgraph::Direction;

use super::*;

impl GraphBase for Graph {
    type NodeId = NodeId;
    /// (consumer, input port): a node's port reads one value.
    type EdgeId = (NodeId, u32);
}

impl<'a> IntoNeighbors for &'a Graph {
    type Neighbors = Box<dyn Iterator<Item = NodeId> + 'a>;

    /// The nodes reading `a`'s outputs, once per read.
    fn neighbors(self, a: NodeId) -> Self::Neighbors {
        Box::new(self.users(a).map(|(n, _)| n))
    }
}

impl<'a> IntoNeighborsDirected for &'a Graph {
    type NeighborsDirected = Box<dyn Iterator<Item = NodeId> + 'a>;

    fn neighbors_directed(self, n: NodeId, d: Direction) -> Self::NeighborsDirected {
        match d {
            Direction::Outgoing => self.neighbors(n),
            Direction::Incoming => Box::new(self.input_nodes(n)),
        }
    }
}

impl<'a> IntoNodeIdentifiers for &'a Graph {
    type NodeIdentifiers = Box<dyn Iterator<Item = NodeId> + 'a>;

    fn node_identifiers(self) -> Self::NodeIdentifiers {
        Box::new(self.node_ids())
    }
}

impl NodeIndexable for Graph {
    fn node_bound(&self) -> usize {
        self.bound()
    }

    fn to_index(&self, a: NodeId) -> usize {
        a.index()
    }

    fn from_index(&self, i: usize) -> NodeId {
        NodeId::at(u32::try_from(i).expect("a node index of this graph"))
    }
}

impl NodeCount for Graph {
    fn node_count(&self) -> usize {
        self.live
    }
}

/// The nodes a petgraph walk has visited, a bit per node index.
#[derive(Clone, Debug, Default)]
pub struct Visited(Vec<u64>);

impl VisitMap<NodeId> for Visited {
    fn visit(&mut self, a: NodeId) -> bool {
        let (w, b) = (a.index() / 64, 1u64 << (a.index() % 64));
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let first = self.0[w] & b == 0;
        self.0[w] |= b;
        first
    }

    fn is_visited(&self, a: &NodeId) -> bool {
        self.0.get(a.index() / 64).is_some_and(|w| w & (1u64 << (a.index() % 64)) != 0)
    }

    fn unvisit(&mut self, a: NodeId) -> bool {
        let was = self.is_visited(&a);
        if was {
            self.0[a.index() / 64] &= !(1u64 << (a.index() % 64));
        }
        was
    }
}

impl Visitable for Graph {
    type Map = Visited;

    fn visit_map(&self) -> Visited {
        Visited(vec![0; self.bound().div_ceil(64)])
    }

    fn reset_map(&self, map: &mut Visited) {
        map.0.clear();
        map.0.resize(self.bound().div_ceil(64), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::op::{Op, Role};
    use crate::ir::types::{DType, TensorType};

    #[test]
    fn petgraph_algorithms_run_on_the_ir() {
        let mut g = Graph::new("t");
        let x = g.add_node("x", Op::Input { ty: TensorType::new(DType::F32, vec![4]) }, Role::Forward, &[]).unwrap();
        let x = ValueId { node: x, slot: 0 };
        let a = g.add_node("a", Op::Relu, Role::Forward, &[x]).unwrap();
        let b = g.add_node("b", Op::Add, Role::Forward, &[ValueId { node: a, slot: 0 }, x]).unwrap();
        let order = petgraph::algo::toposort(&g, None).expect("acyclic");
        let at = |n: NodeId| order.iter().position(|&m| m == n).unwrap();
        assert_eq!(order.len(), 3);
        assert!(at(x.node) < at(a) && at(a) < at(b));
        assert!(!petgraph::algo::is_cyclic_directed(&g));
        let mut dfs = petgraph::visit::Dfs::new(&g, b);
        let mut seen = Vec::new();
        while let Some(n) = dfs.next(petgraph::visit::Reversed(&g)) {
            seen.push(n);
        }
        assert_eq!(seen.len(), 3, "walking back from b reaches everything");
        g.set_input(a, 0, ValueId { node: b, slot: 0 });
        assert!(petgraph::algo::is_cyclic_directed(&g));
        assert!(petgraph::algo::toposort(&g, None).is_err());
    }
}
