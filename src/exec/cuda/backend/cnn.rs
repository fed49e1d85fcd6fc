//! The launches of the CNN family: convolutions (kernels/conv.cu), pooling
//! (pool.cu), batch norms (bnorm.cu), LRN (lrn.cu), and the copies
//! flatten, concat and split (identity, `slab_copy` in layout.cu).
//!
//! Per-channel vectors reach the batch-norm kernels as f32: a low-type
//! gamma, beta, mean or var is widened into f32 scratch first (exact), and
//! a low-type dgamma/dbeta is summed into f32 scratch and rounded once to
//! its type afterwards, as the CPU's `to_f32_vec`/`from_f32` do.

use crate::ir::op::Op;
use crate::ir::types::{DType, TensorType};

use super::super::gpu::{Gpu, KArg};
use super::super::launch;
use super::{n_of, need_f32, p, sfx, CudaBackend, CudaBuffer};

type Buf<G> = CudaBuffer<<G as Gpu>::Mem>;

impl<G: Gpu> CudaBackend<G> {
    /// Every CNN-family op: writes `y`.
    pub(super) fn cnn(&mut self, op: &Op, x: &[&Buf<G>], y: &[Buf<G>]) -> Result<(), String> {
        let o = y.first().ok_or("an op without outputs")?;
        let t = sfx(o.ty.dtype);
        let shape = |b: &Buf<G>| b.ty.shape.0.clone();
        match op {
            Op::Conv2d(cv) => {
                arity(x, 2)?;
                let d = launch::conv(&shape(x[0]), &shape(x[1]), &shape(o), cv)?;
                self.conv_launch(&format!("conv2d_{t}"), n_of(&o.ty), x[0], x[1], o, d)
            }
            Op::Conv2dGradInput { conv, .. } => {
                arity(x, 2)?;
                let d = launch::conv(&shape(o), &shape(x[1]), &shape(x[0]), conv)?;
                self.conv_launch(&format!("conv2d_grad_input_{t}"), n_of(&o.ty), x[0], x[1], o, d)
            }
            Op::Conv2dGradWeight { conv, .. } => {
                arity(x, 2)?;
                let d = launch::conv(&shape(x[1]), &shape(o), &shape(x[0]), conv)?;
                self.conv_launch(&format!("conv2d_grad_weight_{t}"), n_of(&o.ty), x[0], x[1], o, d)
            }
            Op::MaxPool2d(win) => {
                arity(x, 1)?;
                let d = launch::pool(&shape(x[0]), &shape(o), win)?;
                let mut args = vec![p(x[0]), p(o)];
                args.extend(d.iter().map(|&v| KArg::I64(v)));
                self.launch(&format!("max_pool2d_{t}"), n_of(&o.ty) as u64, &args)
            }
            Op::MaxPool2dGrad(win) => {
                arity(x, 2)?;
                let d = launch::pool(&shape(x[1]), &shape(x[0]), win)?;
                let mut args = vec![p(x[0]), p(x[1]), p(o)];
                args.extend(d.iter().map(|&v| KArg::I64(v)));
                self.launch(&format!("max_pool2d_grad_{t}"), n_of(&o.ty) as u64, &args)
            }
            Op::AvgPool2d { window, count_include_pad } => {
                arity(x, 1)?;
                let d = launch::pool(&shape(x[0]), &shape(o), window)?;
                let mut args = vec![p(x[0]), p(o)];
                args.extend(d.iter().map(|&v| KArg::I64(v)));
                args.push(KArg::I32(i32::from(*count_include_pad)));
                self.launch(&format!("avg_pool2d_{t}"), n_of(&o.ty) as u64, &args)
            }
            Op::AvgPool2dGrad { window, count_include_pad, .. } => {
                arity(x, 1)?;
                let d = launch::pool(&shape(o), &shape(x[0]), window)?;
                let mut args = vec![p(x[0]), p(o)];
                args.extend(d.iter().map(|&v| KArg::I64(v)));
                args.push(KArg::I32(i32::from(*count_include_pad)));
                self.launch(&format!("avg_pool2d_grad_{t}"), n_of(&o.ty) as u64, &args)
            }
            Op::BatchNorm { eps, .. } => {
                arity(x, 3)?;
                let [out, mean, var] = y else { return Err("batch_norm has three outputs".into()) };
                need_f32(mean, "mean")?;
                need_f32(var, "var")?;
                let (n, c, s) = launch::ncs(&shape(x[0]))?;
                let dims = [KArg::I64(n), KArg::I64(c), KArg::I64(s)];
                let xt = sfx(x[0].ty.dtype);
                let mut args = vec![p(x[0]), p(mean), p(var)];
                args.extend(dims.iter().cloned());
                self.launch(&format!("batch_norm_stats_{xt}"), c as u64, &args)?;
                let (g, b) = (self.widened(x[1])?, self.widened(x[2])?);
                let (g, b) = (g.as_ref().unwrap_or(x[1]), b.as_ref().unwrap_or(x[2]));
                let mut args = vec![p(x[0]), p(g), p(b), p(mean), p(var), p(out)];
                args.extend(dims);
                args.push(KArg::F64(*eps));
                self.launch(&format!("batch_norm_apply_{xt}"), n_of(&out.ty) as u64, &args)
            }
            Op::FrozenBatchNorm { eps } => {
                arity(x, 5)?;
                let (n, c, s) = launch::ncs(&shape(x[0]))?;
                let wide = [self.widened(x[1])?, self.widened(x[2])?, self.widened(x[3])?, self.widened(x[4])?];
                let v: Vec<&Buf<G>> = wide.iter().zip(&x[1..]).map(|(w, &b)| w.as_ref().unwrap_or(b)).collect();
                let args = [
                    p(x[0]),
                    p(v[0]),
                    p(v[1]),
                    p(v[2]),
                    p(v[3]),
                    p(o),
                    KArg::I64(n),
                    KArg::I64(c),
                    KArg::I64(s),
                    KArg::F64(*eps),
                ];
                self.launch(&format!("batch_norm_apply_{t}"), n_of(&o.ty) as u64, &args)
            }
            Op::BatchNormGrad { eps } | Op::FrozenBatchNormGrad { eps } => {
                arity(x, 5)?;
                let [dx, dgamma, dbeta] = y else { return Err(format!("{} has three outputs", op.name())) };
                let (n, c, s) = launch::ncs(&shape(x[1]))?;
                let dims = [KArg::I64(n), KArg::I64(c), KArg::I64(s)];
                let xt = sfx(x[1].ty.dtype);
                let wide = [self.widened(x[2])?, self.widened(x[3])?, self.widened(x[4])?];
                let v: Vec<&Buf<G>> = wide.iter().zip(&x[2..]).map(|(w, &b)| w.as_ref().unwrap_or(b)).collect();
                let (gamma, mean, var) = (v[0], v[1], v[2]);
                // The f32 sums: the outputs themselves when f32, else scratch rounded afterwards.
                let (sg, sb) = (self.f32_scratch(dgamma)?, self.f32_scratch(dbeta)?);
                {
                    let (g32, b32) = (sg.as_ref().unwrap_or(dgamma), sb.as_ref().unwrap_or(dbeta));
                    let mut args = vec![p(x[0]), p(x[1]), p(mean), p(var), p(g32), p(b32)];
                    args.extend(dims.iter().cloned());
                    args.push(KArg::F64(*eps));
                    self.launch(&format!("batch_norm_grad_params_{xt}"), c as u64, &args)?;
                    let work = n_of(&dx.ty) as u64;
                    if let Op::BatchNormGrad { .. } = op {
                        let mut args = vec![p(x[0]), p(x[1]), p(gamma), p(mean), p(var), p(g32), p(b32), p(dx)];
                        args.extend(dims.iter().cloned());
                        args.push(KArg::F64(*eps));
                        self.launch(&format!("batch_norm_grad_dx_{xt}"), work, &args)?;
                    } else {
                        let mut args = vec![p(x[0]), p(gamma), p(var), p(dx)];
                        args.extend(dims.iter().cloned());
                        args.push(KArg::F64(*eps));
                        self.launch(&format!("frozen_batch_norm_grad_dx_{xt}"), work, &args)?;
                    }
                }
                for (scratch, out) in [(sg, dgamma), (sb, dbeta)] {
                    if let Some(s32) = scratch {
                        let m = n_of(&out.ty);
                        let name = format!("cast_f32_{}", sfx(out.ty.dtype));
                        self.launch(&name, m as u64, &[p(&s32), p(out), KArg::I64(m)])?;
                    }
                }
                Ok(())
            }
            Op::Lrn { size, alpha, beta, bias } | Op::LrnGrad { size, alpha, beta, bias } => {
                let grad = matches!(op, Op::LrnGrad { .. });
                arity(x, if grad { 2 } else { 1 })?;
                let (n, c, s) = launch::ncs(&shape(o))?;
                let before = size.saturating_sub(1) / 2;
                let after = size.saturating_sub(1) - before;
                let mut args: Vec<KArg<'_, G::Mem>> = x.iter().map(|&b| p(b)).collect();
                args.push(p(o));
                args.extend([n, c, s, before as i64, after as i64].map(KArg::I64));
                args.extend([KArg::F64(*alpha), KArg::I64(*size as i64), KArg::F64(*beta), KArg::F64(*bias)]);
                let name = if grad { format!("lrn_grad_{t}") } else { format!("lrn_{t}") };
                self.launch(&name, n_of(&o.ty) as u64, &args)
            }
            // A copy into the flatten's own planned slot (as reshape).
            Op::Flatten { .. } => {
                arity(x, 1)?;
                let n = n_of(&o.ty);
                self.launch(&format!("identity_{t}"), n as u64, &[p(x[0]), p(o), KArg::I64(n)])
            }
            Op::Concat { axis } => {
                let ax = o.ty.shape.axis(*axis)?;
                let (outer, inner) = launch::slabs(&o.ty.shape.0, ax);
                let yrow = o.ty.shape.0[ax] as i64 * inner;
                let mut at = 0i64;
                for part in x {
                    let len = part.ty.shape.0[ax] as i64 * inner;
                    self.slab_copy(part, o, outer, len, (len, 0), (yrow, at))?;
                    at += len;
                }
                Ok(())
            }
            Op::Split { axis, .. } => {
                arity(x, 1)?;
                let ax = x[0].ty.shape.axis(*axis)?;
                let (outer, inner) = launch::slabs(&x[0].ty.shape.0, ax);
                let xrow = x[0].ty.shape.0[ax] as i64 * inner;
                let mut at = 0i64;
                for piece in y {
                    let len = piece.ty.shape.0[ax] as i64 * inner;
                    self.slab_copy(x[0], piece, outer, len, (xrow, at), (len, 0))?;
                    at += len;
                }
                Ok(())
            }
            other => Err(format!("`{}` is not a CNN-family op", other.name())),
        }
    }

