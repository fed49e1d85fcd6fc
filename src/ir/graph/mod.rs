//! The graph IR: nodes by index, their inputs in one arena.
//!
//! Every value is produced by exactly one node (graph inputs, parameters and
//! state are nodes too), so a value is named by `ValueId { node, slot }`.
//! A node's inputs are its entries in the edge arena (`wires`), in port
//! order; each entry also links its producer's list of uses. petgraph's
//! traits are implemented for `&Graph` (`visit.rs`), so its algorithms run
//! on the IR directly.
//!
//! A node is not an object of its own but its entries in tables by node
//! index (docs/FLAT_IR.md): an 8-byte record (interned op, role, precision
//! pin), its name, the type of its first output, and a meta byte (vacancy,
//! role rank, whether a cast or a source) that whole-graph walks read
//! alone. [`Graph::node`] gives a view over them. The few nodes whose
//! outputs are not one value named as the node keep their outputs in a
//! side map. The name table stores no strings: an entry is the name's hash
//! and the node (and output slot) it names, and a probe compares against
//! the node's name.

use std::hash::Hasher;

use compact_str::CompactString;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use smallvec::SmallVec;

/// A node's inputs; most nodes have at most four.
pub type Inputs = SmallVec<[ValueId; 4]>;

use crate::ir::infer;
use crate::ir::op::{Op, Precision, Role};
use crate::ir::optimizer::Optimizer;
use crate::ir::types::TensorType;

mod add;
mod dense;
mod eq;
mod memo;
mod meta;
mod names;
mod node;
mod ops;
mod order;
mod prefault;
mod types;
mod visit;
mod wires;

pub use node::{Node, Origin, SECTIONS};
use node::{Output, Rec};
use ops::{OpId, Ops};
pub use visit::Visited;

pub(crate) use dense::{DenseMap, DenseSet};
pub(crate) use memo::InferMemo;
use memo::{IdMemo, TypeIds};
use meta::*;
pub(crate) use names::name_hash;
use names::*;
use types::{TypeId, Types};
use wires::Wires;

/// A node of a [`Graph`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    /// A number that identifies the node within its graph (not stable across removals and insertions).
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }

    #[inline]
    fn at(index: u32) -> NodeId {
        NodeId(index)
    }
}

/// An output of a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId {
    pub node: NodeId,
    pub slot: u32,
}

