//! Fused elementwise kernels (exec::fuse, exec::cuda::fused) in the SIMT
//! emulation: each fusion group is generated as one kernel, compiled for the
//! host and loaded (exec::cuda::emu_jit), and every example trains with
//! fusion on exactly as without it. The fused kernel rounds every step's
//! result to the step's type, as the unfused kernel stores it, and calls
//! the same scalar definitions (kernels/scalar.cuh), so the expected
//! difference is none: losses, reported metrics and the final state are
//! compared bit for bit.

use mpc::exec::cuda::backend::CudaBackend;
use mpc::exec::cuda::emu::EmuGpu;
use mpc::exec::cuda::gpu::Gpu as _;
use mpc::exec::{fuse, init_state, memory, Plan, RunOptions, Session, State};
use mpc::passes::{self, Options};
use mpc::train::data::{synthetic_batch, Layout};
use mpc::DType;

fn lowered(path: &std::path::Path, low: DType) -> (mpc::Graph, mpc::Graph) {
    let source = mpc::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut g = source.clone();
    passes::lower(&mut g, &Options { low, ..Options::default() }).unwrap();
    (source, g)
}

fn batches(path: &std::path::Path, source: &mpc::Graph) -> Box<dyn Fn(u64) -> State> {
    if path.ends_with("gpt_block.json") {
        let text = std::path::Path::new("ir-examples/data/declaration.txt");
        let data = mpc::train::data::Dataset::load_text(text, source, 0).unwrap();
        return Box::new(move |s| data.train_batch(s).unwrap());
    }
    let layout = Layout::of(source).unwrap();
    Box::new(move |s| synthetic_batch(&layout, 0, s).unwrap())
}

fn bits(t: &mpc::exec::Tensor) -> Vec<u8> {
    t.data().to_le_bytes()
}

type EmuSession = Session<CudaBackend<EmuGpu>>;

/// A plain session of `g` and a fused one (epilogue GEMMs as `epilogues`
/// says) from the same state.
fn sessions(g: &mpc::Graph, state: &State, epilogues: bool) -> (EmuSession, EmuSession) {
    let plain = Session::new(g, CudaBackend::new(EmuGpu::new(), false), 0, state).unwrap();
    let backend = CudaBackend::new(EmuGpu::new(), false).with_fusion(true).with_gemm_epilogues(epilogues);
    (plain, Session::new(g, backend, 0, state).unwrap())
}

const STEPS: u64 = 3;

#[test]
fn every_example_trains_bit_for_bit_alike_fused() {
    let mut report = String::new();
    insta::glob!("../ir-examples", "*.json", |path| {
        for low in [DType::F16, DType::Bf16] {
            let (source, g) = lowered(path, low);
            let batch = batches(path, &source);
            let state = init_state(&g, 0).unwrap();
            // Bit for bit but for the epilogue GEMMs, which round once
            // (`gemm_epilogues_round_the_biased_product_once`).
            let groups: Vec<_> = Plan::new(&g, 0)
                .unwrap()
                .fusion_groups()
                .into_iter()
                .filter(|gr| !matches!(gr.kind, fuse::Kind::GemmBias | fuse::Kind::GemmBiasGrad))
                .collect();
            let (mut plain, mut fused) = sessions(&g, &state, false);
            assert_eq!(fused.plan().claimed().len(), groups.len(), "{}: every group is claimed", path.display());
            assert_eq!(fused.backend().fused_kernels(), groups.len());
            for s in 0..STEPS {
                let a = plain.step(&batch(s), s, &RunOptions::default()).unwrap();
                let b = fused.step(&batch(s), s, &RunOptions::default()).unwrap();
                let at = format!("{} {low} step {s}", path.display());
                assert_eq!(a.loss.map(f32::to_bits), b.loss.map(f32::to_bits), "{at}: loss");
                assert_eq!(a.loss_scale.map(f32::to_bits), b.loss_scale.map(f32::to_bits), "{at}: loss scale");
                assert_eq!(a.found_inf, b.found_inf, "{at}: found_inf");
                assert_eq!(a.grad_norm.map(f32::to_bits), b.grad_norm.map(f32::to_bits), "{at}: grad norm");
            }
            // A hidden value made after all (a node run alone) would come
            // from the pool, the arena having no place for it.
            assert!(
                fused.backend().allocations() <= plain.backend().allocations(),
                "{}: the fused session allocated more",
                path.display()
            );
            let (sa, sb) = (plain.state().unwrap(), fused.state().unwrap());
            assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
            for (name, t) in &sa {
                assert!(bits(t) == bits(&sb[name]), "{} {low}: `{name}` differs after {STEPS} steps", path.display());
            }
            report.push_str(&format!(
                "{} {low}: {} groups, {} launches fewer per step\n",
                path.display(),
                groups.len(),
                groups.iter().map(fuse::Group::launches_saved).sum::<usize>()
            ));
        }
    });
    eprint!("{report}");
}

