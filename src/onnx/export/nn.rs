//! ONNX export of the norms, softmax and log-softmax, local response normalisation.

use super::*;

impl Exporter<'_> {
    /// Writes node `n`, one of this family's ops (see [`Exporter::node`]).
    pub(super) fn export_nn(&mut self, at: &At<'_>) -> Result<(), ExportError> {
        let &At { n, node, ref ins, v0, d } = at;
        let g = self.g;
        let in_ty = |i: usize| g.ty(ins[i]);
        match node.op() {
            Op::LayerNorm { eps } => self.layer_norm(n, ins, *eps)?,
            Op::Softmax { axis, causal } => {
                let ct = self.compute(d, true);
                let mut x = self.get_as(ins[0], ct, None)?;
                if *causal {
                    let dims = dims_of(in_ty(0));
                    let t = dims[dims.len() - 1] as usize;
                    let mask = self.constant(format!("causal_mask.{t}"), |name| {
                        let keep: Vec<f32> = (0..t * t).map(|k| if k % t <= k / t { 1.0 } else { 0.0 }).collect();
                        let m = Tensor::from_f32(DType::Bool, vec![t as u64, t as u64], &keep).expect("a mask");
                        tensor_proto(&name, &m, data_type::BOOL, &[t as u64, t as u64])
                    });
                    let ninf = self.scalar(ct, f64::NEG_INFINITY, &format!("neg_inf.{}", elem_suffix(ct)));
                    let base = format!("{}.masked", g.value_name(ins[0]));
                    x = self.tmp(&base, "Where", vec![mask, x, ninf], ct, &dims, vec![]);
                }
                self.simple(v0, "Softmax", vec![x], ct, false, vec![attr_i("axis", *axis)])?;
            }
            Op::LogSoftmax { axis } => {
                let ct = self.compute(d, true);
                let x = self.get_as(ins[0], ct, None)?;
                self.simple(v0, "LogSoftmax", vec![x], ct, false, vec![attr_i("axis", *axis)])?;
            }
            Op::Lrn { size, alpha, beta, bias } => {
                let ct = self.compute(d, true);
                let x = self.get_as(ins[0], ct, None)?;
                let attrs = vec![
                    attr_i("size", *size as i64),
                    attr_f("alpha", *alpha as f32),
                    attr_f("beta", *beta as f32),
                    attr_f("bias", *bias as f32),
                ];
                self.simple(v0, "LRN", vec![x], ct, false, attrs)?;
            }
            Op::FrozenBatchNorm { eps } => {
                // One type for x and the statistics. Statistics that are
                // constants are stored in x's type (as onnxconverter-common
                // does: no casts); activations that differ compute in FLOAT.
                let consts =
                    ins[1..].iter().all(|v| matches!(self.repr.get(v), Some(Repr::Init(_) | Repr::Fill { .. })));
                let ct = if in_ty(1).dtype == d || consts { self.compute(d, true) } else { data_type::FLOAT };
                let mut args = Vec::new();
                for &v in ins.iter() {
                    args.push(self.get_as(v, ct, None)?);
                }
                let attrs = vec![attr_f("epsilon", *eps as f32)];
                self.simple(v0, "BatchNormalization", args, ct, false, attrs)?;
            }
            Op::BatchNorm { eps, .. } => self.batch_norm(n, ins, *eps)?,
            other => {
                return Err(ExportError::Graph(format!("{} is not exported by the nn family", other.name())));
            }
        }
        Ok(())
    }
}
