//! A training session: the state lives on the backend across steps.
//!
//! [`Session::new`] uploads params and state once; each [`Session::step`]
//! uploads only the batch (into the same buffers each step), runs the plan,
//! and keeps the updated state where the backend made it (nothing crosses
//! back to the host but the loss and the scaler's scalars, read after the
//! step's work is issued). On a backend with graphs (CUDA), a step's work
//! is recorded and, once it repeats, replayed as one graph (see
//! [`super::backend::Backend::begin_step`] and `cuda::graph`). The host sees the state again only when asked:
//! [`Session::state`] for a checkpoint or the end, and [`Session::eval`]
//! runs only the forward nodes a fetched value needs (test accuracy).

use std::collections::BTreeMap;

use crate::ir::graph::Graph;
use crate::ir::op::Op;

use super::backend::{Backend, StepRun};
use super::run::{checked, fetch, returned, run_steps, upload_checked, Feed, Plan, RunOptions, Slot, Source, State};
use super::ExecError;
use crate::tensor::Tensor;

/// What one step reports back to the host.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    /// The loss, when the graph has one.
    pub loss: Option<f32>,
    /// The loss scale this step used (loss-scaled graphs).
    pub loss_scale: Option<f32>,
    /// Whether a gradient overflowed, so the step was skipped.
    pub found_inf: Option<bool>,
    /// The gradients' global norm (graphs that clip it).
    pub grad_norm: Option<f32>,
    /// The learning rate of this step (graphs with a schedule).
    pub lr: Option<f32>,
    /// The dynamic scaler's count of clean steps since the scale last
    /// changed, after this step (it grows the scale at its interval).
    pub growth_tracker: Option<f32>,
    /// The values asked for in [`RunOptions::fetch`].
    pub fetched: BTreeMap<String, Tensor>,
}

/// The values a step reports, found by the ops that make them rather than
/// by name (a user's value may be called `found_inf`).
#[derive(Clone, Copy, Debug, Default)]
struct Metrics {
    found_inf: Option<usize>,
    loss_scale: Option<usize>,
    grad_norm: Option<usize>,
    growth_tracker: Option<usize>,
    lr: Option<usize>,
}

impl Metrics {
    fn of(plan: &Plan) -> Metrics {
        let made_by = |want: fn(&Op) -> bool| {
            plan.outputs.iter().copied().find(|v| plan.steps.iter().any(|s| want(&s.op) && s.outputs.contains(v)))
        };
        // The scale is the state that every `unscale` divides by.
        let loss_scale = plan.outputs.iter().copied().find(|&v| {
            plan.sources.iter().any(|s| s.value == v && s.from == Feed::State)
                && plan.steps.iter().any(|s| s.op == Op::Unscale && s.inputs.get(1) == Some(&v))
        });
        // The tracker after the step: the new value of the state that
        // scale_update reads as its tracker (its second output, or, when
        // gradients accumulate, the select that keeps it between steps).
        let growth_tracker = plan
            .steps
            .iter()
            .find(|s| matches!(s.op, Op::ScaleUpdate { .. }))
            .and_then(|s| s.inputs.get(1).copied())
            .and_then(|t| plan.updates.iter().find(|&&(src, _)| plan.sources[src].value == t))
            .map(|&(_, v)| v);
        Metrics {
            found_inf: made_by(|op| *op == Op::FoundInf),
            loss_scale,
            grad_norm: made_by(|op| *op == Op::GlobalNorm),
            growth_tracker,
            lr: made_by(|op| matches!(op, Op::LrSchedule { .. })),
        }
    }
}

/// How a session's steps ran on a backend with graphs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GraphRuns {
    /// Steps issued launch by launch.
    pub direct: u64,
    /// Steps captured into a graph (each also ran it).
    pub captured: u64,
    /// Steps replayed from a graph captured before.
    pub replayed: u64,
    /// Why the last step that was not a graph was not.
    pub last_reason: Option<String>,
}

impl GraphRuns {
    fn note(&mut self, run: StepRun) {
        match run {
            StepRun::Direct(why) => {
                self.direct += 1;
                self.last_reason = Some(why);
            }
            StepRun::Captured => self.captured += 1,
            StepRun::Replayed => self.replayed += 1,
        }
    }
}

/// A lowered graph and its state, resident on a backend.
pub struct Session<B: Backend> {
    backend: B,
    plan: Plan,
    /// The state's buffers, by value (`None` but for params and state).
    resident: Vec<Option<B::Buffer>>,
    /// The batch's buffers, by value, written in place each step so that
    /// their addresses repeat (`None` but for the inputs, until the first step).
    held: Vec<Option<B::Buffer>>,
    metrics: Metrics,
    /// Whether steps may be captured and replayed as graphs.
    graphs: bool,
    runs: GraphRuns,
}

