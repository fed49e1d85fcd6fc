//! Learning-rate schedules (`optimizer.schedule`, `mpc train --lr-schedule`):
//! what master-weights writes, the rate each step gets, and that a skipped
//! step does not advance the schedule.

use mpc::exec::{init_state, CpuBackend, RunOptions, Session};
use mpc::ir::semantics::lr_schedule;
use mpc::passes::{self, Options};
use mpc::train::data::{synthetic_batch, Layout};

const MODEL: &str = r#"{
  "format": "mpc/1",
  "name": "scheduled",
  "inputs": [
    {"name": "x", "shape": [4, 8]},
    {"name": "labels", "shape": [4], "dtype": "i32"}
  ],
  "params": [
    {"name": "w", "shape": [8, 3], "init": {"kind": "xavier_uniform"}},
    {"name": "b", "shape": [3], "init": {"kind": "zeros"}}
  ],
  "forward": [
    {"name": "h", "op": "matmul", "inputs": ["x", "w"]},
    {"name": "logits", "op": "add", "inputs": ["h", "b"]},
    {"name": "loss", "op": "cross_entropy", "inputs": ["logits", "labels"]}
  ],
  "loss": "loss",
  "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.9,
                "schedule": {"kind": "cosine", "warmup": 2, "total": 6, "min_lr": 0.01}}
}"#;

/// SGD with momentum and a cosine schedule gains a step counter, whose
/// `lr_schedule` every optimizer op reads as its last input; the rate is a
/// step output. Reviewed like generated code.
#[test]
fn lowered_schedule_snapshot() {
    let mut g = mpc::parse_str(MODEL).unwrap();
    passes::lower_fp32(&mut g, &Options { verify_each: true, ..Options::default() }).unwrap();
    insta::assert_snapshot!("fp32_sgd_momentum_cosine", mpc::format::emit::text::to_string(&g));
    // A constant schedule changes nothing.
    let constant =
        MODEL.replace(r#"{"kind": "cosine", "warmup": 2, "total": 6, "min_lr": 0.01}"#, r#"{"kind": "constant"}"#);
    let none = MODEL.replace(
        r#",
                "schedule": {"kind": "cosine", "warmup": 2, "total": 6, "min_lr": 0.01}"#,
        "",
    );
    let lower = |text: &str| {
        let mut g = mpc::parse_str(text).unwrap();
        passes::lower_fp32(&mut g, &Options::default()).unwrap();
        g.optimizer = None;
        mpc::format::emit::text::to_string(&g)
    };
    assert_ne!(constant, none);
    assert_eq!(lower(&constant), lower(&none));
}

/// Each step reports the rate it used, λ(k) for the k-th step taken: an
/// overflow at step 2 is skipped and step 3 gets the rate step 2 had (as
/// Hugging Face's Trainer, which steps its scheduler only when the
/// optimizer ran); the counter and so the schedule is state, kept in
/// checkpoints.
#[test]
fn a_skipped_step_does_not_advance_the_schedule() {
    let source = mpc::parse_str(MODEL).unwrap();
    let mut g = source.clone();
    passes::lower(&mut g, &Options::default()).unwrap();
    let layout = Layout::of(&source).unwrap();
    let state0 = init_state(&g, 2).unwrap();
    let mut sess = Session::new(&g, CpuBackend, 2, &state0).unwrap();
    let opts = RunOptions { inject_inf: Some(("dw".into(), 2)), ..RunOptions::default() };
    let mut rates = Vec::new();
    for s in 0..9 {
        let r = sess.step(&synthetic_batch(&layout, 2, s).unwrap(), s, &opts).unwrap();
        assert_eq!(r.found_inf, Some(s == 2), "step {s}");
        rates.push(r.lr.unwrap());
    }
    let at = |k| lr_schedule(k, 0.1, 2, 6, 0.01);
    let taken = [0, 1, 2, 2, 3, 4, 5, 6, 7];
    let want: Vec<f32> = taken.iter().map(|&k| at(k)).collect();
    assert_eq!(rates, want);
    // Hand-computed: warmup 0, 0.05; the peak; p = 1/4: 0.01 + 0.09·(1 + cos(π/4))/2; p = 1/2: 0.055; min_lr from k = 6.
    assert_eq!(&rates[..6], &[0.0, 0.05, 0.1, 0.1, 0.086_819_805_153_f64 as f32, 0.055]);
    assert_eq!(&rates[7..], &[0.01, 0.01]);
    assert_eq!(sess.state().unwrap()["optimizer_step"].item_f32(), Some(8.0));
}
