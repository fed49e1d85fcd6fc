//! The fuzz cases of two crashes (issue: the error renderer panicked past
//! column 65,535 of a line; tensors the checker accepts were allocated
//! without a size check and aborted the process), as properties over random
//! inputs. `MPC_FUZZ_MULTIPLIER=N` runs N times the cases, as tests/bad_input.rs.

use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn config(cases: u32) -> ProptestConfig {
    let k: u32 = std::env::var("MPC_FUZZ_MULTIPLIER").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    ProptestConfig { cases: cases.saturating_mul(k.max(1)), failure_persistence: None, ..ProptestConfig::default() }
}

/// mlp.json minified onto one line, with a name of `pad` characters first so
/// that what follows sits at any column.
fn minified_mlp(pad: usize) -> String {
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("ir-examples/mlp.json").unwrap()).unwrap();
    g["name"] = serde_json::json!("n".repeat(pad));
    serde_json::to_string(&g).unwrap()
}

/// Damage that parses or not: an unknown op, a dangling name, a stray comma,
/// a cut, a wrong type; `at` picks which occurrence.
fn damage(text: &str, kind: u8, at: usize) -> String {
    let spots = |pat: &str| text.match_indices(pat).map(|(i, _)| i).collect::<Vec<_>>();
    let pick = |v: Vec<usize>| if v.is_empty() { None } else { Some(v[at % v.len()]) };
    match kind % 5 {
        0 => text.replace("\"relu\"", "\"rleu\""),
        1 => text.replace("\"inputs\":[\"h1\"", "\"inputs\":[\"nope\""),
        2 => match pick(spots(",")) {
            Some(i) => format!("{},,{}", &text[..i], &text[i + 1..]),
            None => text.to_string(),
        },
        3 => text[..text.len() * (at % 97 + 1) / 100].to_string(),
        _ => match pick(spots("\"shape\":[")) {
            Some(i) => format!("{}\"shape\":\"x\",\"was\":[{}", &text[..i], &text[i + 9..]),
            None => text.to_string(),
        },
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Any error anywhere on a line of any length renders without a panic,
    /// and briefly: a window around each place, at most twenty problems.
    #[test]
    fn errors_on_long_lines_render_briefly(pad in prop_oneof![0usize..200, 60_000usize..140_000], kind in any::<u8>(), at in any::<usize>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.json");
        let text = damage(&minified_mlp(pad), kind, at);
        std::fs::write(&path, &text).unwrap();
        // As the CLI reports them: a parse error, or the checker's problems.
        let report = match mpc::format::load::load(&path) {
            Err(e) => e.into_report(),
            Ok(l) => match mpc::verify(&l.graph) {
                Ok(()) => return Ok(()),
                Err(v) => mpc::diag::problems_report("g.json", &l.text, &v.0),
            },
        };
        let shown = format!("{report:?}");
        prop_assert!(!shown.is_empty());
        prop_assert!(shown.len() < 40_000, "{} bytes for a {}-byte line", shown.len(), text.len());
    }
}

/// A graph with a param of shape `w` and a constant of shape `c`, both read.
fn graph(w: &[u64], c: &[u64]) -> String {
    let axes = |s: &[u64]| (0..s.len()).map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    let dims = |s: &[u64]| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
    format!(
        r#"{{"format": "mpc/1", "name": "big",
  "inputs": [{{"name": "t", "shape": [1]}}],
  "params": [{{"name": "w", "shape": [{}], "init": {{"kind": "zeros"}}}}],
  "forward": [
    {{"name": "ws", "op": "reduce_sum", "inputs": ["w"], "axes": [{}]}},
    {{"name": "c", "op": "constant", "shape": [{}], "value": 1.0}},
    {{"name": "cs", "op": "reduce_sum", "inputs": ["c"], "axes": [{}]}},
    {{"name": "a", "op": "add", "inputs": ["ws", "cs"]}},
    {{"name": "a1", "op": "reshape", "inputs": ["a"], "shape": [1]}},
    {{"name": "loss", "op": "mse", "inputs": ["a1", "t"]}}
  ],
  "loss": "loss",
  "optimizer": {{"kind": "sgd", "lr": 0.1}}}}"#,
        dims(w),
        axes(w),
        dims(c),
        axes(c)
    )
}

fn shape() -> impl Strategy<Value = Vec<u64>> {
    let dim = prop_oneof![4 => 1u64..64, 1 => 1u64 << 16..1u64 << 22, 1 => 1u64 << 30..1u64 << 40];
    prop::collection::vec(dim, 1..4)
}

proptest! {
    #![proptest_config(config(16))]

    /// Whatever sizes the checker accepts, `mpc train` either runs or
    /// refuses with exit 1 and the limit named; it never aborts on an
    /// allocation. Below the limit the count is what initialising allocates.
    #[test]
    fn sizes_are_checked_before_anything_is_allocated(w in shape(), c in shape()) {
        let text = graph(&w, &c);
        // A product past u64 is refused by the parser.
        let Ok(g) = mpc::parse_str(&text) else { return Ok(()) };
        prop_assert!(mpc::verify(&g).is_ok(), "{}", text);
        let bytes = mpc::exec::memory::materialized_bytes(&g);
        let numel = |s: &[u64]| s.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let want = numel(&w).zip(numel(&c)).and_then(|(a, b)| a.checked_add(b)).and_then(|n| n.checked_mul(4));
        prop_assert_eq!(bytes, want.unwrap_or(u64::MAX));
        if bytes <= mpc::exec::memory::DEFAULT_LIMIT {
            // Too slow to run; what the check promises is enough here.
            return Ok(());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, &text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_mpc"))
            .args(["train", path.to_str().unwrap(), "--steps", "1"])
            .output()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let e = String::from_utf8_lossy(&o.stderr).split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
        prop_assert_eq!(o.status.code(), Some(1), "{}", e);
        prop_assert!(e.contains("(--max-memory raises it)"), "{}", e);
    }
}
