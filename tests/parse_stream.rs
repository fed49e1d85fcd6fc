//! The streaming parse (`mpc::format::parse::fast`, which `parse_str` tries first)
//! builds exactly the graph the two-step `parse_raw` + `from_raw` builds, and
//! hands everything else (errors, unusual layouts) to the two-step path.

use std::path::Path;

use mpc::format::parse::{fast, from_raw, parse_raw};
use mpc::ParseError;

/// Everything observable about a graph, indices and edge order included.
fn layout(g: &mpc::Graph) -> String {
    let mut s = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {} {}\n",
        g.name,
        g.loss,
        g.gradients,
        g.updates,
        g.outputs,
        g.optimizer,
        g.node_count(),
        g.edge_count()
    );
    for id in g.node_ids() {
        let users: Vec<_> = g.users(id).collect();
        s.push_str(&format!("{} {:?} {:?} {users:?}\n", id.index(), g.node(id), g.inputs(id)));
    }
    s
}

fn two_step(text: &str) -> Result<mpc::Graph, ParseError> {
    let raw = parse_raw(text)?;
    from_raw(&raw).map_err(ParseError::Invalid)
}

/// The streaming pass accepts `text` and agrees with the two-step parse.
fn streams(text: &str) {
    let g = fast::parse(text).unwrap_or_else(|| panic!("the streaming pass should accept:\n{text}"));
    let want = two_step(text).unwrap();
    assert_eq!(layout(&g), layout(&want));
    assert_eq!(layout(&mpc::parse_str(text).unwrap()), layout(&want));
}

/// The streaming pass declines `text`, and `parse_str` answers as the two-step parse.
fn declined(text: &str) {
    assert!(fast::parse(text).is_none(), "the streaming pass should decline:\n{text}");
    match (mpc::parse_str(text), two_step(text)) {
        (Ok(a), Ok(b)) => assert_eq!(layout(&a), layout(&b)),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("parse_str: {:?}\ntwo-step: {:?}", a.err(), b.err()),
    }
}

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir-examples");
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    paths.iter().map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap())).collect()
}

#[test]
fn every_example_streams() {
    for (_, text) in examples() {
        streams(&text);
    }
}

#[test]
fn lowered_examples_stream() {
    // State, backward and update sections, casts, multi-output nodes, attributes.
    for (name, text) in examples() {
        for low in [mpc::DType::F16, mpc::DType::Bf16] {
            let mut g = mpc::parse_str(&text).unwrap();
            mpc::passes::lower(&mut g, &mpc::passes::Options { low, ..Default::default() })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            streams(&mpc::format::emit::json::to_string(&g));
        }
    }
}

const G: &str = r#"{
  "format": "mpc/1",
  "name": "t",
  "inputs": [{"name": "x", "shape": [4, 8]}],
  "params": [{"name": "w", "shape": [8, 8], "init": {"kind": "zeros"}}],
  "forward": [
    {"name": "h", "op": "matmul", "inputs": ["x", "w"]},
    {"name": "s", "op": "softmax", "inputs": ["h"], "axis": -1},
    {"name": "loss", "op": "reduce_mean", "inputs": ["s"], "axes": [0, 1]}
  ],
  "loss": "loss",
  "outputs": ["h"]
}"#;

#[test]
fn forward_references_wire_in_file_order() {
    // `a` reads `b`, written after it: wiring waits from `a` on, as in the two-step parse.
    let text = G.replace(
        r#"{"name": "h", "op": "matmul", "inputs": ["x", "w"]},"#,
        r#"{"name": "a", "op": "relu", "inputs": ["b"]},
    {"name": "b", "op": "relu", "inputs": ["x"]},
    {"name": "c", "op": "relu", "inputs": ["x"]},
    {"name": "h", "op": "matmul", "inputs": ["a", "w"]},"#,
    );
    streams(&text);
}

