//! Layout and reduction kernels: transpose, concat, split, broadcast_to,
//! sum_to, reduce_sum/mean, embedding and its gradient.

use crate::ir::types::TensorType;

use super::{broadcast_map, dims, from_f32, strides, wrap, KResult};
use crate::tensor::{Data, Tensor};

/// `transpose(x, perm)`: output axis `i` is input axis `perm[i]`; bits are copied.
pub fn transpose(x: &Tensor, perm: &[usize]) -> KResult<Tensor> {
    let d = dims(x.shape());
    let s = strides(&d);
    let out_dims: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
    // The input stride along each output axis.
    let src: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let n = x.len();
    let mut idx = Vec::with_capacity(n);
    let mut pos = vec![0usize; out_dims.len()];
    let mut cur = 0usize;
    for _ in 0..n {
        idx.push(cur);
        for ax in (0..out_dims.len()).rev() {
            pos[ax] += 1;
            cur += src[ax];
            if pos[ax] < out_dims[ax] {
                break;
            }
            cur -= src[ax] * pos[ax];
            pos[ax] = 0;
        }
    }
    let shape: Vec<u64> = out_dims.iter().map(|&d| d as u64).collect();
    wrap(Tensor::new(shape, x.data().gather(&idx)))
}

/// `concat(x1, …, xn)` along `axis`: bits are copied.
pub fn concat(xs: &[&Tensor], axis: i64, out: &TensorType) -> KResult<Tensor> {
    let d = dims(&out.shape);
    let ax = out.shape.axis(axis)?;
    let (outer, inner): (usize, usize) = (d[..ax].iter().product(), d[ax + 1..].iter().product());
    let block: Vec<usize> = xs.iter().map(|x| x.shape().0[ax] as usize * inner).collect();
    let parts: Vec<&Data> = xs.iter().map(|x| x.data()).collect();
    let data = Data::interleave(&parts, outer, &block).ok_or("concat inputs must share one dtype")?;
    wrap(Tensor::new(out.shape.clone(), data))
}

/// `split(x)` along `axis` into pieces shaped as `out`: bits are copied.
pub fn split(x: &Tensor, axis: i64, out: &[TensorType]) -> KResult<Vec<Tensor>> {
    let d = dims(x.shape());
    let ax = x.shape().axis(axis)?;
    let (outer, len, inner): (usize, usize, usize) = (d[..ax].iter().product(), d[ax], d[ax + 1..].iter().product());
    let mut start = 0;
    out.iter()
        .map(|t| {
            let size = t.shape.0[ax] as usize;
            let idx: Vec<usize> = (0..outer)
                .flat_map(|o| {
                    let first = (o * len + start) * inner;
                    first..first + size * inner
                })
                .collect();
            start += size;
            wrap(Tensor::new(t.shape.clone(), x.data().gather(&idx)))
        })
        .collect()
}

/// `broadcast_to(x, shape)`: bits are copied.
pub fn broadcast_to(x: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let idx = broadcast_map(&dims(x.shape()), &dims(&out.shape));
    wrap(Tensor::new(out.shape.clone(), x.data().gather(&idx)))
}

/// Sums `x` into `target` (a shape that broadcasts to x's), in x's
/// element order: f32 accumulation for floats, exact i64 for integers.
fn sum_into(x: &Tensor, target: &[usize]) -> (Vec<f32>, Option<Vec<i64>>) {
    let map = broadcast_map(target, &dims(x.shape()));
    let n: usize = target.iter().product();
    if let Some(ints) = x.data().to_i64_vec() {
        let mut acc = vec![0i64; n];
        for (&j, &v) in map.iter().zip(&ints) {
            acc[j] = acc[j].wrapping_add(v);
        }
        return (Vec::new(), Some(acc));
    }
    let mut acc = vec![0f32; n];
    for (&j, v) in map.iter().zip(x.to_f32_vec()) {
        acc[j] += v;
    }
    (acc, None)
}

fn finish(sums: (Vec<f32>, Option<Vec<i64>>), out: &TensorType) -> KResult<Tensor> {
    match sums {
        (_, Some(ints)) => wrap(Tensor::new(out.shape.clone(), Data::from_i64(out.dtype, &ints))),
        (f, None) => from_f32(out, &f),
    }
}

/// `sum_to(x, shape)`: the sum over the axes that broadcasting would add.
pub fn sum_to(x: &Tensor, out: &TensorType) -> KResult<Tensor> {
    finish(sum_into(x, &dims(&out.shape)), out)
}

