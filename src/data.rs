//! Training data for `mpc train`: a CSV (or gzipped CSV) file of numbers
//! mapped onto a graph's inputs, or a seeded synthetic generator.
//!
//! Columns are taken in input declaration order: an input of shape
//! `[B, d1, d2, ...]` consumes `d1·d2·...` consecutive columns per row, and
//! its first dimension `B` is the batch size (every input must agree on it).
//! For `ir-examples/mlp.json` on the digits set that is 64 pixel columns for
//! `x` and the last column for `labels`.
//!
//! Float inputs are divided by the largest absolute value found in their
//! columns over the whole file (16 for the digits), so they lie in
//! [-1, 1]. Integer inputs must hold integers; when an integer input feeds
//! the labels of a `cross_entropy` or the ids of an `embedding`, each value
//! must be a valid class or row index, checked before training starts.
//!
//! The rows are shuffled once with the seed and the last 20% are the test
//! set. Training batches are a pure function of (seed, step): step `s`
//! takes rows `s·B .. s·B+B` of the endless sequence of epochs, each epoch
//! its own seeded permutation of the training rows. So a run resumed at
//! step `k` sees exactly the batches an uninterrupted run would.

use std::io::Read;
use std::path::Path;

use crate::exec::rng::{combine, SplitMix64};
use crate::exec::{Data, State, Tensor};
use crate::graph::Graph;
use crate::op::Op;
use crate::types::DType;

/// The fraction of rows held out as the test set.
pub const TEST_FRACTION: f64 = 0.2;

/// Random streams derived from the seed: the split, and the epochs.
const SPLIT_STREAM: u64 = 0x0053_504c_4954;
const EPOCH_STREAM: u64 = 0x0045_504f_4348;

/// A data error, reported before training starts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

/// One graph input and the columns that feed it.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// The input's name.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its full shape, batch dimension first.
    pub shape: Vec<u64>,
    /// Columns per row (`prod(shape[1..])`).
    pub cols: usize,
    /// For an integer input: the values must lie in `0..n`.
    pub classes: Option<u64>,
}

/// How a graph's inputs are laid out in a row, and the batch size.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The inputs, in declaration order.
    pub inputs: Vec<InputSpec>,
    /// The batch size: the first dimension of every input.
    pub batch: usize,
}

impl Layout {
    /// The layout of `g`'s inputs (use the graph as parsed, before lowering).
    pub fn of(g: &Graph) -> Result<Layout, DataError> {
        let mut inputs = Vec::new();
        let mut batch = None;
        for n in g.node_ids() {
            let node = g.node(n);
            let Op::Input { ty } = &node.op else { continue };
            let shape = ty.shape.0.clone();
            let Some(&b) = shape.first() else {
                return Err(DataError(format!("input `{}` is a scalar: it has no batch dimension", node.name)));
            };
            match batch {
                None => batch = Some(b),
                Some(b0) if b0 != b => {
                    return Err(DataError(format!(
                        "inputs disagree on the batch size (first dimension): {b0} and {b} (`{}`)",
                        node.name
                    )))
                }
                _ => {}
            }
            let cols = shape[1..].iter().product::<u64>() as usize;
            let mut classes = None;
            if ty.dtype.is_int() {
                for (user, port) in g.uses(crate::graph::ValueId { node: n, slot: 0 }) {
                    let ins = g.inputs(user);
                    let first = || ins.first().map(|&v| g.ty(v).shape.0.clone()).unwrap_or_default();
                    match (&g.node(user).op, port) {
                        (Op::CrossEntropy, 1) => classes = first().last().copied(),
                        (Op::Embedding, 1) => classes = first().first().copied(),
                        _ => {}
                    }
                }
            }
            inputs.push(InputSpec { name: node.name.clone(), dtype: ty.dtype, shape, cols, classes });
        }
        let Some(batch) = batch else { return Err(DataError("the graph has no inputs to feed".into())) };
        if batch == 0 {
            return Err(DataError("the batch size (first dimension of the inputs) is 0".into()));
        }
        Ok(Layout { inputs, batch: batch as usize })
    }

