//! loss-scale: multiplies the loss-gradient seed by the scale S, unscales
//! every parameter gradient in FP32, checks them together for inf/NaN and,
//! for dynamic scaling, updates S exactly as PyTorch's GradScaler does.
//!
//! The scale (f32) and the growth tracker (i32) are step state; `found_inf`
//! and the scale used are step outputs, so skipped steps are visible.
//! The optimizer step itself is made skippable by master-weights, which
//! reads `found_inf`.

use crate::ir::graph::{Graph, ValueId};
use crate::ir::op::{Init, Op, Role};
use crate::ir::types::{DType, TensorType};

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

    /// `none`, `static:S`, `dynamic`, or `dynamic:` with any of
    /// `init=S,growth=G,backoff=B,interval=N` (GradScaler's defaults for the
    /// rest), checked as GradScaler checks them: S positive and finite in
    /// f32, G > 1, 0 < B < 1, N ≥ 1.
    fn from_str(s: &str) -> Result<LossScale, String> {
        let positive = |what: &str, v: &str| -> Result<f64, String> {
            let x: f64 = v.parse().map_err(|_| format!("{what}: `{v}` is not a number"))?;
            match x > 0.0 && x.is_finite() && (x as f32).is_finite() {
                true => Ok(x),
                false => Err(format!("{what} must be positive and fit f32, found {v}")),
            }
        };
        match s {
            "none" => Ok(LossScale::None),
            "dynamic" => Ok(LossScale::DYNAMIC),
            _ if s.starts_with("static:") => Ok(LossScale::Static(positive("a static scale", &s[7..])?)),
            _ if s.starts_with("dynamic:") => {
                let LossScale::Dynamic { mut init, mut growth_factor, mut backoff_factor, mut growth_interval } =
                    LossScale::DYNAMIC
                else {
                    unreachable!("DYNAMIC is dynamic")
                };
                for part in s[8..].split(',') {
                    let (k, v) = part.split_once('=').ok_or_else(|| format!("`{part}`: expected KEY=VALUE"))?;
                    match k.trim() {
                        "init" => init = positive("init", v)?,
                        "growth" => {
                            growth_factor = positive("growth", v)?;
                            if growth_factor <= 1.0 {
                                return Err(format!("growth must be above 1 (the scale grows), found {v}"));
                            }
                        }
                        "backoff" => {
                            backoff_factor = positive("backoff", v)?;
                            if backoff_factor >= 1.0 {
                                return Err(format!("backoff must be between 0 and 1 (the scale shrinks), found {v}"));
                            }
                        }
                        "interval" => {
                            growth_interval = v
                                .parse::<u32>()
                                .ok()
                                .filter(|&n| n >= 1)
                                .ok_or_else(|| format!("interval must be a whole number of steps ≥ 1, found {v}"))?
                        }
                        other => return Err(format!("unknown key `{other}` (init, growth, backoff, interval)")),
                    }
                }
                Ok(LossScale::Dynamic { init, growth_factor, backoff_factor, growth_interval })
            }
            _ => Err(format!(
                "expected none, static:S, dynamic or dynamic:init=S,growth=G,backoff=B,interval=N, found `{s}`"
            )),
        }
    }
}

impl std::fmt::Display for LossScale {
    /// The form [`FromStr`](std::str::FromStr) reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossScale::None => f.write_str("none"),
            LossScale::Static(s) => write!(f, "static:{s}"),
            LossScale::Dynamic { init, growth_factor, backoff_factor, growth_interval } => {
                write!(
                    f,
                    "dynamic:init={init},growth={growth_factor},backoff={backoff_factor},interval={growth_interval}"
                )
            }
        }
    }
}

pub struct LossScaling {
    pub mode: LossScale,
    /// The mode was asked for (not the low type's default): a graph that
    /// already has a scaler is then an error unless it is that mode.
    pub explicit: bool,
}

/// The loss scaling a lowered graph carries (its `scale_update`'s factors;
/// the init is the scale state's init, which training changes).
pub fn existing(g: &Graph) -> LossScale {
    let mut init = None;
    let mut update = None;
    for n in g.node_ids() {
        match g.node(n).op() {
            Op::ScaleUpdate { growth_factor, backoff_factor, growth_interval } => {
                update = Some((*growth_factor, *backoff_factor, *growth_interval))
            }
            Op::Unscale => {
                if let Some(v) = g.inputs(n).get(1) {
                    if let Op::State { init: Init::Constant { value }, .. } = g.node(v.node).op() {
                        init = Some(*value);
                    }
                }
            }
            _ => {}
        }
    }
    match (init, update) {
        (_, Some((growth_factor, backoff_factor, growth_interval))) => {
            LossScale::Dynamic { init: init.unwrap_or(65536.0), growth_factor, backoff_factor, growth_interval }
        }
        (Some(s), None) => LossScale::Static(s),
        (None, None) => LossScale::None,
    }
}

