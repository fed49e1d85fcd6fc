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
        let own = self.labels[id.index()].clone();
        let ty0 = self.ty0[id.index()];
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

    /// The table entry of `name`.
    #[inline]
    fn lookup(&self, name: &str) -> Option<NameEntry> {
        let i = self.names.probe(name_hash(name), |e| self.entry_name(e) == Some(name)).ok()?;
        Some(NameEntry::load(self.names.table[i]))
    }

    pub fn value(&self, name: &str) -> Option<ValueId> {
        let e = self.lookup(name)?;
        (e.slot != NODE_NAME).then_some(ValueId { node: NodeId::at(e.node), slot: e.slot })
    }

    /// Looks a node up by its name or by the name of one of its outputs.
    pub fn node_named(&self, name: &str) -> Option<NodeId> {
        self.lookup(name).map(|e| NodeId::at(e.node))
    }

    fn contains_name(&self, name: &str) -> bool {
        self.lookup(name).is_some()
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

    /// Adds a node whose output names are `name` (slot 0) and `name:k`,
    /// typing it from its inputs.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        role: Role,
        inputs: &[ValueId],
    ) -> Result<NodeId, GraphError> {
        let op = self.ops.intern(op);
        self.add_node_id(name.into(), op, role, inputs)
    }

    fn add_node_id(&mut self, name: String, op: OpId, role: Role, inputs: &[ValueId]) -> Result<NodeId, GraphError> {
        let n = infer::num_outputs(self.ops.get(op));
        if n == 1 {
            // The common case: no output-name vector.
            let tys = self.infer_for(&name, op, inputs)?;
            let id = self.add_single_id(name.into(), op, role, None)?;
            self.finish_typed(id, tys, inputs);
            return Ok(id);
        }
        let outs = default_output_names(&name, n);
        self.add_with_outputs_id(name, op, role, inputs, outs)
    }

    /// [`Graph::add_node`] named `base`, or as [`Graph::fresh_name`] would
    /// name it when `base` is taken: one probe of the name table when it is
    /// free (the usual case), not a lookup and then an insertion.
    pub fn add_fresh(&mut self, base: &str, op: Op, role: Role, inputs: &[ValueId]) -> Result<NodeId, GraphError> {
        let op = self.ops.intern(op);
        self.add_fresh_id(base, op, role, inputs)
    }

    fn add_fresh_id(&mut self, base: &str, op: OpId, role: Role, inputs: &[ValueId]) -> Result<NodeId, GraphError> {
        if infer::num_outputs(self.ops.get(op)) != 1 {
            let name = self.fresh_name(base);
            return self.add_node_id(name, op, role, inputs);
        }
        // The name's table line is loaded while the type is inferred: the
        // probe is otherwise a cache (and TLB) miss that nothing overlaps.
        let hash = name_hash(base);
        self.prefetch_name(hash);
        let tys = self.infer_for(base, op, inputs)?;
        let id = match self.free_slot(base, hash) {
            Some(at) => self.insert_single(at, hash, base.into(), op, role, None),
            None => {
                let name = self.fresh_name(base);
                self.add_single_id(name.into(), op, role, None)?
            }
        };
        self.finish_typed(id, tys, inputs);
        Ok(id)
    }

    /// [`Graph::add_fresh`] for a one-output op, with the name entered in
    /// the name table only at the next [`Graph::register_deferred`]; until
    /// then lookups do not see it, and the node's name is `base` even
    /// where the table will give it `base.k`. The result, once registered,
    /// is what `add_fresh` one node at a time gives; the table's cache
    /// misses overlap (a pass adding millions of nodes, grad, waited on one
    /// per node). An op of several outputs is added as `add_fresh` adds it,
    /// after what is pending is registered.
    pub(crate) fn add_deferred(
        &mut self,
        base: &str,
        op: Op,
        role: Role,
        inputs: &[ValueId],
    ) -> Result<NodeId, GraphError> {
        let op = self.ops.intern(op);
        if infer::num_outputs(self.ops.get(op)) != 1 {
            self.register_deferred();
            return self.add_fresh_id(base, op, role, inputs);
        }
        let tys = self.infer_for(base, op, inputs)?;
        let id = NodeId::at(self.alloc(base.into(), op, role, None, None));
        self.finish_typed(id, tys, inputs);
        self.deferred.push((id, name_hash(base)));
        Ok(id)
    }

    /// Enters the names of the nodes from [`Graph::add_deferred`], in the
    /// order they were added.
    pub(crate) fn register_deferred(&mut self) {
        let ids = std::mem::take(&mut self.deferred);
        self.register_unnamed(&ids);
    }

    fn infer_for(&mut self, name: &str, op: OpId, inputs: &[ValueId]) -> Result<TypeIds, GraphError> {
        let ins: SmallVec<[TypeId; 4]> = inputs.iter().map(|&v| self.ty_id(v)).collect();
        let out = self.memo.infer(&mut self.types, &self.ops, op, &ins);
        out.map_err(|message| GraphError::Type { node: name.to_string(), message })
    }

    fn finish_typed(&mut self, id: NodeId, tys: TypeIds, inputs: &[ValueId]) {
        self.put_types(id, &tys);
        self.wires.set_all(id.index(), inputs);
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
        let op = self.ops.intern(op);
        self.add_with_outputs_id(name, op, role, inputs, outs)
    }

    fn add_with_outputs_id(
        &mut self,
        name: String,
        op: OpId,
        role: Role,
        inputs: &[ValueId],
        outs: Vec<String>,
    ) -> Result<NodeId, GraphError> {
        let tys = self.infer_for(&name, op, inputs)?;
        let id = self.add_untyped_id(name, op, role, outs, None)?;
        self.finish_typed(id, tys, inputs);
        Ok(id)
    }

    /// Adds a node at the last vacated index, or a new one, with its
    /// outputs `outs` (`None`: one, named as the node), and records its
    /// meta byte and origin. Its outputs are untyped.
    fn alloc(
        &mut self,
        name: CompactString,
        op: OpId,
        role: Role,
        outs: Option<Box<[Output]>>,
        origin: Option<Origin>,
    ) -> u32 {
        let meta = meta_of(self.ops.get(op), role);
        let rec = Rec { op, role, precision: None, single: outs.is_none() };
        let ty0 = TypeId::UNTYPED;
        let i = match self.vacated.pop() {
            Some(i) => {
                let i = i as usize;
                self.recs[i] = rec;
                self.labels[i] = name;
                self.meta[i] = meta;
                self.ty0[i] = ty0;
                i
            }
            None => {
                // Node indices count in `u32`.
                assert!(self.meta.len() < u32::MAX as usize, "fewer than 2^32 - 1 nodes");
                self.recs.push(rec);
                self.labels.push(name);
                self.meta.push(meta);
                self.ty0.push(ty0);
                let i = self.meta.len() - 1;
                if i.is_multiple_of(prefault::TICK) && i > 0 {
                    self.back_ahead();
                }
                i
            }
        };
        if let Some(outs) = outs {
            self.outs.insert(i as u32, outs);
        }
        self.live += 1;
        self.wires.enter(i);
        if origin.is_some() && self.origins.len() <= i {
            self.origins.resize(i + 1, None);
        }
        if let Some(o) = self.origins.get_mut(i) {
            *o = origin;
        }
        i as u32
    }

    /// Has the room of the node tables backed ahead of their use.
    #[cold]
    fn back_ahead(&mut self) {
        let mut out = prefault::Ranges::new();
        let [recs, labels, ty0, meta] = &mut self.ahead;
        recs.next(&self.recs, prefault::REACH, &mut out);
        labels.next(&self.labels, prefault::REACH, &mut out);
        ty0.next(&self.ty0, prefault::REACH, &mut out);
        meta.next(&self.meta, prefault::REACH, &mut out);
        self.wires.ahead(&mut out);
        prefault::populate(out);
    }

    /// Adds an untyped node with one output named after the node, with one
    /// probe of the name table.
    pub(crate) fn add_single(
        &mut self,
        name: CompactString,
        op: Op,
        role: Role,
        origin: Option<Origin>,
    ) -> Result<NodeId, GraphError> {
        let op = self.ops.intern(op);
        self.add_single_id(name, op, role, origin)
    }

    fn add_single_id(
        &mut self,
        name: CompactString,
        op: OpId,
        role: Role,
        origin: Option<Origin>,
    ) -> Result<NodeId, GraphError> {
        let hash = name_hash(&name);
        match self.free_slot(&name, hash) {
            Some(at) => Ok(self.insert_single(at, hash, name, op, role, origin)),
            None => Err(GraphError::DuplicateName(name.into())),
        }
    }

    /// The empty name-table index where `name` (of hash `hash`) would go,
    /// with room made for it; `None` when the name is taken.
    fn free_slot(&mut self, name: &str, hash: u64) -> Option<usize> {
        self.names.reserve(1);
        self.names.probe(hash, |e| self.entry_name(e) == Some(name)).err()
    }

    /// Adds a one-output node at name-table slot `at` (found free by a probe).
    fn insert_single(
        &mut self,
        at: usize,
        hash: u64,
        name: CompactString,
        op: OpId,
        role: Role,
        origin: Option<Origin>,
    ) -> NodeId {
        let i = self.alloc(name, op, role, None, origin);
        self.names.fill(at, NameEntry { hash, node: i, slot: 0 });
        NodeId::at(i)
    }

    /// Starts loading the name-table bucket of `hash` into the cache.
    #[inline]
    pub(crate) fn prefetch_name(&self, hash: u64) {
        if let Some(e) = self.names.table.get(if self.names.bits == 0 { 0 } else { self.names.home(hash) }) {
            prefetch(e);
        }
    }

    /// [`Graph::add_single`] for a name whose hash is known, trusting the
    /// hash: any entry with the same hash counts as a duplicate (so a hash
    /// collision is reported as one). For callers that can afford a false
    /// duplicate, such as the streaming parser, which then starts over.
    pub(crate) fn add_single_by_hash(
        &mut self,
        name: CompactString,
        hash: u64,
        op: Op,
        role: Role,
        origin: Option<Origin>,
    ) -> Result<NodeId, GraphError> {
        debug_assert_eq!(hash, name_hash(&name));
        self.names.reserve(1);
        let at = match self.names.probe(hash, |_| true) {
            Ok(_) => return Err(GraphError::DuplicateName(name.into())),
            Err(at) => at,
        };
        let op = self.ops.intern(op);
        Ok(self.insert_single(at, hash, name, op, role, origin))
    }

    /// The value whose name has `hash`, trusting the hash: the caller must
    /// check that the value's name is the one it looked for.
    #[inline]
    pub(crate) fn value_by_hash(&self, hash: u64) -> Option<ValueId> {
        let e = NameEntry::load(self.names.table[self.names.probe(hash, |_| true).ok()?]);
        (e.slot != NODE_NAME).then_some(ValueId { node: NodeId::at(e.node), slot: e.slot })
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

    /// Adds a one-output node named `name` of type `ty` (known to the caller:
    /// a cast's is its input's in another dtype) without entering the name
    /// in the name table: lookups do not see it until
    /// [`Graph::register_unnamed`]. For passes that add many nodes in a row
    /// and register their names in one batch, which overlaps the table's
    /// cache misses.
    pub(crate) fn add_unnamed(
        &mut self,
        name: CompactString,
        op: Op,
        role: Role,
        inputs: &[ValueId],
        ty: TensorType,
    ) -> NodeId {
        debug_assert_eq!(
            infer::infer(&op, &self.types_of(inputs)).as_deref(),
            Ok(std::slice::from_ref(&ty)),
            "add_unnamed: the type given is the one inference gives"
        );
        let ty = self.types.intern_owned(ty);
        let op = self.ops.intern(op);
        let id = NodeId::at(self.alloc(name, op, role, None, None));
        self.ty0[id.index()] = ty;
        self.wires.set_all(id.index(), inputs);
        id
    }

    /// Registers the names of nodes from [`Graph::add_unnamed`] (with their
    /// hashes), in the order given; a name already taken is replaced by the first free
    /// `name.k`, as [`Graph::fresh_name`] finds it at that point. The result
    /// is what adding the nodes one by one with that fallback gives.
    pub(crate) fn register_unnamed(&mut self, ids: &[(NodeId, u64)]) {
        const AHEAD: usize = 16;
        self.names.reserve(ids.len());
        for (j, &(id, hash)) in ids.iter().enumerate() {
            debug_assert_eq!(hash, name_hash(self.node(id).name()));
            if let Some(&(_, h)) = ids.get(j + AHEAD) {
                self.prefetch_name(h);
            }
            let name = self.node(id).name();
            match self.names.probe(hash, |e| self.entry_name(e) == Some(name)) {
                Err(at) => self.names.fill(at, NameEntry { hash, node: id.index() as u32, slot: 0 }),
                Ok(_) => {
                    let fresh = self.fresh_name(name);
                    let hash = name_hash(&fresh);
                    self.labels[id.index()] = fresh.into();
                    self.register(hash, id.index() as u32, 0);
                }
            }
        }
    }

    /// Registers `name` for entry `(node, slot)`; the name must be new.
    fn register(&mut self, name_hash: u64, node: u32, slot: u32) {
        self.names.reserve(1);
        // An empty index: the name was checked to be absent.
        let at = self.names.probe(name_hash, |_| false).expect_err("a new name");
        self.names.fill(at, NameEntry { hash: name_hash, node, slot });
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
        let op = self.ops.intern(op);
        self.add_untyped_id(name, op, role, output_names, origin)
    }

    fn add_untyped_id(
        &mut self,
        name: String,
        op: OpId,
        role: Role,
        output_names: Vec<String>,
        origin: Option<Origin>,
    ) -> Result<NodeId, GraphError> {
        let own_value = output_names.first() == Some(&name);
        if own_value && output_names.len() == 1 {
            return self.add_single_id(name.into(), op, role, origin);
        }
        if !own_value && self.contains_name(&name) {
            return Err(GraphError::DuplicateName(name));
        }
        for (i, o) in output_names.iter().enumerate() {
            if self.contains_name(o) || output_names[..i].contains(o) || (!own_value && *o == name) {
                return Err(GraphError::DuplicateName(o.clone()));
            }
        }
        let hashes: SmallVec<[u64; 4]> = output_names.iter().map(|o| name_hash(o)).collect();
        let node_hash = name_hash(&name);
        let outputs = output_names.into_iter().map(|o| Output::new(o, &name, TypeId::UNTYPED)).collect();
        let i = self.alloc(name.into(), op, role, Some(outputs), origin);
        for (slot, h) in hashes.into_iter().enumerate() {
            self.register(h, i, slot as u32);
        }
        if !own_value {
            self.register(node_hash, i, NODE_NAME);
            self.node_names.insert(i);
        }
        Ok(NodeId::at(i))
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

    /// Renames a node with one output named as the node (the usual kind)
    /// and its value. `name` must be new.
    pub fn rename(&mut self, id: NodeId, name: String) -> Result<(), GraphError> {
        let node = self.node(id);
        let old = node.name().to_string();
        if !node.rec().single || self.node_names.contains(&(id.index() as u32)) {
            return Err(GraphError::Type {
                node: old,
                message: "only a node named as its one value can be renamed".into(),
            });
        }
        if self.contains_name(&name) {
            return Err(GraphError::DuplicateName(name));
        }
        if let Ok(i) = self.names.probe(name_hash(&old), |e| self.entry_name(e) == Some(old.as_str())) {
            self.names.remove_at(i);
        }
        let hash = name_hash(&name);
        self.labels[id.index()] = name.into();
        self.register(hash, id.index() as u32, 0);
        Ok(())
    }

    /// Removes a node that no other node reads; returns its op.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Op, GraphError> {
        let Some(node) = self.weight(id.index()) else {
            return Err(GraphError::UnknownValue(format!("node #{}", id.index())));
        };
        if self.users(id).next().is_some() {
            return Err(GraphError::HasUsers(node.name().to_string()));
        }
        // Names first, while the node still answers for them.
        let op = node.op().clone();
        let names: SmallVec<[CompactString; 2]> = node.output_names().chain([node.name()]).map(Into::into).collect();
        for o in &names {
            if let Ok(i) = self.names.probe(name_hash(o), |e| self.entry_name(e) == Some(o.as_str())) {
                self.names.remove_at(i);
            }
        }
        self.wires.remove(id.index());
        self.recs[id.index()] = Rec::VACANT;
        self.labels[id.index()] = CompactString::default();
        self.outs.remove(&id.0);
        self.live -= 1;
        self.vacated.push(id.0);
        self.meta[id.index()] = VACANT;
        if let Some(o) = self.origins.get_mut(id.index()) {
            *o = None;
        }
        self.node_names.remove(&(id.index() as u32));
        Ok(op)
    }

    /// Makes room for `nodes` more nodes and `edges` more edges.
    pub fn reserve(&mut self, nodes: usize, edges: usize) {
        self.reserve_storage(nodes, edges);
        self.names.reserve(nodes);
    }

    /// Room for `nodes` more nodes and `edges` more edges, not their names.
    pub fn reserve_storage(&mut self, nodes: usize, edges: usize) {
        self.recs.reserve(nodes);
        self.labels.reserve(nodes);
        self.wires.reserve(nodes, edges);
        self.meta.reserve(nodes);
        self.ty0.reserve(nodes);
    }

    /// A name not yet used in the graph, starting from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.contains_name(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !self.contains_name(n)).expect("an unused name exists")
    }

    /// The parameter nodes, in index order.
    pub fn params(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.node_ids().filter(|&n| matches!(self.node(n).op(), Op::Param { .. }))
    }

    /// Whether the name map agrees with the nodes (checked by the verifier).
    pub(crate) fn name_map_problems(&self) -> Vec<String> {
        // Fast path: the table's checksum is the sum over its entries of
        // mix(hash of the name, slot it names). Recomputed from the nodes'
        // current names in one sequential pass, it matches (with the same
        // entry count) exactly when every entry names an output that bears
        // its name, as the one-to-one check below would find.
        let mut sum = 0u64;
        let mut count = 0usize;
        for i in self.node_ids() {
            let n = self.node(i);
            let i = i.index();
            for (slot, o) in n.output_names().enumerate() {
                sum = sum.wrapping_add(NameEntry { hash: name_hash(o), node: i as u32, slot: slot as u32 }.mix());
            }
            count += n.num_outputs();
        }
        for &i in &self.node_names {
            if let Some(n) = self.weight(i as usize) {
                sum = sum.wrapping_add(NameEntry { hash: name_hash(n.name()), node: i, slot: NODE_NAME }.mix());
                count += 1;
            }
        }
        if sum == self.names.sum && count == self.names.len {
            return Vec::new();
        }
        let mut out = Vec::new();
        for id in self.node_ids() {
            let node = self.node(id);
            for (slot, o) in node.output_names().enumerate() {
                match self.value(o) {
                    Some(v) if v == (ValueId { node: id, slot: slot as u32 }) => {}
                    _ => out.push(format!(
                        "output `{}` of node `{}` is not registered under its name (duplicate name?)",
                        o,
                        node.name()
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
