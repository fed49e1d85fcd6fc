//! `--device`, `mpc devices` and `mpc selftest` from the command line. On a
//! machine without a GPU (CI), `--device cuda` is a clear error and `auto`
//! trains on the CPU with a notice; `cuda-emu` trains through the CUDA
//! backend's kernels in the SIMT emulation and matches the CPU run.

mod common;

use common::{mpc, text};

const MLP: &str = "ir-examples/mlp.json";

fn gpu_here() -> bool {
    let o = mpc(&["devices"]);
    assert!(o.status.success(), "{:?}", text(&o));
    String::from_utf8_lossy(&o.stdout).contains("--device cuda runs on gpu 0")
}

fn losses(path: &std::path::Path) -> Vec<(f64, f64, bool)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["loss"].as_f64().unwrap(), v["loss_scale"].as_f64().unwrap(), v["found_inf"].as_bool().unwrap())
        })
        .collect()
}

#[test]
fn devices_reports_every_part_and_never_panics() {
    let o = mpc(&["devices"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for part in ["driver ", "nvrtc ", "cublaslt ", "--device cuda "] {
        assert!(out.contains(part), "no `{part}` line:\n{out}");
    }
}

#[test]
fn cuda_without_a_gpu_is_an_error_and_auto_falls_back() {
    if gpu_here() {
        eprintln!("a GPU is usable here: the no-GPU behaviour is not checked");
        return;
    }
    let o = mpc(&["train", MLP, "--steps", "2", "--device", "cuda"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("--device cuda: no usable CUDA GPU:"), "{err}");
    assert!(err.contains("`mpc devices` shows what was found"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.contains("final train loss"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("auto.jsonl"), dir.path().join("cpu.jsonl"));
    let o = mpc(&["train", MLP, "--steps", "4", "--log", a.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("note: no usable CUDA GPU (") && err.contains("training on the CPU"), "{err}");
    assert!(err.contains("device: cpu"), "{err}");
    assert!(out.starts_with("planned peak memory "), "{out}");
    let o = mpc(&["train", MLP, "--steps", "4", "--device", "cpu", "--log", b.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(!err.contains("note:"), "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "auto on the CPU is the CPU run");
}

#[test]
fn a_bad_device_name_lists_the_choices() {
    let o = mpc(&["train", MLP, "--device", "gpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("expected one of cpu, cuda, cuda-emu, auto"), "{:?}", text(&o));
    let o = mpc(&["selftest", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("use cuda or cuda-emu"), "{:?}", text(&o));
}

/// Eight fp16 steps of the MLP through the CUDA kernels in the emulation
/// and on the CPU: the same kernels' arithmetic (f32 compute, one rounding
/// to the output type) and the same GEMM accumulation order; only the
/// order of warp reductions differs, by a few f32 ulps (the loss is held
/// to 1e-5 relative; loss scale and skips are equal). The final state is
/// held as `mpc selftest` holds the emulation (selftest::Tolerance):
/// a value a few f32 ulps off may round one f16 ulp (2^-10 relative)
/// apart when cast down, so moments to 8 such ulps of their tensor's
/// largest magnitude and params to 8 such ulps of Adam's total movement
/// (lr a step), plus 2 f32 ulps for the last rounding.
#[test]
fn cuda_emu_trains_like_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let run = |device: &str| {
        let log = dir.path().join(format!("{device}.jsonl"));
        let ck = dir.path().join(device);
        let o = mpc(&[
            "train",
            MLP,
            "--steps",
            "8",
            "--device",
            device,
            "--log",
            log.to_str().unwrap(),
            "--checkpoint",
            ck.to_str().unwrap(),
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{device}: {out}\n{err}");
        (losses(&log), mpc::train::checkpoint::load(&ck.join("step-8.safetensors")).unwrap())
    };
    let (emu, emu_ck) = run("cuda-emu");
    let (cpu, cpu_ck) = run("cpu");
    assert_eq!(emu.len(), 8);
    for (s, (e, c)) in emu.iter().zip(&cpu).enumerate() {
        assert!((e.0 - c.0).abs() <= 1e-5 * c.0.abs(), "step {s}: loss {} vs {}", e.0, c.0);
        assert_eq!((e.1, e.2), (c.1, c.2), "step {s}: scale and skip");
    }
    assert_eq!(emu_ck.state.keys().collect::<Vec<_>>(), cpu_ck.state.keys().collect::<Vec<_>>());
    let (u, lr, steps) = (2f64.powi(-10), 1e-3, 8.0);
    for (name, t) in &cpu_ck.state {
        let (a, b) = (t.to_f32_vec(), emu_ck.state[name].to_f32_vec());
        let max_abs = a.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
        let is_param = cpu_ck.state.contains_key(&format!("{name}.adam_m"));
        let bound = 8.0 * u * if is_param { lr * steps } else { max_abs } + 2f64.powi(-22) * max_abs;
        for (x, y) in a.iter().zip(&b) {
            let d = (f64::from(*x) - f64::from(*y)).abs();
            assert!(d <= bound, "`{name}`: {y} vs {x} on the CPU, bound {bound:e}");
        }
    }
}

#[test]
fn selftest_on_the_emulation_passes() {
    let o = mpc(&["selftest", "--device", "cuda-emu", "--steps", "3"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("mlp.json") && out.contains("underflow.json"), "{out}");
}

#[test]
fn compare_runs_on_the_emulation() {
    let dir = tempfile::tempdir().unwrap();
    let o = mpc(&["compare", MLP, "--steps", "3", "--device", "cuda-emu", "--out", dir.path().to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("device: cuda-emu"), "{err}");
    assert!(dir.path().join("compare.json").exists());
}

/// `--cuda-graph on` (the default) replays the step as a graph once it
/// repeats and says so at the end; `off` runs every step launch by launch:
/// the same losses to the bit, and no graph line.
#[test]
fn cuda_graphs_replay_on_the_emulation_and_train_alike() {
    let dir = tempfile::tempdir().unwrap();
    let run = |graph: &str| {
        let log = dir.path().join(format!("log-{graph}.jsonl"));
        let o = mpc(&[
            "train",
            MLP,
            "--steps",
            "8",
            "--device",
            "cuda-emu",
            "--cuda-graph",
            graph,
            "--log",
            log.to_str().unwrap(),
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{graph}: {out}\n{err}");
        (std::fs::read_to_string(&log).unwrap(), out, err)
    };
    let (on_log, on_out, on_err) = run("on");
    let (off_log, off_out, off_err) = run("off");
    assert_eq!(on_log, off_log);
    assert_eq!(on_out, off_out);
    assert!(on_err.contains("cuda graphs: 3 of 8 steps replayed, 2 captured, 3 launched one by one"), "{on_err}");
    assert!(!off_err.contains("cuda graphs"), "{off_err}");
    let o = mpc(&["train", MLP, "--steps", "1", "--device", "cuda-emu", "--cuda-graph", "maybe"]);
    assert!(text(&o).1.contains("`maybe`: expected on or off"), "{:?}", text(&o));
}
