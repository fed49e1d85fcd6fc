//! One CUDA graph per step, on the SIMT emulation: a step's work is
//! recorded, captured once it repeats and replayed after; a replayed run
//! is the uncaptured run bit for bit, and a step whose kernel arguments
//! change (or that reads the device in its middle) runs uncaptured, with
//! the reason.

use mpc::exec::cuda::backend::CudaBackend;
use mpc::exec::cuda::emu::EmuGpu;
use mpc::exec::cuda::gpu::{Gpu, KArg, Launch};
use mpc::exec::cuda::graph::Work;
use mpc::exec::{init_state, GraphRuns, RunOptions, Session, State};
use mpc::passes::{self, Options};
use mpc::train::data::{synthetic_batch, Layout};
use mpc::DType;

fn lowered(path: &str, low: DType) -> (mpc::Graph, mpc::Graph) {
    let source = mpc::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut g = source.clone();
    passes::lower(&mut g, &Options { low, ..Options::default() }).unwrap();
    (source, g)
}

fn batches(path: &str, source: &mpc::Graph) -> Box<dyn Fn(u64) -> State> {
    if path.ends_with("gpt_block.json") {
        let text = std::path::Path::new("ir-examples/data/declaration.txt");
        let data = mpc::train::data::Dataset::load_text(text, source, 0).unwrap();
        return Box::new(move |s| data.train_batch(s).unwrap());
    }
    let layout = Layout::of(source).unwrap();
    Box::new(move |s| synthetic_batch(&layout, 0, s).unwrap())
}

/// Trains `steps` steps with graphs and multi-tensor launches both on or
/// both off: the losses' bits, the final state and how the steps ran.
fn train(path: &str, low: DType, steps: u64, graphs: bool) -> (Vec<Option<u32>>, State, GraphRuns) {
    train_with(path, low, steps, graphs, false)
}

/// [`train`], with fusion groups (generated kernels) on or off too.
fn train_with(path: &str, low: DType, steps: u64, graphs: bool, fuse: bool) -> (Vec<Option<u32>>, State, GraphRuns) {
    let backend = CudaBackend::new(EmuGpu::new(), false).with_multi_tensor(graphs).with_fusion(fuse);
    train_on(path, low, steps, graphs, backend)
}

/// Trains `path` lowered to `low` on `backend`, with graphs as `graphs` says.
fn train_on(
    path: &str,
    low: DType,
    steps: u64,
    graphs: bool,
    backend: CudaBackend<EmuGpu>,
) -> (Vec<Option<u32>>, State, GraphRuns) {
    let (source, g) = lowered(path, low);
    let batch = batches(path, &source);
    let state = init_state(&g, 0).unwrap();
    let mut sess = Session::new(&g, backend, 0, &state).unwrap();
    sess.set_graphs(graphs);
    let mut losses = Vec::new();
    for s in 0..steps {
        let r = sess.step(&batch(s), s, &RunOptions::default()).unwrap();
        losses.push(r.loss.map(f32::to_bits));
    }
    (losses, sess.state().unwrap(), sess.graph_runs().clone())
}

fn same_state(a: &State, b: &State, what: &str) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}");
    for (k, t) in a {
        assert!(t.bit_eq(&b[k]), "{what}: `{k}` differs");
    }
}

/// The examples without dropout: the state alternates between two sets of
/// buffers, so two lists of work repeat; each is captured the second time
/// it comes, and every later step is a replay. Losses and the final state
/// are those of the run without graphs, bit for bit.
#[test]
fn replayed_training_is_the_uncaptured_training_bit_for_bit() {
    const STEPS: u64 = 8;
    for path in [
        "ir-examples/mlp.json",
        "ir-examples/mlp_backward.json",
        "ir-examples/underflow.json",
        "ir-examples/regression_mse.json",
        "ir-examples/cnn.json",
    ] {
        let (la, sa, runs) = train(path, DType::F16, STEPS, true);
        let (lb, sb, off) = train(path, DType::F16, STEPS, false);
        eprintln!("{path}: {runs:?}");
        assert_eq!(la, lb, "{path}");
        same_state(&sa, &sb, path);
        assert_eq!(off, GraphRuns::default(), "{path}: graphs off records nothing");
        assert_eq!(runs.captured, 2, "{path}: {runs:?}");
        assert_eq!(runs.direct + runs.captured + runs.replayed, STEPS, "{path}: {runs:?}");
        // Steps 0 and 1 warm up; step 2 reads the buffers step 1 took from
        // the pool (the state uploaded at the open, in another order) where
        // step 0 read the upload itself; steps 3 and 4 repeat steps 1 and 2.
        assert_eq!(runs.replayed, STEPS - 5, "{path}: {runs:?}");
    }
}

