//! Bad input never panics or hangs: `parse_str` and `verify` answer every
//! text, however broken, with `Ok` or `Err`.
//!
//! Property tests feed random and mutated graphs (well over 10,000 cases in
//! all, see [`CASES`]); deterministic tests pin specific nasty inputs and time
//! a few pathological ones. Whenever a text parses, `verify` runs on it too;
//! `parse(emit(g)) == g` must hold for every graph that verifies, and the
//! emitted form of a graph that parses but does not verify must parse again.
//!
//! Every input is bounded in size, so no single case can take long; the
//! large pathological inputs run on a watchdog thread (`pathological_*`).
//! Proptest writes no regression files (known failures are pinned by the
//! `regression_*` tests). `MPC_FUZZ_MULTIPLIER=10` runs ten times the cases.

use std::path::Path;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mpc::OpKind;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------
// The check every input goes through.
// ---------------------------------------------------------------------------

/// Parses `text`; if it parses, verifies the graph and checks that it
/// round-trips through the JSON emitter. Errors are rendered (their `Display`
/// indexes into the problem list, so it must not be empty). A panic fails
/// the case with the panic message and the input text.
fn check(text: &str) -> Result<(), TestCaseError> {
    match std::panic::catch_unwind(|| check_inner(text)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("panicked: {msg}\n--- input:\n{}", clip_long(text))))
        }
    }
}

fn check_inner(text: &str) -> Result<(), TestCaseError> {
    same_as_two_step(text)?;
    let g = match mpc::parse_str(text) {
        Ok(g) => g,
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!shown.is_empty());
            return Ok(());
        }
    };
    match mpc::verify(&g) {
        Ok(()) => round_trip(&g),
        Err(e) => {
            prop_assert!(!e.0.is_empty(), "verify returned an empty error");
            let _ = e.to_string();
            // The emitter must cope with a graph that parsed but does not
            // verify, and write something that parses again; equality is
            // only promised for verified graphs (see
            // `known_bug_gradient_order_of_unverified_graph`).
            let emitted = mpc::format::emit::json::to_string(&g);
            if let Err(e) = mpc::parse_str(&emitted) {
                return Err(TestCaseError::fail(format!(
                    "the emitted form of a parsed (unverified) graph does not parse: {e}\n--- emitted:\n{emitted}"
                )));
            }
            Ok(())
        }
    }
}

/// `parse_str` (which reads a valid file in one streaming pass) answers as
/// the two-step `parse_raw` + `from_raw` does: the same nodes at the same
/// indices, wired in the same order, or the same error.
fn same_as_two_step(text: &str) -> Result<(), TestCaseError> {
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
    let one = mpc::parse_str(text);
    let two = mpc::format::parse::parse_raw(text)
        .and_then(|raw| mpc::format::parse::from_raw(&raw).map_err(mpc::ParseError::Invalid));
    match (&one, &two) {
        (Ok(a), Ok(b)) => prop_assert_eq!(layout(a), layout(b), "streaming and two-step parses differ"),
        (Err(a), Err(b)) => prop_assert_eq!(a, b),
        _ => prop_assert!(false, "streaming: {:?}\ntwo-step: {:?}", one.as_ref().err(), two.as_ref().err()),
    }
    Ok(())
}

/// `parse(emit(g)) == g`.
fn round_trip(g: &mpc::Graph) -> Result<(), TestCaseError> {
    let emitted = mpc::format::emit::json::to_string(g);
    same_as_two_step(&emitted)?;
    let again = match mpc::parse_str(&emitted) {
        Ok(again) => again,
        Err(e) => {
            return Err(TestCaseError::fail(format!("the emitted graph does not parse: {e}\n--- emitted:\n{emitted}")))
        }
    };
    if again != *g {
        let re = mpc::format::emit::json::to_string(&again);
        return Err(TestCaseError::fail(format!(
            "parse(emit(g)) != g\n--- emit(g):\n{emitted}\n--- emit(parse(emit(g))):\n{re}"
        )));
    }
    Ok(())
}

/// [`check`] for the deterministic tests.
fn must_not_panic(text: &str) {
    if let Err(e) = check(text) {
        panic!("{e}");
    }
}

