//! `--emit onnx`: the ONNX export of lowered ir-examples, decoded with prost
//! and checked for structure (onnxruntime runs them in tests/onnx/check_ort.py).

use std::collections::{BTreeMap, HashMap, HashSet};

use half::{bf16, f16};
use mpc::ir::op::{Conv, Op, OpKind};
use mpc::onnx::export::{self, Bf16Mode, ExportError, Options};
use mpc::onnx::proto::{data_type, ModelProto, TensorProto, TypeValue};
use prost::Message;

#[derive(Copy, Clone, Debug, PartialEq)]
enum Prec {
    Fp32,
    Fp16,
    Bf16,
}

/// An ir-example with `outputs` set to the given values.
fn example(name: &str, outputs: &[&str]) -> String {
    let text = std::fs::read_to_string(format!("ir-examples/{name}.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["outputs"] = serde_json::json!(outputs);
    v.to_string()
}

fn lowered(text: &str, p: Prec) -> mpc::Graph {
    let mut g = mpc::parse_str(text).unwrap();
    mpc::verify(&g).unwrap();
    let low = if p == Prec::Bf16 { mpc::DType::Bf16 } else { mpc::DType::F16 };
    let opts = mpc::passes::Options { low, ..Default::default() };
    match p {
        Prec::Fp32 => mpc::passes::lower_fp32(&mut g, &opts).unwrap(),
        _ => drop(mpc::passes::lower(&mut g, &opts).unwrap()),
    }
    g
}

/// Exports, encodes and decodes again (what a reader of the file sees).
fn export_decoded(g: &mpc::Graph, bf16: Bf16Mode) -> ModelProto {
    let bytes = export::export_bytes(g, &Options { bf16, seed: 0, ..Default::default() }).unwrap();
    ModelProto::decode(bytes.as_slice()).unwrap()
}

fn ops(m: &ModelProto) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for n in &m.graph.as_ref().unwrap().node {
        *c.entry(n.op_type.clone().unwrap()).or_default() += 1;
    }
    c
}

fn init<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
    let g = m.graph.as_ref().unwrap();
    g.initializer.iter().find(|t| t.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no initializer {name}"))
}

fn elem_of(t: &TypeValue) -> i32 {
    let TypeValue::TensorType(t) = t;
    t.elem_type.unwrap()
}

/// The structural invariants of every export.
fn check_structure(m: &ModelProto) {
    assert_eq!(m.ir_version, Some(8));
    assert_eq!(m.opset_import.len(), 1);
    assert_eq!(m.opset_import[0].version, Some(17));
    assert_eq!(m.opset_import[0].domain.as_deref(), Some(""));
    let g = m.graph.as_ref().unwrap();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_deref().unwrap()).collect();
    let mut defined: HashSet<&str> = HashSet::new();
    let mut all = Vec::new();
    for i in &g.input {
        all.push(i.name.as_deref().unwrap());
    }
    all.extend(inits.iter().copied());
    for n in &g.node {
        all.extend(n.output.iter().map(String::as_str).filter(|s| !s.is_empty()));
    }
    let mut seen = HashSet::new();
    for name in &all {
        assert!(seen.insert(*name), "the name `{name}` is defined twice");
    }
    defined.extend(g.input.iter().map(|i| i.name.as_deref().unwrap()));
    defined.extend(inits.iter().copied());
    let mut used = HashSet::new();
    for n in &g.node {
        for i in &n.input {
            assert!(defined.contains(i.as_str()), "node {:?} reads `{i}` before it is defined", n.name);
            used.insert(i.as_str());
        }
        if n.op_type.as_deref() == Some("Cast") {
            assert!(!inits.contains(n.input[0].as_str()), "a Cast reads the initializer `{}`", n.input[0]);
        }
        defined.extend(n.output.iter().map(String::as_str));
    }
    for t in &g.initializer {
        assert!(used.contains(t.name.as_deref().unwrap()), "initializer {:?} is unused", t.name);
        let n: i64 = t.dims.iter().product();
        let size = match t.data_type.unwrap() {
            data_type::FLOAT | data_type::INT32 => 4,
            data_type::FLOAT16 | data_type::BFLOAT16 => 2,
            data_type::INT64 => 8,
            _ => 1,
        };
        assert_eq!(t.raw_data.as_ref().unwrap().len() as i64, n * size, "{:?}", t.name);
    }
    // value_info: every node output but the graph outputs, with a full type.
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_deref().unwrap()).collect();
    let infos: HashMap<&str, i32> = g
        .value_info
        .iter()
        .map(|v| (v.name.as_deref().unwrap(), elem_of(v.r#type.as_ref().unwrap().value.as_ref().unwrap())))
        .collect();
    for n in &g.node {
        for o in n.output.iter().filter(|o| !o.is_empty() && !outputs.contains(o.as_str())) {
            assert!(infos.contains_key(o.as_str()), "no value_info for `{o}`");
        }
    }
    for vi in g.value_info.iter().chain(&g.output).chain(&g.input) {
        let TypeValue::TensorType(t) = vi.r#type.as_ref().unwrap().value.as_ref().unwrap();
        assert!(t.shape.is_some(), "{:?} has no shape", vi.name);
    }
}

/// The element type of every initializer, by name.
fn init_types(m: &ModelProto) -> BTreeMap<String, i32> {
    m.graph.as_ref().unwrap().initializer.iter().map(|t| (t.name.clone().unwrap(), t.data_type.unwrap())).collect()
}

#[test]
fn mlp_in_every_precision() {
    let text = example("mlp", &["logits_b"]);
    let fp32 = export_decoded(&lowered(&text, Prec::Fp32), Bf16Mode::Native);
    check_structure(&fp32);
    // 3 matmuls with their bias adds as Gemm, relu, and gelu as 6 Mul, 2 Add
    // and a Tanh; no casts.
    let c = ops(&fp32);
    assert_eq!(c["Gemm"], 3);
    assert!(!c.contains_key("MatMul"));
    assert_eq!(c["Relu"], 1);
    assert_eq!(c["Tanh"], 1);
    assert_eq!(c["Mul"], 6);
    assert_eq!(c["Add"], 2);
    assert!(!c.contains_key("Cast"));
    assert_eq!(c.values().sum::<usize>(), 13);
    assert!(init_types(&fp32).values().all(|&t| t == data_type::FLOAT));
    let g = fp32.graph.as_ref().unwrap();
    assert_eq!(g.input.len(), 1, "labels feeds only the loss");
    assert_eq!(g.input[0].name.as_deref(), Some("x"));
    assert_eq!(g.output[0].name.as_deref(), Some("logits_b"));

    let fp16 = export_decoded(&lowered(&text, Prec::Fp16), Bf16Mode::Native);
    check_structure(&fp16);
    let t = init_types(&fp16);
    // b1 and b2, added low, are Gemm's C (an initializer of their own).
    for w in ["w1.f16", "w2.f16", "w3.f16", "b1.bias", "b2.bias"] {
        assert_eq!(t[w], data_type::FLOAT16, "{w}");
    }
    assert_eq!(t["b3"], data_type::FLOAT, "b3 is added in f32 after the logits' cast");
    let c = ops(&fp16);
    assert_eq!((c["Gemm"], c["MatMul"]), (2, 1), "the logits' matmul has its bias added in f32");
    assert_eq!(c["Add"], 2 + 1, "gelu's two and the f32 bias add");
    assert!(!t.contains_key("w1"), "the f32 master is not exported when only its cast is read");
    // Casts: x to f16, gelu's input up and result down, logits up.
    assert_eq!(ops(&fp16)["Cast"], 4);
    assert_eq!(fp16.graph.as_ref().unwrap().output[0].name.as_deref(), Some("logits_b"));

    let bf16 = export_decoded(&lowered(&text, Prec::Bf16), Bf16Mode::Native);
    check_structure(&bf16);
    let t = init_types(&bf16);
    for w in ["w1.bf16", "w2.bf16", "w3.bf16"] {
        assert_eq!(t[w], data_type::BFLOAT16, "{w}");
    }
    let emu = export_decoded(&lowered(&text, Prec::Bf16), Bf16Mode::Emulated);
    check_structure(&emu);
    let t = init_types(&emu);
    assert!(t.values().all(|&t| t == data_type::FLOAT), "{t:?}");
    // Every bf16 value is stored in FLOAT, already rounded.
    let w = init(&emu, "w1.bf16");
    for c in w.raw_data.as_ref().unwrap().chunks(4) {
        let x = f32::from_le_bytes(c.try_into().unwrap());
        assert_eq!(bf16::from_f32(x).to_f32(), x);
    }
    // Rounding pairs: Cast to BFLOAT16 then back after every rounding op.
    let g = emu.graph.as_ref().unwrap();
    let to_bf16 =
        g.node.iter().filter(|n| n.op_type.as_deref() == Some("Cast") && n.attribute[0].i == Some(16)).count();
    let native_values = bf16.graph.as_ref().unwrap().value_info.len();
    assert!(to_bf16 >= 7, "{to_bf16} roundings ({native_values} values)");
}

#[test]
fn a_param_cast_folds_into_the_initializer() {
    let text = example("mlp", &["logits_b"]);
    let g = lowered(&text, Prec::Fp16);
    let state = mpc::exec::init_state(&g, 0).unwrap();
    let m = export_decoded(&g, Bf16Mode::Native);
    let t = init(&m, "w1.f16");
    assert_eq!(t.dims, vec![64, 128]);
    let want: Vec<u8> = state["w1"].to_f32_vec().iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
    assert_eq!(t.raw_data.as_deref(), Some(want.as_slice()));
    // Another seed gives other weights; the same seed, the same bytes.
    let opts = |seed| Options { seed, ..Options::default() };
    let a = export::export_bytes(&g, &opts(0)).unwrap();
    assert_eq!(a, export::export_bytes(&g, &opts(0)).unwrap());
    assert_ne!(a, export::export_bytes(&g, &opts(1)).unwrap());
}

#[test]
fn cnn_in_every_precision() {
    let text = example("cnn", &["logits"]);
    let fp32 = export_decoded(&lowered(&text, Prec::Fp32), Bf16Mode::Native);
    check_structure(&fp32);
    let c = ops(&fp32);
    assert_eq!((c["Conv"], c["MaxPool"], c["AveragePool"], c["Flatten"]), (2, 1, 1, 1));
    // batch_norm with batch statistics: 2 ReduceMean, Sub, 2 Mul... per layer.
    assert_eq!(c["ReduceMean"], 4);
    assert_eq!(c["Sqrt"], 2);

    let fp16 = export_decoded(&lowered(&text, Prec::Fp16), Bf16Mode::Native);
    check_structure(&fp16);
    let t = init_types(&fp16);
    assert_eq!(t["conv1_w.f16"], data_type::FLOAT16);
    assert_eq!(t["conv2_w.f16"], data_type::FLOAT16);
    assert_eq!(t["fc_w.f16"], data_type::FLOAT16);
    let c = ops(&fp16);
    assert_eq!(c["Conv"], 2);

    // Native bf16: opset 17 has no bf16 Conv or pooling, so those compute
    // in FLOAT between casts, with FLOAT weights holding bf16 values.
    let bf16 = export_decoded(&lowered(&text, Prec::Bf16), Bf16Mode::Native);
    check_structure(&bf16);
    let t = init_types(&bf16);
    assert_eq!(t["conv1_w.bf16.f32"], data_type::FLOAT);
    assert!(!t.contains_key("conv1_w.bf16"));
    assert_eq!(t["fc_w.bf16"], data_type::BFLOAT16);
    let g = bf16.graph.as_ref().unwrap();
    let conv = g.node.iter().find(|n| n.op_type.as_deref() == Some("Conv")).unwrap();
    // An undilated conv writes no `dilations` (ONNX's default), so exports stay as they were.
    assert!(conv.attribute.iter().all(|a| a.name.as_deref() != Some("dilations")));
    let info: HashMap<&str, i32> = g
        .value_info
        .iter()
        .map(|v| (v.name.as_deref().unwrap(), elem_of(v.r#type.as_ref().unwrap().value.as_ref().unwrap())))
        .collect();
    assert_eq!(info[conv.output[0].as_str()], data_type::FLOAT);
    assert_eq!(info["conv1"], data_type::BFLOAT16);
    assert_eq!(info["act1"], data_type::BFLOAT16);

    let emu = export_decoded(&lowered(&text, Prec::Bf16), Bf16Mode::Emulated);
    check_structure(&emu);
    assert!(init_types(&emu).values().all(|&t| t == data_type::FLOAT));
    let g = emu.graph.as_ref().unwrap();
    assert!(g.value_info.iter().all(|v| {
        let e = elem_of(v.r#type.as_ref().unwrap().value.as_ref().unwrap());
        e == data_type::FLOAT || v.name.as_deref().unwrap().ends_with(".bf16")
    }));
}

#[test]
fn gpt_block_exports() {
    let text = example("gpt_block", &["logits"]);
    for (p, mode) in [
        (Prec::Fp32, Bf16Mode::Native),
        (Prec::Fp16, Bf16Mode::Native),
        (Prec::Bf16, Bf16Mode::Native),
        (Prec::Bf16, Bf16Mode::Emulated),
    ] {
        let m = export_decoded(&lowered(&text, p), mode);
        check_structure(&m);
        let c = ops(&m);
        assert_eq!(c["LayerNormalization"], 5, "{p:?}");
        assert_eq!(c["Softmax"], 2);
        assert_eq!(c["Where"], 2, "the causal masks");
        assert_eq!(c["Gather"], 1);
        assert!(!c.contains_key("Dropout"), "dropout is the identity at inference");
        // 14 matmuls: 6 projections and 2 attention products per layer... and the head.
        assert_eq!(c["MatMul"] + c.get("Gemm").unwrap_or(&0), 2 * 8 + 1);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.input[0].name.as_deref(), Some("tokens"));
        assert_eq!(g.input[0].r#type.as_ref().map(|t| elem_of(t.value.as_ref().unwrap())), Some(data_type::INT32));
    }
}

#[test]
fn unsupported_ops_are_listed_together() {
    let text = r#"{
      "format": "mpc/1",
      "inputs": [{"name": "x", "shape": [4, 3]}, {"name": "y", "shape": [4], "dtype": "i32"},
                 {"name": "t", "shape": [4, 3]}],
      "params": [{"name": "w", "shape": [3, 3], "init": {"kind": "normal", "std": 1.0}}],
      "forward": [
        {"name": "h", "op": "matmul", "inputs": ["x", "w"]},
        {"name": "ce", "op": "cross_entropy", "inputs": ["h", "y"]},
        {"name": "sq", "op": "mse", "inputs": ["h", "t"]},
        {"name": "loss", "op": "add", "inputs": ["ce", "sq"]}
      ],
      "loss": "loss",
      "outputs": ["h", "loss"]
    }"#;
    let g = lowered(text, Prec::Fp16);
    let e = export::export(&g, &Options::default()).unwrap_err();
    match &e {
        ExportError::Unsupported(nodes) => {
            let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["ce", "sq"], "{e}");
        }
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("`ce` (cross_entropy)") && msg.contains("`sq` (mse)"), "{msg}");
    // Without the loss the rest exports.
    let g = lowered(&text.replace(r#""outputs": ["h", "loss"]"#, r#""outputs": ["h"]"#), Prec::Fp16);
    check_structure(&export_decoded(&g, Bf16Mode::Native));
}

/// A graph listing no forward outputs exports its loss's first input (the
/// shipped mlp.json failed); with no loss either, the error says what to list.
#[test]
fn no_inference_outputs_is_a_clear_error() {
    let mut g = lowered(&std::fs::read_to_string("ir-examples/mlp.json").unwrap(), Prec::Fp16);
    // The lowered graph reports found_inf and loss_scale: scaler and state values, not inference outputs.
    assert!(!g.outputs.is_empty());
    let m = export_decoded(&g, Bf16Mode::Native);
    let names: Vec<_> = m.graph.as_ref().unwrap().output.iter().map(|o| o.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["logits_b"]);
    g.loss = None;
    let e = export::export(&g, &Options::default()).unwrap_err();
    assert_eq!(e, ExportError::NoOutputs);
    assert!(e.to_string().contains("list the inference outputs"), "{e}");
}

#[test]
fn file_inits_come_from_the_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.1 - 0.2).collect();
    let mut s = mpc::exec::State::new();
    s.insert("w".into(), mpc::exec::Tensor::from_f32(mpc::DType::F32, vec![3, 2], &w).unwrap());
    mpc::tensor::safetensors::write(&dir.path().join("m.safetensors"), &s).unwrap();
    let text = r#"{
      "format": "mpc/1",
      "weights": "m.safetensors",
      "inputs": [{"name": "x", "shape": [4, 3]}, {"name": "t", "shape": [4, 2]}],
      "params": [{"name": "w", "shape": [3, 2], "init": {"kind": "file"}}],
      "forward": [
        {"name": "h", "op": "matmul", "inputs": ["x", "w"]},
        {"name": "loss", "op": "mse", "inputs": ["h", "t"]}
      ],
      "loss": "loss",
      "outputs": ["h"]
    }"#;
    let g = lowered(text, Prec::Fp32);
    let e = export::export(&g, &Options::default()).unwrap_err();
    assert!(e.to_string().contains("m.safetensors"), "{e}");
    let opts = Options { base_dir: Some(dir.path().to_path_buf()), ..Options::default() };
    let m = ModelProto::decode(export::export_bytes(&g, &opts).unwrap().as_slice()).unwrap();
    let want: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(init(&m, "w").raw_data.as_deref(), Some(want.as_slice()));
}

#[test]
fn a_constant_output_and_an_output_read_by_another() {
    let text = r#"{
      "format": "mpc/1",
      "inputs": [{"name": "x", "shape": [2, 3]}],
      "forward": [
        {"name": "c", "op": "constant", "value": 0.5, "shape": [2, 3]},
        {"name": "h", "op": "mul", "inputs": ["x", "c"]},
        {"name": "a", "op": "tanh", "inputs": ["h"]},
        {"name": "loss", "op": "reduce_sum", "inputs": ["a"], "axes": [0, 1]}
      ],
      "loss": "loss",
      "outputs": ["c", "h", "a", "h"]
    }"#;
    for p in [Prec::Fp32, Prec::Fp16] {
        let m = export_decoded(&lowered(text, p), Bf16Mode::Native);
        check_structure(&m);
        let outs: Vec<String> = m.graph.unwrap().output.iter().map(|o| o.name.clone().unwrap()).collect();
        assert_eq!(outs.len(), 3, "{outs:?}");
        assert!(outs[0].starts_with('c') && outs[1].starts_with('h') && outs[2].starts_with('a'), "{outs:?}");
    }
}

#[test]
fn the_onnx_cnn_ops_export() {
    // concat, split, lrn, frozen_batch_norm, erf, grouped and dilated conv,
    // asymmetric pooling and count_include_pad (tests/onnx/cnn_ops.json, also
    // run by check_ort.py).
    let text = std::fs::read_to_string("tests/onnx/cnn_ops.json").unwrap();
    for (p, mode) in [
        (Prec::Fp32, Bf16Mode::Native),
        (Prec::Fp16, Bf16Mode::Native),
        (Prec::Bf16, Bf16Mode::Native),
        (Prec::Bf16, Bf16Mode::Emulated),
    ] {
        let m = export_decoded(&lowered(&text, p), mode);
        check_structure(&m);
        let c = ops(&m);
        for op in ["Conv", "BatchNormalization", "Erf", "LRN", "MaxPool", "Split", "Concat", "Flatten"] {
            assert_eq!(c[op], 1, "{op} {p:?} {mode:?}");
        }
        assert_eq!(c["AveragePool"], 2);
        let g = m.graph.as_ref().unwrap();
        let node = |op: &str| g.node.iter().find(|n| n.op_type.as_deref() == Some(op)).unwrap();
        let attr = |n: &mpc::onnx::proto::NodeProto, a: &str| {
            n.attribute.iter().find(|x| x.name.as_deref() == Some(a)).cloned()
        };
        assert_eq!(attr(node("Conv"), "group").unwrap().i, Some(2));
        assert_eq!(attr(node("Conv"), "dilations").unwrap().ints, vec![2, 2]);
        assert_eq!(attr(node("Conv"), "pads").unwrap().ints, vec![2, 2, 2, 2]);
        assert_eq!(attr(node("MaxPool"), "pads").unwrap().ints, vec![0, 0, 1, 1]);
        let avg: Vec<_> = g.node.iter().filter(|n| n.op_type.as_deref() == Some("AveragePool")).collect();
        assert_eq!(attr(avg[0], "pads").unwrap().ints, vec![1, 1, 0, 0]);
        assert_eq!(attr(avg[0], "count_include_pad").unwrap().i, Some(0));
        assert_eq!(attr(avg[1], "count_include_pad").unwrap().i, Some(1));
        let split = node("Split");
        assert_eq!(split.output, vec!["s_a", "s_b"]);
        assert_eq!(g.output.len(), 2);
    }
}

#[test]
fn a_dilated_conv_round_trips_through_onnx() {
    let text = r#"{
      "format": "mpc/1",
      "inputs": [{"name": "x", "shape": [1, 2, 9, 8]}],
      "params": [{"name": "w", "shape": [4, 1, 3, 2], "init": {"kind": "kaiming_normal"}}],
      "forward": [
        {"name": "c", "op": "conv2d", "inputs": ["x", "w"], "stride": [1, 2], "padding": [2, 1], "dilation": [2, 3], "groups": 2},
        {"name": "loss", "op": "reduce_mean", "inputs": ["c"], "axes": [0, 1, 2, 3]}
      ],
      "loss": "loss",
      "outputs": ["c"]
    }"#;
    let want = Op::Conv2d(Box::new(Conv { dilation: [2, 3], ..Conv::new([1, 2], [2, 1], 2) }));
    let m = export_decoded(&lowered(text, Prec::Fp32), Bf16Mode::Native);
    check_structure(&m);
    let g = m.graph.as_ref().unwrap();
    let conv = g.node.iter().find(|n| n.op_type.as_deref() == Some("Conv")).unwrap();
    let attr = |a: &str| conv.attribute.iter().find(|x| x.name.as_deref() == Some(a)).unwrap().ints.clone();
    assert_eq!((attr("dilations"), attr("strides"), attr("pads")), (vec![2, 3], vec![1, 2], vec![2, 1, 2, 1]));
    // Importing the export gives back the same convolution.
    let opts = mpc::onnx::ImportOptions {
        loss: None,
        optimizer: mpc::format::Optimizer::new(mpc::format::OptimizerKind::Sgd, 0.1),
        weights_file: "model.safetensors".into(),
        input_shapes: vec![],
        dropout_seed: 0,
    };
    let im = mpc::onnx::import(m.encode_to_vec(), &opts).unwrap();
    let ig = &im.graph;
    let convs: Vec<Op> =
        ig.node_ids().map(|n| ig.node(n).op().clone()).filter(|o| o.kind() == OpKind::Conv2d).collect();
    assert_eq!(convs, vec![want]);
}

#[test]
fn test_data_is_what_the_executor_computes() {
    let text = example("gpt_block", &["logits"]);
    let g = lowered(&text, Prec::Bf16);
    let opts = Options { bf16: Bf16Mode::Emulated, seed: 3, ..Default::default() };
    let m = export::export(&g, &opts).unwrap();
    let data = export::test_data(&g, &opts, &m).unwrap();
    let graph = m.graph.as_ref().unwrap();
    assert_eq!(data.inputs.len(), 1);
    assert_eq!(data.inputs[0].name, graph.input[0].name);
    assert_eq!(data.inputs[0].data_type, Some(data_type::INT32));
    let ids: Vec<i32> = data.inputs[0]
        .raw_data
        .as_ref()
        .unwrap()
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ids.len(), 8 * 32);
    assert!(ids.iter().all(|&i| (0..65).contains(&i)), "ids index the 65-row table");
    assert!(ids.iter().any(|&i| i > 1));
    assert_eq!(data.outputs.len(), 1);
    let out = &data.outputs[0];
    assert_eq!(out.name, graph.output[0].name);
    assert_eq!(out.dims, vec![8, 32, 65]);
    // The output is the f32 cast of bf16 logits: bf16 values, and dropout is off
    // (the same data twice, whatever the step's dropout would have done).
    let v: Vec<f32> =
        out.raw_data.as_ref().unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(v.iter().all(|&x| bf16::from_f32(x).to_f32() == x && x.is_finite()));
    assert_eq!(data, export::test_data(&g, &opts, &m).unwrap());
    // Another seed, other inputs.
    let other = Options { seed: 4, ..opts.clone() };
    assert_ne!(export::test_data(&g, &other, &export::export(&g, &other).unwrap()).unwrap().inputs, data.inputs);
}

