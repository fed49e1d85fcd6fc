//! The ops and attributes that ONNX CNNs need (concat, split, lrn,
//! frozen_batch_norm, erf, grouped and dilated conv2d, asymmetric pooling padding,
//! avg_pool2d's count_include_pad) through the whole compiler: they parse,
//! verify and round-trip through JSON, lower in fp16 and bf16 (grad writes
//! every gradient op), and a lowered step runs on the CPU executor.

use mpc::exec::rng::SplitMix64;
use mpc::exec::{init_state, CpuBackend, Data, Executor, RunOptions, State, Tensor};
use mpc::format::emit::{json, text};
use mpc::passes::{self, Options};
use mpc::{DType, Graph, Op, OpKind};

/// A small CNN that uses every new op and every new attribute.
const CNN: &str = r#"{
  "format": "mpc/1",
  "name": "cnn_ops",
  "inputs": [
    {"name": "x", "shape": [2, 4, 8, 8]},
    {"name": "labels", "shape": [2], "dtype": "i32"}
  ],
  "params": [
    {"name": "w1", "shape": [8, 2, 3, 3], "init": {"kind": "kaiming_normal"}},
    {"name": "gamma", "shape": [8], "init": {"kind": "ones"}},
    {"name": "beta", "shape": [8], "init": {"kind": "zeros"}},
    {"name": "w2", "shape": [32, 10], "init": {"kind": "xavier_uniform"}}
  ],
  "state": [
    {"name": "mean", "shape": [8], "init": {"kind": "constant", "value": 0.1}},
    {"name": "var", "shape": [8], "init": {"kind": "ones"}}
  ],
  "forward": [
    {"name": "c1", "op": "conv2d", "inputs": ["x", "w1"], "padding": [2, 1], "dilation": [2, 1], "groups": 2},
    {"name": "bn", "op": "frozen_batch_norm", "inputs": ["c1", "gamma", "beta", "mean", "var"], "eps": 0.001},
    {"name": "e", "op": "erf", "inputs": ["bn"]},
    {"name": "l", "op": "lrn", "inputs": ["e"], "size": 3, "alpha": 0.001, "beta": 0.75, "bias": 2.0},
    {"name": "p", "op": "max_pool2d", "inputs": ["l"], "kernel": [3, 3], "stride": [2, 2], "padding_end": [1, 1]},
    {"name": "s", "op": "split", "inputs": ["p"], "axis": 1, "sizes": [3, 5], "outputs": ["s_a", "s_b"]},
    {"name": "a1", "op": "avg_pool2d", "inputs": ["s_a"], "kernel": [2, 2], "padding": [1, 1], "padding_end": [0, 0], "count_include_pad": false},
    {"name": "a2", "op": "avg_pool2d", "inputs": ["s_b"], "kernel": [2, 2]},
    {"name": "cat", "op": "concat", "inputs": ["a1", "a2"], "axis": 1},
    {"name": "f", "op": "flatten", "inputs": ["cat"]},
    {"name": "logits", "op": "matmul", "inputs": ["f", "w2"]},
    {"name": "loss", "op": "cross_entropy", "inputs": ["logits", "labels"]}
  ],
  "loss": "loss",
  "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.9}
}"#;

fn parse(text: &str) -> Graph {
    let g = mpc::parse_str(text).unwrap_or_else(|e| panic!("{e}"));
    mpc::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    g
}

/// `parse(emit(g)) == g`, and emitting is a fixed point.
fn round_trips(g: &Graph) {
    let emitted = json::to_string(g);
    let again = mpc::parse_str(&emitted).unwrap_or_else(|e| panic!("re-parse: {e}\n{emitted}"));
    assert!(*g == again, "parse(emit(g)) != g\n{emitted}");
    assert_eq!(json::to_string(&again), emitted, "emit is not a fixed point");
}

#[test]
fn every_new_op_and_attribute_round_trips() {
    let g = parse(CNN);
    round_trips(&g);
    let shape = |v: &str| g.ty(g.value(v).unwrap()).shape.0.clone();
    assert_eq!(shape("c1"), vec![2, 8, 8, 8]);
    assert_eq!(shape("p"), vec![2, 8, 4, 4], "(8 + 0 + 1 - 3) / 2 + 1");
    assert_eq!((shape("s_a"), shape("s_b")), (vec![2, 3, 4, 4], vec![2, 5, 4, 4]));
    assert_eq!(shape("a1"), vec![2, 3, 2, 2], "(4 + 1 + 0 - 2) / 2 + 1");
    assert_eq!(shape("a2"), vec![2, 5, 2, 2]);
    assert_eq!(shape("f"), vec![2, 3 * 4 + 5 * 4]);
    // Attributes at their defaults are not written; the others are.
    let out = json::to_string(&g);
    let line = |name: &str| out.lines().find(|l| l.contains(&format!("{{\"name\":\"{name}\""))).unwrap().to_string();
    assert!(line("c1").contains("\"dilation\":[2,1],\"groups\":2"), "{}", line("c1"));
    assert!(line("p").contains("\"padding_end\":[1,1]") && !line("p").contains("count_include_pad"));
    assert!(line("a1").contains("\"padding_end\":[0,0]") && line("a1").contains("\"count_include_pad\":false"));
    assert!(!line("a2").contains("padding_end") && !line("a2").contains("count_include_pad"), "{}", line("a2"));
    assert!(line("s").contains("\"sizes\":[3,5]"), "{}", line("s"));
    assert!(line("l").contains("\"size\":3") && line("l").contains("\"bias\":2.0"), "{}", line("l"));
    let t = text::to_string(&g);
    assert!(
        t.contains("dilation=[2,1] groups=2") && t.contains("count_include_pad=false") && t.contains("sizes=[3,5]"),
        "{t}"
    );
}

