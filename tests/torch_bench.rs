//! The PyTorch side of the GPT benchmark (benches/torch_gpt.py, driven with
//! mpc's by benches/side_by_side.py) must not rot: both scripts compile, and
//! where PyTorch is installed (`MPC_TORCH_PYTHON`, else `python3`) the tiny
//! configuration runs on the CPU in every eager mode, side by side with
//! `mpc bench`, and the two agree on the model's size.

use std::process::Command;

fn python() -> String {
    std::env::var("MPC_TORCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn the_benchmark_scripts_compile() {
    let o = Command::new("python3")
        // Compiled in memory: py_compile would leave __pycache__ in the tree.
        .args(["-c", "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')"])
        .args(["benches/torch_gpt.py", "benches/side_by_side.py"])
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_tiny_gpt_runs_in_pytorch_and_mpc_side_by_side() {
    let py = python();
    let has_torch = Command::new(&py).args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if !has_torch {
        eprintln!("skipped: no PyTorch in {py} (set MPC_TORCH_PYTHON to a Python that has it)");
        return;
    }
    let o = Command::new(&py)
        .args(["benches/side_by_side.py", "--device", "cpu", "--tiny", "--no-compile", "--steps", "1", "--warmup", "0"])
        .args(["--mpc", env!("CARGO_BIN_EXE_mpc"), "--python", &py])
        .output()
        .expect("the driver runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for run in ["pytorch eager-fp32", "pytorch eager-fp16", "pytorch eager-bf16", "mpc fp32", "mpc fp16", "mpc bf16"] {
        assert!(out.lines().any(|l| l.starts_with(run)), "{run}: {out}");
    }
    // torch_gpt.py counts src/gen.rs's parameters: 0.1 M for the tiny model.
    let params =
        mpc::gen::Gpt { layers: 2, d_model: 64, heads: 4, seq: 32, vocab: 65, batch: 2, ..mpc::gen::Gpt::gpt2_small() }
            .parameters();
    assert!(out.contains(&format!("{:.1} M parameters", params as f64 / 1e6)), "{out}");
}
