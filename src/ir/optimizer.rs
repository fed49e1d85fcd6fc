//! The optimizer a training graph names and its hyper-parameters: part of
//! the IR (the passes and executors read it), written in files as is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Optimizer kinds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD, with optional momentum (PyTorch's formulation).
    Sgd,
    /// Adam; `weight_decay` is added to the gradient (L2).
    Adam,
    /// AdamW; `weight_decay` is decoupled (applied to the weights).
    Adamw,
}

/// The optimizer and its hyper-parameters. Unset fields take the defaults
/// noted; a field that does not apply to `kind` is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// sgd: momentum in [0, 1) (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// adam, adamw: first-moment decay (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    /// adam, adamw: second-moment decay (default 0.999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// adam, adamw: denominator epsilon (default 1e-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Weight decay (default 0; adamw 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Clip the global L2 norm of the (unscaled) gradients to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Accumulate gradients over this many micro-batches per step (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accumulate: Option<u32>,
    /// Params that get no weight decay, by name pattern (`*` matches any
    /// run of characters, `?` one character), e.g. `["b*", "*.bias", "ln*"]`
    /// for biases and norm gains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_decay: Option<Vec<String>>,
    /// The learning rate over the steps (default constant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// A learning-rate schedule: the factor on `lr` at optimizer step k (k =
/// 0, 1, … counts the steps taken, not the skipped ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// `lr` at every step.
    Constant,
    /// Linear warmup from 0 over `warmup` steps, then cosine decay to
    /// `min_lr` at step `total` (Hugging Face's
    /// `get_cosine_with_min_lr_schedule_with_warmup`), `min_lr` after it.
    Cosine {
        /// Steps of linear warmup (default 0).
        #[serde(default)]
        warmup: u32,
        /// The step at which the decay reaches `min_lr` (≥ 1, ≥ warmup).
        total: u32,
        /// The learning rate at the end of the decay (default 0).
        #[serde(default)]
        min_lr: f64,
    },
}

impl std::fmt::Display for Schedule {
    /// The form [`FromStr`](std::str::FromStr) reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Constant => f.write_str("constant"),
            Schedule::Cosine { warmup, total, min_lr } => {
                write!(f, "cosine:warmup={warmup},total={total},min={min_lr}")
            }
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    /// `constant`, or `cosine:total=T` with any of `warmup=W,min=M`
    /// (the CLI's form).
    fn from_str(s: &str) -> Result<Schedule, String> {
        if s == "constant" {
            return Ok(Schedule::Constant);
        }
        let Some(rest) = s.strip_prefix("cosine:") else {
            return Err(format!("expected constant or cosine:warmup=W,total=T,min=M, found `{s}`"));
        };
        let (mut warmup, mut total, mut min_lr) = (0, None, 0.0);
        for part in rest.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("`{part}`: expected KEY=VALUE"))?;
            let steps =
                |what: &str| v.parse::<u32>().map_err(|_| format!("{what} must be a whole number of steps, found {v}"));
            match k.trim() {
                "warmup" => warmup = steps("warmup")?,
                "total" => total = Some(steps("total")?),
                "min" => {
                    min_lr = v
                        .parse()
                        .ok()
                        .filter(|m: &f64| m.is_finite() && *m >= 0.0)
                        .ok_or_else(|| format!("min must be a learning rate ≥ 0, found {v}"))?
                }
                other => return Err(format!("unknown key `{other}` (warmup, total, min)")),
            }
        }
        let total = total.ok_or("cosine needs total=T, the step at which the decay ends")?;
        Ok(Schedule::Cosine { warmup, total, min_lr })
    }
}

/// Whether `name` matches `pattern`: `*` any run of characters (none
/// too), `?` exactly one, anything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy with one backtrack point (the last `*`): linear in practice.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

impl Optimizer {
    /// An optimizer of `kind` with every other hyper-parameter at its default.
    pub fn new(kind: OptimizerKind, lr: f64) -> Optimizer {
        Optimizer {
            kind,
            lr,
            momentum: None,
            beta1: None,
            beta2: None,
            eps: None,
            weight_decay: None,
            clip_grad_norm: None,
            accumulate: None,
            no_decay: None,
            schedule: None,
        }
    }

    /// The weight decay of the param `name`: none when a `no_decay` pattern matches it.
    pub fn weight_decay_of(&self, name: &str) -> f64 {
        match self.no_decay.iter().flatten().any(|p| glob_match(p, name)) {
            true => 0.0,
            false => self.weight_decay(),
        }
    }