/// Fusion's generated kernels are recorded, captured and replayed like the
/// others: with fusion, multi-tensor launches and graphs all on, training is
/// the plain run's bit for bit, and the steps after the warm-up replay.
#[test]
fn fused_kernels_replay_in_graphs_alike() {
    const STEPS: u64 = 7;
    for path in ["ir-examples/mlp.json", "ir-examples/gpt_block.json"] {
        // Without the epilogue GEMMs, which round once where the unfused
        // steps round twice: the plain run's bits.
        let (la, sa, runs) = train_fused(path, STEPS, true, false);
        let (lb, sb, _) = train_with(path, DType::F16, STEPS, false, false);
        eprintln!("{path}: {runs:?}");
        assert_eq!(la, lb, "{path}");
        same_state(&sa, &sb, path);
        assert_eq!((runs.captured, runs.replayed), (2, STEPS - 5), "{path}: {runs:?}");
        // With them, replayed as well, and the bits of the same fused
        // step run without graphs.
        let (la, sa, runs) = train_fused(path, STEPS, true, true);
        let (lb, sb, _) = train_fused(path, STEPS, false, true);
        assert_eq!(la, lb, "{path}: epilogue GEMMs");
        same_state(&sa, &sb, path);
        assert_eq!((runs.captured, runs.replayed), (2, STEPS - 5), "{path}: {runs:?}");
    }
}

/// [`train_with`] fused in fp16, with multi-tensor launches and graphs as
/// `graphs` says, and the epilogue GEMMs as `epilogues` does.
fn train_fused(path: &str, steps: u64, graphs: bool, epilogues: bool) -> (Vec<Option<u32>>, State, GraphRuns) {
    let backend = CudaBackend::new(EmuGpu::new(), false)
        .with_multi_tensor(graphs)
        .with_fusion(true)
        .with_gemm_epilogues(epilogues);
    train_on(path, DType::F16, steps, graphs, backend)
}

/// gpt_block has dropout, whose seed combines the step number: that number
/// is read from the device, so the step's arguments still repeat, and the
/// masks (hence losses and state) are the uncaptured run's, in f16 and bf16.
#[test]
fn dropout_reads_the_step_on_the_device_and_replays() {
    const STEPS: u64 = 7;
    for low in [DType::F16, DType::Bf16] {
        let path = "ir-examples/gpt_block.json";
        let (la, sa, runs) = train(path, low, STEPS, true);
        let (lb, sb, _) = train(path, low, STEPS, false);
        eprintln!("{path} {low}: {runs:?}");
        assert_eq!(la, lb, "{low}");
        same_state(&sa, &sb, path);
        assert_eq!((runs.captured, runs.replayed), (2, STEPS - 5), "{low}: {runs:?}");
    }
}