#[test]
fn fields_in_any_order_within_a_node_and_escaped_names() {
    let text = G
        .replace(
            r#"{"name": "s", "op": "softmax", "inputs": ["h"], "axis": -1}"#,
            r#"{"axis": -1, "inputs": ["\u0068"], "op": "softmax", "name": "s\u00e9"}"#,
        )
        .replace(r#""inputs": ["s"]"#, r#""inputs": ["sé"]"#);
    streams(&text);
}

#[test]
fn explicit_outputs_and_null_backward() {
    let text = r#"{
  "format": "mpc/1",
  "inputs": [{"name": "x", "shape": [4, 8]}],
  "params": [
    {"name": "g", "shape": [8], "init": {"kind": "ones"}},
    {"name": "b", "shape": [8], "init": {"kind": "zeros"}}
  ],
  "forward": [
    {"name": "ln", "op": "layer_norm", "inputs": ["x", "g", "b"], "outputs": ["y", "mean", "rstd"]},
    {"name": "ln2", "op": "layer_norm", "inputs": ["y", "g", "b"]},
    {"name": "loss", "op": "reduce_sum", "inputs": ["ln2"], "axes": [0, 1]}
  ],
  "loss": "loss",
  "backward": null,
  "outputs": ["mean", "ln2:2"]
}"#;
    streams(text);
}

#[test]
fn other_layouts_and_every_error_go_the_two_step_way() {
    // Sections out of the usual order.
    declined(
        &G.replace(r#""inputs": [{"name": "x", "shape": [4, 8]}],"#, "")
            .replace(r#""outputs": ["h"]"#, r#""outputs": ["h"], "inputs": [{"name": "x", "shape": [4, 8]}]"#),
    );
    // A JSON array for the graph.
    declined("[\"mpc/1\"]");
    // Syntax and type errors.
    declined(&G[..G.len() / 2]);
    declined(&G.replace(r#""inputs": ["x", "w"]"#, r#""inputs": null"#));
    declined(&G.replace(r#""inputs": ["x", "w"]"#, r#""inputs": ["x", 3]"#));
    // Repeated keys, in a node and at the top.
    declined(&G.replace(r#""op": "matmul","#, r#""op": "matmul", "op": "matmul","#));
    declined(&G.replace(r#""inputs": ["x", "w"]}"#, r#""inputs": ["x", "w"], "inputs": ["x", "w"]}"#));
    declined(&G.replace(r#""name": "t","#, r#""name": "t", "name": "u","#));
    // Unknown fields and stray attributes.
    declined(&G.replace(r#""axis": -1"#, r#""axis": -1, "axiz": 1"#));
    declined(&G.replace(r#""op": "matmul","#, r#""op": "matmul", "axis": 1,"#));
    declined(&G.replace(r#""name": "t","#, r#""name": "t", "extra": 1,"#));
    // Semantic problems: a dangling name, a duplicate, a cycle, a bad shape, a wrong format.
    declined(&G.replace(r#""inputs": ["h"]"#, r#""inputs": ["nope"]"#));
    declined(&G.replace(r#""name": "s""#, r#""name": "h""#));
    declined(&G.replace(r#""inputs": ["x", "w"]"#, r#""inputs": ["s", "w"]"#));
    declined(&G.replace("[8, 8]", "[7, 8]"));
    declined(&G.replace("mpc/1", "mpc/2"));
    declined(&G.replace(r#""loss": "loss","#, ""));
    declined(&G.replace(r#""outputs": ["h"]"#, r#""outputs": ["h"], "gradients": {"w": "h"}"#));
}

#[test]
fn a_weights_file_streams() {
    let text = r#"{
  "format": "mpc/1",
  "inputs": [{"name": "x", "shape": [2, 3]}],
  "params": [{"name": "w", "shape": [3, 4], "init": {"kind": "file"}}],
  "forward": [
    {"name": "h", "op": "matmul", "inputs": ["x", "w"]},
    {"name": "loss", "op": "reduce_sum", "inputs": ["h"], "axes": [0, 1]}
  ],
  "loss": "loss",
  "weights": "model.safetensors"
}"#;
    streams(text);
    assert_eq!(fast::parse(text).unwrap().weights.as_deref(), Some("model.safetensors"));
    assert_eq!(mpc::parse_str(text).unwrap().weights.as_deref(), Some("model.safetensors"));
}
