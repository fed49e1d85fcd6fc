//! A step-time model on the CPU: for every kernel of a lowered training step,
//! the floating-point operations it does and the bytes it moves, and a
//! roofline estimate of the step on a named GPU (`mpc explain --cost`).
//!
//! The model. A kernel takes `max(flops / peak, bytes / bandwidth)`: it is
//! bound by its arithmetic or by its memory traffic, whichever is slower.
//! `peak` is the tensor cores' dense rate for a matmul or convolution in
//! f16/bf16 (TF32's for an f32 one under `--tf32`, else the CUDA cores'
//! f32 rate) and the CUDA cores' f32 rate for everything else, which
//! computes in f32 whatever its storage type. `bytes` counts each input
//! read once and each output written once: the least traffic a kernel can
//! have, which a GEMM's tiling reaches and an elementwise kernel does. The
//! step is the sum of its kernels, as one CUDA graph runs them one after
//! another; launch gaps, caches and fusion are not modelled, so the
//! estimate is a lower bound on the step, and the memory-bound kernels'
//! share of it is what fusion could win back. [`fused`] models the step as
//! `--fuse` runs it: each fusion group one kernel that reads the group's
//! inputs and writes its outputs once.
//!
//! FLOP counts: a multiply-add is 2. A matmul `[.., M, K] x [.., K, N]` is
//! `2 M N K` per batch; a convolution and each of its gradients
//! `2 · |output of the forward conv| · (C_in / groups) · k_h · k_w`. The
//! other ops count a few operations per element (the constants in
//! [`per_element`]); they are memory-bound on every GPU here, so those
//! constants do not move the estimate.

use rustc_hash::FxHashMap;

use crate::exec::fuse::{self, Group};
use crate::exec::Plan;
use crate::ir::graph::{Graph, NodeId};
use crate::ir::op::Op;
use crate::ir::types::{DType, TensorType};

/// A GPU's peak rates (dense, no sparsity), from its vendor's data sheet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    /// CUDA cores, f32 FLOP/s.
    pub fp32: f64,
    /// Tensor cores, TF32 inputs with f32 accumulation, FLOP/s.
    pub tf32: f64,
    /// Tensor cores, f16 or bf16 inputs with f32 accumulation, FLOP/s.
    pub low: f64,
    /// Memory bandwidth, bytes/s.
    pub bandwidth: f64,
}

/// NVIDIA H100 SXM5 80 GB.
pub const H100: Gpu = Gpu { name: "H100 SXM", fp32: 67e12, tf32: 494.7e12, low: 989.4e12, bandwidth: 3.35e12 };
/// NVIDIA H200 SXM 141 GB: the H100's compute with faster memory.
pub const H200: Gpu = Gpu { name: "H200 SXM", fp32: 67e12, tf32: 494.7e12, low: 989.4e12, bandwidth: 4.8e12 };
/// NVIDIA A100 SXM4 80 GB.
pub const A100: Gpu = Gpu { name: "A100 SXM 80GB", fp32: 19.5e12, tf32: 156e12, low: 312e12, bandwidth: 2.039e12 };

/// The GPUs `--gpu` names.
pub const GPUS: [(&str, Gpu); 3] = [("h100", H100), ("h200", H200), ("a100", A100)];

/// One kernel of the step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Kernel {
    pub node: String,
    pub op: &'static str,
    /// The type of its first output.
    pub dtype: DType,
    pub flops: f64,
    pub bytes: f64,
    /// A GEMM or convolution: runs on the tensor cores in f16/bf16.
    pub gemm: bool,
}

impl Kernel {
    /// The peak rate this kernel computes at on `gpu`.
    pub fn peak(&self, gpu: &Gpu, tf32: bool) -> f64 {
        match (self.gemm, self.dtype) {
            (true, DType::F16 | DType::Bf16) => gpu.low,
            (true, DType::F32) if tf32 => gpu.tf32,
            _ => gpu.fp32,
        }
    }