/// A fetched value that a group hides makes that step run the group's
/// nodes one by one (the fallback), and it is the unfused value.
#[test]
fn fetching_a_hidden_value_falls_back_to_the_unfused_nodes() {
    let path = std::path::Path::new("ir-examples/mlp.json");
    let (source, g) = lowered(path, DType::F16);
    let batch = batches(path, &source)(0);
    let state = init_state(&g, 0).unwrap();
    let groups = Plan::new(&g, 0).unwrap().fusion_groups();
    let plan = Plan::new(&g, 0).unwrap();
    let hidden = plan.value_name(groups[0].hidden[0]).to_string();
    let opts = RunOptions { fetch: vec![hidden.clone()], ..RunOptions::default() };
    let (mut plain, mut fused) = sessions(&g, &state, false);
    let a = plain.step(&batch, 0, &opts).unwrap();
    let b = fused.step(&batch, 0, &opts).unwrap();
    assert_eq!(bits(&a.fetched[&hidden]), bits(&b.fetched[&hidden]));
    assert_eq!(a.loss.map(f32::to_bits), b.loss.map(f32::to_bits));
}

/// The fused session's arena is the plan with the groups claimed, and no
/// larger than the unfused one.
#[test]
fn the_fused_arena_is_the_claimed_plan() {
    let path = std::path::Path::new("ir-examples/gpt_block.json");
    let (_, g) = lowered(path, DType::F16);
    let state = init_state(&g, 0).unwrap();
    let mut plan = Plan::new(&g, 0).unwrap();
    let unfused = memory::report(&plan).unwrap();
    plan.claim(plan.fusion_groups()).unwrap();
    let claimed = memory::report(&plan).unwrap();
    let mut fused = Session::new(&g, CudaBackend::new(EmuGpu::new(), false).with_fusion(true), 0, &state).unwrap();
    assert_eq!(fused.backend().arena_bytes(), claimed.arena.arena_bytes);
    assert!(claimed.arena.arena_bytes <= unfused.arena.arena_bytes);
}

/// An example lowered to `low`, with its batches.
fn example(file: &str, low: DType) -> (mpc::Graph, Box<dyn Fn(u64) -> State>) {
    let path = std::path::Path::new("ir-examples").join(file);
    let (source, g) = lowered(&path, low);
    (g, batches(&path, &source))
}

