//! ONNX export of inputs, params, state and constants, casts, identity and dropout, the elementwise ops.

use super::*;

impl Exporter<'_> {
    /// Writes node `n`, one of this family's ops (see [`Exporter::node`]).
    pub(super) fn export_values(&mut self, at: &At<'_>) -> Result<(), ExportError> {
        let &At { n, node, ref ins, v0, d } = at;
        let g = self.g;
        let in_ty = |i: usize| g.ty(ins[i]);
        match node.op() {
            Op::Input { ty } => {
                let name = self.name_of(v0);
                self.inputs.push(ValueInfoProto::tensor(&name, self.store(ty.dtype), &dims_of(ty)));
                self.repr.insert(v0, Repr::Act);
            }
            Op::Param { ty, .. } | Op::State { ty, .. } if fill_value(node.op()).is_some() => {
                let value = fill_value(node.op()).unwrap_or(0.0);
                self.repr.insert(v0, Repr::Fill { value, ty: ty.clone() });
            }
            Op::Param { .. } | Op::State { .. } => {
                let t = self
                    .state
                    .get(&n)
                    .map(|t| t.as_ref().clone())
                    .ok_or_else(|| ExportError::Graph(format!("no initial value for `{}`", node.name())))?;
                self.repr.insert(v0, Repr::Init(InitVal { raw: t, round: None }));
            }
            Op::Constant { value, ty } => {
                self.repr.insert(v0, Repr::Init(InitVal::of(Tensor::full(ty, *value)?)));
            }
            Op::Cast { to } => match self.repr.get(&ins[0]) {
                Some(Repr::Fill { value, ty }) => {
                    let rounded = Tensor::full(&TensorType::scalar(ty.dtype), *value)?.data().cast(*to);
                    let value = Tensor::new(Vec::<u64>::new(), rounded)?.to_f32_vec()[0] as f64;
                    self.repr.insert(v0, Repr::Fill { value, ty: ty.with_dtype(*to) });
                }
                Some(Repr::Init(t)) => {
                    let t = t.cast(*to)?;
                    self.repr.insert(v0, Repr::Init(t));
                }
                _ => {
                    let x = self.get(ins[0])?;
                    let from = self.store(in_ty(0).dtype);
                    let to_elem = elem_type(*to);
                    if from == to_elem {
                        // Also emulated bf16 to f32: the stored values are already exact.
                        self.simple(v0, "Identity", vec![x], from, true, vec![])?;
                    } else {
                        self.simple(v0, "Cast", vec![x], to_elem, true, vec![attr_i("to", to_elem as i64)])?;
                    }
                }
            },
            Op::Identity | Op::Dropout { .. } => {
                if self.needed.contains(&v0) {
                    let x = self.get(ins[0])?;
                    self.simple(v0, "Identity", vec![x], self.store(d), true, vec![])?;
                }
                if let Op::Dropout { .. } = node.op() {
                    let mask = ValueId { node: n, slot: 1 };
                    if self.needed.contains(&mask) {
                        // Inference keeps every element.
                        let dims = dims_of(self.ty(mask));
                        let shape = self.ints("shape", &dims.iter().map(|&d| d as i64).collect::<Vec<_>>());
                        let one = Tensor::full(&TensorType::new(DType::Bool, vec![1]), 1.0)?;
                        let value = tensor_proto("value", &one, data_type::BOOL, &[1]);
                        self.simple(
                            mask,
                            "ConstantOfShape",
                            vec![shape],
                            data_type::BOOL,
                            true,
                            vec![attr_t("value", value)],
                        )?;
                    }
                }
            }
            // One ONNX node of the table's type, computing in the output's type.
            Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Relu
            | Op::Tanh
            | Op::Sigmoid
            | Op::Exp
            | Op::Log
            | Op::Erf
            | Op::Sqrt => {
                let Onnx::Direct(op_type) = node.op().info().onnx else {
                    return Err(ExportError::Unsupported(vec![(node.name().to_string(), node.op().name())]));
                };
                let ct = self.compute(d, true);
                let xs = ins.iter().map(|&v| self.get_as(v, ct, None)).collect::<Result<Vec<_>, _>>()?;
                // relu only selects: exact in any type.
                self.simple(v0, op_type, xs, ct, matches!(node.op(), Op::Relu), vec![])?;
            }
            Op::Scale { value } => {
                let ct = self.compute(d, true);
                let x = self.get_as(ins[0], ct, None)?;
                let s = self.scalar(ct, *value, &format!("{}.value", node.name()));
                self.simple(v0, "Mul", vec![x, s], ct, false, vec![])?;
            }
            Op::Gelu => self.gelu(v0, ins[0])?,
            other => {
                return Err(ExportError::Graph(format!("{} is not exported by the values family", other.name())));
            }
        }
        Ok(())
    }
}
