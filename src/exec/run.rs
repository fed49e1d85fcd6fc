//! Running a lowered graph: a plan made once, then one step at a time.
//!
//! A step is a pure function `(state, batch, step number) -> (state',
//! loss, outputs)`: the executor keeps nothing between steps. `state`
//! holds every param and state tensor by node name (see [`init_state`]),
//! `batch` every graph input by name. The new state applies the graph's
//! `updates`; state without an update passes through unchanged.

use std::collections::BTreeMap;

use half::{bf16, f16};
use rustc_hash::FxHashMap;

use crate::graph::{Graph, ValueId};
use crate::op::{Init, Op};
use crate::types::{DType, TensorType};

use super::backend::{node_seed, Backend, OpCtx};
use super::rng::{combine, fnv1a, SplitMix64};
use super::tensor::{numel, Data, Tensor};
use super::ExecError;

/// Tensors by name: params and state, or a batch.
pub type State = BTreeMap<String, Tensor>;

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
enum Feed {
    Batch,
    State,
}

struct Source {
    name: String,
    value: usize,
    ty: TensorType,
    from: Feed,
}

struct Step {
    name: String,
    op: Op,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    out_types: Vec<TensorType>,
    seed: u64,
    /// Values whose last reader is this node (or that nobody reads).
    free_after: Vec<usize>,
}

/// Runs a lowered graph on a [`Backend`], one step at a time.
pub struct Executor<B: Backend> {
    backend: B,
    sources: Vec<Source>,
    steps: Vec<Step>,
    values: usize,
    by_name: FxHashMap<String, usize>,
    names: Vec<String>,
    loss: Option<usize>,
    outputs: Vec<usize>,
    /// The names of the param and state nodes.
    state: Vec<String>,
    updates: FxHashMap<String, usize>,
}

