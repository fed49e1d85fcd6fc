//! Operands: initializers (converted once, cached per type), scalar and
//! shape constants, values read in another type, and the node builders
//! every op's export uses.

use super::*;

impl<'a> Exporter<'a> {
    /// Appends initializer `name` holding `val` as element type `elem`:
    /// the source bytes themselves when no conversion is needed, a pending
    /// batch conversion for f32 to f16/bf16, else converted now.
    pub(super) fn push_init(&mut self, name: &str, val: &InitVal, elem: i32, dims: &[u64]) -> Result<(), ExportError> {
        let target = elem_dtype(elem);
        let raw = &val.raw;
        let value_type = val.round.unwrap_or(raw.dtype);
        let batch = match (raw.dtype, value_type, target) {
            (DType::F32, DType::F16, DType::F16) | (DType::F32, DType::F32, DType::F16) => Some(Rounding::F16),
            (DType::F32, DType::Bf16, DType::Bf16) | (DType::F32, DType::F32, DType::Bf16) => Some(Rounding::Bf16),
            (DType::F32, DType::Bf16, DType::F32) => Some(Rounding::Bf16AsF32),
            _ => None,
        };
        let data = match batch {
            Some(r) => {
                self.pending.push((self.inits.len(), raw.data.clone(), r));
                None
            }
            None if value_type == raw.dtype && target == raw.dtype => Some(raw.data.clone()),
            None => Some(val.settled()?.cast(target)?.data),
        };
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(elem),
            name: Some(name.into()),
            raw_data: data,
            ..Default::default()
        });
        Ok(())
    }

    /// A scalar initializer of element type `elem`, named after `hint`
    /// when first made and shared by every reader of the same value.
    pub(super) fn scalar(&mut self, elem: i32, value: f64, hint: &str) -> String {
        let key = format!("scalar.{}.{:x}", elem_suffix(elem), value.to_bits());
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.fresh(hint);
        self.consts.insert(key, name.clone());
        self.inits.push({
            let t = Tensor::full(&TensorType::scalar(DType::F32), value).expect("a scalar");
            // Round once from f64 to the element type (f32 first for floats, as mpc's constants).
            tensor_proto(&name, &t, elem, &[])
        });
        name
    }

    /// An int64 vector initializer (shapes, axes).
    pub(super) fn ints(&mut self, what: &str, values: &[i64]) -> String {
        let key = format!("{what}.{}", values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("_"));
        self.constant(key, |name| TensorProto {
            dims: vec![values.len() as i64],
            data_type: Some(data_type::INT64),
            name: Some(name),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
            ..Default::default()
        })
    }

    /// Value `v` as an ONNX value of element type `elem` (and shape `dims`
    /// when given, for an initializer or through a Reshape): the value
    /// itself, a converted initializer, or a Cast of an activation.
    pub(super) fn get_as(&mut self, v: ValueId, elem: i32, dims: Option<&[u64]>) -> Result<String, ExportError> {
        // The common case, an activation read as it is: nothing to make or remember.
        if let Some(Repr::Act) = self.repr.get(&v) {
            let same_dims = dims.is_none_or(|d| d == self.ty(v).shape.0.as_slice());
            if same_dims && elem == self.store(self.ty(v).dtype) {
                return Ok(self.name_of(v));
            }
        }
        let own: &'a [u64] = &self.ty(v).shape.0;
        let want = dims.unwrap_or(own);
        let key = (v, elem, (want != own).then(|| want.to_vec()));
        if let Some(n) = self.converted.get(&key) {
            return Ok(n.clone());
        }
        let store = self.store(self.ty(v).dtype);
        let vname = self.g.value_name(v);
        let name = match self.repr.get(&v) {
            None => return Err(ExportError::Graph(format!("value `{vname}` is read before it is made"))),
            Some(Repr::Init(t)) => {
                let t = t.clone();
                let name = if elem == store && want == own {
                    self.name_of(v)
                } else if want == own {
                    self.fresh(&format!("{vname}.{}", elem_suffix(elem)))
                } else {
                    self.fresh(&format!("{vname}.{}.reshaped", elem_suffix(elem)))
                };
                self.push_init(&name, &t, elem, want)?;
                name
            }
            Some(Repr::Fill { value, ty }) if elem == data_type::BFLOAT16 => {
                // Opset 17's ConstantOfShape has no bfloat16 output: an initializer.
                let t = Tensor::full(ty, *value)?;
                self.repr.insert(v, Repr::Init(InitVal::of(t)));
                return self.get_as(v, elem, dims);
            }
            Some(Repr::Fill { value, ty }) => {
                // The value as the tensor would hold it: rounded to its dtype, then to `elem`.
                let t = Tensor::full(&TensorType::scalar(ty.dtype), *value)?;
                let one = tensor_proto("value", &t, elem, &[1]);
                let shape = self.ints("shape", &want.iter().map(|&d| d as i64).collect::<Vec<_>>());
                let base = if elem == store && want == own {
                    vname.to_string()
                } else {
                    format!("{vname}.{}", elem_suffix(elem))
                };
                let attr = AttributeProto {
                    name: Some("value".into()),
                    r#type: Some(attr_type::TENSOR),
                    t: Some(one),
                    ..Default::default()
                };
                self.tmp(&base, "ConstantOfShape", vec![shape], elem, want, vec![attr])
            }
            Some(Repr::Act) if want == own => {
                let x = self.get_as(v, store, None)?;
                let base = format!("{vname}.{}", elem_suffix(elem));
                self.tmp(&base, "Cast", vec![x], elem, own, vec![attr_i("to", elem as i64)])
            }
            Some(Repr::Act) => {
                let x = self.get_as(v, elem, None)?;
                let shape = self.ints("shape", &want.iter().map(|&d| d as i64).collect::<Vec<_>>());
                self.tmp(&format!("{vname}.reshaped"), "Reshape", vec![x, shape], elem, want, vec![])
            }
        };
        self.converted.insert(key, name.clone());
        Ok(name)
    }

    /// Value `v` in its storage type.
    pub(super) fn get(&mut self, v: ValueId) -> Result<String, ExportError> {
        let e = self.store(self.ty(v).dtype);
        self.get_as(v, e, None)
    }

    /// Makes mpc value `v`: `op` writes the name it is given, computing in
    /// element type `produced`; then the result is converted to the
    /// storage type and, for an emulated bf16 value that `op` may have
    /// rounded (`exact` false), rounded to bf16.
    pub(super) fn make(
        &mut self,
        v: ValueId,
        produced: i32,
        exact: bool,
        op: impl FnOnce(&mut Self, String) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        let ty = self.ty(v);
        let store = self.store(ty.dtype);
        let round =
            self.mode == Bf16Mode::Emulated && ty.dtype == DType::Bf16 && !exact && produced != data_type::BFLOAT16;
        let final_name = self.name_of(v);
        if produced == store && !round {
            op(self, final_name)?;
        } else {
            let dims = dims_of(ty);
            let base = self.g.value_name(v);
            let mut cur = self.fresh(&format!("{base}.{}", elem_suffix(produced)));
            op(self, cur.clone())?;
            if round {
                cur = self.tmp(
                    &format!("{base}.bf16"),
                    "Cast",
                    vec![cur],
                    data_type::BFLOAT16,
                    &dims,
                    vec![attr_i("to", data_type::BFLOAT16 as i64)],
                );
            }
            self.push("Cast", vec![cur], vec![(final_name, store, dims)], vec![attr_i("to", store as i64)]);
        }
        self.repr.insert(v, Repr::Act);
        Ok(())
    }

    /// Makes `v` with one node `op_type` reading `inputs`, computing in `produced`.
    pub(super) fn simple(
        &mut self,
        v: ValueId,
        op_type: &str,
        inputs: Vec<String>,
        produced: i32,
        exact: bool,
        attrs: Vec<AttributeProto>,
    ) -> Result<(), ExportError> {
        let dims = dims_of(self.ty(v));
        self.make(v, produced, exact, |x, name| {
            x.push(op_type, inputs, vec![(name, produced, dims)], attrs);
            Ok(())
        })
    }

    /// A conv2d or matmul whose only reader is an `add` of a bias param
    /// (or a cast of one) shaped `bias`: (the add, the bias param, the
    /// cast's type). The export folds it into Conv's bias or Gemm's C
    /// input, one rounding instead of two, as onnxconverter-common's Conv
    /// and Gemm. Not in emulated BF16, which must round exactly where mpc
    /// does.
    pub(super) fn bias_add(&self, n: NodeId, bias: &[u64]) -> Option<(NodeId, NodeId, Option<DType>)> {
        let g = self.g;
        let v0 = ValueId { node: n, slot: 0 };
        if self.mode == Bf16Mode::Emulated && g.ty(v0).dtype == DType::Bf16 || g.outputs.contains(&v0) {
            return None;
        }
        // The one reader, without collecting them.
        let mut uses = g.users(n).filter(|(_, e)| e.slot == 0);
        let (Some((add, e)), None) = (uses.next(), uses.next()) else { return None };
        let port = e.port;
        let add_v = ValueId { node: add, slot: 0 };
        if !matches!(g.node(add).op(), Op::Add) || !self.needed.contains(&add_v) && !g.outputs.contains(&add_v) {
            return None;
        }
        let b = g.inputs(add)[1 - port as usize];
        let (ty, out) = (g.ty(v0), g.ty(add_v));
        if g.ty(b).dtype != ty.dtype || g.ty(b).shape.0 != bias || out != ty {
            return None;
        }
        match g.node(b.node).op() {
            Op::Param { .. } | Op::State { .. } => Some((add, b.node, None)),
            Op::Cast { to } => {
                let p = g.inputs(b.node)[0].node;
                matches!(g.node(p).op(), Op::Param { .. } | Op::State { .. }).then_some((add, p, Some(*to)))
            }
            _ => None,
        }
    }

    /// The initializer of a folded bias: `param`'s value, cast to `to` if
    /// the add read a cast of it, stored as `ct` with dims `[len]`.
    pub(super) fn bias_init(
        &mut self,
        param: NodeId,
        to: Option<DType>,
        ct: i32,
        len: u64,
    ) -> Result<String, ExportError> {
        let p = self.g.node(param);
        let t = match (fill_value(p.op()), p.op()) {
            (Some(value), Op::Param { ty, .. } | Op::State { ty, .. }) => InitVal::of(Tensor::full(ty, value)?),
            _ => InitVal {
                raw: self
                    .state
                    .get(&param)
                    .map(|t| t.as_ref().clone())
                    .ok_or_else(|| ExportError::Graph(format!("no initial value for `{}`", p.name())))?,
                round: None,
            },
        };
        let t = match to {
            Some(to) => t.cast(to)?,
            None => t,
        };
        let bias = self.fresh(&format!("{}.bias", p.name()));
        self.push_init(&bias, &t, ct, &[len])?;
        Ok(bias)
    }
}
