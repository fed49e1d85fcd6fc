//! What `mpc bench` needs beyond a training session: synthetic batches for
//! any graph (language models included: token ids in range), the tokens a
//! step processes, and the statistics of timed steps.

use crate::exec::rng::{combine, fnv1a, SplitMix64};
use crate::exec::{State, Tensor};
use crate::ir::graph::{Graph, NodeId};
use crate::ir::op::Op;

/// Seeded inputs for step `step`: floats N(0, 1); integers uniform below
/// the bound of what reads them (an embedding's rows, a cross-entropy's
/// classes; 2 otherwise).
pub fn batch(g: &Graph, seed: u64, step: u64) -> Result<State, String> {
    let mut out = State::new();
    for n in g.node_ids() {
        let Op::Input { ty } = g.node(n).op() else { continue };
        let name = &g.node(n).name();
        let count = ty.shape.numel().ok_or_else(|| format!("input `{name}` is too large"))? as usize;
        let mut rng = SplitMix64::new(combine(combine(seed, step), fnv1a(name)));
        let v: Vec<f32> = if ty.dtype.is_float() {
            (0..count).map(|_| rng.normal() as f32).collect()
        } else {
            let bound = bound(g, n).max(1);
            (0..count).map(|_| (rng.next_u64() % bound) as f32).collect()
        };
        out.insert(name.to_string(), Tensor::from_f32(ty.dtype, ty.shape.clone(), &v).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The exclusive upper bound of an integer input's values.
fn bound(g: &Graph, n: NodeId) -> u64 {
    for (u, e) in g.users(n) {
        let first = g.inputs(u).first().map(|&v| g.ty(v).shape.0.clone()).unwrap_or_default();
        match (g.node(u).op(), e.port) {
            (Op::Embedding, 1) => return first.first().copied().unwrap_or(2),
            (Op::CrossEntropy, 1) => return first.last().copied().unwrap_or(2),
            _ => {}
        }
    }
    2
}

/// The tokens one step processes: the elements of the inputs that index an
/// embedding (a language model's batch x sequence), else the batch rows of
/// the first input (examples).
pub fn tokens(g: &Graph) -> u64 {
    let inputs: Vec<NodeId> = g.node_ids().filter(|&n| matches!(g.node(n).op(), Op::Input { .. })).collect();
    let ids: u64 = inputs
        .iter()
        .filter(|&&n| g.users(n).any(|(u, e)| matches!(g.node(u).op(), Op::Embedding) && e.port == 1))
        .filter_map(|&n| g.output_types(n).next().and_then(|t| t.shape.numel()))
        .sum();
    if ids > 0 {
        return ids;
    }
    inputs.first().and_then(|&n| g.output_types(n).next()).and_then(|t| t.shape.0.first().copied()).unwrap_or(1)
}

/// Timed steps, in seconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Stats {
    pub steps: usize,
    pub median: f64,
    pub mean: f64,
    pub min: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median = if s.len() % 2 == 1 { s[mid] } else { (s[mid - 1] + s[mid]) / 2.0 };
        Some(Stats { steps: s.len(), median, mean: s.iter().sum::<f64>() / s.len() as f64, min: s[0] })
    }
}

/// Model FLOPs utilisation, as llm.c computes it: the FLOPs a step needs
/// (here the GEMMs' and convolutions', from [`crate::cost`]) per second of
/// step, over the GPU's dense low-precision peak.
pub fn mfu(model_flops: f64, seconds: f64, peak: f64) -> f64 {
    model_flops / seconds / peak
}

/// This process's peak resident memory in bytes (Linux: VmHWM).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_timed_steps() {
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.steps, s.median, s.mean, s.min), (4, 2.5, 4.0, 1.0));
        assert_eq!(Stats::of(&[2.0, 9.0, 1.0]).unwrap().median, 2.0);
        assert!(Stats::of(&[]).is_none());
        assert!((mfu(989.4e12 * 0.5, 1.0, 989.4e12) - 0.5).abs() < 1e-12);
    }

    /// gpt_block's tokens are batch x sequence, and its ids stay in range.
    #[test]
    fn a_language_models_batch_is_in_range() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ir-examples/gpt_block.json")).unwrap();
        let g = crate::parse_str(&text).unwrap();
        assert_eq!(tokens(&g), 8 * 32);
        let b = batch(&g, 1, 0).unwrap();
        let ids = b["tokens"].to_f32_vec();
        assert!(ids.iter().all(|&t| (0.0..65.0).contains(&t)) && ids.iter().any(|&t| t > 31.0));
        let targets = b["targets"].to_f32_vec();
        assert!(targets.iter().all(|&t| (0.0..65.0).contains(&t)));
        assert_ne!(batch(&g, 1, 1).unwrap()["tokens"].to_f32_vec(), ids, "each step its own batch");
    }
}
