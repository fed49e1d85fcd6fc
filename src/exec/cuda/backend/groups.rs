//! Nodes the CUDA backend runs as one multi-tensor launch (`cuda::multi`):
//! a run of consecutive optimizer nodes of one kind and one set of
//! hyper-parameters (weight decay may differ), a run of consecutive
//! `unscale` nodes with the `found_inf` right after them that reads
//! exactly their outputs, and a run of consecutive `select`s of one flag
//! and one type (skip-on-overflow keeping each param and moment).
//!
//! A member does nothing when it runs but note its buffers; the last one
//! launches for all. That moves each member's reads to the last member's
//! step, past the planned life of its arena inputs, so [`find`] forms a
//! group only where the memory plan keeps those bytes: nothing but members
//! runs in between, and the arena ranges the members read are disjoint
//! from those they write. Anything else asked of the backend meanwhile (a
//! download, a kept value) first launches the members noted so far.

use std::collections::HashMap;

use crate::exec::memplan::Request;
use crate::exec::run::{Feed, Plan};
use crate::ir::op::Op;
use crate::ir::types::DType;

/// What a group runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// `unscale` nodes, then the `found_inf` of their outputs.
    Unscale,
    Adam,
    Sgd,
    SgdMomentum,
    /// `select`s of one flag (`found_inf`) and one output type.
    Select,
}

/// A group found in a plan: its kind and its members' step indices, in
/// order (for `Unscale`, the `found_inf` last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub kind: Kind,
    pub steps: Vec<usize>,
}

/// Inputs shared by every member of an optimizer group (the step
/// counter, the lr input) and the op with its weight decay cleared: nodes
/// with equal keys share a launch.
fn optimizer_key(plan: &Plan, i: usize) -> Option<(Kind, Op, Vec<usize>, DType)> {
    let s = &plan.steps[i];
    let t = s.out_types.first()?.dtype;
    let (kind, op, shared_from) = match s.op {
        Op::Adam { lr, beta1, beta2, eps, decoupled, .. } => {
            (Kind::Adam, Op::Adam { lr, beta1, beta2, eps, weight_decay: 0.0, decoupled }, 4)
        }
        Op::Sgd { lr, .. } => (Kind::Sgd, Op::Sgd { lr, weight_decay: 0.0 }, 2),
        Op::SgdMomentum { lr, momentum, .. } => {
            (Kind::SgdMomentum, Op::SgdMomentum { lr, momentum, weight_decay: 0.0 }, 3)
        }
        _ => return None,
    };
    Some((kind, op, s.inputs.get(shared_from..)?.to_vec(), t))
}

/// What `select` steps share to share a launch: the flag and the output type.
fn select_key(plan: &Plan, i: usize) -> Option<(usize, DType)> {
    let s = &plan.steps[i];
    match (&s.op, s.inputs.as_slice(), s.out_types.as_slice()) {
        (Op::Select, [flag, _, _], [t]) if dtype(plan, *flag) == Some(DType::F32) => Some((*flag, t.dtype)),
        _ => None,
    }
}

/// The type of value `v`.
fn dtype(plan: &Plan, v: usize) -> Option<DType> {
    if let Some(s) = plan.sources.iter().find(|s| s.value == v) {
        return Some(s.ty.dtype);
    }
    plan.steps.iter().find_map(|s| s.outputs.iter().position(|&o| o == v).map(|k| s.out_types[k].dtype))
}

