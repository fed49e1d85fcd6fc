//! Tensor values of an ONNX model: initializers and constant attributes.

use std::borrow::Cow;

use bytes::Bytes;
use half::{bf16, f16};

use super::proto::{data_type as dt, TensorProto};

/// The elements of a constant: floats widened to f32, integers and bools to i64.
/// `Fill` is one value repeated (ConstantOfShape), kept unexpanded because a
/// light model's weights are gigabytes of it. `Raw` is f32 `raw_data` left
/// as the model file's bytes (little-endian), so that weights are neither
/// copied nor decoded on import.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    Raw(Bytes),
    I64(Vec<i64>),
    Fill(f64),
}

/// A tensor whose value is known at import time.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub dims: Vec<u64>,
    pub data: ConstData,
    /// True for ONNX float types (the data may still be `Fill`).
    pub float: bool,
}

impl ConstData {
    /// The data with `Raw` decoded to `F32`, for the few folds that compute on values.
    pub fn unpacked(&self) -> Cow<'_, ConstData> {
        match self {
            ConstData::Raw(b) => Cow::Owned(ConstData::F32(le(b, f32::from_le_bytes))),
            other => Cow::Borrowed(other),
        }
    }
}

impl ConstData {
    /// The elements as little-endian bytes (f32 or i64); a fill has none.
    pub fn le_bytes(&self) -> Bytes {
        match self {
            ConstData::Raw(b) => b.clone(),
            ConstData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ConstData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ConstData::Fill(_) => Bytes::new(),
        }
    }
}

impl Const {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The integer elements, if the constant is an integer tensor.
    pub fn ints(&self) -> Option<Vec<i64>> {
        match &self.data {
            ConstData::I64(v) => Some(v.clone()),
            ConstData::Fill(x) if !self.float => Some(vec![*x as i64; self.numel() as usize]),
            _ => None,
        }
    }

    /// A one-element constant's value, as f64.
    pub fn scalar(&self) -> Option<f64> {
        if self.numel() != 1 {
            return None;
        }
        Some(match &self.data {
            ConstData::F32(v) => *v.first()? as f64,
            ConstData::Raw(b) => f32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]) as f64,
            ConstData::I64(v) => *v.first()? as f64,
            ConstData::Fill(x) => *x,
        })
    }

    pub fn from_ints(dims: Vec<u64>, v: Vec<i64>) -> Const {
        Const { dims, data: ConstData::I64(v), float: false }
    }
}

/// Little-endian elements of `N` bytes each (a trailing partial one is ignored).
pub(crate) fn le<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    b.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
}