/// Asserts that `text` is rejected and returns the error message.
fn must_reject(text: &str) -> String {
    match mpc::parse_str(text) {
        Ok(g) => match mpc::verify(&g) {
            Ok(()) => panic!("accepted: {}", clip(text)),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn clip(s: &str) -> String {
    clip_to(s, 300)
}

/// Inputs in failure messages: whole unless huge.
fn clip_long(s: &str) -> String {
    clip_to(s, 20_000)
}

fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

// ---------------------------------------------------------------------------
// Seed graphs: every file in ir-examples/ plus a few embedded ones that use
// the ops the examples do not.
// ---------------------------------------------------------------------------

/// Batch norm, both poolings, flatten, state and an update section.
const SEED_CONV: &str = r#"{
  "format": "mpc/1",
  "name": "convnet",
  "inputs": [
    {"name": "img", "shape": [8, 1, 8, 8]},
    {"name": "labels", "shape": [8], "dtype": "i64"}
  ],
  "params": [
    {"name": "k1", "shape": [4, 1, 3, 3], "init": {"kind": "kaiming_normal", "gain": 1.4}},
    {"name": "g1", "shape": [4], "init": {"kind": "ones"}},
    {"name": "be1", "shape": [4], "init": {"kind": "zeros"}},
    {"name": "fc", "shape": [64, 10], "init": {"kind": "uniform", "low": -0.1, "high": 0.1}}
  ],
  "state": [
    {"name": "rm", "shape": [4]},
    {"name": "scale", "shape": [], "init": {"kind": "constant", "value": 65536.0}}
  ],
  "forward": [
    {"name": "c1", "op": "conv2d", "inputs": ["img", "k1"], "stride": [1, 1], "padding": [1, 1]},
    {"name": "bn1", "op": "batch_norm", "inputs": ["c1", "g1", "be1"], "eps": 1e-5, "momentum": 0.1, "outputs": ["bn1", "bn1_mean", "bn1_var"]},
    {"name": "r1", "op": "relu", "inputs": ["bn1"]},
    {"name": "p1", "op": "max_pool2d", "inputs": ["r1"], "kernel": [2, 2]},
    {"name": "a1", "op": "avg_pool2d", "inputs": ["p1"], "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1]},
    {"name": "f1", "op": "flatten", "inputs": ["a1"], "axis": 1},
    {"name": "logits", "op": "matmul", "inputs": ["f1", "fc"], "precision": "fp32"},
    {"name": "loss", "op": "cross_entropy", "inputs": ["logits", "labels"]}
  ],
  "loss": "loss",
  "update": [
    {"name": "rm_old", "op": "scale", "inputs": ["rm"], "value": 0.9},
    {"name": "rm_new_part", "op": "scale", "inputs": ["bn1_mean"], "value": 0.1},
    {"name": "rm_new", "op": "add", "inputs": ["rm_old", "rm_new_part"]},
    {"name": "scale_new", "op": "identity", "inputs": ["scale"], "role": "scaler"}
  ],
  "updates": {"rm": "rm_new", "scale": "scale_new"},
  "outputs": ["bn1_var"],
  "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.9, "clip_grad_norm": 1.0, "accumulate": 2}
}"#;

/// Embedding, layer norm, casts, transpose, causal softmax, dropout, reshape,
/// reductions, constants and broadcasts.
const SEED_ATTN: &str = r#"{
  "format": "mpc/1",
  "name": "attn",
  "inputs": [
    {"name": "ids", "shape": [2, 4], "dtype": "i32"},
    {"name": "target", "shape": [2, 4, 8]}
  ],
  "params": [
    {"name": "emb", "shape": [16, 8], "init": {"kind": "normal", "std": 0.02}},
    {"name": "ln_g", "shape": [8], "init": {"kind": "ones"}},
    {"name": "ln_b", "shape": [8], "init": {"kind": "zeros"}},
    {"name": "wq", "shape": [8, 8], "init": {"kind": "xavier_uniform", "gain": 1.0}},
    {"name": "wk", "shape": [8, 8], "init": {"kind": "normal", "mean": 0.0, "std": 0.02}},
    {"name": "wv", "shape": [8, 8], "init": {"kind": "constant", "value": 0.01}}
  ],
  "forward": [
    {"name": "h", "op": "embedding", "inputs": ["emb", "ids"]},
    {"name": "ln", "op": "layer_norm", "inputs": ["h", "ln_g", "ln_b"], "eps": 1e-5},
    {"name": "hh", "op": "cast", "inputs": ["ln"], "to": "bf16"},
    {"name": "wq16", "op": "cast", "inputs": ["wq"], "to": "bf16"},
    {"name": "q", "op": "matmul", "inputs": ["hh", "wq16"], "precision": "low"},
    {"name": "q32", "op": "cast", "inputs": ["q"], "to": "f32"},
    {"name": "k", "op": "matmul", "inputs": ["ln", "wk"]},
    {"name": "v", "op": "matmul", "inputs": ["ln", "wv"]},
    {"name": "kt", "op": "transpose", "inputs": ["k"], "perm": [0, 2, 1]},
    {"name": "s", "op": "matmul", "inputs": ["q32", "kt"]},
    {"name": "ss", "op": "scale", "inputs": ["s"], "value": 0.35355339},
    {"name": "att", "op": "softmax", "inputs": ["ss"], "axis": -1, "causal": true},
    {"name": "o", "op": "matmul", "inputs": ["att", "v"]},
    {"name": "od", "op": "dropout", "inputs": ["o"], "p": 0.1, "seed": 7},
    {"name": "r", "op": "reshape", "inputs": ["od"], "shape": [-1, 8]},
    {"name": "t2", "op": "reshape", "inputs": ["target"], "shape": [8, 8]},
    {"name": "mse", "op": "mse", "inputs": ["r", "t2"]},
    {"name": "ls", "op": "log_softmax", "inputs": ["r"], "axis": 1},
    {"name": "red", "op": "reduce_mean", "inputs": ["ls"], "axes": [0, 1], "keepdims": false},
    {"name": "c", "op": "constant", "shape": [], "value": 0.5, "dtype": "f32"},
    {"name": "reg", "op": "mul", "inputs": ["red", "c"]},
    {"name": "total", "op": "sub", "inputs": ["mse", "reg"]},
    {"name": "ex", "op": "exp", "inputs": ["total"]},
    {"name": "lg", "op": "log", "inputs": ["ex"]},
    {"name": "dv", "op": "div", "inputs": ["lg", "c"]},
    {"name": "bt", "op": "broadcast_to", "inputs": ["ln_b"], "shape": [4, 8]},
    {"name": "st", "op": "sum_to", "inputs": ["bt"], "shape": [8]},
    {"name": "rs", "op": "reduce_sum", "inputs": ["st"], "axes": [-1], "keepdims": true},
    {"name": "sg", "op": "sigmoid", "inputs": ["rs"]}
  ],
  "loss": "total",
  "outputs": ["mse", "att", "sg", "dv"]
}"#;

/// Every `*_grad` op, with a `gradients` map.
const SEED_GRADS: &str = r#"{
  "format": "mpc/1",
  "name": "grads",
  "inputs": [
    {"name": "x", "shape": [2, 3, 6, 6]},
    {"name": "labels", "shape": [2], "dtype": "i32"},
    {"name": "ids", "shape": [2, 5], "dtype": "i32"}
  ],
  "params": [
    {"name": "w", "shape": [4, 3, 3, 3], "init": {"kind": "kaiming_normal"}},
    {"name": "g", "shape": [4], "init": {"kind": "ones"}},
    {"name": "b", "shape": [4], "init": {"kind": "zeros"}},
    {"name": "emb", "shape": [10, 4], "init": {"kind": "normal", "std": 1.0}},
    {"name": "lg", "shape": [4], "init": {"kind": "ones"}}
  ],
  "forward": [
    {"name": "c", "op": "conv2d", "inputs": ["x", "w"], "padding": [1, 1]},
    {"name": "bn", "op": "batch_norm", "inputs": ["c", "g", "b"]},
    {"name": "r", "op": "relu", "inputs": ["bn"]},
    {"name": "mp", "op": "max_pool2d", "inputs": ["r"], "kernel": [2, 2]},
    {"name": "ap", "op": "avg_pool2d", "inputs": ["mp"], "kernel": [3, 3], "stride": [3, 3]},
    {"name": "fl", "op": "flatten", "inputs": ["ap"]},
    {"name": "ge", "op": "gelu", "inputs": ["fl"]},
    {"name": "e", "op": "embedding", "inputs": ["emb", "ids"]},
    {"name": "ln", "op": "layer_norm", "inputs": ["e", "lg", "lg"]},
    {"name": "sm", "op": "softmax", "inputs": ["ln"]},
    {"name": "lsm", "op": "log_softmax", "inputs": ["ge"], "axis": -1},
    {"name": "ce", "op": "cross_entropy", "inputs": ["ge", "labels"]},
    {"name": "th", "op": "tanh", "inputs": ["ge"]},
    {"name": "sg", "op": "sigmoid", "inputs": ["ge"]},
    {"name": "dr", "op": "dropout", "inputs": ["ge"], "p": 0.5}
  ],
  "loss": "ce",
  "backward": [
    {"name": "d0", "op": "seed", "inputs": ["ce"]},
    {"name": "dge", "op": "cross_entropy_grad", "inputs": ["d0", "ge", "labels"]},
    {"name": "dsg", "op": "sigmoid_grad", "inputs": ["dge", "sg"]},
    {"name": "dth", "op": "tanh_grad", "inputs": ["dge", "th"]},
    {"name": "dgl", "op": "gelu_grad", "inputs": ["dge", "fl"]},
    {"name": "dls", "op": "log_softmax_grad", "inputs": ["dge", "lsm"], "axis": -1},
    {"name": "ddr", "op": "dropout_grad", "inputs": ["dge", "dr:1"], "p": 0.5},
    {"name": "dfl", "op": "reshape", "inputs": ["dgl"], "shape": [2, 4, 1, 1]},
    {"name": "dmp", "op": "avg_pool2d_grad", "inputs": ["dfl"], "kernel": [3, 3], "stride": [3, 3], "shape": [2, 4, 3, 3]},
    {"name": "dr_", "op": "max_pool2d_grad", "inputs": ["dmp", "r"], "kernel": [2, 2]},
    {"name": "dbn", "op": "relu_grad", "inputs": ["dr_", "r"]},
    {"name": "dc", "op": "batch_norm_grad", "inputs": ["dbn", "c", "g", "bn:1", "bn:2"], "eps": 1e-5},
    {"name": "dx", "op": "conv2d_grad_input", "inputs": ["dc", "w"], "stride": [1, 1], "padding": [1, 1], "shape": [2, 3, 6, 6]},
    {"name": "dw", "op": "conv2d_grad_weight", "inputs": ["dc", "x"], "padding": [1, 1], "kernel": [3, 3]},
    {"name": "dsm", "op": "softmax_grad", "inputs": ["sm", "sm"]},
    {"name": "dln", "op": "layer_norm_grad", "inputs": ["dsm", "e", "lg", "ln:1", "ln:2"], "outputs": ["dln", "dlg", "dlb"]},
    {"name": "demb", "op": "embedding_grad", "inputs": ["dln", "ids"], "num_embeddings": 10},
    {"name": "dsum", "op": "sum_to", "inputs": ["dln"], "shape": [4]},
    {"name": "dbr", "op": "broadcast_to", "inputs": ["dsum"], "shape": [5, 4]}
  ],
  "gradients": {"w": "dw", "g": "dc:1", "b": "dc:2", "emb": "demb", "lg": "dlg"},
  "optimizer": {"kind": "adam", "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
}"#;

/// A regression head with `mse_grad` and an explicit SGD update.
const SEED_LINREG: &str = r#"{
  "format": "mpc/1",
  "name": "linreg",
  "inputs": [
    {"name": "x", "shape": [4, 3]},
    {"name": "t", "shape": [4, 2]}
  ],
  "params": [
    {"name": "w", "shape": [3, 2], "init": {"kind": "file"}}
  ],
  "state": [
    {"name": "mom", "shape": [3, 2]}
  ],
  "forward": [
    {"name": "y", "op": "matmul", "inputs": ["x", "w"]},
    {"name": "l", "op": "mse", "inputs": ["y", "t"]}
  ],
  "loss": "l",
  "backward": [
    {"name": "dl", "op": "seed", "inputs": ["l"]},
    {"name": "dy", "op": "mse_grad", "inputs": ["dl", "y", "t"]},
    {"name": "dw", "op": "matmul", "inputs": ["x", "dy"], "transpose_a": true}
  ],
  "gradients": {"w": "dw"},
  "update": [
    {"name": "m2", "op": "scale", "inputs": ["mom"], "value": 0.9},
    {"name": "m3", "op": "add", "inputs": ["m2", "dw"]},
    {"name": "step", "op": "scale", "inputs": ["m3"], "value": -0.01},
    {"name": "w_new", "op": "add", "inputs": ["w", "step"]}
  ],
  "updates": {"w": "w_new", "mom": "m3"}
}"#;

const EMBEDDED_SEEDS: [&str; 4] = [SEED_CONV, SEED_ATTN, SEED_GRADS, SEED_LINREG];

/// Every seed text: the ir-examples (sorted by file name), then the embedded ones.
fn seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir-examples");
        let mut paths: Vec<_> =
            std::fs::read_dir(&dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
        paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
        paths.sort();
        let mut out: Vec<String> = paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
        out.extend(EMBEDDED_SEEDS.iter().map(|s| s.to_string()));
        out
    })
}

fn seed_values() -> &'static [Value] {
    static VALUES: OnceLock<Vec<Value>> = OnceLock::new();
    VALUES.get_or_init(|| seeds().iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
}

fn valid_op_names() -> Vec<&'static str> {
    OpKind::ALL.iter().map(|k| k.name()).collect()
}

// ---------------------------------------------------------------------------
// Value strategies.
// ---------------------------------------------------------------------------

/// A dimension: mostly small, sometimes zero, negative or huge.
fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        12 => 1i64..=8,
        1 => Just(0i64),
        1 => -3i64..=-1,
        1 => select(vec![i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1]),
        2 => select(vec![
            1i64 << 16,
            1 << 24,
            1 << 31,
            1 << 32,
            1 << 47,
            1 << 48,
            (1 << 48) + 1,
            1 << 62,
        ]),
        1 => any::<i64>(),
    ]
}

/// A shape: usually short; sometimes long enough that its product overflows.
fn shape() -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        10 => prop::collection::vec(dim(), 0..5),
        1 => prop::collection::vec(dim(), 5..80),
        1 => (1usize..200, dim()).prop_map(|(n, d)| vec![d; n]),
        1 => (1usize..300).prop_map(|n| vec![1; n]),
    ]
}

