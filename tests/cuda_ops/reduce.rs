//! Cases of the ops that ONNX imports bring (kernels/reduce.cu `reduce_<t>`,
//! the `transpose_<t>` gather of kernels/layout.cu for broadcast_to,
//! kernels/norm.cu `log_softmax*`). Every one is exact:
//! - reduce_sum/reduce_mean: a thread per output adds its elements in
//!   increasing index order in f32 from +0.0 (the mean divides by the f32
//!   count), integers in wrapping i64, as src/exec/cpu/layout.rs `reduce`.
//! - broadcast_to copies bits.
//! - log_softmax and its gradient: a thread per row, the CPU's max, sum
//!   (from -0.0) and f32 operations in its order, expf/logf the host's on
//!   both sides here.

use super::*;

pub fn cases(src: &mut Src, out: &mut Vec<Case>) {
    reductions(src, out);
    broadcasts(src, out);
    log_softmaxes(src, out);
}

/// reduce_sum (floats and integers) and reduce_mean (floats) over the
/// first, a middle, the last and every axis, with and without keepdims;
/// more outputs than a block; size-1 axes; six axes that alternate.
fn reductions(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [(&[u64], &[i64]); 15] = [
        (&[7], &[0]),
        (&[5, 7], &[0]),
        (&[5, 7], &[1]),
        (&[5, 7], &[-1, 0]),
        (&[3, 4, 5], &[1]),
        (&[3, 4, 5], &[0, 2]),
        (&[3, 4, 5], &[-3]),
        (&[2, 3, 9, 7], &[2, 3]),
        (&[600, 3], &[1]),
        (&[3, 600], &[0]),
        (&[300, 7], &[0]),
        (&[4, 1, 6], &[1]),
        (&[1, 1], &[0, 1]),
        (&[2, 3, 2, 3, 2, 3], &[1, 3, 5]),
        (&[1041], &[0]),
    ];
    for d in [F32, F16, Bf16, I32, I64] {
        for (i, &(shape, axes)) in shapes.iter().enumerate() {
            // Mixed magnitudes (cancelling sums) and, every third case, the
            // pool's values: the type's edges, infinities, NaNs.
            let x = if d.is_float() && i % 3 != 0 { src.mixed(d, shape) } else { src.values(d, shape) };
            for keepdims in [false, true] {
                let note = format!("axes {axes:?}{}", if keepdims { " keepdims" } else { "" });
                let sum = Op::ReduceSum { axes: axes.to_vec(), keepdims };
                out.push(case(sum, vec![x.clone()], Tol::Exact).note(note.clone()));
                if d.is_float() {
                    let mean = Op::ReduceMean { axes: axes.to_vec(), keepdims };
                    out.push(case(mean, vec![x.clone()], Tol::Exact).note(note));
                }
            }
        }
        if d.is_float() {
            // The whole pool into one sum (every edge value, for f16/bf16 every
            // pattern: inf + -inf and NaNs), and a column of finite edges.
            let big = src.values(d, &[src.big(d)]);
            out.push(case(Op::ReduceMean { axes: vec![0], keepdims: false }, vec![big], Tol::Exact).note("pool"));
            let e = Data::from_f32(d, &edges().into_iter().filter(|v| v.is_finite()).collect::<Vec<_>>());
            let n = e.len() as u64;
            let x = Tensor::new(vec![n, 1], e).expect("consistent");
            let x = CpuBackend::new()
                .run(
                    &Op::BroadcastTo { shape: vec![n, 3] },
                    &OpCtx { node: "n", step: 0, seed: 0 },
                    &[&x],
                    &[TensorType::new(d, vec![n, 3])],
                )
                .unwrap()
                .remove(0);
            out.push(case(Op::ReduceSum { axes: vec![1], keepdims: true }, vec![x], Tol::Exact).note("edges x3"));
        }
    }
}

/// broadcast_to in every dtype: from rank 1 and rank 0, from size-1 axes
/// (first, middle, last), to more elements than a block, a plain copy.
fn broadcasts(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [(&[u64], &[u64]); 10] = [
        (&[7], &[3, 7]),
        (&[], &[5]),
        (&[], &[1, 1]),
        (&[3, 1], &[3, 300]),
        (&[1, 7], &[300, 7]),
        (&[4, 1, 1], &[2, 4, 3, 3]),
        (&[2, 1, 3], &[2, 5, 3]),
        (&[5], &[5]),
        (&[1], &[2, 3, 1, 2, 3, 2]),
        (&[347], &[3, 1, 347]),
    ];
    for d in DType::ALL {
        for &(from, to) in &shapes {
            let x = src.values(d, from);
            out.push(case(Op::BroadcastTo { shape: to.to_vec() }, vec![x], Tol::Bits).note(format!("to {to:?}")));
        }
    }
}

/// log_softmax along the last, a middle and the first axis, more rows than
/// a block, rows with a dominating entry, an infinity and -infinities; its
/// gradient in every (dy, y) pair of float types.
fn log_softmaxes(src: &mut Src, out: &mut Vec<Case>) {
    let shapes: [(&[u64], i64); 9] = [
        (&[1, 1], -1),
        (&[7, 5], -1),
        (&[300, 10], -1),
        (&[3, 1000], 1),
        (&[3, 5, 7], 1),
        (&[5, 3], 0),
        (&[45, 33], -1),
        (&[2, 3, 4, 5], 2),
        (&[600, 3], -1),
    ];
    for d in FLOATS {
        for &(shape, axis) in &shapes {
            let mut v = src.normals(F32, shape, 4.0).to_f32_vec();
            if v.len() > 8 {
                v[0] = 60.0; // a row dominated by one entry
                v[1] = -60.0;
            }
            if v.len() > 40 {
                // One -inf, one +inf (NaN row on both sides), a denormal.
                (v[20], v[30], v[31]) = (f32::NEG_INFINITY, f32::INFINITY, 1e-40);
            }
            let x = tf(d, shape, &v);
            let op = Op::LogSoftmax { axis };
            out.push(case(op.clone(), vec![x.clone()], Tol::Exact).note(format!("axis {axis}")));
            for yd in FLOATS {
                let xy = tf(yd, shape, &v);
                let y = CpuBackend::new().run(&op, &OpCtx { node: "n", step: 0, seed: 0 }, &[&xy], &[xy.ty()]).unwrap();
                let dy = src.mixed(d, shape);
                let grad = Op::LogSoftmaxGrad { axis };
                out.push(case(grad, vec![dy, y[0].clone()], Tol::Exact).note(format!("axis {axis}")));
            }
        }
    }
}
