//! The planned memory of every example's lowered training step: the arena
//! keeps values that are live at the same time apart, is never below the
//! largest set of simultaneously live values, and beats a buffer per value;
//! the resident state is exactly the params and the optimizer/scaler state.

use mpc::exec::memory::{report, requests};
use mpc::exec::Plan;
use mpc::passes::{self, Options};
use mpc::Op;

const EXAMPLES: &[&str] = &[
    "ir-examples/mlp.json",
    "ir-examples/mlp_backward.json",
    "ir-examples/underflow.json",
    "ir-examples/regression_mse.json",
    "ir-examples/cnn.json",
    "ir-examples/gpt_block.json",
];

fn lowered(path: &str) -> mpc::Graph {
    let mut g = mpc::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    passes::lower(&mut g, &Options::default()).unwrap();
    g
}

#[test]
fn every_example_plans_a_valid_arena() {
    for path in EXAMPLES {
        let g = lowered(path);
        let plan = Plan::new(&g, 0).unwrap();
        let r = report(&plan).unwrap();
        let reqs = requests(&plan).unwrap();
        assert_eq!(reqs.len(), r.values, "{path}");
        assert_eq!(reqs.len(), r.arena.offsets.len(), "{path}");
        assert!(r.arena.arena_bytes >= r.peak_live, "{path}: arena below the live peak");
        assert!(r.arena.arena_bytes < r.unplanned, "{path}: no reuse at all ({r})");
        // No two values live at the same step share a byte.
        let size = |b: u64| b.div_ceil(256) * 256;
        for (i, (_, a)) in reqs.iter().enumerate() {
            for (j, (_, b)) in reqs.iter().enumerate().skip(i + 1) {
                let live_together = a.start <= b.end && b.start <= a.end;
                let (oa, ob) = (r.arena.offsets[i], r.arena.offsets[j]);
                let apart = oa + size(a.bytes) <= ob || ob + size(b.bytes) <= oa;
                assert!(!live_together || apart || a.bytes == 0 || b.bytes == 0, "{path}: values {i} and {j} overlap");
            }
        }
        // The resident state, counted from the graph itself.
        let (mut params, mut state, mut batch) = (0u64, 0u64, 0u64);
        for n in g.node_ids() {
            let node = g.node(n);
            let bytes = || {
                g.ty(mpc::ValueId { node: n, slot: 0 }).shape.numel().unwrap()
                    * g.ty(mpc::ValueId { node: n, slot: 0 }).dtype.size_bytes() as u64
            };
            match node.op() {
                Op::Param { .. } => params += bytes(),
                Op::State { .. } => state += bytes(),
                Op::Input { .. } => batch += bytes(),
                _ => {}
            }
        }
        assert_eq!((r.params, r.state, r.batch), (params, state, batch), "{path}");
        // Every param and every state but constants of the scaler is updated.
        assert!(r.new_state >= params && r.new_state <= params + state, "{path}: {r}");
        assert_eq!(r.peak(), params + state + batch + r.new_state + r.arena.arena_bytes);
        eprintln!("{path}: {r}");
    }
}