fn batch(g: &Graph) -> State {
    let mut rng = SplitMix64::new(3);
    let mut b = State::new();
    for n in g.node_ids() {
        if let Op::Input { ty } = g.node(n).op() {
            let count = ty.shape.numel().unwrap() as usize;
            let t = if ty.dtype == DType::I32 {
                Tensor::new(ty.shape.clone(), Data::I32((0..count).map(|i| (i * 7 % 10) as i32).collect())).unwrap()
            } else {
                let v: Vec<f32> = (0..count).map(|_| rng.normal() as f32).collect();
                Tensor::from_f32(ty.dtype, ty.shape.clone(), &v).unwrap()
            };
            b.insert(g.node(n).name().to_string(), t);
        }
    }
    b
}

#[test]
fn lowers_in_fp16_and_bf16_and_runs_a_step() {
    for low in [DType::F16, DType::Bf16] {
        let mut g = parse(CNN);
        let opts = Options { verify_each: true, low, ..Options::default() };
        passes::lower(&mut g, &opts).unwrap_or_else(|e| panic!("{low}: {e}"));
        mpc::verify(&g).unwrap();
        // A lowered graph's own order (of `updates`, of nodes) is not the
        // file's, so Graph equality holds from the first re-parse on.
        let emitted = json::to_string(&g);
        let reparsed = parse(&emitted);
        assert_eq!(json::to_string(&reparsed), emitted, "{low}: emit is not a fixed point");
        round_trips(&reparsed);
        // grad wrote a gradient op for every new forward op.
        let kinds: Vec<OpKind> = g.node_ids().map(|n| g.node(n).op().kind()).collect();
        for k in [
            OpKind::Concat,
            OpKind::Split,
            OpKind::Lrn,
            OpKind::LrnGrad,
            OpKind::FrozenBatchNorm,
            OpKind::FrozenBatchNormGrad,
            OpKind::Erf,
            OpKind::ErfGrad,
            OpKind::MaxPool2dGrad,
            OpKind::AvgPool2dGrad,
            OpKind::Conv2dGradWeight,
        ] {
            assert!(kinds.contains(&k), "{low}: no {k} in the lowered graph");
        }
        let grouped = g.node_ids().any(|n| {
            matches!(g.node(n).op(), Op::Conv2dGradWeight { conv, .. } if conv.groups == 2 && conv.dilation == [2, 1])
        });
        assert!(grouped, "{low}: the weight gradient lost its groups or dilation");
        let uncounted = g.node_ids().any(|n| {
            matches!(g.node(n).op(), Op::AvgPool2dGrad { count_include_pad: false, window, .. } if window.padding_end == [0, 0])
        });
        assert!(uncounted, "{low}: avg_pool2d_grad lost count_include_pad or padding_end");
        // The statistics and affine parameters of the frozen norm stay f32;
        // lrn is an infer op between low ops, so it goes low.
        for name in ["bn", "dc1"] {
            let ins = g.inputs(g.node_named(name).unwrap());
            let kept: &[usize] = if name == "bn" { &[1, 2, 3, 4] } else { &[2, 3, 4] };
            for &port in kept {
                assert_eq!(g.ty(ins[port]).dtype, DType::F32, "{low}: {name} input {port}");
            }
        }
        assert_eq!(g.ty(g.value("l").unwrap()).dtype, low);
        assert_eq!(g.ty(g.value("c1").unwrap()).dtype, low, "conv2d computes in the low type");

        let mut ex = Executor::new(&g, CpuBackend, 1).unwrap();
        let mut state = init_state(&g, 7).unwrap();
        let b = batch(&g);
        let mut losses = Vec::new();
        for step in 0..3 {
            let r = ex.step(&state, &b, step, &RunOptions::default()).unwrap();
            let loss = r.loss_f32().unwrap();
            assert!(loss.is_finite(), "{low} step {step}: loss {loss}");
            losses.push(loss);
            state = r.state;
        }
        assert!(losses[2] < losses[0], "{low}: {losses:?} does not fall on a fixed batch");
        // mean and var are not trained.
        assert!(state["var"].to_f32_vec().iter().all(|&v| v == 1.0));
    }
}