    fn conv_launch(
        &mut self,
        name: &str,
        work: i64,
        a: &Buf<G>,
        b: &Buf<G>,
        out: &Buf<G>,
        dims: [i64; 16],
    ) -> Result<(), String> {
        let mut args = vec![p(a), p(b), p(out)];
        args.extend(dims.iter().map(|&v| KArg::I64(v)));
        self.launch(name, work as u64, &args)
    }

    /// `outer` rows of `len` elements from `x` (row stride, offset) to `y`.
    fn slab_copy(
        &mut self,
        x: &Buf<G>,
        y: &Buf<G>,
        outer: i64,
        len: i64,
        (xrow, xoff): (i64, i64),
        (yrow, yoff): (i64, i64),
    ) -> Result<(), String> {
        let n = outer * len;
        let args = [
            p(x),
            p(y),
            KArg::I64(n),
            KArg::I64(len),
            KArg::I64(xrow),
            KArg::I64(xoff),
            KArg::I64(yrow),
            KArg::I64(yoff),
        ];
        self.launch(&format!("slab_copy_{}", sfx(y.ty.dtype)), n as u64, &args)
    }

    /// `b` widened to f32 in scratch, or None when it is f32 already.
    fn widened(&mut self, b: &Buf<G>) -> Result<Option<Buf<G>>, String> {
        if b.ty.dtype == DType::F32 {
            return Ok(None);
        }
        let out = self.f32_buffer(&b.ty)?;
        let n = n_of(&b.ty);
        self.launch(&format!("cast_{}_f32", sfx(b.ty.dtype)), n as u64, &[p(b), p(&out), KArg::I64(n)])?;
        Ok(Some(out))
    }

    /// f32 scratch shaped as `b`, or None when `b` is f32 (written directly).
    fn f32_scratch(&mut self, b: &Buf<G>) -> Result<Option<Buf<G>>, String> {
        if b.ty.dtype == DType::F32 {
            return Ok(None);
        }
        self.f32_buffer(&b.ty).map(Some)
    }

    fn f32_buffer(&mut self, ty: &TensorType) -> Result<Buf<G>, String> {
        self.buffer(&ty.with_dtype(DType::F32)).map_err(|e| e.to_string())
    }
}

fn arity<T>(x: &[T], k: usize) -> Result<(), String> {
    if x.len() == k {
        Ok(())
    } else {
        Err(format!("expected {k} inputs, got {}", x.len()))
    }
}
