//! master-weights: materialises the optimizer over FP32 master parameters.
//!
//! Parameters are FP32 state; low ops already read cast copies (made once
//! per step by autocast and shared). Here every gradient enters the
//! optimizer in the parameter's type (FP32), is clipped by the global norm
//! when asked, and drives one optimizer op per parameter whose state
//! (momentum, Adam moments) is FP32 state too. When loss scaling found an
//! inf or NaN, `select` keeps every parameter and every optimizer state
//! bit for bit: the step is skipped.
//!
//! With `optimizer.accumulate: N > 1` one optimizer step takes N runs of
//! the graph, one per micro-batch (see [`Builder::accumulate`]): each run
//! adds its (scaled) gradients into FP32 accumulators; the N-th unscales
//! the sums once, checks them for inf/NaN once, divides them by N (the
//! loss is a mean over the batch, so the mean of the micro-batch gradients
//! is the gradient of the whole batch), clips them, and steps or skips;
//! the other runs keep every parameter, optimizer and scaler state.

use crate::ir::graph::{Graph, NodeId, ValueId};
use crate::ir::op::{Init, Op, Role};
use crate::ir::optimizer::{OptimizerKind, Schedule};
use crate::ir::types::{DType, TensorType};

use super::{Pass, PassError};

pub struct MasterWeights;

/// The gradient that backward computed for one micro-batch behind `v`, a
/// value of a lowered graph's `gradients`: `v` itself; what its `unscale`
/// reads, after loss scaling; and with gradient accumulation, the term
/// added to the accumulator (before its cast to f32).
pub fn micro_gradient(g: &Graph, v: ValueId) -> ValueId {
    let mut v = v;
    let first = |v: ValueId| g.inputs(v.node).first().copied().unwrap_or(v);
    if *g.node(v.node).op() == Op::Unscale {
        v = first(v);
    }
    if g.optimizer.as_ref().is_some_and(|o| o.accumulate() > 1) && *g.node(v.node).op() == Op::Add {
        let ins = g.inputs(v.node);
        if let (Some(acc), Some(&term)) = (ins.first(), ins.get(1)) {
            if matches!(g.node(acc.node).op(), Op::State { .. }) {
                v = term;
                if let Op::Cast { to: DType::F32 } = g.node(v.node).op() {
                    v = first(v);
                }
            }
        }
    }
    v
}

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: "master-weights", message: message.into() }
}

struct Builder<'g> {
    g: &'g mut Graph,
}