impl<B: Backend> Executor<B> {
    /// Plans `g` (topological order, value liveness) for `backend`.
    /// `seed` is the graph seed that dropout masks derive from.
    pub fn new(g: &Graph, backend: B, seed: u64) -> Result<Executor<B>, ExecError> {
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
        let mut sources = Vec::new();
        let mut steps = Vec::new();
        let mut state = Vec::new();
        for &n in &order {
            let node = g.node(n);
            let v0 = ValueId { node: n, slot: 0 };
            let from = match node.op {
                Op::Input { .. } => Some(Feed::Batch),
                Op::Param { .. } | Op::State { .. } => Some(Feed::State),
                _ => None,
            };
            if let Some(from) = from {
                let value = idx(v0)?;
                if from == Feed::State {
                    state.push(node.name.clone());
                }
                sources.push(Source { name: node.name.clone(), value, ty: g.ty(v0).clone(), from });
                continue;
            }
            steps.push(Step {
                name: node.name.clone(),
                op: node.op.clone(),
                inputs: g.inputs(n).into_iter().map(idx).collect::<Result<_, _>>()?,
                outputs: g.values(n).map(idx).collect::<Result<_, _>>()?,
                out_types: node.outputs.iter().map(|o| o.ty.clone()).collect(),
                seed: node_seed(seed, &node.name),
                free_after: Vec::new(),
            });
        }
        let loss = g.loss.map(idx).transpose()?;
        let outputs: Vec<usize> = g.outputs.iter().map(|&v| idx(v)).collect::<Result<_, _>>()?;
        let mut updates = FxHashMap::default();
        for &(n, v) in &g.updates {
            updates.insert(g.node(n).name.clone(), idx(v)?);
        }
        // Liveness: a value dies after its last reader, unless the step returns it.
        let mut keep = vec![false; names.len()];
        for &v in loss.iter().chain(&outputs).chain(updates.values()) {
            keep[v] = true;
        }
        let mut last: Vec<Option<usize>> = vec![None; names.len()];
        for (i, s) in steps.iter().enumerate() {
            for &v in &s.inputs {
                last[v] = Some(i);
            }
        }
        let mut producer = vec![None; names.len()];
        for (i, s) in steps.iter().enumerate() {
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
        Ok(Executor { backend, sources, steps, values: names.len(), by_name, names, loss, outputs, state, updates })
    }

    /// The number of values the plan computes or feeds (sources included).
    pub fn num_values(&self) -> usize {
        self.values
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
        let mut vals: Vec<Option<B::Buffer>> = (0..self.values).map(|_| None).collect();
        let mut pinned = vec![false; self.values];
        for f in &opts.fetch {
            let v = self.lookup(f)?;
            pinned[v] = true;
        }
        let inject = match &opts.inject_inf {
            Some((name, s)) if *s == step => Some(self.lookup(name)?),
            _ => None,
        };
        let mut live = 0usize;
        let mut peak = 0usize;
        for s in &self.sources {
            let map = if s.from == Feed::Batch { batch } else { state };
            let what = if s.from == Feed::Batch { "batch" } else { "state" };
            let t = map.get(&s.name).ok_or_else(|| ExecError::Value {
                name: s.name.clone(),
                message: format!("missing from the {what}"),
            })?;
            if t.ty() != s.ty {
                return Err(ExecError::Value {
                    name: s.name.clone(),
                    message: format!("expected {}, found {}", s.ty, t.ty()),
                });
            }
            let mut b = self.backend.upload(t)?;
            if inject == Some(s.value) {
                b = poison(&mut self.backend, &b, &s.name)?;
            }
            vals[s.value] = Some(b);
            live += 1;
        }
        peak = peak.max(live);
        for st in &self.steps {
            let ctx = OpCtx { node: &st.name, step, seed: st.seed };
            let outs = {
                let mut ins = Vec::with_capacity(st.inputs.len());
                for &v in &st.inputs {
                    ins.push(vals[v].as_ref().ok_or_else(|| ExecError::Op {
                        node: st.name.clone(),
                        op: st.op.name(),
                        message: format!("input `{}` was freed too early or never computed", self.names[v]),
                    })?);
                }
                self.backend.run(&st.op, &ctx, &ins, &st.out_types)?
            };
            if outs.len() != st.outputs.len() {
                return Err(ExecError::Op {
                    node: st.name.clone(),
                    op: st.op.name(),
                    message: format!("the backend returned {} outputs, expected {}", outs.len(), st.outputs.len()),
                });
            }
            for (b, &v) in outs.into_iter().zip(&st.outputs) {
                let b = if inject == Some(v) { poison(&mut self.backend, &b, &self.names[v])? } else { b };
                vals[v] = Some(b);
                live += 1;
            }
            peak = peak.max(live);
            for &v in &st.free_after {
                if !pinned[v] && vals[v].take().is_some() {
                    live -= 1;
                }
            }
        }
        let mut get = |v: usize| -> Result<Tensor, ExecError> {
            let b = vals[v].as_ref().ok_or_else(|| ExecError::Graph(format!("value `{}` is gone", self.names[v])))?;
            self.backend.download(b)
        };
        let mut new_state = State::new();
        for name in &self.state {
            let t = match self.updates.get(name) {
                Some(&u) => get(u)?,
                None => state
                    .get(name)
                    .cloned()
                    .ok_or_else(|| ExecError::Value { name: name.clone(), message: "missing from the state".into() })?,
            };
            new_state.insert(name.clone(), t);
        }
        let loss = self.loss.map(&mut get).transpose()?;
        let mut outputs = BTreeMap::new();
        for &v in &self.outputs {
            outputs.insert(self.names[v].clone(), get(v)?);
        }
        let mut fetched = BTreeMap::new();
        for f in &opts.fetch {
            let v = self.by_name[f.as_str()];
            fetched.insert(f.clone(), get(v)?);
        }
        Ok(StepResult { state: new_state, loss, outputs, fetched, peak_live: peak })
    }

    fn lookup(&self, name: &str) -> Result<usize, ExecError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ExecError::Value { name: name.to_string(), message: "no value has this name".into() })
    }
}

