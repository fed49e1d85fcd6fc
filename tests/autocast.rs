//! Properties of the lowered examples, for FP16 and BF16.

use std::collections::HashSet;

use mpc::passes::{self, Class, Options, Table};
use mpc::{DType, Graph, Op, ValueId};

fn examples() -> Vec<(String, Graph)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("ir-examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let g = mpc::parse_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.push((path.display().to_string(), g));
        }
    }
    assert!(out.len() >= 4);
    out
}

fn lowered(low: DType) -> Vec<(String, Graph, passes::Lowered)> {
    examples()
        .into_iter()
        .map(|(name, mut g)| {
            let l = passes::lower(&mut g, &Options { low, verify_each: true, explain: true, ..Options::default() })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, g, l)
        })
        .collect()
}

#[test]
fn every_op_computes_in_its_class_type() {
    for low in [DType::F16, DType::Bf16] {
        let table = Table::default_for(low);
        for (name, g, _) in lowered(low) {
            for n in g.node_ids() {
                let node = g.node(n);
                let Some(out) = g.output_types(n).next() else { continue };
                if node.precision().is_some() || !out.dtype.is_float() {
                    continue;
                }
                match table.class(node.op().kind()) {
                    Some(Class::Low) => assert_eq!(out.dtype, low, "{name}: {} must compute in {low}", node.name()),
                    Some(Class::Fp32) => assert_eq!(out.dtype, DType::F32, "{name}: {} must stay f32", node.name()),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn no_value_is_cast_twice_to_one_type() {
    for low in [DType::F16, DType::Bf16] {
        for (name, g, _) in lowered(low) {
            let mut seen: HashSet<(ValueId, DType)> = HashSet::new();
            for n in g.node_ids() {
                if let &Op::Cast { to } = g.node(n).op() {
                    let input = g.inputs(n)[0];
                    assert!(seen.insert((input, to)), "{name}: `{}` is cast to {to} twice", g.value_name(input));
                    assert_ne!(g.ty(input).dtype, to, "{name}: a cast to the same type survived");
                }
            }
        }
    }
}

#[test]
fn lowering_twice_changes_nothing() {
    for low in [DType::F16, DType::Bf16] {
        for (name, g, _) in lowered(low) {
            let mut again = g.clone();
            passes::lower(&mut again, &Options { low, ..Options::default() }).unwrap();
            assert!(again == g, "{name}: a second lowering changed the graph");
        }
    }
}

/// A lowered graph lowered with other precisions would get a second autocast
/// over its casts (an f16 copy cast to f32 or bf16: two roundings where a
/// lowering of the source makes one); it is an error naming the way out.
#[test]
fn relowering_with_other_precisions_is_an_error() {
    let mut moved = Table::default_for(DType::F16);
    moved.apply_file(r#"{"fp32": ["relu", "add"]}"#).unwrap();
    for (name, g, _) in lowered(DType::F16) {
        let other = [
            Options { low: DType::F16, table: Some(moved.clone()), ..Options::default() },
            Options { low: DType::Bf16, ..Options::default() },
        ];
        for opts in other {
            let mut again = g.clone();
            let err = passes::lower(&mut again, &opts).expect_err(&format!("{name}: {:?} relowered", opts.low));
            let msg = err.to_string();
            assert!(msg.contains("lowered already") && msg.contains("lower the unlowered graph"), "{name}: {msg}");
        }
        let mut again = g.clone();
        let err = passes::lower_fp32(&mut again, &Options::default()).expect_err(&format!("{name}: fp32"));
        assert!(err.to_string().contains("lower the unlowered graph for fp32"), "{name}: {err}");
    }
    for (name, mut g) in examples() {
        passes::lower_fp32(&mut g, &Options::default()).unwrap();
        let mut fp32 = g.clone();
        passes::lower_fp32(&mut fp32, &Options::default()).unwrap();
        assert!(fp32 == g, "{name}: a second fp32 lowering changed the graph");
        let err = passes::lower(&mut g, &Options::default()).expect_err(&format!("{name}: fp32 then fp16"));
        assert!(err.to_string().contains("lowered already"), "{name}: {err}");
    }
}

#[test]
fn low_ops_dominate_and_casts_are_few() {
    let (_, g, l) = lowered(DType::F16).into_iter().find(|(n, _, _)| n.ends_with("gpt_block.json")).unwrap();
    let r = &l.autocast;
    assert!(r.low_nodes * 2 > r.float_nodes, "{}", r.summary());
    // Every cast reads a value produced outside its consumer's type: at most
    // one per (value, type), bounded by the number of float edges.
    let casts = g.node_ids().filter(|&n| matches!(g.node(n).op(), Op::Cast { .. })).count();
    assert_eq!(casts, r.casts_inserted);
}

fn graph(forward: &str) -> Graph {
    let text = format!(
        r#"{{"format": "mpc/1",
        "inputs": [{{"name": "x", "shape": [4, 8]}}],
        "params": [{{"name": "w", "shape": [8, 8], "init": {{"kind": "zeros"}}}}],
        "forward": [{forward}],
        "loss": "loss"}}"#
    );
    mpc::parse_str(&text).unwrap()
}

#[test]
fn an_attention_mask_that_overflows_fp16_stays_fp32() {
    let mut g = graph(
        r#"{"name": "s", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "mask", "op": "constant", "value": -1e9, "shape": [4, 8]},
           {"name": "m", "op": "add", "inputs": ["s", "mask"]},
           {"name": "p", "op": "softmax", "inputs": ["m"]},
           {"name": "loss", "op": "reduce_sum", "inputs": ["p"], "axes": [0, 1]}"#,
    );
    let l = passes::lower(&mut g, &Options::default()).unwrap();
    let ty = |name: &str| g.ty(g.value(name).unwrap()).dtype;
    assert_eq!(ty("s"), DType::F16);
    assert_eq!(ty("mask"), DType::F32);
    assert_eq!(ty("m"), DType::F32);
    assert!(
        l.autocast.warnings.iter().any(|w| w.contains("`mask` = -1000000000 does not fit f16")),
        "{:?}",
        l.autocast.warnings
    );
    // BF16 has the range: no warning there.
    let mut g2 = graph(
        r#"{"name": "s", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "mask", "op": "constant", "value": -1e9, "shape": [4, 8]},
           {"name": "m", "op": "add", "inputs": ["s", "mask"]},
           {"name": "loss", "op": "reduce_sum", "inputs": ["m"], "axes": [0, 1]}"#,
    );
    let l2 = passes::lower(&mut g2, &Options { low: DType::Bf16, ..Options::default() }).unwrap();
    assert!(l2.autocast.warnings.is_empty(), "{:?}", l2.autocast.warnings);
}

#[test]
fn precision_pins_override_the_table() {
    let mut g = graph(
        r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"], "precision": "fp32"},
           {"name": "e", "op": "exp", "inputs": ["h"], "precision": "low"},
           {"name": "loss", "op": "reduce_sum", "inputs": ["e"], "axes": [0, 1]}"#,
    );
    let l = passes::lower(&mut g, &Options { explain: true, ..Options::default() }).unwrap();
    assert_eq!(g.ty(g.value("h").unwrap()).dtype, DType::F32);
    assert_eq!(g.ty(g.value("e").unwrap()).dtype, DType::F16);
    let rule = |n: &str| l.autocast.decisions.iter().find(|d| d.node == n).unwrap().rule.clone();
    assert!(rule("h").contains("pinned fp32"), "{}", rule("h"));
    assert!(rule("e").contains("pinned low"), "{}", rule("e"));
}

#[test]
fn a_table_file_moves_ops() {
    let mut table = Table::default_for(DType::F16);
    table.apply_file(r#"{"fp32": ["matmul"]}"#).unwrap();
    let mut g = graph(
        r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "loss", "op": "reduce_sum", "inputs": ["h"], "axes": [0, 1]}"#,
    );
    let l = passes::lower(&mut g, &Options { table: Some(table), ..Options::default() }).unwrap();
    assert_eq!(l.autocast.low_nodes, 0);
    assert_eq!(l.autocast.casts_inserted, 0);
}

#[test]
fn a_user_cast_round_trip_folds_only_when_exact() {
    let text = |first: &str, via: &str| {
        format!(
            r#"{{"format": "mpc/1",
            "inputs": [{{"name": "x", "shape": [4, 8], "dtype": "{first}"}}],
            "params": [],
            "forward": [
              {{"name": "a", "op": "cast", "inputs": ["x"], "to": "{via}"}},
              {{"name": "b", "op": "cast", "inputs": ["a"], "to": "{first}"}},
              {{"name": "loss", "op": "reduce_sum", "inputs": ["b"], "axes": [0, 1], "precision": "{p}"}}],
            "loss": "loss"}}"#,
            p = if first == "f32" { "fp32" } else { "low" }
        )
    };
    let mut g = mpc::parse_str(&text("f16", "f32")).unwrap();
    passes::lower(&mut g, &Options::default()).unwrap();
    assert!(g.value("a").is_none() && g.value("b").is_none(), "f16 -> f32 -> f16 folds");
    let mut g = mpc::parse_str(&text("f32", "f16")).unwrap();
    passes::lower(&mut g, &Options::default()).unwrap();
    assert!(g.value("a").is_some() && g.value("b").is_some(), "f32 -> f16 -> f32 rounds and stays");
}

#[test]
fn every_path_from_the_seed_to_the_optimizer_passes_through_unscale() {
    for (name, g, _) in lowered(DType::F16) {
        let seed = g.node_ids().find(|&n| *g.node(n).op() == Op::Seed).unwrap();
        let mut stack = vec![seed];
        let mut seen = HashSet::new();
        let mut unscales = 0;
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            match g.node(n).op() {
                Op::Unscale => unscales += 1,
                _ => {
                    assert_ne!(
                        g.node(n).role(),
                        mpc::Role::Optimizer,
                        "{name}: `{}` is reached without unscale",
                        g.node(n).name()
                    );
                    stack.extend(g.users(n).map(|(u, _)| u));
                }
            }
        }
        assert_eq!(unscales, g.params().count(), "{name}: one unscale per parameter");
    }
}

#[test]
fn fp16_scales_and_bf16_does_not_by_default() {
    for (low, scaled) in [(DType::F16, true), (DType::Bf16, false)] {
        for (name, g, _) in lowered(low) {
            let has = g.node_ids().any(|n| *g.node(n).op() == Op::FoundInf);
            assert_eq!(has, scaled, "{name} under {low}");
            // Every parameter is updated, from an FP32 optimizer op.
            for p in g.params() {
                let (_, v) = g.updates.iter().find(|(s, _)| *s == p).unwrap_or_else(|| panic!("{name}: no update"));
                assert_eq!(g.ty(*v).dtype, DType::F32);
            }
        }
    }
}

#[test]
fn dynamic_scaling_declares_gradscaler_state_and_reports_it() {
    let (_, g, _) = lowered(DType::F16).into_iter().find(|(n, _, _)| n.ends_with("mlp.json")).unwrap();
    let scale = g.node(g.node_named("loss_scale").unwrap());
    assert!(matches!(scale.op(), Op::State { init: mpc::ir::op::Init::Constant { value: 65536.0 }, .. }));
    let up = g.node_ids().find(|&n| matches!(g.node(n).op(), Op::ScaleUpdate { .. })).unwrap();
    assert_eq!(*g.node(up).op(), Op::ScaleUpdate { growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 });
    let outs: Vec<&str> = g.outputs.iter().map(|&v| g.value_name(v)).collect();
    assert_eq!(outs, ["found_inf", "loss_scale"]);
    // Skipped steps keep every state: each update of a param or optimizer
    // state goes through select(found_inf, old, new).
    for &(s, v) in &g.updates {
        if matches!(g.node(s).op(), Op::Param { .. }) || g.node(s).name().contains("adam") {
            assert_eq!(*g.node(v.node).op(), Op::Select, "{}", g.node(s).name());
            assert_eq!(g.inputs(v.node)[1].node, s);
        }
    }
}

#[test]
fn static_and_no_scaling() {
    let (_, g0) = examples().into_iter().find(|(n, _)| n.ends_with("cnn.json")).unwrap();
    let mut g = g0.clone();
    passes::lower(&mut g, &Options { loss_scale: Some(passes::LossScale::Static(1024.0)), ..Options::default() })
        .unwrap();
    assert!(g.node_ids().any(|n| *g.node(n).op() == Op::FoundInf));
    assert!(!g.node_ids().any(|n| matches!(g.node(n).op(), Op::ScaleUpdate { .. })), "a static scale never changes");
    let mut g = g0;
    passes::lower(&mut g, &Options { loss_scale: Some(passes::LossScale::None), ..Options::default() }).unwrap();
    assert!(!g.node_ids().any(|n| matches!(g.node(n).op(), Op::FoundInf | Op::Unscale | Op::Select)));
    // Low gradients still reach the optimizer in FP32.
    for &(p, _) in &g.updates {
        assert_eq!(g.ty(mpc::ValueId { node: p, slot: 0 }).dtype, DType::F32);
    }
}

#[test]
fn clipping_sees_unscaled_gradients() {
    let (_, g, _) = lowered(DType::F16).into_iter().find(|(n, _, _)| n.ends_with("gpt_block.json")).unwrap();
    let norm = g.node_ids().find(|&n| *g.node(n).op() == Op::GlobalNorm).unwrap();
    for v in g.inputs(norm) {
        assert_eq!(*g.node(v.node).op(), Op::Unscale, "`{}` is not unscaled", g.value_name(v));
    }
}

/// A graph with a weight `w` [8, 8], a bias `b` [8] and `outputs`.
fn biased(forward: &str, outputs: &str) -> Graph {
    let text = format!(
        r#"{{"format": "mpc/1",
        "inputs": [{{"name": "x", "shape": [4, 8]}}, {{"name": "y", "shape": [4, 8]}}],
        "params": [{{"name": "w", "shape": [8, 8], "init": {{"kind": "zeros"}}}},
                   {{"name": "b", "shape": [8], "init": {{"kind": "zeros"}}}}],
        "forward": [{forward}],
        "loss": "loss", "outputs": [{outputs}]}}"#
    );
    mpc::parse_str(&text).unwrap()
}