impl Builder<'_> {
    /// A node named after `base`; the name enters the name table at the
    /// next `register_deferred`, which comes before this pass reads the name
    /// of a node it added or looks a name up.
    fn node(&mut self, base: &str, op: Op, role: Role, inputs: &[ValueId]) -> Result<NodeId, PassError> {
        self.g.add_deferred(base, op, role, inputs).map_err(|e| fail(e.to_string()))
    }

    fn value(&mut self, base: &str, op: Op, role: Role, inputs: &[ValueId]) -> Result<ValueId, PassError> {
        Ok(ValueId { node: self.node(base, op, role, inputs)?, slot: 0 })
    }

    fn multi(&mut self, names: &[String], op: Op, inputs: &[ValueId]) -> Result<NodeId, PassError> {
        self.g.register_deferred();
        let names: Vec<String> = names.iter().map(|n| self.g.fresh_name(n)).collect();
        self.g
            .add_node_with_outputs(names[0].clone(), op, Role::Optimizer, inputs, names)
            .map_err(|e| fail(e.to_string()))
    }

    fn state(&mut self, base: &str, ty: TensorType) -> Result<ValueId, PassError> {
        self.value(base, Op::State { ty, init: Init::Zeros }, Role::Forward, &[])
    }

    fn constant(&mut self, base: &str, value: f64, ty: TensorType) -> Result<ValueId, PassError> {
        self.value(base, Op::Constant { value, ty }, Role::Optimizer, &[])
    }

    /// Gradient accumulation over `n` micro-batches, one per run of the
    /// graph. Adds the state `accumulate_step: i32[]` (micro-batches taken
    /// in the current step before this run) and, per parameter,
    /// `<param>.grad_acc: f32` (the sum of their gradients, as backward
    /// computed them: scaled when the loss is):
    ///
    /// - `accumulate.pending = f32(n − (accumulate_step + 1))`, nonzero
    ///   while micro-batches of the step are still to come; the counter's
    ///   update wraps to 0 when it is zero;
    /// - `<param>.grad_acc.sum = grad_acc + f32(grad)`, which the gradient's
    ///   `unscale` now reads (or, unscaled, `gradients` now names), so the
    ///   inf/NaN check sees the whole step's sum; the accumulator keeps the
    ///   sum while pending, else restarts from zero;
    /// - the scaler's state (`scale_update`'s outputs) changes only when
    ///   nothing is pending: one scale per step, one backoff or growth.
    ///
    /// Returns `accumulate.pending`; the caller skips the optimizer step
    /// while it is nonzero, and divides the gradients by `n`.
    fn accumulate(&mut self, n: u32) -> Result<ValueId, PassError> {
        let int = TensorType::scalar(DType::I32);
        let count = self.state("accumulate_step", int.clone())?;
        let one = self.constant("accumulate_step.one", 1.0, int.clone())?;
        let next = self.value("accumulate_step.next", Op::Add, Role::Optimizer, &[count, one])?;
        let total = self.constant("accumulate_step.total", f64::from(n), int.clone())?;
        let left = self.value("accumulate.left", Op::Sub, Role::Optimizer, &[total, next])?;
        let pending = self.value("accumulate.pending", Op::Cast { to: DType::F32 }, Role::Optimizer, &[left])?;
        let zero = self.constant("accumulate_step.zero", 0.0, int)?;
        let wrapped =
            self.value("accumulate_step.next.wrapped", Op::Select, Role::Optimizer, &[pending, next, zero])?;
        self.g.updates.push((count.node, wrapped));

        for i in 0..self.g.gradients.len() {
            let (p, gv) = self.g.gradients[i];
            let unscale = (*self.g.node(gv.node).op() == Op::Unscale).then_some(gv.node);
            let raw = match unscale {
                Some(u) => self.g.inputs(u).first().copied().ok_or_else(|| fail("an `unscale` without inputs"))?,
                None => gv,
            };
            let pname = compact_str::CompactString::from(self.g.node(p).name());
            let ty = TensorType { dtype: DType::F32, ..self.g.ty(ValueId { node: p, slot: 0 }).clone() };
            let acc = self.state(&format!("{pname}.grad_acc"), ty.clone())?;
            let raw = if self.g.ty(raw).dtype == DType::F32 {
                raw
            } else {
                let role = self.g.node(raw.node).role();
                let base = format!("{}.f32", self.g.value_name(raw));
                self.value(&base, Op::Cast { to: DType::F32 }, role, &[raw])?
            };
            let sum = self.value(&format!("{pname}.grad_acc.sum"), Op::Add, Role::Backward, &[acc, raw])?;
            let zeros = self.constant(&format!("{pname}.grad_acc.zero"), 0.0, ty)?;
            let kept =
                self.value(&format!("{pname}.grad_acc.next"), Op::Select, Role::Optimizer, &[pending, sum, zeros])?;
            self.g.updates.push((acc.node, kept));
            match unscale {
                Some(u) => self.g.set_input(u, 0, sum),
                None => self.g.gradients[i].1 = sum,
            }
        }

        for i in 0..self.g.updates.len() {
            let (state, next) = self.g.updates[i];
            if matches!(self.g.node(next.node).op(), Op::ScaleUpdate { .. }) {
                let base = format!("{}.kept", self.g.value_name(next));
                let inputs = [pending, ValueId { node: state, slot: 0 }, next];
                self.g.updates[i].1 = self.value(&base, Op::Select, Role::Scaler, &inputs)?;
            }
        }
        Ok(pending)
    }
}

