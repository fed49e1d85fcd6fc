//! Shape inference with a memory of recent results per op kind.

use super::*;

/// Shape inference that remembers its last few results per op kind: the
/// nodes of a model repeat, and the same op on the same input types gives
/// the same outputs, so a repeat costs a comparison instead of an inference
/// (and its allocations). Errors are not remembered.
#[derive(Default)]
pub(crate) struct InferMemo {
    /// Per op kind: up to `WAYS` results, and the next one to replace.
    last: Vec<(Vec<Inferred>, usize)>,
}

/// An op, its input types and its output types.
type Inferred = (Op, SmallVec<[TensorType; 3]>, Vec<TensorType>);

impl InferMemo {
    const WAYS: usize = 4;

    /// `infer::infer(op, inputs)`.
    pub(crate) fn infer(&mut self, op: &Op, inputs: &[&TensorType]) -> Result<&[TensorType], String> {
        let kind = op.kind() as usize;
        if self.last.len() <= kind {
            self.last.resize_with(kind + 1, Default::default);
        }
        let (seen, next) = &mut self.last[kind];
        let hit = seen.iter().position(|(o, ins, _)| {
            o == op && ins.len() == inputs.len() && ins.iter().zip(inputs).all(|(a, b)| a == *b)
        });
        let at = match hit {
            Some(at) => at,
            None => {
                let out = infer::infer(op, inputs)?;
                let entry = (op.clone(), inputs.iter().map(|&t| t.clone()).collect(), out);
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

/// [`InferMemo`] over a graph's interned types, held by the graph: the
/// passes' new nodes and re-typed ones compare 4-byte type ids and take
/// their outputs' ids, with no types made or hashed on a repeat.
#[derive(Clone, Debug, Default)]
pub(super) struct IdMemo {
    /// Per op kind: up to `WAYS` results, and the next one to replace.
    last: Vec<(Vec<IdInferred>, usize)>,
}

/// An op, its input types and its output types.
type IdInferred = (Op, SmallVec<[TypeId; 3]>, SmallVec<[TypeId; 2]>);

/// Output type ids of a node, most nodes having one.
pub(super) type TypeIds = SmallVec<[TypeId; 2]>;

impl IdMemo {
    const WAYS: usize = 4;

    /// The output types of `op` on inputs of types `ins`, interned in `types`.
    pub(super) fn infer(&mut self, types: &mut Types, op: &Op, ins: &[TypeId]) -> Result<TypeIds, String> {
        let kind = op.kind() as usize;
        if self.last.len() <= kind {
            self.last.resize_with(kind + 1, Default::default);
        }
        let (seen, next) = &mut self.last[kind];
        if let Some((_, _, out)) = seen.iter().find(|(o, i, _)| i.as_slice() == ins && o == op) {
            return Ok(out.clone());
        }
        let out = {
            let tys: SmallVec<[&TensorType; 4]> = ins.iter().map(|&t| types.get(t)).collect();
            infer::infer(op, &tys)?
        };
        let out: TypeIds = out.into_iter().map(|t| types.intern_owned(t)).collect();
        let entry = (op.clone(), SmallVec::from_slice(ins), out.clone());
        if seen.len() < Self::WAYS {
            seen.push(entry);
        } else {
            seen[*next] = entry;
            *next = (*next + 1) % Self::WAYS;
        }
        Ok(out)
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
        let (mut types, mut memo) = (Types::default(), IdMemo::default());
        let shapes: Vec<TypeId> =
            (1..=6u64).map(|k| types.intern_owned(TensorType::new(DType::F32, vec![k]))).collect();
        for _ in 0..2 {
            for &x in &shapes {
                for to in [DType::F16, DType::Bf16] {
                    let got = memo.infer(&mut types, &Op::Cast { to }, &[x]).unwrap();
                    let want = types.get(x).with_dtype(to);
                    assert_eq!(got.len(), 1);
                    assert_eq!(types.get(got[0]), &want);
                }
            }
        }
        assert!(memo.infer(&mut types, &Op::Add, &[shapes[1], shapes[2]]).is_err(), "[2] + [3] does not broadcast");
    }
}
