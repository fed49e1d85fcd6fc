//! Properties of the static memory planner on random request sets, checked
//! against brute force, and how close its arenas come to the lower bound.

use mpc::exec::memplan::{peak_live_bytes, plan, MemPlan, Request, ALIGN};
use mpc::exec::rng::SplitMix64;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn aligned(bytes: u64) -> u128 {
    u128::from(bytes).div_ceil(u128::from(ALIGN)) * u128::from(ALIGN)
}

fn lifetime(r: &Request) -> (usize, usize) {
    (r.start.min(r.end), r.start.max(r.end))
}

fn intersect(a: &Request, b: &Request) -> bool {
    let ((a0, a1), (b0, b1)) = (lifetime(a), lifetime(b));
    a0 <= b1 && b0 <= a1
}

/// The peak by brute force: it is reached at some value's first step.
fn brute_peak(requests: &[Request]) -> u128 {
    let live_at = |t: usize| -> u128 {
        requests.iter().filter(|r| (lifetime(r).0..=lifetime(r).1).contains(&t)).map(|r| aligned(r.bytes)).sum()
    };
    requests.iter().map(|r| live_at(lifetime(r).0)).max().unwrap_or(0)
}

/// Checks every promise of [`plan`] for one plan; returns nothing, panics
/// with the offending pair or value.
fn check(requests: &[Request], p: &MemPlan) {
    assert_eq!(p.offsets.len(), requests.len());
    let arena = u128::from(p.arena_bytes);
    let mut top = 0u128;
    for (i, (r, &o)) in requests.iter().zip(&p.offsets).enumerate() {
        assert_eq!(o % ALIGN, 0, "offset {o} of request {i} is not aligned");
        let end = u128::from(o) + aligned(r.bytes);
        assert!(end <= arena, "request {i} ends at {end}, past the arena {arena}");
        if r.bytes == 0 {
            assert_eq!(o, 0, "zero-byte request {i} is not at 0");
        }
        top = top.max(end);
    }
    assert_eq!(arena, top, "the arena is larger than its contents");
    for (i, a) in requests.iter().enumerate() {
        for (j, b) in requests.iter().enumerate().skip(i + 1) {
            if a.bytes == 0 || b.bytes == 0 || !intersect(a, b) {
                continue;
            }
            let (oa, ob) = (u128::from(p.offsets[i]), u128::from(p.offsets[j]));
            let disjoint = oa + aligned(a.bytes) <= ob || ob + aligned(b.bytes) <= oa;
            assert!(disjoint, "requests {i} {a:?} at {oa} and {j} {b:?} at {ob} overlap in time and bytes");
        }
    }
    let sum: u128 = requests.iter().map(|r| aligned(r.bytes)).sum();
    assert!(arena >= brute_peak(requests), "the arena {arena} is below the lower bound");
    // Each value goes in a gap or on top of the arena so far, so the arena
    // never exceeds the sum of the sizes.
    assert!(arena <= sum, "the arena {arena} exceeds the sum of sizes {sum}");
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        3 => 1u64..=4096,
        3 => 1u64..=(1 << 20),
        1 => (1u64 << 30)..=(1 << 40),
    ]
}

/// Random requests over a few dozen steps, so that lifetimes often meet;
/// one in eight is written reversed.
fn requests(max_len: usize) -> impl Strategy<Value = Vec<Request>> {
    let one = (size(), 0usize..40, 0usize..40, prop::bool::weighted(0.125)).prop_map(|(bytes, start, len, rev)| {
        let end = start + len;
        if rev {
            Request { bytes, start: end, end: start }
        } else {
            Request { bytes, start, end }
        }
    });
    prop::collection::vec(one, 0..max_len)
}

/// A fixed seed: the same cases on every run and machine, so a failure
/// recurs without a regressions file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x006d_656d_706c_616e),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// No two coexisting values share bytes, offsets are aligned and inside
    /// the arena, and the arena lies between the lower bound and the sum.
    #[test]
    fn plans_are_valid(rs in requests(80)) {
        let p = plan(&rs).expect("these sizes fit in u64");
        check(&rs, &p);
    }

    /// Same input, same plan.
    #[test]
    fn plans_are_deterministic(rs in requests(80)) {
        prop_assert_eq!(plan(&rs), plan(&rs.clone()));
    }

    /// The sweep agrees with brute force.
    #[test]
    fn peak_matches_brute_force(rs in requests(80)) {
        prop_assert_eq!(u128::from(peak_live_bytes(&rs)), brute_peak(&rs));
    }

    /// Values all live at one step must be stacked: the greedy stacks them
    /// without gaps, meeting the bound.
    #[test]
    fn a_clique_is_packed_exactly(sizes in prop::collection::vec(size(), 0..40), spans in prop::collection::vec((0usize..20, 0usize..20), 40)) {
        let rs: Vec<Request> = sizes.iter().zip(&spans).map(|(&bytes, &(a, b))| Request { bytes, start: 20 - a, end: 20 + b }).collect();
        let p = plan(&rs).expect("these sizes fit in u64");
        check(&rs, &p);
        prop_assert_eq!(p.arena_bytes, peak_live_bytes(&rs));
    }

    /// Values that never coexist all go at 0, meeting the bound.
    #[test]
    fn disjoint_lifetimes_all_go_at_zero(sizes in prop::collection::vec(size(), 0..40)) {
        let rs: Vec<Request> = sizes.iter().enumerate().map(|(i, &bytes)| Request { bytes, start: 2 * i, end: 2 * i + 1 }).collect();
        let p = plan(&rs).expect("these sizes fit in u64");
        prop_assert!(p.offsets.iter().all(|&o| o == 0));
        prop_assert_eq!(p.arena_bytes, peak_live_bytes(&rs));
    }

    /// Sizes up to u64::MAX: no panic; a plan is refused only when the sizes
    /// could not all fit in u64 side by side, and any plan given is valid.
    #[test]
    fn any_sizes_are_handled(rs in prop::collection::vec((prop_oneof![any::<u64>(), size()], 0usize..10, 0usize..10), 0..12)) {
        let rs: Vec<Request> = rs.into_iter().map(|(bytes, start, end)| Request { bytes, start, end }).collect();
        let sum: u128 = rs.iter().map(|r| aligned(r.bytes)).sum();
        let peak = peak_live_bytes(&rs);
        prop_assert_eq!(u128::from(peak), brute_peak(&rs).min(u128::from(u64::MAX)));
        match plan(&rs) {
            Some(p) => check(&rs, &p),
            None => prop_assert!(sum > u128::from(u64::MAX)),
        }
    }
}

