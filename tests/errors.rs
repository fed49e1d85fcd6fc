//! Rendered error messages for bad graphs, as snapshots: each must name the
//! file, the place (line:column, or node and JSON pointer) and what was expected.

use mpc::diag::problems_report;
use mpc::format::load::LoadError;
use mpc::io::render_plain;

/// Loads `text` as if from `bad.json` and renders every error it has.
fn errors(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, text).unwrap();
    let rendered = match mpc::format::load::load(&path) {
        Err(e) => render_plain(&e.into_report()),
        Ok(l) => match mpc::verify(&l.graph) {
            Ok(()) => panic!("expected an error"),
            Err(e) => render_plain(&problems_report(&path.display().to_string(), &l.text, &e.0)),
        },
    };
    rendered.replace(&dir.path().display().to_string(), "DIR")
}

const HEAD: &str = r#"{
  "format": "mpc/1",
  "inputs": [{"name": "x", "shape": [4, 8]}],
  "params": [{"name": "w", "shape": [8, 2], "init": {"kind": "zeros"}}],
"#;

fn graph(forward: &str, rest: &str) -> String {
    format!("{HEAD}  \"forward\": [\n{forward}\n  ],\n  \"loss\": \"loss\"{rest}\n}}\n")
}

const GOOD_FORWARD: &str = r#"    {"name": "h", "op": "matmul", "inputs": ["x", "w"]},
    {"name": "loss", "op": "reduce_mean", "inputs": ["h"], "axes": [0, 1]}"#;

#[test]
fn the_base_graph_is_valid() {
    let g = mpc::parse_str(&graph(GOOD_FORWARD, "")).unwrap();
    mpc::verify(&g).unwrap();
}

#[test]
fn syntax_error_has_line_and_column() {
    let text = graph(GOOD_FORWARD, "").replace(r#""op": "matmul","#, r#""op": "matmul""#);
    insta::assert_snapshot!(errors(&text));
}

#[test]
fn unknown_op_is_a_syntax_error_with_position() {
    let text = graph(GOOD_FORWARD, "").replace("\"matmul\"", "\"matmull\"");
    let e = errors(&text);
    assert!(e.contains("bad.json:6:33"), "{e}");
    assert!(e.contains("unknown variant `matmull`, did you mean `matmul`?"), "{e}");
}

#[test]
fn truncated_file() {
    let text = graph(GOOD_FORWARD, "");
    insta::assert_snapshot!(errors(&text[..text.len() / 2]));
}

#[test]
fn dangling_name_names_node_and_field() {
    insta::assert_snapshot!(errors(&graph(&GOOD_FORWARD.replace(r#"["x", "w"]"#, r#"["x", "w9"]"#), "")));
}

#[test]
fn duplicate_name() {
    let fwd = format!("{GOOD_FORWARD},\n    {{\"name\": \"h\", \"op\": \"relu\", \"inputs\": [\"x\"]}}");
    insta::assert_snapshot!(errors(&graph(&fwd, "")));
}

#[test]
fn cycle() {
    let fwd = r#"    {"name": "a", "op": "relu", "inputs": ["c"]},
    {"name": "b", "op": "tanh", "inputs": ["a"]},
    {"name": "c", "op": "add", "inputs": ["b", "x"]},
    {"name": "loss", "op": "reduce_mean", "inputs": ["c"], "axes": [0, 1]}"#;
    insta::assert_snapshot!(errors(&graph(fwd, "")));
}

#[test]
fn shape_mismatch() {
    let fwd = GOOD_FORWARD.replace(r#"["x", "w"]"#, r#"["w", "x"]"#);
    insta::assert_snapshot!(errors(&graph(&fwd, "")));
}

#[test]
fn stray_attribute_and_missing_attribute_reported_together() {
    let fwd = r#"    {"name": "h", "op": "matmul", "inputs": ["x", "w"], "axis": 1},
    {"name": "loss", "op": "reduce_mean", "inputs": ["h"]}"#;
    insta::assert_snapshot!(errors(&graph(fwd, "")));
}

#[test]
fn negative_dimension() {
    let text = graph(GOOD_FORWARD, "").replace("[8, 2]", "[8, -2]");
    insta::assert_snapshot!(errors(&text));
}

#[test]
fn wrong_format_version() {
    let text = graph(GOOD_FORWARD, "").replace("mpc/1", "mpc/9");
    insta::assert_snapshot!(errors(&text));
}

#[test]
fn forward_reads_backward_and_bad_update_found_by_verifier() {
    let rest = r#",
  "backward": [
    {"name": "dloss", "op": "seed", "inputs": ["loss"]},
    {"name": "dh", "op": "broadcast_to", "inputs": ["dloss"], "shape": [4, 2]},
    {"name": "dw", "op": "matmul", "inputs": ["x", "dh"], "transpose_a": true}
  ],
  "gradients": {"w": "dw"},
  "update": [
    {"name": "w_next", "op": "cast", "inputs": ["dw"], "to": "f16"}
  ],
  "updates": {"w": "w_next"}"#;
    let fwd = format!("{GOOD_FORWARD},\n    {{\"name\": \"leak\", \"op\": \"relu\", \"inputs\": [\"dh\"]}}");
    insta::assert_snapshot!(errors(&graph(&fwd, rest)));
}

#[test]
fn unreadable_file() {
    let e = mpc::format::load::load(std::path::Path::new("no/such/file.json")).err().unwrap();
    assert!(matches!(e, LoadError::Io { .. }));
    assert!(e.to_string().starts_with("cannot read no/such/file.json"), "{e}");
}

#[test]
fn empty_names_are_rejected_everywhere() {
    let text = graph(GOOD_FORWARD, "").replace(r#"{"name": "x", "shape": [4, 8]}"#, r#"{"name": "", "shape": [4, 8]}"#);
    let e = errors(&text);
    assert!(e.contains("a name must not be empty"), "{e}");
    assert!(e.contains("/inputs/0/name"), "{e}");
    let text = graph(GOOD_FORWARD, "").replace(r#"{"name": "w", "shape""#, r#"{"name": "", "shape""#);
    assert!(errors(&text).contains("/params/0/name"));
}

#[test]
fn a_backward_section_needs_gradients() {
    let rest = r#",
  "backward": [{"name": "dloss", "op": "seed", "inputs": ["loss"]}]"#;
    let e = errors(&graph(GOOD_FORWARD, rest));
    assert!(e.contains("needs `gradients`"), "{e}");
    let e = errors(&graph(GOOD_FORWARD, ",\n  \"backward\": []"));
    assert!(e.contains("needs `gradients`"), "{e}");
}
