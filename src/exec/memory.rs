//! The planned device memory of a training step: the resident state
//! (params with their FP32 masters, optimizer moments, the loss scaler),
//! the batch, the new state (made during the step, resident after it), and
//! one arena for everything else a step makes (activations, gradients,
//! casts, the loss), laid out once by [`memplan::plan`] from the plan's
//! liveness. The CUDA backend places its values at these offsets.
//!
//! A value lives from the step that makes it to its last reader; the loss
//! and the outputs to the end of the step.

use std::fmt;

use super::memplan::{self, MemPlan, Request};
use super::run::{Feed, Plan};
use super::ExecError;
use crate::ir::types::TensorType;

/// What a step needs on the device, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Params (the FP32 masters after master-weights).
    pub params: u64,
    /// Optimizer moments, the scaler's scale and growth tracker, counters.
    pub state: u64,
    /// The batch, uploaded each step.
    pub batch: u64,
    /// The updated params and state a step makes (they replace the old at
    /// its end, so both exist at once).
    pub new_state: u64,
    /// The other values of a step: activations, gradients, casts, the loss.
    pub arena: MemPlan,
    /// The most bytes of step values live at once: no arena can be smaller.
    pub peak_live: u64,
    /// The sum of all step values' sizes (what allocating each apart costs).
    pub unplanned: u64,
    /// How many step values the arena holds.
    pub values: usize,
}

impl MemoryReport {
    /// The planned peak: resident state, batch, new state and the arena.
    pub fn peak(&self) -> u64 {
        self.params + self.state + self.batch + self.new_state + self.arena.arena_bytes
    }
}

fn bytes(ty: &TensorType) -> Result<u64, ExecError> {
    ty.shape
        .numel()
        .and_then(|n| n.checked_mul(ty.dtype.size_bytes() as u64))
        .ok_or_else(|| ExecError::Tensor(format!("shape {} is too large", ty.shape)))
}

/// The arena's requests: every step output but the new state, as
/// (value index, request), in step order.
pub fn requests(plan: &Plan) -> Result<Vec<(usize, Request)>, ExecError> {
    let last = plan.steps.len().saturating_sub(1);
    let mut end = vec![last; plan.names.len()];
    for (i, s) in plan.steps.iter().enumerate() {
        for &v in &s.free_after {
            end[v] = i;
        }
    }
    let mut update = vec![false; plan.names.len()];
    for &(_, v) in &plan.updates {
        update[v] = true;
    }
    // A claimed group runs where its last step (or tail) stands: its inputs live to
    // there, and what it hides is never stored.
    let mut hidden = vec![false; plan.names.len()];
    for g in &plan.claimed {
        for &v in &g.hidden {
            hidden[v] = true;
        }
        for &v in &g.inputs {
            end[v] = end[v].max(g.at());
        }
    }
    let mut out = Vec::new();
    for (i, s) in plan.steps.iter().enumerate() {
        for (&v, ty) in s.outputs.iter().zip(&s.out_types) {
            if !update[v] && !hidden[v] {
                out.push((v, Request { bytes: bytes(ty)?, start: i, end: end[v].max(i) }));
            }
        }
    }
    Ok(out)
}

/// Plans the arena of `plan` and sums the rest.
pub fn report(plan: &Plan) -> Result<MemoryReport, ExecError> {
    let (mut params, mut state, mut batch) = (0u64, 0u64, 0u64);
    for s in &plan.sources {
        let b = bytes(&s.ty)?;
        match (s.from, s.is_param) {
            (Feed::Batch, _) => batch += b,
            (Feed::State, true) => params += b,
            (Feed::State, false) => state += b,
        }
    }
    let mut ty_of = vec![None; plan.names.len()];
    for s in &plan.steps {
        for (&v, ty) in s.outputs.iter().zip(&s.out_types) {
            ty_of[v] = Some(ty);
        }
    }
    let mut new_state = 0u64;
    for &(_, v) in &plan.updates {
        if let Some(ty) = ty_of[v] {
            new_state += bytes(ty)?;
        }
    }
    let reqs: Vec<Request> = requests(plan)?.into_iter().map(|(_, r)| r).collect();
    let arena = memplan::plan(&reqs)
        .ok_or_else(|| ExecError::Tensor("the step's values do not fit a 64-bit address space".into()))?;
    let unplanned = reqs.iter().map(|r| r.bytes).sum();
    Ok(MemoryReport {
        params,
        state,
        batch,
        new_state,
        peak_live: memplan::peak_live_bytes(&reqs),
        unplanned,
        values: reqs.len(),
        arena,
    })
}

/// The default of `--max-memory`: what a session may plan, or an export
/// materialise, before mpc refuses (a checked graph may declare tensors of
/// petabytes; allocating them aborts the process).
pub const DEFAULT_LIMIT: u64 = 32 << 30;

/// A size as people write it: bytes, or with a suffix K, M, G, T (powers
/// of 1024; `KiB`, `MB`... read the same), e.g. `64G`, `512MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 64G, 512M, 1000000)"))?;
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (K, M, G or T)")),
    };
    let bytes = n * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}` is not a size between 1 byte and 16 EiB"));
    }
    Ok(bytes as u64)
}

/// The bytes of every tensor `g` holds outside a step: params, state and
/// constants (what an export writes as initializers), saturating.
pub fn materialized_bytes(g: &crate::ir::graph::Graph) -> u64 {
    use crate::ir::op::Op;
    let mut total = 0u64;
    for n in g.node_ids() {
        let node = g.node(n);
        if matches!(node.op(), Op::Param { .. } | Op::State { .. } | Op::Constant { .. }) {
            for t in g.output_types(n) {
                let b = t.shape.numel().unwrap_or(u64::MAX).saturating_mul(t.dtype.size_bytes() as u64);
                total = total.saturating_add(b);
            }
        }
    }
    total
}

/// Err when `bytes` (what `what` needs) is above `limit`, saying how to raise it.
pub fn check_limit(what: &str, bytes: u64, limit: u64) -> Result<(), String> {
    match bytes > limit {
        true => {
            Err(format!("{what} needs {}, above the limit of {} (--max-memory raises it)", human(bytes), human(limit)))
        }
        false => Ok(()),
    }
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
            "planned peak memory {}: params {}, optimizer and scaler state {}, batch {}, new state {}, \
             step arena {} for {} values (at least {} are live at once; {} if each had its own buffer)",
            human(self.peak()),
            human(self.params),
            human(self.state),
            human(self.batch),
            human(self.new_state),
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
    fn sizes_parse_as_people_write_them() {
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit `Q`"));
        assert!(parse_size("G").is_err() && parse_size("0").is_err() && parse_size("1e30T").is_err());
        assert!(check_limit("the step", 2 << 30, 1 << 30)
            .unwrap_err()
            .contains("needs 2.0 GiB, above the limit of 1.0 GiB"));
        assert!(check_limit("the step", 1 << 30, 1 << 30).is_ok());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(812), "812 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