    /// Seconds on `gpu` by the roofline: `max(flops / peak, bytes / bandwidth)`.
    pub fn seconds(&self, gpu: &Gpu, tf32: bool) -> f64 {
        (self.flops / self.peak(gpu, tf32)).max(self.bytes / gpu.bandwidth)
    }

    /// Bound by memory traffic rather than arithmetic on `gpu`.
    pub fn memory_bound(&self, gpu: &Gpu, tf32: bool) -> bool {
        self.bytes / gpu.bandwidth >= self.flops / self.peak(gpu, tf32)
    }
}

/// The kernels of `g` (a lowered graph) in node order: every node but the
/// sources (inputs, params, state, constants), which are resident.
pub fn kernels(g: &Graph) -> Vec<Kernel> {
    let mut out = Vec::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if node.op().is_source() || matches!(node.op(), Op::Constant { .. }) {
            continue;
        }
        let ins: Vec<&TensorType> = g.inputs(n).iter().map(|&v| g.ty(v)).collect();
        let outs: Vec<&TensorType> = g.output_types(n).collect();
        let bytes = ins.iter().chain(&outs).map(|t| size(t) * t.dtype.size_bytes() as f64).sum();
        let (flops, gemm) = flops(g, n, &ins, &outs);
        let dtype = outs.first().map_or(DType::F32, |t| t.dtype);
        out.push(Kernel { node: node.name().to_string(), op: node.op().name(), dtype, flops, bytes, gemm });
    }
    out
}

fn size(t: &TensorType) -> f64 {
    t.shape.numel().unwrap_or(0) as f64
}

/// A kernel's FLOPs, and whether it is a GEMM or convolution.
fn flops(g: &Graph, n: NodeId, ins: &[&TensorType], outs: &[&TensorType]) -> (f64, bool) {
    let out = outs.first().map_or(0.0, |t| size(t));
    let input = ins.first().map_or(0.0, |t| size(t));
    match g.node(n).op() {
        Op::Matmul { transpose_a, .. } => {
            // [.., M, N] out; K is a's last axis (its second last, transposed).
            let a = ins.first().map(|t| &t.shape.0[..]).unwrap_or(&[]);
            let k = match (a.len(), transpose_a) {
                (0, _) => 0,
                (1, _) => a[0],
                (r, false) => a[r - 1],
                (r, true) => a[r - 2],
            };
            (2.0 * out * k as f64, true)
        }
        // The forward conv's output and the weight [C_out, C_in/g, kh, kw]:
        // the output is the conv's own, the gradients' first input `dy`
        // (conv2d_grad_input reads the weight, conv2d_grad_weight makes it).
        Op::Conv2d(_) => (2.0 * out * per_output_tap(ins.get(1)), true),
        Op::Conv2dGradInput { .. } => (2.0 * input * per_output_tap(ins.get(1)), true),
        Op::Conv2dGradWeight { .. } => (2.0 * input * per_output_tap(outs.first()), true),
        op => (per_element(op) * out.max(input), false),
    }
}

/// A conv weight's `(C_in / groups) · k_h · k_w`: the taps one output sums.
fn per_output_tap(w: Option<&&TensorType>) -> f64 {
    match w.map(|t| &t.shape.0[..]) {
        Some([_, c, kh, kw]) => (c * kh * kw) as f64,
        _ => 0.0,
    }
}