/// `reduce_sum`/`reduce_mean` over `axes` (negative axes count from the end).
pub fn reduce(x: &Tensor, axes: &[i64], mean: bool, out: &TensorType) -> KResult<Tensor> {
    let mut kept = dims(x.shape());
    let mut count = 1usize;
    for &a in axes {
        let ax = x.shape().axis(a)?;
        count *= kept[ax];
        kept[ax] = 1;
    }
    let (mut sums, ints) = sum_into(x, &kept);
    if mean {
        let c = count as f32;
        sums.iter_mut().for_each(|v| *v /= c);
    }
    finish((sums, ints), out)
}

/// The ids as usize, each checked against the table size.
fn ids(ids: &Tensor, rows: usize) -> KResult<Vec<usize>> {
    let v = ids.data().to_i64_vec().ok_or("the ids must be integers")?;
    v.into_iter()
        .map(|i| {
            usize::try_from(i)
                .ok()
                .filter(|&u| u < rows)
                .ok_or_else(|| format!("id {i} is out of range for an embedding table of {rows} rows"))
        })
        .collect()
}

/// `embedding(table, ids)`: row `ids[..]` of the table; bits are copied.
pub fn embedding(table: &Tensor, id: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let d = dims(table.shape());
    let (rows, width) = (d[0], d[1]);
    let ids = ids(id, rows)?;
    let idx: Vec<usize> = ids.iter().flat_map(|&r| (r * width)..(r * width + width)).collect();
    wrap(Tensor::new(out.shape.clone(), table.data().gather(&idx)))
}

/// `embedding_grad(dy, ids)`: scatter-add of dy's rows into
/// `[num_embeddings, D]`, accumulated in f32 in id order.
pub fn embedding_grad(dy: &Tensor, id: &Tensor, out: &TensorType) -> KResult<Tensor> {
    let od = dims(&out.shape);
    let (rows, width) = (od[0], od[1]);
    let ids = ids(id, rows)?;
    let d = dy.to_f32_vec();
    let mut acc = vec![0f32; rows * width];
    for (k, &r) in ids.iter().enumerate() {
        for (a, &g) in acc[r * width..(r + 1) * width].iter_mut().zip(&d[k * width..(k + 1) * width]) {
            *a += g;
        }
    }
    from_f32(out, &acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::types::{DType, Shape};

    fn shape_of(d: &[usize]) -> Shape {
        Shape(d.iter().map(|&v| v as u64).collect())
    }

    #[test]
    fn transpose_moves_axes() {
        let x = Tensor::from_f32(DType::F32, vec![2, 3], &[0., 1., 2., 3., 4., 5.]).unwrap();
        let t = transpose(&x, &[1, 0]).unwrap();
        assert_eq!(t.shape(), &shape_of(&[3, 2]));
        assert_eq!(t.to_f32_vec(), vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn concat_and_split_along_the_middle_axis() {
        let a = Tensor::new(vec![2, 1, 2], Data::I32(vec![0, 1, 6, 7])).unwrap();
        let b = Tensor::new(vec![2, 2, 2], Data::I32(vec![2, 3, 4, 5, 8, 9, 10, 11])).unwrap();
        let c = concat(&[&a, &b], 1, &TensorType::new(DType::I32, vec![2, 3, 2])).unwrap();
        assert_eq!(c.data(), &Data::I32((0..12).collect()));
        let parts = split(&c, -2, &[a.ty(), b.ty()]).unwrap();
        assert_eq!(parts, vec![a, b]);
        let h = Tensor::from_f32(DType::F16, vec![1], &[1.0]).unwrap();
        let f = Tensor::from_f32(DType::F32, vec![1], &[1.0]).unwrap();
        assert!(concat(&[&h, &f], 0, &TensorType::new(DType::F16, vec![2])).is_err());
    }

    #[test]
    fn reduce_keeps_or_drops_axes() {
        let x = Tensor::from_f32(DType::F32, vec![2, 3], &[0., 1., 2., 3., 4., 5.]).unwrap();
        let s = reduce(&x, &[0], false, &TensorType::new(DType::F32, vec![3])).unwrap();
        assert_eq!(s.to_f32_vec(), vec![3., 5., 7.]);
        let m = reduce(&x, &[-1], true, &TensorType::new(DType::F32, vec![2, 1])).unwrap();
        assert_eq!(m.to_f32_vec(), vec![1., 4.]);
    }

    #[test]
    fn bad_ids_are_errors() {
        let t = Tensor::from_f32(DType::F32, vec![2, 2], &[0.; 4]).unwrap();
        let i = Tensor::new(vec![1], Data::I32(vec![2])).unwrap();
        let e = embedding(&t, &i, &TensorType::new(DType::F32, vec![1, 2])).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let i = Tensor::new(vec![1], Data::I64(vec![-1])).unwrap();
        assert!(embedding(&t, &i, &TensorType::new(DType::F32, vec![1, 2])).is_err());
    }
}
