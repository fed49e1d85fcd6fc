//! Training checkpoints: every param and state tensor (master weights,
//! optimizer moments, loss scaler, step counter) by node name, in one
//! safetensors file, with the number of completed steps and the seed in its
//! metadata (key `mpc`: `{"format":"mpc-checkpoint/1","step":K,"seed":S}`,
//! and `"loss_scale"`, the loss scaler's settings, when the run had one).
//! Written atomically; the same state gives the same bytes.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::exec::{Data, State, Tensor};

/// The safetensors metadata key that holds `{"format", "step", "seed"}` as JSON.
pub const META_KEY: &str = "mpc";
/// The checkpoint format's name and version.
pub const FORMAT: &str = "mpc-checkpoint/1";

/// A checkpoint error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointError(pub String);

/// What a checkpoint holds.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Completed steps: training resumes at this (0-based) step.
    pub step: u64,
    /// The seed of the run (init and data order).
    pub seed: u64,
    /// Params and state, by node name.
    pub state: State,
    /// The loss scaling the run trained with, as `--loss-scale` writes it
    /// (e.g. `dynamic:init=65536,growth=2,backoff=0.5,interval=2000`), so a
    /// resumed run can check it keeps the same scaler.
    pub loss_scale: Option<String>,
    /// The learning-rate schedule, as `--lr-schedule` writes it, when the
    /// run had one other than constant (its position is the state
    /// `optimizer_step`).
    pub lr_schedule: Option<String>,
}

fn bytes(data: &Data) -> (Dtype, Vec<u8>) {
    (st_dtype(data.dtype()), data.to_le_bytes())
}

/// The safetensors dtype of an mpc dtype.
pub(crate) fn st_dtype(d: crate::DType) -> Dtype {
    use crate::DType;
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::Bool => Dtype::BOOL,
    }
}

/// Elements from little-endian bytes.
pub(crate) fn data(dtype: Dtype, b: &[u8]) -> Option<Data> {
    let d = match dtype {
        Dtype::F32 => crate::DType::F32,
        Dtype::F16 => crate::DType::F16,
        Dtype::BF16 => crate::DType::Bf16,
        Dtype::I32 => crate::DType::I32,
        Dtype::I64 => crate::DType::I64,
        Dtype::BOOL => crate::DType::Bool,
        _ => return None,
    };
    Some(Data::from_le_bytes(d, b))
}

/// Serializes a checkpoint to safetensors bytes.
pub fn to_bytes(ck: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
    // One metadata key, so that the header (and the file) is the same bytes
    // every time: safetensors writes a HashMap in arbitrary order.
    let mut info = serde_json::json!({"format": FORMAT, "step": ck.step, "seed": ck.seed});
    if let Some(ls) = &ck.loss_scale {
        info["loss_scale"] = serde_json::json!(ls);
    }
    if let Some(s) = &ck.lr_schedule {
        info["lr_schedule"] = serde_json::json!(s);
    }
    serialize(&ck.state, Some(HashMap::from([(META_KEY.to_string(), info.to_string())])))
}

