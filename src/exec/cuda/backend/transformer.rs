//! The launches of the transformer family's layout, embedding and row
//! kernels (kernels/layout.cu, embed.cu, norm.cu), apart from the MLP
//! family's in the parent module.

use crate::ir::op::Op;

use super::super::gpu::{Gpu, KArg};
use super::super::launch;
use super::{n_of, p, sfx, CudaBackend, CudaBuffer};

impl<G: Gpu> CudaBackend<G> {
    /// reshape, transpose, broadcast_to, embedding, embedding_grad: writes `o`.
    pub(super) fn layout(&mut self, op: &Op, x: &[&CudaBuffer<G::Mem>], o: &CudaBuffer<G::Mem>) -> Result<(), String> {
        let n = n_of(&o.ty);
        let t = sfx(o.ty.dtype);
        match op {
            // A copy, not a view: `o` is the reshape's own planned slot, and the
            // plan may reuse the input's once the reshape has read it.
            Op::Reshape { .. } => {
                one(x)?;
                self.launch(&format!("identity_{t}"), n as u64, &[p(x[0]), p(o), KArg::I64(n)])
            }
            Op::Transpose { perm } => {
                one(x)?;
                let g = launch::transpose(&x[0].ty.shape.0, perm)?;
                let mut args = vec![p(x[0]), p(o), KArg::I64(n), KArg::I32(g.rank)];
                args.extend(g.dims.iter().chain(&g.strides).map(|&v| KArg::I64(v)));
                self.launch(&format!("transpose_{t}"), n as u64, &args)
            }
            // A gather with stride 0 along the broadcast axes: bits are copied.
            Op::BroadcastTo { .. } => {
                one(x)?;
                let g = launch::broadcast_to(&x[0].ty.shape.0, &o.ty.shape.0)?;
                let mut args = vec![p(x[0]), p(o), KArg::I64(n), KArg::I32(g.rank)];
                args.extend(g.dims.iter().chain(&g.strides).map(|&v| KArg::I64(v)));
                self.launch(&format!("transpose_{t}"), n as u64, &args)
            }
            Op::Embedding => {
                two(x)?;
                let (rows, width) = table(&x[0].ty.shape.0)?;
                let tokens = n_of(&x[1].ty);
                let args = [p(x[0]), p(x[1]), p(o), KArg::I64(tokens), KArg::I64(rows), KArg::I64(width)];
                self.launch(&format!("embedding_{t}_{}", sfx(x[1].ty.dtype)), n as u64, &args)
            }
            Op::EmbeddingGrad { .. } => {
                two(x)?;
                let (rows, width) = table(&o.ty.shape.0)?;
                let tokens = n_of(&x[1].ty);
                let args = [p(x[0]), p(x[1]), p(o), KArg::I64(tokens), KArg::I64(rows), KArg::I64(width)];
                self.launch(&format!("embedding_grad_{t}_{}", sfx(x[1].ty.dtype)), n as u64, &args)
            }
            other => Err(format!("`{}` is not a layout op", other.name())),
        }
    }

