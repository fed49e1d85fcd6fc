//! The planned device memory of a training step: the resident state
//! (params with their FP32 masters, optimizer moments, the loss scaler) and
//! one arena for everything a step makes (the batch, activations,
//! gradients, the new state before it replaces the old), laid out once by
//! [`memplan::plan`] from the plan's liveness.
//!
//! A value lives from the step that makes it to its last reader; the
//! batch from the first step; the loss, the outputs and the new state to
//! the end of the step.

use std::fmt;

use super::memplan::{self, MemPlan, Request};
use super::run::{Feed, Plan};
use super::ExecError;
use crate::types::TensorType;

/// What a step needs on the device, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Params (the FP32 masters after master-weights).
    pub params: u64,
    /// Optimizer moments, the scaler's scale and growth tracker, counters.
    pub state: u64,
    /// The step's values: batch, activations, gradients, new state.
    pub arena: MemPlan,
    /// The most bytes of step values live at once: no arena can be smaller.
    pub peak_live: u64,
    /// The sum of all step values' sizes (what allocating each apart costs).
    pub unplanned: u64,
    /// How many step values the arena holds.
    pub values: usize,
}

impl MemoryReport {
    /// The planned peak: resident state plus the arena.
    pub fn peak(&self) -> u64 {
        self.params + self.state + self.arena.arena_bytes
    }
}

fn bytes(ty: &TensorType) -> Result<u64, ExecError> {
    ty.shape
        .numel()
        .and_then(|n| n.checked_mul(ty.dtype.size_bytes() as u64))
        .ok_or_else(|| ExecError::Tensor(format!("shape {} is too large", ty.shape)))
}

/// The requests of a plan's step values: (value index, request).
pub fn requests(plan: &Plan) -> Result<Vec<(usize, Request)>, ExecError> {
    let last = plan.steps.len().saturating_sub(1);
    let mut end = vec![last; plan.names.len()];
    for (i, s) in plan.steps.iter().enumerate() {
        for &v in &s.free_after {
            end[v] = i;
        }
    }
    let mut out = Vec::new();
    for src in plan.sources.iter().filter(|s| s.from == Feed::Batch) {
        out.push((src.value, Request { bytes: bytes(&src.ty)?, start: 0, end: end[src.value] }));
    }
    for (i, s) in plan.steps.iter().enumerate() {
        for (&v, ty) in s.outputs.iter().zip(&s.out_types) {
            out.push((v, Request { bytes: bytes(ty)?, start: i, end: end[v].max(i) }));
        }
    }
    Ok(out)
}

/// Plans the arena of `plan` and sums its resident state.
pub fn report(plan: &Plan) -> Result<MemoryReport, ExecError> {
    let (mut params, mut state) = (0u64, 0u64);
    for s in plan.sources.iter().filter(|s| s.from == Feed::State) {
        let b = bytes(&s.ty)?;
        match s.is_param {
            true => params += b,
            false => state += b,
        }
    }
    let reqs: Vec<Request> = requests(plan)?.into_iter().map(|(_, r)| r).collect();
    let arena = memplan::plan(&reqs)
        .ok_or_else(|| ExecError::Tensor("the step's values do not fit a 64-bit address space".into()))?;
    let unplanned = reqs.iter().map(|r| r.bytes).sum();
    Ok(MemoryReport { params, state, peak_live: memplan::peak_live_bytes(&reqs), unplanned, values: reqs.len(), arena })
}

/// "1.5 MiB", "812 B".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{bytes} B"),
        _ => format!("{v:.1} {}", UNITS[u]),
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "planned peak memory {}: params {}, optimizer and scaler state {}, step arena {} for {} values \
             (at least {} are live at once; {} if each had its own buffer)",
            human(self.peak()),
            human(self.params),
            human(self.state),
            human(self.arena.arena_bytes),
            self.values,
            human(self.peak_live),
            human(self.unplanned)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(812), "812 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