#[test]
fn with_fold_bias_a_bias_add_computes_with_its_matmul() {
    let text = r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "hb", "op": "add", "inputs": ["h", "b"]},
           {"name": "p", "op": "softmax", "inputs": ["hb"]},
           {"name": "loss", "op": "reduce_sum", "inputs": ["p"], "axes": [0, 1]}"#;
    let mut casts = Vec::new();
    for (fold, want) in [(false, DType::F32), (true, DType::F16)] {
        let mut g = biased(text, "");
        let l = passes::lower(&mut g, &Options { fold_bias: fold, explain: true, ..Options::default() }).unwrap();
        assert_eq!(g.ty(g.value("hb").unwrap()).dtype, want, "fold_bias {fold}");
        let rule = &l.autocast.decisions.iter().find(|d| d.node == "hb").unwrap().rule;
        assert_eq!(rule.contains("bias of low `h`"), fold, "{rule}");
        let cast_of = |v: &str| g.value(v).is_some_and(|c| matches!(g.node(c.node).op(), Op::Cast { .. }));
        assert_eq!((cast_of("h.f32"), cast_of("b.f16"), cast_of("hb.f32")), (!fold, fold, fold));
        casts.push(l.autocast.casts_inserted);
    }
    assert_eq!(casts[1], casts[0] + 1, "the bias's cast; the softmax's input cast moves after the add");
    // Not a bias: an add of two activations, of a [4, 8] input, of an
    // out-of-range constant, or of a product that something else reads.
    for not_bias in [
        r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "h2", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "hb", "op": "add", "inputs": ["h", "h2"]}"#,
        r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "hb", "op": "add", "inputs": ["h", "y"]}"#,
        r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "big", "op": "constant", "value": 1e6, "shape": [8]},
           {"name": "hb", "op": "add", "inputs": ["h", "big"]}"#,
        r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "hb", "op": "add", "inputs": ["h", "b"]},
           {"name": "e", "op": "exp", "inputs": ["h"]},
           {"name": "s", "op": "add", "inputs": ["hb", "e"]}"#,
    ] {
        let last = if not_bias.contains("\"s\"") { "s" } else { "hb" };
        let text = format!(
            r#"{not_bias}, {{"name": "p", "op": "softmax", "inputs": ["{last}"]}},
               {{"name": "loss", "op": "reduce_sum", "inputs": ["p"], "axes": [0, 1]}}"#
        );
        let mut g = biased(&text, "");
        passes::lower(&mut g, &Options { fold_bias: true, ..Options::default() }).unwrap();
        assert_eq!(g.ty(g.value("hb").unwrap()).dtype, DType::F32, "{not_bias}");
    }
}