    pub fn momentum(&self) -> f64 {
        self.momentum.unwrap_or(0.0)
    }
    pub fn beta1(&self) -> f64 {
        self.beta1.unwrap_or(0.9)
    }
    pub fn beta2(&self) -> f64 {
        self.beta2.unwrap_or(0.999)
    }
    pub fn eps(&self) -> f64 {
        self.eps.unwrap_or(1e-8)
    }
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay.unwrap_or(if self.kind == OptimizerKind::Adamw { 0.01 } else { 0.0 })
    }
    pub fn accumulate(&self) -> u32 {
        self.accumulate.unwrap_or(1)
    }

    /// Problems with the hyper-parameters: (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut check = |field: &'static str, v: Option<f64>, ok: fn(f64) -> bool, want: &str| {
            if let Some(v) = v {
                if !ok(v) {
                    out.push((field, format!("expected {want}, found {v}")));
                }
            }
        };
        check("lr", Some(self.lr), |v| v > 0.0 && v.is_finite(), "a positive learning rate");
        check("momentum", self.momentum, |v| (0.0..1.0).contains(&v), "a momentum in [0, 1)");
        check("beta1", self.beta1, |v| (0.0..1.0).contains(&v), "beta1 in [0, 1)");
        check("beta2", self.beta2, |v| (0.0..1.0).contains(&v), "beta2 in [0, 1)");
        check("eps", self.eps, |v| v > 0.0, "a positive eps");
        check("weight_decay", self.weight_decay, |v| v >= 0.0 && v.is_finite(), "a weight decay ≥ 0");
        check("clip_grad_norm", self.clip_grad_norm, |v| v > 0.0 && v.is_finite(), "a positive norm");
        if self.no_decay.iter().flatten().any(|p| p.is_empty()) {
            out.push(("no_decay", "expected name patterns, found an empty one".into()));
        }
        if let Some(Schedule::Cosine { warmup, total, min_lr }) = self.schedule {
            if total == 0 || warmup > total {
                out.push((
                    "schedule",
                    format!("expected 1 ≤ total and warmup ≤ total, found warmup {warmup}, total {total}"),
                ));
            }
            if !(min_lr >= 0.0 && min_lr <= self.lr) {
                out.push(("schedule", format!("expected min_lr in [0, lr = {}], found {min_lr}", self.lr)));
            }
        }
        if self.accumulate == Some(0) {
            out.push(("accumulate", "expected at least 1 micro-batch, found 0".into()));
        }
        let is_sgd = self.kind == OptimizerKind::Sgd;
        for (field, set, applies) in [
            ("momentum", self.momentum.is_some(), is_sgd),
            ("beta1", self.beta1.is_some(), !is_sgd),
            ("beta2", self.beta2.is_some(), !is_sgd),
            ("eps", self.eps.is_some(), !is_sgd),
        ] {
            if set && !applies {
                out.push((field, format!("`{field}` does not apply to the {:?} optimizer", self.kind).to_lowercase()));
            }
        }
        out
    }
}

#[cfg(test)]
mod glob_tests {
    use super::*;

    #[test]
    fn schedules_parse_and_print_back() {
        let s: Schedule = "cosine:warmup=100,total=10000,min=0.00001".parse().unwrap();
        assert_eq!(s, Schedule::Cosine { warmup: 100, total: 10000, min_lr: 1e-5 });
        assert_eq!(s.to_string().parse::<Schedule>(), Ok(s));
        assert_eq!("cosine:total=5".parse::<Schedule>(), Ok(Schedule::Cosine { warmup: 0, total: 5, min_lr: 0.0 }));
        assert_eq!("constant".parse::<Schedule>(), Ok(Schedule::Constant));
        for (bad, says) in [
            ("linear", "expected constant or cosine"),
            ("cosine:warmup=5", "cosine needs total=T"),
            ("cosine:total=-1", "total must be a whole number"),
            ("cosine:total=9,min=-1", "min must be a learning rate"),
            ("cosine:total=9,cycles=2", "unknown key `cycles`"),
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut opt = Optimizer::new(OptimizerKind::Sgd, 0.1);
        opt.schedule = Some(Schedule::Cosine { warmup: 3, total: 2, min_lr: 0.2 });
        let problems: Vec<_> = opt.problems().into_iter().map(|(_, m)| m).collect();
        assert!(problems.iter().any(|m| m.contains("warmup ≤ total")), "{problems:?}");
        assert!(problems.iter().any(|m| m.contains("min_lr in [0, lr = 0.1]")), "{problems:?}");
    }

    #[test]
    fn patterns_match_names() {
        for (p, n, want) in [
            ("b*", "b1", true),
            ("b*", "w1", false),
            ("*.bias", "layer1.bias", true),
            ("*.bias", "layer1.bias2", false),
            ("l?_g*", "l0_gamma", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("w1", "w1", true),
            ("w1", "w10", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
        let opt = Optimizer {
            no_decay: Some(vec!["b*".into(), "*_gain".into()]),
            ..Optimizer::new(OptimizerKind::Adamw, 1e-3)
        };
        assert_eq!(opt.weight_decay_of("w1"), 0.01);
        assert_eq!(opt.weight_decay_of("b1"), 0.0);
        assert_eq!(opt.weight_decay_of("ln_gain"), 0.0);
        let bad = Optimizer { no_decay: Some(vec![String::new()]), ..opt };
        assert!(bad.problems().iter().any(|(f, _)| *f == "no_decay"));
    }
}
