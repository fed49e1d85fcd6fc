//! The graph IR: typed handles over a petgraph `StableGraph`.
//!
//! Every value is produced by exactly one node (graph inputs, parameters and
//! state are nodes too), so a value is named by `ValueId { node, slot }`.
//! Edges run from producer to consumer and carry the producer's output slot
//! and the consumer's input port; they are the only record of a node's
//! inputs. Raw petgraph indices do not leave this module.

use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

/// A node's inputs; most nodes have at most four.
pub type Inputs = SmallVec<[ValueId; 4]>;

use crate::format::Optimizer;
use crate::infer;
use crate::op::{Op, Precision, Role};
use crate::types::TensorType;

/// A node of a [`Graph`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

impl NodeId {
    /// A number that identifies the node within its graph (not stable across removals and insertions).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// An output of a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId {
    pub node: NodeId,
    pub slot: u32,
}

/// Where a node was written in its source file, for error messages.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// JSON section: `inputs`, `params`, `state`, `forward`, `backward` or `update`.
    pub section: &'static str,
    pub index: u32,
}

impl Origin {
    /// RFC 6901 pointer to the node's object in the source file.
    pub fn pointer(&self) -> String {
        format!("/{}/{}", self.section, self.index)
    }
}

/// One output of a node: its name and type.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub ty: TensorType,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub role: Role,
    /// A per-node override of the precision table.
    pub precision: Option<Precision>,
    pub outputs: Vec<Output>,
    pub origin: Option<Origin>,
}

/// An edge: producer output `slot` feeds consumer input `port`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub slot: u32,
    pub port: u32,
}

#[derive(Copy, Clone, Debug)]
enum Named {
    Value(ValueId),
    /// A multi-output node whose own name is not one of its value names.
    Node(NodeId),
}

/// An error from a graph mutation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("the name `{0}` is already defined")]
    DuplicateName(String),
    #[error("node `{node}`: {message}")]
    Type { node: String, message: String },
    #[error("no value is named `{0}`")]
    UnknownValue(String),
    #[error("node `{0}` still has users")]
    HasUsers(String),
}

