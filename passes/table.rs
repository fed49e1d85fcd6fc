//! The op precision table: which class each op belongs to, per low type.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::op::OpKind;
use crate::types::DType;

/// Precision classes, after TensorFlow's lists.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Always computes in the low type (matmul, conv).
    Low,
    /// Elementwise math: low when between low ops and nothing FP32 needs it wide.
    Infer,
    /// Layout and pass-through: takes its neighbours' type, never a reason for a cast.
    Clear,
    /// Always FP32 (reductions, softmax, losses, norms, exp/log, optimizer).
    Fp32,
    /// Integer or index ops: never cast.
    Int,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Low => "low",
            Class::Infer => "infer",
            Class::Clear => "clear",
            Class::Fp32 => "fp32",
            Class::Int => "int",
        }
    }
}

/// The class of every op, for one low type.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub low: DType,
    classes: BTreeMap<OpKind, Class>,
}

/// Ops with no class: sources and casts are not painted, they keep their type.
pub fn is_unpainted(k: OpKind) -> bool {
    matches!(k, OpKind::Input | OpKind::Param | OpKind::State | OpKind::Cast | OpKind::Unset)
}

impl Table {
    /// The default table for `low` (f16 or bf16), from PyTorch's CUDA
    /// autocast lists and TensorFlow's AMP lists (see DESIGN.md).
    pub fn default_for(low: DType) -> Table {
        use OpKind::*;
        let mut classes = BTreeMap::new();
        let mut set = |ops: &[OpKind], c: Class| {
            for &o in ops {
                classes.insert(o, c);
            }
        };
        set(&[Matmul, Conv2d, Conv2dGradInput, Conv2dGradWeight], Class::Low);
        set(
            &[
                Softmax,
                LogSoftmax,
                CrossEntropy,
                Mse,
                LayerNorm,
                Exp,
                Log,
                ReduceSum,
                ReduceMean,
                SumTo,
                Seed,
                SoftmaxGrad,
                LogSoftmaxGrad,
                CrossEntropyGrad,
                MseGrad,
                LayerNormGrad,
                EmbeddingGrad,
                Unscale,
                FoundInf,
                ScaleUpdate,
                Select,
                GlobalNorm,
                ClipCoef,
                Sgd,
                SgdMomentum,
                Adam,
            ],
            Class::Fp32,
        );
        set(
            &[
                Add,
                Sub,
                Mul,
                Div,
                Scale,
                Gelu,
                Tanh,
                Sigmoid,
                BatchNorm,
                BatchNormGrad,
                FrozenBatchNorm,
                FrozenBatchNormGrad,
                Erf,
                ErfGrad,
                // LRN's sums of squares would overflow FP16, but every
                // executor computes an op in f32 and rounds only its output,
                // which is at most |x|: storing it low is safe, and an FP32
                // LRN costs two casts each (onnxconverter-common runs it in FP16).
                Lrn,
                LrnGrad,
                AvgPool2d,
                AvgPool2dGrad,
                GeluGrad,
                TanhGrad,
                SigmoidGrad,
                DropoutGrad,
            ],
            Class::Infer,
        );
        set(
            &[
                Reshape,
                Transpose,
                Concat,
                Split,
                Flatten,
                Relu,
                ReluGrad,
                MaxPool2d,
                MaxPool2dGrad,
                Dropout,
                Identity,
                BroadcastTo,
                Embedding,
                Constant,
            ],
            Class::Clear,
        );
        if low == DType::Bf16 {
            // BF16 has FP32's range: sums do not overflow, so they may stay low.
            set(&[ReduceSum, ReduceMean, SumTo], Class::Infer);
        }
        Table { low, classes }
    }

    /// The class of an op; `None` for ops the table does not know.
    pub fn class(&self, k: OpKind) -> Option<Class> {
        self.classes.get(&k).copied()
    }

    /// Moves ops between classes as a table file says.
    ///
    /// The file is a JSON object from class name to a list of op names,
    /// e.g. `{"fp32": ["gelu"], "low": ["add"]}`; an op listed under two
    /// classes is an error.
    pub fn apply_file(&mut self, text: &str) -> Result<(), String> {
        let over: BTreeMap<Class, Vec<OpKind>> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut seen: BTreeMap<OpKind, Class> = BTreeMap::new();
        for (&class, ops) in &over {
            for &op in ops {
                if is_unpainted(op) {
                    return Err(format!(
                        "`{op}` has no precision class: inputs, params, state and casts keep their type"
                    ));
                }
                if let Some(prev) = seen.insert(op, class) {
                    if prev != class {
                        return Err(format!("`{op}` is listed under both `{}` and `{}`", prev.name(), class.name()));
                    }
                }
            }
        }
        self.classes.extend(seen);
        Ok(())
    }

    /// Every (op, class) pair, for documentation and `mpc explain`.
    pub fn entries(&self) -> impl Iterator<Item = (OpKind, Class)> + '_ {
        self.classes.iter().map(|(&k, &c)| (k, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_paintable_op_has_a_default_class() {
        for low in [DType::F16, DType::Bf16] {
            let t = Table::default_for(low);
            for &k in OpKind::ALL {
                assert_eq!(t.class(k).is_some(), !is_unpainted(k), "{k} under {low}");
            }
        }
    }

    #[test]
    fn cnn_import_ops_have_their_classes_in_both_tables() {
        use OpKind::*;
        for low in [DType::F16, DType::Bf16] {
            let t = Table::default_for(low);
            for (k, c) in [
                (Concat, Class::Clear),
                (Split, Class::Clear),
                (Lrn, Class::Infer),
                (LrnGrad, Class::Infer),
                (FrozenBatchNorm, Class::Infer),
                (FrozenBatchNormGrad, Class::Infer),
                (Erf, Class::Infer),
                (ErfGrad, Class::Infer),
            ] {
                assert_eq!(t.class(k), Some(c), "{k} under {low}");
            }
        }
    }

    #[test]
    fn bf16_lets_sums_be_infer() {
        assert_eq!(Table::default_for(DType::F16).class(OpKind::ReduceSum), Some(Class::Fp32));
        assert_eq!(Table::default_for(DType::Bf16).class(OpKind::ReduceSum), Some(Class::Infer));
    }

    #[test]
    fn table_file_moves_ops_and_rejects_conflicts() {
        let mut t = Table::default_for(DType::F16);
        t.apply_file(r#"{"fp32": ["gelu"], "low": ["add"]}"#).unwrap();
        assert_eq!(t.class(OpKind::Gelu), Some(Class::Fp32));
        assert_eq!(t.class(OpKind::Add), Some(Class::Low));
        let e = t.apply_file(r#"{"fp32": ["gelu"], "low": ["gelu"]}"#).unwrap_err();
        assert!(e.contains("both `low` and `fp32`"), "{e}");
        assert!(t.apply_file(r#"{"fp32": ["gelux"]}"#).unwrap_err().contains("unknown variant"));
        assert!(t.apply_file(r#"{"fp32": ["cast"]}"#).is_err());
    }
}