/// A shape for the attribute fuzzer's sources: small ranks and dims, so that
/// ops often type-check and reach their deeper rules.
fn small_shape() -> impl Strategy<Value = Vec<i64>> {
    let d = prop_oneof![
        20 => select(vec![1i64, 2, 3, 4, 6, 8]),
        1 => select(vec![1i64 << 24, 1 << 48, i64::MAX]),
    ];
    prop::collection::vec(d, 0..6)
}

fn valid_dtype() -> impl Strategy<Value = &'static str> {
    select(vec!["f32", "f16", "bf16", "i32", "i64", "bool"])
}

/// A dtype field: usually valid, sometimes a wrong string or a wrong type.
fn dtype() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => valid_dtype().prop_map(|s| json!(s)),
        1 => select(vec!["f8", "F32", "float32", "", "f64", "int", "f32 ", "fp16", "u8"])
            .prop_map(|s| json!(s)),
        1 => wrong_value(),
    ]
    .boxed()
}

/// JSON values of the wrong type for just about any field.
fn wrong_value() -> BoxedStrategy<Value> {
    let fixed = vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(-0.0),
        json!(1e300),
        json!(-1e300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("mpc/1"),
        json!("x"),
        json!("relu"),
        json!("f32"),
        json!("\u{0}"),
        json!("\u{feff}"),
        json!("é/~1~0"),
        json!([]),
        json!({}),
        json!([1, 2]),
        json!([[1], [2]]),
        json!(["x", "w"]),
        json!([null]),
        json!({"kind": "zeros"}),
        json!({"name": "x"}),
        json!({"a": 1}),
    ];
    prop_oneof![
        6 => select(fixed),
        1 => any::<i64>().prop_map(|v| json!(v)),
        1 => any::<u64>().prop_map(|v| json!(v)),
        1 => any::<f64>().prop_map(|v| json!(v)),
        1 => "[a-z0-9:_ ]{0,12}".prop_map(|s| json!(s)),
        1 => (1usize..60).prop_map(nested_arrays),
    ]
    .boxed()
}

fn nested_arrays(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// An axis: small, negative, or extreme.
fn axis() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -6i64..=6,
        1 => select(vec![i64::MIN, i64::MIN + 1, i64::MAX, -(1 << 40), 1 << 40]),
        1 => any::<i64>(),
    ]
}

fn float_edge() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            0.1,
            0.999,
            1e-5,
            1e-300,
            5e-324,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
        ]),
        1 => any::<f64>().prop_filter("finite", |v| v.is_finite()),
    ]
}

fn u64_edge() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..=9,
        2 => select(vec![
            u32::MAX as u64,
            1 << 32,
            1 << 48,
            1 << 62,
            (1 << 63) - 1,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
        1 => any::<u64>(),
    ]
}

/// A random value for attribute `name`, of the right JSON type 9 times in 10.
fn attr_value(name: &str) -> BoxedStrategy<Value> {
    let right: BoxedStrategy<Value> = match name {
        "transpose_a" | "transpose_b" | "causal" | "keepdims" | "count_include_pad" => {
            any::<bool>().prop_map(|b| json!(b)).boxed()
        }
        "axis" => axis().prop_map(|a| json!(a)).boxed(),
        "axes" | "perm" => prop::collection::vec(axis(), 0..7).prop_map(|a| json!(a)).boxed(),
        "shape" | "sizes" => shape().prop_map(|s| json!(s)).boxed(),
        "dtype" | "to" => dtype(),
        "value" | "p" | "eps" | "momentum" | "alpha" | "beta" | "bias" => float_edge().prop_map(|v| json!(v)).boxed(),
        "seed" | "num_embeddings" | "groups" | "size" => u64_edge().prop_map(|v| json!(v)).boxed(),
        "kernel" | "stride" | "padding" | "padding_end" | "dilation" => {
            [u64_edge(), u64_edge()].prop_map(|v| json!(v)).boxed()
        }
        _ => wrong_value(),
    };
    prop_oneof![19 => right, 1 => wrong_value()].boxed()
}

/// Every attribute field a node may carry (the parser's own list, so new
/// attributes are fuzzed too).
const ATTR_FIELDS: [&str; mpc::format::attrs::N_ATTRS] = mpc::format::attrs::ATTRS;

/// Keys of the file's objects, plus a few that belong nowhere.
/// The top-level keys (the parser's own list), then other keys of the file's objects.
const OTHER_FIELDS: [&str; 14] = [
    "op",
    "shape",
    "dtype",
    "init",
    "kind",
    "role",
    "precision",
    "axis",
    "kernel",
    "padding",
    "lr",
    "",
    "Name",
    "__proto__",
];

fn field_names() -> Vec<&'static str> {
    mpc::format::parse::TOP_LEVEL_KEYS.iter().chain(OTHER_FIELDS.iter()).copied().collect()
}

