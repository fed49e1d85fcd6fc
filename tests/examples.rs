//! Every ir-example: parses, verifies, round-trips through JSON, and its text
//! form after each pipeline stage matches the committed snapshot.

use mpc::format::emit::{json, text};
use mpc::passes::{self, Options};

fn load(path: &std::path::Path) -> mpc::Graph {
    let src = std::fs::read_to_string(path).unwrap();
    match mpc::parse_str(&src) {
        Ok(g) => g,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

#[test]
fn examples_verify() {
    insta::glob!("../ir-examples", "*.json", |path| {
        let g = load(path);
        if let Err(e) = mpc::verify(&g) {
            panic!("{}: {:#?}", path.display(), e.0);
        }
    });
}

#[test]
fn examples_round_trip_through_json() {
    insta::glob!("../ir-examples", "*.json", |path| {
        let g = load(path);
        let emitted = json::to_string(&g);
        let again = mpc::parse_str(&emitted).unwrap_or_else(|e| panic!("{}: re-parse: {e}", path.display()));
        assert!(g == again, "{}: parse(emit(g)) != g", path.display());
        assert_eq!(json::to_string(&again), emitted, "{}: emit is not a fixed point", path.display());
    });
}

#[test]
fn examples_after_each_pass() {
    insta::glob!("../ir-examples", "*.json", |path| {
        let g = load(path);
        insta::assert_snapshot!("parsed", text::to_string(&g));
        for low in [mpc::DType::F16, mpc::DType::Bf16] {
            let mut g = g.clone();
            let opts = Options { verify_each: true, low, ..Options::default() };
            let mut pipeline = passes::Pipeline::new(&opts);
            for pass in pipeline.passes() {
                let name = pass.name();
                passes::run_passes(&mut g, &mut [pass], &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                insta::assert_snapshot!(format!("{low}_after_{name}"), text::to_string(&g));
            }
        }
    });
}

#[test]
fn dot_output_colours_every_node() {
    let g = load(std::path::Path::new("ir-examples/mlp.json"));
    let dot = mpc::format::emit::dot::to_string(&g);
    assert!(dot.starts_with("digraph \"mlp_digits\" {"));
    let coloured = dot.lines().filter(|l| l.trim_start().starts_with('n') && l.contains("fillcolor")).count();
    assert_eq!(coloured, g.node_count());
    let edges = dot.lines().filter(|l| l.contains(" -> ")).count();
    assert_eq!(edges, g.edge_count());
}