/// A size drawn log-uniformly from 256 bytes to 16 MiB, as tensor sizes are.
fn log_size(rng: &mut SplitMix64) -> u64 {
    let shift = 8 + rng.next_u64() % 17;
    (1u64 << shift) + rng.next_u64() % (1u64 << shift)
}

/// Random lifetimes over `steps` steps, random sizes.
fn uniform_instance(rng: &mut SplitMix64) -> Vec<Request> {
    let n = 1 + (rng.next_u64() % 200) as usize;
    let steps = 1 + (rng.next_u64() % (2 * n as u64)) as usize;
    (0..n)
        .map(|_| {
            let start = (rng.next_u64() % steps as u64) as usize;
            let len = (rng.next_u64() % (steps as u64 / 4 + 1)) as usize;
            Request { bytes: log_size(rng), start, end: start + len }
        })
        .collect()
}

/// A training step's shape: layer i's activation is made at step i, read
/// at step i + 1 and, if saved, by its backward at step 2L - i; gradients
/// live from their backward step to the next one; a few shapes recur.
fn training_instance(rng: &mut SplitMix64) -> Vec<Request> {
    let layers = 2 + (rng.next_u64() % 150) as usize;
    let shapes: Vec<u64> = (0..1 + rng.next_u64() % 4).map(|_| log_size(rng)).collect();
    let mut rs = Vec::new();
    for i in 0..layers {
        let bytes = shapes[(rng.next_u64() % shapes.len() as u64) as usize];
        let saved = !rng.next_u64().is_multiple_of(3);
        rs.push(Request { bytes, start: i, end: if saved { 2 * layers - i } else { i + 1 } });
        let back = 2 * layers - i;
        rs.push(Request { bytes, start: back, end: back + 1 });
        if rng.next_u64().is_multiple_of(4) {
            // A workspace used by one node only.
            rs.push(Request { bytes: log_size(rng), start: i, end: i });
        }
    }
    rs
}

/// The arena over the lower bound on 3,000 seeded instances, half of each
/// family. Greedy best-fit has no constant-factor guarantee (the problem is
/// NP-hard, and the bound is not always attainable), so the limits pin what
/// was observed rather than a theorem: worst 1.369 (mean 1.021) on the
/// uniform family, worst 1.293 (mean 1.009) on the training-shaped one,
/// both on instances of a few dozen values. The instances are a pure
/// function of the seeds, so the check cannot flake; a planner change that
/// packs worse trips it.
#[test]
fn arenas_stay_near_the_lower_bound() {
    const PER_FAMILY: u64 = 1500;
    let mut worst = [(0.0f64, 0u64); 2];
    let mut total = [0.0f64; 2];
    for seed in 0..2 * PER_FAMILY {
        let mut rng = SplitMix64::new(seed);
        let family = (seed % 2) as usize;
        let rs = if family == 0 { uniform_instance(&mut rng) } else { training_instance(&mut rng) };
        let p = plan(&rs).expect("these sizes fit in u64");
        // Brute force is quadratic: check a sample of these larger sets.
        if seed % 100 < 2 {
            check(&rs, &p);
        }
        // Every size here is at least ALIGN, so the bound is positive.
        let ratio = p.arena_bytes as f64 / peak_live_bytes(&rs) as f64;
        total[family] += ratio;
        if ratio > worst[family].0 {
            worst[family] = (ratio, seed);
        }
    }
    let mean = total.map(|t| t / PER_FAMILY as f64);
    eprintln!("arena / lower bound: worst (ratio, seed) {worst:?}, mean {mean:?}");
    assert!(worst[0].0 <= 1.40, "uniform instances: worst {:?}, mean {}", worst[0], mean[0]);
    assert!(worst[1].0 <= 1.30, "training-shaped instances: worst {:?}, mean {}", worst[1], mean[1]);
    assert!(mean[0] <= 1.03 && mean[1] <= 1.02, "means {mean:?}");
}
