//! Element types and tensor types.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The element type of a tensor.
///
/// FP8 types are not supported yet; the enum is `non_exhaustive` so that
/// adding them does not break code matching on it outside this crate.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DType {
    F32,
    F16,
    Bf16,
    I32,
    I64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::F32, DType::F16, DType::Bf16, DType::I32, DType::I64, DType::Bool];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::Bf16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    /// A 16-bit float type that mixed precision computes in.
    pub fn is_low(self) -> bool {
        matches!(self, DType::F16 | DType::Bf16)
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::I64 => 8,
            DType::Bool => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The largest element count a tensor may have (2^48). Shapes are only
/// checked, never allocated, while compiling; the cap keeps every size
/// computation far from `u64` overflow.
pub const MAX_ELEMENTS: u64 = 1 << 48;

/// A static shape. A scalar has no dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<u64>);

impl Shape {
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[u64] {
        &self.0
    }

    /// Number of elements; `None` when it would exceed [`MAX_ELEMENTS`].
    pub fn numel(&self) -> Option<u64> {
        let mut n: u64 = 1;
        for &d in &self.0 {
            n = n.checked_mul(d)?;
            if n > MAX_ELEMENTS {
                return None;
            }
        }
        Some(n)
    }

    /// Checks that every dimension is at least 1 and the element count is in range.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(i) = self.0.iter().position(|&d| d == 0) {
            return Err(format!("dimension {i} is 0; every dimension must be at least 1"));
        }
        if self.numel().is_none() {
            return Err(format!("shape {self} has more than 2^48 elements"));
        }
        Ok(())
    }

    /// Normalises a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Result<usize, String> {
        resolve_axis(axis, self.rank())
    }
}

/// `axis` of a shape of rank `rank`, counted from the end when negative.
pub fn resolve_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(format!("axis {axis} is out of range for rank {r}"));
    }
    Ok(a as usize)
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of a value: element type and static shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl Into<Vec<u64>>) -> TensorType {
        TensorType { dtype, shape: Shape(shape.into()) }
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType { dtype, shape: Shape::scalar() }
    }

    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType { dtype, shape: self.shape.clone() }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(TensorType::new(DType::F16, vec![64, 256]).to_string(), "f16[64,256]");
        assert_eq!(TensorType::scalar(DType::F32).to_string(), "f32[]");
    }

    #[test]
    fn numel_overflow_is_caught() {
        assert_eq!(Shape(vec![1 << 30, 1 << 30]).numel(), None);
        assert_eq!(Shape(vec![u64::MAX, 2]).numel(), None);
        assert!(Shape(vec![2, 0]).validate().is_err());
        assert_eq!(Shape(vec![3, 4]).numel(), Some(12));
    }

    #[test]
    fn negative_axis() {
        let s = Shape(vec![2, 3, 4]);
        assert_eq!(s.axis(-1), Ok(2));
        assert!(s.axis(3).is_err());
        assert!(s.axis(-4).is_err());
    }
}