/// Trains `g` for `steps` steps fused and unfused from the same state and
/// compares, at every step, the bits of every value that the groups of
/// `kind` write; returns how many such groups there are (each claimed) and
/// the two final states.
fn groups_write_alike(
    g: &mpc::Graph,
    batch: &dyn Fn(u64) -> State,
    kind: fuse::Kind,
    steps: u64,
    at: &str,
) -> (usize, State, State) {
    let state = init_state(g, 0).unwrap();
    let plan = Plan::new(g, 0).unwrap();
    let groups: Vec<_> = plan.fusion_groups().into_iter().filter(|gr| gr.kind == kind).collect();
    let fetch: Vec<String> =
        groups.iter().flat_map(|gr| &gr.outputs).map(|&v| plan.value_name(v).to_string()).collect();
    let opts = RunOptions { fetch: fetch.clone(), ..RunOptions::default() };
    let (mut plain, mut fused) = sessions(g, &state, false);
    assert!(groups.iter().all(|gr| fused.plan().claimed().contains(gr)), "{at}: claimed");
    for s in 0..steps {
        let a = plain.step(&batch(s), s, &opts).unwrap();
        let b = fused.step(&batch(s), s, &opts).unwrap();
        for name in &fetch {
            assert!(bits(&a.fetched[name]) == bits(&b.fetched[name]), "{at} step {s}: `{name}`");
        }
    }
    (groups.len(), plain.state().unwrap(), fused.state().unwrap())
}

/// The cross-entropy pair (one kernel for the loss and its gradient, run
/// at the gradient's step) is claimed on the MLP and gpt_block in fp16 and
/// bf16, and the loss and the logits' gradient it writes are the unfused
/// kernels' bits at every step.
#[test]
fn the_cross_entropy_pair_writes_the_unfused_loss_and_gradient() {
    for file in ["mlp.json", "gpt_block.json"] {
        for low in [DType::F16, DType::Bf16] {
            let (g, batch) = example(file, low);
            let at = format!("{file} {low}");
            assert_eq!(groups_write_alike(&g, &batch, fuse::Kind::CrossEntropy, STEPS, &at).0, 1, "{at}");
        }
    }
}

/// gpt_block's residual adds after its layer_norm_grads (four of five: the
/// final norm's dx has no add) run in the gradient's kernel, in fp16 and
/// bf16: dx is not stored, and the sums, dgamma and dbeta are the unfused
/// kernels' bits at every step.
#[test]
fn the_residual_add_joins_the_layer_norm_gradient() {
    for low in [DType::F16, DType::Bf16] {
        let (g, batch) = example("gpt_block.json", low);
        let at = format!("gpt_block {low}");
        assert_eq!(groups_write_alike(&g, &batch, fuse::Kind::LayerNormGradAdd, STEPS, &at).0, 4, "{at}");
    }
}

/// A vocabulary of 1000 (some 31 logits per lane, where the examples have
/// at most 3): a generated GPT trains fused as unfused, the pair's loss and
/// gradient and the final state bit for bit, in fp16 and bf16. A fused row
/// pass that summed its row in another order shows here (it did not in
/// gpt_block's final state, only in its gradient).
#[test]
fn a_wide_vocabulary_trains_bit_for_bit_alike_fused() {
    let gpt = mpc::gen::Gpt {
        layers: 1,
        d_model: 32,
        heads: 2,
        seq: 16,
        vocab: 1000,
        batch: 2,
        ..mpc::gen::Gpt::gpt2_small()
    };
    let source = mpc::parse_str(&gpt.graph().to_string()).unwrap();
    for low in [DType::F16, DType::Bf16] {
        let mut g = source.clone();
        passes::lower(&mut g, &Options { low, ..Options::default() }).unwrap();
        let batch = |s| mpc::train::bench::batch(&source, 0, s).unwrap();
        let at = format!("gen gpt vocab 1000 {low}");
        let (pairs, sa, sb) = groups_write_alike(&g, &batch, fuse::Kind::CrossEntropy, 2, &at);
        assert_eq!(pairs, 1, "{at}");
        for (name, t) in &sa {
            assert!(bits(t) == bits(&sb[name]), "{at}: `{name}` differs after 2 steps");
        }
    }
}

