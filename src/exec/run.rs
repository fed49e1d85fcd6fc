//! Running a lowered graph: a plan made once, then one step at a time.
//!
//! [`Plan`] orders the nodes, numbers every value and computes when each
//! dies. [`run_steps`] runs a plan (or a part of it) on a [`Backend`];
//! [`Executor`] and [`super::Session`] are its two callers. An
//! `Executor` step is a pure function `(state, batch, step number) ->
//! (state', loss, outputs)`: the executor keeps nothing between steps
//! (tests use it per op). A `Session` keeps the state on the device.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::ir::graph::{Graph, ValueId};
use crate::ir::op::Op;
use crate::ir::types::TensorType;

use super::backend::{node_seed, Backend, OpCtx};
use super::fuse::Group;
use super::ExecError;
use crate::tensor::Tensor;

/// Tensors by name: params and state, or a batch.
pub type State = crate::tensor::Tensors;

/// Per-step options, mostly for tests.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Extra values (by value name) to return in [`StepResult::fetched`];
    /// they are kept alive to the end of the step.
    pub fetch: Vec<String>,
    /// Test hook: on step `.1`, the value named `.0` is replaced by +inf
    /// (every element) right after it is produced, to simulate an overflow.
    pub inject_inf: Option<(String, u64)>,
}

/// What one step returns.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// The state after the step, by name.
    pub state: State,
    /// The loss value, when the graph has one.
    pub loss: Option<Tensor>,
    /// The graph's step outputs (metrics such as `found_inf`, `loss_scale`), by value name.
    pub outputs: BTreeMap<String, Tensor>,
    /// The values asked for in [`RunOptions::fetch`].
    pub fetched: BTreeMap<String, Tensor>,
    /// The largest number of values alive at once during the step.
    pub peak_live: usize,
}

impl StepResult {
    /// The loss as f32, when there is one.
    pub fn loss_f32(&self) -> Option<f32> {
        self.loss.as_ref().and_then(Tensor::item_f32)
    }
}

/// Where a source value comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Feed {
    Batch,
    State,
}

/// A value the step does not compute: a graph input, param or state.
pub(crate) struct Source {
    pub name: String,
    pub value: usize,
    pub ty: TensorType,
    pub from: Feed,
    /// A param (rather than optimizer or scaler state, or a batch input).
    pub is_param: bool,
}

/// One node to run.
pub(crate) struct Step {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    pub out_types: Vec<TensorType>,
    pub seed: u64,
    /// Values whose last reader is this node (or that nobody reads).
    pub free_after: Vec<usize>,
}

/// A graph ordered for execution: sources, steps, and value liveness.
/// Values are numbered densely; sources come first in the order.
pub struct Plan {
    pub(crate) sources: Vec<Source>,
    pub(crate) steps: Vec<Step>,
    pub(crate) names: Vec<String>,
    by_name: FxHashMap<String, usize>,
    pub(crate) loss: Option<usize>,
    pub(crate) outputs: Vec<usize>,
    /// `(state source index in `sources`, value holding its new value)`.
    pub(crate) updates: Vec<(usize, usize)>,
    /// Every value's type, by value index.
    pub(crate) types: Vec<TensorType>,
    /// The fusion groups a backend claimed: each runs as one launch.
    pub(crate) claimed: Vec<Group>,
    /// Per step, the claimed group it belongs to.
    pub(crate) group_of: Vec<Option<usize>>,
}

