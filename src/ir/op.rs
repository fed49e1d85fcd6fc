//! The closed set of operations.
//!
//! Every op is one variant of [`Op`]; its attributes are fields of the
//! variant. The printer, verifier, shape inference and (later) the precision
//! table and executors all `match` on it, so adding an op makes the compiler
//! list every place that must learn about it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ir::opinfo::Class::*;
use crate::ir::opinfo::Onnx::*;
use crate::ir::opinfo::OpInfo;
use crate::ir::types::{DType, TensorType};

/// How a parameter or state tensor is initialised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element `value`.
    Constant { value: f64 },
    /// Normal distribution.
    Normal {
        #[serde(default)]
        mean: f64,
        std: f64,
    },
    /// Uniform distribution on `[low, high)`.
    Uniform { low: f64, high: f64 },
    /// Glorot/Xavier uniform: bound `gain * sqrt(6 / (fan_in + fan_out))`.
    XavierUniform {
        #[serde(default = "one")]
        gain: f64,
    },
    /// He/Kaiming normal: std `gain / sqrt(fan_in)` (gain sqrt(2) for ReLU).
    KaimingNormal {
        #[serde(default = "sqrt2")]
        gain: f64,
    },
    /// Values come from a safetensors file beside the graph, matched by name.
    File,
}

fn one() -> f64 {
    1.0
}
fn sqrt2() -> f64 {
    std::f64::consts::SQRT_2
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Zeros => write!(f, "zeros"),
            Init::Ones => write!(f, "ones"),
            Init::Constant { value } => write!(f, "constant({value})"),
            Init::Normal { mean, std } => write!(f, "normal(mean={mean}, std={std})"),
            Init::Uniform { low, high } => write!(f, "uniform({low}, {high})"),
            Init::XavierUniform { gain } => write!(f, "xavier_uniform(gain={gain})"),
            Init::KaimingNormal { gain } => write!(f, "kaiming_normal(gain={gain})"),
            Init::File => write!(f, "file"),
        }
    }
}

/// The role of a node in a training step.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Forward,
    Backward,
    Optimizer,
    Scaler,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Forward => "forward",
            Role::Backward => "backward",
            Role::Optimizer => "optimizer",
            Role::Scaler => "scaler",
        }
    }
}

/// A per-node precision pin that overrides the op precision table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Always compute in FP32.
    Fp32,
    /// Compute in the low type (FP16 or BF16) chosen for the run.
    Low,
}

/// Window of a 2-D convolution or pooling op (height, width).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub kernel: [u64; 2],
    pub stride: [u64; 2],
    /// Zero padding before the input: [top, left].
    pub padding: [u64; 2],
    /// Zero padding after the input: [bottom, right] (equal to `padding`
    /// for a symmetric window).
    pub padding_end: [u64; 2],
}

impl Window {
    /// A window padded alike on both sides.
    pub fn new(kernel: [u64; 2], stride: [u64; 2], padding: [u64; 2]) -> Window {
        Window { kernel, stride, padding, padding_end: padding }
    }

    /// Why a pooling window's padding on `field`, axis `i`, is refused.
    pub fn padding_message(&self, field: &str, i: usize) -> String {
        let pad = if field == "padding" { self.padding[i] } else { self.padding_end[i] };
        format!(
            "pooling padding must be smaller than the kernel (a window would hold only padding), found {field} {pad} \
             for kernel {} ({})",
            self.kernel[i],
            ["height", "width"][i]
        )
    }

    /// The first side whose pooling padding is not smaller than the kernel,
    /// as (field, axis): there a window could lie wholly in the padding,
    /// with no input to pool (ONNX allows such pads; a ceil_mode import
    /// widens the end padding, up to `kernel - 1`).
    pub fn padding_too_wide(&self) -> Option<(&'static str, usize)> {
        [("padding", self.padding), ("padding_end", self.padding_end)]
            .into_iter()
            .find_map(|(field, pad)| (0..2).find(|&i| pad[i] >= self.kernel[i]).map(|i| (field, i)))
    }

    /// Output spatial size for an input of `h x w`; `None` if the window does not fit.
    pub fn output_hw(&self, h: u64, w: u64) -> Option<[u64; 2]> {
        let mut out = [0; 2];
        for (i, size) in [h, w].into_iter().enumerate() {
            let padded = size.checked_add(self.padding[i])?.checked_add(self.padding_end[i])?;
            if self.kernel[i] == 0 || self.stride[i] == 0 || padded < self.kernel[i] {
                return None;
            }
            out[i] = (padded - self.kernel[i]) / self.stride[i] + 1;
        }
        Some(out)
    }
}

