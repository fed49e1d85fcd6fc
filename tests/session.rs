//! The training session: state resident on the backend across steps gives
//! the same bits as the host-state executor; evaluation leaves the state
//! alone; the reported metrics are found by op, not by name.

use mpc::exec::{init_state, CpuBackend, Executor, RunOptions, Session, State};
use mpc::passes::{self, Options};
use mpc::train::data::{synthetic_batch, Layout};

fn lowered(path: &str) -> (mpc::Graph, mpc::Graph) {
    let source = mpc::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut g = source.clone();
    passes::lower(&mut g, &Options::default()).unwrap();
    (source, g)
}

fn bits_equal(a: &State, b: &State) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in a {
        assert!(t.bit_eq(&b[k]), "`{k}` differs");
    }
}

/// Six fp16 steps of the MLP, with an overflow injected at step 2 (a
/// skipped step: the select nodes keep the old params, which the session
/// holds by reference): every loss, metric and state bit matches.
#[test]
fn session_matches_the_executor_bit_for_bit() {
    let (source, g) = lowered("ir-examples/mlp.json");
    let layout = Layout::of(&source).unwrap();
    let state0 = init_state(&g, 3).unwrap();
    let mut ex = Executor::new(&g, CpuBackend, 3).unwrap();
    let mut sess = Session::new(&g, CpuBackend, 3, &state0).unwrap();
    let mut state = state0;
    let opts = RunOptions { inject_inf: Some(("dw1".into(), 2)), ..RunOptions::default() };
    for s in 0..6 {
        let batch = synthetic_batch(&layout, 3, s).unwrap();
        let a = ex.step(&state, &batch, s, &opts).unwrap();
        let b = sess.step(&batch, s, &opts).unwrap();
        assert_eq!(a.loss_f32().map(f32::to_bits), b.loss.map(f32::to_bits), "step {s}");
        let found = a.outputs.iter().find(|(k, _)| k.starts_with("found_inf")).and_then(|(_, t)| t.item_f32());
        assert_eq!(found.map(|f| f != 0.0), b.found_inf, "step {s}");
        assert_eq!(b.found_inf, Some(s == 2), "step {s}");
        let scale = a.outputs.iter().find(|(k, _)| k.starts_with("loss_scale")).and_then(|(_, t)| t.item_f32());
        assert_eq!(scale, b.loss_scale, "step {s}");
        state = a.state;
    }
    bits_equal(&state, &sess.state().unwrap());
    assert_eq!(sess.state().unwrap()["loss_scale"].item_f32(), Some(32768.0));
}

/// `eval` computes the logits from the current state, runs no backward or
/// optimizer node and changes nothing: the next step is as if it had not run.
#[test]
fn eval_is_forward_only_and_leaves_the_state() {
    let (source, g) = lowered("ir-examples/mlp.json");
    let layout = Layout::of(&source).unwrap();
    let state0 = init_state(&g, 1).unwrap();
    let batch = synthetic_batch(&layout, 1, 0).unwrap();
    let mut a = Session::new(&g, CpuBackend, 1, &state0).unwrap();
    let mut b = Session::new(&g, CpuBackend, 1, &state0).unwrap();
    let logits = a.eval(&batch, 0, &["logits_b".to_string()]).unwrap();
    let mut ex = Executor::new(&g, CpuBackend, 1).unwrap();
    let opts = RunOptions { fetch: vec!["logits_b".into()], ..RunOptions::default() };
    let want = ex.step(&state0, &batch, 0, &opts).unwrap();
    assert!(logits["logits_b"].bit_eq(&want.fetched["logits_b"]));
    bits_equal(&a.state().unwrap(), &state0);
    let ra = a.step(&batch, 0, &RunOptions::default()).unwrap();
    let rb = b.step(&batch, 0, &RunOptions::default()).unwrap();
    assert_eq!(ra.loss, rb.loss);
    bits_equal(&a.state().unwrap(), &b.state().unwrap());
    let e = a.eval(&batch, 0, &["no_such_value".to_string()]).unwrap_err();
    assert!(e.to_string().contains("no value has this name"), "{e}");
}

/// A user's own output called `found_inf` is not taken for the scaler's
/// (the lowering names its own `found_inf.1` then).
#[test]
fn metrics_are_found_by_op_not_by_name() {
    let text = std::fs::read_to_string("ir-examples/mlp.json").unwrap();
    let text = text
        .replace(r#""name": "a1", "op": "relu""#, r#""name": "found_inf", "op": "relu""#)
        .replace(r#"["a1", "w2"]"#, r#"["found_inf", "w2"]"#)
        .replace(r#""loss": "loss","#, r#""loss": "loss", "outputs": ["found_inf"],"#);
    let source = mpc::parse_str(&text).unwrap();
    mpc::verify(&source).unwrap();
    let mut g = source.clone();
    passes::lower(&mut g, &Options::default()).unwrap();
    let layout = Layout::of(&source).unwrap();
    let state = init_state(&g, 0).unwrap();
    let mut sess = Session::new(&g, CpuBackend, 0, &state).unwrap();
    let r = sess.step(&synthetic_batch(&layout, 0, 0).unwrap(), 0, &RunOptions::default()).unwrap();
    assert_eq!(r.found_inf, Some(false));
    assert_eq!(r.loss_scale, Some(65536.0));
}

/// A state tensor of the wrong type, a missing one or one the graph does
/// not have is refused when the session opens.
#[test]
fn opening_checks_the_state() {
    let (_, g) = lowered("ir-examples/mlp.json");
    let state = init_state(&g, 0).unwrap();
    let mut missing = state.clone();
    missing.remove("w1");
    let e = Session::new(&g, CpuBackend, 0, &missing).err().unwrap();
    assert!(e.to_string().contains("`w1`: missing from the state"), "{e}");
    let mut extra = state.clone();
    extra.insert("zz".into(), mpc::exec::Tensor::scalar_f32(1.0));
    let e = Session::new(&g, CpuBackend, 0, &extra).err().unwrap();
    assert!(e.to_string().contains("zz"), "{e}");
    let mut wrong = state;
    wrong.insert("w1".into(), mpc::exec::Tensor::scalar_f32(1.0));
    let e = Session::new(&g, CpuBackend, 0, &wrong).err().unwrap();
    assert!(e.to_string().contains("expected f32[64,128], found f32[]"), "{e}");
}