/// Each group saves the launches `explain --fusion` counts: a replayed
/// step's launches and GEMMs, fused and not, differ by exactly that.
#[test]
fn a_fused_step_has_the_launches_the_groups_save_fewer() {
    let mut report = String::new();
    for file in ["mlp.json", "gpt_block.json"] {
        for low in [DType::F16, DType::Bf16] {
            let (g, batch) = example(file, low);
            let state = init_state(&g, 0).unwrap();
            let saved: usize = Plan::new(&g, 0).unwrap().fusion_groups().iter().map(fuse::Group::launches_saved).sum();
            let mut work = Vec::new();
            for fuse in [false, true] {
                let backend = CudaBackend::new(EmuGpu::new(), false).with_fusion(fuse);
                let mut sess = Session::new(&g, backend, 0, &state).unwrap();
                for s in 0..4 {
                    sess.step(&batch(s), s, &RunOptions::default()).unwrap();
                }
                work.push(sess.backend().last_step_work().unwrap());
            }
            assert_eq!(work[0] - work[1], saved, "{file} {low}: {work:?}");
            report.push_str(&format!("{file} {low}: {} -> {} launches and GEMMs per step\n", work[0], work[1]));
        }
    }
    eprint!("{report}");
}

/// One unit in the last place of `v` in `low` (f16: 11 significant bits,
/// bf16: 8), down to the spacing of its subnormals.
fn ulp(v: f64, low: DType) -> f64 {
    let (bits, min_exp) = if low == DType::Bf16 { (8, -126) } else { (11, -14) };
    let e = if v == 0.0 { min_exp } else { (v.abs().log2().floor() as i32).max(min_exp) };
    2f64.powi(e - (bits - 1))
}

/// A matmul with its bias add (and relu) as one GEMM with a cuBLASLt
/// epilogue rounds the sum once, where the unfused steps round the product
/// p to the low type and then the sum: with q = p + e (|e| <= ulp(p)/2),
/// the two results differ by at most ulp(p)/2 plus a rounding of the sum,
/// an ulp of the larger result (relu commutes with rounding). Checked on
/// every group's output at the second step, from the same state, on mlp
/// (relu tails) and gpt_block, in fp16 and bf16; a shifted bias fails it.
#[test]
fn gemm_epilogues_round_the_biased_product_once() {
    for file in ["mlp.json", "gpt_block.json"] {
        for low in [DType::F16, DType::Bf16] {
            let (g, batch) = example(file, low);
            let at = format!("{file} {}", low.name());
            // From the state after one step: the biases start at zero, where
            // the two roundings agree.
            let mut first =
                Session::new(&g, CudaBackend::new(EmuGpu::new(), false), 0, &init_state(&g, 0).unwrap()).unwrap();
            first.step(&batch(0), 0, &RunOptions::default()).unwrap();
            let state = first.state().unwrap();
            let plan = Plan::new(&g, 0).unwrap();
            let groups: Vec<_> =
                plan.fusion_groups().into_iter().filter(|gr| gr.kind == fuse::Kind::GemmBias).collect();
            assert!(groups.len() >= 2, "{at}: {} matmul-and-bias groups", groups.len());
            // The unfused run also returns each product (hidden when fused);
            // both return each group's inputs: a group after another reads
            // that one's output, once rounded, so only groups whose inputs
            // are the same bits are held to the bound.
            let name = |v: usize| plan.value_name(v).to_string();
            let outs: Vec<String> = groups.iter().map(|gr| name(gr.outputs[0])).collect();
            let products: Vec<String> = groups.iter().map(|gr| name(gr.hidden[0])).collect();
            let inputs: Vec<String> = groups.iter().flat_map(|gr| gr.inputs.iter().map(|&v| name(v))).collect();
            let fetch = |extra: &[String]| RunOptions {
                fetch: outs.iter().chain(&inputs).chain(extra).cloned().collect(),
                ..RunOptions::default()
            };
            let (mut plain, mut fused) = sessions(&g, &state, true);
            assert!(groups.iter().all(|gr| fused.plan().claimed().contains(gr)), "{at}: claimed");
            let a = plain.step(&batch(1), 1, &fetch(&products)).unwrap();
            let b = fused.step(&batch(1), 1, &fetch(&[])).unwrap();
            let (mut differ, mut checked) = (0, 0);
            for ((gr, out), product) in groups.iter().zip(&outs).zip(&products) {
                if gr.inputs.iter().any(|&v| bits(&a.fetched[&name(v)]) != bits(&b.fetched[&name(v)])) {
                    continue;
                }
                checked += 1;
                let (u, f, p) =
                    (a.fetched[out].to_f32_vec(), b.fetched[out].to_f32_vec(), a.fetched[product].to_f32_vec());
                for ((&u, &f), &p) in u.iter().zip(&f).zip(&p) {
                    let (u, f, p) = (f64::from(u), f64::from(f), f64::from(p));
                    let bound = ulp(p, low) / 2.0 + ulp(u.abs().max(f.abs()), low);
                    assert!((u - f).abs() <= bound, "{at} `{out}`: fused {f}, unfused {u}, product {p}");
                    differ += usize::from(u != f);
                }
            }
            assert!(checked >= 1, "{at}: no group read the same inputs fused and unfused");
            // Double rounding shows somewhere: the comparison is of two runs.
            assert!(differ > 0, "{at}: the epilogue GEMMs gave the unfused bits everywhere");
        }
    }
}