/// A 2-D convolution's attributes (height, width), shared by `conv2d` and
/// its two gradients.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conv {
    pub stride: [u64; 2],
    /// Zero padding on both sides: [top and bottom, left and right].
    pub padding: [u64; 2],
    /// The step between a kernel's taps (1: adjacent): a kernel of size `k`
    /// spans `(k - 1)·dilation + 1` input positions.
    pub dilation: [u64; 2],
    pub groups: u64,
}

impl Conv {
    /// An undilated convolution.
    pub fn new(stride: [u64; 2], padding: [u64; 2], groups: u64) -> Conv {
        Conv { stride, padding, dilation: [1, 1], groups }
    }

    /// The input positions a kernel of size `kernel` spans, `(k - 1)·d + 1`
    /// per axis; `None` on overflow or a zero size or dilation.
    pub fn extent(&self, kernel: [u64; 2]) -> Option<[u64; 2]> {
        let span = |i: usize| {
            if kernel[i] == 0 || self.dilation[i] == 0 {
                return None;
            }
            (kernel[i] - 1).checked_mul(self.dilation[i])?.checked_add(1)
        };
        Some([span(0)?, span(1)?])
    }
}

/// The op table: one declaration per op makes its [`OpKind`], its [`Op`]
/// variant (with the attributes as fields), `Op::kind`, `Op::plain` and
/// its row in [`OPS`] (see [`crate::ir::opinfo`]).
macro_rules! ops {
    (
        $(#[$meta:meta])*
        pub enum Op {
            $($kind:ident $({ $($f:ident : $ft:ty),* $(,)? })? $(( $($tt:ty),* ))? => $name:literal : $info:expr,)*
        }
    ) => {
        /// The name of an op, as written in the `"op"` field.
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum OpKind {
            /// Only a placeholder for `RawNode::default()`.
            #[default]
            #[serde(skip)]
            Unset,
            $(#[serde(rename = $name)] $kind,)*
        }

        impl OpKind {
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind,)*];
        }

        /// Every op's row, indexed by `OpKind as usize` (`Unset` first).
        pub static OPS: [OpInfo; 1 + OpKind::ALL.len()] = [
            OpInfo { name: "unset", ..OpInfo::new(&[]) },
            $(OpInfo { name: $name, ..$info },)*
        ];

        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $($kind $({ $($f: $ft),* })? $(( $($tt),* ))?,)*
        }

        impl Op {
            pub fn kind(&self) -> OpKind {
                match self {
                    $(Op::$kind { .. } => OpKind::$kind,)*
                }
            }

            /// The op of `kind` when its variant has no fields (no attributes).
            pub fn plain(kind: OpKind) -> Option<Op> {
                match kind {
                    OpKind::Unset => None,
                    $(OpKind::$kind => ops!(@plain $kind $({ $($f)* })? $(( $($tt)* ))?),)*
                }
            }
        }
    };
    (@plain $kind:ident) => {
        Some(Op::$kind)
    };
    (@plain $kind:ident $($fields:tt)+) => {
        None
    };
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shorthands for the rows below: the common input lists.
const X: OpInfo = OpInfo::new(&["x"]);
const AB: OpInfo = OpInfo::new(&["a", "b"]);
const DY_Y: OpInfo = OpInfo::new(&["dy", "y"]);
const DY_X: OpInfo = OpInfo::new(&["dy", "x"]);
const WINDOW: &[&str] = &["kernel", "stride", "padding", "padding_end"];