/// An edge: producer output `slot` feeds consumer input `port`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub slot: u32,
    pub port: u32,
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
    /// By node index: the op, role and precision pin.
    recs: Vec<Rec>,
    /// By node index: the node's name (empty at a vacated index).
    labels: Vec<CompactString>,
    /// The outputs of the nodes whose outputs are not one value named as
    /// the node (`Rec::single` false), by node index.
    outs: FxHashMap<u32, Box<[Output]>>,
    /// The distinct ops.
    ops: Ops,
    /// The live nodes.
    live: usize,
    /// Vacated indices, the last vacated on top: a new node takes it first.
    vacated: Vec<u32>,
    wires: Wires,
    /// A byte per node index (see `RANK`, `VACANT`, `STALE`, `CAST`).
    meta: Vec<u8>,
    names: Names,
    /// The distinct types of the nodes' outputs.
    types: Types,
    /// By node index, the type of output 0 (also in `outs` for a node
    /// there).
    ty0: Vec<TypeId>,
    /// Shape inference's recent results, over type ids.
    memo: IdMemo,
    /// Nodes from `add_deferred` whose names are not in the table yet, with
    /// their names' hashes.
    deferred: Vec<(NodeId, u64)>,
    /// Where parsed nodes were written, by node index (passes' nodes have
    /// none, and the vector ends at the last parsed node).
    origins: Vec<Option<Origin>>,
    /// Nodes registered under their own name as well as their values' (a
    /// multi-output node whose own name is not one of its value names).
    node_names: FxHashSet<u32>,
    /// How far the room of `recs`, `labels`, `ty0` and `meta` has been
    /// backed ahead of use (see `prefault`).
    ahead: [prefault::Ahead; 4],
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
        self.live
    }

    pub fn edge_count(&self) -> usize {
        self.wires.count()
    }

    /// Node `id`; panics when there is none (a removed node), as indexing does.
    #[inline]
    pub fn node(&self, id: NodeId) -> Node<'_> {
        if !self.contains(id) {
            no_node(id)
        }
        Node { g: self, i: id.0 }
    }

    /// The node at index `i`, if there is one.
    #[inline]
    fn weight(&self, i: usize) -> Option<Node<'_>> {
        self.node_at(i).map(|id| Node { g: self, i: id.0 })
    }

    /// The record of node `id`, which must be there.
    #[inline]
    fn rec_mut(&mut self, id: NodeId) -> &mut Rec {
        if !self.contains(id) {
            no_node(id)
        }
        &mut self.recs[id.index()]
    }

    /// Sets node `id`'s output types, in slot order.
    fn put_types(&mut self, id: NodeId, ids: &[TypeId]) {
        if !self.rec_mut(id).single {
            if let Some(outs) = self.outs.get_mut(&id.0) {
                for (o, &t) in outs.iter_mut().zip(ids) {
                    o.ty = t;
                }
                if outs.is_empty() {
                    return;
                }
            }
        }
        if let Some(&t) = ids.first() {
            self.ty0[id.index()] = t;
        }
    }

    /// Names output `slot` of node `id` (not in the graph's name table: see
    /// [`Graph::rename`]; the verifier reports the difference).
    pub fn set_output_name(&mut self, id: NodeId, slot: usize, name: &str) {
        let node = self.node(id);
        if node.output_name(slot) == name {
            return;
        }
        let (own, ty0) = (&self.labels[id.index()], self.ty0[id.index()]);
        let outs = self.outs.entry(id.0).or_insert_with(|| Box::new([Output { name: None, ty: ty0 }]));
        outs[slot].name = (name != own).then(|| name.into());
        // One output named as the node is the usual kind again.
        let single = outs.len() == 1 && outs[0].name.is_none();
        if single {
            self.outs.remove(&id.0);
        }
        self.recs[id.index()].single = single;
    }

    /// Where a parsed node was written in its source file.
    pub fn origin(&self, id: NodeId) -> Option<Origin> {
        self.origins.get(id.index()).copied().flatten()
    }

    /// Sets a node's precision pin (its override of the precision table).
    pub fn set_precision(&mut self, id: NodeId, p: Option<Precision>) {
        self.rec_mut(id).precision = p;
    }

    /// Replaces a node's op (its inputs and output types stay as they are:
    /// the caller keeps them right, or re-types the graph).
    pub fn set_op(&mut self, id: NodeId, op: Op) {
        let role = self.rec_mut(id).role;
        self.meta[id.index()] = meta_of(&op, role);
        self.recs[id.index()].op = self.ops.intern(op);
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.meta.get(id.index()).is_some_and(|m| m & VACANT == 0)
    }

    /// All nodes, in index order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.meta.iter().enumerate().filter(|(_, m)| *m & VACANT == 0).map(|(i, _)| NodeId::at(i as u32))
    }

    /// One past the largest node index.
    fn bound(&self) -> usize {
        self.meta.len()
    }

    /// The meta bits of node index `i`.
    #[inline]
    fn meta(&self, i: usize) -> u8 {
        self.meta[i]
    }

    /// Whether the node is a cast (without reading the node, mostly).
    #[inline]
    pub(crate) fn is_cast(&self, id: NodeId) -> bool {
        self.meta(id.index()) & CAST != 0
    }

    /// The casts, in index order (without reading the other nodes).
    pub(crate) fn casts(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.bound()).filter(|&i| self.meta(i) & (CAST | VACANT) == CAST).map(|i| NodeId::at(i as u32))
    }

    /// The nodes no node reads, in index order (a scan of the node vector).
    pub(crate) fn sinks(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.node_ids().filter(|n| self.wires.unread(n.index()))
    }

    /// Whether the node is an input, param or state declaration (without reading it, mostly).
    #[inline]
    pub(crate) fn is_source(&self, id: NodeId) -> bool {
        self.meta(id.index()) & SOURCE != 0
    }

    #[inline]
    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.types.get(self.ty_id(v))
    }

    #[inline]
    fn ty_id(&self, v: ValueId) -> TypeId {
        // The meta byte says the node is there (a removed node's `ty0` is
        // stale): the node itself answers, and panics, otherwise.
        if v.slot == 0 && self.contains(v.node) {
            return self.ty0[v.node.index()];
        }
        let node = self.node(v.node);
        match node.rec().single {
            true => no_output(v),
            false => self.outs[&v.node.0][v.slot as usize].ty,
        }
    }

    /// Re-types node `id` from its inputs `inputs` (its op, its inputs or
    /// their types changed).
    pub(crate) fn retype(&mut self, id: NodeId, inputs: &[ValueId]) -> Result<(), String> {
        debug_assert_eq!(self.inputs(id).as_slice(), inputs);
        let ins: SmallVec<[TypeId; 4]> = inputs.iter().map(|&v| self.ty_id(v)).collect();
        let op = self.node(id).rec().op;
        let Graph { ops, types, memo, labels, .. } = self;
        let out = memo.infer(types, ops, op, &ins).map_err(|m| format!("node `{}`: {m}", labels[id.index()]))?;
        self.put_types(id, &out);
        Ok(())
    }

    /// The types of a node's outputs, in slot order.
    pub fn output_types(&self, id: NodeId) -> impl ExactSizeIterator<Item = &TensorType> + '_ {
        let n = self.node(id).num_outputs() as u32;
        (0..n).map(move |slot| self.ty(ValueId { node: id, slot }))
    }

    /// The types of some values.
    #[inline]
    pub(crate) fn types_of(&self, values: &[ValueId]) -> SmallVec<[&TensorType; 4]> {
        let mut out = SmallVec::new();
        for &v in values {
            out.push(self.ty(v));
        }
        out
    }

    #[inline]
    pub fn value_name(&self, v: ValueId) -> &str {
        self.node(v.node).output_name(v.slot as usize)
    }

    /// Values of a node, one per output slot.
    pub fn values(&self, id: NodeId) -> impl Iterator<Item = ValueId> + '_ {
        (0..self.node(id).num_outputs() as u32).map(move |slot| ValueId { node: id, slot })
    }

    /// The inputs of a node, in port order.
    #[inline]
    pub fn inputs(&self, id: NodeId) -> Inputs {
        let wires = self.wires.inputs(id.index());
        if wires.iter().all(|w| w.is_live()) {
            return wires.iter().map(|w| w.value()).collect();
        }
        wires.iter().filter(|w| w.is_live()).map(|w| w.value()).collect()
    }

    /// The input on the first connected port (port 0 in a well-formed graph).
    #[inline]
    pub(crate) fn first_input(&self, id: NodeId) -> Option<ValueId> {
        self.wires.inputs(id.index()).iter().find(|w| w.is_live()).map(|w| w.value())
    }

    /// The producers of a node's inputs, last port first, repeats included.
    pub(crate) fn input_nodes(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.wires.inputs(id.index()).iter().rev().filter(|w| w.is_live()).map(|w| NodeId::at(w.from))
    }

    /// The connected input ports of a node; a port connected a second time
    /// (see [`Graph::connect`]) is listed again.
    pub(crate) fn in_ports(&self, id: NodeId) -> SmallVec<[u32; 8]> {
        let i = id.index();
        let live = self.wires.inputs(i).iter().enumerate().filter(|(_, w)| w.is_live());
        live.map(|(p, _)| p as u32).chain(self.wires.doubled(i)).collect()
    }

    /// The consumers of a node's outputs, newest first: (consumer, edge).
    pub fn users(&self, id: NodeId) -> impl Iterator<Item = (NodeId, Edge)> + '_ {
        self.wires.uses(id.index())
    }

    /// The consumers of one value: (consumer, input port).
    pub fn uses(&self, v: ValueId) -> Vec<(NodeId, u32)> {
        self.users(v.node).filter(|(_, e)| e.slot == v.slot).map(|(n, e)| (n, e.port)).collect()
    }

    /// Starts loading node `id`'s record, name and type into the cache,
    /// for loops that will read them soon.
    #[inline]
    pub(crate) fn prefetch_node(&self, id: NodeId) {
        let i = id.index();
        if let (Some(r), Some(l), Some(t)) = (self.recs.get(i), self.labels.get(i), self.ty0.get(i)) {
            prefetch(r);
            prefetch(l);
            prefetch(t);
        }
    }

    /// One past the largest node index.
    pub(crate) fn index_bound(&self) -> usize {
        self.bound()
    }

    /// The id of the node at `index` (which must hold one).
    pub(crate) fn node_id(&self, index: usize) -> NodeId {
        debug_assert!(self.contains(NodeId::at(index as u32)));
        NodeId::at(index as u32)
    }

    /// The node at `index`, if there is one.
    pub(crate) fn node_at(&self, index: usize) -> Option<NodeId> {
        let id = NodeId::at(index as u32);
        self.contains(id).then_some(id)
    }

    /// Feeds `v` into input `port` of `to`. A port that already reads a
    /// value reads `v` instead, and the verifier reports the port as
    /// connected twice (use [`Graph::set_input`] to rewire).
    pub fn connect(&mut self, v: ValueId, to: NodeId, port: u32) {
        self.wires.connect(v, to.index(), port);
    }

    /// Makes every consumer of `old` read `new` instead.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        self.wires.replace(old, new);
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
        self.wires.set(node.index(), port, v);
    }

    /// The parameter nodes, in index order.
    pub fn params(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.node_ids().filter(|&n| matches!(self.node(n).op(), Op::Param { .. }))
    }
}

#[cold]
#[track_caller]
fn no_node(id: NodeId) -> ! {
    panic!("no node #{} in the graph (removed?)", id.index())
}

#[cold]
#[track_caller]
fn no_output(v: ValueId) -> ! {
    panic!("node #{} has one output, not {}", v.node.index(), v.slot + 1)
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

#[cfg(test)]
mod tests;