/// The fusion groups of `file` lowered to `low` that `pick` takes, every
/// one claimed by a fused session (epilogue GEMMs on), and what they read
/// and write at its second step (after one step: biases no longer zero),
/// by name: for checks against a host reference of the run's own inputs.
fn fused_groups(
    file: &str,
    low: DType,
    pick: impl Fn(&fuse::Group) -> bool,
) -> (Plan, Vec<fuse::Group>, std::collections::BTreeMap<String, mpc::exec::Tensor>) {
    let (g, batch) = example(file, low);
    let plan = Plan::new(&g, 0).unwrap();
    let groups: Vec<_> = plan.fusion_groups().into_iter().filter(|gr| pick(gr)).collect();
    let name = |v: usize| plan.value_name(v).to_string();
    let values = groups.iter().flat_map(|gr| gr.inputs.iter().chain(&gr.outputs)).map(|&v| name(v)).collect();
    let (_, mut fused) = sessions(&g, &init_state(&g, 0).unwrap(), true);
    assert!(groups.iter().all(|gr| fused.plan().claimed().contains(gr)), "{file} {low}: claimed");
    fused.step(&batch(0), 0, &RunOptions::default()).unwrap();
    let r = fused.step(&batch(1), 1, &RunOptions { fetch: values, ..RunOptions::default() }).unwrap();
    (plan, groups, r.fetched)
}