impl<B: Backend> Session<B> {
    /// Plans `g` and uploads `state` (every param and state tensor of `g`,
    /// by name, as [`super::init_state`] makes them or a checkpoint holds
    /// them). `seed` is the graph seed dropout masks derive from.
    pub fn new(g: &Graph, mut backend: B, seed: u64, state: &State) -> Result<Session<B>, ExecError> {
        let mut plan = Plan::new(g, seed)?;
        super::run::claim(&mut backend, &mut plan)?;
        backend.prepare(&plan)?;
        let mut resident: Vec<Option<B::Buffer>> = (0..plan.num_values()).map(|_| None).collect();
        for s in plan.sources.iter().filter(|s| s.from == Feed::State) {
            resident[s.value] = Some(upload_checked(&mut backend, s, state.get(&s.name))?);
        }
        if let Some(extra) = state.keys().find(|k| !plan.sources.iter().any(|s| s.from == Feed::State && &s.name == *k))
        {
            return Err(ExecError::Value {
                name: extra.clone(),
                message: "is not a param or state of the graph".into(),
            });
        }
        let metrics = Metrics::of(&plan);
        let held = (0..plan.num_values()).map(|_| None).collect();
        Ok(Session { backend, plan, resident, held, metrics, graphs: true, runs: GraphRuns::default() })
    }

    /// Lets steps be captured and replayed as graphs where the backend can
    /// (on by default), or runs every step launch by launch.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    /// How the steps so far ran (all direct on a backend without graphs).
    pub fn graph_runs(&self) -> &GraphRuns {
        &self.runs
    }

