//! The JSON file format (`"format": "mpc/1"`), as serde types.
//!
//! These types are what a file holds, field for field; [`crate::format::parse`]
//! turns them into a [`crate::Graph`] and [`crate::format::emit::json`] turns a graph
//! back into them. The JSON Schema in `docs/mpc.schema.json` is generated
//! from them (`mpc schema`), and a test checks that it is current.
//! `docs/FORMAT.md` is the prose description.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ir::op::{Init, OpKind, Precision, Role};
use crate::ir::types::DType;

pub use crate::ir::optimizer::{glob_match, Optimizer, OptimizerKind, Schedule};

/// The version string every file starts with.
pub const FORMAT_VERSION: &str = "mpc/1";

/// A training graph file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGraph {
    /// Always `"mpc/1"`.
    pub format: String,
    /// The model's name.
    #[serde(default)]
    pub name: String,
    /// Batch tensors fed to every step.
    #[serde(default)]
    pub inputs: Vec<RawTensor>,
    /// Trainable parameters (FP32 masters unless declared otherwise).
    #[serde(default)]
    pub params: Vec<RawState>,
    /// Other state carried from step to step: optimizer moments, loss-scale
    /// state, running statistics. Written out by the passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<RawState>,
    /// Forward nodes, in any order (names connect them).
    // Boxed: a node has many optional attributes (464 bytes), and a vector of
    // them would be copied as it grows.
    pub forward: Vec<Box<RawNode>>,
    /// The name of the scalar loss value.
    pub loss: String,
    /// An explicit backward section. When absent, the `grad` pass derives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backward: Option<Vec<Box<RawNode>>>,
    /// With an explicit backward section: parameter name -> gradient value name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gradients: BTreeMap<String, String>,
    /// Optimizer and loss-scale nodes (role `optimizer` unless a node says `scaler`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update: Vec<Box<RawNode>>,
    /// State updates: param or state name -> the value it takes after the step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub updates: BTreeMap<String, String>,
    /// Values every step reports (metrics), besides the loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// The optimizer the passes materialise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<Optimizer>,
    /// A safetensors file, relative to this file's folder, holding the values
    /// of the params and state whose init is `file` (matched by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

/// A graph input (a batch tensor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTensor {
    pub name: String,
    /// Dimensions, each at least 1; `[]` is a scalar.
    pub shape: Vec<i64>,
    #[serde(default = "f32_dtype")]
    pub dtype: DType,
}

/// A parameter or other state tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub name: String,
    pub shape: Vec<i64>,
    #[serde(default = "f32_dtype")]
    pub dtype: DType,
    /// Required for params; state defaults to zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
}

fn f32_dtype() -> DType {
    DType::F32
}

/// One node. `op` selects the operation; the attribute fields that op takes
/// are listed in docs/FORMAT.md, and any other attribute is an error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Unique name; also the name of the node's (first) output.
    pub name: String,
    pub op: OpKind,
    /// Names of the values the node reads, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Names of the outputs of a multi-output op. Default: `name`, `name:1`, `name:2`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
    /// Only in the `update` section: `optimizer` (default) or `scaler`;
    /// `forward` and `backward` are rejected there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Pins the compute precision of this node, overriding the op table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,

    /// matmul: transpose the last two axes of the first operand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transpose_a: Option<bool>,
    /// matmul: transpose the last two axes of the second operand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transpose_b: Option<bool>,
    /// softmax, log_softmax and their grads (default -1); flatten (default
    /// 1); concat (required); split (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis: Option<i64>,
    /// softmax: mask entries above the diagonal of the last two axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causal: Option<bool>,
    /// reduce_sum, reduce_mean: the axes to reduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axes: Option<Vec<i64>>,
    /// reduce_sum, reduce_mean: keep reduced axes as size 1 (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepdims: Option<bool>,
    /// split: the size of each piece along `axis`, one output per piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Vec<i64>>,
    /// reshape (one entry may be -1), sum_to, broadcast_to, constant, and the
    /// input shape of conv2d_grad_input and avg_pool2d_grad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    /// transpose: the permutation of the axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perm: Option<Vec<i64>>,
    /// constant: element type (default f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
    /// cast: target element type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<DType>,
    /// constant: the fill value; scale: the factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// dropout, dropout_grad: drop probability in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// dropout: random seed (default 0), mixed with the step number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// layer_norm, batch_norm, frozen_batch_norm and their grads (default
    /// 1e-5); adam (default 1e-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// batch_norm: running-statistics momentum (default 0.1); sgd_momentum: momentum in [0, 1) (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// lrn, lrn_grad: the number of channels summed (required, ≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// lrn, lrn_grad: the scale of the sum of squares (default 1e-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// lrn, lrn_grad: the exponent (default 0.75).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// lrn, lrn_grad: the additive constant (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<f64>,
    /// Pooling window, and conv2d_grad_weight's kernel size: [height, width].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<[u64; 2]>,
    /// conv2d and pooling stride (default: 1 for conv2d, the kernel for pooling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<[u64; 2]>,
    /// conv2d and pooling zero padding on each side (default 0); for pooling
    /// with `padding_end`, the padding before the input: [top, left].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<[u64; 2]>,
    /// Pooling ops: zero padding after the input, [bottom, right] (default:
    /// `padding`; written only when it differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding_end: Option<[u64; 2]>,
    /// conv2d and its grads: the step between kernel taps, [height, width]
    /// (default [1, 1]; written only when not [1, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dilation: Option<[u64; 2]>,
    /// avg_pool2d, avg_pool2d_grad: divide by the whole window, padding
    /// included (default true), or by the in-bounds taps only (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_include_pad: Option<bool>,
    /// conv2d and its grads: the number of channel groups (default 1;
    /// written only when not 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<u64>,
    /// embedding_grad: rows of the embedding table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_embeddings: Option<u64>,
    /// sgd, sgd_momentum, adam: learning rate; lr_schedule: the peak rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// adam: first-moment decay (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    /// adam: second-moment decay (default 0.999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// sgd, sgd_momentum, adam: weight decay (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// adam: decoupled weight decay, i.e. AdamW (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoupled: Option<bool>,
    /// scale_update: factor on a clean growth interval (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_factor: Option<f64>,
    /// scale_update: factor on overflow (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    /// scale_update: clean steps before the scale grows (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_interval: Option<u32>,
    /// clip_coef: the largest global gradient norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<f64>,
    /// lr_schedule: steps of linear warmup (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<u32>,
    /// lr_schedule: the step at which the cosine decay ends (required, ≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u32>,
    /// lr_schedule: the learning rate at the end of the decay (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
}

/// The JSON Schema of the format, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawGraph);
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    s.push('\n');
    s
}