/// A matmul, its bias add and a gelu that `gelu_grad` also reads run as one
/// GEMM that stores the gelu's input beside its output (cuBLASLt's
/// GELU_AUX_BIAS). Both outputs are held to a host reference from the
/// fused run's own inputs, so that no earlier group's rounding matters:
/// s = Σ x·w + b in f64 (exact: products of two low-type values), which
/// the device accumulates in f32 (|error| ≤ γ_k·Σ|x·w|, γ_k = k·2⁻²⁴/(1 −
/// k·2⁻²⁴)) and rounds once to the stored input (half an ulp); the output
/// is gelu of that f32 sum (slope at most 1.13) rounded once, plus the f32
/// formula's own few ulps. On mlp and gpt_block, fp16 and bf16, after a
/// step (biases no longer zero); a stored input off by one ulp fails it.
#[test]
fn the_gelu_epilogue_stores_its_input_for_gelu_grad() {
    for file in ["mlp.json", "gpt_block.json"] {
        for low in [DType::F16, DType::Bf16] {
            let at = format!("{file} {}", low.name());
            let stored_gelu = |gr: &fuse::Group| gr.kind == fuse::Kind::GemmBias && gr.outputs.len() == 2;
            let (plan, groups, fetched) = fused_groups(file, low, stored_gelu);
            assert!(!groups.is_empty(), "{at}: no gelu that stores its input");
            let name = |v: usize| plan.value_name(v).to_string();
            for gr in &groups {
                let get = |v: usize| fetched[&name(v)].clone();
                let (x, w, b, sum, act) =
                    (get(gr.inputs[0]), get(gr.inputs[1]), get(gr.inputs[2]), get(gr.outputs[0]), get(gr.outputs[1]));
                let k = *x.shape().0.last().unwrap() as usize;
                let n = *w.shape().0.last().unwrap() as usize;
                assert_eq!(w.shape().0, [k as u64, n as u64], "{at}: an untransposed weight");
                let (xv, wv, bv) = (x.to_f32_vec(), w.to_f32_vec(), b.to_f32_vec());
                let (sv, av) = (sum.to_f32_vec(), act.to_f32_vec());
                let u32_ = 2f64.powi(-24);
                let gamma = k as f64 * u32_ / (1.0 - k as f64 * u32_);
                for (row, xr) in xv.chunks(k).enumerate() {
                    for j in 0..n {
                        let (mut s, mut mag) = (f64::from(bv[j]), 0.0);
                        for (p, &xp) in xr.iter().enumerate() {
                            let t = f64::from(xp) * f64::from(wv[p * n + j]);
                            s += t;
                            mag += t.abs();
                        }
                        let acc = gamma * (mag + f64::from(bv[j]).abs());
                        let (have, got) = (f64::from(sv[row * n + j]), f64::from(av[row * n + j]));
                        let bound = acc + ulp(have.abs().max(s.abs()), low) / 2.0;
                        assert!((have - s).abs() <= bound, "{at} stored input ({row}, {j}): {have}, exact sum {s}");
                        let want = f64::from(mpc::exec::cpu::elementwise::gelu(s as f32));
                        let bound = 1.13 * acc + ulp(got.abs().max(want.abs()), low) / 2.0 + 1e-6 * want.abs() + 1e-30;
                        assert!((got - want).abs() <= bound, "{at} gelu ({row}, {j}): {got}, want {want} (sum {s})");
                    }
                }
            }
        }
    }
}

/// A weight gradient's matmul with its bias's `sum_to` as one GEMM whose
/// epilogue sums the output gradient over the rows (cuBLASLt's BGRADA, f32):
/// the weight gradient is the plain GEMM's, and the bias gradient sums the
/// same low-type values as the unfused cast + sum_to, in another order:
/// against the exact f64 sum of the fused run's own d, within
/// γ_R·Σ|d| (R rows, γ_R = R·2⁻²⁴/(1 − R·2⁻²⁴)), plus half an ulp where the
/// gradient is of the low type (bf16's sum_to). The f32 cast of the output
/// gradient is never stored. On every example with such a group, f16 and
/// bf16 (mlp and gpt_block have them); a sum that skips a row fails it.
#[test]
fn the_bias_gradient_epilogue_sums_the_output_gradient() {
    let mut seen = 0;
    for file in ["mlp.json", "gpt_block.json"] {
        for low in [DType::F16, DType::Bf16] {
            let at = format!("{file} {}", low.name());
            let (plan, groups, fetched) = fused_groups(file, low, |gr| gr.kind == fuse::Kind::GemmBiasGrad);
            assert!(!groups.is_empty(), "{at}: no weight gradient with its bias's");
            let name = |v: usize| plan.value_name(v).to_string();
            for gr in &groups {
                // A 16-bit d with an f32 gradient: the f32 cast of d is not stored.
                let cast = plan.value_type(gr.outputs[1]).dtype == DType::F32 && low != DType::F32;
                assert_eq!(gr.hidden.len(), usize::from(cast), "{at}: {gr:?}");
            }
            for gr in &groups {
                seen += 1;
                let get = |v: usize| fetched[&name(v)].to_f32_vec();
                let (x, d, dw, db) = (get(gr.inputs[0]), get(gr.inputs[1]), get(gr.outputs[0]), get(gr.outputs[1]));
                let db_type = plan.value_type(gr.outputs[1]).dtype;
                let n = db.len();
                let rows = d.len() / n;
                let kin = x.len() / rows;
                let gamma = |k: usize| k as f64 * 2f64.powi(-24) / (1.0 - k as f64 * 2f64.powi(-24));
                for (j, &got) in db.iter().enumerate() {
                    let (sum, mag) = (0..rows).fold((0.0, 0.0), |(s, m), r| {
                        let v = f64::from(d[r * n + j]);
                        (s + v, m + v.abs())
                    });
                    let got = f64::from(got);
                    // A low-type gradient is rounded once more.
                    let round = if db_type == DType::F32 { 0.0 } else { ulp(got.abs().max(sum.abs()), low) / 2.0 };
                    let bound = gamma(rows) * mag + round;
                    assert!((got - sum).abs() <= bound, "{at} `{}`[{j}]: {got}, exact {sum}", name(gr.outputs[1]));
                }
                for i in 0..kin {
                    for j in 0..n {
                        let (mut s, mut mag) = (0.0, 0.0);
                        for r in 0..rows {
                            let t = f64::from(x[r * kin + i]) * f64::from(d[r * n + j]);
                            s += t;
                            mag += t.abs();
                        }
                        let got = f64::from(dw[i * n + j]);
                        let bound = gamma(rows) * mag + ulp(got.abs().max(s.abs()), low) / 2.0;
                        assert!((got - s).abs() <= bound, "{at} `{}`({i}, {j}): {got}, exact {s}", name(gr.outputs[0]));
                    }
                }
            }
        }
    }
    assert!(seen >= 4, "{seen} groups checked");
}

