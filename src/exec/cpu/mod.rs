//! The CPU reference backend.
//!
//! Every kernel reads its inputs (widening low types to f32 exactly),
//! computes in f32 with f32 accumulation (f64 where the op's doc comment
//! allows it: global_norm, found_inf, the means of the losses) and rounds
//! each output once to its dtype, nearest even. Integer and bool ops are
//! exact; layout ops and `select` copy bits. Before running a kernel the
//! backend re-infers the node's output types from its inputs' types and
//! checks them against `out_types`, so kernels can rely on their inputs'
//! shapes.
//!
//! Kernels are grouped by family: [`elementwise`], [`layout`] (shape and
//! reduction ops, embedding), [`linalg`] (matmul, conv, pooling), [`nn`]
//! (softmax, norms, losses) and [`optim`] (loss scaling and optimizers).

use crate::ir::infer;
use crate::ir::op::Op;
use crate::ir::types::{Shape, TensorType};

use super::backend::{Backend, OpCtx};
use super::ExecError;
use crate::tensor::Tensor;

pub mod elementwise;
pub mod layout;
pub mod linalg;
pub mod nn;
pub mod optim;

/// A kernel's result; the message is wrapped into [`ExecError::Op`].
pub(crate) type KResult<T> = Result<T, String>;

/// The CPU reference backend; its buffers are host [`Tensor`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend.
    pub fn new() -> CpuBackend {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    type Buffer = Tensor;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&mut self, t: &Tensor) -> Result<Tensor, ExecError> {
        Ok(t.clone())
    }

    fn download(&mut self, b: &Tensor) -> Result<Tensor, ExecError> {
        Ok(b.clone())
    }

    fn run(
        &mut self,
        op: &Op,
        ctx: &OpCtx<'_>,
        inputs: &[&Tensor],
        out_types: &[TensorType],
    ) -> Result<Vec<Tensor>, ExecError> {
        let err = |message: String| ExecError::Op { node: ctx.node.to_string(), op: op.name(), message };
        let in_types: Vec<TensorType> = inputs.iter().map(|t| t.ty()).collect();
        let refs: Vec<&TensorType> = in_types.iter().collect();
        let expected = infer::infer(op, &refs).map_err(err)?;
        if expected != out_types {
            return Err(err(format!(
                "the inputs give output types {} but the node declares {}",
                types_text(&expected),
                types_text(out_types)
            )));
        }
        let out = kernel(op, ctx, inputs, out_types).map_err(err)?;
        debug_assert!(out.iter().zip(out_types).all(|(t, ty)| &t.ty() == ty));
        Ok(out)
    }
}

fn types_text(ts: &[TensorType]) -> String {
    ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}

