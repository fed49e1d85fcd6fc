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
