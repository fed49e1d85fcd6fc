//! loss-scale: multiplies the loss-gradient seed by the scale S, unscales
//! every parameter gradient in FP32, checks them together for inf/NaN and,
//! for dynamic scaling, updates S exactly as PyTorch's GradScaler does.
//!
//! The scale (f32) and the growth tracker (i32) are step state; `found_inf`
//! and the scale used are step outputs, so skipped steps are visible.
//! The optimizer step itself is made skippable by master-weights, which
//! reads `found_inf`.

use crate::graph::{Graph, ValueId};
use crate::op::{Init, Op, Role};
use crate::types::{DType, TensorType};

use super::{Pass, PassError};

/// How the loss is scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossScale {
    None,
    /// A fixed scale.
    Static(f64),
    /// PyTorch GradScaler's dynamic scaling.
    Dynamic {
        init: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: u32,
    },
}

impl LossScale {
    /// GradScaler's defaults: 2^16, x2 after 2000 clean steps, x0.5 on overflow.
    pub const DYNAMIC: LossScale =
        LossScale::Dynamic { init: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 };

    /// The default for a low type: dynamic for f16, none for bf16 (FP32's range).
    pub fn default_for(low: DType) -> LossScale {
        if low == DType::F16 {
            LossScale::DYNAMIC
        } else {
            LossScale::None
        }
    }
}

impl std::str::FromStr for LossScale {
    type Err = String;

    /// `none`, `dynamic` or `static:S` with S a positive finite number.
    fn from_str(s: &str) -> Result<LossScale, String> {
        match s {
            "none" => Ok(LossScale::None),
            "dynamic" => Ok(LossScale::DYNAMIC),
            _ => {
                let v = s
                    .strip_prefix("static:")
                    .ok_or_else(|| format!("expected none, dynamic or static:S, found `{s}`"))?;
                let scale: f64 = v.parse().map_err(|_| format!("`{v}` is not a number"))?;
                if scale > 0.0 && scale.is_finite() && (scale as f32).is_finite() {
                    Ok(LossScale::Static(scale))
                } else {
                    Err(format!("a static scale must be positive and fit f32, found {v}"))
                }
            }
        }
    }
}

pub struct LossScaling {
    pub mode: LossScale,
}

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: "loss-scale", message: message.into() }
}

impl Pass for LossScaling {
    fn name(&self) -> &'static str {
        "loss-scale"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        let (init, dynamic) = match self.mode {
            LossScale::None => return Ok(false),
            LossScale::Static(s) => (s, None),
            LossScale::Dynamic { init, growth_factor, backoff_factor, growth_interval } => {
                (init, Some(Op::ScaleUpdate { growth_factor, backoff_factor, growth_interval }))
            }
        };
        if g.node_ids().any(|n| g.node(n).role == Role::Scaler) {
            return Ok(false);
        }
        if g.gradients.is_empty() {
            // Nothing trains: there is nothing to scale.
            return Ok(false);
        }
        let seeds: Vec<_> = g.node_ids().filter(|&n| g.node(n).op == Op::Seed).collect();
        let [seed] = seeds[..] else {
            return Err(fail(format!(
                "loss scaling needs exactly one `seed` node (the loss gradient), found {}",
                seeds.len()
            )));
        };
        let err = |e: crate::graph::GraphError| fail(e.to_string());
        let scalar = |d| TensorType::scalar(d);
        let name = g.fresh_name("loss_scale");
        let scale_node = g
            .add_node(
                name,
                Op::State { ty: scalar(DType::F32), init: Init::Constant { value: init } },
                Role::Forward,
                &[],
            )
            .map_err(err)?;
        let scale = ValueId { node: scale_node, slot: 0 };

        // The seed becomes S: every reader of the seed reads seed * S.
        let seed_v = ValueId { node: seed, slot: 0 };
        let uses = g.uses(seed_v);
        let name = g.fresh_name(&format!("{}.scaled", g.value_name(seed_v)));
        let scaled = g.add_node(name, Op::Mul, Role::Scaler, &[seed_v, scale]).map_err(err)?;
        for (consumer, port) in uses {
            g.set_input(consumer, port, ValueId { node: scaled, slot: 0 });
        }

        // Unscale every parameter gradient in FP32; check them together.
        let mut unscaled = Vec::with_capacity(g.gradients.len());
        for i in 0..g.gradients.len() {
            let grad = g.gradients[i].1;
            let name = g.fresh_name(&format!("{}.unscaled", g.value_name(grad)));
            let u = g.add_node(name, Op::Unscale, Role::Scaler, &[grad, scale]).map_err(err)?;
            let u = ValueId { node: u, slot: 0 };
            g.gradients[i].1 = u;
            unscaled.push(u);
        }
        let name = g.fresh_name("found_inf");
        let found = ValueId { node: g.add_node(name, Op::FoundInf, Role::Scaler, &unscaled).map_err(err)?, slot: 0 };
        g.outputs.push(found);
        g.outputs.push(scale);

        if let Some(update) = dynamic {
            let name = g.fresh_name("loss_scale_tracker");
            let tracker = g
                .add_node(name, Op::State { ty: scalar(DType::I32), init: Init::Zeros }, Role::Forward, &[])
                .map_err(err)?;
            let tracker_v = ValueId { node: tracker, slot: 0 };
            let names = vec![
                g.fresh_name(&format!("{}.next", g.value_name(scale))),
                g.fresh_name(&format!("{}.next", g.value_name(tracker_v))),
            ];
            let up = g
                .add_node_with_outputs(names[0].clone(), update, Role::Scaler, &[scale, tracker_v, found], names)
                .map_err(err)?;
            g.updates.push((scale_node, ValueId { node: up, slot: 0 }));
            g.updates.push((tracker, ValueId { node: up, slot: 1 }));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("none".parse::<LossScale>(), Ok(LossScale::None));
        assert_eq!("dynamic".parse::<LossScale>(), Ok(LossScale::DYNAMIC));
        assert_eq!("static:1024".parse::<LossScale>(), Ok(LossScale::Static(1024.0)));
        assert!("static:-1".parse::<LossScale>().is_err());
        assert!("static:1e40".parse::<LossScale>().is_err());
        assert!("static".parse::<LossScale>().is_err());
        assert!("dynamo".parse::<LossScale>().is_err());
    }
}
