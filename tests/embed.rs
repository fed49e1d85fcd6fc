//! The embeddable planning API on a graph type that is not mpc's.

#[path = "../examples/foreign_graph.rs"]
mod foreign;

use foreign::Toy;
use mpc::passes::embed;
use mpc::DType;
use petgraph::visit::EdgeRef;

#[test]
fn autocast_paints_and_casts_a_foreign_graph() {
    let (mut toy, ids) = Toy::mlp();
    let report = embed::autocast(&mut toy, DType::F16);
    foreign::retype(&mut toy, &report.low, DType::F16);
    // Both forward matmuls and the bias-add and relu between them are low;
    // the backward matmul too; the softmax is not.
    let low: std::collections::HashSet<_> = report.low.iter().copied().collect();
    for i in [2, 3, 4, 6, 9] {
        assert!(low.contains(&ids[i]), "{} should be low", toy.g[ids[i]].op);
    }
    assert!(!low.contains(&ids[7]));
    assert_eq!(report.unknown, vec![ids[11]]);
    // Casts: x, w1, w2 to f16 (w's feed low matmuls), matmul2 -> softmax back
    // to f32, the seed to f16 for dW2, dW2 back to f32 for the optimizer.
    assert_eq!(report.casts, 6);
    let casts = toy.g.node_indices().filter(|&n| toy.g[n].op == "Cast").count();
    assert_eq!(casts, 6);
    // Every float edge into a low node carries f16, into any other node f32:
    // no type mismatch is left for the foreign compiler.
    for e in toy.g.edge_references() {
        let want = if low.contains(&e.target()) {
            DType::F16
        } else if toy.g[e.target()].op == "Cast" {
            *e.weight()
        } else {
            DType::F32
        };
        assert_eq!(*e.weight(), want, "{} -> {}", toy.g[e.source()].op, toy.g[e.target()].op);
    }
    // Relu shares the f16 value of the bias-add with the backward matmul:
    // no value was cast twice to one type.
    let mut seen = std::collections::HashSet::new();
    for n in toy.g.node_indices().filter(|&n| toy.g[n].op == "Cast") {
        let src = toy.g.edges_directed(n, petgraph::Direction::Incoming).next().unwrap().source();
        let to = *toy.g.edges_directed(n, petgraph::Direction::Outgoing).next().unwrap().weight();
        assert!(seen.insert((src, to)), "a value was cast twice to {to}");
    }
}

#[test]
fn loss_scale_plan_names_seed_and_gradient_edges() {
    let (toy, ids) = Toy::mlp();
    let plan = embed::plan_loss_scale(&toy);
    let ends = |e| toy.g.edge_endpoints(e).unwrap();
    assert_eq!(plan.seed_edges.iter().map(|&e| ends(e)).collect::<Vec<_>>(), vec![(ids[8], ids[9])]);
    assert_eq!(plan.gradient_edges.iter().map(|&e| ends(e)).collect::<Vec<_>>(), vec![(ids[9], ids[10])]);
}

#[test]
fn bf16_paints_the_same_graph_with_follow_low() {
    let (mut toy, _) = Toy::mlp();
    let r16 = embed::autocast(&mut Toy::mlp().0, DType::F16);
    let rb = embed::autocast(&mut toy, DType::Bf16);
    assert!(rb.low.len() >= r16.low.len());
}
