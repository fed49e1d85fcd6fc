//! The `mpc` binary: exit codes, outputs, atomic writes.

use std::process::{Command, Output};

fn mpc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpc")).args(args).output().expect("mpc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_accepts_an_example() {
    let o = mpc(&["check", "ir-examples/mlp.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ir-examples/mlp.json: ok"));
}

#[test]
fn bad_input_exits_1_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"format\": \"mpc/1\",\n  \"forward\": [}\n").unwrap();
    let o = mpc(&["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("bad.json:3:15"), "{e}");
}

/// A minified graph is one long line. An error past column 65,535 used to
/// panic in the renderer (exit 101), and every problem reprinted the whole
/// line (megabytes of stderr): now each shows a window around its column,
/// and at most twenty are shown.
#[test]
fn errors_far_into_a_minified_file_show_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let mlp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("ir-examples/mlp.json").unwrap()).unwrap();
    let mut g = mlp.clone();
    g["name"] = serde_json::json!("n".repeat(70_000));
    let text = serde_json::to_string(&g).unwrap();
    let cases = [
        ("typo.json", text.replacen("\"relu\"", "\"rleu\"", 1), "did you mean `relu`?"),
        ("syntax.json", text.replacen("\"relu\"", "\"relu\",,", 1), "syntax.json:1:"),
        ("names.json", text.replace("\"inputs\":[\"h1\"", "\"inputs\":[\"nope\""), "no value is named `nope`"),
    ];
    for (file, bad, expected) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, &bad).unwrap();
        for cmd in ["check", "lower", "explain", "train"] {
            let o = mpc(&[cmd, path.to_str().unwrap()]);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{cmd} {file}: {e}");
            let unwrapped = e.split_whitespace().filter(|w| !matches!(*w, "│" | "×")).collect::<Vec<_>>().join(" ");
            assert!(unwrapped.contains(expected), "{cmd} {file}: {e}");
            assert!(e.len() < 8_000, "{cmd} {file}: {} bytes of stderr", e.len());
        }
    }
}

/// A graph command given an ONNX model says what to run instead (it
/// reported a UTF-8 error).
#[test]
fn graph_commands_point_an_onnx_model_to_import_and_lower() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, b"\x08\x07\x12\x04test\xff\xfe").unwrap();
    for cmd in ["check", "explain", "train", "compare"] {
        let o = mpc(&[cmd, path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let e = stderr(&o).split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
        assert!(e.contains("an ONNX model, not an mpc graph file: `mpc import"), "{cmd}: {e}");
        assert!(e.contains("--emit onnx` converts it"), "{cmd}: {e}");
    }
}

/// A graph that checks but whose tensors would take terabytes is refused
/// before anything is allocated (it aborted the process), by train,
/// compare and --emit onnx; --max-memory raises the limit.
#[test]
fn graphs_too_big_to_allocate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("ir-examples/mlp.json").unwrap()).unwrap();
    // A hidden layer of 2^30 units: w1 alone is 256 GiB in f32.
    let big = 1u64 << 30;
    g["params"][0]["shape"] = serde_json::json!([64, big]);
    g["params"][1]["shape"] = serde_json::json!([big]);
    g["params"][2]["shape"] = serde_json::json!([big, 128]);
    let path = dir.path().join("big.json");
    std::fs::write(&path, g.to_string()).unwrap();
    let p = path.to_str().unwrap();
    let onnx = dir.path().join("big.onnx");
    for args in [
        vec!["train", p, "--steps", "1"],
        vec!["compare", p, "--steps", "1", "--out", dir.path().to_str().unwrap()],
        vec!["lower", p, "--emit", "onnx", "-o", onnx.to_str().unwrap()],
    ] {
        let o = mpc(&args);
        let e = stderr(&o).split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("above the limit of 32.0 GiB (--max-memory raises it)"), "{args:?}: {e}");
    }
    assert!(!onnx.exists());
    let o = mpc(&["train", p, "--steps", "1", "--max-memory", "1x"]);
    assert_eq!(o.status.code(), Some(2), "a bad size is a usage error");
}