fn serialize(state: &State, meta: Option<HashMap<String, String>>) -> Result<Vec<u8>, CheckpointError> {
    let raw: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = state
        .iter()
        .map(|(name, t)| {
            let (dtype, b) = bytes(t.data());
            (name.clone(), t.shape().0.iter().map(|&d| d as usize).collect(), dtype, b)
        })
        .collect();
    let mut views = Vec::with_capacity(raw.len());
    for (name, shape, dtype, b) in &raw {
        let view = TensorView::new(*dtype, shape.clone(), b).map_err(|e| CheckpointError(format!("`{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, meta).map_err(|e| CheckpointError(e.to_string()))
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, ck: &Checkpoint) -> Result<(), CheckpointError> {
    let b = to_bytes(ck)?;
    crate::io::write_atomic(path, &b).map_err(|e| CheckpointError(format!("cannot write {}: {e}", path.display())))
}

/// Every tensor of a safetensors file, by name (no metadata needed): the
/// `weights` file of a graph whose params have `init: file`.
pub fn read_tensors(path: &Path) -> Result<State, CheckpointError> {
    let buf = std::fs::read(path).map_err(|e| CheckpointError(format!("cannot read {}: {e}", path.display())))?;
    tensors(path, &buf)
}

fn tensors(path: &Path, buf: &[u8]) -> Result<State, CheckpointError> {
    let at = |m: String| CheckpointError(format!("{}: {m}", path.display()));
    let st = safetensors::SafeTensors::deserialize(buf).map_err(|e| at(format!("not a safetensors file ({e})")))?;
    tensors_of(path, &st)
}

/// The tensors of a parsed safetensors file (`path` names it in errors).
fn tensors_of(path: &Path, st: &safetensors::SafeTensors<'_>) -> Result<State, CheckpointError> {
    let at = |m: String| CheckpointError(format!("{}: {m}", path.display()));
    let mut state = State::new();
    for (name, view) in st.tensors() {
        let d = data(view.dtype(), view.data())
            .ok_or_else(|| at(format!("`{name}`: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        let t = Tensor::new(shape, d).map_err(|e| at(format!("`{name}`: {e}")))?;
        state.insert(name, t);
    }
    Ok(state)
}

/// Writes tensors as a safetensors file, atomically, with no metadata.
pub fn write_tensors(path: &Path, state: &State) -> Result<(), CheckpointError> {
    let b = serialize(state, None)?;
    crate::io::write_atomic(path, &b).map_err(|e| CheckpointError(format!("cannot write {}: {e}", path.display())))
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let at = |m: String| CheckpointError(format!("{}: {m}", path.display()));
    let buf = std::fs::read(path).map_err(|e| CheckpointError(format!("cannot read {}: {e}", path.display())))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&buf).map_err(|e| at(format!("not a safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(&buf).map_err(|e| at(e.to_string()))?;
    let info: Option<serde_json::Value> =
        meta.metadata().as_ref().and_then(|m| m.get(META_KEY)).and_then(|v| serde_json::from_str(v).ok());
    let num = |key: &str| -> Result<u64, CheckpointError> {
        info.as_ref()
            .filter(|i| i["format"] == FORMAT)
            .and_then(|i| i[key].as_u64())
            .ok_or_else(|| at(format!("not an {FORMAT} file (metadata `{META_KEY}` lacks `{key}`)")))
    };
    let (step, seed) = (num("step")?, num("seed")?);
    let loss_scale = info.as_ref().and_then(|i| i["loss_scale"].as_str()).map(str::to_string);
    let lr_schedule = info.as_ref().and_then(|i| i["lr_schedule"].as_str()).map(str::to_string);
    Ok(Checkpoint { step, seed, state: tensors_of(path, &st)?, loss_scale, lr_schedule })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_bit_exact() {
        let mut state = State::new();
        state.insert("w".into(), Tensor::from_f32(crate::DType::F32, vec![2, 2], &[1.0, -0.0, f32::NAN, 3.5]).unwrap());
        state.insert("h".into(), Tensor::from_f32(crate::DType::F16, vec![3], &[1.0, 2.0, 65504.0]).unwrap());
        state.insert("b".into(), Tensor::from_f32(crate::DType::Bf16, vec![1], &[0.1]).unwrap());
        state.insert("s".into(), Tensor::scalar_i32(7));
        state.insert("l".into(), Tensor::new(vec![2], Data::I64(vec![-1, 5])).unwrap());
        state.insert("m".into(), Tensor::new(vec![2], Data::Bool(vec![true, false])).unwrap());
        let ck = Checkpoint {
            step: 12,
            seed: 3,
            state,
            loss_scale: Some("static:1024".into()),
            lr_schedule: Some("cosine:warmup=1,total=9,min=0".into()),
        };
        let b = to_bytes(&ck).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        std::fs::write(&p, b).unwrap();
        let back = load(&p).unwrap();
        assert_eq!((back.step, back.seed, back.loss_scale.as_deref()), (12, 3, Some("static:1024")));
        assert_eq!(back.lr_schedule, ck.lr_schedule);
        assert_eq!(back.state.len(), ck.state.len());
        for (k, t) in &ck.state {
            assert!(back.state[k].bit_eq(t), "{k}");
        }
    }
}