fn fail(message: impl Into<String>) -> PassError {
    PassError::Failed { pass: "loss-scale", message: message.into() }
}

impl Pass for LossScaling {
    fn name(&self) -> &'static str {
        "loss-scale"
    }

    fn run(&mut self, g: &mut Graph) -> Result<bool, PassError> {
        if g.node_ids().any(|n| g.node(n).role() == Role::Scaler) {
            // Already scaled (a lowered file lowered again): keep it, unless a
            // different mode was asked for, which would be silently ignored.
            let has = existing(g);
            if self.explicit && has != self.mode {
                return Err(fail(format!(
                    "--loss-scale {}: the graph already has loss scaling ({}); lower the unlowered graph instead",
                    self.mode, has
                )));
            }
            return Ok(false);
        }
        let (init, dynamic) = match self.mode {
            LossScale::None => return Ok(false),
            LossScale::Static(s) => (s, None),
            LossScale::Dynamic { init, growth_factor, backoff_factor, growth_interval } => {
                (init, Some(Op::ScaleUpdate { growth_factor, backoff_factor, growth_interval }))
            }
        };
        if g.gradients.is_empty() {
            // Nothing trains: there is nothing to scale.
            return Ok(false);
        }
        let seeds: Vec<_> = g.node_ids().filter(|&n| *g.node(n).op() == Op::Seed).collect();
        let [seed] = seeds[..] else {
            return Err(fail(format!(
                "loss scaling needs exactly one `seed` node (the loss gradient), found {}",
                seeds.len()
            )));
        };
        let err = |e: crate::ir::graph::GraphError| fail(e.to_string());
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
        // The names enter the table in one batch after the loop (which reads
        // none of them), as adding them one at a time would give them.
        let mut unscaled = Vec::with_capacity(g.gradients.len());
        let mut unscale_all = |g: &mut Graph| -> Result<(), PassError> {
            for i in 0..g.gradients.len() {
                let grad = g.gradients[i].1;
                let name = format!("{}.unscaled", g.value_name(grad));
                let u = g.add_deferred(&name, Op::Unscale, Role::Scaler, &[grad, scale]).map_err(err)?;
                let u = ValueId { node: u, slot: 0 };
                g.gradients[i].1 = u;
                unscaled.push(u);
            }
            Ok(())
        };
        let done = unscale_all(g);
        g.register_deferred();
        done?;
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

    /// GradScaler's checks: growth above 1, backoff in (0, 1), interval ≥ 1,
    /// a finite positive init; what Display writes parses back.
    #[test]
    fn parses_and_checks_dynamic_settings() {
        let d: LossScale = "dynamic:init=1024,growth=4,backoff=0.25,interval=500".parse().unwrap();
        assert_eq!(
            d,
            LossScale::Dynamic { init: 1024.0, growth_factor: 4.0, backoff_factor: 0.25, growth_interval: 500 }
        );
        assert_eq!(d.to_string().parse::<LossScale>(), Ok(d));
        let d: LossScale = "dynamic:interval=7".parse().unwrap();
        assert_eq!(
            d,
            LossScale::Dynamic { init: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 7 }
        );
        for (bad, says) in [
            ("dynamic:growth=1", "growth must be above 1"),
            ("dynamic:growth=0.5", "growth must be above 1"),
            ("dynamic:backoff=1", "backoff must be between 0 and 1"),
            ("dynamic:backoff=0", "backoff must be positive"),
            ("dynamic:interval=0", "interval must be a whole number of steps"),
            ("dynamic:interval=2.5", "interval must be a whole number of steps"),
            ("dynamic:init=inf", "init must be positive and fit f32"),
            ("dynamic:speed=2", "unknown key `speed`"),
            ("dynamic:init", "expected KEY=VALUE"),
        ] {
            let e = bad.parse::<LossScale>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        for m in [LossScale::None, LossScale::Static(512.0), LossScale::DYNAMIC] {
            assert_eq!(m.to_string().parse::<LossScale>(), Ok(m));
        }
    }
}
