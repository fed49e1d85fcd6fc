//! Maps and sets keyed by a graph's nodes or values, held densely by node
//! index: a lookup is an index, not a hash probe into a table scattered
//! over memory. Values other than a node's first output (rare) go to a
//! hash map beside it.

use std::hash::Hash;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{NodeId, ValueId};

/// A key with a place by node index, or none (held in the side map).
pub(crate) trait DenseKey: Copy + Eq + Hash {
    fn dense(self) -> Option<usize>;
}

impl DenseKey for NodeId {
    #[inline]
    fn dense(self) -> Option<usize> {
        Some(self.index())
    }
}

impl DenseKey for ValueId {
    #[inline]
    fn dense(self) -> Option<usize> {
        (self.slot == 0).then_some(self.node.index())
    }
}

const NONE: u32 = u32::MAX;

/// A map whose entries are kept in insertion order, found through a
/// 4-byte index per node.
#[derive(Clone, Debug)]
pub(crate) struct DenseMap<K, T> {
    at: Vec<u32>,
    rest: FxHashMap<K, u32>,
    items: Vec<T>,
}

impl<K: DenseKey, T> DenseMap<K, T> {
    /// A map for a graph of `bound` node indices (it grows past them if
    /// asked), with room for `entries` entries.
    pub(crate) fn new(bound: usize, entries: usize) -> Self {
        DenseMap { at: vec![NONE; bound], rest: FxHashMap::default(), items: Vec::with_capacity(entries) }
    }

    #[inline]
    fn find(&self, k: K) -> Option<usize> {
        let j = match k.dense() {
            Some(i) => *self.at.get(i)?,
            None => *self.rest.get(&k)?,
        };
        (j != NONE).then_some(j as usize)
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    #[inline]
    pub(crate) fn get(&self, k: &K) -> Option<&T> {
        self.find(*k).map(|j| &self.items[j])
    }

    /// Sets `k`'s value, replacing the one it had.
    pub(crate) fn insert(&mut self, k: K, t: T) {
        if let Some(j) = self.find(k) {
            self.items[j] = t;
            return;
        }
        let j = u32::try_from(self.items.len()).expect("fewer than 2^32 - 1 entries");
        self.items.push(t);
        match k.dense() {
            Some(i) => {
                if i >= self.at.len() {
                    self.at.resize(i + 1, NONE);
                }
                self.at[i] = j;
            }
            None => {
                self.rest.insert(k, j);
            }
        }
    }
}

impl<K: DenseKey, T> std::ops::Index<&K> for DenseMap<K, T> {
    type Output = T;

    /// The value of a key that has one (a panic otherwise, as `HashMap`'s).
    fn index(&self, k: &K) -> &T {
        self.get(k).expect("a key present in the map")
    }
}

/// A set: a byte per node index.
#[derive(Clone, Debug)]
pub(crate) struct DenseSet<K> {
    on: Vec<bool>,
    rest: FxHashSet<K>,
}

impl<K: DenseKey> DenseSet<K> {
    /// A set for a graph of `bound` node indices (it grows past them if asked).
    pub(crate) fn new(bound: usize) -> Self {
        DenseSet { on: vec![false; bound], rest: FxHashSet::default() }
    }

    #[inline]
    pub(crate) fn contains(&self, k: &K) -> bool {
        match k.dense() {
            Some(i) => self.on.get(i).copied().unwrap_or(false),
            None => self.rest.contains(k),
        }
    }

    /// Adds `k`; whether it was new.
    #[inline]
    pub(crate) fn insert(&mut self, k: K) -> bool {
        match k.dense() {
            Some(i) => {
                if i >= self.on.len() {
                    self.on.resize(i + 1, false);
                }
                !std::mem::replace(&mut self.on[i], true)
            }
            None => self.rest.insert(k),
        }
    }
}

impl<K: DenseKey> Extend<K> for DenseSet<K> {
    fn extend<I: IntoIterator<Item = K>>(&mut self, iter: I) {
        for k in iter {
            self.insert(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::NodeId;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn value(node: u32, slot: u32) -> ValueId {
        ValueId { node: NodeId::at(node), slot }
    }

    proptest! {
        /// Any sequence of inserts leaves the map and the set agreeing with
        /// std's, keys past the bound and on later slots included.
        #[test]
        fn agrees_with_std(ops in proptest::collection::vec((0u32..40, 0u32..3, any::<u16>()), 0..200)) {
            let mut m = DenseMap::new(16, 0);
            let mut s = DenseSet::new(16);
            let (mut hm, mut hs) = (HashMap::new(), HashSet::new());
            for &(n, slot, x) in &ops {
                let v = value(n, slot);
                m.insert(v, x);
                hm.insert(v, x);
                prop_assert_eq!(s.insert(v), hs.insert(v));
            }
            for n in 0..40 {
                for slot in 0..3 {
                    let v = value(n, slot);
                    prop_assert_eq!(m.get(&v), hm.get(&v));
                    prop_assert_eq!(s.contains(&v), hs.contains(&v));
                }
            }
        }
    }
}
