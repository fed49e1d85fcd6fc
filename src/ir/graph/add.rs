//! Adding and removing nodes: typing them from their inputs, naming
//! them (one probe of the name table, or names entered in batches), and
//! the room the tables make for them.

use super::*;

impl Graph {
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

    pub(super) fn add_node_id(
        &mut self,
        name: String,
        op: OpId,
        role: Role,
        inputs: &[ValueId],
    ) -> Result<NodeId, GraphError> {
        let n = infer::num_outputs(self.ops.get(op));
        if n == 1 {
            // The common case: no output-name vector.
            let tys = self.infer_for(&name, op, inputs)?;
            let id = self.add_single_id(name.into(), op, role, None)?;
            self.finish_typed(id, tys, inputs);
            return Ok(id);
        }
        let outs = default_output_names(&name, n);
        // Rare (a few ops have several outputs): the op is looked up again.
        self.add_node_with_outputs(name, self.ops.get(op).clone(), role, inputs, outs)
    }

    /// [`Graph::add_node`] named `base`, or as [`Graph::fresh_name`] would
    /// name it when `base` is taken: one probe of the name table when it is
    /// free (the usual case), not a lookup and then an insertion.
    pub fn add_fresh(&mut self, base: &str, op: Op, role: Role, inputs: &[ValueId]) -> Result<NodeId, GraphError> {
        let op = self.ops.intern(op);
        self.add_fresh_id(base, op, role, inputs)
    }

    pub(super) fn add_fresh_id(
        &mut self,
        base: &str,
        op: OpId,
        role: Role,
        inputs: &[ValueId],
    ) -> Result<NodeId, GraphError> {
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

    pub(super) fn infer_for(&mut self, name: &str, op: OpId, inputs: &[ValueId]) -> Result<TypeIds, GraphError> {
        let ins: SmallVec<[TypeId; 4]> = inputs.iter().map(|&v| self.ty_id(v)).collect();
        let out = self.memo.infer(&mut self.types, &self.ops, op, &ins);
        out.map_err(|message| GraphError::Type { node: name.to_string(), message })
    }

    pub(super) fn finish_typed(&mut self, id: NodeId, tys: TypeIds, inputs: &[ValueId]) {
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
        let tys = self.infer_for(&name, op, inputs)?;
        let id = self.add_untyped_id(name, op, role, outs, None)?;
        self.finish_typed(id, tys, inputs);
        Ok(id)
    }

    /// Adds a node at the last vacated index, or a new one, with its
    /// outputs `outs` (`None`: one, named as the node), and records its
    /// meta byte and origin. Its outputs are untyped.
    pub(super) fn alloc(
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
    pub(super) fn back_ahead(&mut self) {
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

    pub(super) fn add_single_id(
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

    /// Adds a one-output node at name-table slot `at` (found free by a probe).
    pub(super) fn insert_single(
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

    pub(super) fn add_untyped_id(
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
}