    /// Columns per row in all.
    pub fn cols(&self) -> usize {
        self.inputs.iter().map(|i| i.cols).sum()
    }

    fn describe(&self) -> String {
        self.inputs.iter().map(|i| format!("{}: {}", i.name, i.cols)).collect::<Vec<_>>().join(", ")
    }
}

/// A dataset: rows of numbers already checked against a [`Layout`].
#[derive(Clone, Debug)]
pub struct Dataset {
    layout: Layout,
    /// Row-major, `cols` per row, float inputs already scaled.
    values: Vec<f64>,
    rows: usize,
    train: Vec<usize>,
    test: Vec<usize>,
    seed: u64,
}

/// A seeded permutation of `0..n` (Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError(format!("cannot read {}: {e}", path.display())))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).map_err(|e| {
            DataError(format!("{}: cannot decompress (truncated or corrupt gzip?): {e}", path.display()))
        })?;
        Ok(text)
    } else {
        String::from_utf8(bytes).map_err(|_| DataError(format!("{}: not UTF-8 text", path.display())))
    }
}

impl Dataset {
    /// Loads a CSV or CSV.GZ file for `layout`. Blank lines are skipped.
    pub fn load(path: &Path, layout: &Layout, seed: u64) -> Result<Dataset, DataError> {
        let text = read_text(path)?;
        let cols = layout.cols();
        let mut values = Vec::new();
        let mut rows = 0usize;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let at = format!("{}:{}", path.display(), i + 1);
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != cols {
                return Err(DataError(format!(
                    "{at}: expected {cols} columns ({}), found {}",
                    layout.describe(),
                    fields.len()
                )));
            }
            let mut col = 0usize;
            for input in &layout.inputs {
                for f in &fields[col..col + input.cols] {
                    col += 1;
                    let v: f64 = f.trim().parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| {
                        DataError(format!(
                            "{at}: column {col} (`{}`): `{}` is not a finite number",
                            input.name,
                            f.trim()
                        ))
                    })?;
                    if input.dtype.is_int() || input.dtype == DType::Bool {
                        if v.fract() != 0.0 {
                            return Err(DataError(format!(
                                "{at}: column {col} (`{}`): {v} is not an integer",
                                input.name
                            )));
                        }
                        if let Some(n) = input.classes {
                            if v < 0.0 || v >= n as f64 {
                                return Err(DataError(format!(
                                    "{at}: column {col} (`{}`): {v} is out of range 0..{n}",
                                    input.name
                                )));
                            }
                        }
                    }
                    values.push(v);
                }
            }
            rows += 1;
        }
        if rows < 2 {
            return Err(DataError(format!("{}: {rows} data rows; at least 2 are needed", path.display())));
        }
        // Float inputs: divide by the largest magnitude in their columns.
        let mut start = 0;
        for input in &layout.inputs {
            if input.dtype.is_float() {
                let mut max = 0f64;
                for r in 0..rows {
                    for c in start..start + input.cols {
                        max = max.max(values[r * cols + c].abs());
                    }
                }
                if max > 0.0 {
                    for r in 0..rows {
                        for c in start..start + input.cols {
                            values[r * cols + c] /= max;
                        }
                    }
                }
            }
            start += input.cols;
        }
        let order = permutation(rows, combine(seed, SPLIT_STREAM));
        let n_test = ((rows as f64) * TEST_FRACTION).round() as usize;
        let n_test = n_test.min(rows - 1);
        let (train, test) = order.split_at(rows - n_test);
        Ok(Dataset { layout: layout.clone(), values, rows, train: train.to_vec(), test: test.to_vec(), seed })
    }

    /// The number of rows in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The number of training rows.
    pub fn train_rows(&self) -> usize {
        self.train.len()
    }

    /// The number of test rows.
    pub fn test_rows(&self) -> usize {
        self.test.len()
    }

    /// The training batch of step `step` (0-based); a pure function of (seed, step).
    pub fn train_batch(&self, step: u64) -> Result<State, DataError> {
        let b = self.layout.batch as u64;
        let n = self.train.len() as u64;
        let mut rows = Vec::with_capacity(self.layout.batch);
        let mut epoch = u64::MAX;
        let mut perm = Vec::new();
        for i in 0..b {
            let global = step * b + i;
            if global / n != epoch {
                epoch = global / n;
                perm = permutation(self.train.len(), combine(combine(self.seed, EPOCH_STREAM), epoch));
            }
            rows.push(self.train[perm[(global % n) as usize]]);
        }
        self.batch_of(&rows)
    }

    /// The test set in batches: each batch and how many of its rows are real
    /// (the last batch is padded by repeating its first row).
    pub fn test_batches(&self) -> Result<Vec<(State, usize)>, DataError> {
        let mut out = Vec::new();
        for chunk in self.test.chunks(self.layout.batch) {
            let mut rows = chunk.to_vec();
            rows.resize(self.layout.batch, chunk[0]);
            out.push((self.batch_of(&rows)?, chunk.len()));
        }
        Ok(out)
    }

    fn batch_of(&self, rows: &[usize]) -> Result<State, DataError> {
        let cols = self.layout.cols();
        let mut state = State::new();
        let mut start = 0;
        for input in &self.layout.inputs {
            let mut v = Vec::with_capacity(rows.len() * input.cols);
            for &r in rows {
                v.extend_from_slice(&self.values[r * cols + start..r * cols + start + input.cols]);
            }
            state.insert(input.name.clone(), tensor(input, v)?);
            start += input.cols;
        }
        Ok(state)
    }
}

