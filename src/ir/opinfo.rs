//! The columns of the op table: what is known about an op apart from what
//! it computes.
//!
//! Every op has one row, declared with its [`crate::Op`] variant in
//! `src/ir/op.rs` (the `ops!` table). The lists that used to sit beside the
//! code (input names, arity, outputs, attributes, precision classes, ONNX
//! names, backends) are read from the row, by [`OpKind`] as an index:
//! `OPS[kind as usize]`, no search and no hashing.
//! What an op computes stays in exhaustive `match`es: type inference
//! (`infer`), the gradient rule (`passes/grad.rs`), each backend's kernel
//! and the ONNX conversion.

use serde::Deserialize;

use crate::ir::op::{Op, OpKind, OPS};
use crate::ir::types::DType;

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
    /// Every class, in the order `mpc table` prints them.
    pub const ALL: [Class; 5] = [Class::Low, Class::Infer, Class::Clear, Class::Fp32, Class::Int];

    /// What the class means, in a sentence (for `mpc table` and docs).
    pub fn meaning(self) -> &'static str {
        match self {
            Class::Low => "always computes in the low type (tensor-core work: matmul, conv)",
            Class::Infer => {
                "elementwise math: in the low type when its neighbours are, else FP32 (TensorFlow's gray list)"
            }
            Class::Clear => "layout and pass-through: takes its input's type, never a reason for a cast",
            Class::Fp32 => "always FP32: reductions, softmax, losses, norms, exp/log, loss scaling and the optimizer",
            Class::Int => "integer and index ops: never cast",
        }
    }

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

/// How many values an op produces.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outputs {
    Fixed(usize),
    /// One per entry of the `sizes` attribute (`split`).
    PerSize,
}

/// An op's ONNX form.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Onnx {
    /// None: the exporter refuses the op, the importer never makes it.
    No,
    /// Written by its own code in `onnx/export.rs`, mainly as this ONNX op.
    As(&'static str),
    /// One ONNX node of this type, same inputs, no attributes, computing
    /// in the output's type: exported and imported from the table alone.
    Direct(&'static str),
}

/// One row of the op table.
#[derive(Copy, Clone, Debug)]
pub struct OpInfo {
    /// The name in the `"op"` field (set by the table from the declaration).
    pub name: &'static str,
    /// The inputs' names, for messages and docs.
    pub inputs: &'static [&'static str],
    /// How many trailing inputs may be left out (the optimizers' `lr`).
    pub optional: usize,
    /// The one input may repeat (one or more inputs).
    pub variadic: bool,
    pub outputs: Outputs,
    /// The attribute fields it takes, in the order the format documents them.
    pub attrs: &'static [&'static str],
    /// The default precision class for FP16 and for BF16; `None`: not
    /// painted (sources and casts keep their type).
    pub class: [Option<Class>; 2],
    /// Loss scaling, clipping and the optimizer: FP32 whatever a table file says.
    pub pinned: bool,
    /// An input, param or state: fed to the step, never computed.
    pub source: bool,
    pub onnx: Onnx,
    /// The CUDA backend has a kernel for it.
    pub cuda: bool,
    /// Elementwise with a scalar definition in `kernels/scalar.cuh`: output
    /// element i depends only on input element i (after broadcasting), so
    /// a chain of such ops can run as one generated kernel
    /// (`exec::fuse`, `exec::cuda::fused`).
    pub fusable: bool,
}

impl OpInfo {
    /// A row with these inputs and defaults for the rest: one output, no
    /// attributes, no class, no ONNX form, a CUDA kernel.
    pub const fn new(inputs: &'static [&'static str]) -> OpInfo {
        OpInfo {
            name: "",
            inputs,
            optional: 0,
            variadic: false,
            outputs: Outputs::Fixed(1),
            attrs: &[],
            class: [None, None],
            pinned: false,
            source: false,
            onnx: Onnx::No,
            cuda: true,
            fusable: false,
        }
    }

    pub const fn attrs(self, attrs: &'static [&'static str]) -> OpInfo {
        OpInfo { attrs, ..self }
    }

    pub const fn outputs(self, n: usize) -> OpInfo {
        OpInfo { outputs: Outputs::Fixed(n), ..self }
    }

    pub const fn per_size(self) -> OpInfo {
        OpInfo { outputs: Outputs::PerSize, ..self }
    }

    pub const fn optional(self, n: usize) -> OpInfo {
        OpInfo { optional: n, ..self }
    }

    pub const fn variadic(self) -> OpInfo {
        OpInfo { variadic: true, ..self }
    }

    /// The same class for FP16 and BF16.
    pub const fn class(self, c: Class) -> OpInfo {
        OpInfo { class: [Some(c), Some(c)], ..self }
    }

    /// A class for FP16 and another for BF16.
    pub const fn classes(self, f16: Class, bf16: Class) -> OpInfo {
        OpInfo { class: [Some(f16), Some(bf16)], ..self }
    }

    /// FP32 under every table.
    pub const fn pinned(self) -> OpInfo {
        OpInfo { pinned: true, class: [Some(Class::Fp32), Some(Class::Fp32)], ..self }
    }

    pub const fn source(self) -> OpInfo {
        OpInfo { source: true, cuda: false, ..self }
    }

    pub const fn fusable(self) -> OpInfo {
        OpInfo { fusable: true, ..self }
    }

    pub const fn onnx(self, onnx: Onnx) -> OpInfo {
        OpInfo { onnx, ..self }
    }

    /// The number of inputs: (at least, at most).
    pub fn arity(&self) -> (usize, usize) {
        let n = self.inputs.len();
        if self.variadic {
            (n, usize::MAX)
        } else {
            (n - self.optional, n)
        }
    }

    /// The default class under `low` (f16 or bf16).
    pub fn class_for(&self, low: DType) -> Option<Class> {
        self.class[usize::from(low == DType::Bf16)]
    }
}

impl OpKind {
    /// The op's row in the table.
    #[inline]
    pub fn info(self) -> &'static OpInfo {
        &OPS[self as usize]
    }

    /// The name, as written in the `"op"` field.
    pub fn name(self) -> &'static str {
        self.info().name
    }
}

impl Op {
    /// The op's row in the table.
    #[inline]
    pub fn info(&self) -> &'static OpInfo {
        self.kind().info()
    }

    /// Input, param and state nodes: values that enter the step from outside.
    pub fn is_source(&self) -> bool {
        self.info().source
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// The op a `Direct` ONNX type imports as (`Relu` → `relu`).
pub fn from_onnx(op_type: &str) -> Option<OpKind> {
    OpKind::ALL.iter().copied().find(|k| matches!(k.info().onnx, Onnx::Direct(t) if t == op_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_kind_order_and_named() {
        assert_eq!(OPS.len(), OpKind::ALL.len() + 1);
        for &k in OpKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()), "{k:?}");
        }
    }

    #[test]
    fn only_split_has_an_output_per_size() {
        for &k in OpKind::ALL {
            assert_eq!(k.info().outputs == Outputs::PerSize, k == OpKind::Split, "{k}");
        }
    }

    #[test]
    fn direct_onnx_ops_are_plain_and_unique() {
        for &k in OpKind::ALL {
            if let Onnx::Direct(t) = k.info().onnx {
                assert!(k.info().attrs.is_empty(), "{k}");
                assert!(Op::plain(k).is_some(), "{k}");
                assert_eq!(from_onnx(t), Some(k));
            }
        }
    }
}