impl Pass for MasterWeights {
    fn name(&self) -> &'static str {
        "master-weights"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let Some(opt) = g.optimizer.clone() else { return Ok(false) };
        if g.node_ids().any(|n| g.node(n).role() == Role::Optimizer) {
            return Ok(false);
        }
        if g.gradients.is_empty() {
            return Ok(false);
        }
        let built = build(g, &opt);
        g.register_deferred();
        built?;
        Ok(true)
    }
}

/// The optimizer's nodes, master weights and state.
fn build(g: &mut Graph, opt: &crate::ir::optimizer::Optimizer) -> Result<(), PassError> {
    let found: Option<ValueId> =
        g.node_ids().find(|&n| *g.node(n).op() == Op::FoundInf).map(|n| ValueId { node: n, slot: 0 });
    let mut b = Builder { g };
    let n = opt.accumulate();
    let pending = match n {
        1 => None,
        _ => Some(b.accumulate(n)?),
    };
    let grads = b.g.gradients.clone();
    // The loops below read the names of nodes added before them.
    b.g.register_deferred();

    // Gradients enter the optimizer in the parameter's (FP32) type.
    let mut inputs = Vec::with_capacity(grads.len());
    for &(p, gv) in &grads {
        let want = b.g.ty(ValueId { node: p, slot: 0 }).dtype;
        let v = if b.g.ty(gv).dtype == want {
            gv
        } else {
            let role = b.g.node(gv.node).role();
            let base = format!("{}.{want}", b.g.value_name(gv));
            b.value(&base, Op::Cast { to: want }, role, &[gv])?
        };
        inputs.push(v);
    }
    b.g.register_deferred();
    if pending.is_some() {
        // The mean of the micro-batch gradients (exact for a power of two).
        for v in inputs.iter_mut() {
            let base = format!("{}.mean", b.g.value_name(*v));
            *v = b.value(&base, Op::Scale { value: 1.0 / f64::from(n) }, Role::Optimizer, &[*v])?;
        }
    }
    if let Some(max_norm) = opt.clip_grad_norm {
        let norm = b.value("grad_norm", Op::GlobalNorm, Role::Optimizer, &inputs)?;
        let coef = b.value("clip_coef", Op::ClipCoef { max_norm }, Role::Optimizer, &[norm])?;
        b.g.register_deferred();
        for v in inputs.iter_mut() {
            let base = format!("{}.clipped", b.g.value_name(*v));
            *v = b.value(&base, Op::Mul, Role::Optimizer, &[*v, coef])?;
        }
        b.g.outputs.push(norm);
    }

    let schedule = match opt.schedule {
        Some(Schedule::Cosine { warmup, total, min_lr }) => Some(Op::LrSchedule { lr: opt.lr, warmup, total, min_lr }),
        Some(Schedule::Constant) | None => None,
    };
    let adam = matches!(opt.kind, OptimizerKind::Adam | OptimizerKind::Adamw);
    let step = if adam || schedule.is_some() {
        let step = b.state("optimizer_step", TensorType::scalar(DType::I32))?;
        let one = b.value(
            "optimizer_step.one",
            Op::Constant { value: 1.0, ty: TensorType::scalar(DType::I32) },
            Role::Optimizer,
            &[],
        )?;
        let next = b.value("optimizer_step.next", Op::Add, Role::Optimizer, &[step, one])?;
        Some((step, next))
    } else {
        None
    };
    // A schedule's rate follows the steps taken (a skipped step keeps
    // `optimizer_step`, so the schedule waits with it).
    let lr_input: Vec<ValueId> = match (schedule, step) {
        (Some(op), Some((step, _))) => {
            let lr = b.value("lr", op, Role::Optimizer, &[step])?;
            b.g.outputs.push(lr);
            vec![lr]
        }
        _ => Vec::new(),
    };

    let mut updates: Vec<(ValueId, ValueId)> = Vec::new();
    for (&(p, _), &grad) in grads.iter().zip(&inputs) {
        let pv = ValueId { node: p, slot: 0 };
        let ty = b.g.ty(pv).clone();
        let pname = compact_str::CompactString::from(b.g.node(p).name());
        let (lr, wd) = (opt.lr, opt.weight_decay_of(&pname));
        match (opt.kind, step) {
            (OptimizerKind::Sgd, _) if opt.momentum() == 0.0 => {
                let next = b.value(
                    &format!("{pname}.next"),
                    Op::Sgd { lr, weight_decay: wd },
                    Role::Optimizer,
                    &[&[pv, grad][..], &lr_input].concat(),
                )?;
                updates.push((pv, next));
            }
            (OptimizerKind::Sgd, _) => {
                let buf = b.state(&format!("{pname}.momentum"), ty)?;
                let op = Op::SgdMomentum { lr, momentum: opt.momentum(), weight_decay: wd };
                let names = [format!("{pname}.next"), format!("{pname}.momentum.next")];
                let n = b.multi(&names, op, &[&[pv, grad, buf][..], &lr_input].concat())?;
                updates.push((pv, ValueId { node: n, slot: 0 }));
                updates.push((buf, ValueId { node: n, slot: 1 }));
            }
            (_, Some((_, step_next))) => {
                let m = b.state(&format!("{pname}.adam_m"), ty.clone())?;
                let v = b.state(&format!("{pname}.adam_v"), ty)?;
                let op = Op::Adam {
                    lr,
                    beta1: opt.beta1(),
                    beta2: opt.beta2(),
                    eps: opt.eps(),
                    weight_decay: wd,
                    decoupled: opt.kind == OptimizerKind::Adamw,
                };
                let names = [format!("{pname}.next"), format!("{pname}.adam_m.next"), format!("{pname}.adam_v.next")];
                let n = b.multi(&names, op, &[&[pv, grad, m, v, step_next][..], &lr_input].concat())?;
                for (slot, s) in [pv, m, v].into_iter().enumerate() {
                    updates.push((s, ValueId { node: n, slot: slot as u32 }));
                }
            }
            (_, None) => unreachable!("adam always has a step counter"),
        }
    }
    if let Some((step, next)) = step {
        updates.push((step, next));
    }
    // A skipped step (an overflow, or micro-batches still to come)
    // keeps every state as it was.
    let skip = match (found, pending) {
        (Some(f), Some(p)) => Some(b.value("skip_step", Op::Add, Role::Optimizer, &[f, p])?),
        (f, p) => f.or(p),
    };
    b.g.register_deferred();
    for (state, next) in updates {
        let value = match skip {
            Some(f) => {
                let base = format!("{}.kept", b.g.value_name(next));
                b.value(&base, Op::Select, Role::Optimizer, &[f, state, next])?
            }
            None => next,
        };
        b.g.updates.push((state.node, value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::optimizer::{Optimizer, OptimizerKind};

    /// The optimizer's names enter the name table in batches; a name the
    /// graph already has must still send the new node to `name.1`, and a
    /// node read by name after it was added must be read under its final
    /// name (`w.next.1.kept`, not `w.next.kept`).
    #[test]
    fn an_update_named_like_a_forward_value_takes_the_next_name() {
        let (mut g, _) = crate::passes::grad::tests::relu_of_a_param("w.next");
        let mut opt = Optimizer::new(OptimizerKind::Sgd, 0.1);
        opt.accumulate = Some(2);
        g.optimizer = Some(opt);
        assert!(crate::passes::grad::Grad.run(&mut g).unwrap());
        assert!(MasterWeights.run(&mut g).unwrap());
        let names: Vec<&str> = g.updates.iter().map(|&(_, v)| g.value_name(v)).collect();
        assert!(names.contains(&"w.next.1.kept"), "{names:?}");
        assert!(g.value("w.next.1").is_some() && g.value("w.next.1.kept").is_some());
        assert!(g.name_map_problems().is_empty(), "{:?}", g.name_map_problems());
    }
}