    /// layer_norm, layer_norm_grad, softmax, softmax_grad, log_softmax,
    /// log_softmax_grad: writes `y`. The layer_norm and softmax row kernels
    /// take a warp per row (work = rows · 32), log_softmax's a thread.
    pub(super) fn norm(&mut self, op: &Op, x: &[&CudaBuffer<G::Mem>], y: &[CudaBuffer<G::Mem>]) -> Result<(), String> {
        match (op, y) {
            (Op::LayerNorm { eps }, [out, mean, rstd]) => {
                if x.len() != 3 {
                    return Err(format!("expected 3 inputs, got {}", x.len()));
                }
                let (rows, width) = launch::last_axis(&x[0].ty.shape.0);
                let name = format!("layer_norm_{}_{}", sfx(x[0].ty.dtype), sfx(x[1].ty.dtype));
                let args = [
                    p(x[0]),
                    p(x[1]),
                    p(x[2]),
                    p(out),
                    p(mean),
                    p(rstd),
                    KArg::I64(rows),
                    KArg::I64(width),
                    KArg::F64(*eps),
                ];
                self.launch(&name, rows as u64 * 32, &args)
            }
            (Op::LayerNormGrad, [dx, dgamma, dbeta]) => {
                if x.len() != 5 {
                    return Err(format!("expected 5 inputs, got {}", x.len()));
                }
                let (rows, width) = launch::last_axis(&x[1].ty.shape.0);
                let ty = format!("{}_{}", sfx(x[1].ty.dtype), sfx(x[2].ty.dtype));
                let (dy, xv, gamma, mean, rstd) = (x[0], x[1], x[2], x[3], x[4]);
                let args = [p(dy), p(xv), p(gamma), p(mean), p(rstd), p(dx), KArg::I64(rows), KArg::I64(width)];
                self.launch(&format!("layer_norm_grad_{ty}"), rows as u64 * 32, &args)?;
                let args = [p(dy), p(xv), p(mean), p(rstd), p(dgamma), p(dbeta), KArg::I64(rows), KArg::I64(width)];
                self.launch(&format!("layer_norm_grad_params_{ty}"), width as u64, &args)
            }
            (Op::Softmax { axis, causal }, [out]) => {
                one(x)?;
                let (outer, len, inner) = launch::around(&x[0].ty.shape.0, *axis)?;
                // infer checks a causal softmax: axis -1 of square last axes (inner = 1).
                let causal_rows = if *causal { len } else { 0 };
                let args =
                    [p(x[0]), p(out), KArg::I64(outer), KArg::I64(len), KArg::I64(inner), KArg::I64(causal_rows)];
                self.launch(&format!("softmax_{}", sfx(out.ty.dtype)), (outer * inner) as u64 * 32, &args)
            }
            (Op::SoftmaxGrad { axis }, [dx]) => {
                two(x)?;
                let (outer, len, inner) = launch::around(&x[1].ty.shape.0, *axis)?;
                let name = format!("softmax_grad_{}_{}", sfx(dx.ty.dtype), sfx(x[1].ty.dtype));
                let args = [p(x[0]), p(x[1]), p(dx), KArg::I64(outer), KArg::I64(len), KArg::I64(inner)];
                self.launch(&name, (outer * inner) as u64 * 32, &args)
            }
            // A thread per row (work = rows), in the CPU's order.
            (Op::LogSoftmax { axis }, [out]) => {
                one(x)?;
                let (outer, len, inner) = launch::around(&x[0].ty.shape.0, *axis)?;
                let args = [p(x[0]), p(out), KArg::I64(outer), KArg::I64(len), KArg::I64(inner)];
                self.launch(&format!("log_softmax_{}", sfx(out.ty.dtype)), (outer * inner) as u64, &args)
            }
            (Op::LogSoftmaxGrad { axis }, [dx]) => {
                two(x)?;
                let (outer, len, inner) = launch::around(&x[1].ty.shape.0, *axis)?;
                let name = format!("log_softmax_grad_{}_{}", sfx(dx.ty.dtype), sfx(x[1].ty.dtype));
                let args = [p(x[0]), p(x[1]), p(dx), KArg::I64(outer), KArg::I64(len), KArg::I64(inner)];
                self.launch(&name, (outer * inner) as u64, &args)
            }
            (op, _) => Err(format!("`{}`: not a row op, or the wrong number of outputs", op.name())),
        }
    }
}

fn one<T>(x: &[T]) -> Result<(), String> {
    if x.len() == 1 {
        Ok(())
    } else {
        Err(format!("expected 1 input, got {}", x.len()))
    }
}

fn two<T>(x: &[T]) -> Result<(), String> {
    if x.len() == 2 {
        Ok(())
    } else {
        Err(format!("expected 2 inputs, got {}", x.len()))
    }
}

/// `(rows, width)` of an embedding table `[rows, width]`.
fn table(shape: &[u64]) -> Result<(i64, i64), String> {
    match shape {
        [r, w] => Ok((*r as i64, *w as i64)),
        _ => Err(format!("an embedding table is [rows, width], found {shape:?}")),
    }
}
