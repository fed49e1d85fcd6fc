//! Lowering throughput, side by side with the ONNX float16 converters.
//!
//! Builds the graph that ../shared/bench/onnx_fp16_peers.py builds in ONNX
//! (layers of MatMul(W) -> Add(b) -> Relu on [4, 16], a Softmax at the end)
//! and times mpc's forward lowering (autocast + cleanup) and the whole
//! training pipeline (grad, autocast, loss-scale, master-weights, cleanup).
//! When python3 can import onnxconverter_common and onnxruntime, the peer
//! script runs in the same process tree for the same sizes, and the table
//! shows the per-node ratio.
//!
//! Run: `cargo bench --bench lower` (sizes: MPC_BENCH_LAYERS="333,3333,33333,333333";
//! MPC_BENCH_PEERS=0 skips the peers).

use std::process::Command;
use std::time::Instant;

// The allocator the `mpc` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use mpc::ir::op::{Init, Op, Role};
use mpc::passes::{self, Options, Pass};
use mpc::{DType, Graph, TensorType, ValueId};

fn chain(layers: usize) -> Graph {
    let mut g = Graph::new("chain");
    let v = |n| ValueId { node: n, slot: 0 };
    let d = 16;
    let mut x =
        v(g.add_node("x", Op::Input { ty: TensorType::new(DType::F32, vec![4, d]) }, Role::Forward, &[]).unwrap());
    for i in 0..layers {
        let w = g
            .add_node(
                format!("W{i}"),
                Op::Param { ty: TensorType::new(DType::F32, vec![d, d]), init: Init::Normal { mean: 0.0, std: 0.1 } },
                Role::Forward,
                &[],
            )
            .unwrap();
        let b = g
            .add_node(
                format!("b{i}"),
                Op::Param { ty: TensorType::new(DType::F32, vec![d]), init: Init::Zeros },
                Role::Forward,
                &[],
            )
            .unwrap();
        let m = g
            .add_node(format!("m{i}"), Op::Matmul { transpose_a: false, transpose_b: false }, Role::Forward, &[x, v(w)])
            .unwrap();
        let a = g.add_node(format!("a{i}"), Op::Add, Role::Forward, &[v(m), v(b)]).unwrap();
        x = v(g.add_node(format!("r{i}"), Op::Relu, Role::Forward, &[v(a)]).unwrap());
    }
    let y = g.add_node("y", Op::Softmax { axis: -1, causal: false }, Role::Forward, &[x]).unwrap();
    let l = g.add_node("loss", Op::ReduceSum { axes: vec![0, 1], keepdims: false }, Role::Forward, &[v(y)]).unwrap();
    g.loss = Some(v(l));
    g.optimizer = Some(serde_json::from_str(r#"{"kind": "sgd", "lr": 0.01}"#).unwrap());
    g
}

/// Best of `runs` timings of `f` on fresh clones of `g`, in seconds.
fn best(g: &Graph, runs: usize, mut f: impl FnMut(&mut Graph)) -> f64 {
    (0..runs)
        .map(|_| {
            let mut h = g.clone();
            let t = Instant::now();
            f(&mut h);
            let dt = t.elapsed().as_secs_f64();
            drop(h);
            dt
        })
        .fold(f64::INFINITY, f64::min)
}

/// Runs the ONNX peers' script for these layer counts: layers -> ms of onnxconverter_common.
fn peers(layers: &[usize]) -> Option<Vec<(usize, f64)>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench/onnx_fp16_peers.py");
    if !std::path::Path::new(script).exists() || std::env::var("MPC_BENCH_PEERS").is_ok_and(|v| v == "0") {
        return None;
    }
    let args: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
    let out = Command::new("python3").arg(script).args(&args).output().ok()?;
    if !out.status.success() {
        eprintln!("peers: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut res = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("onnxconverter_common")) {
        let f: Vec<&str> = line.split('\t').collect();
        let n: usize = f.get(1)?.strip_prefix("N_nodes=")?.parse().ok()?;
        let ms: f64 = f.get(2)?.strip_suffix(" ms")?.parse().ok()?;
        res.push(((n - 1) / 3, ms));
    }
    Some(res)
}

/// The whole pipeline on every ir-example.
fn examples() {
    println!("\n{:<24} {:>8} {:>10} {:>12} {:>12}", "ir-example", "nodes", "after", "fp16 ms", "bf16 ms");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ir-examples");
    let mut paths: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(g) = mpc::parse_str(&text) else { continue };
        let time = |low| best(&g, 20, |h| drop(passes::lower(h, &Options { low, ..Options::default() })));
        let mut after = g.clone();
        passes::lower(&mut after, &Options::default()).unwrap();
        println!(
            "{:<24} {:>8} {:>10} {:>12.3} {:>12.3}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            g.node_count(),
            after.node_count(),
            time(DType::F16) * 1e3,
            time(DType::Bf16) * 1e3
        );
    }
}

fn main() {
    let layers: Vec<usize> = std::env::var("MPC_BENCH_LAYERS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![333, 3333, 33333, 333333]);
    let peer_layers: Vec<usize> = layers.iter().copied().filter(|&l| l <= 40000).collect();
    let peer = peers(&peer_layers).unwrap_or_default();
    println!(
        "{:>8} {:>10} {:>14} {:>12} {:>16} {:>12} {:>14} {:>10}",
        "layers", "op nodes", "autocast ms", "ns/op node", "full pipeline ms", "ns/op node", "onnxcc ms", "ratio"
    );
    for &l in &layers {
        let g = chain(l);
        let op_nodes = 3 * l + 1;
        let runs = if l > 100_000 { 2 } else { 5 };
        let opts = Options::default();
        let fwd = best(&g, runs, |h| {
            let mut p = passes::Pipeline::new(&opts);
            p.autocast.run(h).unwrap();
            p.cleanup.run(h).unwrap();
        });
        let full = if std::env::var("MPC_BENCH_ONLY").is_ok_and(|v| v == "autocast") {
            f64::NAN
        } else {
            best(&g, runs, |h| {
                passes::lower(h, &Options { verify_each: false, ..Options::default() }).unwrap();
            })
        };
        let (peer_ms, ratio) = match peer.iter().find(|(pl, _)| *pl == l) {
            Some(&(_, ms)) => (format!("{ms:.1}"), format!("{:.0}x", ms / 1e3 / fwd)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:>8} {:>10} {:>14.2} {:>12.0} {:>16.2} {:>12.0} {:>14} {:>10}",
            l,
            op_nodes,
            fwd * 1e3,
            fwd * 1e9 / op_nodes as f64,
            full * 1e3,
            full * 1e9 / op_nodes as f64,
            peer_ms,
            ratio
        );
    }
    examples();
}