/// A copy of `b` with every element +inf (the overflow test hook).
fn poison<B: Backend>(backend: &mut B, b: &B::Buffer, name: &str) -> Result<B::Buffer, ExecError> {
    let t = backend.download(b)?;
    if !t.dtype().is_float() {
        return Err(ExecError::Value { name: name.to_string(), message: "only a float value can be made inf".into() });
    }
    backend.upload(&Tensor::full(&t.ty(), f64::INFINITY)?)
}

/// `(fan_in, fan_out)` of a weight, mpc's convention: a 2-D weight is
/// `[in, out]` (it is used as `x · w`, the transpose of PyTorch's Linear
/// layout), so `fan_in = shape[0]`, `fan_out = shape[1]`; a conv weight
/// `[O, C, kh, kw]` (rank ≥ 3) has `fan_in = C·kh·kw` and
/// `fan_out = O·kh·kw`; a 1-D tensor has both equal to its length, a
/// scalar both 1.
pub fn fans(shape: &[u64]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [i, o] => (*i as f64, *o as f64),
        [o, c, rest @ ..] => {
            let rf: u64 = rest.iter().product();
            ((c * rf) as f64, (o * rf) as f64)
        }
    }
}

/// Values rounded once from f64 into `dtype`.
fn from_f64(dtype: DType, v: &[f64]) -> Data {
    match dtype {
        DType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
        DType::F16 => Data::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
        DType::Bf16 => Data::Bf16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
        DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
        DType::I64 => Data::I64(v.iter().map(|&x| x as i64).collect()),
        DType::Bool => Data::Bool(v.iter().map(|&x| x != 0.0).collect()),
    }
}

/// One tensor per its `Init`, drawing from a generator seeded by
/// `combine(seed, fnv1a(name))`: the same seed gives the same bits, and a
/// tensor's values do not depend on which other tensors exist.
pub fn init_tensor(name: &str, ty: &TensorType, init: &Init, seed: u64) -> Result<Tensor, ExecError> {
    let n = numel(&ty.shape)?;
    let mut rng = SplitMix64::new(combine(seed, fnv1a(name)));
    let (fan_in, fan_out) = fans(&ty.shape.0);
    let vals: Vec<f64> = match *init {
        Init::Zeros => return Tensor::zeros(ty),
        Init::Ones => return Tensor::full(ty, 1.0),
        Init::Constant { value } => return Tensor::full(ty, value),
        Init::Normal { mean, std } => (0..n).map(|_| mean + std * rng.normal()).collect(),
        Init::Uniform { low, high } => (0..n).map(|_| low + (high - low) * rng.next_f64()).collect(),
        Init::XavierUniform { gain } => {
            let b = gain * (6.0 / (fan_in + fan_out)).sqrt();
            (0..n).map(|_| -b + 2.0 * b * rng.next_f64()).collect()
        }
        Init::KaimingNormal { gain } => {
            let std = gain / fan_in.sqrt();
            (0..n).map(|_| std * rng.normal()).collect()
        }
        Init::File => {
            return Err(ExecError::Value {
                name: name.to_string(),
                message: "init `file` needs a safetensors file, which this executor does not read".into(),
            })
        }
    };
    Tensor::new(ty.shape.clone(), from_f64(ty.dtype, &vals))
}

/// Every param and state tensor of `g`, by node name, from its `Init`.
/// `init: file` values need [`init_state_with`].
pub fn init_state(g: &Graph, seed: u64) -> Result<State, ExecError> {
    init_state_with(g, seed, None)
}