impl Plan {
    /// Plans `g` (topological order, value liveness). `seed` is the graph
    /// seed that dropout masks derive from.
    pub fn new(g: &Graph, seed: u64) -> Result<Plan, ExecError> {
        let order = g.topo_order().map_err(|_| ExecError::Graph("the graph has a cycle".into()))?;
        let mut index: FxHashMap<ValueId, usize> = FxHashMap::default();
        let mut names = Vec::new();
        let mut by_name = FxHashMap::default();
        for &n in &order {
            for v in g.values(n) {
                index.insert(v, names.len());
                by_name.insert(g.value_name(v).to_string(), names.len());
                names.push(g.value_name(v).to_string());
            }
        }
        let idx = |v: ValueId| {
            index
                .get(&v)
                .copied()
                .ok_or_else(|| ExecError::Graph(format!("value `{}` is not planned", g.value_name(v))))
        };
        let mut types = Vec::with_capacity(names.len());
        for &n in &order {
            types.extend(g.values(n).map(|v| g.ty(v).clone()));
        }
        let mut sources = Vec::new();
        let mut steps = Vec::new();
        let mut source_of = FxHashMap::default();
        for &n in &order {
            let node = g.node(n);
            let v0 = ValueId { node: n, slot: 0 };
            let from = match node.op() {
                Op::Input { .. } => Some(Feed::Batch),
                Op::Param { .. } | Op::State { .. } => Some(Feed::State),
                _ => None,
            };
            if let Some(from) = from {
                let value = idx(v0)?;
                source_of.insert(n, sources.len());
                let is_param = matches!(node.op(), Op::Param { .. });
                sources.push(Source { name: node.name().to_string(), value, ty: g.ty(v0).clone(), from, is_param });
                continue;
            }
            steps.push(Step {
                name: node.name().to_string(),
                op: node.op().clone(),
                inputs: g.inputs(n).into_iter().map(idx).collect::<Result<_, _>>()?,
                outputs: g.values(n).map(idx).collect::<Result<_, _>>()?,
                out_types: g.output_types(n).cloned().collect(),
                seed: node_seed(seed, node.name()),
                free_after: Vec::new(),
            });
        }
        let loss = g.loss.map(idx).transpose()?;
        let outputs: Vec<usize> = g.outputs.iter().map(|&v| idx(v)).collect::<Result<_, _>>()?;
        let mut updates = Vec::new();
        for &(n, v) in &g.updates {
            let s = source_of.get(&n).copied().filter(|&s| sources[s].from == Feed::State).ok_or_else(|| {
                ExecError::Graph(format!("`{}` is updated but is not a param or state", g.node(n).name()))
            })?;
            updates.push((s, idx(v)?));
        }
        // Liveness: a value dies after its last reader, unless the step returns it.
        let mut keep = vec![false; names.len()];
        for &v in loss.iter().chain(&outputs).chain(updates.iter().map(|(_, v)| v)) {
            keep[v] = true;
        }
        let mut last: Vec<Option<usize>> = vec![None; names.len()];
        let mut producer = vec![None; names.len()];
        for (i, s) in steps.iter().enumerate() {
            for &v in &s.inputs {
                last[v] = Some(i);
            }
            for &v in &s.outputs {
                producer[v] = Some(i);
            }
        }
        for v in 0..names.len() {
            if keep[v] {
                continue;
            }
            if let Some(i) = last[v].or(producer[v]) {
                steps[i].free_after.push(v);
            }
        }
        let group_of = vec![None; steps.len()];
        Ok(Plan { sources, steps, names, by_name, loss, outputs, updates, types, claimed: Vec::new(), group_of })
    }

    /// The fusion groups of the plan (see [`super::fuse`]), claimed or not.
    pub fn fusion_groups(&self) -> Vec<Group> {
        super::fuse::groups(self)
    }

    /// Makes `groups` (from [`Plan::fusion_groups`]) run as one launch
    /// each, replacing any claimed before: their hidden values are no
    /// longer planned, stored or returned.
    pub fn claim(&mut self, groups: Vec<Group>) -> Result<(), ExecError> {
        let mut group_of = vec![None; self.steps.len()];
        for (k, g) in groups.iter().enumerate() {
            if g.first >= g.at() || g.at() >= self.steps.len() {
                return Err(ExecError::Graph(format!(
                    "fusion group {k}: steps {}..={} are not a run",
                    g.first,
                    g.at()
                )));
            }
            for i in g.steps() {
                if group_of[i].replace(k).is_some() {
                    return Err(ExecError::Graph(format!(
                        "fusion group {k}: step `{}` is in two groups",
                        self.steps[i].name
                    )));
                }
            }
        }
        self.claimed = groups;
        self.group_of = group_of;
        Ok(())
    }

    /// The groups claimed, in step order.
    pub fn claimed(&self) -> &[Group] {
        &self.claimed
    }

    /// The name of value `v`.
    pub fn value_name(&self, v: usize) -> &str {
        &self.names[v]
    }

    /// The type of value `v`.
    pub fn value_type(&self, v: usize) -> &TensorType {
        &self.types[v]
    }

    /// The name and op of step `i`.
    pub fn step(&self, i: usize) -> (&str, &Op) {
        (&self.steps[i].name, &self.steps[i].op)
    }

