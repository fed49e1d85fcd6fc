//! The graph's name table: open addressing over name hashes, each entry
//! naming a node or one of its outputs, with the prefetch the passes use
//! to hide its cache misses.

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
