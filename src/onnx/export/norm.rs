//! The ops ONNX has no single node for: gelu (tanh form) and the norms,
//! written as ONNX arithmetic in FLOAT with mpc's f32 computation.

use super::*;

impl<'a> Exporter<'a> {
    /// gelu, tanh approximation, in FLOAT with mpc's f32 constants and
    /// evaluation order: `(0.5 x) (1 + tanh(c (x + ((a x) x) x)))`.
    pub(super) fn gelu(&mut self, v: ValueId, x: ValueId) -> Result<(), ExportError> {
        const C: f32 = 0.797_884_6;
        const A: f32 = 0.044715;
        let f = data_type::FLOAT;
        let xf = self.get_as(x, f, None)?;
        let dims = dims_of(self.ty(x));
        let base = self.g.value_name(v).to_string();
        let (a, c) = (self.scalar(f, A as f64, "gelu.a"), self.scalar(f, C as f64, "gelu.c"));
        let (half, one) = (self.scalar(f, 0.5, "half"), self.scalar(f, 1.0, "one"));
        self.make(v, f, false, |e, name| {
            let t = |e: &mut Self, what: &str, op: &str, ins: Vec<String>| {
                e.tmp(&format!("{base}.{what}"), op, ins, f, &dims, vec![])
            };
            let ax = t(e, "ax", "Mul", vec![xf.clone(), a]);
            let ax2 = t(e, "ax2", "Mul", vec![ax, xf.clone()]);
            let ax3 = t(e, "ax3", "Mul", vec![ax2, xf.clone()]);
            let inner = t(e, "inner", "Add", vec![xf.clone(), ax3]);
            let z = t(e, "z", "Mul", vec![inner, c]);
            let th = t(e, "tanh", "Tanh", vec![z]);
            let u = t(e, "u", "Add", vec![th, one]);
            let h = t(e, "half_x", "Mul", vec![xf.clone(), half]);
            e.push("Mul", vec![h, u], vec![(name, f, dims.clone())], vec![]);
            Ok(())
        })
    }

    pub(super) fn layer_norm(&mut self, n: NodeId, ins: &[ValueId], eps: f64) -> Result<(), ExportError> {
        let g = self.g;
        let y = ValueId { node: n, slot: 0 };
        let (xt, gt) = (g.ty(ins[0]).dtype, g.ty(ins[1]).dtype);
        // ONNX wants one type for x, scale and bias; with mixed types compute
        // in FLOAT (exact, as mpc does).
        let ct = if xt == gt { self.compute(xt, true) } else { data_type::FLOAT };
        let x = self.get_as(ins[0], ct, None)?;
        let gamma = self.get_as(ins[1], ct, None)?;
        let beta = self.get_as(ins[2], ct, None)?;
        let xd = dims_of(g.ty(ins[0]));
        let mut stat_dims = xd.clone();
        if let Some(l) = stat_dims.last_mut() {
            *l = 1;
        }
        let stats: Vec<ValueId> = (1..3).map(|slot| ValueId { node: n, slot }).collect();
        let stat_names: Vec<String> = stats
            .iter()
            .map(|&s| if self.needed.contains(&s) { format!("{}.keepdims", g.value_name(s)) } else { String::new() })
            .collect();
        let stat_names: Vec<String> =
            stat_names.into_iter().map(|s| if s.is_empty() { s } else { self.fresh(&s) }).collect();
        let attrs = vec![attr_i("axis", -1), attr_f("epsilon", eps as f32), attr_i("stash_type", 1)];
        let dims = xd.clone();
        let sn = stat_names.clone();
        let sd = stat_dims.clone();
        self.make(y, ct, false, move |e, name| {
            let mut outs = vec![(name, ct, dims)];
            for s in sn.iter() {
                outs.push((s.clone(), data_type::FLOAT, sd.clone()));
            }
            while outs.last().is_some_and(|o| o.0.is_empty()) {
                outs.pop();
            }
            e.push("LayerNormalization", vec![x, gamma, beta], outs, attrs);
            Ok(())
        })?;
        for (s, kept) in stats.into_iter().zip(stat_names) {
            if !kept.is_empty() {
                let shape = self.ints("shape", &dims_of(g.ty(s)).iter().map(|&d| d as i64).collect::<Vec<_>>());
                self.simple(s, "Reshape", vec![kept, shape], data_type::FLOAT, true, vec![])?;
            }
        }
        Ok(())
    }

    /// batch_norm with batch statistics (mpc has no running statistics), in
    /// FLOAT as mpc computes it: `(x - mean) · (1/sqrt(var + eps)) · gamma + beta`.
    pub(super) fn batch_norm(&mut self, n: NodeId, ins: &[ValueId], eps: f64) -> Result<(), ExportError> {
        let g = self.g;
        let f = data_type::FLOAT;
        let y = ValueId { node: n, slot: 0 };
        let xd = dims_of(g.ty(ins[0]));
        let c = xd[1];
        let mut cd = vec![1u64; xd.len()];
        cd[1] = c;
        let axes: Vec<i64> = (0..xd.len() as i64).filter(|&a| a != 1).collect();
        let x = self.get_as(ins[0], f, None)?;
        let gamma = self.get_as(ins[1], f, Some(&cd))?;
        let beta = self.get_as(ins[2], f, Some(&cd))?;
        let base = g.value_name(y).to_string();
        let eps_c = self.scalar(f, eps as f32 as f64, &format!("{base}.eps"));
        let one = self.scalar(f, 1.0, "one");
        let red = |axes: &[i64]| vec![attr_ints("axes", axes.to_vec()), attr_i("keepdims", 1)];
        let mean = self.tmp(&format!("{base}.mean"), "ReduceMean", vec![x.clone()], f, &cd, red(&axes));
        let diff = self.tmp(&format!("{base}.centered"), "Sub", vec![x, mean.clone()], f, &xd, vec![]);
        let sq = self.tmp(&format!("{base}.sq"), "Mul", vec![diff.clone(), diff.clone()], f, &xd, vec![]);
        let var = self.tmp(&format!("{base}.var"), "ReduceMean", vec![sq], f, &cd, red(&axes));
        let ve = self.tmp(&format!("{base}.var_eps"), "Add", vec![var.clone(), eps_c], f, &cd, vec![]);
        let sd = self.tmp(&format!("{base}.std"), "Sqrt", vec![ve], f, &cd, vec![]);
        let rstd = self.tmp(&format!("{base}.rstd"), "Div", vec![one, sd], f, &cd, vec![]);
        let xhat = self.tmp(&format!("{base}.xhat"), "Mul", vec![diff, rstd], f, &xd, vec![]);
        let scaled = self.tmp(&format!("{base}.scaled"), "Mul", vec![xhat, gamma], f, &xd, vec![]);
        self.simple(y, "Add", vec![scaled, beta], f, false, vec![])?;
        for (slot, stat) in [(1u32, mean), (2, var)] {
            let s = ValueId { node: n, slot };
            if self.needed.contains(&s) {
                let shape = self.ints("shape", &[c as i64]);
                self.simple(s, "Reshape", vec![stat, shape], f, true, vec![])?;
            }
        }
        Ok(())
    }
}
