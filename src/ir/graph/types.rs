//! The graph's tensor types, interned: a node's outputs hold a 4-byte
//! [`TypeId`], and each distinct type is stored once. A lowered 10^6-op
//! chain has 7 M outputs and a handful of types; held inline, every output
//! carried a 32-byte `TensorType` and a heap shape of its own.

use rustc_hash::FxHashMap;

use crate::ir::types::{DType, TensorType};

/// A type in a graph's type table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TypeId(u32);

impl TypeId {
    /// `f32[]`, the type of a node not yet typed (the table's first entry).
    pub(super) const UNTYPED: TypeId = TypeId(0);
}

/// The distinct types of a graph, in the order first seen.
#[derive(Clone, Debug)]
pub(super) struct Types {
    list: Vec<TensorType>,
    ids: FxHashMap<TensorType, TypeId>,
}

impl Default for Types {
    fn default() -> Types {
        let untyped = TensorType::scalar(DType::F32);
        let mut ids = FxHashMap::default();
        ids.insert(untyped.clone(), TypeId::UNTYPED);
        Types { list: vec![untyped], ids }
    }
}

impl Types {
    #[inline]
    pub(super) fn get(&self, id: TypeId) -> &TensorType {
        &self.list[id.0 as usize]
    }

    /// The id of `t`, entering it when it is new.
    #[inline]
    pub(super) fn intern_owned(&mut self, t: TensorType) -> TypeId {
        match self.ids.get(&t) {
            Some(&id) => id,
            None => self.enter(t),
        }
    }

    #[cold]
    fn enter(&mut self, t: TensorType) -> TypeId {
        // More than 2^32 distinct types would need more nodes than a node index counts.
        let id = TypeId(u32::try_from(self.list.len()).expect("fewer types than node indices"));
        self.ids.insert(t.clone(), id);
        self.list.push(t);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_is_entered_once() {
        let mut t = Types::default();
        let a = TensorType::new(DType::F16, vec![2, 3]);
        let ia = t.intern_owned(a.clone());
        assert_eq!(t.intern_owned(a.clone()), ia);
        assert_eq!(t.get(ia), &a);
        assert_ne!(t.intern_owned(a.with_dtype(DType::F32)), ia);
        assert_eq!(t.intern_owned(TensorType::scalar(DType::F32)), TypeId::UNTYPED);
        assert_eq!(t.list.len(), 3);
    }
}
