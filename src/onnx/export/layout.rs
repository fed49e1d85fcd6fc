//! ONNX export of embedding, concat and split, reshapes and transposes, reductions and broadcasts.

use super::*;

impl Exporter<'_> {
    /// Writes node `n`, one of this family's ops (see [`Exporter::node`]).
    pub(super) fn export_layout(&mut self, at: &At<'_>) -> Result<(), ExportError> {
        let &At { n, node, ref ins, v0, d } = at;
        let g = self.g;
        let out = self.ty(v0);
        let in_ty = |i: usize| g.ty(ins[i]);
        match node.op() {
            Op::Embedding => {
                let table = self.get(ins[0])?;
                let ids = self.get(ins[1])?;
                self.simple(v0, "Gather", vec![table, ids], self.store(d), true, vec![attr_i("axis", 0)])?;
            }
            Op::Concat { axis } => {
                let mut args = Vec::new();
                for &v in ins.iter() {
                    args.push(self.get(v)?);
                }
                self.simple(v0, "Concat", args, self.store(d), true, vec![attr_i("axis", *axis)])?;
            }
            Op::Split { axis, sizes } => {
                let x = self.get(ins[0])?;
                let split = self.ints("split", &sizes.iter().map(|&s| s as i64).collect::<Vec<_>>());
                let e = self.store(d);
                let outs: Vec<(String, i32, Vec<u64>)> =
                    g.values(n).map(|v| (self.name_of(v), e, dims_of(self.ty(v)))).collect();
                self.push("Split", vec![x, split], outs, vec![attr_i("axis", *axis)]);
                for v in g.values(n) {
                    self.repr.insert(v, Repr::Act);
                }
            }
            Op::Flatten { axis } => {
                let x = self.get(ins[0])?;
                self.simple(v0, "Flatten", vec![x], self.store(d), true, vec![attr_i("axis", *axis)])?;
            }
            Op::Reshape { .. } => {
                let x = self.get(ins[0])?;
                let shape = self.ints("shape", &out.shape.0.iter().map(|&d| d as i64).collect::<Vec<_>>());
                self.simple(v0, "Reshape", vec![x, shape], self.store(d), true, vec![])?;
            }
            Op::Transpose { perm } => {
                let x = self.get(ins[0])?;
                let perm = perm.iter().map(|&p| p as i64).collect();
                self.simple(v0, "Transpose", vec![x], self.store(d), true, vec![attr_ints("perm", perm)])?;
            }
            Op::ReduceSum { axes, keepdims } | Op::ReduceMean { axes, keepdims } => {
                let ct = self.compute(d, true);
                let x = self.get_as(ins[0], ct, None)?;
                let keep = attr_i("keepdims", i64::from(*keepdims));
                if matches!(node.op(), Op::ReduceSum { .. }) {
                    let a = self.ints("axes", axes);
                    self.simple(v0, "ReduceSum", vec![x, a], ct, false, vec![keep])?;
                } else {
                    self.simple(v0, "ReduceMean", vec![x], ct, false, vec![attr_ints("axes", axes.clone()), keep])?;
                }
            }
            Op::SumTo { shape } => {
                let ct = self.compute(d, true);
                let x = self.get_as(ins[0], ct, None)?;
                let xd = dims_of(in_ty(0));
                let lead = xd.len() - shape.len();
                let axes: Vec<i64> = (0..xd.len())
                    .filter(|&i| i < lead || (shape[i - lead] == 1 && xd[i] != 1))
                    .map(|i| i as i64)
                    .collect();
                if axes.is_empty() {
                    self.simple(v0, "Identity", vec![x], ct, true, vec![])?;
                } else {
                    let a = self.ints("axes", &axes);
                    // `axes` ascends: a binary search, not `contains` (r² at rank r).
                    let kept: Vec<u64> = xd
                        .iter()
                        .enumerate()
                        .map(|(i, &s)| if axes.binary_search(&(i as i64)).is_ok() { 1 } else { s })
                        .collect();
                    let base = format!("{}.sum", g.value_name(v0));
                    let s = self.tmp(&base, "ReduceSum", vec![x, a], ct, &kept, vec![attr_i("keepdims", 1)]);
                    let target = self.ints("shape", &shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
                    self.simple(v0, "Reshape", vec![s, target], ct, false, vec![])?;
                }
            }
            Op::BroadcastTo { shape } => {
                let x = self.get(ins[0])?;
                let s = self.ints("shape", &shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
                self.simple(v0, "Expand", vec![x, s], self.store(d), true, vec![])?;
            }
            other => {
                return Err(ExportError::Graph(format!("{} is not exported by the layout family", other.name())));
            }
        }
        Ok(())
    }
}
