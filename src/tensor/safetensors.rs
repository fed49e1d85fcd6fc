//! safetensors files, read and written in one place: checkpoints (with
//! their metadata), the weights file of a graph (`init: file`) and the
//! external data of ONNX models. Writes are atomic; the same tensors give
//! the same bytes.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::{Data, Tensor, Tensors};
use crate::ir::types::DType;

/// A file that cannot be read or written, with the path and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

/// The safetensors dtype of an mpc dtype.
pub fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::Bool => Dtype::BOOL,
    }
}

/// The mpc dtype of a safetensors dtype, where mpc has one.
pub fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::Bf16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Elements from little-endian bytes of a safetensors dtype.
pub fn data(dtype: Dtype, b: &[u8]) -> Option<Data> {
    Some(Data::from_le_bytes(dtype_of(dtype)?, b))
}

/// Tensors as safetensors bytes, with `meta` in the header.
pub fn to_bytes(tensors: &Tensors, meta: Option<HashMap<String, String>>) -> Result<Vec<u8>, FileError> {
    let raw: Vec<(&str, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let shape = t.shape().0.iter().map(|&d| d as usize).collect();
            (name.as_str(), shape, st_dtype(t.dtype()), t.data().to_le_bytes())
        })
        .collect();
    let mut views = Vec::with_capacity(raw.len());
    for (name, shape, dtype, b) in &raw {
        let view = TensorView::new(*dtype, shape.clone(), b).map_err(|e| FileError(format!("`{name}`: {e}")))?;
        views.push((*name, view));
    }
    safetensors::serialize(views, meta).map_err(|e| FileError(e.to_string()))
}

/// Writes bytes made by [`to_bytes`] atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    crate::io::write_atomic(path, bytes).map_err(|e| FileError(format!("cannot write {}: {e}", path.display())))
}

/// Writes tensors as a safetensors file, atomically, with no metadata.
pub fn write(path: &Path, tensors: &Tensors) -> Result<(), FileError> {
    write_bytes(path, &to_bytes(tensors, None)?)
}

/// Writes tensors given as raw little-endian bytes (name, dtype, dims,
/// bytes), atomically, without copying them into [`Tensor`]s first.
pub fn write_raw<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, DType, &'a [u64], &'a [u8])>,
) -> Result<(), FileError> {
    let fail = |e: &dyn std::fmt::Display| FileError(format!("cannot write {}: {e}", path.display()));
    let mut views = Vec::new();
    for (name, dtype, dims, bytes) in tensors {
        let shape = dims.iter().map(|&d| d as usize).collect();
        let view = TensorView::new(st_dtype(dtype), shape, bytes).map_err(|e| fail(&format!("`{name}`: {e}")))?;
        views.push((name, view));
    }
    crate::io::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, None, tmp.path()).map_err(std::io::Error::other)
    })
    .map_err(|e| fail(&e))
}

/// Every tensor of a safetensors file, by name, and its header metadata.
pub fn read(path: &Path) -> Result<(Tensors, HashMap<String, String>), FileError> {
    let buf = std::fs::read(path).map_err(|e| FileError(format!("cannot read {}: {e}", path.display())))?;
    from_bytes(path, &buf)
}

/// [`read`] of bytes already in memory (`path` names them in errors).
pub fn from_bytes(path: &Path, buf: &[u8]) -> Result<(Tensors, HashMap<String, String>), FileError> {
    let at = |m: String| FileError(format!("{}: {m}", path.display()));
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(buf).map_err(|e| at(format!("not a safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(buf).map_err(|e| at(format!("not a safetensors file ({e})")))?;
    let mut tensors = Tensors::new();
    for (name, view) in st.tensors() {
        let d = data(view.dtype(), view.data())
            .ok_or_else(|| at(format!("`{name}`: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        let t = Tensor::new(shape, d).map_err(|e| at(format!("`{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips_bit_for_bit_with_metadata() {
        let mut t = Tensors::new();
        t.insert("a".into(), Tensor::new(vec![2], Data::F32(vec![1.5, -0.0])).unwrap());
        t.insert("b".into(), Tensor::new(vec![1, 2], Data::Bf16(vec![half::bf16::MIN, half::bf16::NAN])).unwrap());
        t.insert("c".into(), Tensor::new(vec![3], Data::Bool(vec![true, false, true])).unwrap());
        t.insert("d".into(), Tensor::new(vec![0], Data::I64(vec![])).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write_bytes(&path, &to_bytes(&t, Some(meta.clone())).unwrap()).unwrap();
        let (back, m) = read(&path).unwrap();
        assert_eq!(m, meta);
        assert_eq!(back.len(), t.len());
        for (name, x) in &t {
            assert_eq!(back[name].shape(), x.shape());
            assert_eq!(back[name].data().to_le_bytes(), x.data().to_le_bytes(), "{name}");
        }
        // The same tensors give the same bytes.
        assert_eq!(to_bytes(&t, None).unwrap(), to_bytes(&back, None).unwrap());
    }

    #[test]
    fn bad_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"not safetensors").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors") && e.contains("not a safetensors file"), "{e}");
        let e = read(&dir.path().join("missing.safetensors")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read") && e.contains("missing.safetensors"), "{e}");
    }
}