/// A device whose GEMM library has no algorithm for an epilogue (cuBLASLt's
/// bias gradient in f32 under 16-bit inputs is untested on a GPU) leaves
/// those groups unfused when the session claims them; every other group is
/// still claimed, and the forward (the loss) is the fused session's.
#[test]
fn a_gemm_the_device_cannot_run_stays_unfused() {
    let (g, batch) = example("mlp.json", DType::F16);
    let state = init_state(&g, 0).unwrap();
    let missing = mpc::exec::cuda::gpu::Epilogue::BiasGradA { f32: true };
    let groups = Plan::new(&g, 0).unwrap().fusion_groups();
    let grads = groups.iter().filter(|gr| gr.kind == fuse::Kind::GemmBiasGrad).count();
    assert_eq!(grads, 2);
    let backend = CudaBackend::new(EmuGpu::new().without(missing), false).with_fusion(true);
    let mut fused = Session::new(&g, backend, 0, &state).unwrap();
    assert_eq!(fused.plan().claimed().len(), groups.len() - grads);
    assert!(fused.plan().claimed().iter().all(|gr| gr.kind != fuse::Kind::GemmBiasGrad));
    let (_, mut all) = sessions(&g, &state, true);
    let (a, b) = (all.step(&batch(0), 0, &RunOptions::default()), fused.step(&batch(0), 0, &RunOptions::default()));
    assert_eq!(a.unwrap().loss, b.unwrap().loss);
    fused.step(&batch(1), 1, &RunOptions::default()).unwrap();
    // Asked to run one anyway, the device refuses it.
    let mut gpu = EmuGpu::new().without(missing);
    let m = gpu.alloc(64).unwrap();
    let gm = mpc::exec::cuda::gpu::Gemm {
        epilogue: missing,
        ..mpc::exec::cuda::gpu::Gemm::packed(2, 2, 2, (false, false), DType::F16, DType::F16)
    };
    let extra = mpc::exec::cuda::gpu::Extra { bias: Some((&m, 32)), aux: None };
    let e = gpu.gemm_extra(&gm, (&m, 0), (&m, 0), (&m, 16), extra).unwrap_err();
    assert!(e.0.contains("no algorithm"), "{e}");
}
