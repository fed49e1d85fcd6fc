//! Elementwise kernels: binary arithmetic with broadcasting, unary math and
//! its gradients, dropout, select.

use crate::ir::op::Op;
use crate::ir::types::TensorType;

use super::super::backend::OpCtx;
use super::super::rng;
use super::{broadcast_map, dims, from_f32, wrap, KResult};
use crate::tensor::{Data, Tensor};

/// √(2/π), the constant of the tanh approximation of gelu.
const GELU_C: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation of gelu.
const GELU_A: f32 = 0.044715;

/// `add`, `sub`, `mul`, `div` with NumPy broadcasting. Floats compute in
/// f32 and round once; integers are exact and wrap on overflow, `div`
/// truncates toward zero and a zero divisor is an error.
pub fn binary(op: &Op, a: &Tensor, b: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let to = dims(&out.shape);
    let ia = broadcast_map(&dims(a.shape()), &to);
    let ib = broadcast_map(&dims(b.shape()), &to);
    if let (Some(x), Some(y)) = (a.data().to_i64_vec(), b.data().to_i64_vec()) {
        let mut v = Vec::with_capacity(ia.len());
        for (&i, &j) in ia.iter().zip(&ib) {
            let (p, q) = (x[i], y[j]);
            v.push(match op {
                Op::Add => p.wrapping_add(q),
                Op::Sub => p.wrapping_sub(q),
                Op::Mul => p.wrapping_mul(q),
                Op::Div if q == 0 => return Err("integer division by zero".into()),
                Op::Div => p.wrapping_div(q),
                other => return Err(format!("`{}` is not a binary op", other.name())),
            });
        }
        return wrap(Tensor::new(out.shape.clone(), Data::from_i64(out.dtype, &v)));
    }
    let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
    let f: fn(f32, f32) -> f32 = match op {
        Op::Add => |p, q| p + q,
        Op::Sub => |p, q| p - q,
        Op::Mul => |p, q| p * q,
        Op::Div => |p, q| p / q,
        other => return Err(format!("`{}` is not a binary op", other.name())),
    };
    let v: Vec<f32> = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect();
    from_f32(out, &v)
}

/// gelu, tanh approximation: `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_C * (x + GELU_A * x * x * x)).tanh())
}