/// A training graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    g: StableGraph<Node, Edge, petgraph::Directed, u32>,
    names: FxHashMap<String, Named>,
    /// The scalar loss value.
    pub loss: Option<ValueId>,
    /// For a graph with an explicit backward section: the gradient of each
    /// parameter, in parameter order.
    pub gradients: Vec<(NodeId, ValueId)>,
    /// State updates: after a step, the param or state node takes the value.
    pub updates: Vec<(NodeId, ValueId)>,
    /// Values reported by every step (metrics).
    pub outputs: Vec<ValueId>,
    pub optimizer: Option<Optimizer>,
    /// The safetensors file holding `init: file` values, relative to the
    /// graph file's folder.
    pub weights: Option<String>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    pub fn edge_count(&self) -> usize {
        self.g.edge_count()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id.0]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id.0)
    }

    /// All nodes, in index order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices().map(NodeId)
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.g[v.node.0].outputs[v.slot as usize].ty
    }

    pub fn value_name(&self, v: ValueId) -> &str {
        &self.g[v.node.0].outputs[v.slot as usize].name
    }

    pub fn value(&self, name: &str) -> Option<ValueId> {
        match self.names.get(name)? {
            Named::Value(v) => Some(*v),
            Named::Node(_) => None,
        }
    }

    /// Looks a node up by its name or by the name of one of its outputs.
    pub fn node_named(&self, name: &str) -> Option<NodeId> {
        match self.names.get(name)? {
            Named::Value(v) => Some(v.node),
            Named::Node(n) => Some(*n),
        }
    }

    /// Values of a node, one per output slot.
    pub fn values(&self, id: NodeId) -> impl Iterator<Item = ValueId> + '_ {
        (0..self.g[id.0].outputs.len() as u32).map(move |slot| ValueId { node: id, slot })
    }

    /// The inputs of a node, in port order.
    pub fn inputs(&self, id: NodeId) -> Inputs {
        let mut ins: SmallVec<[(u32, ValueId); 4]> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (e.weight().port, ValueId { node: NodeId(e.source()), slot: e.weight().slot }))
            .collect();
        if !ins.is_sorted_by_key(|(p, _)| *p) {
            ins.sort_unstable_by_key(|(p, _)| *p);
        }
        ins.into_iter().map(|(_, v)| v).collect()
    }

    /// The input ports of a node's incoming edges, repeats included.
    pub(crate) fn in_ports(&self, id: NodeId) -> Vec<u32> {
        self.g.edges_directed(id.0, Direction::Incoming).map(|e| e.weight().port).collect()
    }

    /// The consumers of a node's outputs: (consumer, edge).
    pub fn users(&self, id: NodeId) -> impl Iterator<Item = (NodeId, Edge)> + '_ {
        self.g.edges_directed(id.0, Direction::Outgoing).map(|e| (NodeId(e.target()), *e.weight()))
    }

    /// The consumers of one value: (consumer, input port).
    pub fn uses(&self, v: ValueId) -> Vec<(NodeId, u32)> {
        self.users(v.node).filter(|(_, e)| e.slot == v.slot).map(|(n, e)| (n, e.port)).collect()
    }

    /// Adds a node whose output names are `name` (slot 0) and `name:k`,
    /// typing it from its inputs.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        role: Role,
        inputs: &[ValueId],
    ) -> Result<NodeId, GraphError> {
        let name = name.into();
        let outs = default_output_names(&name, infer::num_outputs(&op));
        self.add_node_with_outputs(name, op, role, inputs, outs)
    }

    /// Adds a node with the given output names (the node is named after the
    /// first), typing it from its inputs.
    pub fn add_node_with_outputs(
        &mut self,
        name: String,
        op: Op,
        role: Role,
        inputs: &[ValueId],
        outs: Vec<String>,
    ) -> Result<NodeId, GraphError> {
        let tys = {
            let in_tys: Vec<&TensorType> = inputs.iter().map(|&v| self.ty(v)).collect();
            infer::infer(&op, &in_tys).map_err(|message| GraphError::Type { node: name.clone(), message })?
        };
        let id = self.add_untyped(name, op, role, outs, None)?;
        for (ty, out) in tys.into_iter().zip(self.g[id.0].outputs.iter_mut()) {
            out.ty = ty;
        }
        for (port, &v) in inputs.iter().enumerate() {
            self.connect(v, id, port as u32);
        }
        Ok(id)
    }

    /// Adds a node without inputs or types; the caller connects its inputs and
    /// then types the graph with [`Graph::infer_types`]. Used by parsers.
    pub fn add_untyped(
        &mut self,
        name: String,
        op: Op,
        role: Role,
        output_names: Vec<String>,
        origin: Option<Origin>,
    ) -> Result<NodeId, GraphError> {
        let own_value = output_names.first() == Some(&name);
        let placeholder = TensorType::scalar(crate::types::DType::F32);
        if own_value && output_names.len() == 1 {
            // The common case, with one probe of the name table.
            use std::collections::hash_map::Entry;
            return match self.names.entry(name) {
                Entry::Occupied(e) => Err(GraphError::DuplicateName(e.key().clone())),
                Entry::Vacant(e) => {
                    let name = e.key().clone();
                    let mut output_names = output_names;
                    let out = output_names.pop().unwrap_or_else(|| name.clone());
                    let outputs = vec![Output { name: out, ty: placeholder }];
                    let id = NodeId(self.g.add_node(Node { name, op, role, precision: None, outputs, origin }));
                    e.insert(Named::Value(ValueId { node: id, slot: 0 }));
                    Ok(id)
                }
            };
        }
        if !own_value && self.names.contains_key(&name) {
            return Err(GraphError::DuplicateName(name));
        }
        for (i, o) in output_names.iter().enumerate() {
            if self.names.contains_key(o) || output_names[..i].contains(o) || (!own_value && *o == name) {
                return Err(GraphError::DuplicateName(o.clone()));
            }
        }
        let outputs = output_names.into_iter().map(|name| Output { name, ty: placeholder.clone() }).collect();
        let id = NodeId(self.g.add_node(Node { name: String::new(), op, role, precision: None, outputs, origin }));
        for (slot, o) in self.g[id.0].outputs.iter().enumerate() {
            self.names.insert(o.name.clone(), Named::Value(ValueId { node: id, slot: slot as u32 }));
        }
        if !own_value {
            self.names.insert(name.clone(), Named::Node(id));
        }
        self.g[id.0].name = name;
        Ok(id)
    }

    /// Feeds `v` into input `port` of `to`.
    pub fn connect(&mut self, v: ValueId, to: NodeId, port: u32) {
        self.g.add_edge(v.node.0, to.0, Edge { slot: v.slot, port });
    }

    /// Makes every consumer of `old` read `new` instead.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        let edges: Vec<(EdgeIndex<u32>, NodeIndex<u32>, Edge)> = self
            .g
            .edges_directed(old.node.0, Direction::Outgoing)
            .filter(|e| e.weight().slot == old.slot)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (e, target, w) in edges {
            self.g.remove_edge(e);
            self.g.add_edge(new.node.0, target, Edge { slot: new.slot, port: w.port });
        }
        for r in [&mut self.loss].into_iter().flatten() {
            if *r == old {
                *r = new;
            }
        }
        for (_, v) in self.gradients.iter_mut().chain(self.updates.iter_mut()) {
            if *v == old {
                *v = new;
            }
        }
        for v in self.outputs.iter_mut() {
            if *v == old {
                *v = new;
            }
        }
    }

    /// Inserts `op` on `v`: a new node reads `v` and every former consumer of
    /// `v` reads the new node's output instead. This is "put a cast on an edge".
    pub fn intercept(
        &mut self,
        v: ValueId,
        name: impl Into<String>,
        op: Op,
        role: Role,
    ) -> Result<ValueId, GraphError> {
        let uses = self.uses(v);
        let id = self.add_node(name, op, role, &[v])?;
        let new = ValueId { node: id, slot: 0 };
        for (consumer, port) in uses {
            self.set_input(consumer, port, new);
        }
        Ok(new)
    }

    /// Makes input `port` of `node` read `v`.
    pub fn set_input(&mut self, node: NodeId, port: u32, v: ValueId) {
        let old: Vec<EdgeIndex<u32>> = self
            .g
            .edges_directed(node.0, Direction::Incoming)
            .filter(|e| e.weight().port == port)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        self.connect(v, node, port);
    }

    /// Removes a node that no other node reads.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Node, GraphError> {
        if self.users(id).next().is_some() {
            return Err(GraphError::HasUsers(self.node(id).name.clone()));
        }
        let node = self.g.remove_node(id.0).ok_or_else(|| GraphError::UnknownValue(format!("node #{}", id.index())))?;
        for o in &node.outputs {
            self.names.remove(&o.name);
        }
        self.names.remove(&node.name);
        Ok(node)
    }

    /// A topological order, deterministic: forward nodes first, then
    /// backward, then optimizer and scaler nodes; within a role, nodes go in
    /// index order, each right after the inputs it still waits for (so a
    /// graph written in order keeps its order, and an inserted cast stands
    /// just before its first reader). `Err` holds the nodes that lie on or
    /// behind a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let rank = |n: NodeIndex<u32>| match self.g[n].role {
            Role::Forward => 0usize,
            Role::Backward => 1,
            Role::Optimizer | Role::Scaler => 2,
        };
        let mut in_order = self.g.edge_indices().all(|e| {
            let (a, b) = self.g.edge_endpoints(e).expect("edge index from this graph");
            a.index() < b.index()
        });
        if in_order {
            let mut last = 0;
            in_order = self.g.node_indices().all(|n| std::mem::replace(&mut last, rank(n)) <= rank(n));
        }
        if in_order {
            return Ok(self.node_ids().collect());
        }
        let mut roots: [Vec<NodeIndex<u32>>; 3] = Default::default();
        for n in self.g.node_indices() {
            roots[rank(n)].push(n);
        }
        // 0: not seen, 1: entered (on the current path), 2: emitted.
        let mut state = vec![0u8; self.g.node_bound()];
        let mut order = Vec::with_capacity(self.g.node_count());
        enum Step {
            Enter(NodeIndex<u32>),
            Exit(NodeIndex<u32>),
        }
        let mut stack = Vec::new();
        let mut scratch: Vec<(u32, NodeIndex<u32>)> = Vec::new();
        for r in roots.iter().flatten() {
            stack.push(Step::Enter(*r));
            while let Some(step) = stack.pop() {
                match step {
                    Step::Exit(n) => {
                        state[n.index()] = 2;
                        order.push(NodeId(n));
                    }
                    Step::Enter(n) => match state[n.index()] {
                        2 => {}
                        1 => return Err(self.stuck_nodes()),
                        _ => {
                            state[n.index()] = 1;
                            stack.push(Step::Exit(n));
                            scratch.clear();
                            scratch.extend(
                                self.g.edges_directed(n, Direction::Incoming).map(|e| (e.weight().port, e.source())),
                            );
                            scratch.sort_unstable_by_key(|(p, _)| std::cmp::Reverse(*p));
                            stack.extend(
                                scratch.iter().filter(|(_, m)| state[m.index()] != 2).map(|&(_, m)| Step::Enter(m)),
                            );
                        }
                    },
                }
            }
        }
        Ok(order)
    }

    /// Nodes that Kahn's algorithm cannot order: on or behind a cycle.
    fn stuck_nodes(&self) -> Vec<NodeId> {
        let mut indeg = vec![0u32; self.g.node_bound()];
        for e in self.g.edge_indices() {
            let (_, b) = self.g.edge_endpoints(e).expect("edge index from this graph");
            indeg[b.index()] += 1;
        }
        let mut ready: Vec<NodeIndex<u32>> = self.g.node_indices().filter(|n| indeg[n.index()] == 0).collect();
        while let Some(n) = ready.pop() {
            for t in self.g.neighbors_directed(n, Direction::Outgoing) {
                indeg[t.index()] -= 1;
                if indeg[t.index()] == 0 {
                    ready.push(t);
                }
            }
        }
        self.node_ids().filter(|n| indeg[n.index()] > 0).collect()
    }

    /// Types every node from its inputs, in topological order. Returns the
    /// problems found, one per node, skipping nodes behind a failed one.
    pub fn infer_types(&mut self, order: &[NodeId]) -> Vec<(NodeId, String)> {
        let mut failed = vec![false; self.g.node_bound()];
        let mut problems = Vec::new();
        for &id in order {
            let ins = self.inputs(id);
            if ins.iter().any(|v| failed[v.node.index()]) {
                failed[id.index()] = true;
                continue;
            }
            let result = {
                let tys: Vec<&TensorType> = ins.iter().map(|&v| self.ty(v)).collect();
                infer::infer(&self.g[id.0].op, &tys)
            };
            match result {
                Ok(tys) => {
                    let node = &mut self.g[id.0];
                    if tys.len() != node.outputs.len() {
                        failed[id.index()] = true;
                        problems.push((
                            id,
                            format!(
                                "{} produces {} outputs but {} are named",
                                node.op.name(),
                                tys.len(),
                                node.outputs.len()
                            ),
                        ));
                        continue;
                    }
                    for (o, t) in node.outputs.iter_mut().zip(tys) {
                        o.ty = t;
                    }
                }
                Err(m) => {
                    failed[id.index()] = true;
                    problems.push((id, m));
                }
            }
        }
        problems
    }

    /// Makes room for `nodes` more nodes and `edges` more edges.
    pub fn reserve(&mut self, nodes: usize, edges: usize) {
        self.g.reserve_nodes(nodes);
        self.g.reserve_edges(edges);
        self.names.reserve(nodes);
    }

    /// A name not yet used in the graph, starting from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.names.contains_key(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !self.names.contains_key(n)).expect("an unused name exists")
    }

    /// The parameter nodes, in index order.
    pub fn params(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.node_ids().filter(|&n| matches!(self.node(n).op, Op::Param { .. }))
    }

    /// Whether the name map agrees with the nodes (checked by the verifier).
    pub(crate) fn name_map_problems(&self) -> Vec<String> {
        // Fast path: if every value entry names an output that bears its key,
        // entries are one-to-one with outputs (distinct keys, equal names), so
        // equal counts mean every output is registered. One sequential pass
        // over the table instead of a lookup per output.
        let mut entries = 0usize;
        let consistent = self.names.iter().all(|(k, named)| match named {
            Named::Value(v) => {
                entries += 1;
                self.g.node_weight(v.node.0).and_then(|n| n.outputs.get(v.slot as usize)).is_some_and(|o| o.name == *k)
            }
            Named::Node(n) => self.g.node_weight(n.0).is_some_and(|n| n.name == *k),
        });
        let outputs: usize = self.g.node_weights().map(|n| n.outputs.len()).sum();
        if consistent && entries == outputs {
            return Vec::new();
        }
        let mut out = Vec::new();
        for id in self.node_ids() {
            let node = self.node(id);
            for (slot, o) in node.outputs.iter().enumerate() {
                match self.names.get(&o.name) {
                    Some(Named::Value(v)) if *v == (ValueId { node: id, slot: slot as u32 }) => {}
                    _ => out.push(format!(
                        "output `{}` of node `{}` is not registered under its name (duplicate name?)",
                        o.name, node.name
                    )),
                }
            }
        }
        if out.is_empty() {
            out.push("the name table holds names that no node has (a node was renamed?)".to_string());
        }
        out
    }
}

