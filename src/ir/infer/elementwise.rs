//! Type inference of values, casts, arithmetic and activations, dropout and
//! the activations' gradients.

use super::*;

pub(super) fn infer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    let one = |t: TensorType| Ok(vec![t]);
    use Op::*;
    match op {
        Input { ty } | Param { ty, .. } | State { ty, .. } | Constant { ty, .. } => {
            ty.shape.validate()?;
            if let Constant { value, .. } = op {
                let fits = match ty.dtype {
                    DType::Bool => *value == 0.0 || *value == 1.0,
                    DType::I32 => value.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(value),
                    DType::I64 => value.fract() == 0.0 && value.abs() <= 9.007_199_254_740_992e15,
                    DType::F16 => value.abs() <= 65504.0,
                    DType::Bf16 | DType::F32 => value.abs() <= f32::MAX as f64,
                };
                if !fits {
                    return Err(format!("the value {value} does not fit the type {}", ty.dtype));
                }
            }
            if matches!(op, Param { .. }) {
                float(ty, "a parameter")?;
            }
            one(ty.clone())
        }
        Seed => {
            let l = inputs[0];
            float(l, "the loss")?;
            one(TensorType { dtype: DType::F32, shape: l.shape.clone() })
        }
        Cast { to } => one(inputs[0].with_dtype(*to)),
        Identity => one(inputs[0].clone()),
        Add | Sub | Mul | Div => {
            let (a, b) = (inputs[0], inputs[1]);
            same_dtype(a, b, op.name())?;
            if a.dtype == DType::Bool {
                return Err(format!("{} is not defined on bool", op.name()));
            }
            one(TensorType { dtype: a.dtype, shape: broadcast(&a.shape, &b.shape)? })
        }
        Scale { .. } | Relu | Gelu | Tanh | Sigmoid | Exp | Log | Erf | Sqrt => {
            float(inputs[0], "the input")?;
            one(inputs[0].clone())
        }
        Dropout { p, .. } => {
            if !(0.0..1.0).contains(p) {
                return Err(format!("dropout p must be in [0, 1), found {p}"));
            }
            let x = inputs[0];
            float(x, "the input")?;
            Ok(vec![x.clone(), x.with_dtype(DType::Bool)])
        }
        ReluGrad | GeluGrad | ErfGrad | TanhGrad | SigmoidGrad | SoftmaxGrad { .. } | LogSoftmaxGrad { .. } => {
            let (dy, y) = (inputs[0], inputs[1]);
            float(dy, "dy")?;
            if dy.shape != y.shape {
                return Err(format!("dy {dy} and {} {y} must have the same shape", input_names(op)[1]));
            }
            float(y, input_names(op)[1])?;
            match op {
                SoftmaxGrad { axis } | LogSoftmaxGrad { axis } => {
                    y.shape.axis(*axis)?;
                }
                _ => {}
            }
            one(dy.clone())
        }
        DropoutGrad { p } => {
            if !(0.0..1.0).contains(p) {
                return Err(format!("dropout p must be in [0, 1), found {p}"));
            }
            let (dy, mask) = (inputs[0], inputs[1]);
            float(dy, "dy")?;
            same_type(mask, &dy.with_dtype(DType::Bool), "the mask and dy (as bool)")?;
            one(dy.clone())
        }
        _ => Err(format!("{}: not a elementwise op (the dispatch in infer/mod.rs is wrong)", op.name())),
    }
}