/// Operations per element of the larger of the first input and output, for
/// the ops that are not GEMMs: a count of the arithmetic in the CPU
/// reference's formula (a transcendental function counts 4).
pub fn per_element(op: &Op) -> f64 {
    use Op::*;
    match op {
        Input { .. } | Param { .. } | State { .. } | Constant { .. } | Seed | Identity => 0.0,
        Reshape { .. } | Transpose { .. } | Flatten { .. } | Concat { .. } | Split { .. } | BroadcastTo { .. } => 0.0,
        Embedding | Cast { .. } | Select | MaxPool2d(_) => 0.0,
        Add | Sub | Mul | Div | Scale { .. } | Relu | ReluGrad | Unscale | FoundInf | EmbeddingGrad { .. } => 1.0,
        // An IEEE operation, as division.
        Sqrt => 1.0,
        ReduceSum { .. } | ReduceMean { .. } | SumTo { .. } | MaxPool2dGrad(_) => 1.0,
        Dropout { .. } | DropoutGrad { .. } | GlobalNorm | Mse | MseGrad => 2.0,
        Sgd { .. } => 3.0,
        Exp | Log | Tanh | Sigmoid | Erf | TanhGrad | SigmoidGrad => 4.0,
        SgdMomentum { .. } | Softmax { .. } | LogSoftmax { .. } | CrossEntropy | CrossEntropyGrad => 5.0,
        SoftmaxGrad { .. } | LogSoftmaxGrad { .. } | ErfGrad | FrozenBatchNorm { .. } => 5.0,
        Gelu | LayerNorm { .. } | BatchNorm { .. } | FrozenBatchNormGrad { .. } => 8.0,
        GeluGrad | LayerNormGrad | BatchNormGrad { .. } => 10.0,
        Adam { .. } => 12.0,
        AvgPool2d { window, .. } | AvgPool2dGrad { window, .. } => (window.kernel[0] * window.kernel[1]) as f64,
        Lrn { size, .. } | LrnGrad { size, .. } => 3.0 * *size as f64 + 4.0,
        ClipCoef { .. } | ScaleUpdate { .. } | LrSchedule { .. } => 10.0,
        Conv2d(_) | Conv2dGradInput { .. } | Conv2dGradWeight { .. } | Matmul { .. } => 0.0,
    }
}

/// The kernels of the step as the CUDA backend runs it with fusion (`--fuse`):
/// each of `groups` (of `plan`, the plan of the graph `ks` came from) one
/// kernel, where its run stands, that reads the group's inputs once and
/// writes its outputs once (a value it hides is neither written nor read
/// back) and does its members' FLOPs; a GEMM group counts its GEMM's alone,
/// at the tensor cores' rate (its epilogue's few operations per element
/// ride along). The other kernels are as they are. Every group is taken
/// as claimed.
pub fn fused(ks: &[Kernel], plan: &Plan, groups: &[Group]) -> Vec<Kernel> {
    let at: FxHashMap<&str, usize> = ks.iter().enumerate().map(|(i, k)| (k.node.as_str(), i)).collect();
    let mut member = vec![false; ks.len()];
    let mut merged: FxHashMap<usize, Kernel> = FxHashMap::default();
    for g in groups {
        let members: Vec<usize> = g.steps().filter_map(|i| at.get(plan.step(i).0).copied()).collect();
        let Some(&run_at) = at.get(plan.step(g.at()).0) else { continue };
        let bytes = |vs: &[usize]| -> f64 { vs.iter().map(|&v| fuse::bytes(plan.value_type(v)) as f64).sum() };
        let gemm = members.iter().find(|&&m| ks[m].gemm);
        let out_type = g.outputs.first().map_or(DType::F32, |&v| plan.value_type(v).dtype);
        let k = Kernel {
            node: ks[run_at].node.clone(),
            op: g.kind.name(),
            dtype: gemm.map_or(out_type, |&m| ks[m].dtype),
            flops: members.iter().filter(|&&m| gemm.is_none() || ks[m].gemm).map(|&m| ks[m].flops).sum(),
            bytes: bytes(&g.inputs) + bytes(&g.outputs),
            gemm: gemm.is_some(),
        };
        for m in members {
            member[m] = true;
        }
        merged.insert(run_at, k);
    }
    let mut out = Vec::with_capacity(ks.len());
    for (i, k) in ks.iter().enumerate() {
        match merged.remove(&i) {
            Some(f) => out.push(f),
            None if !member[i] => out.push(k.clone()),
            None => {}
        }
    }
    out
}

/// A step's totals on one GPU.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub kernels: usize,
    pub flops: f64,
    pub bytes: f64,
    /// Sum over kernels of the roofline time, seconds.
    pub seconds: f64,
    /// The part of `seconds` spent in memory-bound kernels.
    pub memory_bound_seconds: f64,
    /// FLOPs of GEMMs and convolutions (the model FLOPs).
    pub gemm_flops: f64,
}

