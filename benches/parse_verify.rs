//! Parse and verify throughput on synthetic MLP-like graphs of 10^3 to 10^6
//! nodes.
//!
//! `cargo bench --bench parse_verify` prints one table row per size: nodes,
//! JSON size, the median `parse_str` and `verify` times, and the total per
//! node. Sizes can be limited with `MPC_BENCH_MAX_NODES=100000`. Run as a
//! test (`cargo test --benches`), it only checks the smallest size once.

// The allocator the `mpc` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Hidden width, batch size and classes of the synthetic model.
const WIDTH: usize = 64;
const BATCH: usize = 32;
const CLASSES: usize = 10;

/// A graph of exactly `target` nodes (at least 12), written like the
/// examples: the batch inputs, then per block two params (`w`, `b`) and three
/// forward nodes (`matmul -> add bias -> relu | gelu`), a few extra `relu`s to
/// make up the count, then a classifier head and a cross-entropy loss.
fn synthetic(target: usize) -> String {
    // inputs (2) + head params (2) + head nodes (3) = 7; 5 nodes per block.
    let blocks = (target.max(12) - 7) / 5;
    let extra = target.max(12) - 7 - 5 * blocks;
    let mut s = String::with_capacity(blocks * 400 + 1024);
    s.push_str("{\n  \"format\": \"mpc/1\",\n  \"name\": \"synthetic_mlp\",\n");
    let _ = writeln!(
        s,
        "  \"inputs\": [\n    {{\"name\": \"x\", \"shape\": [{BATCH}, {WIDTH}]}},\n    {{\"name\": \"labels\", \"shape\": [{BATCH}], \"dtype\": \"i32\"}}\n  ],"
    );
    s.push_str("  \"params\": [\n");
    for i in 0..blocks {
        let _ = writeln!(
            s,
            "    {{\"name\": \"l{i}_w\", \"shape\": [{WIDTH}, {WIDTH}], \"init\": {{\"kind\": \"kaiming_normal\"}}}},"
        );
        let _ = writeln!(s, "    {{\"name\": \"l{i}_b\", \"shape\": [{WIDTH}], \"init\": {{\"kind\": \"zeros\"}}}},");
    }
    let _ = writeln!(
        s,
        "    {{\"name\": \"head_w\", \"shape\": [{WIDTH}, {CLASSES}], \"init\": {{\"kind\": \"xavier_uniform\"}}}},"
    );
    let _ = writeln!(s, "    {{\"name\": \"head_b\", \"shape\": [{CLASSES}], \"init\": {{\"kind\": \"zeros\"}}}}");
    s.push_str("  ],\n  \"forward\": [\n");
    let mut h = "x".to_string();
    for i in 0..blocks {
        let act = if i % 2 == 0 { "relu" } else { "gelu" };
        let _ = writeln!(s, "    {{\"name\": \"l{i}_mm\", \"op\": \"matmul\", \"inputs\": [\"{h}\", \"l{i}_w\"]}},");
        let _ = writeln!(s, "    {{\"name\": \"l{i}_pre\", \"op\": \"add\", \"inputs\": [\"l{i}_mm\", \"l{i}_b\"]}},");
        let _ = writeln!(s, "    {{\"name\": \"l{i}_act\", \"op\": \"{act}\", \"inputs\": [\"l{i}_pre\"]}},");
        h = format!("l{i}_act");
    }
    for i in 0..extra {
        let _ = writeln!(s, "    {{\"name\": \"extra{i}\", \"op\": \"relu\", \"inputs\": [\"{h}\"]}},");
        h = format!("extra{i}");
    }
    let _ = writeln!(s, "    {{\"name\": \"logits_mm\", \"op\": \"matmul\", \"inputs\": [\"{h}\", \"head_w\"]}},");
    s.push_str("    {\"name\": \"logits\", \"op\": \"add\", \"inputs\": [\"logits_mm\", \"head_b\"]},\n");
    s.push_str("    {\"name\": \"loss\", \"op\": \"cross_entropy\", \"inputs\": [\"logits\", \"labels\"]}\n");
    s.push_str("  ],\n  \"loss\": \"loss\",\n  \"optimizer\": {\"kind\": \"adamw\", \"lr\": 0.001}\n}\n");
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Row {
    nodes: usize,
    mb: f64,
    parse: Duration,
    parse_best: Duration,
    verify: Duration,
    verify_best: Duration,
    drop: Duration,
}

fn measure(target: usize, runs: usize) -> Row {
    let text = synthetic(target);
    let mut parse = Vec::with_capacity(runs);
    let mut verify = Vec::with_capacity(runs);
    let mut drop = Vec::with_capacity(runs);
    let mut nodes = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let g = mpc::parse_str(black_box(&text)).expect("the synthetic graph parses");
        parse.push(t0.elapsed());
        nodes = g.node_count();
        let t0 = Instant::now();
        let r = mpc::verify(black_box(&g));
        verify.push(t0.elapsed());
        if let Err(e) = r {
            panic!("the synthetic graph does not verify: {e}");
        }
        let t0 = Instant::now();
        std::mem::drop(g);
        drop.push(t0.elapsed());
    }
    assert_eq!(nodes, target, "the generator's node count");
    Row {
        nodes,
        mb: text.len() as f64 / 1e6,
        parse_best: *parse.iter().min().expect("at least one run"),
        verify_best: *verify.iter().min().expect("at least one run"),
        parse: median(parse),
        verify: median(verify),
        drop: median(drop),
    }
}

