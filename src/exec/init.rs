//! Materialising params and state from their `Init`, or from the graph's
//! safetensors weights file.

use std::path::{Path, PathBuf};

use crate::ir::graph::Graph;
use crate::ir::op::{Init, Op};
use crate::ir::types::{DType, TensorType};

use super::rng::{combine, fnv1a, SplitMix64};
use super::run::State;
use super::ExecError;
use crate::tensor::{numel, Data, Tensor};

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
        DType::F16 => Data::F16(v.iter().map(|&x| crate::tensor::round::f16_from_f64(x)).collect()),
        DType::Bf16 => Data::Bf16(v.iter().map(|&x| crate::tensor::round::bf16_from_f64(x)).collect()),
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
        Init::Zeros => return Ok(Tensor::zeros(ty)?),
        Init::Ones => return Ok(Tensor::full(ty, 1.0)?),
        Init::Constant { value } => return Ok(Tensor::full(ty, value)?),
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
    Ok(Tensor::new(ty.shape.clone(), from_f64(ty.dtype, &vals))?)
}

/// Every param and state tensor of `g`, by node name, from its `Init`.
/// `init: file` values need [`init_state_with`].
pub fn init_state(g: &Graph, seed: u64) -> Result<State, ExecError> {
    init_state_with(g, seed, None)
}

/// The file a graph's `weights` field names: relative to `base_dir` (the
/// graph file's folder; the current one when None), a regular file (not a
/// FIFO, which would hang, or a device such as /dev/zero, which never ends)
/// and, unless `allow_outside`, inside that folder once `..` and symlinks
/// are resolved (a graph file from elsewhere must not read any file).
pub fn weights_path(base_dir: Option<&Path>, w: &str, allow_outside: bool) -> Result<PathBuf, String> {
    let base = base_dir.filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let path = base.join(w);
    let real = path.canonicalize().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if !allow_outside {
        let root = base.canonicalize().map_err(|e| format!("cannot read {}: {e}", base.display()))?;
        if !real.starts_with(&root) {
            return Err(format!(
                "{} is {}, outside the graph's folder {} (--allow-outside-weights reads it anyway)",
                path.display(),
                real.display(),
                root.display()
            ));
        }
    }
    Ok(real)
}

/// As [`init_state`], reading `init: file` values from the graph's `weights`
/// safetensors file, relative to `base_dir` (the graph file's folder), which
/// it must not leave (see [`weights_path`]).
pub fn init_state_with(g: &Graph, seed: u64, base_dir: Option<&Path>) -> Result<State, ExecError> {
    init_state_from(g, seed, base_dir, false)
}

/// [`init_state_with`], reading a `weights` file outside the graph's
/// folder too when `allow_outside`.
pub fn init_state_from(g: &Graph, seed: u64, base_dir: Option<&Path>, allow_outside: bool) -> Result<State, ExecError> {
    let uses_file = g
        .node_ids()
        .any(|n| matches!(g.node(n).op(), Op::Param { init: Init::File, .. } | Op::State { init: Init::File, .. }));
    let mut file = match (&g.weights, uses_file) {
        (Some(w), true) => {
            let value = |message: String| ExecError::Value { name: w.clone(), message };
            let path = weights_path(base_dir, w, allow_outside).map_err(value)?;
            crate::tensor::safetensors::read(&path).map_err(|e| value(e.to_string()))?.0
        }
        _ => State::new(),
    };
    let mut out = State::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if let Op::Param { ty, init } | Op::State { ty, init } = node.op() {
            let t = match (init, &g.weights) {
                (Init::File, Some(w)) => {
                    let t = file.remove(node.name()).ok_or_else(|| ExecError::Value {
                        name: node.name().to_string(),
                        message: format!("init is `file` but `{w}` has no tensor of that name"),
                    })?;
                    if t.shape() != &ty.shape || t.dtype() != ty.dtype {
                        return Err(ExecError::Value {
                            name: node.name().to_string(),
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
                        name: node.name().to_string(),
                        message: "init is `file` but the graph names no `weights` file".into(),
                    })
                }
                _ => init_tensor(node.name(), ty, init, seed)?,
            };
            out.insert(node.name().to_string(), t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The weights file stays inside the graph's folder (after `..` and
    /// symlinks), is a regular file, and the flag lets it leave.
    #[test]
    fn weights_paths_stay_in_the_graph_folder() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("w.safetensors"), b"x").unwrap();
        std::fs::write(top.path().join("outside.safetensors"), b"x").unwrap();
        assert!(weights_path(Some(&dir), "w.safetensors", false).is_ok());
        let e = weights_path(Some(&dir), "../outside.safetensors", false).unwrap_err();
        assert!(e.contains("outside the graph's folder") && e.contains("--allow-outside-weights"), "{e}");
        assert!(weights_path(Some(&dir), "../outside.safetensors", true).is_ok());
        let abs = top.path().join("outside.safetensors");
        assert!(weights_path(Some(&dir), abs.to_str().unwrap(), false).is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(top.path().join("outside.safetensors"), dir.join("link.safetensors")).unwrap();
            assert!(weights_path(Some(&dir), "link.safetensors", false).unwrap_err().contains("outside"));
            let e = weights_path(Some(&dir), "/dev/zero", true).unwrap_err();
            assert!(e.contains("is not a regular file"), "{e}");
            // A FIFO would block a reader forever.
            if std::process::Command::new("mkfifo").arg(dir.join("fifo")).status().is_ok_and(|s| s.success()) {
                assert!(weights_path(Some(&dir), "fifo", false).unwrap_err().contains("not a regular file"));
            }
        }
        std::fs::create_dir(dir.join("sub")).unwrap();
        assert!(weights_path(Some(&dir), "sub", false).unwrap_err().contains("not a regular file"));
        assert!(weights_path(Some(&dir), "missing.safetensors", false).unwrap_err().starts_with("cannot read"));
    }

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
        crate::tensor::safetensors::write(&dir.path().join("m.safetensors"), &w).unwrap();
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