/// Whether deferring `members`' reads to the last one keeps their bytes:
/// every input a member reads outlives the step ([`outlives_the_step`])
/// or is placed in the arena (`placed`: value -> (offset, bytes)), no
/// member reads another's output (but `found_inf`, fused with the
/// unscales it reads), and no arena range read overlaps one written.
fn keeps_its_inputs(plan: &Plan, placed: &HashMap<usize, (usize, usize)>, members: &[usize], fused: bool) -> bool {
    let fed: Vec<bool> = (0..plan.num_values()).map(|v| outlives_the_step(plan, v)).collect();
    let last = members.len() - 1;
    let outputs: Vec<usize> = members.iter().flat_map(|&i| plan.steps[i].outputs.iter().copied()).collect();
    let mut read = Vec::new();
    for (k, &i) in members.iter().enumerate() {
        if fused && k == last {
            continue;
        }
        for &v in &plan.steps[i].inputs {
            if outputs.contains(&v) {
                return false;
            }
            match (fed[v], placed.get(&v)) {
                (true, _) => {}
                (false, Some(&r)) => read.push(r),
                (false, None) => return false,
            }
        }
    }
    let written: Vec<(usize, usize)> = outputs.iter().filter_map(|v| placed.get(v).copied()).collect();
    read.iter().all(|&(a, n)| written.iter().all(|&(b, m)| a + n <= b || b + m <= a))
}

/// The groups of `plan` with the arena offsets `placed`: the [`runs`]
/// that [`keeps_its_inputs`] allows.
pub(super) fn find(plan: &Plan, placed: &HashMap<usize, (usize, usize)>) -> Vec<Found> {
    runs(plan).into_iter().filter(|f| keeps_its_inputs(plan, placed, &f.steps, f.kind == Kind::Unscale)).collect()
}

/// The arena requests `reqs` (value, request) with the life of every
/// input of a run's member lengthened to the run's last step: planned so,
/// the arena keeps those bytes until the launch.
pub(super) fn lengthened(plan: &Plan, reqs: &[(usize, Request)]) -> Vec<Request> {
    let mut until = vec![0usize; plan.num_values()];
    for f in runs(plan) {
        let last = *f.steps.last().unwrap_or(&0);
        for &i in &f.steps {
            for &v in &plan.steps[i].inputs {
                until[v] = until[v].max(last);
            }
        }
    }
    reqs.iter().map(|&(v, r)| Request { end: r.end.max(until[v]), ..r }).collect()
}