/// A step that reads the device in its middle (the overflow test hook
/// downloads a value and uploads it as inf) runs uncaptured, says why, and
/// trains as without graphs; the steps after it replay again.
#[test]
fn a_step_that_reads_the_device_runs_uncaptured_with_the_reason() {
    let path = "ir-examples/mlp.json";
    let (source, g) = lowered(path, DType::F16);
    let batch = batches(path, &source);
    let state = init_state(&g, 0).unwrap();
    let opts = RunOptions { inject_inf: Some(("dw1".into(), 6)), ..RunOptions::default() };
    let mut runs = Vec::new();
    let mut results = Vec::new();
    for graphs in [true, false] {
        let mut sess = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).unwrap();
        sess.set_graphs(graphs);
        let mut losses = Vec::new();
        for s in 0..10 {
            let r = sess.step(&batch(s), s, &opts).unwrap();
            assert_eq!(r.found_inf, Some(s == 6), "step {s}");
            losses.push(r.loss.map(f32::to_bits));
            if graphs {
                runs.push(sess.graph_runs().clone());
            }
        }
        results.push((losses, sess.state().unwrap()));
    }
    assert_eq!(results[0].0, results[1].0);
    same_state(&results[0].1, &results[1].1, path);
    let at6 = &runs[6];
    assert_eq!(at6.direct, runs[5].direct + 1, "{runs:?}");
    assert_eq!(
        at6.last_reason.as_deref(),
        Some("the step reads a device value on the host in the middle of its work"),
        "{runs:?}"
    );
    // The odd step launched its unscales apart, over another table: the
    // step after writes the usual one back (a write: not replayable), and
    // the steps after that replay again.
    assert_eq!(runs[9].replayed, runs[7].replayed + 2, "{runs:?}");
}

/// A step whose work differs from the step two before (here: a value
/// fetched on one step and not the next, so the step keeps one more
/// buffer and its launches change) runs uncaptured with the first
/// difference named.
/// Where the change moves the buffers of a multi-tensor group (the
/// skip-on-overflow selects write the new state), that group writes its
/// table again first, and the step is refused for that write instead.
#[test]
fn a_step_whose_work_changes_is_refused_with_the_difference() {
    let path = "ir-examples/mlp.json";
    let (source, g) = lowered(path, DType::F16);
    let batch = batches(path, &source);
    let state = init_state(&g, 0).unwrap();
    let mut sess = Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &state).unwrap();
    for s in 0..6 {
        let fetch = if s % 3 == 2 { vec!["h1".to_string()] } else { Vec::new() };
        let opts = RunOptions { fetch, ..RunOptions::default() };
        sess.step(&batch(s), s, &opts).unwrap();
    }
    let runs = sess.graph_runs();
    assert_eq!(runs.captured + runs.replayed, 0, "{runs:?}");
    let why = runs.last_reason.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("the step's work differs from the step two before's: item ")
            || why == "the step writes device memory from the host in the middle of its work",
        "{why}"
    );
    // Without multi-tensor launches the difference itself is named.
    let backend = CudaBackend::new(EmuGpu::new(), false).with_multi_tensor(false);
    let mut sess = Session::new(&g, backend, 0, &state).unwrap();
    for s in 0..6 {
        let fetch = if s % 3 == 2 { vec!["h1".to_string()] } else { Vec::new() };
        sess.step(&batch(s), s, &RunOptions { fetch, ..RunOptions::default() }).unwrap();
    }
    let runs = sess.graph_runs();
    assert_eq!(runs.captured + runs.replayed, 0, "{runs:?}");
    let why = runs.last_reason.as_deref().unwrap_or_default();
    assert!(why.starts_with("the step's work differs from the step two before's: item "), "{why}");
}

/// The emulation's graph is the recorded list; replaying it after an
/// allocation it points into was freed is refused, not a stray write.
#[test]
fn a_graph_over_a_freed_allocation_is_refused() {
    let mut gpu = EmuGpu::new();
    let m = gpu.alloc(16).unwrap();
    gpu.start_recording();
    gpu.launch("constant_f32", Launch::linear(1, 32), &[KArg::Ptr(&m, 0), KArg::I64(4), KArg::F64(2.5)]).unwrap();
    let rec = gpu.stop_recording();
    assert!(rec.broken.is_none());
    assert!(matches!(&rec.work[..], [Work::Launch { name, .. }] if name == "constant_f32"));
    let mut back = [0u8; 16];
    gpu.read(&m, 0, &mut back).unwrap();
    assert_eq!(back, [0; 16], "recorded, not run");
    let graph = gpu.capture(&rec.work).unwrap();
    gpu.replay(&graph).unwrap();
    gpu.read(&m, 0, &mut back).unwrap();
    assert_eq!(back[..4], 2.5f32.to_le_bytes());
    drop(m);
    let e = gpu.replay(&graph).unwrap_err();
    assert!(e.0.contains("is not inside a live allocation of this device"), "{e}");
}

