//! master-weights: materialises the optimizer over FP32 master parameters.
//!
//! Parameters are FP32 state; low ops already read cast copies (made once
//! per step by autocast and shared). Here every gradient enters the
//! optimizer in the parameter's type (FP32), is clipped by the global norm
//! when asked, and drives one optimizer op per parameter whose state
//! (momentum, Adam moments) is FP32 state too. When loss scaling found an
//! inf or NaN, `select` keeps every parameter and every optimizer state
//! bit for bit: the step is skipped.

use crate::format::OptimizerKind;
use crate::graph::{Graph, NodeId, ValueId};
use crate::op::{Init, Op, Role};
use crate::types::{DType, TensorType};

use super::{Pass, PassError};

pub struct MasterWeights;

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: "master-weights", message: message.into() }
}

struct Builder<'g> {
    g: &'g mut Graph,
}

impl Builder<'_> {
    fn node(&mut self, base: &str, op: Op, role: Role, inputs: &[ValueId]) -> Result<NodeId, PassError> {
        let name = self.g.fresh_name(base);
        self.g.add_node(name, op, role, inputs).map_err(|e| fail(e.to_string()))
    }

    fn value(&mut self, base: &str, op: Op, role: Role, inputs: &[ValueId]) -> Result<ValueId, PassError> {
        Ok(ValueId { node: self.node(base, op, role, inputs)?, slot: 0 })
    }

    fn multi(&mut self, names: &[String], op: Op, inputs: &[ValueId]) -> Result<NodeId, PassError> {
        let names: Vec<String> = names.iter().map(|n| self.g.fresh_name(n)).collect();
        self.g
            .add_node_with_outputs(names[0].clone(), op, Role::Optimizer, inputs, names)
            .map_err(|e| fail(e.to_string()))
    }

    fn state(&mut self, base: &str, ty: TensorType) -> Result<ValueId, PassError> {
        self.value(base, Op::State { ty, init: Init::Zeros }, Role::Forward, &[])
    }
}

impl Pass for MasterWeights {
    fn name(&self) -> &'static str {
        "master-weights"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let Some(opt) = g.optimizer.clone() else { return Ok(false) };
        if g.node_ids().any(|n| g.node(n).role == Role::Optimizer) {
            return Ok(false);
        }
        if opt.accumulate() > 1 {
            return Err(fail("gradient accumulation (optimizer.accumulate > 1) is not supported yet"));
        }
        if g.gradients.is_empty() {
            return Ok(false);
        }
        let found: Option<ValueId> =
            g.node_ids().find(|&n| g.node(n).op == Op::FoundInf).map(|n| ValueId { node: n, slot: 0 });
        let grads = g.gradients.clone();
        let mut b = Builder { g };

        // Gradients enter the optimizer in the parameter's (FP32) type.
        let mut inputs = Vec::with_capacity(grads.len());
        for &(p, gv) in &grads {
            let want = b.g.ty(ValueId { node: p, slot: 0 }).dtype;
            let v = if b.g.ty(gv).dtype == want {
                gv
            } else {
                let role = b.g.node(gv.node).role;
                let base = format!("{}.{want}", b.g.value_name(gv));
                b.value(&base, Op::Cast { to: want }, role, &[gv])?
            };
            inputs.push(v);
        }
        if let Some(max_norm) = opt.clip_grad_norm {
            let norm = b.value("grad_norm", Op::GlobalNorm, Role::Optimizer, &inputs)?;
            let coef = b.value("clip_coef", Op::ClipCoef { max_norm }, Role::Optimizer, &[norm])?;
            for v in inputs.iter_mut() {
                let base = format!("{}.clipped", b.g.value_name(*v));
                *v = b.value(&base, Op::Mul, Role::Optimizer, &[*v, coef])?;
            }
            b.g.outputs.push(norm);
        }

        let step = if matches!(opt.kind, OptimizerKind::Adam | OptimizerKind::Adamw) {
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

        let mut updates: Vec<(ValueId, ValueId)> = Vec::new();
        for (&(p, _), &grad) in grads.iter().zip(&inputs) {
            let pv = ValueId { node: p, slot: 0 };
            let ty = b.g.ty(pv).clone();
            let pname = b.g.node(p).name.clone();
            let (lr, wd) = (opt.lr, opt.weight_decay_of(&pname));
            match (opt.kind, step) {
                (OptimizerKind::Sgd, _) if opt.momentum() == 0.0 => {
                    let next = b.value(
                        &format!("{pname}.next"),
                        Op::Sgd { lr, weight_decay: wd },
                        Role::Optimizer,
                        &[pv, grad],
                    )?;
                    updates.push((pv, next));
                }
                (OptimizerKind::Sgd, _) => {
                    let buf = b.state(&format!("{pname}.momentum"), ty)?;
                    let op = Op::SgdMomentum { lr, momentum: opt.momentum(), weight_decay: wd };
                    let names = [format!("{pname}.next"), format!("{pname}.momentum.next")];
                    let n = b.multi(&names, op, &[pv, grad, buf])?;
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
                    let names =
                        [format!("{pname}.next"), format!("{pname}.adam_m.next"), format!("{pname}.adam_v.next")];
                    let n = b.multi(&names, op, &[pv, grad, m, v, step_next])?;
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
        // A skipped step keeps every state as it was.
        for (state, next) in updates {
            let value = match found {
                Some(f) => {
                    let base = format!("{}.kept", b.g.value_name(next));
                    b.value(&base, Op::Select, Role::Optimizer, &[f, state, next])?
                }
                None => next,
            };
            b.g.updates.push((state.node, value));
        }
        Ok(true)
    }
}