    /// The values step `i` reads, in the op's input order.
    pub fn step_inputs(&self, i: usize) -> &[usize] {
        &self.steps[i].inputs
    }

    /// The values step `i` makes, in slot order.
    pub fn step_outputs(&self, i: usize) -> &[usize] {
        &self.steps[i].outputs
    }

    /// The number of steps (nodes that compute).
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// The number of values the plan computes or feeds (sources included).
    pub fn num_values(&self) -> usize {
        self.names.len()
    }

    /// The value named `name`.
    pub(crate) fn lookup(&self, name: &str) -> Result<usize, ExecError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ExecError::Value { name: name.to_string(), message: "no value has this name".into() })
    }

    /// Which steps compute `wanted` (the steps they transitively read), in
    /// order: what a forward-only evaluation runs.
    pub(crate) fn needed_steps(&self, wanted: &[usize]) -> Vec<bool> {
        let mut producer = vec![usize::MAX; self.names.len()];
        for (i, s) in self.steps.iter().enumerate() {
            for &v in &s.outputs {
                producer[v] = i;
            }
        }
        let mut need = vec![false; self.steps.len()];
        let mut stack: Vec<usize> = wanted.iter().map(|&v| producer[v]).filter(|&i| i != usize::MAX).collect();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut need[i], true) {
                continue;
            }
            stack.extend(self.steps[i].inputs.iter().map(|&v| producer[v]).filter(|&p| p != usize::MAX));
        }
        need
    }
}

/// A value during a step: a buffer the step made, or one it borrows (the
/// session's resident state).
pub(crate) enum Slot<'a, T> {
    Owned(T),
    Borrowed(&'a T),
}

impl<T> Slot<'_, T> {
    pub fn get(&self) -> &T {
        match self {
            Slot::Owned(t) => t,
            Slot::Borrowed(t) => t,
        }
    }
}

/// Gives a step each source's buffer.
pub(crate) type Feeder<'a, 'f, B> =
    dyn FnMut(&mut B, &Source) -> Result<Slot<'a, <B as Backend>::Buffer>, ExecError> + 'f;

/// What [`run_steps`] leaves: every value still alive, and the peak count.
pub(crate) struct Ran<'a, T> {
    pub vals: Vec<Option<Slot<'a, T>>>,
    pub peak_live: usize,
}

