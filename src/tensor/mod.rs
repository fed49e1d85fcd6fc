//! Host tensors: a shape and a typed buffer, the ground floor that the
//! executors, checkpoints, weights files and ONNX initializers share, with
//! the single roundings into the 16-bit floats ([`round`]) and the one
//! reader and writer of safetensors files ([`safetensors`]).

use half::{bf16, f16};

use crate::ir::types::{DType, Shape, TensorType};

pub mod round;
pub mod safetensors;

/// Tensors by name: params and state, a batch, a weights file.
pub type Tensors = std::collections::BTreeMap<String, Tensor>;

/// A tensor built from inconsistent parts, or too large for this machine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tensor: {0}")]
pub struct TensorError(pub String);

/// The elements of a tensor, row-major, stored in their own type.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

macro_rules! each {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => $body,
            Data::F16($v) => $body,
            Data::Bf16($v) => $body,
            Data::I32($v) => $body,
            Data::I64($v) => $body,
            Data::Bool($v) => $body,
        }
    };
}

macro_rules! each_map {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => Data::F32($body),
            Data::F16($v) => Data::F16($body),
            Data::Bf16($v) => Data::Bf16($body),
            Data::I32($v) => Data::I32($body),
            Data::I64($v) => Data::I64($body),
            Data::Bool($v) => Data::Bool($body),
        }
    };
}

