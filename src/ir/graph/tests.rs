use super::*;
use crate::ir::types::{DType, TensorType};

fn small() -> (Graph, ValueId, ValueId) {
    let mut g = Graph::new("t");
    let x = g.add_node("x", Op::Input { ty: TensorType::new(DType::F32, vec![4, 8]) }, Role::Forward, &[]).unwrap();
    let w = g
        .add_node(
            "w",
            Op::Param { ty: TensorType::new(DType::F32, vec![8, 2]), init: crate::ir::op::Init::Zeros },
            Role::Forward,
            &[],
        )
        .unwrap();
    let x = ValueId { node: x, slot: 0 };
    let w = ValueId { node: w, slot: 0 };
    (g, x, w)
}

#[test]
fn intercept_rewires_every_consumer() {
    let (mut g, x, w) = small();
    let mm = g.add_node("y", Op::Matmul { transpose_a: false, transpose_b: false }, Role::Forward, &[x, w]).unwrap();
    let r = g.add_node("r", Op::Relu, Role::Forward, &[ValueId { node: mm, slot: 0 }]).unwrap();
    let c = g.intercept(x, "x.f16", Op::Cast { to: DType::F16 }, Role::Forward).unwrap();
    assert_eq!(g.inputs(mm).as_slice(), [c, w]);
    assert_eq!(g.uses(x).len(), 1);
    assert_eq!(g.ty(c).dtype, DType::F16);
    let order = g.topo_order().unwrap();
    let pos = |n: NodeId| order.iter().position(|&m| m == n).unwrap();
    assert!(pos(c.node) < pos(mm) && pos(mm) < pos(r));
}

#[test]
fn add_fresh_names_as_fresh_name_does() {
    let (mut g, x, _) = small();
    let a = g.add_fresh("r", Op::Relu, Role::Forward, &[x]).unwrap();
    let b = g.add_fresh("r", Op::Relu, Role::Forward, &[x]).unwrap();
    g.add_node("r.2", Op::Relu, Role::Forward, &[x]).unwrap();
    let c = g.add_fresh("r", Op::Relu, Role::Forward, &[x]).unwrap();
    let names: Vec<&str> = [a, b, c].iter().map(|&n| g.node(n).name()).collect();
    assert_eq!(names, ["r", "r.1", "r.3"]);
    assert_eq!(g.value("r.3"), Some(ValueId { node: c, slot: 0 }));
    assert_eq!(g.ty(ValueId { node: c, slot: 0 }), g.ty(x));
    // A bad node is refused before its name is taken.
    let err = g.add_fresh("m", Op::Matmul { transpose_a: false, transpose_b: false }, Role::Forward, &[x, x]);
    assert!(matches!(err, Err(GraphError::Type { .. })));
    assert!(g.value("m").is_none());
    assert_eq!(g.name_map_problems(), Vec::<String>::new());
}

#[test]
fn duplicate_names_are_rejected() {
    let (mut g, x, _) = small();
    assert_eq!(g.add_node("x", Op::Relu, Role::Forward, &[x]).unwrap_err(), GraphError::DuplicateName("x".into()));
}

#[test]
fn cycle_is_found() {
    let (mut g, x, _) = small();
    let a = g.add_node("a", Op::Relu, Role::Forward, &[x]).unwrap();
    let b = g.add_node("b", Op::Relu, Role::Forward, &[ValueId { node: a, slot: 0 }]).unwrap();
    g.set_input(a, 0, ValueId { node: b, slot: 0 });
    let stuck = g.topo_order().unwrap_err();
    assert_eq!(stuck, vec![a, b]);
}

#[test]
fn rename_moves_the_name_and_keeps_the_table_sound() {
    let (mut g, x, w) = small();
    let r = g.add_node("r", Op::Relu, Role::Forward, &[x]).unwrap();
    g.rename(r, "s".into()).unwrap();
    assert_eq!(g.value("s"), Some(ValueId { node: r, slot: 0 }));
    assert_eq!((g.value("r"), g.node(r).name()), (None, "s"));
    assert!(g.name_map_problems().is_empty());
    assert_eq!(g.rename(r, g.value_name(w).to_string()).unwrap_err(), GraphError::DuplicateName("w".into()));
    g.rename(r, "r".into()).unwrap();
    assert!(g.name_map_problems().is_empty());
    assert!(g.add_node("s", Op::Relu, Role::Forward, &[x]).is_ok(), "the old name is free again");
}

#[test]
fn a_renamed_output_is_caught_by_the_name_check() {
    let (mut g, x, _) = small();
    assert!(g.name_map_problems().is_empty());
    g.set_output_name(x.node, 0, "y");
    assert!(!g.name_map_problems().is_empty());
    g.set_output_name(x.node, 0, "x");
    assert!(g.name_map_problems().is_empty());
    assert!(g.rename(x.node, "x2".into()).is_ok(), "named as its node again, the node is the usual kind");
    g.rename(x.node, "x".into()).unwrap();
    g.labels[x.node.index()] = "renamed".into();
    assert!(!g.name_map_problems().is_empty(), "the value named as its node follows the node's name");
}

#[test]
fn remove_refuses_a_used_node() {
    let (mut g, x, _) = small();
    let a = g.add_node("a", Op::Relu, Role::Forward, &[x]).unwrap();
    assert!(g.remove_node(x.node).is_err());
    g.remove_node(a).unwrap();
    assert!(g.value("a").is_none());
}

/// What a node costs in the tables by node index, 7.3 M of them in a
/// lowered 10^6-op graph (docs/FLAT_IR.md): an 8-byte record, a 24-byte
/// name (inline up to 24 bytes), a 4-byte type and a meta byte.
#[test]
fn a_node_takes_37_bytes_by_index() {
    assert_eq!(std::mem::size_of::<Rec>(), 8);
    assert_eq!(std::mem::size_of::<CompactString>(), 24);
    assert_eq!(std::mem::size_of::<TypeId>(), 4);
    // 10 M of these at 10^6 ops.
    assert_eq!(std::mem::size_of::<wires::Wire>(), 16);
}

#[test]
fn origins_name_their_section() {
    for (i, s) in SECTIONS.iter().enumerate() {
        let o = Origin::new(s, i as u32 * 7);
        assert_eq!((o.section(), o.index), (*s, i as u32 * 7));
        assert_eq!(o.pointer(), format!("/{s}/{}", i * 7));
    }
}

#[test]
fn petgraph_algorithms_run_on_the_ir() {
    let (mut g, x, _) = small();
    let a = g.add_node("a", Op::Relu, Role::Forward, &[x]).unwrap();
    let b = g.add_node("b", Op::Add, Role::Forward, &[ValueId { node: a, slot: 0 }, x]).unwrap();
    let order = petgraph::algo::toposort(&g, None).expect("acyclic");
    let at = |n: NodeId| order.iter().position(|&m| m == n).unwrap();
    assert_eq!(order.len(), 4, "x, w, a, b");
    assert!(at(x.node) < at(a) && at(a) < at(b));
    assert!(!petgraph::algo::is_cyclic_directed(&g));
    let mut dfs = petgraph::visit::Dfs::new(&g, b);
    let mut seen = Vec::new();
    while let Some(n) = dfs.next(petgraph::visit::Reversed(&g)) {
        seen.push(n);
    }
    assert_eq!(seen.len(), 3, "walking back from b reaches b, a and x, not w");
    g.set_input(a, 0, ValueId { node: b, slot: 0 });
    assert!(petgraph::algo::is_cyclic_directed(&g));
    assert!(petgraph::algo::toposort(&g, None).is_err());
}