/// Runs of at least two nodes that could share a launch, before the
/// memory plan is looked at.
fn runs(plan: &Plan) -> Vec<Found> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < plan.steps.len() {
        if let Some(key) = optimizer_key(plan, i) {
            let mut j = i + 1;
            while j < plan.steps.len() && optimizer_key(plan, j).as_ref() == Some(&key) {
                j += 1;
            }
            let members: Vec<usize> = (i..j).collect();
            if members.len() >= 2 {
                out.push(Found { kind: key.0, steps: members });
            }
            i = j;
            continue;
        }
        if let Some(key) = select_key(plan, i) {
            let mut j = i + 1;
            while j < plan.steps.len() && select_key(plan, j) == Some(key) {
                j += 1;
            }
            if j - i >= 2 {
                out.push(Found { kind: Kind::Select, steps: (i..j).collect() });
            }
            i = j;
            continue;
        }
        if plan.steps[i].op == Op::Unscale {
            let scale = plan.steps[i].inputs.get(1).copied();
            let mut j = i;
            while j < plan.steps.len()
                && plan.steps[j].op == Op::Unscale
                && plan.steps[j].inputs.get(1).copied() == scale
            {
                j += 1;
            }
            let mut members: Vec<usize> = (i..j).collect();
            let outs: Vec<usize> = members.iter().flat_map(|&m| plan.steps[m].outputs.iter().copied()).collect();
            let check = plan.steps.get(j).filter(|s| s.op == Op::FoundInf);
            let exact = check.is_some_and(|s| {
                let mut a = s.inputs.clone();
                let mut b = outs.clone();
                a.sort_unstable();
                b.sort_unstable();
                a == b && s.out_types.first().is_some_and(|t| t.dtype == DType::F32)
            });
            let f32_out =
                members.iter().all(|&m| plan.steps[m].out_types.first().is_some_and(|t| t.dtype == DType::F32));
            let typed = members.iter().all(|&m| plan.steps[m].inputs.first().and_then(|&g| dtype(plan, g)).is_some());
            if exact && f32_out && typed && members.len() >= 2 {
                members.push(j);
                out.push(Found { kind: Kind::Unscale, steps: members });
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// Whether value `v` of `plan` keeps its buffer to the end of the step:
/// fed (params, state, batch: resident), or kept by the step (the new
/// state, the loss, the outputs), so a read deferred within the step
/// finds it.
pub(super) fn outlives_the_step(plan: &Plan, v: usize) -> bool {
    plan.sources.iter().any(|s| s.value == v && matches!(s.from, Feed::State | Feed::Batch))
        || plan.updates.iter().any(|&(_, u)| u == v)
        || plan.loss == Some(v)
        || plan.outputs.contains(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::memory;
    use crate::exec::memplan;

    fn plan(low: DType) -> Plan {
        let text = include_str!("../../../../ir-examples/mlp.json");
        let mut g = crate::parse_str(text).unwrap();
        let opts = crate::passes::Options { low, ..crate::passes::Options::default() };
        crate::passes::lower(&mut g, &opts).unwrap();
        Plan::new(&g, 0).unwrap()
    }

    /// Every arena value at its own bytes: nothing overlaps.
    fn apart(plan: &Plan) -> HashMap<usize, (usize, usize)> {
        let mut at = 0;
        let mut out = HashMap::new();
        for (v, r) in memory::requests(plan).unwrap() {
            out.insert(v, (at, r.bytes as usize));
            at += r.bytes as usize;
        }
        out
    }

    #[test]
    fn the_mlp_has_an_unscale_run_and_an_adam_run() {
        let p = plan(DType::F16);
        let runs = runs(&p);
        let kinds: Vec<(Kind, usize)> = runs.iter().map(|f| (f.kind, f.steps.len())).collect();
        // Six unscales and their found_inf; the six AdamW updates; the 18
        // f32 selects that keep params and moments on overflow (the i32
        // step counter's select is alone of its type).
        assert_eq!(kinds, [(Kind::Unscale, 7), (Kind::Adam, 6), (Kind::Select, 18)]);
        assert_eq!(p.steps[*runs[0].steps.last().unwrap()].op, Op::FoundInf);
        let flag = p.steps[*runs[0].steps.last().unwrap()].outputs[0];
        assert!(runs[2].steps.iter().all(|&i| p.steps[i].inputs[0] == flag));
        // With every value apart, all keep their inputs.
        assert_eq!(find(&p, &apart(&p)).len(), 3);
        // fp32: no scaler, only the optimizer run.
        let kinds: Vec<Kind> = super::runs(&plan(DType::F32)).iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [Kind::Adam]);
    }

    #[test]
    fn a_run_whose_input_shares_bytes_with_an_output_is_refused() {
        let p = plan(DType::F16);
        let adam = runs(&p).into_iter().find(|f| f.kind == Kind::Adam).unwrap();
        let mut placed = apart(&p);
        // The first update's gradient where the last update's param output goes.
        let grad = p.steps[adam.steps[0]].inputs[1];
        let out = p.steps[*adam.steps.last().unwrap()].outputs[0];
        placed.insert(grad, placed[&out]);
        assert!(!keeps_its_inputs(&p, &placed, &adam.steps, false));
        assert_eq!(find(&p, &placed).len(), 2, "the unscale and select runs still form");
        // An input that is neither in the arena nor kept to the end of the step.
        let mut placed = apart(&p);
        placed.remove(&grad);
        assert!(!keeps_its_inputs(&p, &placed, &adam.steps, false));
    }

    #[test]
    fn lengthened_lives_reach_the_last_member() {
        let p = plan(DType::F16);
        let reqs = memory::requests(&p).unwrap();
        let longer = lengthened(&p, &reqs);
        let adam = runs(&p).into_iter().find(|f| f.kind == Kind::Adam).unwrap();
        let last = *adam.steps.last().unwrap();
        let grad = p.steps[adam.steps[0]].inputs[1];
        let k = reqs.iter().position(|(v, _)| *v == grad).unwrap();
        assert!(reqs[k].1.end < last && longer[k].end == last);
        // Lengthening never shortens, and plans: the arena holds every value.
        assert!(reqs.iter().zip(&longer).all(|((_, a), b)| b.end >= a.end && b.start == a.start));
        assert!(memplan::plan(&longer).unwrap().arena_bytes >= memplan::peak_live_bytes(&longer));
    }
}
