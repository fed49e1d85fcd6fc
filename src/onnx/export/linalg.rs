//! ONNX export of matmul (as Gemm with a folded bias where it can), convolution and pooling.

use super::*;

impl Exporter<'_> {
    /// Writes node `n`, one of this family's ops (see [`Exporter::node`]).
    pub(super) fn export_linalg(&mut self, at: &At<'_>) -> Result<(), ExportError> {
        let &At { n, node, ref ins, v0, d } = at;
        let g = self.g;
        let in_ty = |i: usize| g.ty(ins[i]);
        match node.op() {
            Op::Matmul { transpose_a, transpose_b } => {
                let ct = self.compute(d, true);
                let mut a = self.get_as(ins[0], ct, None)?;
                let mut b = self.get_as(ins[1], ct, None)?;
                let (ra, rb) = (in_ty(0).shape.rank(), in_ty(1).shape.rank());
                let cols = (ra == 2 && rb == 2).then(|| g.ty(v0).shape.0[1]);
                let folded = cols.and_then(|c| Some((self.bias_add(n, &[c])?, c)));
                if ra == 2 && rb == 2 && (*transpose_a || *transpose_b || folded.is_some()) {
                    let attrs =
                        vec![attr_i("transA", i64::from(*transpose_a)), attr_i("transB", i64::from(*transpose_b))];
                    match folded {
                        Some(((add, param, to), c)) => {
                            let bias = self.bias_init(param, to, ct, c)?;
                            self.fused.insert(add);
                            self.simple(ValueId { node: add, slot: 0 }, "Gemm", vec![a, b, bias], ct, false, attrs)?;
                        }
                        None => self.simple(v0, "Gemm", vec![a, b], ct, false, attrs)?,
                    }
                } else {
                    for (flag, x, i) in [(*transpose_a, &mut a, 0), (*transpose_b, &mut b, 1)] {
                        if flag {
                            let mut dims = dims_of(in_ty(i));
                            let r = dims.len();
                            dims.swap(r - 2, r - 1);
                            let mut perm: Vec<i64> = (0..r as i64).collect();
                            perm.swap(r - 2, r - 1);
                            let base = format!("{}.t", g.value_name(ins[i]));
                            *x =
                                self.tmp(&base, "Transpose", vec![x.clone()], ct, &dims, vec![attr_ints("perm", perm)]);
                        }
                    }
                    self.simple(v0, "MatMul", vec![a, b], ct, false, vec![])?;
                }
            }
            Op::Conv2d(cv) => {
                let ct = self.compute(d, false);
                let x = self.get_as(ins[0], ct, None)?;
                let w = self.get_as(ins[1], ct, None)?;
                let wd = dims_of(in_ty(1));
                let mut attrs = vec![
                    attr_ints("kernel_shape", vec![wd[2] as i64, wd[3] as i64]),
                    attr_ints("strides", cv.stride.iter().map(|&s| s as i64).collect()),
                    attr_ints("pads", pads(&cv.padding, &cv.padding)),
                    attr_i("group", cv.groups as i64),
                ];
                // ONNX's default is 1; written only when dilated, so other exports stay as they were.
                if cv.dilation != [1, 1] {
                    attrs.push(attr_ints("dilations", cv.dilation.iter().map(|&v| v as i64).collect()));
                }
                if let Some(c) = wd.first().copied() {
                    if let Some((add, param, to)) = self.bias_add(n, &[c, 1, 1]) {
                        let bias = self.bias_init(param, to, ct, c)?;
                        self.fused.insert(add);
                        self.simple(ValueId { node: add, slot: 0 }, "Conv", vec![x, w, bias], ct, false, attrs)?;
                        return Ok(());
                    }
                }
                self.simple(v0, "Conv", vec![x, w], ct, false, attrs)?;
            }
            Op::MaxPool2d(w) => {
                let ct = self.compute(d, false);
                let x = self.get_as(ins[0], ct, None)?;
                self.simple(v0, "MaxPool", vec![x], ct, true, window_attrs(w))?;
            }
            Op::AvgPool2d { window, count_include_pad } => {
                let ct = self.compute(d, false);
                let x = self.get_as(ins[0], ct, None)?;
                let mut attrs = window_attrs(window);
                attrs.push(attr_i("count_include_pad", i64::from(*count_include_pad)));
                self.simple(v0, "AveragePool", vec![x], ct, false, attrs)?;
            }
            other => {
                return Err(ExportError::Graph(format!("{} is not exported by the linalg family", other.name())));
            }
        }
        Ok(())
    }
}