/// Launches and GEMMs of a steady step (its recorded list), with the
/// multi-tensor launches or without.
fn launches(source: &mpc::Graph, g: &mpc::Graph, multi: bool) -> usize {
    let state = init_state(g, 0).unwrap();
    let backend = CudaBackend::new(EmuGpu::new(), false).with_multi_tensor(multi);
    let mut sess = Session::new(g, backend, 0, &state).unwrap();
    for s in 0..6 {
        let batch = mpc::train::bench::batch(source, 0, s).unwrap();
        sess.step(&batch, s, &RunOptions::default()).unwrap();
    }
    assert_eq!(sess.graph_runs().replayed, 1, "{:?}", sess.graph_runs());
    sess.backend().last_step_work().unwrap()
}

/// The unscales with their overflow check, and the optimizer nodes, each
/// run as one launch where the memory plan allows it at no extra arena
/// byte (the members' inputs must last to the last member): never more
/// launches, and fewer on the transformer and CNN examples and the GPT
/// generator's small config (the numbers are printed). The training is
/// the same: the bit-for-bit tests above run with them on.
#[test]
fn multi_tensor_launches_cut_the_launches_per_step() {
    let mut rows = Vec::new();
    for path in [
        "ir-examples/mlp.json",
        "ir-examples/mlp_backward.json",
        "ir-examples/underflow.json",
        "ir-examples/regression_mse.json",
        "ir-examples/cnn.json",
        "ir-examples/gpt_block.json",
    ] {
        let (source, g) = lowered(path, DType::F16);
        rows.push((path.to_string(), launches(&source, &g, false), launches(&source, &g, true)));
    }
    let small =
        mpc::gen::Gpt { layers: 2, d_model: 64, heads: 4, seq: 32, vocab: 65, batch: 2, ..mpc::gen::Gpt::gpt2_small() };
    let source = mpc::parse_str(&small.graph().to_string()).unwrap();
    let mut g = source.clone();
    passes::lower(&mut g, &Options { low: DType::Bf16, ..Options::default() }).unwrap();
    rows.push(("gen gpt (2 layers, d 64, bf16)".into(), launches(&source, &g, false), launches(&source, &g, true)));
    for (name, before, after) in &rows {
        eprintln!("{name}: {before} launches and GEMMs per step, {after} with multi-tensor launches");
    }
    for (name, before, after) in &rows {
        let fewer = name.contains("gpt") || name.contains("cnn");
        assert!(
            after < before || (!fewer && after == before),
            "{name}: {after} launches with multi-tensor launches, {before} without"
        );
    }
}

/// Multi-tensor launches without graphs (`--cuda-graph off`): the same
/// bits as the per-tensor launches, on the CNN (an unscale group and an
/// SGD-momentum group) and gpt_block (unscale and AdamW groups).
#[test]
fn multi_tensor_launches_without_graphs_train_alike() {
    for path in ["ir-examples/cnn.json", "ir-examples/gpt_block.json"] {
        let (source, g) = lowered(path, DType::F16);
        let batch = batches(path, &source);
        let state = init_state(&g, 0).unwrap();
        let mut runs = Vec::new();
        for multi in [true, false] {
            let backend = CudaBackend::new(EmuGpu::new(), false).with_multi_tensor(multi);
            let mut sess = Session::new(&g, backend, 0, &state).unwrap();
            sess.set_graphs(false);
            let losses: Vec<Option<u32>> = (0..3)
                .map(|s| sess.step(&batch(s), s, &RunOptions::default()).unwrap().loss.map(f32::to_bits))
                .collect();
            runs.push((losses, sess.state().unwrap(), sess.backend().table_bytes()));
        }
        assert!(runs[0].2 > 0 && runs[1].2 == 0, "{path}: groups formed with multi-tensor launches on only");
        assert_eq!(runs[0].0, runs[1].0, "{path}");
        same_state(&runs[0].1, &runs[1].1, path);
    }
}
