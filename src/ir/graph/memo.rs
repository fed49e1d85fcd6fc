//! Shape inference with a memory of recent results per op kind.

use super::*;
use crate::ir::op::OpKind;

/// The last few results per op kind: (op, inputs, outputs), at most `WAYS`
/// a kind, the oldest replaced first; the op is held as `K` (the op
/// itself, or its id in the graph's op table). Errors are not remembered.
#[derive(Clone, Debug)]
struct ByKind<K, I, O> {
    /// Per op kind: the results, and the next one to replace.
    last: Vec<Ways<K, I, O>>,
}

/// One op kind's results, and the next one to replace.
type Ways<K, I, O> = (Vec<Remembered<K, I, O>>, usize);

/// An op, its inputs and its outputs.
type Remembered<K, I, O> = (K, SmallVec<[I; 3]>, O);

impl<K, I, O> Default for ByKind<K, I, O> {
    fn default() -> Self {
        ByKind { last: Vec::new() }
    }
}

impl<K: PartialEq + Clone, I: Clone, O> ByKind<K, I, O> {
    const WAYS: usize = 4;

    /// The outputs remembered for `op` (of kind `kind`) on `ins` (`same`
    /// compares one remembered input with one given), or `make`'s, then
    /// remembered.
    fn get_or<J>(
        &mut self,
        kind: OpKind,
        op: &K,
        ins: &[J],
        same: impl Fn(&I, &J) -> bool,
        keep: impl Fn(&J) -> I,
        make: impl FnOnce() -> Result<O, String>,
    ) -> Result<&O, String> {
        let kind = kind as usize;
        if self.last.len() <= kind {
            self.last.resize_with(kind + 1, || (Vec::new(), 0));
        }
        let (seen, next) = &mut self.last[kind];
        let hit = seen
            .iter()
            .position(|(o, i, _)| i.len() == ins.len() && i.iter().zip(ins).all(|(a, b)| same(a, b)) && o == op);
        let at = match hit {
            Some(at) => at,
            None => {
                let entry = (op.clone(), ins.iter().map(keep).collect(), make()?);
                if seen.len() < Self::WAYS {
                    seen.push(entry);
                    seen.len() - 1
                } else {
                    let at = *next;
                    *next = (at + 1) % Self::WAYS;
                    seen[at] = entry;
                    at
                }
            }
        };
        Ok(&seen[at].2)
    }
}

/// Shape inference that remembers its last few results per op kind: the
/// nodes of a model repeat, and the same op on the same input types gives
/// the same outputs, so a repeat costs a comparison instead of an inference
/// (and its allocations).
#[derive(Default)]
pub(crate) struct InferMemo(ByKind<Op, TensorType, Vec<TensorType>>);

impl InferMemo {
    /// `infer::infer(op, inputs)`.
    pub(crate) fn infer(&mut self, op: &Op, inputs: &[&TensorType]) -> Result<&[TensorType], String> {
        let infer = || infer::infer(op, inputs);
        let out = self.0.get_or(op.kind(), op, inputs, |a, b| a == *b, |&t| t.clone(), infer)?;
        Ok(out)
    }
}

/// [`InferMemo`] over a graph's interned ops and types, held by the
/// graph: the passes' new nodes and re-typed ones compare 4-byte op and
/// type ids and take their outputs' ids, with no types made or hashed on
/// a repeat. An op interned twice under two ids is inferred once per id.
#[derive(Clone, Debug, Default)]
pub(super) struct IdMemo(ByKind<OpId, TypeId, TypeIds>);

/// Output type ids of a node, most nodes having one.
pub(super) type TypeIds = SmallVec<[TypeId; 2]>;

impl IdMemo {
    /// The output types of `op` on inputs of types `ins`, interned in `types`.
    pub(super) fn infer(&mut self, types: &mut Types, ops: &Ops, id: OpId, ins: &[TypeId]) -> Result<TypeIds, String> {
        let op = ops.get(id);
        let make = || {
            let out = {
                let tys: SmallVec<[&TensorType; 4]> = ins.iter().map(|&t| types.get(t)).collect();
                infer::infer(op, &tys)?
            };
            Ok(out.into_iter().map(|t| types.intern_owned(t)).collect())
        };
        self.0.get_or(op.kind(), &id, ins, |a, b| a == b, |&t| t, make).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::types::DType;

    /// A remembered result is given back only for the same op (attributes
    /// included) on the same input types; more than `WAYS` of one kind
    /// evict the oldest and still answer right.
    #[test]
    fn id_memo_answers_as_inference() {
        let (mut types, mut memo, mut ops) = (Types::default(), IdMemo::default(), Ops::default());
        let shapes: Vec<TypeId> =
            (1..=6u64).map(|k| types.intern_owned(TensorType::new(DType::F32, vec![k]))).collect();
        for _ in 0..2 {
            for &x in &shapes {
                for to in [DType::F16, DType::Bf16] {
                    let cast = ops.intern(Op::Cast { to });
                    let got = memo.infer(&mut types, &ops, cast, &[x]).unwrap();
                    let want = types.get(x).with_dtype(to);
                    assert_eq!(got.len(), 1);
                    assert_eq!(types.get(got[0]), &want);
                }
            }
        }
        let add = ops.intern(Op::Add);
        assert!(memo.infer(&mut types, &ops, add, &[shapes[1], shapes[2]]).is_err(), "[2] + [3] does not broadcast");
    }
}