#[test]
fn an_output_computed_low_keeps_its_name() {
    // `out.f16` is taken: the low value gets the next free name.
    let mut g = biased(
        r#"{"name": "out", "op": "matmul", "inputs": ["x", "w"]},
           {"name": "out.f16", "op": "relu", "inputs": ["x"]},
           {"name": "m", "op": "matmul", "inputs": ["out", "w"]},
           {"name": "loss", "op": "reduce_sum", "inputs": ["m"], "axes": [0, 1]}"#,
        r#""out", "out.f16""#,
    );
    passes::lower(&mut g, &Options { verify_each: true, ..Options::default() }).unwrap();
    let names: Vec<(&str, DType)> = g.outputs[..2].iter().map(|&v| (g.value_name(v), g.ty(v).dtype)).collect();
    assert_eq!(names, [("out", DType::F32), ("out.f16", DType::F32)]);
    let low = g.value("out.f16.1").expect("the low value renamed");
    assert_eq!(g.ty(low).dtype, DType::F16);
    assert!(matches!(g.node(low.node).op(), Op::Matmul { .. }));
    // The matmul that reads it reads the low value, not the f32 output.
    let m = g.value("m").unwrap().node;
    assert_eq!(g.inputs(m)[0], low);
    mpc::verify(&g).unwrap();
}