    /// The plan the session runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The backend.
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Runs training step number `step` (0-based; dropout masks depend on
    /// it) on `batch`, and keeps the updated state on the backend.
    pub fn step(&mut self, batch: &State, step: u64, opts: &RunOptions) -> Result<StepReport, ExecError> {
        let Session { backend, plan, resident, held, metrics, graphs, runs } = self;
        for s in plan.sources.iter().filter(|s| s.from == Feed::Batch) {
            let t = checked(s, batch.get(&s.name))?;
            match &mut held[s.value] {
                Some(b) => backend.upload_into(t, b)?,
                slot => *slot = Some(backend.upload(t)?),
            }
        }
        let recording = backend.begin_step(step, *graphs);
        let mut feed = feeder::<B>(resident, Some(held), batch);
        let stepped = run_steps(backend, plan, &mut feed, step, opts, None).and_then(|ran| {
            let mut vals = ran.vals;
            own_updates(backend, plan, &mut vals)?;
            Ok(vals)
        });
        // The recording ends even when the step failed, so that the device issues again.
        let ended = recording.then(|| backend.end_step());
        let mut vals = stepped?;
        if let Some(run) = ended.transpose()? {
            runs.note(run);
        }
        let scalar = |backend: &mut B, v: Option<usize>| -> Result<Option<f32>, ExecError> {
            v.map(|v| fetch(backend, plan, &vals, v).map(|t| t.item_f32())).transpose().map(Option::flatten)
        };
        let report = StepReport {
            loss_scale: scalar(backend, metrics.loss_scale)?,
            found_inf: scalar(backend, metrics.found_inf)?.map(|f| f != 0.0),
            grad_norm: scalar(backend, metrics.grad_norm)?,
            lr: scalar(backend, metrics.lr)?,
            growth_tracker: scalar(backend, metrics.growth_tracker)?,
            loss: scalar(backend, plan.loss)?,
            fetched: returned(backend, plan, &vals, opts)?.2,
        };
        // The new state: each update's buffer moves into the resident slot.
        let mut next = Vec::with_capacity(plan.updates.len());
        for &(s, v) in &plan.updates {
            let b = match vals[v].take() {
                Some(Slot::Owned(b)) => b,
                // One value updating two states: the second gets a copy.
                _ => match next.iter().find(|(s2, _)| plan.updates.iter().any(|&(x, w)| x == *s2 && w == v)) {
                    Some((_, b)) => backend.duplicate(b)?,
                    None => return Err(ExecError::Graph(format!("the update of `{}` is gone", plan.sources[s].name))),
                },
            };
            next.push((s, b));
        }
        drop(vals);
        drop(feed);
        for (s, b) in next {
            resident[plan.sources[s].value] = Some(b);
        }
        Ok(report)
    }

    /// Computes the values `fetch` (by name) on `batch` with the current
    /// state, running only the nodes they need; the state is unchanged.
    pub fn eval(&mut self, batch: &State, step: u64, fetch: &[String]) -> Result<BTreeMap<String, Tensor>, ExecError> {
        let Session { backend, plan, resident, .. } = self;
        let wanted = fetch.iter().map(|f| plan.lookup(f)).collect::<Result<Vec<_>, _>>()?;
        let only = plan.needed_steps(&wanted);
        let opts = RunOptions { fetch: fetch.to_vec(), ..RunOptions::default() };
        let mut feed = feeder::<B>(resident, None, batch);
        let ran = run_steps(backend, plan, &mut feed, step, &opts, Some(&only))?;
        let mut out = BTreeMap::new();
        for (name, &v) in fetch.iter().zip(&wanted) {
            out.insert(name.clone(), super::run::fetch(backend, plan, &ran.vals, v)?);
        }
        Ok(out)
    }

    /// The current params and state, downloaded, by name.
    pub fn state(&mut self) -> Result<State, ExecError> {
        let mut out = State::new();
        for s in &self.plan.sources {
            if let Some(b) = &self.resident[s.value] {
                out.insert(s.name.clone(), self.backend.download(b)?);
            }
        }
        Ok(out)
    }
}

/// Makes every update of the step a buffer of its own: one that is itself
/// a source (the state fed in, held by reference) is copied, on the device
/// and within the step's work.
fn own_updates<B: Backend>(
    backend: &mut B,
    plan: &Plan,
    vals: &mut [Option<Slot<'_, B::Buffer>>],
) -> Result<(), ExecError> {
    for &(s, v) in &plan.updates {
        let copy = match &vals[v] {
            Some(Slot::Owned(_)) => continue,
            Some(Slot::Borrowed(b)) => backend.duplicate(b)?,
            None => return Err(ExecError::Graph(format!("the update of `{}` is gone", plan.sources[s].name))),
        };
        vals[v] = Some(Slot::Owned(copy));
    }
    Ok(())
}

/// Feeds the resident state by reference, and the batch from `held` (the
/// session's batch buffers, already written) or uploaded.
fn feeder<'a, B: Backend>(
    resident: &'a [Option<B::Buffer>],
    held: Option<&'a [Option<B::Buffer>]>,
    batch: &'a State,
) -> impl FnMut(&mut B, &Source) -> Result<Slot<'a, B::Buffer>, ExecError> + 'a {
    move |backend: &mut B, s: &Source| match s.from {
        Feed::Batch => match held.and_then(|h| h[s.value].as_ref()) {
            Some(b) => Ok(Slot::Borrowed(b)),
            None => upload_checked(backend, s, batch.get(&s.name)).map(Slot::Owned),
        },
        Feed::State => resident[s.value]
            .as_ref()
            .map(Slot::Borrowed)
            .ok_or_else(|| ExecError::Graph(format!("`{}` is not resident", s.name))),
    }
}

/// A session on any backend, as one type: what `mpc train` and `mpc
/// compare` drive, whichever device was chosen.
pub trait Trainer {
    /// The backend's name ("cpu", "cuda").
    fn device(&self) -> &'static str;
    /// See [`Session::step`].
    fn step(&mut self, batch: &State, step: u64, opts: &RunOptions) -> Result<StepReport, ExecError>;
    /// See [`Session::eval`].
    fn eval(&mut self, batch: &State, step: u64, fetch: &[String]) -> Result<BTreeMap<String, Tensor>, ExecError>;
    /// See [`Session::state`].
    fn state(&mut self) -> Result<State, ExecError>;
    /// Device memory in use in bytes, where the device can say (a GPU).
    fn memory_in_use(&self) -> Option<u64>;
    /// See [`Session::set_graphs`].
    fn set_graphs(&mut self, on: bool);
    /// See [`Session::graph_runs`].
    fn graph_runs(&self) -> GraphRuns;
}

impl<B: Backend> Trainer for Session<B> {
    fn device(&self) -> &'static str {
        self.backend.name()
    }
    fn step(&mut self, batch: &State, step: u64, opts: &RunOptions) -> Result<StepReport, ExecError> {
        Session::step(self, batch, step, opts)
    }
    fn eval(&mut self, batch: &State, step: u64, fetch: &[String]) -> Result<BTreeMap<String, Tensor>, ExecError> {
        Session::eval(self, batch, step, fetch)
    }
    fn state(&mut self) -> Result<State, ExecError> {
        Session::state(self)
    }
    fn memory_in_use(&self) -> Option<u64> {
        self.backend.memory_in_use()
    }
    fn set_graphs(&mut self, on: bool) {
        Session::set_graphs(self, on)
    }
    fn graph_runs(&self) -> GraphRuns {
        self.runs.clone()
    }
}

impl GraphRuns {
    /// One line for people, or None when no step was recorded (graphs off,
    /// or a backend without them).
    pub fn summary(&self) -> Option<String> {
        let total = self.direct + self.captured + self.replayed;
        if total == 0 {
            return None;
        }
        let mut line = format!(
            "cuda graphs: {} of {total} steps replayed, {} captured, {} launched one by one",
            self.replayed, self.captured, self.direct
        );
        if let Some(why) = &self.last_reason {
            line.push_str(&format!(" (the last because {why})"));
        }
        Some(line)
    }
}
