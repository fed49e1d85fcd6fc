//! The graph's ops, interned: a node's record holds a 4-byte [`OpId`] and
//! equal ops share one entry, found among the last few of their kind (the
//! nodes of a model repeat: a lowered 10^6-op chain has a handful of
//! distinct ops over 7 M nodes). Entries are never removed; a graph whose
//! nodes are replaced many times over keeps the ops it no longer uses.

use crate::ir::op::Op;

/// An op in a graph's op table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OpId(u32);

impl OpId {
    /// The id a vacated index's record holds (the table's first entry).
    pub(super) const NONE: OpId = OpId(0);
}

/// How many ops of one kind a new op is compared with before it is added.
const WAYS: usize = 4;

/// The distinct ops of a graph (mostly: an op whose equal is not among
/// the last few of its kind is added again).
#[derive(Clone, Debug)]
pub(super) struct Ops {
    list: Vec<Op>,
    /// Per op kind: the latest ids, and where the next one goes.
    recent: Vec<([u32; WAYS], u8, usize)>,
}

impl Default for Ops {
    fn default() -> Ops {
        Ops { list: vec![Op::Identity], recent: Vec::new() }
    }
}

impl Ops {
    #[inline]
    pub(super) fn get(&self, id: OpId) -> &Op {
        &self.list[id.0 as usize]
    }

    /// The id of `op`.
    pub(super) fn intern(&mut self, op: Op) -> OpId {
        let kind = op.kind() as usize;
        if self.recent.len() <= kind {
            self.recent.resize(kind + 1, ([0; WAYS], 0, 0));
        }
        let (ids, len, next) = &mut self.recent[kind];
        if let Some(&id) = ids[..usize::from(*len)].iter().find(|&&id| self.list[id as usize] == op) {
            return OpId(id);
        }
        // Op ids count in `u32` as node indices do, and there is at most
        // one new op per node added.
        let id = u32::try_from(self.list.len()).expect("fewer than 2^32 ops");
        self.list.push(op);
        if usize::from(*len) < WAYS {
            ids[usize::from(*len)] = id;
            *len += 1;
        } else {
            ids[*next] = id;
            *next = (*next + 1) % WAYS;
        }
        OpId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::types::DType;

    /// Equal ops share an id while among the last few of their kind;
    /// different ones never do.
    #[test]
    fn equal_ops_share_an_id() {
        let mut ops = Ops::default();
        let a = ops.intern(Op::Cast { to: DType::F16 });
        let b = ops.intern(Op::Cast { to: DType::Bf16 });
        assert_ne!(a, b);
        assert_eq!(ops.intern(Op::Cast { to: DType::F16 }), a);
        assert_eq!(ops.intern(Op::Add), ops.intern(Op::Add));
        let scales: Vec<OpId> = (0..10).map(|k| ops.intern(Op::Scale { value: k as f64 })).collect();
        for (k, &id) in scales.iter().enumerate() {
            assert_eq!(ops.get(id), &Op::Scale { value: k as f64 });
        }
        assert_eq!(ops.intern(Op::Scale { value: 9.0 }), scales[9], "a recent one is found");
        assert_ne!(ops.intern(Op::Scale { value: 0.0 }), OpId::NONE);
        assert_eq!(ops.get(a), &Op::Cast { to: DType::F16 });
    }
}