fn tensor(input: &InputSpec, v: Vec<f64>) -> Result<Tensor, DataError> {
    let data = if input.dtype.is_float() {
        Data::from_f32(input.dtype, &v.iter().map(|&x| x as f32).collect::<Vec<_>>())
    } else {
        Data::from_i64(input.dtype, &v.iter().map(|&x| x as i64).collect::<Vec<_>>())
    };
    Tensor::new(input.shape.clone(), data).map_err(|e| DataError(format!("input `{}`: {e}", input.name)))
}

/// A synthetic batch for step `step`: standard normal floats, integers
/// uniform in `0..classes` (or `0..2` without a known range); a pure
/// function of (seed, step). There is no test set.
pub fn synthetic_batch(layout: &Layout, seed: u64, step: u64) -> Result<State, DataError> {
    let mut state = State::new();
    for input in &layout.inputs {
        let mut rng = SplitMix64::new(combine(combine(seed, step), crate::exec::rng::fnv1a(&input.name)));
        let n = layout.batch * input.cols;
        let v: Vec<f64> = if input.dtype.is_float() {
            (0..n).map(|_| rng.normal()).collect()
        } else {
            let k = input.classes.unwrap_or(2).max(1);
            (0..n).map(|_| (rng.next_u64() % k) as f64).collect()
        };
        state.insert(input.name.clone(), tensor(input, v)?);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        let text = std::fs::read_to_string("ir-examples/mlp.json").unwrap();
        Layout::of(&crate::parse_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn mlp_layout() {
        let l = layout();
        assert_eq!(l.batch, 64);
        assert_eq!(l.cols(), 65);
        assert_eq!(l.inputs[1].classes, Some(10));
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(100, 3);
        assert_ne!(p, (0..100).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn synthetic_labels_in_range() {
        let l = layout();
        let b = synthetic_batch(&l, 1, 2).unwrap();
        let labels = b["labels"].data().to_i64_vec().unwrap();
        assert!(labels.iter().all(|&x| (0..10).contains(&x)));
        assert!(b["x"].bit_eq(&synthetic_batch(&l, 1, 2).unwrap()["x"]));
    }
}
