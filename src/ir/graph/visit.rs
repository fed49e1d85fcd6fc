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