/// An already lowered graph keeps its scaler; asking for another one is an
/// error (it was ignored silently), asking for the same is fine.
#[test]
fn a_lowered_graph_refuses_another_loss_scale() {
    let dir = tempfile::tempdir().unwrap();
    let lowered = dir.path().join("l.json");
    let o = mpc(&["lower", "ir-examples/mlp.json", "-o", lowered.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l = lowered.to_str().unwrap();
    for mode in ["none", "static:1024", "dynamic:growth=3"] {
        let o = mpc(&["lower", l, "--loss-scale", mode]);
        let e = stderr(&o).split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
        assert_eq!(o.status.code(), Some(1), "{mode}: {e}");
        assert!(e.contains("the graph already has loss scaling (dynamic:init=65536,growth=2"), "{mode}: {e}");
    }
    for args in [vec!["lower", l], vec!["lower", l, "--loss-scale", "dynamic"]] {
        let o = mpc(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let o = mpc(&["lower", "ir-examples/mlp.json", "--precision", "fp32", "--loss-scale", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `mpc table` prints each class, its meaning and its ops, per low type,
/// with a table file applied (gradients moving with their forward op).
#[test]
fn table_prints_the_classes_and_applies_a_file() {
    let o = mpc(&["table"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for class in ["low ", "infer ", "clear ", "fp32 ", "int "] {
        assert!(out.lines().any(|l| l.starts_with(class)), "no `{class}` line:\n{out}");
    }
    let json = |args: &[&str]| -> serde_json::Value {
        let o = mpc(&[&["table", "--json"], args].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let has = |v: &serde_json::Value, class: &str, op: &str| v[class].as_array().unwrap().iter().any(|x| x == op);
    assert!(has(&json(&[]), "fp32", "reduce_sum"));
    assert!(has(&json(&["--precision", "bf16"]), "infer", "reduce_sum"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    std::fs::write(&file, r#"{"fp32": ["gelu"]}"#).unwrap();
    let v = json(&["--table", file.to_str().unwrap()]);
    assert!(has(&v, "fp32", "gelu") && has(&v, "fp32", "gelu_grad"), "{v}");
    std::fs::write(&file, r#"{"low": ["global_norm"]}"#).unwrap();
    let o = mpc(&["table", "--table", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("stay fp32"), "{}", stderr(&o));
}

/// An `update` section without its `updates` map trains nothing (lowering
/// deleted the optimizer as dead code): check refuses it.
#[test]
fn update_nodes_without_updates_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let lowered = dir.path().join("l.json");
    let o = mpc(&["lower", "ir-examples/mlp.json", "-o", lowered.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mpc(&["check", lowered.to_str().unwrap()]);
    assert!(o.status.success(), "a lowered graph checks: {}", stderr(&o));
    let mut g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&lowered).unwrap()).unwrap();
    g.as_object_mut().unwrap().remove("updates");
    std::fs::write(&lowered, g.to_string()).unwrap();
    let o = mpc(&["check", lowered.to_str().unwrap()]);
    let e = stderr(&o).split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("reaches no `updates` entry, so lowering would delete it"), "{e}");
}

/// `optimizer.no_decay` patterns (and train's --no-decay) exempt params
/// from weight decay: biases get 0, weights AdamW's 0.01.
#[test]
fn no_decay_patterns_exempt_params() {
    let dir = tempfile::tempdir().unwrap();
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("ir-examples/mlp.json").unwrap()).unwrap();
    g["optimizer"]["no_decay"] = serde_json::json!(["b*"]);
    let path = dir.path().join("nd.json");
    std::fs::write(&path, g.to_string()).unwrap();
    let o = mpc(&["lower", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lowered: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let decay: Vec<(String, f64)> = lowered["update"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["op"] == "adam")
        .map(|n| (n["name"].as_str().unwrap().to_string(), n["weight_decay"].as_f64().unwrap()))
        .collect();
    assert_eq!(decay.len(), 6);
    for (name, wd) in decay {
        assert_eq!(wd, if name.starts_with('b') { 0.0 } else { 0.01 }, "{name}");
    }
    g["optimizer"]["no_decay"] = serde_json::json!([""]);
    std::fs::write(&path, g.to_string()).unwrap();
    let o = mpc(&["check", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "an empty pattern: {}", stderr(&o));
    let o = mpc(&["train", "ir-examples/mlp.json", "--steps", "1", "--no-decay", "b*", "--no-decay", "w3"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `mpc gen gpt` writes a graph that checks; `mpc plan` lowers it in each
/// precision and prints the planned memory without allocating.
#[test]
fn gen_gpt_and_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt.json");
    let p = path.to_str().unwrap();
    let o = mpc(&[
        "gen",
        "gpt",
        "--layers",
        "2",
        "--d-model",
        "32",
        "--heads",
        "4",
        "--seq",
        "16",
        "--vocab",
        "50",
        "-o",
        p,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("parameters"), "{}", stderr(&o));
    let o = mpc(&["check", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mpc(&["plan", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for precision in ["fp32 ", "fp16 ", "bf16 "] {
        assert!(out.lines().any(|l| l.starts_with(precision) && l.contains("planned peak memory")), "{out}");
    }
    let o = mpc(&["gen", "gpt", "--d-model", "30", "--heads", "4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a multiple of heads"), "{}", stderr(&o));
}

#[test]
fn missing_file_exits_1() {
    let o = mpc(&["check", "no/such.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read no/such.json"), "{}", stderr(&o));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(mpc(&["lower"]).status.code(), Some(2));
    assert_eq!(mpc(&["lower", "ir-examples/mlp.json", "--emit", "png"]).status.code(), Some(2));
    let o = mpc(&["lower", "ir-examples/mlp.json", "--print-after", "nonsense"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no pass is named `nonsense`"), "{}", stderr(&o));
}

#[test]
fn lower_writes_every_format_and_json_reparses() {
    let dir = tempfile::tempdir().unwrap();
    for emit in ["json", "text", "dot"] {
        let out = dir.path().join(format!("out.{emit}"));
        let o = mpc(&["lower", "ir-examples/mlp.json", "--emit", emit, "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(std::fs::metadata(&out).unwrap().len() > 100);
    }
    let again = mpc(&["check", dir.path().join("out.json").to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn a_failed_lower_leaves_the_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    std::fs::write(&out, "precious").unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"format\": \"mpc/1\"").unwrap();
    let o = mpc(&["lower", bad.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temp file is left behind");
}

#[test]
fn unwritable_output_is_an_error_not_a_panic() {
    let o = mpc(&["lower", "ir-examples/mlp.json", "-o", "/no/such/dir/out.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot write /no/such/dir/out.json"), "{}", stderr(&o));
}

#[test]
fn print_after_shows_the_ir() {
    let o = mpc(&["lower", "ir-examples/mlp.json", "--emit", "text", "--print-after", "cleanup"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("// after cleanup\ngraph \"mlp_digits\""), "{}", stderr(&o));
}

/// docs/mpc.schema.json must be what `mpc schema` prints; regenerate with
/// `cargo run -- schema > docs/mpc.schema.json`.
#[test]
fn schema_is_current() {
    let o = mpc(&["schema"]);
    assert!(o.status.success());
    let committed = std::fs::read_to_string("docs/mpc.schema.json").expect("docs/mpc.schema.json exists");
    assert!(
        committed == String::from_utf8_lossy(&o.stdout),
        "docs/mpc.schema.json is stale: run `cargo run -- schema > docs/mpc.schema.json`"
    );
}

/// Every example in the schema's eyes: the committed schema accepts what the
/// parser accepts, at least on the examples (checked structurally: required
/// top-level keys are present).
#[test]
fn schema_requires_what_the_parser_requires() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("docs/mpc.schema.json").unwrap()).unwrap();
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["format", "forward", "loss"]);
}

#[test]
fn explain_reports_every_node_and_a_summary() {
    let o = mpc(&["explain", "ir-examples/mlp.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("h1         matmul              low     f16    low class"), "{out}");
    assert!(out.lines().last().unwrap().starts_with("Converted 14/21 nodes to f16 using"), "{out}");
    let o = mpc(&["explain", "ir-examples/mlp.json", "--json", "--precision", "bf16"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["low"], "bf16");
    assert!(v["decisions"].as_array().unwrap().len() > 20);
}

#[test]
fn a_bad_table_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("table.json");
    std::fs::write(&t, r#"{"low": ["softmax"], "fp32": ["softmax"]}"#).unwrap();
    let o = mpc(&["lower", "ir-examples/mlp.json", "--table", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`softmax` is listed under both"), "{}", stderr(&o));
}

#[test]
fn bad_loss_scale_is_a_usage_error() {
    let o = mpc(&["lower", "ir-examples/mlp.json", "--loss-scale", "static:0"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn emit_onnx_writes_a_file_and_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("ir-examples/mlp.json").unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["outputs"] = serde_json::json!(["logits_b"]);
    let model = dir.path().join("mlp.json");
    std::fs::write(&model, v.to_string()).unwrap();
    let m = model.to_str().unwrap();
    // Protobuf on a terminal is useless: -o is required.
    let o = mpc(&["lower", m, "--emit", "onnx"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("-o FILE"), "{}", stderr(&o));
    for bad in [
        vec!["lower", m, "--emit", "onnx", "-o", "x.onnx", "--onnx-bf16", "emulated"],
        vec!["lower", m, "--seed", "3"],
        vec!["lower", m, "--precision", "fp32", "--loss-scale", "static:8"],
        vec!["explain", m, "--precision", "fp32"],
    ] {
        let o = mpc(&bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
    }
    for (i, args) in [
        vec!["--precision", "fp32"],
        vec!["--precision", "fp16", "--seed", "7"],
        vec!["--precision", "bf16"],
        vec!["--precision", "bf16", "--onnx-bf16", "emulated"],
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("m{i}.onnx"));
        let mut a = vec!["lower", m, "--emit", "onnx", "-o", out.to_str().unwrap()];
        a.extend(args);
        let o = mpc(&a);
        assert!(o.status.success(), "{a:?}: {}", stderr(&o));
        let bytes = std::fs::read(&out).unwrap();
        use prost::Message;
        let model = mpc::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
        // logits_b, or its f32 cast when the low type computes it.
        let name = model.graph.unwrap().output[0].name.clone().unwrap();
        assert!(name == "logits_b" || name == "logits_b.f32", "{name}");
    }
    // Reference data from mpc's executor, in the ONNX test-data layout.
    let td = dir.path().join("data");
    let out = dir.path().join("t.onnx");
    let o = mpc(&["lower", m, "--emit", "onnx", "-o", out.to_str().unwrap(), "--onnx-test-data", td.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = {
        let mut v: Vec<String> =
            std::fs::read_dir(&td).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(names, ["input_0.pb", "output_0.pb"]);
    let o = mpc(&["lower", m, "--onnx-test-data", td.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    // Without an inference output (the shipped mlp.json failed): the
    // loss's first input, with a note.
    let out = dir.path().join("logits.onnx");
    let o = mpc(&["lower", "ir-examples/mlp.json", "--emit", "onnx", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("exporting `logits_b`, the loss's first input"), "{}", stderr(&o));
    let model = <mpc::onnx::proto::ModelProto as prost::Message>::decode(&std::fs::read(&out).unwrap()[..]).unwrap();
    assert_eq!(model.graph.unwrap().output[0].name.as_deref(), Some("logits_b"));
}

#[test]
fn lower_takes_an_onnx_model_directly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sq16.onnx");
    let model = "tests/data/onnx/light_squeezenet.onnx";
    let o = mpc(&["lower", model, "--emit", "onnx", "-o", out.to_str().unwrap(), "--repeat", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("ONNX nodes imported, lowered and emitted in"), "{e}");
    assert!(e.contains("3 runs in this process: best"), "{e}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), mode(&plain), "the output has the permissions of any new file");
    }
    let m = <mpc::onnx::proto::ModelProto as prost::Message>::decode(&std::fs::read(&out).unwrap()[..]).unwrap();
    let casts = m.graph.unwrap().node.iter().filter(|n| n.op_type.as_deref() == Some("Cast")).count();
    assert_eq!(casts, 2, "one cast in, one out");
    // The text form of the lowered inference graph.
    let o = mpc(&["lower", model, "--emit", "text", "--precision", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(":bf16[1,64,111,111] = conv2d"), "bf16 convs in the text IR");
}

/// `mpc import model.onnx -o model.json`, as the README writes it (no
/// --loss: cross-entropy), then the graph checks and lowers.
#[test]
fn import_as_the_readme_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.json");
    let o = mpc(&["import", "tests/data/onnx/light_squeezenet.onnx", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("model.safetensors").exists());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("cross_entropy"), "the default loss");
    let o = mpc(&["check", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The `weights` field cannot reach outside the graph's folder (or name a
/// device or FIFO) unless --allow-outside-weights says so.
#[test]
fn weights_outside_the_graph_folder_need_a_flag() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    let out = dir.join("model.json");
    let o = mpc(&["import", "tests/data/onnx/light_squeezenet.onnx", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::rename(dir.join("model.safetensors"), top.path().join("w.safetensors")).unwrap();
    let text = std::fs::read_to_string(&out).unwrap().replace("\"model.safetensors\"", "\"../w.safetensors\"");
    std::fs::write(&out, text).unwrap();
    let p = out.to_str().unwrap();
    let o = mpc(&["train", p, "--steps", "0", "--device", "cpu"]);
    let e = stderr(&o).split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("outside the graph's folder") && e.contains("--allow-outside-weights"), "{e}");
    let o = mpc(&["train", p, "--steps", "0", "--device", "cpu", "--allow-outside-weights"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let onnx = dir.join("m.onnx");
    let o = mpc(&["lower", p, "--emit", "onnx", "-o", onnx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = mpc(&["lower", p, "--emit", "onnx", "-o", onnx.to_str().unwrap(), "--allow-outside-weights"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `-o w.safetensors` would write the graph over its own weights file.
#[test]
fn import_refuses_to_overwrite_its_weights_with_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let o = mpc(&["import", "tests/data/onnx/light_squeezenet.onnx", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the graph would overwrite its own"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn onnx_lowering_refuses_what_needs_a_graph_file() {
    let model = "tests/data/onnx/light_squeezenet.onnx";
    for (args, says) in [
        (vec!["lower", model], "use `mpc import` first"),
        (vec!["lower", model, "--emit", "onnx", "-o", "x.onnx", "--seed", "1"], "need a graph file"),
        (vec!["lower", "ir-examples/mlp.json", "--input-shape", "x=1,2"], "only to an ONNX model"),
        (vec!["lower", "ir-examples/mlp.json", "--repeat", "2"], "only to an ONNX model"),
    ] {
        let o = mpc(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let o = mpc(&["lower", "tests/data/onnx/README.md.onnx", "--emit", "onnx", "-o", "x.onnx"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read tests/data/onnx/README.md.onnx"), "{}", stderr(&o));
}

/// `explain --cost`: the roofline step estimate in three precisions, each
/// also fused (faster, the same GEMM FLOPs), the GEMM FLOPs as counted by
/// hand (see cost::tests), JSON for tools, and a usage error for an
/// unknown GPU.
#[test]
fn explain_cost_estimates_the_step() {
    let o = mpc(&["explain", "--cost", "ir-examples/mlp.json", "--gpu", "a100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("A100"), "{out}");
    for p in ["fp32", "fp16", "bf16", "fp32 fused", "fp16 fused", "bf16 fused"] {
        assert!(out.lines().any(|l| l.starts_with(p)), "{p}: {out}");
    }
    let o = mpc(&["explain", "--cost", "--json", "ir-examples/mlp.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (l1, l2, l3) = (64.0 * 64.0 * 128.0, 64.0 * 128.0 * 128.0, 64.0 * 128.0 * 10.0);
    for m in v["modes"].as_array().unwrap() {
        assert_eq!(m["estimate"]["gemm_flops"].as_f64(), Some(4.0 * (l1 + l2 + l3) + 2.0 * (l2 + l3)), "{m}");
    }
    assert_eq!(v["modes"][0]["speedup_vs_fp32"].as_f64(), Some(1.0));
    let modes = v["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 6);
    for (plain, fused) in modes[..3].iter().zip(&modes[3..]) {
        assert_eq!((plain["fused"].as_bool(), fused["fused"].as_bool()), (Some(false), Some(true)));
        assert_eq!(plain["precision"], fused["precision"]);
        let (a, b) = (plain["estimate"]["seconds"].as_f64().unwrap(), fused["estimate"]["seconds"].as_f64().unwrap());
        assert!(b < a, "{plain} {fused}");
    }
    let o = mpc(&["explain", "--cost", "ir-examples/mlp.json", "--gpu", "v100"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("known: h100, h200, a100"), "{}", stderr(&o));
}

/// `explain --fusion`: the MLP's six groups (the first two matmuls with
/// their bias add and activation as epilogue GEMMs, the gelu's storing its
/// input for gelu_grad; the two weight gradients summing their biases'; the logits'
/// cast + bias add; the cross-entropy pair), the values they hide, and
/// JSON for tools; `--fuse` trains on the emulated device as without it,
/// but for the epilogue GEMMs' one rounding of the biased product.
#[test]
fn explain_fusion_shows_the_groups() {
    let o = mpc(&["explain", "--fusion", "ir-examples/mlp.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("not stored: `h1` f16[64,128], `h1b` f16[64,128] (32768 bytes)"), "{out}");
    assert!(out.contains("6 groups over 16 steps: 10 launches"), "{out}");
    assert!(out.contains("3 steps -> `dw2` f16[128,128], `db2` f32[128]"), "{out}");
    assert!(out.contains("not stored: `dh2b.f32` f32[64,128] (32768 bytes)"), "{out}");
    assert!(out.contains("3 steps -> `h2b` f16[64,128], `a2` f16[64,128]"), "{out}");
    assert!(out.contains("planned peak:"), "{out}");
    let o = mpc(&["explain", "--fusion", "--json", "ir-examples/mlp.json", "--precision", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["launches_saved"].as_u64(), Some(8));
    assert_eq!(v["groups"][4]["kind"].as_str(), Some("gemm_bias_grad"));
    // In fp32 nothing is cast: the weight gradients sum dy itself, in f32.
    let o = mpc(&["explain", "--fusion", "ir-examples/mlp.json", "--precision", "fp32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("2 steps -> `dw2` f32[128,128], `db2` f32[128]"), "{out}");
    assert!(!out.contains("f16"), "{out}");
    assert_eq!(v["groups"][0]["kind"].as_str(), Some("gemm_bias"));
    assert_eq!(v["groups"][0]["hidden"], serde_json::json!(["h1", "h1b"]));
    assert_eq!(v["groups"][3]["kind"].as_str(), Some("cross_entropy"));
    assert_eq!(v["groups"][3]["outputs"], serde_json::json!(["loss", "dlogits_b"]));
    assert!(v["planned_peak_bytes"]["fused"].as_u64() <= v["planned_peak_bytes"]["unfused"].as_u64());
    let train_in = |fuse: bool, precision: &str| {
        let mut args = vec!["train", "ir-examples/mlp.json", "--device", "cuda-emu", "--steps", "2"];
        args.extend(["--precision", precision]);
        if fuse {
            args.push("--fuse");
        }
        let o = mpc(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let loss = out.split("final train loss ").nth(1).and_then(|r| r.split(',').next()).map(str::parse::<f64>);
        (out.lines().next().map(str::to_string), loss.and_then(Result::ok).unwrap_or(f64::NAN))
    };
    // Without the GEMM epilogues a fused step is the unfused one, bit for bit.
    let exact = |args: &[&str]| {
        let mut all = vec!["train", "ir-examples/mlp.json", "--device", "cuda-emu", "--steps", "3"];
        all.extend(args);
        let o = mpc(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).lines().find(|l| l.contains("final train loss")).map(str::to_string)
    };
    let plain = exact(&[]);
    assert!(plain.is_some());
    assert_eq!(exact(&["--fuse", "--gemm-epilogues", "off"]), plain);
    let ((head_f, loss_f), (head, loss)) = (train_in(true, "fp16"), train_in(false, "fp16"));
    assert_eq!(head_f, head);
    // The device's loss bound (docs/CUDA.md): half an f16 ulp, relative.
    assert!((loss_f - loss).abs() <= loss.abs() * 2f64.powi(-12), "fused {loss_f}, unfused {loss}");
    // In f32 the epilogues add in f32 as the unfused adds do; only the bias
    // gradients' summation order differs: the f32 loss bound, 1e-5.
    let ((_, loss_f), (_, loss)) = (train_in(true, "fp32"), train_in(false, "fp32"));
    assert!((loss_f - loss).abs() <= loss.abs() * 1e-5, "fp32 fused {loss_f}, unfused {loss}");
}

/// `mpc bench`: timed steps per precision with tokens/s and memory; a
/// language model's tokens are batch x sequence.
#[test]
fn bench_times_steps_per_precision() {
    let o = mpc(&[
        "bench",
        "ir-examples/gpt_block.json",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        "--precision",
        "bf16",
        "--precision",
        "fp32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["precision"], "bf16");
    assert_eq!(rows[1]["precision"], "fp32");
    for r in &rows {
        assert_eq!(r["tokens_per_step"], 8 * 32, "{r}");
        assert!(r["stats"]["median"].as_f64().unwrap() > 0.0 && r["planned_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    let o = mpc(&["bench", "ir-examples/mlp.json", "--steps", "0"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A table file's errors are reported as a graph file's are: every problem,
/// each with its line in a snippet and a suggestion for a misspelt class or
/// op; a syntax error with file:line:column.
#[test]
fn table_file_errors_point_into_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"fp32\": [\"gelux\", \"relu\"],\n  \"lwo\": [\"add\"],\n  \"low\": [\"adam\"]\n}\n")
        .unwrap();
    let o = mpc(&["lower", "ir-examples/mlp.json", "--table", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let flat = e.split_whitespace().filter(|w| !matches!(*w, "│" | "×" | "·")).collect::<Vec<_>>().join(" ");
    assert!(flat.contains("3 problems"), "{e}");
    assert!(flat.contains("no op is named `gelux`, did you mean `gelu`?"), "{e}");
    assert!(flat.contains("no class is named `lwo`, did you mean `low`?"), "{e}");
    assert!(flat.contains("`adam` belongs to loss scaling, gradient clipping or the optimizer"), "{e}");
    assert!(e.contains("bad.json:2:") && e.contains("bad.json:3:") && e.contains("bad.json:4:"), "{e}");
    std::fs::write(&bad, "{\"fp32\": [gelu]}").unwrap();
    let o = mpc(&["train", "ir-examples/mlp.json", "--steps", "1", "--table", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.json:1:11"), "{}", stderr(&o));
}

/// `MPC_TIMINGS=1` reports every phase of a lowering on stderr, and the
/// streamed JSON written to a file is the JSON written to stdout.
#[test]
fn timings_name_every_phase_and_the_streamed_file_is_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let o = Command::new(env!("CARGO_BIN_EXE_mpc"))
        .args(["lower", "ir-examples/mlp.json", "-o", out.to_str().unwrap()])
        .env("MPC_TIMINGS", "1")
        .output()
        .expect("mpc runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    for phase in
        ["read", "parse", "verify", "grad", "autocast", "loss-scale", "master-weights", "cleanup", "emit+write"]
    {
        assert!(e.lines().any(|l| l.starts_with(&format!("mpc-timings: {phase} "))), "{phase}: {e}");
    }
    let o = mpc(&["lower", "ir-examples/mlp.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("mpc-timings"), "timings only when asked");
    assert_eq!(std::fs::read(&out).unwrap(), o.stdout);
}

/// The ONNX path reports its own phases, in the order they run.
#[test]
fn timings_name_every_phase_of_an_onnx_lowering() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let o = Command::new(env!("CARGO_BIN_EXE_mpc"))
        .args(["lower", "tests/data/onnx/light_squeezenet.onnx", "--emit", "onnx", "-o", out.to_str().unwrap()])
        .env("MPC_TIMINGS", "1")
        .output()
        .expect("mpc runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    let phases: Vec<&str> =
        e.lines().filter_map(|l| l.strip_prefix("mpc-timings: ")?.split_whitespace().next()).collect();
    assert_eq!(
        phases,
        ["phase", "read", "decode", "import", "autocast", "cleanup", "export", "encode", "write"],
        "{e}"
    );
}

/// `compare --lr-schedule` trains every mode under the schedule (it took
/// only the graph's) and records it in compare.json; a bad one is a usage
/// error.
#[test]
fn compare_takes_a_learning_rate_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str, extra: &[&str]| -> serde_json::Value {
        let out = dir.path().join(out);
        let mut args = vec!["compare", "ir-examples/regression_mse.json", "--steps", "3", "--device", "cpu"];
        args.extend_from_slice(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        let o = mpc(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap()
    };
    let plain = run("plain", &[]);
    let warm = run("warm", &["--lr-schedule", "cosine:warmup=3,total=10,min=0"]);
    assert_eq!(warm["lr_schedule"], "cosine:warmup=3,total=10,min=0");
    assert!(plain["lr_schedule"].is_null());
    // A constant schedule trains as the graph does, bit for bit; a warmup from
    // a rate of 0 trains otherwise.
    let constant = run("constant", &["--lr-schedule", "constant"]);
    let loss = |v: &serde_json::Value| v["modes"][0]["final_loss"].as_f64().unwrap();
    assert_eq!(loss(&constant), loss(&plain));
    assert_ne!(loss(&warm), loss(&plain));
    let o = mpc(&["compare", "ir-examples/regression_mse.json", "--lr-schedule", "cosine:warmup=-1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