/// `name` for slot 0, `name:k` for slot k.
pub fn default_output_names(name: &str, n: usize) -> Vec<String> {
    let mut v = Vec::with_capacity(n);
    v.push(name.to_string());
    for k in 1..n {
        v.push(format!("{name}:{k}"));
    }
    v
}

/// Two graphs are equal when they have the same metadata and the same nodes
/// (compared by name, op, role, precision, outputs and inputs) in the same
/// topological order; node indices do not matter.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        let (Ok(a), Ok(b)) = (self.topo_order(), other.topo_order()) else {
            return false;
        };
        if self.name != other.name
            || a.len() != b.len()
            || self.optimizer != other.optimizer
            || self.weights != other.weights
        {
            return false;
        }
        let vname = |g: &Graph, v: Option<ValueId>| v.map(|v| g.value_name(v).to_string());
        let pairs = |g: &Graph, ps: &[(NodeId, ValueId)]| -> Vec<(String, String)> {
            ps.iter().map(|&(n, v)| (g.node(n).name.clone(), g.value_name(v).to_string())).collect()
        };
        let outs = |g: &Graph| -> Vec<String> { g.outputs.iter().map(|&v| g.value_name(v).to_string()).collect() };
        if vname(self, self.loss) != vname(other, other.loss)
            || pairs(self, &self.gradients) != pairs(other, &other.gradients)
            || pairs(self, &self.updates) != pairs(other, &other.updates)
            || outs(self) != outs(other)
        {
            return false;
        }
        a.iter().zip(&b).all(|(&x, &y)| {
            let (nx, ny) = (self.node(x), other.node(y));
            let ix: Vec<&str> = self.inputs(x).into_iter().map(|v| self.value_name(v)).collect();
            let iy: Vec<&str> = other.inputs(y).into_iter().map(|v| other.value_name(v)).collect();
            nx.name == ny.name
                && nx.op == ny.op
                && nx.role == ny.role
                && nx.precision == ny.precision
                && nx.outputs == ny.outputs
                && ix == iy
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DType, TensorType};

    fn small() -> (Graph, ValueId, ValueId) {
        let mut g = Graph::new("t");
        let x = g.add_node("x", Op::Input { ty: TensorType::new(DType::F32, vec![4, 8]) }, Role::Forward, &[]).unwrap();
        let w = g
            .add_node(
                "w",
                Op::Param { ty: TensorType::new(DType::F32, vec![8, 2]), init: crate::op::Init::Zeros },
                Role::Forward,
                &[],
            )
            .unwrap();
        let x = ValueId { node: x, slot: 0 };
        let w = ValueId { node: w, slot: 0 };
        (g, x, w)
    }

    #[test]
    fn intercept_rewires_every_consumer() {
        let (mut g, x, w) = small();
        let mm =
            g.add_node("y", Op::Matmul { transpose_a: false, transpose_b: false }, Role::Forward, &[x, w]).unwrap();
        let r = g.add_node("r", Op::Relu, Role::Forward, &[ValueId { node: mm, slot: 0 }]).unwrap();
        let c = g.intercept(x, "x.f16", Op::Cast { to: DType::F16 }, Role::Forward).unwrap();
        assert_eq!(g.inputs(mm).as_slice(), [c, w]);
        assert_eq!(g.uses(x).len(), 1);
        assert_eq!(g.ty(c).dtype, DType::F16);
        let order = g.topo_order().unwrap();
        let pos = |n: NodeId| order.iter().position(|&m| m == n).unwrap();
        assert!(pos(c.node) < pos(mm) && pos(mm) < pos(r));
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let (mut g, x, _) = small();
        assert_eq!(g.add_node("x", Op::Relu, Role::Forward, &[x]).unwrap_err(), GraphError::DuplicateName("x".into()));
    }

    #[test]
    fn cycle_is_found() {
        let (mut g, x, _) = small();
        let a = g.add_node("a", Op::Relu, Role::Forward, &[x]).unwrap();
        let b = g.add_node("b", Op::Relu, Role::Forward, &[ValueId { node: a, slot: 0 }]).unwrap();
        g.set_input(a, 0, ValueId { node: b, slot: 0 });
        let stuck = g.topo_order().unwrap_err();
        assert_eq!(stuck, vec![a, b]);
    }

    #[test]
    fn a_renamed_output_is_caught_by_the_name_check() {
        let (mut g, x, _) = small();
        assert!(g.name_map_problems().is_empty());
        g.node_mut(x.node).outputs[0].name = "y".into();
        assert!(!g.name_map_problems().is_empty());
        g.node_mut(x.node).outputs[0].name = "x".into();
        g.node_mut(x.node).name = "renamed".into();
        assert!(g.name_map_problems().is_empty(), "the node name of a single-output node is its value's");
    }

    #[test]
    fn remove_refuses_a_used_node() {
        let (mut g, x, _) = small();
        let a = g.add_node("a", Op::Relu, Role::Forward, &[x]).unwrap();
        assert!(g.remove_node(x.node).is_err());
        g.remove_node(a).unwrap();
        assert!(g.value("a").is_none());
    }
}
