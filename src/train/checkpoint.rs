//! Training checkpoints: every param and state tensor (master weights,
//! optimizer moments, loss scaler, step counter) by node name, in one
//! safetensors file, with the number of completed steps and the seed in its
//! metadata (key `mpc`: `{"format":"mpc-checkpoint/1","step":K,"seed":S}`,
//! and `"loss_scale"`, the loss scaler's settings, when the run had one).
//! Written atomically; the same state gives the same bytes.

use std::collections::HashMap;
use std::path::Path;

use crate::exec::State;
use crate::tensor::safetensors;

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
    let meta = HashMap::from([(META_KEY.to_string(), info.to_string())]);
    safetensors::to_bytes(&ck.state, Some(meta)).map_err(|e| CheckpointError(e.0))
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, ck: &Checkpoint) -> Result<(), CheckpointError> {
    safetensors::write_bytes(path, &to_bytes(ck)?).map_err(|e| CheckpointError(e.0))
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let at = |m: String| CheckpointError(format!("{}: {m}", path.display()));
    let (state, meta) = safetensors::read(path).map_err(|e| CheckpointError(e.0))?;
    let info: Option<serde_json::Value> = meta.get(META_KEY).and_then(|v| serde_json::from_str(v).ok());
    let num = |key: &str| -> Result<u64, CheckpointError> {
        info.as_ref()
            .filter(|i| i["format"] == FORMAT)
            .and_then(|i| i[key].as_u64())
            .ok_or_else(|| at(format!("not an {FORMAT} file (metadata `{META_KEY}` lacks `{key}`)")))
    };
    let (step, seed) = (num("step")?, num("seed")?);
    let loss_scale = info.as_ref().and_then(|i| i["loss_scale"].as_str()).map(str::to_string);
    let lr_schedule = info.as_ref().and_then(|i| i["lr_schedule"].as_str()).map(str::to_string);
    Ok(Checkpoint { step, seed, state, loss_scale, lr_schedule })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Data, Tensor};

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
