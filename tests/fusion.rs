//! Fusion: the groups the decision makes for every ir-example after the
//! full lowering (snapshots), and what claiming them changes in the plan.

use mpc::exec::{fuse, memory, Plan};
use mpc::passes::{self, Options};
use mpc::DType;

fn lowered(path: &std::path::Path, low: DType) -> mpc::Graph {
    let src = std::fs::read_to_string(path).unwrap();
    let mut g = mpc::parse_str(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    passes::lower(&mut g, &Options { low, ..Options::default() }).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    g
}

#[test]
fn fusion_plan_of_every_example() {
    insta::glob!("../ir-examples", "*.json", |path| {
        let mut text = String::new();
        for low in [DType::F16, DType::Bf16] {
            let plan = Plan::new(&lowered(path, low), 0).unwrap();
            text.push_str(&format!("## {low}\n{}", fuse::describe(&plan, &plan.fusion_groups())));
        }
        insta::assert_snapshot!("fusion", text);
    });
}

/// Every group obeys the rule it was made by: consecutive fusable steps of
/// one output shape, each hidden value read once and inside, none returned;
/// a layer_norm_grad's dx hidden only when the add at the next step is its
/// one reader.
#[test]
fn groups_hide_only_values_read_once_inside() {
    insta::glob!("../ir-examples", "*.json", |path| {
        let g = lowered(path, DType::F16);
        let plan = Plan::new(&g, 0).unwrap();
        let groups = plan.fusion_groups();
        for gr in groups.iter().filter(|gr| gr.kind == fuse::Kind::LayerNormGradAdd) {
            assert_eq!((plan.step(gr.first).1, plan.step(gr.last).1), (&mpc::Op::LayerNormGrad, &mpc::Op::Add));
            assert_eq!(gr.last, gr.first + 1);
            let dx = plan.step_outputs(gr.first)[0];
            assert_eq!(gr.hidden, [dx]);
            let readers: Vec<usize> = (0..plan.num_steps()).filter(|&i| plan.step_inputs(i).contains(&dx)).collect();
            assert_eq!(readers, [gr.last], "{}", path.display());
        }
        for gr in groups.iter().filter(|gr| gr.kind == fuse::Kind::Chain) {
            assert!(gr.first < gr.last || gr.tail.is_some(), "{}: {gr:?}", path.display());
            let shape = &plan.value_type(gr.output).shape;
            for i in gr.first..=gr.last {
                assert!(plan.step(i).1.info().fusable, "{}: step {i}", path.display());
            }
            if let Some(t) = gr.tail {
                assert_eq!(t, gr.last + 1);
                assert!(matches!(plan.step(t).1, mpc::Op::LayerNorm { .. } | mpc::Op::Softmax { .. }));
                assert_eq!(plan.step_inputs(t)[0], gr.output);
            }
            for &v in &gr.hidden {
                assert_eq!(&plan.value_type(v).shape, shape);
                let readers: Vec<usize> = (0..plan.num_steps()).filter(|&i| plan.step_inputs(i).contains(&v)).collect();
                assert_eq!(readers.len(), 1, "{}: `{}` read by {readers:?}", path.display(), plan.value_name(v));
                assert!(gr.steps().any(|i| i == readers[0]));
                assert!(g.loss.is_none_or(|l| g.value_name(l) != plan.value_name(v)));
                assert!(g.outputs.iter().all(|&o| g.value_name(o) != plan.value_name(v)));
                assert!(g.updates.iter().all(|&(_, u)| g.value_name(u) != plan.value_name(v)));
            }
        }
    });
}

/// Claiming the groups drops their hidden values from the arena's
/// requests, and the planned peak does not grow.
#[test]
fn claimed_groups_are_not_planned() {
    let g = lowered(std::path::Path::new("ir-examples/gpt_block.json"), DType::F16);
    let mut plan = Plan::new(&g, 0).unwrap();
    let before = memory::report(&plan).unwrap();
    let groups = plan.fusion_groups();
    let hidden: usize = groups.iter().map(|gr| gr.hidden.len()).sum();
    assert!(hidden > 0);
    plan.claim(groups).unwrap();
    let after = memory::report(&plan).unwrap();
    assert_eq!(after.values + hidden, before.values);
    assert!(after.unplanned < before.unplanned);
    assert!(after.peak() <= before.peak(), "{} > {}", after.peak(), before.peak());
}

/// The generated source of the MLP's groups (fp16 and bf16), to read as
/// generated code: each step a call of its scalar definition, rounded to
/// its own type; broadcast inputs read at their strided offsets.
#[test]
fn generated_kernels_of_the_mlp() {
    use mpc::exec::cuda::fused;
    let mut text = String::new();
    for low in [DType::F16, DType::Bf16] {
        let plan = Plan::new(&lowered(std::path::Path::new("ir-examples/mlp.json"), low), 0).unwrap();
        let kernels: Vec<_> = plan.fusion_groups().iter().map(|g| fused::generate(&plan, g).unwrap()).collect();
        text.push_str(&fused::module(&kernels));
    }
    insta::assert_snapshot!(text);
}

/// The generated source of gpt_block's first group: the embedding sum and
/// the layer_norm after it, one kernel (a warp per row).
#[test]
fn generated_kernel_with_a_layer_norm_tail() {
    use mpc::exec::cuda::fused;
    let plan = Plan::new(&lowered(std::path::Path::new("ir-examples/gpt_block.json"), DType::F16), 0).unwrap();
    let groups = plan.fusion_groups();
    let g = groups.iter().find(|g| g.tail.is_some()).unwrap();
    let k = fused::generate(&plan, g).unwrap();
    assert_eq!(k.work, fused::Work::Rows { rows: 8 * 32, width: 64 });
    insta::assert_snapshot!(k.source);
}

/// The generated source of gpt_block's first softmax group: the scores'
/// cast and scale recomputed at each read of the causal softmax.
#[test]
fn generated_kernel_with_a_softmax_tail() {
    use mpc::exec::cuda::fused;
    let plan = Plan::new(&lowered(std::path::Path::new("ir-examples/gpt_block.json"), DType::F16), 0).unwrap();
    let groups = plan.fusion_groups();
    let g = groups.iter().find(|g| g.tail.is_some_and(|t| matches!(plan.step(t).1, mpc::Op::Softmax { .. }))).unwrap();
    let k = fused::generate(&plan, g).unwrap();
    assert_eq!(k.work, fused::Work::Softmax { outer: 8 * 4 * 32, len: 32, inner: 1, causal: 32 });
    assert!(!g.outputs.contains(&g.output), "the scaled scores are not stored");
    insta::assert_snapshot!(k.source);
}

/// A cross-entropy pair writes the loss at its gradient's step: it is made
/// only when the steps before the gradient that read the loss are seeds
/// (which need its type only). A gradient whose dloss reads the loss's
/// value gets no pair.
#[test]
fn a_cross_entropy_pair_needs_the_loss_read_only_by_seeds() {
    let mut g = lowered(std::path::Path::new("ir-examples/mlp.json"), DType::F16);
    let plan = Plan::new(&g, 0).unwrap();
    let pair = plan.fusion_groups().into_iter().find(|gr| gr.kind == fuse::Kind::CrossEntropy).unwrap();
    assert_eq!(plan.step(pair.first).1, &mpc::Op::CrossEntropy);
    assert_eq!(plan.step(pair.last).1, &mpc::Op::CrossEntropyGrad);
    assert!((pair.first + 1..pair.last)
        .all(|i| !plan.step_inputs(i).contains(&pair.outputs[0]) || plan.step(i).1 == &mpc::Op::Seed));
    assert_eq!(pair.at(), pair.last);
    assert_eq!(pair.steps().collect::<Vec<_>>(), [pair.first, pair.last]);
    assert_eq!(pair.launches_saved(), 1);
    // dloss times the loss: the gradient now needs the loss's value first.
    let loss = g.loss.unwrap();
    let grad = g.node_named("dlogits_b").unwrap();
    let dloss = g.inputs(grad)[0];
    let reads = g.add_node("dloss.by_loss", mpc::Op::Mul, mpc::Role::Backward, &[dloss, loss]).unwrap();
    g.set_input(grad, 0, mpc::ValueId { node: reads, slot: 0 });
    let plan = Plan::new(&g, 0).unwrap();
    assert!(plan.fusion_groups().iter().all(|gr| gr.kind != fuse::Kind::CrossEntropy));
}
