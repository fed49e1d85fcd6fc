//! The graph's name table: open addressing over name hashes, each entry
//! naming a node or one of its outputs, with the prefetch the passes use
//! to hide its cache misses; and the graph's names: lookups, renames,
//! fresh names, names entered in batches, and the verifier's check.

use super::*;

/// The `slot` of a name-table entry that names a node rather than a value.
pub(super) const NODE_NAME: u32 = u32::MAX;

/// A name-table entry: the hash of the name (0: empty) and what it names.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct NameEntry {
    pub(super) hash: u64,
    pub(super) node: u32,
    pub(super) slot: u32,
}

impl NameEntry {
    /// This entry's share of the table's checksum.
    pub(super) fn mix(self) -> u64 {
        let mut x = self.hash ^ (((self.node as u64) << 32) | self.slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^ (x >> 29)
    }
}

/// The hash of a name in the name table.
pub(crate) fn name_hash(s: &str) -> u64 {
    name_hash_bytes(s.as_bytes())
}

/// [`name_hash`] of a name's bytes.
pub(crate) fn name_hash_bytes(s: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(s);
    h.finish() | 1
}

impl NameEntry {
    #[inline]
    pub(super) fn load(raw: [u64; 2]) -> NameEntry {
        NameEntry { hash: raw[0], node: (raw[1] >> 32) as u32, slot: raw[1] as u32 }
    }

    #[inline]
    pub(super) fn store(self) -> [u64; 2] {
        [self.hash, ((self.node as u64) << 32) | self.slot as u64]
    }
}

/// Name -> value (or node) table: open addressing with linear probing.
/// Entries hold hashes, not strings; the checksum is the wrapping sum of
/// every entry's [`NameEntry::mix`], which lets the verifier compare the
/// table with the nodes' current names in one sequential pass. Entries are
/// stored as `[u64; 2]` (hash, node << 32 | slot) so that a new table comes
/// zeroed from the allocator.
#[derive(Clone, Debug, Default)]
pub(super) struct Names {
    pub(super) table: Vec<[u64; 2]>,
    /// log2 of the table size (0 when empty).
    pub(super) bits: u32,
    pub(super) len: usize,
    pub(super) sum: u64,
}

impl Names {
    #[inline]
    pub(super) fn home(&self, hash: u64) -> usize {
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// Makes room for `extra` more entries (load factor at most 3/4).
    pub(super) fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need * 4 <= self.table.len() * 3 {
            return;
        }
        let size = (need * 4 / 3 + 1).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.table, vec![[0; 2]; size]);
        // The entries below land on every page of the new table: backed
        // first, half of it on another core.
        let bytes = size * std::mem::size_of::<[u64; 2]>();
        if bytes >= prefault::MIN_BYTES {
            prefault::populate_split(self.table.as_ptr() as usize, bytes);
        }
        self.bits = size.trailing_zeros();
        let mask = size - 1;
        // The home is the top bits of the hash's product: in the old table's
        // order, homes in the new one only grow, and the writes sweep it.
        for e in old.into_iter().filter(|e| e[0] != 0) {
            let mut i = self.home(e[0]);
            while self.table[i][0] != 0 {
                i = (i + 1) & mask;
            }
            self.table[i] = e;
        }
    }

    /// The index of the entry with `hash` that `is` accepts, or `Err` with
    /// the empty index where such an entry would go.
    #[inline]
    pub(super) fn probe(&self, hash: u64, mut is: impl FnMut(NameEntry) -> bool) -> Result<usize, usize> {
        if self.table.is_empty() {
            return Err(usize::MAX);
        }
        let mask = self.table.len() - 1;
        let mut i = self.home(hash);
        loop {
            let e = self.table[i];
            if e[0] == 0 {
                return Err(i);
            }
            if e[0] == hash && is(NameEntry::load(e)) {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Fills the empty index `i` (from [`Names::probe`], with no growth in between).
    #[inline]
    pub(super) fn fill(&mut self, i: usize, e: NameEntry) {
        debug_assert_eq!(self.table[i][0], 0);
        self.table[i] = e.store();
        self.len += 1;
        self.sum = self.sum.wrapping_add(e.mix());
    }

    /// Removes the entry at `i`, shifting later entries of its run back.
    pub(super) fn remove_at(&mut self, mut i: usize) {
        let removed = NameEntry::load(self.table[i]);
        self.len -= 1;
        self.sum = self.sum.wrapping_sub(removed.mix());
        let mask = self.table.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.table[j];
            if e[0] == 0 {
                break;
            }
            let home = self.home(e[0]);
            // `e` may stay at `j` only if its home lies cyclically in (i, j].
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.table[i] = e;
                i = j;
            }
        }
        self.table[i] = [0; 2];
    }
}

/// Asks the CPU to start loading `r` into the cache.
#[inline(always)]
pub(super) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it reads nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

impl Graph {
    /// The name a table entry refers to, if its node still exists.
    #[inline]
    pub(super) fn entry_name(&self, e: NameEntry) -> Option<&str> {
        let n = self.weight(e.node as usize)?;
        if e.slot == NODE_NAME {
            Some(n.name())
        } else {
            ((e.slot as usize) < n.num_outputs()).then(|| n.output_name(e.slot as usize))
        }
    }
}

impl Graph {
    /// The table entry of `name`.
    #[inline]
    pub(super) fn lookup(&self, name: &str) -> Option<NameEntry> {
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

    pub(super) fn contains_name(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// Enters the names of the nodes from [`Graph::add_deferred`], in the
    /// order they were added.
    pub(crate) fn register_deferred(&mut self) {
        let ids = std::mem::take(&mut self.deferred);
        self.register_unnamed(&ids);
    }

    /// The empty name-table index where `name` (of hash `hash`) would go,
    /// with room made for it; `None` when the name is taken.
    pub(super) fn free_slot(&mut self, name: &str, hash: u64) -> Option<usize> {
        self.names.reserve(1);
        self.names.probe(hash, |e| self.entry_name(e) == Some(name)).err()
    }

    /// Starts loading the name-table bucket of `hash` into the cache.
    #[inline]
    pub(crate) fn prefetch_name(&self, hash: u64) {
        if let Some(e) = self.names.table.get(if self.names.bits == 0 { 0 } else { self.names.home(hash) }) {
            prefetch(e);
        }
    }

    /// The value whose name has `hash`, trusting the hash: the caller must
    /// check that the value's name is the one it looked for.
    #[inline]
    pub(crate) fn value_by_hash(&self, hash: u64) -> Option<ValueId> {
        let e = NameEntry::load(self.names.table[self.names.probe(hash, |_| true).ok()?]);
        (e.slot != NODE_NAME).then_some(ValueId { node: NodeId::at(e.node), slot: e.slot })
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
    pub(super) fn register(&mut self, name_hash: u64, node: u32, slot: u32) {
        self.names.reserve(1);
        // An empty index: the name was checked to be absent.
        let at = self.names.probe(name_hash, |_| false).expect_err("a new name");
        self.names.fill(at, NameEntry { hash: name_hash, node, slot });
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

    /// A name not yet used in the graph, starting from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.contains_name(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !self.contains_name(n)).expect("an unused name exists")
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
