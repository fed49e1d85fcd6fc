//! The op precision table: which class each op belongs to, per low type.

use std::collections::BTreeMap;

use crate::ir::op::{OpKind, OPS};
use crate::ir::types::DType;

pub use crate::ir::opinfo::Class;

/// The class of every op, for one low type.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub low: DType,
    /// Indexed by `OpKind as usize`.
    classes: [Option<Class>; OPS.len()],
}

/// Ops with no class: sources and casts are not painted, they keep their type.
pub fn is_unpainted(k: OpKind) -> bool {
    k.info().class == [None, None]
}

/// Ops of loss scaling, gradient clipping and the optimizer: always FP32,
/// whatever a table file says (a clipped or unscaled gradient in FP16 would
/// lose what loss scaling keeps).
pub fn is_pinned(k: OpKind) -> bool {
    k.info().pinned
}

/// The gradient ops of a forward op, found by name: `K_grad` and `K_grad_*`
/// (the IR's naming rule for gradient ops).
pub fn gradients_of(k: OpKind) -> &'static [OpKind] {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static BY_OP: OnceLock<HashMap<OpKind, Vec<OpKind>>> = OnceLock::new();
    let map = BY_OP.get_or_init(|| {
        let mut m: HashMap<OpKind, Vec<OpKind>> = HashMap::new();
        for &f in OpKind::ALL {
            let stem = format!("{}_grad", f.name());
            for &g in OpKind::ALL {
                if g.name() == stem || g.name().starts_with(&format!("{stem}_")) {
                    m.entry(f).or_default().push(g);
                }
            }
        }
        m
    });
    map.get(&k).map_or(&[], Vec::as_slice)
}

impl Table {
    /// The default table for `low` (f16 or bf16), from PyTorch's CUDA
    /// autocast lists and TensorFlow's AMP lists (see docs/DESIGN.md): the
    /// classes of the op table's rows (`src/ir/op.rs`). There LRN is `infer`:
    /// its sums of squares would overflow FP16, but every executor computes
    /// an op in f32 and rounds only its output, which is at most |x|, so
    /// storing it low is safe, and an FP32 LRN costs two casts each
    /// (onnxconverter-common runs it in FP16). Under BF16, which has FP32's
    /// range, sums do not overflow and may stay low (`infer`).
    pub fn default_for(low: DType) -> Table {
        Table { low, classes: std::array::from_fn(|i| OPS[i].class_for(low)) }
    }

    /// The class of an op; `None` for ops the table does not know.
    #[inline]
    pub fn class(&self, k: OpKind) -> Option<Class> {
        self.classes[k as usize]
    }

    /// Moves ops between classes as a table file says.
    ///
    /// The file is a JSON object from class name to a list of op names,
    /// e.g. `{"fp32": ["gelu"], "low": ["add"]}`; an op listed under two
    /// classes is an error. A forward op's gradient ops (`gelu_grad` for
    /// `gelu`, `conv2d_grad_input` for `conv2d`) move with it unless the
    /// file lists them itself. Loss scaling, gradient clipping and the
    /// optimizer stay FP32: moving them is an error.
    pub fn apply_file(&mut self, text: &str) -> Result<(), super::table_file::TableFileError> {
        let seen: BTreeMap<OpKind, Class> = super::table_file::read(text)?
            .into_iter()
            .flat_map(|(class, ops)| ops.into_iter().map(move |op| (op, class)))
            .collect();
        let mut moved = seen.clone();
        for (&op, &class) in &seen {
            for &g in gradients_of(op) {
                moved.entry(g).or_insert(class);
            }
        }
        for (op, class) in moved {
            self.classes[op as usize] = Some(class);
        }
        Ok(())
    }

    /// Every (op, class) pair, for documentation and `mpc explain`.
    pub fn entries(&self) -> impl Iterator<Item = (OpKind, Class)> + '_ {
        OpKind::ALL.iter().filter_map(|&k| Some((k, self.class(k)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_follow_their_forward_op() {
        use OpKind::*;
        assert_eq!(gradients_of(Gelu), &[GeluGrad]);
        assert_eq!(gradients_of(Conv2d), &[Conv2dGradInput, Conv2dGradWeight]);
        assert_eq!(gradients_of(MaxPool2d), &[MaxPool2dGrad]);
        assert!(gradients_of(Exp).is_empty());
        let mut t = Table::default_for(DType::F16);
        t.apply_file(r#"{"fp32": ["gelu", "batch_norm"], "infer": ["batch_norm_grad"]}"#).unwrap();
        assert_eq!(t.class(Gelu), Some(Class::Fp32));
        assert_eq!(t.class(GeluGrad), Some(Class::Fp32), "moved with gelu");
        assert_eq!(t.class(BatchNormGrad), Some(Class::Infer), "listed itself: stays where the file says");
    }

    #[test]
    fn scaling_clipping_and_the_optimizer_stay_fp32() {
        let mut t = Table::default_for(DType::F16);
        for op in ["global_norm", "clip_coef", "unscale", "adam"] {
            let e = t.apply_file(&format!(r#"{{"low": ["{op}"]}}"#)).unwrap_err().to_string();
            assert!(e.contains("stay fp32"), "{op}: {e}");
        }
        assert!(t.apply_file(r#"{"fp32": ["clip_coef"]}"#).is_ok());
    }

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
        let e = t.apply_file(r#"{"fp32": ["gelu"], "low": ["gelu"]}"#).unwrap_err().to_string();
        assert!(e.contains("both `fp32` and `low`"), "{e}");
        let e = t.apply_file(r#"{"fp32": ["gelux"]}"#).unwrap_err().to_string();
        assert!(e.contains("no op is named `gelux`, did you mean `gelu`?"), "{e}");
        assert!(t.apply_file(r#"{"fp32": ["cast"]}"#).is_err());
    }
}