#[test]
fn conv_bias_adds_fold_into_conv_except_in_emulated_bf16() {
    use mpc::format::{Optimizer, OptimizerKind};
    use mpc::onnx::{import, ImportOptions, Loss};
    let bytes = std::fs::read("tests/data/onnx/light_squeezenet.onnx").unwrap();
    let opts = ImportOptions {
        loss: Some(Loss::CrossEntropy),
        optimizer: Optimizer::new(OptimizerKind::Sgd, 0.01),
        weights_file: "w.safetensors".into(),
        input_shapes: vec![],
        dropout_seed: 0,
    };
    let im = import(bytes, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    mpc::onnx::raw::write_safetensors(&dir.path().join("w.safetensors"), &im.weights).unwrap();
    // (low, mode, autocast's fold_bias, Conv nodes with a bias, Add nodes left)
    for (low, mode, fold, want) in [
        // Without fold_bias, conv10's bias add stays f32 (it feeds the f32
        // mean): it reads a cast and is not folded.
        (mpc::DType::F16, Bf16Mode::Native, false, (25, 1)),
        // With it (as `--emit onnx` runs autocast), it is added low, in the Conv.
        (mpc::DType::F16, Bf16Mode::Native, true, (26, 0)),
        // Under BF16's table the mean is an infer op: every add is low anyway.
        (mpc::DType::Bf16, Bf16Mode::Native, false, (26, 0)),
        (mpc::DType::Bf16, Bf16Mode::Native, true, (26, 0)),
        // Emulated bf16 rounds the conv before its bias, as mpc's executors.
        (mpc::DType::Bf16, Bf16Mode::Emulated, false, (0, 26)),
    ] {
        let mut g = im.graph.clone();
        let popts = mpc::passes::Options {
            low,
            table: Some(mpc::passes::Table::default_for(low)),
            fold_bias: fold,
            ..Default::default()
        };
        mpc::passes::lower(&mut g, &popts).unwrap();
        let o = Options { bf16: mode, seed: 0, base_dir: Some(dir.path().to_path_buf()), ..Default::default() };
        let m = ModelProto::decode(export::export_bytes(&g, &o).unwrap().as_slice()).unwrap();
        let nodes = &m.graph.as_ref().unwrap().node;
        let convs: Vec<_> = nodes.iter().filter(|n| n.op_type.as_deref() == Some("Conv")).collect();
        let adds = nodes.iter().filter(|n| n.op_type.as_deref() == Some("Add")).count();
        assert_eq!(convs.len(), 26, "{low:?} {mode:?}");
        let with_bias = convs.iter().filter(|c| c.input.len() == 3).count();
        assert_eq!((with_bias, adds), want, "{low:?} {mode:?} fold_bias {fold}");
    }
}

/// With `fold_bias` (what `mpc lower --emit onnx` sets), the classifier's
/// bias is added in the Gemm, in f16, and the output keeps its name.
#[test]
fn a_folded_bias_goes_into_the_gemm_and_the_output_keeps_its_name() {
    let text = example("mlp", &["logits_b"]);
    for (low, mode, store) in [
        (mpc::DType::F16, Bf16Mode::Native, data_type::FLOAT16),
        (mpc::DType::Bf16, Bf16Mode::Native, data_type::BFLOAT16),
    ] {
        let mut g = mpc::parse_str(&text).unwrap();
        let opts = mpc::passes::Options { low, fold_bias: true, ..Default::default() };
        mpc::passes::lower(&mut g, &opts).unwrap();
        let logits = g.outputs[0];
        assert_eq!((g.value_name(logits), g.ty(logits).dtype), ("logits_b", mpc::DType::F32));
        let m = export_decoded(&g, mode);
        check_structure(&m);
        let c = ops(&m);
        assert_eq!((c["Gemm"], c.get("MatMul")), (3, None), "{low:?}");
        let graph = m.graph.as_ref().unwrap();
        let gemms: Vec<_> = graph.node.iter().filter(|n| n.op_type.as_deref() == Some("Gemm")).collect();
        assert!(gemms.iter().all(|n| n.input.len() == 3), "every bias in its Gemm");
        let t = init_types(&m);
        assert!(t.iter().filter(|(k, _)| k.starts_with('b')).all(|(_, &e)| e == store), "{t:?}");
        assert_eq!(graph.output[0].name.as_deref(), Some("logits_b"));
        // The last Gemm's output is cast to f32 as the output itself.
        let last = graph.node.iter().find(|n| n.output.first().map(String::as_str) == Some("logits_b")).unwrap();
        assert_eq!(last.op_type.as_deref(), Some("Cast"));
    }
}

/// Names ONNX cannot take as they are (a space) become names that other
/// values already have, and values are named as the export's own nodes
/// would be (`.f16`, `.bias`): every name stays unique, and every plain
/// name is the value's own.
#[test]
fn names_that_clash_once_sanitized_stay_unique() {
    let text = r#"{
      "format": "mpc/1",
      "name": "clash",
      "inputs": [{"name": "x", "shape": [4, 8]}, {"name": "t", "shape": [4, 8]}],
      "params": [
        {"name": "w 1", "shape": [8, 8], "init": {"kind": "kaiming_normal"}},
        {"name": "w_1", "shape": [8, 8], "init": {"kind": "kaiming_normal"}},
        {"name": "b", "shape": [8], "init": {"kind": "zeros"}},
        {"name": "w_1.bias", "shape": [8], "init": {"kind": "zeros"}}
      ],
      "forward": [
        {"name": "h 2", "op": "matmul", "inputs": ["x", "w 1"]},
        {"name": "h_2", "op": "matmul", "inputs": ["h 2", "w_1"]},
        {"name": "h_2b", "op": "add", "inputs": ["h_2", "b"]},
        {"name": "b.bias", "op": "add", "inputs": ["h_2b", "w_1.bias"]},
        {"name": "y", "op": "softmax", "inputs": ["b.bias"]},
        {"name": "loss", "op": "mse", "inputs": ["y", "t"]}
      ],
      "loss": "loss",
      "optimizer": {"kind": "sgd", "lr": 0.1},
      "outputs": ["y"]
    }"#;
    for p in [Prec::Fp32, Prec::Fp16] {
        let g = lowered(text, p);
        let m = export_decoded(&g, Bf16Mode::Native);
        check_structure(&m);
        let graph = m.graph.as_ref().unwrap();
        let defined: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str))
            .chain(graph.initializer.iter().map(|t| t.name.as_deref().unwrap()))
            .collect();
        for own in ["h_2b", "b.bias", "y", "x"] {
            assert!(defined.contains(own) || graph.input.iter().any(|i| i.name.as_deref() == Some(own)), "{own}");
        }
        assert!(defined.iter().all(|n| !n.contains(' ')), "{defined:?}");
    }
}
