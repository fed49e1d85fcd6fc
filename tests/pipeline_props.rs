//! Property tests of the whole pipeline over randomly generated valid
//! training graphs, and a hand check of the derived backward.

use std::collections::HashSet;

use mpc::ir::op::{Init, Op, Precision, Role};
use mpc::passes::{self, Class, LossScale, Options, Table};
use mpc::{DType, Graph, TensorType, ValueId};
use proptest::prelude::*;

/// One step of a random network on a [B, D] activation.
#[derive(Clone, Debug)]
enum Layer {
    Linear(u64),
    Bias,
    Act(u8),
    Scale,
    Norm,
    Residual,
    Dropout,
    SoftmaxMul,
    ReshapeBack,
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        3 => (1u64..5).prop_map(|k| Layer::Linear(4 * k)),
        2 => Just(Layer::Bias),
        3 => (0u8..5).prop_map(Layer::Act),
        1 => Just(Layer::Scale),
        1 => Just(Layer::Norm),
        1 => Just(Layer::Residual),
        1 => Just(Layer::Dropout),
        1 => Just(Layer::SoftmaxMul),
        1 => Just(Layer::ReshapeBack),
    ]
}

#[derive(Clone, Debug)]
struct Spec {
    layers: Vec<Layer>,
    pins: Vec<Option<bool>>,
    loss: u8,
    optimizer: u8,
    clip: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(layer(), 1..12),
        prop::collection::vec(prop::option::weighted(0.15, any::<bool>()), 12),
        0u8..3,
        0u8..4,
        any::<bool>(),
    )
        .prop_map(|(layers, pins, loss, optimizer, clip)| Spec { layers, pins, loss, optimizer, clip })
}