/// Runs `plan`'s steps (those marked in `only`, or all) on `backend`.
/// `feed` gives each source's buffer; values die after their last reader
/// unless `pinned`.
pub(crate) fn run_steps<'a, B: Backend>(
    backend: &mut B,
    plan: &Plan,
    feed: &mut Feeder<'a, '_, B>,
    step: u64,
    opts: &RunOptions,
    only: Option<&[bool]>,
) -> Result<Ran<'a, B::Buffer>, ExecError> {
    let mut vals: Vec<Option<Slot<'a, B::Buffer>>> = (0..plan.num_values()).map(|_| None).collect();
    let mut pinned = vec![false; plan.num_values()];
    for f in &opts.fetch {
        pinned[plan.lookup(f)?] = true;
    }
    let inject = match &opts.inject_inf {
        Some((name, s)) if *s == step => Some(plan.lookup(name)?),
        _ => None,
    };
    let mut live = 0usize;
    for s in &plan.sources {
        let mut b = feed(backend, s)?;
        if inject == Some(s.value) {
            b = Slot::Owned(poison(backend, b.get(), &s.name)?);
        }
        vals[s.value] = Some(b);
        live += 1;
    }
    let mut peak = live;
    // A claimed group runs fused unless a value it hides is wanted (fetched
    // or poisoned) or only part of it is to run.
    let fused: Vec<bool> = plan
        .claimed
        .iter()
        .map(|g| {
            g.hidden.iter().all(|&v| !pinned[v] && inject != Some(v)) && g.steps().all(|i| only.is_none_or(|o| o[i]))
        })
        .collect();
    // Values a fused group writes after their own step (a cross-entropy
    // pair's loss, written at the gradient's step).
    let mut later = vec![false; plan.num_values()];
    for g in plan.claimed.iter().zip(&fused).filter(|(_, &f)| f).map(|(g, _)| g) {
        for m in g.steps().filter(|&m| m != g.at()) {
            for &v in plan.steps[m].outputs.iter().filter(|v| g.outputs.contains(v)) {
                later[v] = true;
            }
        }
    }
    for (i, st) in plan.steps.iter().enumerate() {
        if only.is_some_and(|o| !o[i]) {
            continue;
        }
        let ctx = OpCtx { node: &st.name, step, seed: st.seed };
        if let Some(k) = plan.group_of[i].filter(|&k| fused[k]) {
            let g = &plan.claimed[k];
            if i != g.at() {
                continue;
            }
            let outs = {
                let mut ins = Vec::with_capacity(g.inputs.len());
                for &v in &g.inputs {
                    ins.push(vals[v].as_ref().map(Slot::get).ok_or_else(|| ExecError::Op {
                        node: st.name.clone(),
                        op: st.op.name(),
                        message: format!("fused input `{}` was freed too early or never computed", plan.names[v]),
                    })?);
                }
                let types: Vec<TensorType> = g.outputs.iter().map(|&v| plan.types[v].clone()).collect();
                backend.run_group(k, &ctx, &ins, &types)?
            };
            if outs.len() != g.outputs.len() {
                return Err(ExecError::Op {
                    node: st.name.clone(),
                    op: "fused",
                    message: format!("the backend returned {} outputs, expected {}", outs.len(), g.outputs.len()),
                });
            }
            for (b, &v) in outs.into_iter().zip(&g.outputs) {
                let b = if inject == Some(v) { poison(backend, &b, &plan.names[v])? } else { b };
                let b = if pinned[v] { backend.keep(b)? } else { b };
                vals[v] = Some(Slot::Owned(b));
                live += 1;
            }
            peak = peak.max(live);
            for m in g.steps() {
                for &v in &plan.steps[m].free_after {
                    if !pinned[v] && vals[v].take().is_some() {
                        live -= 1;
                    }
                }
            }
            continue;
        }
        let outs = {
            let mut ins = Vec::with_capacity(st.inputs.len());
            for &v in &st.inputs {
                // A seed reads only its input's type, which `out_types`
                // carries: it runs before a fused pair writes the loss.
                if later[v] && matches!(st.op, Op::Seed) {
                    continue;
                }
                ins.push(vals[v].as_ref().map(Slot::get).ok_or_else(|| ExecError::Op {
                    node: st.name.clone(),
                    op: st.op.name(),
                    message: format!("input `{}` was freed too early or never computed", plan.names[v]),
                })?);
            }
            backend.run(&st.op, &ctx, &ins, &st.out_types)?
        };
        if outs.len() != st.outputs.len() {
            return Err(ExecError::Op {
                node: st.name.clone(),
                op: st.op.name(),
                message: format!("the backend returned {} outputs, expected {}", outs.len(), st.outputs.len()),
            });
        }
        for (b, &v) in outs.into_iter().zip(&st.outputs) {
            let b = if inject == Some(v) { poison(backend, &b, &plan.names[v])? } else { b };
            let b = if pinned[v] { backend.keep(b)? } else { b };
            vals[v] = Some(Slot::Owned(b));
            live += 1;
        }
        peak = peak.max(live);
        for &v in &st.free_after {
            if !pinned[v] && vals[v].take().is_some() {
                live -= 1;
            }
        }
    }
    Ok(Ran { vals, peak_live: peak })
}

/// Downloads the value `v` of a finished step.
pub(crate) fn fetch<B: Backend>(
    backend: &mut B,
    plan: &Plan,
    vals: &[Option<Slot<'_, B::Buffer>>],
    v: usize,
) -> Result<Tensor, ExecError> {
    let b = vals[v].as_ref().ok_or_else(|| ExecError::Graph(format!("value `{}` is gone", plan.names[v])))?;
    backend.download(b.get())
}

/// The step's loss, outputs and fetched values, downloaded.
pub(crate) type Returned = (Option<Tensor>, BTreeMap<String, Tensor>, BTreeMap<String, Tensor>);

/// Downloads what a step returns besides the state.
pub(crate) fn returned<B: Backend>(
    backend: &mut B,
    plan: &Plan,
    vals: &[Option<Slot<'_, B::Buffer>>],
    opts: &RunOptions,
) -> Result<Returned, ExecError> {
    let loss = plan.loss.map(|v| fetch(backend, plan, vals, v)).transpose()?;
    let mut outputs = BTreeMap::new();
    for &v in &plan.outputs {
        outputs.insert(plan.names[v].clone(), fetch(backend, plan, vals, v)?);
    }
    let mut fetched = BTreeMap::new();
    for f in &opts.fetch {
        fetched.insert(f.clone(), fetch(backend, plan, vals, plan.lookup(f)?)?);
    }
    Ok((loss, outputs, fetched))
}

/// Uploads a host tensor for `s` after checking its type.
pub(crate) fn upload_checked<B: Backend>(
    backend: &mut B,
    s: &Source,
    t: Option<&Tensor>,
) -> Result<B::Buffer, ExecError> {
    backend.upload(checked(s, t)?)
}

/// `t`, when it is there and of `s`'s type.
pub(crate) fn checked<'t>(s: &Source, t: Option<&'t Tensor>) -> Result<&'t Tensor, ExecError> {
    let what = if s.from == Feed::Batch { "batch" } else { "state" };
    let t = t.ok_or_else(|| ExecError::Value { name: s.name.clone(), message: format!("missing from the {what}") })?;
    if t.ty() != s.ty {
        return Err(ExecError::Value { name: s.name.clone(), message: format!("expected {}, found {}", s.ty, t.ty()) });
    }
    Ok(t)
}