/// `CNN` with one node's JSON replaced; the error must name the node and say why.
fn rejected(name: &str, node: &str, params: Option<(&str, &str)>) -> String {
    let start = CNN.find(&format!("{{\"name\": \"{name}\"")).unwrap();
    let end = start + CNN[start..].find('}').unwrap() + 1;
    let mut text = format!("{}{node}{}", &CNN[..start], &CNN[end..]);
    if let Some((from, to)) = params {
        text = text.replace(from, to);
    }
    let e = match mpc::parse_str(&text) {
        Ok(g) => mpc::verify(&g).expect_err("accepted").to_string(),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(&format!("`{name}`")), "the error does not name `{name}`: {e}");
    e
}

#[test]
fn bad_shapes_and_attributes_are_clear_errors() {
    let e = rejected("cat", r#"{"name": "cat", "op": "concat", "inputs": ["a1", "s_b"], "axis": 1}"#, None);
    assert!(e.contains("differ on axis 2 (4 vs 2)"), "{e}");
    let e = rejected("cat", r#"{"name": "cat", "op": "concat", "inputs": ["a1", "a2"]}"#, None);
    assert!(e.contains("concat needs the attribute `axis`"), "{e}");
    let e = rejected(
        "s",
        r#"{"name": "s", "op": "split", "inputs": ["p"], "axis": 1, "sizes": [3, 4], "outputs": ["s_a", "s_b"]}"#,
        None,
    );
    assert!(e.contains("split sizes [3, 4] sum to 7, but axis 1 of the input f32[2,8,4,4] has size 8"), "{e}");
    let e = rejected(
        "s",
        r#"{"name": "s", "op": "split", "inputs": ["p"], "axis": 1, "sizes": [3, 5], "outputs": ["s_a"]}"#,
        None,
    );
    assert!(e.contains("split has 2 output(s), found 1 names"), "{e}");
    let e = rejected("s", r#"{"name": "s", "op": "split", "inputs": ["p"], "sizes": [3, 0]}"#, None);
    assert!(e.contains("dimensions must be at least 1"), "{e}");
    let e = rejected(
        "c1",
        r#"{"name": "c1", "op": "conv2d", "inputs": ["x", "w1"], "padding": [1, 1], "groups": 3}"#,
        None,
    );
    assert!(e.contains("groups=3 does not divide the input's 4 channels"), "{e}");
    let e = rejected(
        "c1",
        r#"{"name": "c1", "op": "conv2d", "inputs": ["x", "w1"], "padding": [1, 1], "groups": 2}"#,
        Some((r#""shape": [8, 2, 3, 3]"#, r#""shape": [8, 4, 3, 3]"#)),
    );
    assert!(e.contains("4 channels in 2 groups (2 per group)"), "{e}");
    let e = rejected(
        "c1",
        r#"{"name": "c1", "op": "conv2d", "inputs": ["x", "w1"], "dilation": [0, 1], "groups": 2}"#,
        None,
    );
    assert!(e.contains("/dilation") && e.contains("dilations must be at least 1, found [0, 1]"), "{e}");
    let e = rejected(
        "c1",
        r#"{"name": "c1", "op": "conv2d", "inputs": ["x", "w1"], "dilation": [4, 1], "groups": 2}"#,
        None,
    );
    assert!(e.contains("the 3x3 kernel dilated by [4, 1]): window kernel=[9, 3]"), "{e}");
    let e = rejected(
        "bn",
        r#"{"name": "bn", "op": "frozen_batch_norm", "inputs": ["c1", "gamma", "beta", "mean", "var"]}"#,
        Some((r#"{"name": "gamma", "shape": [8]"#, r#"{"name": "gamma", "shape": [4]"#)),
    );
    assert!(e.contains("gamma and the channel axis must have the same type, found f32[4] and f32[8]"), "{e}");
    let e = rejected("l", r#"{"name": "l", "op": "lrn", "inputs": ["e"], "size": 0}"#, None);
    assert!(e.contains("expected at least 1 channel"), "{e}");
    let e = rejected(
        "p",
        r#"{"name": "p", "op": "max_pool2d", "inputs": ["l"], "kernel": [3, 3], "stride": [2, 2], "padding_end": [3, 1]}"#,
        None,
    );
    assert!(e.contains("padding_end 3 for kernel 3 (height)"), "{e}");
    let e = rejected(
        "p",
        r#"{"name": "p", "op": "max_pool2d", "inputs": ["l"], "kernel": [3, 3], "count_include_pad": true}"#,
        None,
    );
    assert!(e.contains("attribute `count_include_pad` does not apply here"), "{e}");
}