fn build(s: &Spec) -> Graph {
    let mut g = Graph::new("random");
    let b = 8u64;
    let mut d = 12u64;
    let v = |n| ValueId { node: n, slot: 0 };
    let f32t = |dims: Vec<u64>| TensorType::new(DType::F32, dims);
    let x = v(g.add_node("x", Op::Input { ty: f32t(vec![b, d]) }, Role::Forward, &[]).unwrap());
    let mut h = x;
    let mut history = vec![x];
    let mut i = 0;
    let param = |g: &mut Graph, dims: Vec<u64>, init: Init, i: &mut usize| {
        *i += 1;
        v(g.add_node(format!("p{i}"), Op::Param { ty: f32t(dims), init }, Role::Forward, &[]).unwrap())
    };
    for (k, l) in s.layers.iter().enumerate() {
        let name = format!("n{k}");
        let node = match *l {
            Layer::Linear(out) => {
                let w = param(&mut g, vec![d, out], Init::XavierUniform { gain: 1.0 }, &mut i);
                d = out;
                g.add_node(name, Op::Matmul { transpose_a: false, transpose_b: false }, Role::Forward, &[h, w])
            }
            Layer::Bias => {
                let bias = param(&mut g, vec![d], Init::Zeros, &mut i);
                g.add_node(name, Op::Add, Role::Forward, &[h, bias])
            }
            Layer::Act(a) => {
                let op = [Op::Relu, Op::Gelu, Op::Tanh, Op::Sigmoid, Op::Exp][a as usize].clone();
                g.add_node(name, op, Role::Forward, &[h])
            }
            Layer::Scale => g.add_node(name, Op::Scale { value: 0.5 }, Role::Forward, &[h]),
            Layer::Norm => {
                let gamma = param(&mut g, vec![d], Init::Ones, &mut i);
                let beta = param(&mut g, vec![d], Init::Zeros, &mut i);
                g.add_node(name, Op::LayerNorm { eps: 1e-5 }, Role::Forward, &[h, gamma, beta])
            }
            Layer::Residual => match history.iter().rev().find(|&&p| g.ty(p).shape == g.ty(h).shape && p != h) {
                Some(&p) => g.add_node(name, Op::Add, Role::Forward, &[h, p]),
                None => g.add_node(name, Op::Identity, Role::Forward, &[h]),
            },
            Layer::Dropout => g.add_node(name, Op::Dropout { p: 0.1, seed: k as u64 }, Role::Forward, &[h]),
            Layer::SoftmaxMul => {
                let sm = v(g
                    .add_node(format!("{name}_sm"), Op::Softmax { axis: -1, causal: false }, Role::Forward, &[h])
                    .unwrap());
                g.add_node(name, Op::Mul, Role::Forward, &[h, sm])
            }
            Layer::ReshapeBack => {
                let r =
                    v(g.add_node(format!("{name}_r"), Op::Reshape { shape: vec![-1] }, Role::Forward, &[h]).unwrap());
                g.add_node(name, Op::Reshape { shape: vec![b as i64, d as i64] }, Role::Forward, &[r])
            }
        }
        .unwrap();
        if let Some(Some(low)) = s.pins.get(k) {
            g.set_precision(node, Some(if *low { Precision::Low } else { Precision::Fp32 }));
        }
        h = v(node);
        history.push(h);
    }
    let loss = match s.loss {
        0 => {
            let labels = v(g
                .add_node("labels", Op::Input { ty: TensorType::new(DType::I32, vec![b]) }, Role::Forward, &[])
                .unwrap());
            g.add_node("loss", Op::CrossEntropy, Role::Forward, &[h, labels])
        }
        1 => {
            let t = v(g.add_node("target", Op::Input { ty: f32t(vec![b, d]) }, Role::Forward, &[]).unwrap());
            g.add_node("loss", Op::Mse, Role::Forward, &[h, t])
        }
        _ => g.add_node("loss", Op::ReduceMean { axes: vec![0, 1], keepdims: false }, Role::Forward, &[h]),
    }
    .unwrap();
    g.loss = Some(v(loss));
    let kind = ["sgd", "sgd", "adam", "adamw"][s.optimizer as usize];
    let momentum = if s.optimizer == 1 { r#", "momentum": 0.9"# } else { "" };
    let clip = if s.clip { r#", "clip_grad_norm": 1.0"# } else { "" };
    g.optimizer = Some(serde_json::from_str(&format!(r#"{{"kind": "{kind}", "lr": 0.01{momentum}{clip}}}"#)).unwrap());
    g
}

fn check(g0: &Graph, low: DType, mode: LossScale) -> Result<(), TestCaseError> {
    mpc::verify(g0).map_err(|e| TestCaseError::fail(format!("generator made an invalid graph: {e}")))?;
    let mut g = g0.clone();
    let opts = Options { low, loss_scale: Some(mode), verify_each: true, ..Options::default() };
    passes::lower(&mut g, &opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut again = g.clone();
    passes::lower(&mut again, &opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(again == g, "a second lowering changed the graph");
    let table = Table::default_for(low);
    let mut casts = HashSet::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if let Op::Cast { to } = node.op() {
            prop_assert!(casts.insert((g.inputs(n)[0], to)), "a value is cast twice to {}", to);
        }
        let Some(out) = g.output_types(n).next() else { continue };
        if node.precision().is_some() || !out.dtype.is_float() || Some(ValueId { node: n, slot: 0 }) == g.loss {
            continue;
        }
        match table.class(node.op().kind()) {
            Some(Class::Low) => prop_assert_eq!(out.dtype, low, "{} must be low", node.name()),
            Some(Class::Fp32) => prop_assert_eq!(out.dtype, DType::F32, "{} must be f32", node.name()),
            _ => {}
        }
    }
    // Every path from the seed to the optimizer goes through unscale.
    if mode != LossScale::None && g.params().next().is_some() {
        let seed = g.node_ids().find(|&n| *g.node(n).op() == Op::Seed).expect("a seed");
        let mut stack = vec![seed];
        let mut seen = HashSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) || *g.node(n).op() == Op::Unscale {
                continue;
            }
            prop_assert_ne!(g.node(n).role(), Role::Optimizer, "`{}` reached without unscale", g.node(n).name());
            stack.extend(g.users(n).map(|(u, _)| u));
        }
    }
    // Every parameter is updated, in FP32.
    for p in g.params() {
        let upd = g.updates.iter().find(|(s, _)| *s == p).map(|(_, v)| *v);
        prop_assert!(
            upd.is_some_and(|v| g.ty(v).dtype == DType::F32),
            "param `{}` has no f32 update",
            g.node(p).name()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_lower_validly(s in spec(), bf16 in any::<bool>(), mode in 0u8..3) {
        let g = build(&s);
        let low = if bf16 { DType::Bf16 } else { DType::F16 };
        let mode = [LossScale::DYNAMIC, LossScale::Static(512.0), LossScale::None][mode as usize];
        check(&g, low, mode)?;
    }
}

/// The canonical expression of a backward value: forward values by name,
/// backward ops with their attributes and operands.
fn canon(g: &Graph, v: ValueId) -> String {
    let n = g.node(v.node);
    if n.role() == Role::Forward {
        return g.value_name(v).to_string();
    }
    let args: Vec<String> = g.inputs(v.node).into_iter().map(|i| canon(g, i)).collect();
    format!("{}#{}{}({})", n.op().name(), v.slot, mpc::format::attrs::op_attrs_text(n.op()), args.join(", "))
}

#[test]
fn derived_backward_equals_the_hand_written_one() {
    let text = std::fs::read_to_string("ir-examples/mlp_backward.json").unwrap();
    let hand = mpc::parse_str(&text).unwrap();
    let mut raw = mpc::format::parse::parse_raw(&text).unwrap();
    raw.backward = None;
    raw.gradients.clear();
    let mut derived = mpc::format::parse::from_raw(&raw).unwrap();
    let mut grad = passes::grad::Grad;
    passes::Pass::run(&mut grad, &mut derived).unwrap();
    mpc::verify(&derived).unwrap();
    assert_eq!(hand.gradients.len(), derived.gradients.len());
    for (&(p, hv), &(q, dv)) in hand.gradients.iter().zip(&derived.gradients) {
        assert_eq!(hand.node(p).name(), derived.node(q).name());
        assert_eq!(canon(&hand, hv), canon(&derived, dv), "gradient of {}", hand.node(p).name());
    }
}