fn kernel(op: &Op, ctx: &OpCtx<'_>, x: &[&Tensor], out: &[TensorType]) -> KResult<Vec<Tensor>> {
    use Op::*;
    let o = &out[0];
    let one = |t: KResult<Tensor>| t.map(|t| vec![t]);
    match op {
        Input { .. } | Param { .. } | State { .. } => {
            Err("input, param and state values are fed by the executor, not computed".into())
        }
        Constant { value, ty } => one(Tensor::full(ty, *value).map_err(|e| e.to_string())),
        Seed => one(Tensor::full(o, 1.0).map_err(|e| e.to_string())),
        Cast { to } => one(wrap(Tensor::new(x[0].shape().clone(), x[0].data().cast(*to)))),
        Identity => Ok(vec![x[0].clone()]),
        Add | Sub | Mul | Div => one(elementwise::binary(op, x[0], x[1], o)),
        Scale { value } => {
            let s = *value as f32;
            one(elementwise::unary(x[0], o, |v| v * s))
        }
        Relu => one(elementwise::unary(x[0], o, elementwise::relu)),
        Gelu => one(elementwise::unary(x[0], o, elementwise::gelu)),
        Tanh => one(elementwise::unary(x[0], o, f32::tanh)),
        Sigmoid => one(elementwise::unary(x[0], o, elementwise::sigmoid)),
        Exp => one(elementwise::unary(x[0], o, f32::exp)),
        Log => one(elementwise::unary(x[0], o, f32::ln)),
        Erf => one(elementwise::unary(x[0], o, elementwise::erf)),
        Sqrt => one(elementwise::unary(x[0], o, f32::sqrt)),
        ReluGrad => one(elementwise::unary_grad(x[0], x[1], o, elementwise::relu_grad)),
        GeluGrad => one(elementwise::unary_grad(x[0], x[1], o, elementwise::gelu_grad)),
        ErfGrad => one(elementwise::unary_grad(x[0], x[1], o, elementwise::erf_grad)),
        TanhGrad => one(elementwise::unary_grad(x[0], x[1], o, elementwise::tanh_grad)),
        SigmoidGrad => one(elementwise::unary_grad(x[0], x[1], o, elementwise::sigmoid_grad)),
        Dropout { p, seed } => elementwise::dropout(*p, *seed, ctx, x[0], out),
        DropoutGrad { p } => one(elementwise::dropout_grad(*p, x[0], x[1], o)),
        Select => one(elementwise::select(x[0], x[1], x[2])),
        Matmul { transpose_a, transpose_b } => one(linalg::matmul(x[0], x[1], *transpose_a, *transpose_b, o)),
        Conv2d(cv) => one(linalg::conv2d(x[0], x[1], cv, o)),
        Conv2dGradInput { conv, .. } => one(linalg::conv2d_grad_input(x[0], x[1], conv, o)),
        Conv2dGradWeight { conv, .. } => one(linalg::conv2d_grad_weight(x[0], x[1], conv, o)),
        MaxPool2d(w) => one(linalg::max_pool(x[0], w, o)),
        MaxPool2dGrad(w) => one(linalg::max_pool_grad(x[0], x[1], w, o)),
        AvgPool2d { window, count_include_pad } => one(linalg::avg_pool(x[0], window, *count_include_pad, o)),
        AvgPool2dGrad { window, count_include_pad, .. } => {
            one(linalg::avg_pool_grad(x[0], window, *count_include_pad, o))
        }
        Embedding => one(layout::embedding(x[0], x[1], o)),
        EmbeddingGrad { .. } => one(layout::embedding_grad(x[0], x[1], o)),
        Flatten { .. } | Reshape { .. } => one(wrap(x[0].clone().reshaped(o.shape.clone()))),
        Transpose { perm } => one(layout::transpose(x[0], perm)),
        Concat { axis } => one(layout::concat(x, *axis, o)),
        Split { axis, .. } => layout::split(x[0], *axis, out),
        ReduceSum { axes, .. } | ReduceMean { axes, .. } => {
            one(layout::reduce(x[0], axes, matches!(op, ReduceMean { .. }), o))
        }
        SumTo { .. } => one(layout::sum_to(x[0], o)),
        BroadcastTo { .. } => one(layout::broadcast_to(x[0], o)),
        Softmax { axis, causal } => one(nn::softmax(x[0], *axis, *causal, false, o)),
        LogSoftmax { axis } => one(nn::softmax(x[0], *axis, false, true, o)),
        SoftmaxGrad { axis } => one(nn::softmax_grad(x[0], x[1], *axis, false, o)),
        LogSoftmaxGrad { axis } => one(nn::softmax_grad(x[0], x[1], *axis, true, o)),
        LayerNorm { eps } => nn::layer_norm(x[0], x[1], x[2], *eps, out),
        LayerNormGrad => nn::layer_norm_grad(x[0], x[1], x[2], x[3], x[4], out),
        BatchNorm { eps, .. } => nn::batch_norm(x[0], x[1], x[2], *eps, out),
        BatchNormGrad { eps } => nn::batch_norm_grad(x[0], x[1], x[2], x[3], x[4], *eps, out),
        FrozenBatchNorm { eps } => one(nn::frozen_batch_norm(x, *eps, o)),
        FrozenBatchNormGrad { eps } => nn::frozen_batch_norm_grad(x, *eps, out),
        Lrn { size, alpha, beta, bias } => one(nn::lrn(x[0], &nn::LrnHyper::new(*size, *alpha, *beta, *bias), o)),
        LrnGrad { size, alpha, beta, bias } => {
            one(nn::lrn_grad(x[0], x[1], &nn::LrnHyper::new(*size, *alpha, *beta, *bias), o))
        }
        CrossEntropy => one(nn::cross_entropy(x[0], x[1], o)),
        CrossEntropyGrad => one(nn::cross_entropy_grad(x[0], x[1], x[2], o)),
        Mse => one(nn::mse(x[0], x[1], o)),
        MseGrad => one(nn::mse_grad(x[0], x[1], x[2], o)),
        Unscale => one(optim::unscale(x[0], x[1], o)),
        FoundInf => Ok(vec![optim::found_inf(x)]),
        ScaleUpdate { growth_factor, backoff_factor, growth_interval } => {
            optim::scale_update(x[0], x[1], x[2], *growth_factor, *backoff_factor, *growth_interval)
        }
        GlobalNorm => Ok(vec![optim::global_norm(x)]),
        ClipCoef { max_norm } => one(optim::clip_coef(x[0], *max_norm)),
        LrSchedule { lr, warmup, total, min_lr } => one(optim::lr_schedule(x[0], *lr, *warmup, *total, *min_lr)),
        Sgd { lr, weight_decay } => one(optim::sgd(x[0], x[1], optim::lr(x.get(2), *lr)?, *weight_decay, o)),
        SgdMomentum { lr, momentum, weight_decay } => {
            optim::sgd_momentum(x[0], x[1], x[2], optim::lr(x.get(3), *lr)?, *momentum, *weight_decay, out)
        }
        Adam { lr, beta1, beta2, eps, weight_decay, decoupled } => {
            let h = optim::AdamHyper {
                lr: optim::lr(x.get(5), *lr)?,
                beta1: *beta1,
                beta2: *beta2,
                eps: *eps,
                weight_decay: *weight_decay,
                decoupled: *decoupled,
            };
            optim::adam(x[0], x[1], x[2], x[3], x[4], &h, out)
        }
    }
}