ops! {
    /// An operation with its attributes.
    ///
    /// Semantics (the executors implement exactly these):
    /// - Binary elementwise ops broadcast NumPy-style; operands have one dtype.
    /// - `matmul` follows NumPy `matmul` on the last two axes (batch axes
    ///   broadcast), after transposing the last two axes of an operand whose
    ///   flag is set.
    /// - `gelu` is the tanh approximation (GPT-2's). `erf` is the error
    ///   function (evaluated in f64 and rounded to f32 before the output type).
    ///   `sqrt` is the IEEE square root in f32 (NaN below zero).
    /// - `softmax`/`log_softmax` act on `axis`; `causal` masks entries above the
    ///   diagonal of the last two axes (the softmax axis must then be the last).
    /// - `layer_norm` normalises the last axis and returns `(y, mean, rstd)`.
    /// - `batch_norm` normalises over every axis but 1 with batch statistics and
    ///   returns `(y, mean, var)` (biased variance), statistics in f32.
    /// - `frozen_batch_norm(x, gamma, beta, mean, var)` is batch norm with
    ///   given statistics (ONNX BatchNormalization in inference mode):
    ///   `y = (x - mean[c]) / sqrt(var[c] + eps) · gamma[c] + beta[c]` with
    ///   `c` the index on axis 1, in f32; `y` has x's dtype.
    /// - `lrn(x)` (ONNX LRN) over the channels of `x [N, C, ...]`: with
    ///   `sq[n,c,…] = Σ x[n,c',…]²` over `c'` in
    ///   `[c - ⌊(size-1)/2⌋, c + ⌈(size-1)/2⌉] ∩ [0, C)`,
    ///   `y = x / (bias + alpha/size · sq)^beta`, in f32.
    /// - `dropout` returns `(y, mask)`; kept values are scaled by `1/(1-p)`.
    /// - `conv2d(x [N, C, H, W], w [O, C/groups, kh, kw])` is a cross-correlation
    ///   with zero padding `padding` on each side, its taps `dilation` apart
    ///   (`y[.., oy, ox]` reads `x[.., oy·sh + i·dh − ph, ox·sw + j·dw − pw]`
    ///   for tap `(i, j)`); with `groups` > 1 the input
    ///   channels and the output channels are split into `groups` equal,
    ///   consecutive blocks, and output block `g` reads only input block `g`.
    /// - `concat(x1, …, xn)` joins its inputs along `axis` (one dtype, one rank,
    ///   equal sizes on every other axis); `split(x)` cuts `axis` into
    ///   consecutive pieces of `sizes` (which sum to the axis' size), one output
    ///   per piece. Both copy bits.
    /// - Pooling windows (NCHW) pad `padding` = [top, left] before and
    ///   `padding_end` = [bottom, right] after the input; the output size is
    ///   `(H + top + bottom - kh) / sh + 1` (floor). `max_pool2d` takes the
    ///   maximum of the in-bounds taps (padding acts as -inf; the gradient goes
    ///   to the first maximum). `avg_pool2d` sums the in-bounds taps and divides
    ///   by `kh·kw` with `count_include_pad` (padding counts as zeros, PyTorch's
    ///   default), else by the number of in-bounds taps (ONNX's default).
    /// - `cross_entropy` takes logits `[N, C]` and integer labels `[N]` and
    ///   returns the mean loss; `mse` returns the mean squared error.
    /// - `seed` is the gradient of the loss with respect to itself: ones shaped
    ///   like its input. Loss scaling rewrites it.
    /// - A `*_grad` op computes the gradient of its forward op's first input
    ///   (for `layer_norm_grad`, `batch_norm_grad` and `frozen_batch_norm_grad`:
    ///   `(dx, dgamma, dbeta)`). `erf_grad(dy, x)` = `dy · 2/√π · exp(-x²)`;
    ///   `lrn_grad(dy, x)` = `dy·d^-beta - (2·alpha·beta/size) · x ·
    ///   Σ dy·x·d^(-beta-1)`, `d = bias + alpha/size · sq`, the sum over the
    ///   channels whose window holds the channel; `frozen_batch_norm_grad(dy, x,
    ///   gamma, mean, var)` = `(dy·gamma·r, Σ dy·(x - mean)·r, Σ dy)` with
    ///   `r = 1/sqrt(var + eps)`, sums over every axis but 1 (the statistics
    ///   get no gradient).
    ///
    /// Loss scaling and optimizer ops (all compute in f32):
    /// - `unscale(grad, scale)` = `f32(grad) * inv`, `inv = 1/scale` computed in
    ///   f64 and rounded to f32 (as PyTorch's GradScaler).
    /// - `found_inf(g1, …, gn)` is 1.0 when any element of any input is inf or
    ///   NaN, else 0.0.
    /// - `scale_update(scale, tracker, found_inf)` returns `(scale', tracker')`:
    ///   on found_inf, `scale * backoff_factor` and 0; else `t = tracker + 1`,
    ///   and when `t == growth_interval`, `scale * growth_factor` (if finite) and
    ///   0, otherwise `scale` and `t`.
    /// - `select(found_inf, on_inf, otherwise)` picks `on_inf` bit for bit when
    ///   found_inf is nonzero: how a skipped step keeps params and state.
    /// - `global_norm(g1, …, gn)` is the L2 norm of all elements (f64 sum);
    ///   `clip_coef(norm)` is `min(1, max_norm / (norm + 1e-6))` (PyTorch's).
    /// - `lr_schedule(step)`, `step` the optimizer steps taken before this
    ///   one (an int scalar k ≥ 0), is the learning rate of this step, f32:
    ///   `lr·k/warmup` while k < warmup, then
    ///   `min_lr + (lr - min_lr)·(1 + cos(π·min(1, (k - warmup)/max(1, total - warmup))))/2`,
    ///   computed in f64 (see [`crate::ir::semantics::lr_schedule`]).
    /// - The optimizer ops take an optional last input `lr` (an f32 scalar,
    ///   what `lr_schedule` makes): when given, it is the learning rate and
    ///   the `lr` attribute is not used.
    /// - `sgd(p, g)` = `p - lr (g + wd p)`; `sgd_momentum(p, g, buf)` sets
    ///   `buf' = momentum buf + g + wd p`, `p' = p - lr buf'`.
    /// - `adam(p, g, m, v, step)` with `step` the 1-based step number:
    ///   L2 (`decoupled` false: `g += wd p`) or AdamW (`p *= 1 - lr wd`),
    ///   `m' = b1 m + (1-b1) g`, `v' = b2 v + (1-b2) g²`,
    ///   `p' = p - lr (m'/(1-b1^step)) / (sqrt(v'/(1-b2^step)) + eps)`.
    pub enum Op {
    Input { ty: TensorType } => "input": OpInfo::new(&[]).source().onnx(As("graph input")),
    Param { ty: TensorType, init: Init } => "param": OpInfo::new(&[]).source().onnx(As("initializer")),
    State { ty: TensorType, init: Init } => "state": OpInfo::new(&[]).source().onnx(As("initializer")),
    Constant { value: f64, ty: TensorType } => "constant":
        OpInfo::new(&[]).attrs(&["value", "shape", "dtype"]).class(Clear).onnx(As("initializer")),
    Seed => "seed": OpInfo::new(&["loss"]).pinned(),
    Cast { to: DType } => "cast": X.attrs(&["to"]).onnx(As("Cast")).fusable(),
    Identity => "identity": X.class(Clear).onnx(As("Identity")).fusable(),
    Add => "add": AB.class(Infer).onnx(Direct("Add")).fusable(),
    Sub => "sub": AB.class(Infer).onnx(Direct("Sub")).fusable(),
    Mul => "mul": AB.class(Infer).onnx(Direct("Mul")).fusable(),
    Div => "div": AB.class(Infer).onnx(Direct("Div")).fusable(),
    Scale { value: f64 } => "scale": X.attrs(&["value"]).class(Infer).onnx(As("Mul")).fusable(),
    Relu => "relu": X.class(Clear).onnx(Direct("Relu")).fusable(),
    Gelu => "gelu": X.class(Infer).onnx(As("Gelu")).fusable(),
    Tanh => "tanh": X.class(Infer).onnx(Direct("Tanh")).fusable(),
    Sigmoid => "sigmoid": X.class(Infer).onnx(Direct("Sigmoid")).fusable(),
    Exp => "exp": X.class(Fp32).onnx(Direct("Exp")).fusable(),
    Log => "log": X.class(Fp32).onnx(Direct("Log")).fusable(),
    Erf => "erf": X.class(Infer).onnx(Direct("Erf")).fusable(),
    // As TensorFlow's infer list (PyTorch's autocast keeps the input's type):
    // unlike exp, sqrt cannot overflow, and |y| lies between 1 and |x|.
    Sqrt => "sqrt": X.class(Infer).onnx(Direct("Sqrt")).fusable(),
    Matmul { transpose_a: bool, transpose_b: bool } => "matmul":
        AB.attrs(&["transpose_a", "transpose_b"]).class(Low).onnx(As("MatMul")),
    Embedding => "embedding": OpInfo::new(&["table", "ids"]).class(Clear).onnx(As("Gather")),
    LayerNorm { eps: f64 } => "layer_norm":
        OpInfo::new(&["x", "gamma", "beta"]).outputs(3).attrs(&["eps"]).class(Fp32).onnx(As("LayerNormalization")),
    Softmax { axis: i64, causal: bool } => "softmax": X.attrs(&["axis", "causal"]).class(Fp32).onnx(As("Softmax")),
    LogSoftmax { axis: i64 } => "log_softmax": X.attrs(&["axis"]).class(Fp32).onnx(As("LogSoftmax")),
    Dropout { p: f64, seed: u64 } => "dropout": X.outputs(2).attrs(&["p", "seed"]).class(Clear).onnx(As("Identity")),
    Conv2d(Box<Conv>) => "conv2d":
        OpInfo::new(&["x", "weight"]).attrs(&["stride", "padding", "dilation", "groups"]).class(Low).onnx(As("Conv")),
    BatchNorm { eps: f64, momentum: f64 } => "batch_norm": OpInfo::new(&["x", "gamma", "beta"])
        .outputs(3)
        .attrs(&["eps", "momentum"])
        .class(Infer)
        .onnx(As("BatchNormalization")),
    FrozenBatchNorm { eps: f64 } => "frozen_batch_norm": OpInfo::new(&["x", "gamma", "beta", "mean", "var"])
        .attrs(&["eps"])
        .class(Infer)
        .onnx(As("BatchNormalization")),
    Lrn { size: u64, alpha: f64, beta: f64, bias: f64 } => "lrn":
        X.attrs(&["size", "alpha", "beta", "bias"]).class(Infer).onnx(As("LRN")),
    MaxPool2d(Box<Window>) => "max_pool2d": X.attrs(WINDOW).class(Clear).onnx(As("MaxPool")),
    AvgPool2d { window: Box<Window>, count_include_pad: bool } => "avg_pool2d":
        X.attrs(&["kernel", "stride", "padding", "padding_end", "count_include_pad"]).class(Infer).onnx(As("AveragePool")),
    Flatten { axis: i64 } => "flatten": X.attrs(&["axis"]).class(Clear).onnx(As("Flatten")),
    Reshape { shape: Vec<i64> } => "reshape": X.attrs(&["shape"]).class(Clear).onnx(As("Reshape")),
    Transpose { perm: Vec<usize> } => "transpose": X.attrs(&["perm"]).class(Clear).onnx(As("Transpose")),
    Concat { axis: i64 } => "concat": OpInfo::new(&["inputs..."]).variadic().attrs(&["axis"]).class(Clear).onnx(As("Concat")),
    Split { axis: i64, sizes: Vec<u64> } => "split": X.per_size().attrs(&["axis", "sizes"]).class(Clear).onnx(As("Split")),
    ReduceSum { axes: Vec<i64>, keepdims: bool } => "reduce_sum":
        X.attrs(&["axes", "keepdims"]).classes(Fp32, Infer).onnx(As("ReduceSum")),
    ReduceMean { axes: Vec<i64>, keepdims: bool } => "reduce_mean":
        X.attrs(&["axes", "keepdims"]).classes(Fp32, Infer).onnx(As("ReduceMean")),
    SumTo { shape: Vec<u64> } => "sum_to": X.attrs(&["shape"]).classes(Fp32, Infer).onnx(As("ReduceSum")),
    BroadcastTo { shape: Vec<u64> } => "broadcast_to": X.attrs(&["shape"]).class(Clear).onnx(As("Expand")),
    CrossEntropy => "cross_entropy": OpInfo::new(&["logits", "labels"]).class(Fp32),
    Mse => "mse": OpInfo::new(&["prediction", "target"]).class(Fp32),
    ReluGrad => "relu_grad": DY_Y.class(Clear).fusable(),
    GeluGrad => "gelu_grad": DY_X.class(Infer).fusable(),
    ErfGrad => "erf_grad": DY_X.class(Infer).fusable(),
    TanhGrad => "tanh_grad": DY_Y.class(Infer).fusable(),
    SigmoidGrad => "sigmoid_grad": DY_Y.class(Infer).fusable(),
    SoftmaxGrad { axis: i64 } => "softmax_grad": DY_Y.attrs(&["axis"]).class(Fp32),
    LogSoftmaxGrad { axis: i64 } => "log_softmax_grad": DY_Y.attrs(&["axis"]).class(Fp32),
    CrossEntropyGrad => "cross_entropy_grad": OpInfo::new(&["dloss", "logits", "labels"]).class(Fp32),
    MseGrad => "mse_grad": OpInfo::new(&["dloss", "prediction", "target"]).class(Fp32),
    EmbeddingGrad { num_embeddings: u64 } => "embedding_grad":
        OpInfo::new(&["dy", "ids"]).attrs(&["num_embeddings"]).class(Fp32),
    LayerNormGrad => "layer_norm_grad": OpInfo::new(&["dy", "x", "gamma", "mean", "rstd"]).outputs(3).class(Fp32),
    DropoutGrad { p: f64 } => "dropout_grad": OpInfo::new(&["dy", "mask"]).attrs(&["p"]).class(Infer),
    Conv2dGradInput { conv: Box<Conv>, shape: Vec<u64> } => "conv2d_grad_input":
        OpInfo::new(&["dy", "weight"]).attrs(&["stride", "padding", "dilation", "groups", "shape"]).class(Low),
    Conv2dGradWeight { conv: Box<Conv>, kernel: [u64; 2] } => "conv2d_grad_weight":
        DY_X.attrs(&["stride", "padding", "dilation", "groups", "kernel"]).class(Low),
    BatchNormGrad { eps: f64 } => "batch_norm_grad":
        OpInfo::new(&["dy", "x", "gamma", "mean", "var"]).outputs(3).attrs(&["eps"]).class(Infer),
    FrozenBatchNormGrad { eps: f64 } => "frozen_batch_norm_grad":
        OpInfo::new(&["dy", "x", "gamma", "mean", "var"]).outputs(3).attrs(&["eps"]).class(Infer),
    LrnGrad { size: u64, alpha: f64, beta: f64, bias: f64 } => "lrn_grad":
        DY_X.attrs(&["size", "alpha", "beta", "bias"]).class(Infer),
    MaxPool2dGrad(Box<Window>) => "max_pool2d_grad": DY_X.attrs(WINDOW).class(Clear),
    AvgPool2dGrad { window: Box<Window>, count_include_pad: bool, shape: Vec<u64> } => "avg_pool2d_grad":
        OpInfo::new(&["dy"]).attrs(&["kernel", "stride", "padding", "padding_end", "count_include_pad", "shape"]).class(Infer),
    Unscale => "unscale": OpInfo::new(&["grad", "scale"]).pinned().fusable(),
    FoundInf => "found_inf": OpInfo::new(&["grads..."]).variadic().pinned(),
    ScaleUpdate { growth_factor: f64, backoff_factor: f64, growth_interval: u32 } => "scale_update":
        OpInfo::new(&["scale", "tracker", "found_inf"])
            .outputs(2)
            .attrs(&["growth_factor", "backoff_factor", "growth_interval"])
            .pinned(),
    Select => "select": OpInfo::new(&["found_inf", "on_inf", "otherwise"]).pinned(),
    GlobalNorm => "global_norm": OpInfo::new(&["grads..."]).variadic().pinned(),
    ClipCoef { max_norm: f64 } => "clip_coef": OpInfo::new(&["norm"]).attrs(&["max_norm"]).pinned(),
    LrSchedule { lr: f64, warmup: u32, total: u32, min_lr: f64 } => "lr_schedule":
        OpInfo::new(&["step"]).attrs(&["lr", "warmup", "total", "min_lr"]).pinned(),
    // The optimizer ops' optional last input is the learning rate.
    Sgd { lr: f64, weight_decay: f64 } => "sgd":
        OpInfo::new(&["param", "grad", "lr"]).optional(1).attrs(&["lr", "weight_decay"]).pinned(),
    SgdMomentum { lr: f64, momentum: f64, weight_decay: f64 } => "sgd_momentum":
        OpInfo::new(&["param", "grad", "momentum_buffer", "lr"])
            .optional(1)
            .outputs(2)
            .attrs(&["lr", "momentum", "weight_decay"])
            .pinned(),
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, decoupled: bool } => "adam":
        OpInfo::new(&["param", "grad", "m", "v", "step", "lr"])
            .optional(1)
            .outputs(3)
            .attrs(&["lr", "beta1", "beta2", "eps", "weight_decay", "decoupled"])
            .pinned(),
    }
}