/// Arbitrary JSON, a few levels deep, with keys that look like the format's.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|v| json!(v)),
        float_edge().prop_map(|v| json!(v)),
        "[a-z0-9/:._ -]{0,10}".prop_map(Value::String),
        select(valid_op_names()).prop_map(|s| json!(s)),
        Just(json!("mpc/1")),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((select(field_names()), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

// ---------------------------------------------------------------------------
// Text mutations.
// ---------------------------------------------------------------------------

/// Strings that change how JSON reads.
const JSON_BITS: [&str; 30] = [
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "0",
    "-",
    "1e999",
    "-1e999",
    "1e-999",
    "null",
    "true",
    " ",
    "\n",
    "\u{0}",
    "é",
    "\u{feff}",
    "\\u0000",
    "\\ud800",
    "\"\":",
    "[[[[",
    "]]]]",
    "{}",
    "[]",
    "18446744073709551616",
    "-9223372036854775809",
    "NaN",
];

#[derive(Clone, Debug)]
enum Edit {
    Delete(Index, usize),
    Insert(Index, &'static str),
    Replace(Index, &'static str),
    Duplicate(Index, Index),
    Swap(Index, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 1usize..6).prop_map(|(i, n)| Edit::Delete(i, n)),
        3 => (any::<Index>(), select(JSON_BITS.to_vec())).prop_map(|(i, s)| Edit::Insert(i, s)),
        3 => (any::<Index>(), select(JSON_BITS.to_vec())).prop_map(|(i, s)| Edit::Replace(i, s)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Duplicate(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
    ]
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut cs: Vec<char> = text.chars().collect();
    for e in edits {
        let n = cs.len();
        match e {
            Edit::Delete(i, k) if n > 0 => {
                let at = i.index(n);
                cs.drain(at..(at + k).min(n));
            }
            Edit::Insert(i, s) => {
                let at = i.index(n + 1);
                cs.splice(at..at, s.chars());
            }
            Edit::Replace(i, s) if n > 0 => {
                let at = i.index(n);
                cs.splice(at..at + 1, s.chars());
            }
            Edit::Duplicate(a, b) if n > 0 => {
                let (x, y) = (a.index(n), b.index(n));
                let lo = x.min(y);
                let hi = (x.max(y) + 1).min(lo + 400);
                let piece: Vec<char> = cs[lo..hi].to_vec();
                cs.splice(hi..hi, piece);
            }
            Edit::Swap(a, b) if n > 0 => {
                let (x, y) = (a.index(n), b.index(n));
                cs.swap(x, y);
            }
            _ => {}
        }
    }
    cs.into_iter().collect()
}

// ---------------------------------------------------------------------------
// JSON-value mutations (wrong types for fields, missing and unknown fields).
// ---------------------------------------------------------------------------

fn pointers(v: &Value, cur: &str, out: &mut Vec<String>) {
    out.push(cur.to_string());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(c, &format!("{cur}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, &format!("{cur}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum ValueEdit {
    Replace(Index, Value),
    Remove(Index),
    AddKey(Index, &'static str, Value),
    DuplicateItem(Index),
}

fn value_edit() -> impl Strategy<Value = ValueEdit> {
    prop_oneof![
        6 => (any::<Index>(), wrong_value()).prop_map(|(i, v)| ValueEdit::Replace(i, v)),
        2 => any::<Index>().prop_map(ValueEdit::Remove),
        2 => (any::<Index>(), select(field_names().into_iter().chain(ATTR_FIELDS.iter().copied()).collect::<Vec<_>>()), wrong_value())
            .prop_map(|(i, k, v)| ValueEdit::AddKey(i, k, v)),
        1 => any::<Index>().prop_map(ValueEdit::DuplicateItem),
    ]
}

fn apply_value_edit(root: &mut Value, e: &ValueEdit) {
    let mut ptrs = Vec::new();
    pointers(root, "", &mut ptrs);
    let pick = |i: &Index| ptrs[i.index(ptrs.len())].clone();
    match e {
        ValueEdit::Replace(i, v) => {
            let p = pick(i);
            if let Some(slot) = root.pointer_mut(&p) {
                *slot = v.clone();
            }
        }
        ValueEdit::Remove(i) => {
            let p = pick(i);
            let Some((parent, last)) = p.rsplit_once('/') else { return };
            let key = last.replace("~1", "/").replace("~0", "~");
            match root.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.shift_remove(&key);
                }
                Some(Value::Array(a)) => {
                    if let Ok(k) = key.parse::<usize>() {
                        if k < a.len() {
                            a.remove(k);
                        }
                    }
                }
                _ => {}
            }
        }
        ValueEdit::AddKey(i, k, v) => {
            if let Some(Value::Object(m)) = root.pointer_mut(&pick(i)) {
                m.insert(k.to_string(), v.clone());
            }
        }
        ValueEdit::DuplicateItem(i) => {
            if let Some(Value::Array(a)) = root.pointer_mut(&pick(i)) {
                if let Some(first) = a.first().cloned() {
                    a.push(first);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Structurally generated graphs: random op names and input names.
// ---------------------------------------------------------------------------

const SOURCES: [&str; 4] = ["x", "w", "ids", "st"];

/// A reference to a value by name.
#[derive(Clone, Debug)]
enum Ref {
    Source(Index),
    /// Any node, earlier or later (a forward reference) or itself.
    Node(Index),
    Itself,
    Dangling(u8),
    /// A numbered output of a node (`n3:1`), which may not exist.
    Slot(Index, u8),
    Weird(&'static str),
    /// Exactly node `i` (for the rings).
    At(usize),
}

fn arb_ref() -> impl Strategy<Value = Ref> {
    prop_oneof![
        8 => any::<Index>().prop_map(Ref::Node),
        4 => any::<Index>().prop_map(Ref::Source),
        1 => Just(Ref::Itself),
        1 => any::<u8>().prop_map(Ref::Dangling),
        1 => (any::<Index>(), 0u8..4).prop_map(|(i, k)| Ref::Slot(i, k)),
        1 => select(vec!["", " ", "x ", "X", "n0:", ":1", "n0:01", "a/b", "~0", "\u{0}", "é"]).prop_map(Ref::Weird),
    ]
}

#[derive(Clone, Debug)]
enum NodeName {
    Own,
    DupOf(Index),
    Source(Index),
    Weird(&'static str),
}

#[derive(Clone, Debug)]
struct SNode {
    name: NodeName,
    op: String,
    inputs: Vec<Ref>,
    section: u8,
    role: Option<&'static str>,
    outputs: Option<Vec<Ref>>,
}

const UNARY: [&str; 7] = ["relu", "gelu", "tanh", "sigmoid", "exp", "log", "identity"];
const BINARY: [&str; 5] = ["add", "sub", "mul", "div", "matmul"];

fn snode() -> impl Strategy<Value = SNode> {
    let op_and_inputs = prop_oneof![
        8 => (select(UNARY.to_vec()), arb_ref()).prop_map(|(o, r)| (o.to_string(), vec![r])),
        5 => (select(BINARY.to_vec()), arb_ref(), arb_ref()).prop_map(|(o, a, b)| (o.to_string(), vec![a, b])),
        2 => (select(valid_op_names()), prop::collection::vec(arb_ref(), 0..6)).prop_map(|(o, r)| (o.to_string(), r)),
        1 => (
            select(vec!["", "Relu", "relu ", "RELU", "matmul2", "input", "param", "state", "unset", "seed", "\u{0}", "ｒｅｌｕ"]),
            prop::collection::vec(arb_ref(), 0..3)
        )
            .prop_map(|(o, r)| (o.to_string(), r)),
    ];
    let name = prop_oneof![
        20 => Just(NodeName::Own),
        2 => any::<Index>().prop_map(NodeName::DupOf),
        1 => any::<Index>().prop_map(NodeName::Source),
        1 => select(vec!["", "n0:1", "x:1", "a:b:c", "loss"]).prop_map(NodeName::Weird),
    ];
    let role = prop_oneof![
        20 => Just(None),
        1 => select(vec!["forward", "backward", "optimizer", "scaler", "nope"]).prop_map(Some),
    ];
    (
        name,
        op_and_inputs,
        prop_oneof![12 => Just(0u8), 2 => Just(1u8), 2 => Just(2u8)],
        role,
        prop::option::weighted(0.05, prop::collection::vec(arb_ref(), 0..4)),
    )
        .prop_map(|(name, (op, inputs), section, role, outputs)| SNode {
            name,
            op,
            inputs,
            section,
            role,
            outputs,
        })
}

#[derive(Clone, Debug)]
struct Structural {
    nodes: Vec<SNode>,
    /// Rewires nodes `start..start+len` into a ring: each reads the previous
    /// one and the first reads the last.
    ring: Option<(Index, usize)>,
    loss: Ref,
    gradients: Vec<(Ref, Ref)>,
    updates: Vec<(Ref, Ref)>,
    outputs: Vec<Ref>,
    shapes: [Vec<i64>; 4],
    /// Clean graphs have only well-formed unary and binary nodes that read
    /// earlier nodes (so they often parse and verify, and cycles come only
    /// from the ring); the others keep every kind of broken reference.
    clean: bool,
    /// Write the nodes in reverse, so that every reference points forward.
    reverse: bool,
}

fn structural() -> impl Strategy<Value = Structural> {
    let src_shape = prop_oneof![6 => Just(vec![4i64, 4]), 1 => shape()];
    (
        prop::collection::vec(snode(), 1..30),
        prop::option::weighted(0.3, (any::<Index>(), 1usize..30)),
        arb_ref(),
        prop::collection::vec((arb_ref(), arb_ref()), 0..3),
        prop::collection::vec((arb_ref(), arb_ref()), 0..3),
        prop::collection::vec(arb_ref(), 0..3),
        [src_shape.clone(), src_shape.clone(), src_shape.clone(), src_shape],
        prop::bool::weighted(0.5),
        any::<bool>(),
    )
        .prop_map(|(nodes, ring, loss, gradients, updates, outputs, shapes, clean, reverse)| Structural {
            nodes,
            ring,
            loss,
            gradients,
            updates,
            outputs,
            shapes,
            clean,
            reverse,
        })
}

/// Clean mode: well-formed ops, and references to earlier nodes or to the
/// float sources only.
fn sanitize(nodes: &mut [SNode], forward_only: bool) {
    for (k, node) in nodes.iter_mut().enumerate() {
        let want = if UNARY.contains(&node.op.as_str()) {
            1
        } else if BINARY.contains(&node.op.as_str()) {
            2
        } else {
            node.op = "relu".into();
            1
        };
        node.inputs.resize(want, Ref::Weird("x"));
        for r in &mut node.inputs {
            *r = match r {
                Ref::Node(i) | Ref::Slot(i, _) if k > 0 => Ref::At(i.index(k)),
                Ref::Source(i) => Ref::Weird(["x", "w", "st"][i.index(3)]),
                _ if k > 0 => Ref::At(k - 1),
                _ => Ref::Weird("x"),
            };
        }
        node.name = NodeName::Own;
        node.role = None;
        node.outputs = None;
        if forward_only {
            node.section = 0;
        }
    }
}

impl Structural {
    fn to_json(&self) -> Value {
        let n = self.nodes.len();
        let mut nodes = self.nodes.clone();
        if self.clean {
            // Forward-only unless the first node says otherwise.
            let forward_only = nodes[0].section == 0;
            sanitize(&mut nodes, forward_only);
        }
        if let Some((start, len)) = &self.ring {
            let start = start.index(n);
            let len = (*len).min(n - start).max(1);
            for k in 0..len {
                let prev = start + (k + len - 1) % len;
                let node = &mut nodes[start + k];
                node.op = "relu".into();
                node.name = NodeName::Own;
                node.inputs = vec![Ref::At(prev)];
            }
        }
        let own = |i: usize| format!("n{i}");
        let name_of = |i: usize| match &nodes[i].name {
            NodeName::Own => own(i),
            NodeName::DupOf(j) => own(j.index(n)),
            NodeName::Source(j) => SOURCES[j.index(SOURCES.len())].to_string(),
            NodeName::Weird(s) => s.to_string(),
        };
        let resolve = |r: &Ref, me: Option<usize>| -> String {
            match r {
                Ref::Source(i) => SOURCES[i.index(SOURCES.len())].to_string(),
                Ref::Node(i) => name_of(i.index(n)),
                Ref::Itself => me.map(name_of).unwrap_or_else(|| "self".into()),
                Ref::Dangling(k) => format!("ghost{k}"),
                Ref::Slot(i, k) => format!("{}:{k}", name_of(i.index(n))),
                Ref::Weird(s) => s.to_string(),
                Ref::At(i) => name_of(*i),
            }
        };
        let mut sections: [Vec<Value>; 3] = Default::default();
        for (i, node) in nodes.iter().enumerate() {
            let mut o = Map::new();
            o.insert("name".into(), json!(name_of(i)));
            o.insert("op".into(), json!(node.op));
            let ins: Vec<String> = node.inputs.iter().map(|r| resolve(r, Some(i))).collect();
            o.insert("inputs".into(), json!(ins));
            if let Some(outs) = &node.outputs {
                let outs: Vec<String> = outs.iter().map(|r| resolve(r, Some(i))).collect();
                o.insert("outputs".into(), json!(outs));
            }
            if let Some(role) = node.role {
                o.insert("role".into(), json!(role));
            }
            sections[node.section as usize].push(Value::Object(o));
        }
        let pairs = |ps: &[(Ref, Ref)]| -> Map<String, Value> {
            ps.iter().map(|(a, b)| (resolve(a, None), json!(resolve(b, None)))).collect()
        };
        let [mut forward, mut backward, mut update] = sections;
        let mut loss = resolve(&self.loss, None);
        let (mut gradients, mut updates) = (pairs(&self.gradients), pairs(&self.updates));
        if self.clean {
            forward.push(json!({"name": "loss", "op": "reduce_sum", "inputs": [name_of(n - 1)], "axes": [0, 1]}));
            loss = "loss".into();
            gradients.clear();
            updates.clear();
        }
        if self.reverse {
            forward.reverse();
            backward.reverse();
            update.reverse();
        }
        let mut g = json!({
            "format": "mpc/1",
            "name": "structural",
            "inputs": [
                {"name": "x", "shape": self.shapes[0]},
                {"name": "ids", "shape": self.shapes[2], "dtype": "i32"}
            ],
            "params": [
                {"name": "w", "shape": self.shapes[1], "init": {"kind": "normal", "std": 0.02}}
            ],
            "state": [{"name": "st", "shape": self.shapes[3]}],
            "forward": forward,
            "loss": loss,
            "outputs": self.outputs.iter().map(|r| resolve(r, None)).collect::<Vec<_>>(),
        });
        let m = g.as_object_mut().expect("an object");
        if !backward.is_empty() || !gradients.is_empty() {
            m.insert("backward".into(), Value::Array(backward));
            m.insert("gradients".into(), Value::Object(gradients));
        }
        if !update.is_empty() {
            m.insert("update".into(), Value::Array(update));
        }
        if !updates.is_empty() {
            m.insert("updates".into(), Value::Object(updates));
        }
        g
    }
}

// ---------------------------------------------------------------------------
// The attribute fuzzer: chains of random ops with random attributes over
// small random sources, so that shape inference sees odd attributes.
// ---------------------------------------------------------------------------

/// The fewest inputs an op takes (the op table's).
fn arity(kind: OpKind) -> usize {
    kind.info().arity().0
}

/// The outputs an op makes (one for split: its sizes are random).
fn num_outputs(kind: OpKind) -> usize {
    match kind.info().outputs {
        mpc::ir::opinfo::Outputs::Fixed(n) => n,
        mpc::ir::opinfo::Outputs::PerSize => 1,
    }
}

#[derive(Clone, Debug)]
struct ANode {
    kind: OpKind,
    attrs: Vec<(String, Value)>,
    picks: Vec<Index>,
    exact_arity: bool,
    extra_inputs: usize,
}

fn anode() -> impl Strategy<Value = ANode> {
    select(OpKind::ALL.to_vec()).prop_flat_map(|kind| {
        let allowed = mpc::format::attrs::allowed(kind);
        let attrs: Vec<BoxedStrategy<Option<(String, Value)>>> = allowed
            .iter()
            .map(|&a| {
                prop::option::weighted(0.8, attr_value(a)).prop_map(move |v| v.map(|v| (a.to_string(), v))).boxed()
            })
            .collect();
        let stray = prop::option::weighted(
            0.05,
            select(ATTR_FIELDS.to_vec()).prop_flat_map(|a| attr_value(a).prop_map(move |v| (a.to_string(), v))),
        );
        (Just(kind), attrs, stray, prop::collection::vec(any::<Index>(), 5), prop::bool::weighted(0.92), 0usize..7)
            .prop_map(|(kind, attrs, stray, picks, exact_arity, extra_inputs)| {
                let mut attrs: Vec<(String, Value)> = attrs.into_iter().flatten().collect();
                attrs.extend(stray);
                ANode { kind, attrs, picks, exact_arity, extra_inputs }
            })
    })
}

#[derive(Clone, Debug)]
struct AttrGraph {
    sources: Vec<(Vec<i64>, &'static str)>,
    nodes: Vec<ANode>,
    loss_from_last: bool,
}

fn attr_graph() -> impl Strategy<Value = AttrGraph> {
    let source = (small_shape(), prop_oneof![6 => Just("f32"), 2 => Just("i32"), 1 => valid_dtype()]);
    let sources = prop_oneof![
        // All sources alike: elementwise ops type-check.
        1 => (small_shape(), prop::collection::vec(valid_dtype(), 5))
            .prop_map(|(s, ds)| ds.into_iter().map(|d| (s.clone(), d)).collect::<Vec<_>>()),
        2 => prop::collection::vec(source, 5),
    ];
    (sources, prop::collection::vec(anode(), 1..5), any::<bool>())
        .prop_map(|(sources, nodes, loss_from_last)| AttrGraph { sources, nodes, loss_from_last })
}

impl AttrGraph {
    fn to_json(&self) -> Value {
        let mut values: Vec<String> = (0..self.sources.len()).map(|i| format!("s{i}")).collect();
        let inputs: Vec<Value> = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, (s, d))| json!({"name": format!("s{i}"), "shape": s, "dtype": d}))
            .collect();
        let mut forward = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let op = n.kind.name();
            let k = if n.exact_arity { arity(n.kind) } else { n.extra_inputs };
            let ins: Vec<String> = (0..k)
                .map(|j| {
                    // Prefer the latest values so that chains form.
                    let idx = n.picks[j % n.picks.len()].index(values.len() + 2);
                    values[values.len().saturating_sub(1 + idx.min(values.len() - 1))].clone()
                })
                .collect();
            let mut o = Map::new();
            o.insert("name".into(), json!(format!("n{i}")));
            o.insert("op".into(), json!(op));
            o.insert("inputs".into(), json!(ins));
            for (a, v) in &n.attrs {
                o.insert(a.clone(), v.clone());
            }
            forward.push(Value::Object(o));
            values.push(format!("n{i}"));
            for slot in 1..num_outputs(n.kind) {
                values.push(format!("n{i}:{slot}"));
            }
        }
        let last = format!("n{}", self.nodes.len() - 1);
        let loss = if self.loss_from_last {
            last
        } else {
            forward.push(json!({"name": "loss", "op": "reduce_sum", "inputs": [last], "axes": []}));
            "loss".to_string()
        };
        json!({
            "format": "mpc/1",
            "name": "attrs",
            "inputs": inputs,
            "forward": forward,
            "loss": loss,
        })
    }
}

// ---------------------------------------------------------------------------
// Valid graphs with random shapes.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Mlp {
    batch: i64,
    dims: Vec<i64>,
    acts: Vec<&'static str>,
    bias: Vec<bool>,
    layer_norm: Vec<bool>,
    dtype: &'static str,
    labels: &'static str,
    classes: i64,
    mse: bool,
}

fn mlp() -> impl Strategy<Value = Mlp> {
    let d = prop_oneof![20 => 1i64..=64, 1 => Just(1i64 << 20), 1 => 65i64..=4096];
    (
        prop_oneof![10 => 1i64..=64, 1 => Just(1i64 << 16)],
        prop::collection::vec(d, 1..8),
        prop::collection::vec(select(vec!["relu", "gelu", "tanh", "sigmoid", "identity", "exp"]), 8),
        prop::collection::vec(any::<bool>(), 8),
        prop::collection::vec(prop::bool::weighted(0.2), 8),
        select(vec!["f32", "f16", "bf16"]),
        select(vec!["i32", "i64"]),
        1i64..=32,
        any::<bool>(),
    )
        .prop_map(|(batch, dims, acts, bias, layer_norm, dtype, labels, classes, mse)| Mlp {
            batch,
            dims,
            acts,
            bias,
            layer_norm,
            dtype,
            labels,
            classes,
            mse,
        })
}

impl Mlp {
    fn to_json(&self) -> Value {
        let mut params = Vec::new();
        let mut forward = Vec::new();
        let mut h = "x".to_string();
        let mut width = self.dims[0];
        let mut layers: Vec<i64> = self.dims[1..].to_vec();
        layers.push(self.classes);
        for (i, &out) in layers.iter().enumerate() {
            let w = format!("w{i}");
            params.push(
                json!({"name": w, "shape": [width, out], "dtype": self.dtype, "init": {"kind": "kaiming_normal"}}),
            );
            forward.push(json!({"name": format!("mm{i}"), "op": "matmul", "inputs": [h, w]}));
            h = format!("mm{i}");
            if self.bias[i % 8] {
                let b = format!("b{i}");
                params.push(json!({"name": b, "shape": [out], "dtype": self.dtype, "init": {"kind": "zeros"}}));
                forward.push(json!({"name": format!("ab{i}"), "op": "add", "inputs": [h, b]}));
                h = format!("ab{i}");
            }
            if i + 1 < layers.len() {
                if self.layer_norm[i % 8] {
                    let (g, b) = (format!("lng{i}"), format!("lnb{i}"));
                    params.push(json!({"name": g, "shape": [out], "dtype": self.dtype, "init": {"kind": "ones"}}));
                    params.push(json!({"name": b, "shape": [out], "dtype": self.dtype, "init": {"kind": "zeros"}}));
                    forward.push(json!({"name": format!("ln{i}"), "op": "layer_norm", "inputs": [h, g, b]}));
                    h = format!("ln{i}");
                }
                forward.push(json!({"name": format!("act{i}"), "op": self.acts[i % 8], "inputs": [h]}));
                h = format!("act{i}");
            }
            width = out;
        }
        let (target, target_ty) = if self.mse {
            forward.push(json!({"name": "loss", "op": "mse", "inputs": [h, "target"]}));
            ("target", json!({"name": "target", "shape": [self.batch, self.classes], "dtype": self.dtype}))
        } else {
            forward.push(json!({"name": "loss", "op": "cross_entropy", "inputs": [h, "labels"]}));
            ("labels", json!({"name": "labels", "shape": [self.batch], "dtype": self.labels}))
        };
        let _ = target;
        json!({
            "format": "mpc/1",
            "name": "random_mlp",
            "inputs": [
                {"name": "x", "shape": [self.batch, self.dims[0]], "dtype": self.dtype},
                target_ty
            ],
            "params": params,
            "forward": forward,
            "loss": "loss",
            "optimizer": {"kind": "adamw", "lr": 1e-3}
        })
    }
}

#[derive(Clone, Debug)]
struct Conv {
    n: i64,
    c: i64,
    hw: [i64; 2],
    o: i64,
    k: [i64; 2],
    stride: [u64; 2],
    padding: [u64; 2],
    dilation: [u64; 2],
    groups: u64,
    /// Kernel, max (else avg), padding_end, count_include_pad.
    pool: Option<([u64; 2], bool, [u64; 2], bool)>,
}

fn conv() -> impl Strategy<Value = Conv> {
    (
        1i64..=8,
        1i64..=4,
        [1i64..=16, 1i64..=16],
        1i64..=8,
        [1i64..=5, 1i64..=5],
        [1u64..=3, 1u64..=3],
        [0u64..=2, 0u64..=2],
        [1u64..=3, 1u64..=3],
        1u64..=3,
        prop::option::of(([1u64..=3, 1u64..=3], any::<bool>(), [0u64..=1, 0u64..=1], any::<bool>())),
    )
        .prop_map(|(n, c, hw, o, k, stride, padding, dilation, groups, pool)| Conv {
            n,
            c,
            hw,
            o,
            k,
            stride,
            padding,
            dilation,
            groups,
            pool,
        })
}

impl Conv {
    fn to_json(&self) -> Value {
        let mut c =
            json!({"name": "c", "op": "conv2d", "inputs": ["x", "w"], "stride": self.stride, "padding": self.padding});
        if self.groups != 1 {
            c["groups"] = json!(self.groups);
        }
        if self.dilation != [1, 1] {
            c["dilation"] = json!(self.dilation);
        }
        let mut forward = vec![c];
        let mut h = "c";
        if let Some((k, max, padding_end, count_include_pad)) = self.pool {
            let op = if max { "max_pool2d" } else { "avg_pool2d" };
            let mut p = json!({"name": "p", "op": op, "inputs": ["c"], "kernel": k, "padding_end": padding_end});
            if !max {
                p["count_include_pad"] = json!(count_include_pad);
            }
            forward.push(p);
            h = "p";
        }
        forward.push(json!({"name": "f", "op": "flatten", "inputs": [h]}));
        forward.push(json!({"name": "loss", "op": "reduce_mean", "inputs": ["f"], "axes": [0, 1]}));
        json!({
            "format": "mpc/1",
            "name": "random_conv",
            "inputs": [{"name": "x", "shape": [self.n, self.c, self.hw[0], self.hw[1]]}],
            "params": [{"name": "w", "shape": [self.o, self.weight_channels(), self.k[0], self.k[1]], "init": {"kind": "kaiming_normal"}}],
            "forward": forward,
            "loss": "loss"
        })
    }

    /// The weight's input channels: `c / groups`, or `c` when groups do not
    /// divide it (a graph that must be rejected unless groups is 1).
    fn weight_channels(&self) -> i64 {
        let g = self.groups as i64;
        if self.c % g == 0 {
            self.c / g
        } else {
            self.c
        }
    }

    /// Whether the window fits, so that the graph must be accepted.
    fn fits(&self) -> bool {
        let g = self.groups as i64;
        if self.c % g != 0 || self.o % g != 0 {
            return false;
        }
        let out = |i: usize| -> Option<u64> {
            let padded = self.hw[i] as u64 + 2 * self.padding[i];
            let k = (self.k[i] as u64 - 1) * self.dilation[i] + 1;
            (padded >= k).then(|| (padded - k) / self.stride[i] + 1)
        };
        let (Some(h), Some(w)) = (out(0), out(1)) else { return false };
        match self.pool {
            None => true,
            Some((k, _, pe, _)) => (0..2).all(|i| pe[i] <= k[i] / 2) && h + pe[0] >= k[0] && w + pe[1] >= k[1],
        }
    }
}

// ---------------------------------------------------------------------------
// The properties. Case counts add up to `CASES`.
// ---------------------------------------------------------------------------

const TRUNCATE_CASES: u32 = 1500;
const EDIT_CASES: u32 = 2000;
const WRONG_TYPE_CASES: u32 = 1500;
const SHAPE_CASES: u32 = 1000;
const STRUCTURAL_CASES: u32 = 2000;
const ATTR_CASES: u32 = 2000;
const VALID_CASES: u32 = 1000;
const CONV_CASES: u32 = 500;
const ARB_JSON_CASES: u32 = 800;

/// Cases over all the properties.
pub const CASES: u32 = TRUNCATE_CASES
    + EDIT_CASES
    + WRONG_TYPE_CASES
    + SHAPE_CASES
    + STRUCTURAL_CASES
    + ATTR_CASES
    + VALID_CASES
    + CONV_CASES
    + ARB_JSON_CASES;

const _: () = assert!(CASES >= 10_000);

/// `MPC_FUZZ_MULTIPLIER=10` runs ten times as many cases, for a longer hunt.
fn config(cases: u32) -> ProptestConfig {
    let k: u32 = std::env::var("MPC_FUZZ_MULTIPLIER").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    ProptestConfig {
        cases: cases.saturating_mul(k.max(1)),
        // Known bugs are pinned by the deterministic tests below; don't write
        // regression files into the source tree.
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(TRUNCATE_CASES))]

    /// Every seed cut at a random byte (possibly inside a UTF-8 sequence),
    /// sometimes with a random tail appended.
    #[test]
    fn truncated_files(seed in any::<Index>(), cut in any::<Index>(), tail in prop::option::weighted(0.2, select(JSON_BITS.to_vec()))) {
        let s = &seeds()[seed.index(seeds().len())];
        let bytes = &s.as_bytes()[..cut.index(s.len() + 1)];
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if let Some(t) = tail {
            text.push_str(t);
        }
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(config(EDIT_CASES))]

    /// Deletions, insertions and replacements of JSON-significant characters.
    #[test]
    fn edited_files(seed in any::<Index>(), edits in prop::collection::vec(edit(), 1..8)) {
        let s = &seeds()[seed.index(seeds().len())];
        check(&apply_edits(s, &edits))?;
    }
}

proptest! {
    #![proptest_config(config(WRONG_TYPE_CASES))]

    /// A field replaced by a value of the wrong type, removed, duplicated, or
    /// an unknown field added.
    #[test]
    fn wrong_types(seed in any::<Index>(), edits in prop::collection::vec(value_edit(), 1..4), pretty in any::<bool>()) {
        let mut v = seed_values()[seed.index(seed_values().len())].clone();
        for e in &edits {
            apply_value_edit(&mut v, e);
        }
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
        check(&text.expect("a value serialises"))?;
    }
}

proptest! {
    #![proptest_config(config(SHAPE_CASES))]

    /// The seeds with the shapes and dtypes of their sources replaced: huge,
    /// zero, negative, overflowing products, unknown dtypes.
    #[test]
    fn odd_shapes_and_dtypes(
        seed in any::<Index>(),
        shapes in prop::collection::vec(prop::option::weighted(0.4, shape()), 48),
        dtypes in prop::collection::vec(prop::option::weighted(0.15, dtype()), 48),
    ) {
        let mut v = seed_values()[seed.index(seed_values().len())].clone();
        let mut k = 0;
        for section in ["inputs", "params", "state"] {
            if let Some(Value::Array(items)) = v.get_mut(section) {
                for item in items {
                    if let Some(s) = &shapes[k % shapes.len()] {
                        item["shape"] = json!(s);
                    }
                    if let Some(d) = &dtypes[k % dtypes.len()] {
                        item["dtype"] = d.clone();
                    }
                    k += 1;
                }
            }
        }
        check(&serde_json::to_string(&v).expect("a value serialises"))?;
    }
}

proptest! {
    #![proptest_config(config(STRUCTURAL_CASES))]

    /// Random op names and input names: dangling and duplicate names,
    /// self-references, forward references and rings.
    #[test]
    fn structural_graphs(s in structural()) {
        check(&serde_json::to_string(&s.to_json()).expect("a value serialises"))?;
    }
}

proptest! {
    #![proptest_config(config(ATTR_CASES))]

    /// Chains of random ops with random attribute values (negative and
    /// out-of-range axes, empty perms, huge kernels, strides and padding).
    #[test]
    fn random_attributes(g in attr_graph()) {
        check(&serde_json::to_string(&g.to_json()).expect("a value serialises"))?;
    }
}

proptest! {
    #![proptest_config(config(VALID_CASES))]

    /// Well-formed MLPs with random widths and dtypes: accepted, verified,
    /// and `parse(emit(g)) == g`.
    #[test]
    fn valid_mlps(m in mlp()) {
        let text = serde_json::to_string_pretty(&m.to_json()).expect("a value serialises");
        let g = match mpc::parse_str(&text) {
            Ok(g) => g,
            Err(e) => return Err(TestCaseError::fail(format!("rejected: {e}\n{text}"))),
        };
        if let Err(e) = mpc::verify(&g) {
            return Err(TestCaseError::fail(format!("does not verify: {e}\n{text}")));
        }
        round_trip(&g)?;
    }
}

proptest! {
    #![proptest_config(config(CONV_CASES))]

    /// Convolutions and pooling with random windows; accepted when the
    /// window fits.
    #[test]
    fn random_convs(c in conv()) {
        let text = serde_json::to_string(&c.to_json()).expect("a value serialises");
        check(&text)?;
        if c.fits() {
            let g = mpc::parse_str(&text);
            prop_assert!(g.is_ok(), "rejected: {:?}\n{}", g.err(), text);
        }
    }
}

proptest! {
    #![proptest_config(config(ARB_JSON_CASES))]

    /// Arbitrary JSON, at the top level and in place of a seed's section.
    #[test]
    fn arbitrary_json(v in arb_json(), seed in any::<Index>(), field in select(field_names()), whole in any::<bool>()) {
        let v = if whole {
            v
        } else {
            let mut s = seed_values()[seed.index(seed_values().len())].clone();
            s[field] = v;
            s
        };
        check(&serde_json::to_string(&v).expect("a value serialises"))?;
    }
}

// ---------------------------------------------------------------------------
// Deterministic tests.
// ---------------------------------------------------------------------------

#[test]
fn embedded_seeds_are_valid_graphs() {
    for (i, s) in EMBEDDED_SEEDS.iter().enumerate() {
        let g = mpc::parse_str(s).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        if let Err(e) = mpc::verify(&g) {
            panic!("seed {i}: {:#?}", e.0);
        }
        if let Err(e) = round_trip(&g) {
            panic!("seed {i}: {e}");
        }
    }
    assert!(seeds().len() > EMBEDDED_SEEDS.len(), "no ir-examples found");
}

/// Every prefix of every seed, not just random ones.
#[test]
fn every_prefix_of_the_small_seeds() {
    for s in seeds().iter().filter(|s| s.len() <= 4096) {
        for cut in 0..=s.len() {
            let text = String::from_utf8_lossy(&s.as_bytes()[..cut]);
            must_not_panic(&text);
        }
    }
}

#[test]
fn nasty_documents() {
    let mlp = &seeds()[0];
    let cases: Vec<String> = vec![
        String::new(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        "0".into(),
        "\"mpc/1\"".into(),
        "true".into(),
        " \t\r\n ".repeat(1000),
        "\u{feff}".into(),
        format!("\u{feff}{mlp}"),
        format!("{mlp}{mlp}"),
        format!("{mlp},"),
        format!("{mlp} garbage"),
        format!("[{mlp}]"),
        mlp.replace('{', "{\n// comment\n"),
        mlp.replace(", ", " , "),
        mlp.replace(',', ",,"),
        mlp.replace("\"mpc/1\"", "\"mpc/2\""),
        mlp.replace("\"mpc/1\"", "\"MPC/1\""),
        mlp.replace("\"mpc/1\"", "1"),
        mlp.replace('"', "'"),
        mlp.replace("\"", "\\\""),
        String::from_utf8_lossy(b"\xff\xfe\x00{\x00\"\x00").into_owned(),
        String::from_utf8_lossy(&[0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x28, 0x8c, 0xbc]).into_owned(),
        String::from_utf8_lossy(&mlp.as_bytes().iter().map(|b| b ^ 0x80).collect::<Vec<_>>()).into_owned(),
        "\u{0}".repeat(100),
        r#"{"format": "mpc/1", "forward": [], "loss": ""}"#.into(),
        r#"{"format": "mpc/1", "forward": [], "loss": "x", "inputs": [{"name": "x", "shape": []}]}"#.into(),
        r#"{"format": "mpc/1", "format": "mpc/1", "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "forward": null, "loss": null}"#.into(),
        r#"{"format": "mpc/1", "forward": [{}], "loss": "a"}"#.into(),
        r#"{"format": "mpc/1", "forward": [{"name": "a"}], "loss": "a"}"#.into(),
        r#"{"format": "mpc/1", "forward": [{"name": "a", "op": null}], "loss": "a"}"#.into(),
        r#"{"format": "mpc/1", "forward": [{"name": "a", "op": "unset"}], "loss": "a"}"#.into(),
        r#"{"format": "mpc/1", "forward": [{"name": "a", "op": "relu", "inputs": ["a"]}], "loss": "a"}"#.into(),
        r#"{"format": "mpc/1", "forward": [{"name": "a", "op": "relu", "inputs": ["\ud800"]}], "loss": "a"}"#.into(),
        r#"{"format": "mpc/1", "forward": [{"name": "\u0000", "op": "relu", "inputs": ["\u0000"]}], "loss": "\u0000"}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [1e999]}], "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [18446744073709551616]}], "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [-9223372036854775808]}], "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [9223372036854775807, 9223372036854775807]}], "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [-0]}], "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [1.0]}], "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [], "dtype": "f8"}], "forward": [], "loss": "x"}"#.into(),
        r#"{"format": "mpc/1", "params": [{"name": "p", "shape": [], "dtype": "i32", "init": {"kind": "zeros"}}], "forward": [], "loss": "p"}"#.into(),
        r#"{"format": "mpc/1", "params": [{"name": "p", "shape": [], "init": {"kind": "normal", "std": -1}}], "forward": [], "loss": "p"}"#.into(),
        r#"{"format": "mpc/1", "params": [{"name": "p", "shape": [], "init": {"kind": "uniform", "low": 1, "high": 0}}], "forward": [], "loss": "p"}"#.into(),
        r#"{"format": "mpc/1", "params": [{"name": "p", "shape": [], "init": {"kind": "nope"}}], "forward": [], "loss": "p"}"#.into(),
        r#"{"format": "mpc/1", "forward": [], "loss": "x", "optimizer": {"kind": "adam", "lr": -1, "momentum": 2, "accumulate": 0}}"#.into(),
        r#"{"format": "mpc/1", "forward": [], "loss": "x", "optimizer": {"kind": "sgd", "lr": 1e308, "accumulate": 4294967296}}"#.into(),
        r#"{"format": "mpc/1", "forward": [], "loss": "x", "gradients": {"x": "y"}}"#.into(),
        r#"{"format": "mpc/1", "inputs": [{"name": "a/b~c", "shape": []}], "forward": [], "loss": "a/b~c", "updates": {"a/b~c": "a/b~c"}, "backward": [], "gradients": {"a/b~c": "a/b~c"}}"#.into(),
    ];
    for text in &cases {
        must_not_panic(text);
    }
    for text in ["", "null", "[]", "{}", " \n\t ", "\u{feff}", "\u{feff}{}"] {
        let e = mpc::parse_str(text).expect_err(text);
        assert!(!e.to_string().is_empty());
    }
    // A BOM in front of a valid file is rejected, not skipped silently.
    must_reject(&format!("\u{feff}{mlp}"));
}

fn nested(open: &str, close: &str, depth: usize, inner: &str) -> String {
    let mut s = String::with_capacity(depth * (open.len() + close.len()) + inner.len());
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..depth {
        s.push_str(close);
    }
    s
}

/// 100,000 levels of nesting must be an error, not a stack overflow. This
/// runs on the test thread (2 MiB of stack by default).
#[test]
fn deep_nesting_is_an_error() {
    let depth = 100_000;
    let texts = [
        "[".repeat(depth),
        nested("[", "]", depth, ""),
        nested("{\"a\":", "}", depth, "1"),
        nested("{\"forward\":", "}", depth, "[]"),
        format!(r#"{{"format": "mpc/1", "forward": {}, "loss": "x"}}"#, nested("[", "]", depth, "")),
        format!(
            r#"{{"format": "mpc/1", "forward": [{{"name": "a", "op": "relu", "inputs": {}}}], "loss": "x"}}"#,
            nested("[", "]", depth, "\"x\"")
        ),
        format!(r#"{{"format": "mpc/1", "forward": [], "loss": "x", "name": {}}}"#, nested("{\"a\":", "}", depth, "1")),
        format!(r#"{{"format": "mpc/1", "forward": [], "loss": "x", "optimizer": {}}}"#, nested("[", "]", depth, "")),
        format!(
            r#"{{"format": "mpc/1", "inputs": [{{"name": "x", "shape": {}}}], "forward": [], "loss": "x"}}"#,
            nested("[", "]", depth, "1")
        ),
    ];
    for t in &texts {
        let e = mpc::parse_str(t).expect_err("deep nesting must be rejected");
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------
// Pathological sizes, on a watchdog thread.
// ---------------------------------------------------------------------------

/// Runs `parse_str` + `verify` on a thread and waits at most `limit`; a hang
/// fails the test instead of blocking it forever. Returns the outcome and
/// the time taken.
fn run_with_watchdog(label: &str, text: String, limit: Duration) -> (Result<(), String>, Duration) {
    let (tx, rx) = mpsc::channel();
    let label_owned = label.to_string();
    let handle = std::thread::Builder::new()
        .name(label_owned)
        .spawn(move || {
            let t0 = Instant::now();
            let outcome = match mpc::parse_str(&text) {
                Ok(g) => match mpc::verify(&g) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(format!("verify: {}", clip(&e.to_string()))),
                },
                Err(e) => Err(format!("parse: {}", clip(&e.to_string()))),
            };
            let _ = tx.send((outcome, t0.elapsed()));
        })
        .expect("spawn a thread");
    match rx.recv_timeout(limit) {
        Ok(r) => {
            handle.join().expect("the worker finished");
            r
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{label}: no answer after {limit:?} (a hang?)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{label}: panicked"),
    }
}

fn doc(inputs: &str, forward: &[String], loss: &str) -> String {
    format!(
        "{{\"format\": \"mpc/1\", \"inputs\": [{inputs}], \"forward\": [\n{}\n], \"loss\": \"{loss}\"}}",
        forward.join(",\n")
    )
}

/// A chain written backwards: every name is a forward reference.
fn backwards_chain(n: usize) -> String {
    let mut fwd = Vec::with_capacity(n + 1);
    fwd.push(format!(r#"{{"name": "loss", "op": "reduce_sum", "inputs": ["n{}"], "axes": [0]}}"#, n - 1));
    for i in (0..n).rev() {
        let input = if i == 0 { "x".to_string() } else { format!("n{}", i - 1) };
        fwd.push(format!(r#"{{"name": "n{i}", "op": "relu", "inputs": ["{input}"]}}"#));
    }
    doc(r#"{"name": "x", "shape": [2]}"#, &fwd, "loss")
}

/// `n` nodes in one cycle: n0 reads n1, ..., the last reads n0.
fn ring(n: usize) -> String {
    let fwd: Vec<String> =
        (0..n).map(|i| format!(r#"{{"name": "n{i}", "op": "relu", "inputs": ["n{}"]}}"#, (i + 1) % n)).collect();
    doc(r#"{"name": "x", "shape": [2]}"#, &fwd, "n0")
}

#[test]
fn pathological_inputs_finish() {
    // Generous: these take well under a second in release and a few seconds
    // in a debug build on a loaded machine. Only a hang should trip this.
    let limit = Duration::from_secs(60);
    let x = r#"{"name": "x", "shape": [2]}"#;
    let n = 100_000;
    let mut cases: Vec<(&str, String, bool)> = vec![
        ("10^5-node chain written backwards", backwards_chain(n), true),
        ("10^4-node cycle", ring(10_000), false),
        (
            "10^5-node cycle behind a chain",
            {
                let mut fwd: Vec<String> = (0..n)
                    .map(|i| format!(r#"{{"name": "n{i}", "op": "relu", "inputs": ["n{}"]}}"#, (i + 1) % n))
                    .collect();
                fwd.push(r#"{"name": "tail", "op": "relu", "inputs": ["n5"]}"#.into());
                doc(x, &fwd, "tail")
            },
            false,
        ),
        (
            "10^5 dangling names",
            doc(
                x,
                &(0..n)
                    .map(|i| format!(r#"{{"name": "n{i}", "op": "relu", "inputs": ["ghost{i}"]}}"#))
                    .collect::<Vec<_>>(),
                "n0",
            ),
            false,
        ),
        (
            "10^5 duplicate names",
            doc(x, &vec![r#"{"name": "a", "op": "relu", "inputs": ["x"]}"#.to_string(); n], "a"),
            false,
        ),
        (
            "10^5 self-references",
            doc(
                x,
                &(0..n).map(|i| format!(r#"{{"name": "n{i}", "op": "relu", "inputs": ["n{i}"]}}"#)).collect::<Vec<_>>(),
                "n0",
            ),
            false,
        ),
        (
            "10^5-way fan-out",
            {
                let mut fwd: Vec<String> =
                    (0..n).map(|i| format!(r#"{{"name": "n{i}", "op": "add", "inputs": ["x", "x"]}}"#)).collect();
                fwd.push(r#"{"name": "loss", "op": "reduce_sum", "inputs": ["n0"], "axes": [0]}"#.into());
                doc(x, &fwd, "loss")
            },
            true,
        ),
        ("10^5-dim shape of ones", doc(&format!(r#"{{"name": "x", "shape": {:?}}}"#, vec![1; n]), &[], "x"), false),
        ("10^5-dim shape of twos", doc(&format!(r#"{{"name": "x", "shape": {:?}}}"#, vec![2; n]), &[], "x"), false),
        (
            "10^5 axes",
            doc(
                x,
                &[format!(r#"{{"name": "r", "op": "reduce_sum", "inputs": ["x"], "axes": {:?}}}"#, vec![0; n])],
                "r",
            ),
            false,
        ),
        (
            "10^5-entry perm",
            doc(
                x,
                &[format!(
                    r#"{{"name": "r", "op": "transpose", "inputs": ["x"], "perm": {:?}}}"#,
                    (0..n).collect::<Vec<_>>()
                )],
                "r",
            ),
            false,
        ),
        ("1 MB name", doc(&format!(r#"{{"name": "{}", "shape": []}}"#, "n".repeat(1 << 20)), &[], "x"), false),
        (
            "10^5 outputs",
            doc(
                x,
                &[format!(
                    r#"{{"name": "d", "op": "dropout", "inputs": ["x"], "p": 0.5, "outputs": {:?}}}"#,
                    (0..n).map(|i| format!("o{i}")).collect::<Vec<_>>()
                )],
                "d",
            ),
            false,
        ),
    ];
    // Also the emitted form of the big chain round-trips.
    let chain = mpc::parse_str(&cases[0].1).expect("the chain parses");
    let emitted = mpc::format::emit::json::to_string(&chain);
    assert!(mpc::parse_str(&emitted).expect("re-parse") == chain);
    cases.push(("the emitted chain", emitted, true));

    for (label, text, ok) in cases {
        let (outcome, took) = run_with_watchdog(label, text, limit);
        eprintln!("{label}: {took:?}: {outcome:?}", outcome = outcome.as_ref().map_err(|e| clip(e)));
        assert_eq!(outcome.is_ok(), ok, "{label}: {outcome:?}");
        if label.contains("cycle") {
            assert!(outcome.unwrap_err().contains("cycle"), "{label}");
        }
    }
}

// ---------------------------------------------------------------------------
// Regression tests for bugs found by the properties above, each the smallest
// input found. All five failed before the fixes in src/ (commit b8fd780).
// ---------------------------------------------------------------------------

/// A pooling window's padding near `u64::MAX / 2`: `check_window` in
/// src/format/attrs.rs computes `2 * p > k`, which overflows (a panic in debug
/// builds, a wrapped and wrong comparison in release).
#[test]
fn regression_pool_padding_overflow() {
    let text = r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [1, 1, 4, 4]}],
        "forward": [{"name": "p", "op": "max_pool2d", "inputs": ["x"], "kernel": [2, 2], "padding": [9223372036854775808, 0]}],
        "loss": "p"}"#;
    must_not_panic(text);
    must_reject(text);
}

/// A conv2d padding near `u64::MAX / 2`: `Window::output_hw` in src/ir/op.rs
/// computes `size.checked_add(2 * padding)`, and the `2 * padding` overflows.
/// conv2d does not bound its padding at all (`conv_window` in src/format/attrs.rs).
#[test]
fn regression_conv_padding_overflow() {
    let text = r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [1, 1, 4, 4]}],
        "params": [{"name": "w", "shape": [1, 1, 3, 3], "init": {"kind": "zeros"}}],
        "forward": [{"name": "c", "op": "conv2d", "inputs": ["x", "w"], "padding": [9223372036854775808, 0]}],
        "loss": "c"}"#;
    must_not_panic(text);
    must_reject(text);
}

/// Broadcasting never checks the element count of its result (`broadcast`
/// in src/ir/infer.rs), so two 2^48-element operands give a 2^96-element sum;
/// `flatten` then multiplies the dimensions with `Iterator::product` and
/// overflows.
#[test]
fn regression_flatten_after_broadcast_overflow() {
    let text = r#"{"format": "mpc/1", "inputs": [
            {"name": "a", "shape": [281474976710656, 1]},
            {"name": "b", "shape": [1, 281474976710656]}
        ],
        "forward": [
            {"name": "s", "op": "add", "inputs": ["a", "b"]},
            {"name": "f", "op": "flatten", "inputs": ["s"], "axis": 0}
        ],
        "loss": "f"}"#;
    must_not_panic(text);
    must_reject(text);
}

/// The same overflow in `flatten`, reached through a convolution whose
/// output is never checked against the element limit (`window_out` in
/// src/ir/infer.rs): padding 2^61 on a 1x1 input gives a (2^62+1)^2 map.
#[test]
fn regression_flatten_after_huge_conv_output() {
    let text = r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [1, 1, 1, 1]}],
        "params": [{"name": "w", "shape": [1, 1, 1, 1], "init": {"kind": "zeros"}}],
        "forward": [
            {"name": "c", "op": "conv2d", "inputs": ["x", "w"], "padding": [2305843009213693952, 2305843009213693952]},
            {"name": "f", "op": "flatten", "inputs": ["c"]}
        ],
        "loss": "f"}"#;
    must_not_panic(text);
    must_reject(text);
}

/// `parse(emit(g)) != g` for a valid graph: a float attribute written as
/// the integer 18338672410791262988 parses to the f64 1.8338672410791262e19;
/// the emitter writes that as `1.8338672410791262e19`, and serde_json,
/// without its `float_roundtrip` feature, reads that text back one ulp off
/// (1.8338672410791264e19). Any float attribute, init or optimizer field can
/// hit this; the fix is `serde_json = { features = ["float_roundtrip"] }`.
#[test]
fn regression_float_attribute_round_trip() {
    let text = r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [2]}],
        "forward": [
            {"name": "s", "op": "scale", "inputs": ["x"], "value": 18338672410791262988},
            {"name": "loss", "op": "reduce_sum", "inputs": ["s"], "axes": [0]}
        ],
        "loss": "loss"}"#;
    let g = mpc::parse_str(text).expect("a valid graph");
    mpc::verify(&g).expect("a valid graph");
    if let Err(e) = round_trip(&g) {
        panic!("{e}");
    }
}

/// A quirk, not asserted: for a graph that parses but does not verify
/// (gradients of values that are not parameters), `parse(emit(g)) != g`
/// because the parser orders `gradients` by node index and the emitter
/// writes nodes in topological order. `n0` is written before `n1` but reads
/// it, so after the round trip `n1` comes first.
#[test]
#[ignore = "parse(emit(g)) == g is only promised for verified graphs"]
fn known_bug_gradient_order_of_unverified_graph() {
    let text = r#"{"format": "mpc/1", "inputs": [{"name": "x", "shape": [4, 4]}],
        "forward": [
            {"name": "n0", "op": "relu", "inputs": ["n1"]},
            {"name": "n1", "op": "relu", "inputs": ["x"]}
        ],
        "loss": "n0",
        "backward": [],
        "gradients": {"n0": "n0", "n1": "n0"}}"#;
    let g = mpc::parse_str(text).expect("it parses");
    assert!(mpc::verify(&g).is_err());
    if let Err(e) = round_trip(&g) {
        panic!("{e}");
    }
}
