//! `mpc import`: real ONNX models (tests/data/onnx) and small built ones.

use mpc::exec::{init_state_with, CpuBackend, Executor, RunOptions, State, Tensor};
use mpc::format::{Optimizer, OptimizerKind};
use mpc::ir::op::Conv;
use mpc::onnx::proto::{
    data_type, AttributeProto, DimensionValue, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TypeValue, ValueInfoProto,
};
use mpc::onnx::{import, ImportOptions, Loss};
use mpc::passes::{self, Options, Table};
use mpc::{DType, Op};
use prost::Message;

const MODELS: &[&str] = &["resnet50", "squeezenet", "vgg19", "bvlc_alexnet", "zfnet512", "inception_v1"];

fn options(loss: Loss) -> ImportOptions {
    ImportOptions {
        loss: Some(loss),
        optimizer: Optimizer { momentum: Some(0.9), ..Optimizer::new(OptimizerKind::Sgd, 0.01) },
        weights_file: "model.safetensors".into(),
        input_shapes: vec![],
        dropout_seed: 0,
    }
}

fn lower(g: &mpc::Graph, low: DType) -> (mpc::Graph, String) {
    let mut g = g.clone();
    let opts = Options { low, table: Some(Table::default_for(low)), explain: true, ..Options::default() };
    let lowered = passes::lower(&mut g, &opts).expect("lowers");
    mpc::verify(&g).expect("the lowered graph verifies");
    (g, lowered.autocast.summary())
}

#[test]
fn the_light_models_import_and_lower() {
    let mut summary = String::new();
    for m in MODELS {
        let bytes = std::fs::read(format!("tests/data/onnx/light_{m}.onnx")).unwrap();
        let im = import(bytes, &options(Loss::CrossEntropy)).unwrap_or_else(|e| panic!("{m}: {e}"));
        let g = &im.graph;
        let count = |f: fn(&Op) -> bool| g.node_ids().filter(|&n| f(g.node(n).op())).count();
        summary += &format!(
            "{m}: {} ONNX nodes -> {} nodes, {} params, {} state, {} weight tensors\n",
            im.onnx_nodes,
            g.node_count(),
            count(|o| matches!(o, Op::Param { .. })),
            count(|o| matches!(o, Op::State { .. })),
            im.weights.len()
        );
        for note in &im.notes {
            summary += &format!("  note: {note}\n");
        }
        for low in [DType::F16, DType::Bf16] {
            let (_, s) = lower(g, low);
            summary += &format!("  {}: {s}\n", low.name());
        }
    }
    insta::assert_snapshot!(summary);
}

#[test]
fn every_unsupported_op_is_listed() {
    let node = |op: &str, name: &str, i: &str, o: &str| NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: vec![i.into()],
        output: vec![o.into()],
        ..Default::default()
    };
    let model = model(
        vec![
            node("Resize", "up1", "x", "a"),
            node("Relu", "r", "a", "b"),
            node("NonZero", "nz", "b", "c"),
            node("Resize", "up2", "c", "y"),
        ],
        vec![],
        &[1, 4],
    );
    let e = import(model.encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string();
    assert!(e.contains("3 node(s) with ops mpc cannot import"), "{e}");
    for part in ["node `up1`: Resize", "node `nz`: NonZero", "node `up2`: Resize"] {
        assert!(e.contains(part), "{part} missing in: {e}");
    }
    assert!(!e.contains("node `r`"), "{e}");
}