/// The exact derivative of [`gelu`].
pub fn gelu_derivative(x: f32) -> f32 {
    let t = (GELU_C * (x + GELU_A * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
}

/// A unary op: `f` on every element, computed in f32 and rounded once to
/// the output type (the kernel names `f`: `f32::exp`, [`relu`], ...).
pub fn unary(x: &Tensor, out: &TensorType, f: impl Fn(f32) -> f32) -> KResult<Tensor> {
    let v: Vec<f32> = x.to_f32_vec().into_iter().map(f).collect();
    from_f32(out, &v)
}

/// relu; NaN propagates, as in PyTorch and onnxruntime (max(NaN, 0) is NaN there).
pub fn relu(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// erf in f64, rounded to f32 (see [`crate::ir::semantics::erf`]).
pub fn erf(v: f32) -> f32 {
    crate::ir::semantics::erf(v as f64) as f32
}

/// The gradient of a unary op: `g(dy, v)` on every element pair, in f32,
/// rounded once (`v` is the forward output or input, as the op says).
pub fn unary_grad(dy: &Tensor, v: &Tensor, out: &TensorType, g: impl Fn(f32, f32) -> f32) -> KResult<Tensor> {
    let (d, y) = (dy.to_f32_vec(), v.to_f32_vec());
    let r: Vec<f32> = d.iter().zip(&y).map(|(&d, &y)| g(d, y)).collect();
    from_f32(out, &r)
}

/// `relu_grad(dy, y)`.
pub fn relu_grad(d: f32, y: f32) -> f32 {
    if y > 0.0 {
        d
    } else {
        0.0
    }
}

/// `gelu_grad(dy, x)`.
pub fn gelu_grad(d: f32, x: f32) -> f32 {
    d * gelu_derivative(x)
}

/// `erf_grad(dy, x)`: `dy · 2/√π · exp(-x²)`.
pub fn erf_grad(d: f32, x: f32) -> f32 {
    d * (std::f32::consts::FRAC_2_SQRT_PI * (-(x * x)).exp())
}

/// `tanh_grad(dy, y)`.
pub fn tanh_grad(d: f32, y: f32) -> f32 {
    d * (1.0 - y * y)
}

/// `sigmoid_grad(dy, y)`.
pub fn sigmoid_grad(d: f32, y: f32) -> f32 {
    d * y * (1.0 - y)
}

/// The dropout keep mask: element `i` is kept when
/// `hash_u01(combine(node seed, combine(seed attr, step)), i) >= p`, so
/// masks depend on (graph seed, node name, `seed` attribute, step) only.
pub fn dropout_mask(p: f64, seed: u64, ctx: &OpCtx<'_>, n: usize) -> Vec<bool> {
    let s = rng::combine(ctx.seed, rng::combine(seed, ctx.step));
    let p = p as f32;
    (0..n as u64).map(|i| rng::hash_u01(s, i) >= p).collect()
}

/// `1/(1-p)` as the f32 that scales kept values.
fn keep_scale(p: f64) -> f32 {
    (1.0 / (1.0 - p)) as f32
}

/// `dropout(x) -> (y, mask)`: `y = x * 1/(1-p)` where kept, else 0.
pub fn dropout(p: f64, seed: u64, ctx: &OpCtx<'_>, x: &Tensor, out: &[TensorType]) -> KResult<Vec<Tensor>> {
    let mask = dropout_mask(p, seed, ctx, x.len());
    let s = keep_scale(p);
    let y: Vec<f32> = x.to_f32_vec().iter().zip(&mask).map(|(&v, &k)| if k { v * s } else { 0.0 }).collect();
    Ok(vec![from_f32(&out[0], &y)?, wrap(Tensor::new(out[1].shape.clone(), Data::Bool(mask)))?])
}

/// `dropout_grad(dy, mask)`: `dy * 1/(1-p)` where kept, else 0.
pub fn dropout_grad(p: f64, dy: &Tensor, mask: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let Data::Bool(m) = mask.data() else { return Err("the mask must be bool".into()) };
    let s = keep_scale(p);
    let v: Vec<f32> = dy.to_f32_vec().iter().zip(m).map(|(&d, &k)| if k { d * s } else { 0.0 }).collect();
    from_f32(out, &v)
}

/// `select(found_inf, on_inf, otherwise)`: a bit-for-bit copy of `on_inf`
/// when found_inf is nonzero (NaN counts as nonzero), else of `otherwise`.
pub fn select(found: &Tensor, on_inf: &Tensor, otherwise: &Tensor) -> KResult<Tensor> {
    let f = found.item_f32().ok_or("found_inf must be a scalar")?;
    Ok(if f != 0.0 { on_inf.clone() } else { otherwise.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// relu(NaN) is NaN (PyTorch, onnxruntime); negatives and -0 give +0.
    #[test]
    fn relu_propagates_nan() {
        let x = Tensor::from_f32(crate::DType::F32, vec![5], &[f32::NAN, -0.0, -3.0, 2.5, f32::INFINITY]).unwrap();
        let y = unary(&x, &x.ty(), relu).unwrap().to_f32_vec();
        assert!(y[0].is_nan());
        assert_eq!(
            y[1..].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            [0, 0, 2.5f32.to_bits(), f32::INFINITY.to_bits()]
        );
    }

    #[test]
    fn erf_at_known_points() {
        let x = Tensor::from_f32(crate::DType::F32, vec![5], &[0.5, 1.0, -1.0, 2.0, 0.0]).unwrap();
        let y = unary(&x, &x.ty(), erf).unwrap().to_f32_vec();
        // erf(0.5) = 0.5204998778, erf(1) = 0.8427007929, erf(2) = 0.9953222650,
        // each the nearest f32.
        let want = [0.520_499_88f64, 0.842_700_79, -0.842_700_79, 0.995_322_27, 0.0];
        for (g, w) in y.iter().zip(want) {
            assert!((*g as f64 - w).abs() <= 6e-8, "{g} vs {w}");
        }
        assert_eq!(y[0], 0.520_499_877_8_f64 as f32);
        assert_eq!(y[1], 0.842_700_792_9_f64 as f32);
        // erf_grad at 0 is dy·2/√π; at 1, dy·2/√π·e^-1 = 3 · 0.4151074974.
        let dy = Tensor::from_f32(crate::DType::F32, vec![2], &[1.0, 3.0]).unwrap();
        let at = Tensor::from_f32(crate::DType::F32, vec![2], &[0.0, 1.0]).unwrap();
        let g = unary_grad(&dy, &at, &dy.ty(), erf_grad).unwrap().to_f32_vec();
        assert!((g[0] - std::f32::consts::FRAC_2_SQRT_PI).abs() < 1e-6, "{}", g[0]);
        assert!((g[1] - 1.245_322_5).abs() < 1e-6, "{}", g[1]);
    }

    #[test]
    fn gelu_derivative_matches_differences() {
        for &x in &[-3.0f32, -1.0, -0.3, 0.0, 0.5, 2.0] {
            let h = 1e-2f64;
            let g = |x: f64| 0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh());
            let fd = (g(x as f64 + h) - g(x as f64 - h)) / (2.0 * h);
            assert!((gelu_derivative(x) as f64 - fd).abs() < 1e-4, "{x}");
        }
    }
}