/// An [`ExecError`] from tensor construction as a kernel message.
pub(crate) fn wrap<E: std::fmt::Display>(t: Result<Tensor, E>) -> KResult<Tensor> {
    t.map_err(|e| e.to_string())
}

/// f32 values rounded once into a tensor of type `ty`.
pub(crate) fn from_f32(ty: &TensorType, values: &[f32]) -> KResult<Tensor> {
    wrap(Tensor::from_f32(ty.dtype, ty.shape.clone(), values))
}

/// Dimensions as usize.
pub(crate) fn dims(s: &Shape) -> Vec<usize> {
    s.0.iter().map(|&d| d as usize).collect()
}

/// Row-major strides of `dims`.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// For each element of `to` (row-major), the index of the element of
/// `from` that NumPy broadcasting reads (axes right-aligned, size-1 axes
/// repeated). `from` must broadcast to `to`.
pub(crate) fn broadcast_map(from: &[usize], to: &[usize]) -> Vec<usize> {
    let n: usize = to.iter().product();
    let r = to.len();
    let off = r - from.len();
    // The stride of `from` seen along each axis of `to` (0 when broadcast).
    let fs = strides(from);
    let src: Vec<usize> = (0..r).map(|i| if i < off || from[i - off] == 1 { 0 } else { fs[i - off] }).collect();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    let mut cur = 0usize;
    for _ in 0..n {
        out.push(cur);
        for ax in (0..r).rev() {
            idx[ax] += 1;
            cur += src[ax];
            if idx[ax] < to[ax] {
                break;
            }
            cur -= src[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_map_repeats_size_one_axes() {
        assert_eq!(broadcast_map(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_map(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_map(&[], &[2]), vec![0, 0]);
        assert_eq!(broadcast_map(&[2, 2], &[2, 2]), vec![0, 1, 2, 3]);
    }
}
