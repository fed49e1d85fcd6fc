//! The layers of docs/DESIGN.md ("The layers"), checked: a module's code
//! (its unit tests aside) names only modules of its own layer or the layers
//! below it, so the table cannot drift from the code.

use std::path::Path;

/// The layers from the bottom up: (layer, the files or folders in it).
const LAYERS: &[(&str, &[&str])] = &[
    ("ground", &["src/diag.rs", "src/io.rs", "src/timings.rs", "src/choice.rs"]),
    ("ir", &["src/ir"]),
    ("tensor", &["src/tensor"]),
    ("format", &["src/format"]),
    ("passes", &["passes"]),
    ("exec", &["src/exec"]),
    ("onnx", &["src/onnx"]),
    ("train", &["src/train", "src/cost.rs", "src/gen.rs"]),
];

/// The layer of a top-level name after `crate::` (a module, or an item
/// the crate root re-exports).
fn layer_of(name: &str) -> Option<usize> {
    let module = match name {
        "diag" | "io" | "timings" | "choice" | "Problem" => "ground",
        "ir" | "Graph" | "Node" | "NodeId" | "ValueId" | "Op" | "OpKind" | "Precision" | "Role" | "DType" | "Shape"
        | "TensorType" | "verify" | "VerifyError" => "ir",
        "parse_str" | "ParseError" => "format",
        "cost" | "gen" => "train",
        other => other,
    };
    LAYERS.iter().position(|(l, _)| *l == module)
}

fn rust_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The `crate::NAME` references of a file's code: comments and the unit
/// test module (the file's tail from `#[cfg(test)] mod`) left out.
fn references(text: &str) -> Vec<(usize, String)> {
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let name: String = rest[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push((n + 1, name));
            rest = &rest[i + 7..];
        }
    }
    out
}

#[test]
fn no_layer_reaches_above_itself() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut checked = 0;
    for (mine, (layer, paths)) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        for p in *paths {
            rust_files(&root.join(p), &mut files);
        }
        assert!(!files.is_empty(), "layer {layer}: no files at {paths:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (line, name) in references(&text) {
                checked += 1;
                match layer_of(&name) {
                    Some(theirs) if theirs <= mine => {}
                    Some(theirs) => problems.push(format!(
                        "{}:{line}: `crate::{name}` ({}) is above {layer}",
                        f.strip_prefix(root).unwrap_or(&f).display(),
                        LAYERS[theirs].0
                    )),
                    None => problems.push(format!(
                        "{}:{line}: `crate::{name}` is in no layer; add it to LAYERS and docs/DESIGN.md",
                        f.strip_prefix(root).unwrap_or(&f).display()
                    )),
                }
            }
        }
    }
    assert!(checked > 200, "only {checked} references found: is the scan broken?");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_library_module_is_in_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')) {
            assert!(layer_of(m).is_some(), "src/lib.rs's module `{m}` is in no layer of tests/layers.rs");
        }
    }
}

#[test]
fn the_scan_sees_a_reference_upward() {
    // A file of the IR naming the executor must be reported.
    let refs =
        references("use crate::exec::Tensor; // crate::train\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::onnx; }");
    assert_eq!(refs, vec![(1, "exec".to_string())]);
    assert!(layer_of("exec") > layer_of("ir"));
}