/// The two-step path (`parse_raw` + `from_raw`), which `parse_str` takes
/// only for files its streaming pass declines (errors, sections out of
/// order): JSON -> `RawGraph` (serde, with the `serde_path_to_error`
/// tracking `parse_raw` uses, and plain `serde_json` for comparison),
/// `RawGraph` -> `Graph` (names, edges, shape inference), and freeing the
/// `RawGraph`. Medians, in ms.
fn split(target: usize, runs: usize) -> [f64; 4] {
    let text = synthetic(target);
    let (mut serde, mut plain, mut build, mut free) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        let raw: mpc::format::RawGraph = serde_json::from_str(black_box(&text)).expect("the synthetic graph parses");
        plain.push(t0.elapsed());
        std::mem::drop(raw);
        let t0 = Instant::now();
        let raw = mpc::format::parse::parse_raw(black_box(&text)).expect("the synthetic graph parses");
        serde.push(t0.elapsed());
        let t0 = Instant::now();
        let g = mpc::format::parse::from_raw(black_box(&raw)).expect("the synthetic graph is valid");
        build.push(t0.elapsed());
        let t0 = Instant::now();
        std::mem::drop(raw);
        free.push(t0.elapsed());
        std::mem::drop(g);
    }
    [ms(median(serde)), ms(median(plain)), ms(median(build)), ms(median(free))]
}

fn main() {
    // Cargo passes `--bench` when benchmarking; without it (cargo test
    // --benches) just check that the smallest size works.
    if !std::env::args().any(|a| a == "--bench") {
        let r = measure(1_000, 1);
        println!("parse_verify: {} nodes parsed and verified (test mode)", r.nodes);
        return;
    }
    let max: usize = std::env::var("MPC_BENCH_MAX_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let min: usize = std::env::var("MPC_BENCH_MIN_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let sizes: Vec<(usize, usize)> = [(1_000, 21), (10_000, 11), (100_000, 5), (1_000_000, 3)]
        .into_iter()
        .filter(|&(n, _)| n >= min && n <= max)
        .collect();
    println!("parse_str + verify on synthetic MLP graphs (median of the runs; best in parentheses)");
    println!(
        "{:>9} {:>8} {:>5} {:>20} {:>20} {:>9} {:>13}",
        "nodes", "JSON MB", "runs", "parse ms", "verify ms", "drop ms", "total ns/node"
    );
    for &(target, runs) in &sizes {
        let r = measure(target, runs);
        let total_ns = (r.parse + r.verify).as_secs_f64() * 1e9 / r.nodes as f64;
        println!(
            "{:>9} {:>8.2} {:>5} {:>9.2} ({:>8.2}) {:>9.2} ({:>8.2}) {:>9.2} {:>13.0}",
            r.nodes,
            r.mb,
            runs,
            ms(r.parse),
            ms(r.parse_best),
            ms(r.verify),
            ms(r.verify_best),
            ms(r.drop),
            total_ns
        );
    }
    println!();
    println!(
        "The two-step path parse_str falls back to for files its streaming pass declines (medians): \
         parse_raw = JSON -> RawGraph with path tracking; plain = serde_json::from_str; \
         from_raw = RawGraph -> Graph; free = drop(RawGraph). RawNode is {} bytes.",
        std::mem::size_of::<mpc::format::RawNode>(),
    );
    println!("{:>9} {:>14} {:>10} {:>12} {:>10}", "nodes", "parse_raw ms", "plain ms", "from_raw ms", "free ms");
    for &(target, runs) in &sizes {
        let [serde, plain, build, free] = split(target, runs);
        println!("{target:>9} {serde:>14.2} {plain:>10.2} {build:>12.2} {free:>10.2}");
    }
}