impl Data {
    /// The elements as little-endian bytes (bool: one byte, 0 or 1): the
    /// layout of safetensors files and of device memory.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bf16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// Elements of `dtype` from little-endian bytes (a trailing partial
    /// element is dropped: callers check the length).
    pub fn from_le_bytes(dtype: DType, b: &[u8]) -> Data {
        fn le<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
        }
        match dtype {
            DType::F32 => Data::F32(le(b, f32::from_le_bytes)),
            DType::F16 => Data::F16(le(b, f16::from_le_bytes)),
            DType::Bf16 => Data::Bf16(le(b, bf16::from_le_bytes)),
            DType::I32 => Data::I32(le(b, i32::from_le_bytes)),
            DType::I64 => Data::I64(le(b, i64::from_le_bytes)),
            DType::Bool => Data::Bool(b.iter().map(|&x| x != 0).collect()),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::Bf16(_) => DType::Bf16,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::Bool(_) => DType::Bool,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `self[idx[i]]` for every `i`, bit for bit (layout ops use it).
    /// Every index must be in range.
    pub fn gather(&self, idx: &[usize]) -> Data {
        each_map!(self, v => idx.iter().map(|&i| v[i]).collect())
    }

    /// Joins `parts` block by block: for each of `outer` rows, `block[i]`
    /// elements of part `i` in turn (a concatenation along one axis), bit
    /// for bit. `None` when the parts differ in dtype or there are none.
    pub fn interleave(parts: &[&Data], outer: usize, block: &[usize]) -> Option<Data> {
        macro_rules! join {
            ($variant:ident) => {{
                let vs = parts
                    .iter()
                    .map(|p| match p {
                        Data::$variant(v) => Some(v),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                let mut out = Vec::with_capacity(outer * block.iter().sum::<usize>());
                for o in 0..outer {
                    for (v, &b) in vs.iter().zip(block) {
                        out.extend_from_slice(&v[o * b..(o + 1) * b]);
                    }
                }
                Data::$variant(out)
            }};
        }
        Some(match parts.first()? {
            Data::F32(_) => join!(F32),
            Data::F16(_) => join!(F16),
            Data::Bf16(_) => join!(Bf16),
            Data::I32(_) => join!(I32),
            Data::I64(_) => join!(I64),
            Data::Bool(_) => join!(Bool),
        })
    }

    /// Values rounded (nearest even) from f32: ints truncate toward zero
    /// and saturate (NaN gives 0), bool is `x != 0`.
    pub fn from_f32(dtype: DType, values: &[f32]) -> Data {
        match dtype {
            DType::F32 => Data::F32(values.to_vec()),
            DType::F16 => Data::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::Bf16 => Data::Bf16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::I32 => Data::I32(values.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(values.iter().map(|&x| x as i64).collect()),
            DType::Bool => Data::Bool(values.iter().map(|&x| x != 0.0).collect()),
        }
    }

    /// `n` copies of `value`, rounded once from f64 to `dtype` (as [`Data::from_f32`]).
    pub fn full(dtype: DType, n: usize, value: f64) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![value as f32; n]),
            DType::F16 => Data::F16(vec![round::f16_from_f64(value); n]),
            DType::Bf16 => Data::Bf16(vec![round::bf16_from_f64(value); n]),
            DType::I32 => Data::I32(vec![value as i32; n]),
            DType::I64 => Data::I64(vec![value as i64; n]),
            DType::Bool => Data::Bool(vec![value != 0.0; n]),
        }
    }

    /// Every element as f32 (exact for the float types, i32 up to 2^24 and bool).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Data::F32(v) => v.clone(),
            Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// Every element as i64 for the integer and bool types; `None` for floats.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match self {
            Data::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            Data::I64(v) => Some(v.clone()),
            Data::Bool(v) => Some(v.iter().map(|&x| x as i64).collect()),
            _ => None,
        }
    }

    /// Integers (exact) into `dtype`; floats round once to nearest even.
    pub fn from_i64(dtype: DType, values: &[i64]) -> Data {
        match dtype {
            DType::I32 => Data::I32(values.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(values.to_vec()),
            DType::Bool => Data::Bool(values.iter().map(|&x| x != 0).collect()),
            DType::F32 => Data::F32(values.iter().map(|&x| x as f32).collect()),
            DType::F16 => Data::F16(values.iter().map(|&x| round::f16_from_i64(x)).collect()),
            DType::Bf16 => Data::Bf16(values.iter().map(|&x| round::bf16_from_i64(x)).collect()),
        }
    }

    /// Converts to `to`. Floats round to nearest even, once (every float
    /// source widens exactly to f64 first); float to int truncates toward
    /// zero and saturates, NaN giving 0; anything to bool is `x != 0`.
    pub fn cast(&self, to: DType) -> Data {
        if self.dtype() == to {
            return self.clone();
        }
        if let Some(ints) = self.to_i64_vec() {
            return Data::from_i64(to, &ints);
        }
        if let (Data::F32(v), _) = (self, to) {
            return Data::from_f32(to, v);
        }
        let wide: Vec<f64> = match self {
            Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::Bf16(v) => v.iter().map(|x| x.to_f64()).collect(),
            _ => self.to_f32_vec().into_iter().map(f64::from).collect(),
        };
        match to {
            DType::F32 => Data::F32(wide.iter().map(|&x| x as f32).collect()),
            DType::F16 => Data::F16(wide.iter().map(|&x| round::f16_from_f64(x)).collect()),
            DType::Bf16 => Data::Bf16(wide.iter().map(|&x| round::bf16_from_f64(x)).collect()),
            DType::I32 => Data::I32(wide.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(wide.iter().map(|&x| x as i64).collect()),
            DType::Bool => Data::Bool(wide.iter().map(|&x| x != 0.0).collect()),
        }
    }

    /// Equality of the stored bits (NaN payloads and signed zeros count).
    pub fn bit_eq(&self, other: &Data) -> bool {
        match (self, other) {
            (Data::F32(a), Data::F32(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Data::F16(a), Data::F16(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Data::Bf16(a), Data::Bf16(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Data::I32(a), Data::I32(b)) => a == b,
            (Data::I64(a), Data::I64(b)) => a == b,
            (Data::Bool(a), Data::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// A tensor on the host: a static shape and its elements, row-major.
/// The element count always equals the shape's.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Shape,
    data: Data,
}

/// The element count of a shape as usize, or an error.
pub(crate) fn numel(shape: &Shape) -> Result<usize, TensorError> {
    shape
        .numel()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| TensorError(format!("shape {shape} is too large")))
}

impl Tensor {
    /// A tensor from its parts; the lengths must agree.
    pub fn new(shape: impl Into<Shape>, data: Data) -> Result<Tensor, TensorError> {
        let shape = shape.into();
        let n = numel(&shape)?;
        if n != data.len() {
            return Err(TensorError(format!(
                "shape {shape} has {n} elements but {} {} values were given",
                data.len(),
                data.dtype()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of `dtype` from f32 values, each rounded once to nearest
    /// even (see [`Data::from_f32`]).
    pub fn from_f32(dtype: DType, shape: impl Into<Shape>, values: &[f32]) -> Result<Tensor, TensorError> {
        Tensor::new(shape, Data::from_f32(dtype, values))
    }

    /// Every element `value`, rounded once to the type.
    pub fn full(ty: &TensorType, value: f64) -> Result<Tensor, TensorError> {
        let n = numel(&ty.shape)?;
        Ok(Tensor { shape: ty.shape.clone(), data: Data::full(ty.dtype, n, value) })
    }

    /// Zeros of a type.
    pub fn zeros(ty: &TensorType) -> Result<Tensor, TensorError> {
        Tensor::full(ty, 0.0)
    }

    /// An f32 scalar.
    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor { shape: Shape::scalar(), data: Data::F32(vec![v]) }
    }

    /// An i32 scalar.
    pub fn scalar_i32(v: i32) -> Tensor {
        Tensor { shape: Shape::scalar(), data: Data::I32(vec![v]) }
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The tensor type (dtype and shape).
    pub fn ty(&self) -> TensorType {
        TensorType { dtype: self.dtype(), shape: self.shape.clone() }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements (never, for a validated shape).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The elements, by value.
    pub fn into_data(self) -> Data {
        self.data
    }

    /// The elements as f32 (see [`Data::to_f32_vec`]).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.to_f32_vec()
    }

    /// The f32 elements, when the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The only element as f32, when there is exactly one.
    pub fn item_f32(&self) -> Option<f32> {
        (self.len() == 1).then(|| self.to_f32_vec()[0])
    }

    /// The same elements under another shape with the same element count.
    pub fn reshaped(self, shape: impl Into<Shape>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, self.data)
    }

    /// Equal types and equal bits (see [`Data::bit_eq`]).
    pub fn bit_eq(&self, other: &Tensor) -> bool {
        self.shape == other.shape && self.data.bit_eq(&other.data)
    }
}

impl From<Vec<u64>> for Shape {
    fn from(v: Vec<u64>) -> Shape {
        Shape(v)
    }
}

impl From<&[u64]> for Shape {
    fn from(v: &[u64]) -> Shape {
        Shape(v.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        assert!(Tensor::new(vec![2, 3], Data::F32(vec![0.0; 5])).is_err());
        assert!(Tensor::new(vec![2, 3], Data::F32(vec![0.0; 6])).is_ok());
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        let one = 1.0f32;
        let t =
            Tensor::from_f32(DType::F16, vec![3], &[one + 2f32.powi(-11), one + 3.0 * 2f32.powi(-11), 1e-8]).unwrap();
        assert_eq!(t.to_f32_vec(), vec![1.0, 1.0 + 2f32.powi(-9), 0.0]);
    }

    #[test]
    fn casts_are_single_roundings() {
        let d = Data::F32(vec![1.0 + 2f32.powi(-11), 70000.0, -2.7]);
        assert_eq!(d.cast(DType::F16).to_f32_vec(), vec![1.0, f32::INFINITY, -1382.0 / 512.0]);
        assert_eq!(d.cast(DType::I32), Data::I32(vec![1, 70000, -2]));
        let h = d.cast(DType::Bf16).cast(DType::F16);
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(Data::I32(vec![3]).cast(DType::Bool), Data::Bool(vec![true]));
    }
}