/// Decodes a `TensorProto`, or says why not.
pub fn decode(t: &TensorProto) -> Result<Const, String> {
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err("its data is stored in an external file, which mpc does not read: save the model \
                    with the data inline (onnx.save_model(m, path, save_as_external_data=False))"
            .into());
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        dims.push(u64::try_from(d).map_err(|_| format!("it has a negative dimension {d}"))?);
    }
    let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or("its size overflows")?;
    let ty = t.data_type.unwrap_or(0);
    let raw = t.raw_data.as_deref();
    // raw_data must hold exactly the elements (a partial one would be dropped).
    let width: u64 = match ty {
        dt::DOUBLE | dt::INT64 => 8,
        dt::FLOAT | dt::INT32 => 4,
        dt::FLOAT16 | dt::BFLOAT16 => 2,
        _ => 1,
    };
    if let Some(b) = raw {
        if n.checked_mul(width) != Some(b.len() as u64) {
            return Err(format!(
                "its raw_data has {} bytes, but {n} elements of {width} bytes need {}",
                b.len(),
                n.saturating_mul(width)
            ));
        }
    }
    let (data, float) = match ty {
        dt::FLOAT => match &t.raw_data {
            Some(b) => (ConstData::Raw(b.clone()), true),
            None => (ConstData::F32(t.float_data.clone()), true),
        },
        dt::DOUBLE => {
            let v = raw.map(|b| le(b, f64::from_le_bytes)).unwrap_or_else(|| t.double_data.clone());
            (ConstData::F32(v.into_iter().map(|x| x as f32).collect()), true)
        }
        dt::FLOAT16 | dt::BFLOAT16 => {
            let bits: Vec<u16> = match raw {
                Some(b) => le(b, u16::from_le_bytes),
                None => t.int32_data.iter().map(|&x| x as u16).collect(),
            };
            let v = if ty == dt::FLOAT16 {
                bits.into_iter().map(|b| f16::from_bits(b).to_f32()).collect()
            } else {
                bits.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect()
            };
            (ConstData::F32(v), true)
        }
        dt::INT64 => {
            (ConstData::I64(raw.map(|b| le(b, i64::from_le_bytes)).unwrap_or_else(|| t.int64_data.clone())), false)
        }
        dt::INT32 => {
            let v = raw.map(|b| le(b, i32::from_le_bytes)).unwrap_or_else(|| t.int32_data.clone());
            (ConstData::I64(v.into_iter().map(i64::from).collect()), false)
        }
        dt::INT8 => {
            let v: Vec<i64> = match raw {
                Some(b) => b.iter().map(|&x| x as i8 as i64).collect(),
                None => t.int32_data.iter().map(|&x| x as i64).collect(),
            };
            (ConstData::I64(v), false)
        }
        dt::UINT8 | dt::BOOL => {
            let v: Vec<i64> = match raw {
                Some(b) => b.iter().map(|&x| x as i64).collect(),
                None => t.int32_data.iter().map(|&x| x as i64).collect(),
            };
            (ConstData::I64(v), false)
        }
        other => return Err(format!("its element type {} is not supported", dt::name(other))),
    };
    let len = match &data {
        ConstData::F32(v) => v.len(),
        ConstData::Raw(b) => b.len() / 4,
        ConstData::I64(v) => v.len(),
        ConstData::Fill(_) => n as usize,
    };
    if len as u64 != n {
        return Err(format!("it has {len} elements but its dims {:?} need {n}", t.dims));
    }
    Ok(Const { dims, data, float })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_raw_and_typed_fields() {
        let t = TensorProto {
            dims: vec![2],
            data_type: Some(dt::FLOAT),
            raw_data: Some(Bytes::from([1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat())),
            ..Default::default()
        };
        let c = decode(&t).unwrap();
        assert!(matches!(c.data, ConstData::Raw(_)), "f32 raw_data stays bytes");
        assert_eq!(*c.data.unpacked(), ConstData::F32(vec![1.5, -2.0]));
        let odd = TensorProto { raw_data: Some(Bytes::from(vec![0u8; 7])), ..t.clone() };
        assert!(decode(&odd).unwrap_err().contains("7 bytes"));
        let t =
            TensorProto { dims: vec![3], data_type: Some(dt::INT64), int64_data: vec![1, -1, 7], ..Default::default() };
        assert_eq!(decode(&t).unwrap().ints(), Some(vec![1, -1, 7]));
        let t =
            TensorProto { dims: vec![1], data_type: Some(dt::FLOAT16), int32_data: vec![0x3c00], ..Default::default() };
        assert_eq!(decode(&t).unwrap().scalar(), Some(1.0));
    }

    #[test]
    fn rejects_inconsistent_tensors() {
        let t = TensorProto { dims: vec![4], data_type: Some(dt::FLOAT), float_data: vec![1.0], ..Default::default() };
        assert!(decode(&t).unwrap_err().contains("1 elements but its dims [4] need 4"));
        // A trailing partial element is not dropped: 20 bytes are not two INT64s.
        let t = TensorProto {
            dims: vec![2],
            data_type: Some(dt::INT64),
            raw_data: Some(Bytes::from(vec![0u8; 20])),
            ..Default::default()
        };
        assert!(decode(&t).unwrap_err().contains("20 bytes, but 2 elements of 8 bytes need 16"));
        let t = TensorProto { dims: vec![-1], data_type: Some(dt::FLOAT), ..Default::default() };
        assert!(decode(&t).unwrap_err().contains("negative"));
        let t = TensorProto { dims: vec![1], data_type: Some(8), ..Default::default() };
        assert!(decode(&t).unwrap_err().contains("STRING"));
        let t = TensorProto { dims: vec![1], data_location: Some(1), ..Default::default() };
        assert!(decode(&t).unwrap_err().contains("external"));
    }
}