pub fn estimate(ks: &[Kernel], gpu: &Gpu, tf32: bool) -> Estimate {
    let mut e = Estimate {
        kernels: ks.len(),
        flops: 0.0,
        bytes: 0.0,
        seconds: 0.0,
        memory_bound_seconds: 0.0,
        gemm_flops: 0.0,
    };
    for k in ks {
        let s = k.seconds(gpu, tf32);
        e.flops += k.flops;
        e.bytes += k.bytes;
        e.seconds += s;
        if k.memory_bound(gpu, tf32) {
            e.memory_bound_seconds += s;
        }
        if k.gemm {
            e.gemm_flops += k.flops;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(text: &str) -> Graph {
        let g = crate::parse_str(text).expect("parses");
        crate::verify(&g).expect("verifies");
        g
    }

    fn one(g: &Graph, name: &str) -> Kernel {
        kernels(g).into_iter().find(|k| k.node == name).expect("a kernel")
    }

    const MATMULS: &str = r#"{"format": "mpc/1", "name": "m",
      "inputs": [{"name": "a", "shape": [3, 5, 7]}, {"name": "b", "shape": [3, 7, 2]},
                 {"name": "c", "shape": [3, 7, 5]}, {"name": "t", "shape": [3, 5, 2]}],
      "forward": [
        {"name": "ab", "op": "matmul", "inputs": ["a", "b"]},
        {"name": "cb", "op": "matmul", "inputs": ["c", "b"], "transpose_a": true},
        {"name": "s", "op": "add", "inputs": ["ab", "cb"]},
        {"name": "loss", "op": "mse", "inputs": ["s", "t"]}
      ],
      "loss": "loss"}"#;

    /// 2 M N K per batch, whichever side holds K.
    #[test]
    fn a_matmul_is_two_m_n_k_per_batch() {
        let g = graph(MATMULS);
        assert_eq!(one(&g, "ab").flops, (2 * 3 * 5 * 2 * 7) as f64);
        assert_eq!(one(&g, "cb").flops, (2 * 3 * 5 * 2 * 7) as f64);
        assert!(one(&g, "ab").gemm && !one(&g, "s").gemm);
        // Each operand read once, the output written once (f32).
        assert_eq!(one(&g, "ab").bytes, (4 * (3 * 5 * 7 + 3 * 7 * 2 + 3 * 5 * 2)) as f64);
        assert_eq!(one(&g, "s").flops, 30.0);
    }

    /// A grouped, strided conv: 2 · |y| · (C_in/g) · kh · kw, and each
    /// gradient the same.
    #[test]
    fn a_conv_and_its_gradients_count_the_same_taps() {
        let text = r#"{"format": "mpc/1", "name": "c",
          "inputs": [{"name": "x", "shape": [2, 4, 9, 9]}, {"name": "t", "shape": [2, 6, 4, 4]}],
          "params": [{"name": "w", "shape": [6, 2, 3, 3], "init": {"kind": "zeros"}}],
          "forward": [
            {"name": "y", "op": "conv2d", "inputs": ["x", "w"], "stride": [2, 2], "groups": 2},
            {"name": "loss", "op": "mse", "inputs": ["y", "t"]}
          ],
          "loss": "loss", "optimizer": {"kind": "sgd", "lr": 0.1}}"#;
        let mut g = graph(text);
        crate::passes::lower_fp32(&mut g, &crate::passes::Options::default()).expect("lowers");
        let taps = (2 * 6 * 4 * 4) as f64 * (2 * 3 * 3) as f64;
        let ks = kernels(&g);
        let conv: Vec<&Kernel> = ks.iter().filter(|k| k.op.starts_with("conv2d")).collect();
        assert_eq!(conv.len(), 2, "the forward conv and the weight gradient (x is an input): {conv:?}");
        for k in conv {
            assert_eq!(k.flops, 2.0 * taps, "{}", k.node);
        }
    }

    /// The roofline takes the slower of arithmetic and traffic, and a low
    /// GEMM uses the tensor cores' rate.
    #[test]
    fn the_roofline_takes_the_slower_bound() {
        let k = |flops, bytes, gemm, dtype| Kernel { node: "k".into(), op: "matmul", dtype, flops, bytes, gemm };
        let gemm = k(989.4e12, 1.0, true, DType::Bf16);
        assert!((gemm.seconds(&H100, false) - 1.0).abs() < 1e-12);
        assert!(!gemm.memory_bound(&H100, false));
        let f32_gemm = k(67e12, 1.0, true, DType::F32);
        assert!((f32_gemm.seconds(&H100, false) - 1.0).abs() < 1e-12);
        assert!((f32_gemm.seconds(&H100, true) - 67.0 / 494.7).abs() < 1e-12);
        let copy = k(0.0, 3.35e12, false, DType::F16);
        assert!((copy.seconds(&H100, false) - 1.0).abs() < 1e-12 && copy.memory_bound(&H100, false));
    }

    /// Fused, a group is one kernel reading its inputs and writing its
    /// outputs once: the MLP's logits cast + bias add (f16[64,10] -> f32,
    /// then + f32[10]) moves 1280 + 40 + 2560 bytes instead of the cast's
    /// 1280 + 2560 and the add's 2560 + 40 + 2560; FLOPs are kept, and the
    /// step has one kernel per launch the fusion leaves, and the same GEMM FLOPs.
    #[test]
    fn a_fused_group_moves_its_inputs_and_outputs_once() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ir-examples/mlp.json")).unwrap();
        let mut g = graph(&text);
        crate::passes::lower(&mut g, &crate::passes::Options::default()).expect("lowers");
        let ks = kernels(&g);
        let plan = Plan::new(&g, 0).expect("plans");
        let groups = plan.fusion_groups();
        let fk = fused(&ks, &plan, &groups);
        let saved: usize = groups.iter().map(Group::launches_saved).sum();
        assert_eq!(fk.len(), ks.len() - saved);
        let unfused = one(&g, "logits.f32").bytes + one(&g, "logits_b").bytes;
        assert_eq!(unfused, (1280 + 2560 + 2560 + 40 + 2560) as f64);
        let add = fk.iter().find(|k| k.node == "logits_b").expect("the group's kernel");
        assert_eq!((add.op, add.bytes, add.gemm), ("chain", (1280 + 40 + 2560) as f64, false));
        assert!(!fk.iter().any(|k| k.node == "logits.f32"));
        let (e, ef) = (estimate(&ks, &H100, false), estimate(&fk, &H100, false));
        assert_eq!(e.gemm_flops, ef.gemm_flops);
        assert!(ef.flops < e.flops, "the epilogues' elementwise FLOPs are not counted");
        assert!(ef.bytes < e.bytes && ef.seconds < e.seconds);
        // The weight gradient with its bias's: on the tensor cores, f16.
        let dw = fk.iter().find(|k| k.node == "dw2").expect("dw2");
        assert_eq!((dw.op, dw.gemm, dw.dtype), ("gemm_bias_grad", true, DType::F16));
    }

    /// The lowered MLP's GEMM FLOPs by hand: three layers forward
    /// (64x64 @ 64x128, 64x128 @ 128x128, 64x128 @ 128x10), each weight's
    /// gradient, and the input gradients of layers 2 and 3 (layer 1's
    /// input is the data, whose gradient is not computed).
    #[test]
    fn the_mlp_step_counts_as_by_hand() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ir-examples/mlp.json")).unwrap();
        let mut g = graph(&text);
        crate::passes::lower(&mut g, &crate::passes::Options::default()).expect("lowers");
        let e = estimate(&kernels(&g), &H100, false);
        let (l1, l2, l3) = (64 * 64 * 128, 64 * 128 * 128, 64 * 128 * 10);
        assert_eq!(e.gemm_flops, (2 * (l1 + l2 + l3) + 2 * (l1 + l2 + l3) + 2 * (l2 + l3)) as f64);
    }
}