#[test]
fn bad_models_are_errors_not_panics() {
    let e = import(&b"not a protobuf at all"[..], &options(Loss::Mse)).unwrap_err().to_string();
    assert!(e.contains("not an ONNX model"), "{e}");
    let mut m = model(vec![], vec![], &[1, 4]);
    m.opset_import.clear();
    assert!(import(m.encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string().contains("opset"));
    // A node reading a value nobody defines.
    let n = NodeProto {
        op_type: Some("Relu".into()),
        name: Some("r".into()),
        input: vec!["nope".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    let e = import(model(vec![n], vec![], &[1, 4]).encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string();
    assert!(e.contains("node `r` (Relu)") && e.contains("`nope`"), "{e}");
    // A symbolic batch dimension needs --input-shape.
    let mut m = model(vec![relu("x", "y")], vec![], &[1, 4]);
    let g = m.graph.as_mut().unwrap();
    if let Some(TypeValue::TensorType(t)) = g.input[0].r#type.as_mut().unwrap().value.as_mut() {
        t.shape.as_mut().unwrap().dim[0].value = Some(DimensionValue::DimParam("N".into()));
    }
    let e = import(m.encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string();
    assert!(e.contains("graph input `x`") && e.contains("symbolic (`N`)") && e.contains("--input-shape"), "{e}");
    // An --input-shape for a name that is not an input is an error, not ignored.
    let opts = ImportOptions { input_shapes: vec![("data".into(), vec![2, 4])], ..options(Loss::Mse) };
    let e = import(m.encode_to_vec(), &opts).unwrap_err().to_string();
    assert!(e.contains("--input-shape data=...: the model has no input named `data` (its inputs: x)"), "{e}");
    let opts = ImportOptions { input_shapes: vec![("x".into(), vec![2, 4])], ..options(Loss::Mse) };
    assert!(import(m.encode_to_vec(), &opts).is_ok());
    // Attributes and constants that would divide by zero, overflow or
    // exhaust memory are errors.
    let bad = |nodes: Vec<NodeProto>, init: Vec<TensorProto>| {
        import(model(nodes, init, &[1, 1, 7, 7]).encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string()
    };
    let same = vec![NodeProto {
        attribute: vec![
            ints_attr("strides", &[0, 0]),
            ints_attr("kernel_shape", &[3, 3]),
            AttributeProto { name: Some("auto_pad".into()), s: Some(b"SAME_UPPER".to_vec()), ..Default::default() },
        ],
        ..op("Conv", &["x", "w"], "y", vec![])
    }];
    let e = bad(same, vec![floats("w", &[1, 1, 3, 3], |_| 0.1)]);
    assert!(e.contains("strides [0, 0]: expected two values of at least 1"), "{e}");
    let ceil = op(
        "MaxPool",
        &["x"],
        "y",
        vec![ints_attr("kernel_shape", &[3, 3]), ints_attr("strides", &[0, 1]), int_attr("ceil_mode", 1)],
    );
    assert!(bad(vec![ceil], vec![]).contains("strides [0, 1]"));
    let huge_pads = op(
        "MaxPool",
        &["x"],
        "y",
        vec![
            ints_attr("kernel_shape", &[3, 3]),
            ints_attr("pads", &[i64::MAX, 0, i64::MAX, 0]),
            int_attr("ceil_mode", 1),
        ],
    );
    assert!(bad(vec![huge_pads], vec![]).contains("does not fit the padded input"));
    let fill = vec![
        op(
            "ConstantOfShape",
            &["big"],
            "f",
            vec![AttributeProto { name: Some("value".into()), t: Some(ints("v", &[1])), ..Default::default() }],
        ),
        op("Concat", &["f", "f"], "s", vec![int_attr("axis", 0)]),
        op("Reshape", &["x", "s"], "y", vec![]),
    ];
    let e = bad(fill, vec![ints("big", &[1 << 40])]);
    assert!(e.contains("an integer fill of 1099511627776 elements"), "{e}");
    let reshape = vec![op("Reshape", &["x", "s"], "y", vec![])];
    let e = bad(reshape, vec![ints("s", &[1 << 32, 1 << 32, 64])]);
    assert!(e.contains("its size overflows"), "{e}");

    let mut o = options(Loss::Mse);
    o.input_shapes = vec![("x".into(), vec![3, 4])];
    let im = import(m.encode_to_vec(), &o).unwrap();
    assert_eq!(im.graph.ty(im.graph.value("x").unwrap()).shape.0, vec![3, 4]);
}

fn relu(i: &str, o: &str) -> NodeProto {
    NodeProto { op_type: Some("Relu".into()), input: vec![i.into()], output: vec![o.into()], ..Default::default() }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto::tensor(name, data_type::FLOAT, &dims.iter().map(|&d| d as u64).collect::<Vec<_>>())
}

/// A model with input `x` of `dims` and output `y`.
fn model(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>, dims: &[i64]) -> ModelProto {
    ModelProto {
        ir_version: Some(7),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(11) }],
        graph: Some(GraphProto {
            name: Some("t".into()),
            node: nodes,
            initializer,
            input: vec![value_info("x", dims)],
            output: vec![value_info("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn floats(name: &str, dims: &[i64], f: impl Fn(usize) -> f32) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        float_data: (0..n as usize).map(f).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(data_type::INT64),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn op(op: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(out.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(7), ints: v.to_vec(), ..Default::default() }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(2), i: Some(v), ..Default::default() }
}

/// A small CNN in ONNX: Conv+bias, BatchNormalization, Relu, MaxPool,
/// Flatten via Shape/Gather/Concat/Reshape arithmetic, Gemm, Softmax.
fn small_cnn() -> ModelProto {
    let pseudo = |i: usize| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.4;
    let nodes = vec![
        op(
            "Conv",
            &["x", "w1", "b1"],
            "c1",
            vec![ints_attr("pads", &[1, 1, 1, 1]), ints_attr("kernel_shape", &[3, 3])],
        ),
        op("BatchNormalization", &["c1", "g1", "be1", "m1", "v1"], "bn1", vec![]),
        op("Relu", &["bn1"], "r1", vec![]),
        op("MaxPool", &["r1"], "p1", vec![ints_attr("kernel_shape", &[2, 2]), ints_attr("strides", &[2, 2])]),
        op("Shape", &["p1"], "s", vec![]),
        op("Gather", &["s", "zero"], "n", vec![int_attr("axis", 0)]),
        op("Unsqueeze", &["n"], "n1", vec![ints_attr("axes", &[0])]),
        op("Concat", &["n1", "minus1"], "shape", vec![int_attr("axis", 0)]),
        op("Reshape", &["p1", "shape"], "flat", vec![]),
        op("Gemm", &["flat", "w2", "b2"], "logits", vec![int_attr("transB", 1)]),
        op("Softmax", &["logits"], "y", vec![]),
    ];
    let init = vec![
        floats("w1", &[4, 2, 3, 3], pseudo),
        floats("b1", &[4], |i| 0.1 * i as f32),
        floats("g1", &[4], |i| 1.0 + 0.1 * i as f32),
        floats("be1", &[4], |i| 0.05 * i as f32),
        floats("m1", &[4], |i| 0.01 * i as f32),
        floats("v1", &[4], |i| 1.0 + 0.2 * i as f32),
        floats("w2", &[3, 16], pseudo),
        floats("b2", &[3], |_| 0.0),
        TensorProto {
            name: Some("zero".into()),
            data_type: Some(data_type::INT64),
            int64_data: vec![0],
            ..Default::default()
        },
        ints("minus1", &[-1]),
    ];
    model(nodes, init, &[2, 2, 4, 4])
}

#[test]
fn a_small_cnn_maps_onto_mpc_ops_and_trains() {
    let im = import(small_cnn().encode_to_vec(), &options(Loss::CrossEntropy)).unwrap();
    let g = &im.graph;
    let ops: Vec<&str> = g.node_ids().map(|n| g.node(n).op().name()).collect();
    for o in ["conv2d", "frozen_batch_norm", "max_pool2d", "reshape", "matmul", "softmax", "cross_entropy"] {
        assert!(ops.contains(&o), "{o} missing from {ops:?}");
    }
    // Shape arithmetic folded: no shape/gather/concat nodes, and the flatten is a constant reshape.
    assert!(!ops.contains(&"concat") && !ops.contains(&"embedding"), "{ops:?}");
    // BN statistics are state, weights params.
    let kind = |n: &str| g.node(g.node_named(n).unwrap()).op().name();
    assert_eq!((kind("w1"), kind("g1"), kind("m1"), kind("v1")), ("param", "param", "state", "state"));
    assert!(im.notes.iter().any(|n| n.contains("logits before the final softmax")), "{:?}", im.notes);

    // One training step in each low type: finite loss, weights move, BN statistics stay.
    let dir = tempfile::tempdir().unwrap();
    mpc::onnx::raw::write_safetensors(&dir.path().join("model.safetensors"), &im.weights).unwrap();
    let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut batch = State::new();
    batch.insert("x".into(), Tensor::from_f32(DType::F32, vec![2, 2, 4, 4], &x).unwrap());
    batch.insert("labels".into(), Tensor::new(vec![2], mpc::exec::Data::I64(vec![0, 2])).unwrap());
    for low in [DType::F16, DType::Bf16] {
        let (lowered, _) = lower(g, low);
        let mut ex = Executor::new(&lowered, CpuBackend, 0).unwrap();
        let state = init_state_with(&lowered, 0, Some(dir.path())).unwrap();
        let r = ex.step(&state, &batch, 1, &RunOptions::default()).unwrap();
        let loss = r.loss.expect("a loss").to_f32_vec()[0];
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
        let w_after = r.state["w1"].to_f32_vec();
        assert_ne!(w_after, state["w1"].to_f32_vec(), "the step updates the conv weight");
        assert_eq!(r.state["m1"].to_f32_vec(), state["m1"].to_f32_vec(), "BN statistics are frozen");
    }
}

#[test]
fn an_empty_concat_is_an_error_not_a_panic() {
    let c = NodeProto {
        op_type: Some("Concat".into()),
        name: Some("c".into()),
        output: vec!["y".into()],
        ..Default::default()
    };
    let e = import(model(vec![c], vec![], &[1, 4]).encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string();
    assert!(e.contains("node `c` (Concat): Concat needs at least one input"), "{e}");
}

/// `t` with its float values stored as raw little-endian bytes, as real models store them.
fn raw(mut t: TensorProto) -> TensorProto {
    let b: Vec<u8> = t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect();
    t.float_data.clear();
    t.raw_data = Some(b.into());
    t
}

fn small_cnn_raw() -> ModelProto {
    let mut m = small_cnn();
    let g = m.graph.as_mut().unwrap();
    g.initializer =
        g.initializer.drain(..).map(|t| if t.data_type == Some(data_type::FLOAT) { raw(t) } else { t }).collect();
    m
}

/// small_cnn with GlobalAveragePool for its MaxPool: BatchNormalization ->
/// Relu -> GlobalAveragePool, where a training graph's backward ops next to
/// the forward ones could paint the norm differently from an inference graph.
fn gap_cnn_raw() -> ModelProto {
    let mut m = small_cnn_raw();
    let g = m.graph.as_mut().unwrap();
    g.node[3] = op("GlobalAveragePool", &["r1"], "p1", vec![]);
    let pseudo = |i: usize| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.4;
    let w2 = g.initializer.iter_mut().find(|t| t.name.as_deref() == Some("w2")).unwrap();
    *w2 = raw(floats("w2", &[3, 4], pseudo));
    m
}

type Inits = std::collections::BTreeMap<String, (Option<i32>, Vec<i64>, Vec<u8>)>;

fn inits(m: &ModelProto) -> Inits {
    m.graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .map(|t| {
            (t.name.clone().unwrap(), (t.data_type, t.dims.clone(), t.raw_data.as_deref().unwrap_or(&[]).to_vec()))
        })
        .collect()
}

/// The nodes with their inputs as what they read: an initializer or graph
/// input by name, a node's output by (node index, slot). Names of
/// intermediate values may differ (a training graph's step outputs keep
/// their names and the low values beside them get new ones).
fn nodes(m: &ModelProto) -> Vec<(String, Vec<String>)> {
    let g = m.graph.as_ref().unwrap();
    let mut made = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let ins = n.input.iter().map(|x| made.get(x).cloned().unwrap_or_else(|| x.clone())).collect();
        out.push((n.op_type.clone().unwrap(), ins));
        for (slot, o) in n.output.iter().enumerate() {
            made.insert(o.clone(), format!("#{i}.{slot}"));
        }
    }
    out
}

#[test]
fn lowering_an_onnx_model_directly_gives_the_export_of_import_then_lower() {
    for (model, weights) in [(small_cnn_raw(), true), (gap_cnn_raw(), false)] {
        direct_equals_two_step(model, weights);
    }
}

fn direct_equals_two_step(model: ModelProto, check_weights: bool) {
    use mpc::onnx::export::{self, Bf16Mode};
    use mpc::onnx::lower::{self as direct, InferenceOptions};
    let bytes = model.encode_to_vec();
    let im = import(bytes.clone(), &options(Loss::CrossEntropy)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    mpc::onnx::raw::write_safetensors(&dir.path().join("model.safetensors"), &im.weights).unwrap();
    for (low, bf16) in
        [(DType::F16, Bf16Mode::Native), (DType::Bf16, Bf16Mode::Native), (DType::Bf16, Bf16Mode::Emulated)]
    {
        // As `mpc lower model.json --emit onnx`: the bias of a low conv or
        // matmul is added low, in the op, except in emulated bf16.
        let fold_bias = bf16 == Bf16Mode::Native;
        let passes = Options { low, table: Some(Table::default_for(low)), fold_bias, ..Options::default() };
        let (g, _) = mpc::onnx::lower_forward(&im.graph, &passes).unwrap();
        let opts =
            export::Options { bf16, seed: 0, base_dir: Some(dir.path().to_path_buf()), allow_outside_weights: false };
        let two_step = export::export(&g, &opts).unwrap();
        let passes = Options { low, table: Some(Table::default_for(low)), ..Options::default() };
        let chunks = direct::convert(
            bytes.clone().into(),
            &InferenceOptions { passes: Some(passes), bf16, input_shapes: vec![], ahead: true },
        )
        .unwrap();
        let joined = chunks.concat();
        let m = ModelProto::decode(&joined[..]).unwrap();
        assert_eq!(joined.len(), m.encoded_len(), "{low:?}");
        assert_eq!(inits(&m), inits(&two_step), "{low:?} {bf16:?}: initializers");
        assert_eq!(nodes(&m), nodes(&two_step), "{low:?} {bf16:?}: nodes");
        // The weights are the f32 values rounded once (nearest even) to the
        // low type; opset 17 has no bf16 Conv, so a bf16 conv weight is
        // stored as the FLOAT values of its bf16 rounding.
        if !check_weights {
            continue;
        }
        let all = inits(&m);
        let source = small_cnn().graph.unwrap().initializer;
        for (k, dims, gemm) in [(0, [4i64, 2, 3, 3].as_slice(), false), (6, [3i64, 16].as_slice(), true)] {
            let src = &source[k].float_data;
            let got = all.values().find(|t| t.1 == dims).expect("the weight");
            let want: Vec<u8> = match (low, bf16) {
                (DType::F16, _) => src.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                (_, Bf16Mode::Native) if gemm => {
                    src.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect()
                }
                _ => src.iter().flat_map(|&x| half::bf16::from_f32(x).to_f32().to_le_bytes()).collect(),
            };
            assert_eq!(got.2, want, "{low:?} {bf16:?}: {dims:?}");
        }
    }
}

#[test]
fn an_inference_import_has_no_loss_and_keeps_the_weights_as_the_models_bytes() {
    let bytes = bytes::Bytes::from(small_cnn_raw().encode_to_vec());
    let opts = ImportOptions { loss: None, ..options(Loss::Mse) };
    let im = import(bytes.clone(), &opts).unwrap();
    assert!(im.graph.loss.is_none() && im.graph.optimizer.is_none());
    assert!(im.graph.node_named("labels").is_none());
    mpc::ir::verify::verify_inference(&im.graph).unwrap();
    // The weight's bytes point into the model's buffer: no copy was made.
    let w = &im.weights["w1"].data;
    let (lo, hi) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
    assert!((lo..hi).contains(&(w.as_ptr() as usize)), "w1 was copied");
    // A lowering for training still asks for a loss.
    assert!(mpc::verify(&im.graph).is_err());
}

/// Weights converted ahead, on other threads while the graph is lowered,
/// are the bytes the export converts itself: a model with 600 K weight
/// values (enough to be converted ahead), a Conv (whose bf16 weights are
/// stored as FLOAT) and a Gemm, in every mode.
#[test]
fn weights_converted_ahead_are_those_the_export_converts() {
    use mpc::onnx::export::Bf16Mode;
    use mpc::onnx::lower::{self as direct, InferenceOptions};
    let pseudo = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.1;
    let nodes = vec![
        op(
            "Conv",
            &["x", "w1", "b1"],
            "c1",
            vec![ints_attr("pads", &[1, 1, 1, 1]), ints_attr("kernel_shape", &[3, 3])],
        ),
        op("Relu", &["c1"], "r1", vec![]),
        op("Flatten", &["r1"], "flat", vec![]),
        op("Gemm", &["flat", "w2", "b2"], "y", vec![int_attr("transB", 1)]),
    ];
    let init = vec![
        raw(floats("w1", &[64, 8, 3, 3], pseudo)),
        raw(floats("b1", &[64], |i| 0.01 * i as f32)),
        raw(floats("w2", &[37, 64 * 16], pseudo)),
        raw(floats("b2", &[37], |i| 0.1 - 0.01 * i as f32)),
        // Big enough on its own to start the threads; read by no node.
        raw(floats("unused", &[600_000], pseudo)),
    ];
    let bytes = model(nodes, init, &[1, 8, 4, 4]).encode_to_vec();
    for (low, bf16) in
        [(DType::F16, Bf16Mode::Native), (DType::Bf16, Bf16Mode::Native), (DType::Bf16, Bf16Mode::Emulated)]
    {
        let passes = Options { low, table: Some(Table::default_for(low)), ..Options::default() };
        let opts = InferenceOptions { passes: Some(passes), bf16, input_shapes: vec![], ahead: false };
        let itself = direct::lower(bytes.clone().into(), &opts).unwrap().to_onnx(bf16).unwrap().concat();
        let l = direct::lower(bytes.clone().into(), &InferenceOptions { ahead: true, ..opts.clone() }).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(l.converting_ahead(), cores > 1, "threads are started with a second core");
        let ahead = l.to_onnx(bf16).unwrap().concat();
        assert_eq!(ahead, itself, "{low:?} {bf16:?}");
        let m = ModelProto::decode(&ahead[..]).unwrap();
        let names: Vec<String> = inits(&m).into_keys().collect();
        let weights: Vec<&String> = names.iter().filter(|n| !n.starts_with("shape")).collect();
        assert_eq!(weights.len(), 4, "{low:?} {bf16:?}: w1, b1, w2, b2 (not `unused`) in {names:?}");
    }
}

/// A Dropout's mask output may exist unread; read, it is refused (mpc's
/// dropout mask is not ONNX's boolean mask).
#[test]
fn a_dropout_mask_is_refused_only_where_it_is_read() {
    let dropout = NodeProto {
        op_type: Some("Dropout".into()),
        input: vec!["x".into()],
        output: vec!["d".into(), "mask".into()],
        ..Default::default()
    };
    let unread = model(vec![dropout.clone(), relu("d", "y")], vec![], &[2, 3]);
    import(unread.encode_to_vec(), &options(Loss::Mse)).expect("an unread mask is fine");
    let cast = NodeProto {
        op_type: Some("Cast".into()),
        input: vec!["mask".into()],
        output: vec!["m".into()],
        attribute: vec![int_attr("to", i64::from(data_type::FLOAT))],
        ..Default::default()
    };
    let add = op("Add", &["d", "m"], "y", vec![]);
    let read = model(vec![dropout, cast, add], vec![], &[2, 3]);
    let e = import(read.encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string();
    assert!(e.contains("its mask output is used"), "{e}");
}

/// Conv's `dilations` map onto conv2d's `dilation` (and `auto_pad` pads for
/// the dilated kernel's extent, as onnxruntime does), and the gradients
/// keep them; a dilated pool is still refused.
#[test]
fn a_dilated_conv_imports() {
    let w = floats("w", &[2, 1, 3, 2], |i| 0.1 * i as f32 - 0.5);
    let conv = |attrs: Vec<AttributeProto>| {
        let mut a = vec![ints_attr("dilations", &[2, 3]), ints_attr("strides", &[1, 2])];
        a.extend(attrs);
        model(vec![op("Conv", &["x", "w"], "c", a), relu("c", "y")], vec![w.clone()], &[1, 1, 9, 8])
    };
    let explicit = conv(vec![ints_attr("pads", &[2, 1, 2, 1])]);
    let im = import(explicit.encode_to_vec(), &options(Loss::Mse)).unwrap();
    let g = &im.graph;
    let want = Conv { dilation: [2, 3], ..Conv::new([1, 2], [2, 1], 1) };
    assert_eq!(*g.node(g.node_named("c").unwrap()).op(), Op::Conv2d(Box::new(want)));
    // (9 + 4 − 5)/1 + 1 = 9, (8 + 2 − 4)/2 + 1 = 4.
    assert_eq!(g.ty(g.value("c").unwrap()).shape.0, vec![1, 2, 9, 4]);
    let text = mpc::format::emit::json::to_string(g);
    assert!(text.contains(r#""dilation": [2, 3]"#) || text.contains(r#""dilation":[2,3]"#), "{text}");
    let back = mpc::parse_str(&text).expect("reads back");
    assert_eq!(*back.node(back.node_named("c").unwrap()).op(), Op::Conv2d(Box::new(want)));
    // SAME_UPPER over the 5x4 extent: out = ceil(9/1) = 9 rows, total pad 4
    // (2 + 2); ceil(8/2) = 4 columns, total pad (4 − 1)·2 + 4 − 8 = 2 (1 + 1).
    let same = conv(vec![AttributeProto {
        name: Some("auto_pad".into()),
        s: Some(b"SAME_UPPER".to_vec()),
        ..Default::default()
    }]);
    let im2 = import(same.encode_to_vec(), &options(Loss::Mse)).unwrap();
    assert_eq!(*im2.graph.node(im2.graph.node_named("c").unwrap()).op(), Op::Conv2d(Box::new(want)));
    // The lowered graph keeps them (the export writes them back: tests/onnx_export.rs).
    let (lowered, _) = lower(g, DType::F16);
    let dilated = lowered.node_ids().filter(|&n| match lowered.node(n).op() {
        Op::Conv2d(c) | Op::Conv2dGradInput { conv: c, .. } | Op::Conv2dGradWeight { conv: c, .. } => {
            *c == Box::new(want)
        }
        _ => false,
    });
    assert_eq!(dilated.count(), 2, "conv2d and conv2d_grad_weight (x is an input: no grad_input)");
    // Zero or malformed dilations are errors naming the attribute.
    for bad in [&[0, 1][..], &[2][..]] {
        let m = model(
            vec![op("Conv", &["x", "w"], "c", vec![ints_attr("dilations", bad)]), relu("c", "y")],
            vec![w.clone()],
            &[1, 1, 9, 8],
        );
        let e = import(m.encode_to_vec(), &options(Loss::Mse)).unwrap_err().to_string();
        assert!(e.contains("dilations") && e.contains("expected two values of at least 1"), "{e}");
    }
    let pool = op("MaxPool", &["x"], "y", vec![ints_attr("kernel_shape", &[2, 2]), ints_attr("dilations", &[2, 2])]);
    let e = import(model(vec![pool], vec![], &[1, 1, 9, 8]).encode_to_vec(), &options(Loss::Mse)).unwrap_err();
    assert!(e.to_string().contains("dilations [2, 2] are not supported"), "{e}");
}

/// A ceil_mode pool can need end padding beyond half its kernel (here 2 for
/// kernel 3): the import accepts it, and so does reading the graph it wrote.
#[test]
fn a_ceil_mode_pool_round_trips_through_the_graph_file() {
    let pool = op(
        "MaxPool",
        &["x"],
        "p",
        vec![ints_attr("kernel_shape", &[3, 3]), ints_attr("strides", &[3, 3]), int_attr("ceil_mode", 1)],
    );
    let m = model(vec![pool, relu("p", "y")], vec![], &[1, 1, 7, 7]);
    let im = import(m.encode_to_vec(), &options(Loss::Mse)).unwrap();
    let text = mpc::format::emit::json::to_string(&im.graph);
    assert!(text.contains(r#""padding_end": [2, 2]"#) || text.contains(r#""padding_end":[2,2]"#), "{text}");
    let g = mpc::parse_str(&text).expect("the written graph reads back");
    mpc::verify(&g).expect("and verifies");
}

/// A float ConstantOfShape of an initializer's shape stands in for a weight
/// (the zoo's light DenseNet-121 writes its 242 scale-layer weights so,
/// reshaped by Unsqueeze into a Mul and an Add): it trains as the same
/// weight written as an initializer does. A fill of a computed shape stays
/// a constant (state).
#[test]
fn a_constant_of_shape_weight_trains_as_an_initializer_does() {
    let value = AttributeProto {
        name: Some("value".into()),
        r#type: Some(4),
        t: Some(floats("", &[1], |_| 0.5)),
        ..Default::default()
    };
    let nodes = |w: bool| {
        let mut n = Vec::new();
        if w {
            n.push(op("ConstantOfShape", &["w_shape"], "w", vec![value.clone()]));
        }
        n.push(op("Unsqueeze", &["w"], "w2", vec![ints_attr("axes", &[0])]));
        n.push(op("Mul", &["x", "w2"], "m", vec![]));
        n.push(op("Shape", &["x"], "xs", vec![]));
        n.push(op("ConstantOfShape", &["xs"], "fill", vec![value.clone()]));
        n.push(op("Add", &["m", "fill"], "y", vec![]));
        n
    };
    let via_fill = model(nodes(true), vec![ints("w_shape", &[3])], &[2, 3]);
    let via_init = model(nodes(false), vec![floats("w", &[3], |_| 0.5)], &[2, 3]);
    for (how, m) in [("ConstantOfShape", via_fill), ("initializer", via_init)] {
        let im = import(m.encode_to_vec(), &options(Loss::Mse)).unwrap_or_else(|e| panic!("{how}: {e}"));
        let g = &im.graph;
        // The graph's one float source besides `x` feeding each op.
        let source_of = |name: &str, port: usize| {
            let n = g.node_named(name).unwrap_or_else(|| panic!("{how}: no node `{name}`"));
            g.node(g.inputs(n).get(port).expect("an input").node).op().kind().name()
        };
        assert_eq!(source_of("m", 1), "param", "{how}: the weight trains");
        assert_eq!(source_of("y", 1), "state", "{how}: a run-time fill does not");
    }
}

/// `Sqrt` imports as `sqrt` and `sqrt` exports as `Sqrt`, both from the op
/// table's `Onnx::Direct` entry alone, in FP16 and BF16 (an `infer` op
/// between casts: it computes in the low type there).
#[test]
fn sqrt_imports_and_exports_from_the_op_table() {
    use mpc::onnx::export::{self, Bf16Mode};
    let m = model(vec![op("Sqrt", &["x"], "y", vec![])], vec![], &[2, 3]);
    let im = import(m.encode_to_vec(), &ImportOptions { loss: None, ..options(Loss::Mse) }).unwrap();
    let y = im.graph.node_named("y").expect("y");
    assert_eq!(*im.graph.node(y).op(), Op::Sqrt);
    assert!(mpc::onnx::import::supported().contains(&"Sqrt"));
    for low in [DType::F16, DType::Bf16] {
        let passes = Options { low, table: Some(Table::default_for(low)), ..Options::default() };
        let (g, _) = mpc::onnx::lower_forward(&im.graph, &passes).unwrap();
        let opts = export::Options { bf16: Bf16Mode::Native, seed: 0, base_dir: None, allow_outside_weights: false };
        let out = export::export(&g, &opts).unwrap();
        let types: Vec<&str> = out.graph.as_ref().unwrap().node.iter().filter_map(|n| n.op_type.as_deref()).collect();
        assert!(types.contains(&"Sqrt"), "{low:?}: {types:?}");
    }
}