/// Runs a lowered graph on a [`Backend`], one step at a time, with the
/// state passed in and returned on the host each step (see
/// [`super::Session`] for state kept on the device).
pub struct Executor<B: Backend> {
    backend: B,
    plan: Plan,
}

impl<B: Backend> Executor<B> {
    /// Plans `g` (topological order, value liveness) for `backend`.
    /// `seed` is the graph seed that dropout masks derive from.
    pub fn new(g: &Graph, backend: B, seed: u64) -> Result<Executor<B>, ExecError> {
        let mut plan = Plan::new(g, seed)?;
        let mut backend = backend;
        claim(&mut backend, &mut plan)?;
        backend.prepare(&plan)?;
        Ok(Executor { backend, plan })
    }

    /// The number of values the plan computes or feeds (sources included).
    pub fn num_values(&self) -> usize {
        self.plan.num_values()
    }

    /// The backend.
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Runs step number `step` (0-based; dropout masks depend on it).
    pub fn step(
        &mut self,
        state: &State,
        batch: &State,
        step: u64,
        opts: &RunOptions,
    ) -> Result<StepResult, ExecError> {
        let plan = &self.plan;
        let mut feed = |b: &mut B, s: &Source| {
            let map = if s.from == Feed::Batch { batch } else { state };
            upload_checked(b, s, map.get(&s.name)).map(Slot::Owned)
        };
        let ran = run_steps(&mut self.backend, plan, &mut feed, step, opts, None)?;
        let update: FxHashMap<usize, usize> = plan.updates.iter().copied().collect();
        let mut new_state = State::new();
        for (i, s) in plan.sources.iter().enumerate().filter(|(_, s)| s.from == Feed::State) {
            let t = match update.get(&i) {
                Some(&v) => fetch(&mut self.backend, plan, &ran.vals, v)?,
                // Fed, so present.
                None => {
                    state.get(&s.name).cloned().ok_or_else(|| ExecError::Graph(format!("`{}` vanished", s.name)))?
                }
            };
            new_state.insert(s.name.clone(), t);
        }
        let (loss, outputs, fetched) = returned(&mut self.backend, plan, &ran.vals, opts)?;
        Ok(StepResult { state: new_state, loss, outputs, fetched, peak_live: ran.peak_live })
    }
}

/// Offers `backend` the plan's fusion groups and claims those it takes.
pub(crate) fn claim<B: Backend>(backend: &mut B, plan: &mut Plan) -> Result<(), ExecError> {
    let groups = plan.fusion_groups();
    let taken = backend.claim(plan, &groups)?;
    let mut picked = Vec::with_capacity(taken.len());
    for k in taken {
        let g = groups
            .get(k)
            .ok_or_else(|| ExecError::Graph(format!("the backend claimed fusion group {k} of {}", groups.len())))?;
        picked.push(g.clone());
    }
    plan.claim(picked)
}

/// A copy of `b` with every element +inf (the overflow test hook).
fn poison<B: Backend>(backend: &mut B, b: &B::Buffer, name: &str) -> Result<B::Buffer, ExecError> {
    let t = backend.download(b)?;
    if !t.dtype().is_float() {
        return Err(ExecError::Value { name: name.to_string(), message: "only a float value can be made inf".into() });
    }
    backend.upload(&Tensor::full(&t.ty(), f64::INFINITY)?)
}