/// As [`init_state`], reading `init: file` values from the graph's `weights`
/// safetensors file, relative to `base_dir` (the graph file's folder).
pub fn init_state_with(g: &Graph, seed: u64, base_dir: Option<&std::path::Path>) -> Result<State, ExecError> {
    let uses_file = g
        .node_ids()
        .any(|n| matches!(&g.node(n).op, Op::Param { init: Init::File, .. } | Op::State { init: Init::File, .. }));
    let mut file = match (&g.weights, uses_file) {
        (Some(w), true) => {
            let path = base_dir.map(|d| d.join(w)).unwrap_or_else(|| w.into());
            crate::checkpoint::read_tensors(&path)
                .map_err(|e| ExecError::Value { name: w.clone(), message: e.to_string() })?
        }
        _ => State::new(),
    };
    let mut out = State::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if let Op::Param { ty, init } | Op::State { ty, init } = &node.op {
            let t = match (init, &g.weights) {
                (Init::File, Some(w)) => {
                    let t = file.remove(&node.name).ok_or_else(|| ExecError::Value {
                        name: node.name.clone(),
                        message: format!("init is `file` but `{w}` has no tensor of that name"),
                    })?;
                    if t.shape() != &ty.shape || t.dtype() != ty.dtype {
                        return Err(ExecError::Value {
                            name: node.name.clone(),
                            message: format!(
                                "`{w}` holds {}{} but the graph declares {ty}",
                                t.dtype().name(),
                                t.shape()
                            ),
                        });
                    }
                    t
                }
                (Init::File, None) => {
                    return Err(ExecError::Value {
                        name: node.name.clone(),
                        message: "init is `file` but the graph names no `weights` file".into(),
                    })
                }
                _ => init_tensor(&node.name, ty, init, seed)?,
            };
            out.insert(node.name.clone(), t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_convention() {
        assert_eq!(fans(&[64, 128]), (64.0, 128.0));
        assert_eq!(fans(&[16, 3, 3, 3]), (27.0, 144.0));
        assert_eq!(fans(&[10]), (10.0, 10.0));
    }

    #[test]
    fn init_is_deterministic_and_scaled() {
        let ty = TensorType::new(DType::F32, vec![256, 128]);
        let a = init_tensor("w", &ty, &Init::KaimingNormal { gain: 2f64.sqrt() }, 3).unwrap();
        let b = init_tensor("w", &ty, &Init::KaimingNormal { gain: 2f64.sqrt() }, 3).unwrap();
        assert!(a.bit_eq(&b));
        let c = init_tensor("w", &ty, &Init::KaimingNormal { gain: 2f64.sqrt() }, 4).unwrap();
        assert!(!a.bit_eq(&c));
        let v = a.to_f32_vec();
        let var = v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64;
        assert!((var - 2.0 / 256.0).abs() < 0.1 * 2.0 / 256.0, "{var}");
        let x = init_tensor("x", &ty, &Init::XavierUniform { gain: 1.0 }, 3).unwrap();
        let bound = (6.0f64 / 384.0).sqrt() as f32;
        assert!(x.to_f32_vec().iter().all(|v| v.abs() <= bound));
        let e = init_tensor("f", &ty, &Init::File, 3).unwrap_err();
        assert!(e.to_string().contains("needs a safetensors file"), "{e}");
    }

    #[test]
    fn file_init_reads_the_weights_file_and_checks_types() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = State::new();
        w.insert("w".into(), Tensor::from_f32(DType::F32, vec![2], &[1.5, -2.0]).unwrap());
        w.insert("v".into(), Tensor::from_f32(DType::F32, vec![3], &[0.0; 3]).unwrap());
        crate::checkpoint::write_tensors(&dir.path().join("m.safetensors"), &w).unwrap();
        let mut g = Graph::new("g");
        let ty = TensorType::new(DType::F32, vec![2]);
        g.add_node("w", Op::Param { ty: ty.clone(), init: Init::File }, crate::Role::Forward, &[]).unwrap();
        let e = init_state_with(&g, 0, Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("names no `weights` file"), "{e}");
        g.weights = Some("m.safetensors".into());
        let s = init_state_with(&g, 0, Some(dir.path())).unwrap();
        assert!(s["w"].bit_eq(&w["w"]));
        g.add_node("v", Op::Param { ty, init: Init::File }, crate::Role::Forward, &[]).unwrap();
        let e = init_state_with(&g, 0, Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("holds f32[3] but the graph declares f32[2]"), "{e}");
        g.weights = Some("missing.safetensors".into());
        assert!(init_state_with(&g, 0, Some(dir.path())).unwrap_err().to_string().contains("cannot read"));
    }
}
