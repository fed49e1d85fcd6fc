//! `mpc train`: learning the digits, checkpoint/resume bit-identity, and
//! data errors reported before training starts.

mod common;

use std::path::Path;

use common::{mpc, text};

const MLP: &str = "ir-examples/mlp.json";
const DIGITS: &str = "ir-examples/data/digits.csv.gz";

fn train_ok(args: &[&str]) -> String {
    let o = mpc(&[&["train", MLP], args].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "mpc train {args:?} failed:\n{out}\n{err}");
    out
}

fn accuracy(out: &str) -> f64 {
    let line =
        out.lines().find(|l| l.starts_with("test accuracy ")).unwrap_or_else(|| panic!("no accuracy in:\n{out}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// 150 steps of batch 64 are about 6.7 epochs of the 1438 training rows;
/// in release builds 300 steps reach 0.97 at every precision, and 150 steps
/// already give about 0.95 (debug builds run 150 steps in about 7 s).
#[test]
fn mlp_learns_the_digits_in_fp32_and_fp16() {
    for precision in ["fp32", "fp16"] {
        let out = train_ok(&["--data", DIGITS, "--steps", "150", "--precision", precision, "--seed", "1"]);
        let acc = accuracy(&out);
        assert!(acc >= 0.9, "{precision}: test accuracy {acc}\n{out}");
        assert!(out.contains("final train loss"), "{out}");
    }
}

fn state_of(path: &Path) -> mpc::train::checkpoint::Checkpoint {
    mpc::train::checkpoint::load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Resuming at step 20 and going on to 30 (past the first epoch boundary at
/// step 22) gives the same bits as running to 30 in one go: params, Adam
/// moments, loss scaler and step counter, and the same metrics lines.
#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let common = ["--data", DIGITS, "--precision", "fp16", "--seed", "5"];
    train_ok(&[&common[..], &["--steps", "30", "--checkpoint", &p("a"), "--log", &p("a.jsonl")]].concat());
    train_ok(
        &[&common[..], &["--steps", "20", "--checkpoint", &p("b"), "--checkpoint-every", "10", "--log", &p("b.jsonl")]]
            .concat(),
    );
    assert!(dir.path().join("b/step-10.safetensors").exists());
    let resume = p("b/step-20.safetensors");
    train_ok(&[
        "--data",
        DIGITS,
        "--precision",
        "fp16",
        "--steps",
        "30",
        "--resume",
        &resume,
        "--checkpoint",
        &p("b"),
        "--log",
        &p("b.jsonl"),
    ]);
    let (a, b) =
        (state_of(&dir.path().join("a/step-30.safetensors")), state_of(&dir.path().join("b/step-30.safetensors")));
    assert_eq!((a.step, b.step), (30, 30));
    assert_eq!(a.state.len(), b.state.len());
    assert!(a.state.contains_key("loss_scale") && a.state.contains_key("w1.adam_m"));
    for (name, t) in &a.state {
        assert!(b.state[name].bit_eq(t), "`{name}` differs after resuming");
    }
    let (la, lb) = (std::fs::read_to_string(p("a.jsonl")).unwrap(), std::fs::read_to_string(p("b.jsonl")).unwrap());
    assert_eq!(la.lines().count(), 30);
    assert_eq!(la, lb, "the metrics differ after resuming");
    let first: serde_json::Value = serde_json::from_str(la.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 1);
    assert_eq!(first["loss_scale"], 65536.0);
    assert_eq!(first["found_inf"], false);

    // A different seed, or a checkpoint of another precision, is refused.
    let o = mpc(&["train", MLP, "--steps", "30", "--seed", "6", "--resume", &resume]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("differs from the checkpoint's seed 5"), "{:?}", text(&o));
    let o = mpc(&["train", MLP, "--steps", "30", "--precision", "fp32", "--resume", &resume]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("is not a param or state of this graph"), "{:?}", text(&o));
}

fn digits_lines(n: usize) -> Vec<String> {
    use std::io::Read;
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(DIGITS).unwrap()).read_to_string(&mut s).unwrap();
    s.lines().take(n).map(str::to_string).collect()
}

fn fails_with(data: &Path, needle: &str) {
    let o = mpc(&["train", MLP, "--steps", "1", "--data", &data.display().to_string()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    assert!(!out.contains("final train loss"), "it trained:\n{out}");
}

#[test]
fn bad_data_is_reported_before_training() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(&dir.path().join("missing.csv"), "cannot read");

    let mut rows = digits_lines(6);
    rows[3] = "1,2,3".into();
    let f = dir.path().join("short.csv");
    std::fs::write(&f, rows.join("\n")).unwrap();
    fails_with(&f, "short.csv:4: expected 65 columns (x: 64, labels: 1), found 3");

    let mut rows = digits_lines(6);
    let cut = rows[4].rfind(',').unwrap();
    rows[4] = format!("{},10", &rows[4][..cut]);
    let f = dir.path().join("label.csv");
    std::fs::write(&f, rows.join("\n")).unwrap();
    fails_with(&f, "label.csv:5: column 65 (`labels`): 10 is out of range 0..10");

    let mut rows = digits_lines(6);
    rows[1] = format!("{},2.5", &rows[1][..rows[1].rfind(',').unwrap()]);
    let f = dir.path().join("frac.csv");
    std::fs::write(&f, rows.join("\n")).unwrap();
    fails_with(&f, "frac.csv:2: column 65 (`labels`): 2.5 is not an integer");

    let gz = std::fs::read(DIGITS).unwrap();
    let f = dir.path().join("truncated.csv.gz");
    std::fs::write(&f, &gz[..gz.len() / 2]).unwrap();
    fails_with(&f, "cannot decompress");
}

#[test]
fn synthetic_data_and_usage_errors() {
    let out = train_ok(&["--steps", "2", "--precision", "bf16"]);
    assert!(out.contains("step 2: final train loss"), "{out}");
    assert!(!out.contains("test accuracy"), "{out}");
    let o = mpc(&["train", MLP, "--precision", "fp32", "--loss-scale", "dynamic"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let o = mpc(&["train", MLP, "--checkpoint", "x", "--checkpoint-every", "0"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}

const GPT: &str = "ir-examples/gpt_block.json";
const TEXT: &str = "ir-examples/data/declaration.txt";

fn losses(log: &Path) -> Vec<f64> {
    let log = std::fs::read_to_string(log).unwrap();
    log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}

/// The first loss is about ln 65 = 4.17 (near-uniform logits at init std
/// 0.02). After 30 steps of 8 windows of 32 characters, seeds 0..5 end at
/// 3.46..3.52 (mean of the last 5 steps), drops of 0.67..0.72, while the
/// last 5 losses vary by only about 0.04; a drop of 0.4 leaves a wide margin
/// yet is more than batch noise can give: the model must at least learn the
/// character frequencies (the text's unigram entropy is 3.02). Debug builds
/// run the 30 steps in 4 to 9 s.
#[test]
fn gpt_learns_the_text_in_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("m.jsonl");
    let o = mpc(&[
        "train",
        GPT,
        "--data",
        TEXT,
        "--steps",
        "30",
        "--precision",
        "fp32",
        "--seed",
        "1",
        "--log",
        &log.display().to_string(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("step 30: final train loss"), "{out}");
    assert!(out.contains("test characters)"), "{out}");
    let l = losses(&log);
    assert_eq!(l.len(), 30);
    let last = l[25..].iter().sum::<f64>() / 5.0;
    assert!((l[0] - 65f64.ln()).abs() < 0.1, "first loss {}", l[0]);
    assert!(last < l[0] - 0.4, "first loss {}, mean of the last 5 {last}: {l:?}", l[0]);
}

/// Text windows are a pure function of (seed, step): 2 steps then a resume
/// to 4 gives the bits of 4 in one go.
#[test]
fn text_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let run = |steps: &str, ck: &str, extra: &[&str]| {
        let o = mpc(
            &[&["train", GPT, "--data", TEXT, "--seed", "3", "--steps", steps, "--checkpoint", ck], extra].concat()
        );
        assert!(o.status.success(), "{:?}", text(&o));
    };
    run("4", &p("a"), &[]);
    run("2", &p("b"), &[]);
    run("4", &p("b"), &["--resume", &p("b/step-2.safetensors")]);
    let (a, b) =
        (state_of(&dir.path().join("a/step-4.safetensors")), state_of(&dir.path().join("b/step-4.safetensors")));
    for (name, t) in &a.state {
        assert!(b.state[name].bit_eq(t), "`{name}` differs after resuming");
    }
}

#[test]
fn bad_text_is_reported_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |model: &str, body: &str, needle: &str| {
        let f = dir.path().join("t.txt");
        std::fs::write(&f, body).unwrap();
        let o = mpc(&["train", model, "--steps", "1", "--data", &f.display().to_string()]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
        assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
        assert!(!out.contains("final train loss"), "it trained:\n{out}");
    };
    // 70 distinct characters, more than the 65 rows of the embedding.
    let wide: String = (0..20).flat_map(|_| ('!'..='e').chain(std::iter::once('\n'))).collect();
    fails(GPT, &wide, "70 distinct characters, more than the 65 the graph can take");
    fails(GPT, "abc", "is too short");
    fails(MLP, &"abc ".repeat(100), "exactly one integer input feeding an `embedding`");
}

/// A language model without `--data` says to give it a text (the batch
/// error alone left the user guessing).
#[test]
fn a_language_model_without_data_asks_for_a_text() {
    let o = mpc(&["train", "ir-examples/gpt_block.json", "--steps", "1"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains("a language model: train it on a text, e.g. --data ir-examples/data/declaration.txt"),
        "{err}"
    );
}

/// The MLP with a learning rate of 1e12: the weights blow up at once.
fn diverging_mlp(dir: &Path) -> String {
    let mut g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(MLP).unwrap()).unwrap();
    g["optimizer"]["lr"] = serde_json::json!(1e12);
    let path = dir.join("hot.json");
    std::fs::write(&path, g.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

/// FP32 has no scaler to skip a step: a NaN loss stops the run with an
/// error naming the step and the last checkpoint, which stays intact (the
/// NaN state is never saved); the log says "NaN", not null. In FP16 the
/// overflowing steps are skipped, and too many in a row stop the run.
#[test]
fn a_diverging_run_stops_with_the_step_and_keeps_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let hot = diverging_mlp(dir.path());
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let o = mpc(&[
        "train",
        &hot,
        "--precision",
        "fp32",
        "--steps",
        "30",
        "--checkpoint",
        &p("ck"),
        "--checkpoint-every",
        "1",
        "--log",
        &p("l.jsonl"),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("step 2: the loss is NaN: with no loss scaler to skip the step"), "{err}");
    assert!(err.contains("the last checkpoint is") && err.contains("step-1.safetensors"), "{err}");
    assert!(!out.contains("final train loss"), "{out}");
    let ck = state_of(&dir.path().join("ck/step-1.safetensors"));
    assert!(ck.state.values().all(|t| t.to_f32_vec().iter().all(|x| x.is_finite())));
    assert!(!dir.path().join("ck/step-2.safetensors").exists(), "the NaN state is not saved");
    let log = std::fs::read_to_string(p("l.jsonl")).unwrap();
    assert!(log.lines().last().unwrap().contains("\"loss\":\"NaN\""), "{log}");

    let o = mpc(&["train", &hot, "--precision", "fp16", "--steps", "200", "--max-skipped", "5"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("5 steps in a row overflowed and were skipped"), "{err}");
}

/// A checkpoint holding a non-finite value is refused on --resume.
#[test]
fn resume_refuses_a_diverged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    train_ok(&["--steps", "2", "--checkpoint", ck.to_str().unwrap()]);
    let path = ck.join("step-2.safetensors");
    let mut c = state_of(&path);
    let w = c.state.get_mut("w1").unwrap();
    let mut v = w.to_f32_vec();
    v[3] = f32::INFINITY;
    *w = mpc::exec::Tensor::from_f32(w.dtype(), w.shape().clone(), &v).unwrap();
    mpc::train::checkpoint::save(&path, &c).unwrap();
    let o = mpc(&["train", MLP, "--steps", "4", "--resume", path.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("cannot resume: `w1` holds inf (element 3)"), "{err}");
}

/// A run killed after its last checkpoint had logged more steps; resuming
/// cuts the log back to the checkpoint's step, so no step is logged twice.
#[test]
fn resume_cuts_the_log_back_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, log) = (dir.path().join("ck"), dir.path().join("m.jsonl"));
    let (ck_s, log_s) = (ck.to_str().unwrap(), log.to_str().unwrap());
    train_ok(&["--steps", "8", "--checkpoint", ck_s, "--checkpoint-every", "5", "--log", log_s]);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 8);
    let resume = ck.join("step-5.safetensors");
    train_ok(&["--steps", "10", "--resume", resume.to_str().unwrap(), "--log", log_s]);
    let steps: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
}

/// Without a terminal, progress is a line on stderr every tenth of the run.
#[test]
fn progress_lines_without_a_terminal() {
    let o = mpc(&["train", MLP, "--steps", "20"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let raw = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = raw.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(lines.len(), 10, "{raw}");
    assert!(lines[9].starts_with("step 20/20: loss "), "{raw}");
}

/// The scaler's settings: given on the command line, logged (growth
/// tracker), stored in checkpoints and held on --resume; `none` is fine
/// with fp32.
#[test]
fn loss_scaler_settings_are_used_logged_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, log) = (dir.path().join("ck"), dir.path().join("m.jsonl"));
    let (ck_s, log_s) = (ck.to_str().unwrap(), log.to_str().unwrap());
    let spec = "dynamic:init=1024,growth=4,backoff=0.25,interval=2";
    train_ok(&["--steps", "4", "--loss-scale", spec, "--checkpoint", ck_s, "--log", log_s]);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let scales: Vec<f64> = lines.iter().map(|l| l["loss_scale"].as_f64().unwrap()).collect();
    let trackers: Vec<f64> = lines.iter().map(|l| l["growth_tracker"].as_f64().unwrap()).collect();
    // Two clean steps, then x4; the tracker restarts.
    assert_eq!(scales, [1024.0, 1024.0, 4096.0, 4096.0]);
    assert_eq!(trackers, [1.0, 0.0, 1.0, 0.0]);
    let c = state_of(&ck.join("step-4.safetensors"));
    assert_eq!(c.loss_scale.as_deref(), Some(spec));
    // Resuming with other factors is refused; with the same, or none given
    // for a graph lowered the same way, it goes on.
    let resume = ck.join("step-4.safetensors");
    let o = mpc(&["train", MLP, "--steps", "6", "--resume", resume.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("cannot resume: it was trained with --loss-scale dynamic:init=1024,growth=4"), "{err}");
    train_ok(&[
        "--steps",
        "6",
        "--resume",
        resume.to_str().unwrap(),
        "--loss-scale",
        "dynamic:growth=4,backoff=0.25,interval=2",
    ]);
    // Bad factors are usage errors; fp32 takes `none`.
    let o = mpc(&["train", MLP, "--loss-scale", "dynamic:backoff=2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("backoff must be between 0 and 1"), "{:?}", text(&o));
    train_ok(&["--steps", "1", "--precision", "fp32", "--loss-scale", "none"]);
    let o = mpc(&["train", MLP, "--precision", "fp32", "--loss-scale", "static:8"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `--table` reaches training: matmul moved to fp32 trains differently
/// from the default fp16 table (where matmul is low); fp32 takes no table.
#[test]
fn train_takes_a_table_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    std::fs::write(&file, r#"{"fp32": ["matmul"]}"#).unwrap();
    let final_line = |out: String| out.lines().find(|l| l.contains("final train loss")).unwrap().to_string();
    let with = final_line(train_ok(&["--steps", "3", "--table", file.to_str().unwrap()]));
    let without = final_line(train_ok(&["--steps", "3"]));
    assert_ne!(with, without, "the table changed nothing");
    let o = mpc(&["train", MLP, "--precision", "fp32", "--table", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}

/// Trains `model` with `args` for 12 steps in one go (checkpoints in
/// `dir/a`) and for 6 steps then resumed to 12 (`dir/b`): the step-12
/// checkpoints and the metrics logs must be bit-identical. Returns the
/// checkpoint and the log.
fn resume_matches(dir: &Path, model: &str, args: &[&str]) -> (mpc::train::checkpoint::Checkpoint, String) {
    let p = |s: &str| dir.join(s).display().to_string();
    let run = |more: &[&str]| {
        let o = mpc(&[&["train", model], args, more].concat());
        let (out, err) = text(&o);
        assert!(o.status.success(), "mpc train {model} {args:?} {more:?} failed:\n{out}\n{err}");
    };
    run(&["--steps", "12", "--checkpoint", &p("a"), "--log", &p("a.jsonl")]);
    run(&["--steps", "6", "--checkpoint", &p("b"), "--log", &p("b.jsonl")]);
    let resume = p("b/step-6.safetensors");
    run(&["--steps", "12", "--resume", &resume, "--checkpoint", &p("b"), "--log", &p("b.jsonl")]);
    let (a, b) = (state_of(&dir.join("a/step-12.safetensors")), state_of(&dir.join("b/step-12.safetensors")));
    assert_eq!(a.state.len(), b.state.len());
    for (name, t) in &a.state {
        assert!(b.state[name].bit_eq(t), "`{name}` differs after resuming");
    }
    let (la, lb) = (std::fs::read_to_string(p("a.jsonl")).unwrap(), std::fs::read_to_string(p("b.jsonl")).unwrap());
    assert_eq!(la, lb, "the metrics differ after resuming");
    (a, la)
}

/// `ir-examples/mlp.json` with batch `batch` and `accumulate` micro-batches
/// per step, written into `dir`.
fn mlp_accumulating(dir: &Path, batch: u64, accumulate: u32) -> String {
    let mut g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(MLP).unwrap()).unwrap();
    for input in g["inputs"].as_array_mut().unwrap() {
        input["shape"][0] = batch.into();
    }
    g["optimizer"]["accumulate"] = accumulate.into();
    let path = dir.join(format!("mlp_b{batch}_acc{accumulate}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&g).unwrap()).unwrap();
    path.display().to_string()
}

/// `accumulate: 4` with batch 16 trains on the same rows as batch 64 (a
/// CSV's micro-batches partition its big batch): the first step's loss is
/// the big batch's within the summation bound (tests/accumulate.rs), and
/// the runs stay close; a step is an optimizer step (12 log lines, Adam's
/// step counter at 12); resuming is bit-identical, accumulators included.
#[test]
fn accumulation_trains_like_a_big_batch_and_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let small = mlp_accumulating(dir.path(), 16, 4);
    let run = |model: &str, args: &[&str]| {
        let o = mpc(&[&["train", model, "--data", DIGITS, "--seed", "5"], args].concat());
        let (out, err) = text(&o);
        assert!(o.status.success(), "mpc train {model} {args:?} failed:\n{out}\n{err}");
        out
    };
    run(MLP, &["--precision", "fp32", "--steps", "12", "--log", &p("big.jsonl")]);
    let out = run(&small, &["--precision", "fp32", "--steps", "12", "--log", &p("small.jsonl")]);
    assert!(out.contains("step 12: final train loss"), "{out}");
    let (big, small_losses) = (losses(&dir.path().join("big.jsonl")), losses(&dir.path().join("small.jsonl")));
    assert_eq!((big.len(), small_losses.len()), (12, 12));
    // γ_64 + γ_19 + u of the loss: about 5e-6 relative.
    assert!((big[0] - small_losses[0]).abs() <= 5e-6 * big[0], "{} vs {}", big[0], small_losses[0]);
    for (s, (a, b)) in big.iter().zip(&small_losses).enumerate() {
        assert!((a - b).abs() <= 1e-3 * a, "step {}: {a} vs {b}", s + 1);
    }

    // fp16: one go against 6 steps, then a resume to 12.
    let (a, la) = resume_matches(dir.path(), &small, &["--data", DIGITS, "--seed", "5", "--precision", "fp16"]);
    assert_eq!(a.state["optimizer_step"].item_f32(), Some(12.0), "Adam counts optimizer steps");
    assert_eq!(a.state["accumulate_step"].item_f32(), Some(0.0), "a checkpoint falls between steps");
    assert!(a.state["w1.grad_acc"].to_f32_vec().iter().all(|&v| v == 0.0));
    assert_eq!(la.lines().count(), 12);
    let first: serde_json::Value = serde_json::from_str(la.lines().next().unwrap()).unwrap();
    assert_eq!((first["step"].as_u64(), first["growth_tracker"].as_f64()), (Some(1), Some(1.0)));
}

/// `--lr-schedule cosine:...` on the MLP (adamw, lr 0.001): the log's `lr`
/// is the schedule's rate at each step (hand-computed below), and a run
/// resumed at step 6 continues it bit for bit.
#[test]
fn lr_schedule_is_logged_and_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data", DIGITS, "--seed", "3", "--lr-schedule", "cosine:warmup=3,total=10,min=0.0001"];
    let (_, la) = resume_matches(dir.path(), MLP, &args);
    let lrs: Vec<f32> = la
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap() as f32)
        .collect();
    // Warmup k/3 of 0.001; the peak at k = 3; k = 6: p = 3/7,
    // 0.0001 + 0.0009·(1 + cos(3π/7))/2 = 0.0001 + 0.0009·0.6112604670 = 0.000650134420;
    // min_lr from k = 10.
    let want = [0.0, 0.001 / 3.0, 0.002 / 3.0, 0.001];
    for (k, w) in want.iter().enumerate() {
        assert_eq!(lrs[k], *w as f32, "step {}", k + 1);
    }
    assert_eq!(lrs[6], 0.000_650_134_420_f64 as f32);
    assert_eq!(&lrs[10..], &[0.0001, 0.0001]);
    assert!(lrs[4..10].windows(2).all(|w| w[1] < w[0]), "{lrs:?}");

    // A resume under another schedule, or none, is refused.
    let resume = dir.path().join("b/step-6.safetensors").display().to_string();
    for other in [&["--lr-schedule", "cosine:warmup=3,total=20,min=0.0001"][..], &[]] {
        let o = mpc(&[&["train", MLP, "--data", DIGITS, "--steps", "12", "--resume", &resume], other].concat());
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
        assert!(
            err.contains("cannot resume: it was trained with --lr-schedule cosine:warmup=3,total=10,min=0.0001"),
            "{err}"
        );
    }

    // A bad schedule is a usage error.
    let o = mpc(&["train", MLP, "--lr-schedule", "cosine:warmup=20,total=10"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("warmup ≤ total"), "{:?}", text(&o));
}
