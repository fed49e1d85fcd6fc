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
//!
//! # Text
//!
//! A `.txt` (or `.txt.gz`) file is a character-level text for a language
//! model instead ([`Dataset::load_text`]). The graph must have exactly two
//! inputs: an integer one feeding the ids of an `embedding` (the tokens,
//! shape `[B, T]` or any `[B, ...]` of `T` elements per example) and an
//! integer one feeding the labels of a `cross_entropy` (`B·T` elements in
//! any shape). The vocabulary is the sorted set of the text's distinct
//! characters, each character's id its index there; it must fit both the
//! embedding table's rows and the cross-entropy's classes. The last 10% of
//! the text is the test part. Each training example is a window of `T + 1`
//! characters at a random offset in the training part (a pure function of
//! (seed, step), so resuming stays bit-identical): the tokens are its first
//! `T` ids, the labels its last `T` (each token's next character). The test
//! windows tile the test part in order, and test accuracy is next-character
//! accuracy.

use std::io::Read;
use std::path::Path;

use crate::exec::rng::{combine, SplitMix64};
use crate::exec::{Data, State, Tensor};
use crate::ir::graph::Graph;
use crate::ir::op::Op;
use crate::ir::types::DType;

/// The fraction of rows held out as the test set.
pub const TEST_FRACTION: f64 = 0.2;

/// The fraction of a text (its end) held out as the test part.
pub const TEXT_TEST_FRACTION: f64 = 0.1;

/// Random streams derived from the seed: the split, and the epochs.
const SPLIT_STREAM: u64 = 0x0053_504c_4954;
const EPOCH_STREAM: u64 = 0x0045_504f_4348;
const TEXT_STREAM: u64 = 0x0000_5445_5854;

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
            let Op::Input { ty } = node.op() else { continue };
            let shape = ty.shape.0.clone();
            let Some(&b) = shape.first() else {
                return Err(DataError(format!("input `{}` is a scalar: it has no batch dimension", node.name())));
            };
            match batch {
                None => batch = Some(b),
                Some(b0) if b0 != b => {
                    return Err(DataError(format!(
                        "inputs disagree on the batch size (first dimension): {b0} and {b} (`{}`)",
                        node.name()
                    )))
                }
                _ => {}
            }
            let cols = shape[1..].iter().product::<u64>() as usize;
            let mut classes = None;
            if ty.dtype.is_int() {
                for (user, port) in g.uses(crate::ir::graph::ValueId { node: n, slot: 0 }) {
                    let ins = g.inputs(user);
                    let first = || ins.first().map(|&v| g.ty(v).shape.0.clone()).unwrap_or_default();
                    match (g.node(user).op(), port) {
                        (Op::CrossEntropy, 1) => classes = first().last().copied(),
                        (Op::Embedding, 1) => classes = first().first().copied(),
                        _ => {}
                    }
                }
            }
            inputs.push(InputSpec { name: node.name().to_string(), dtype: ty.dtype, shape, cols, classes });
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

/// A dataset: rows of numbers already checked against a [`Layout`], or a
/// text (see [`Dataset::load_text`]).
#[derive(Clone, Debug)]
pub struct Dataset(Kind);

#[derive(Clone, Debug)]
enum Kind {
    Csv(Csv),
    Text(Text),
}

/// CSV rows.
#[derive(Clone, Debug)]
struct Csv {
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
        Csv::load(path, layout, seed).map(|c| Dataset(Kind::Csv(c)))
    }

    /// Loads a text file (`.txt` or `.txt.gz`) for a character-level
    /// language model `g` (the graph as parsed); see [`is_text`].
    pub fn load_text(path: &Path, g: &Graph, seed: u64) -> Result<Dataset, DataError> {
        Text::load(path, g, seed).map(|t| Dataset(Kind::Text(t)))
    }

    /// The number of rows in the file (for a text: its characters).
    pub fn rows(&self) -> usize {
        match &self.0 {
            Kind::Csv(c) => c.rows,
            Kind::Text(t) => t.ids.len(),
        }
    }

    /// The number of training rows (for a text: characters of the training part).
    pub fn train_rows(&self) -> usize {
        match &self.0 {
            Kind::Csv(c) => c.train.len(),
            Kind::Text(t) => t.split,
        }
    }

    /// The number of test rows (for a text: the characters predicted in
    /// the test windows, each an accuracy sample).
    pub fn test_rows(&self) -> usize {
        match &self.0 {
            Kind::Csv(c) => c.test.len(),
            Kind::Text(t) => t.test_windows() * t.len,
        }
    }

    /// What [`Dataset::test_rows`] counts, for messages.
    pub fn test_unit(&self) -> &'static str {
        match &self.0 {
            Kind::Csv(_) => "test rows",
            Kind::Text(_) => "test characters",
        }
    }

    /// The training batch of step `step` (0-based); a pure function of (seed, step).
    pub fn train_batch(&self, step: u64) -> Result<State, DataError> {
        match &self.0 {
            Kind::Csv(c) => c.train_batch(step),
            Kind::Text(t) => t.train_batch(step),
        }
    }

    /// The test set in batches: each batch and how many of its label
    /// values are real (the last batch is padded by repeating its first
    /// row or window).
    pub fn test_batches(&self) -> Result<Vec<(State, usize)>, DataError> {
        match &self.0 {
            Kind::Csv(c) => c.test_batches(),
            Kind::Text(t) => t.test_batches(),
        }
    }
}

impl Csv {
    fn load(path: &Path, layout: &Layout, seed: u64) -> Result<Csv, DataError> {
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
        Ok(Csv { layout: layout.clone(), values, rows, train: train.to_vec(), test: test.to_vec(), seed })
    }

    fn train_batch(&self, step: u64) -> Result<State, DataError> {
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

    fn test_batches(&self) -> Result<Vec<(State, usize)>, DataError> {
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

/// Whether `path` names a text file for [`Dataset::load_text`]: its name
/// ends in `.txt` or `.txt.gz`.
pub fn is_text(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    name.ends_with(".txt") || name.ends_with(".txt.gz")
}

/// An input fed from a text: its name, type and shape.
#[derive(Clone, Debug)]
struct Feed {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
}

/// A character-level text.
#[derive(Clone, Debug)]
struct Text {
    /// Each character's index in the sorted vocabulary.
    ids: Vec<i64>,
    /// `ids[..split]` is the training part, `ids[split..]` the test part.
    split: usize,
    tokens: Feed,
    labels: Feed,
    /// Windows per batch (the token input's first dimension).
    batch: usize,
    /// Tokens per window (the product of the token input's other dimensions).
    len: usize,
    seed: u64,
}

impl Text {
    fn load(path: &Path, g: &Graph, seed: u64) -> Result<Text, DataError> {
        let at = path.display();
        // The graph: one integer input feeding an embedding's ids, one
        // feeding a cross_entropy's labels, and no other input.
        let (mut tokens, mut labels, mut others) = (Vec::new(), Vec::new(), Vec::new());
        for n in g.node_ids() {
            let node = g.node(n);
            let Op::Input { ty } = node.op() else { continue };
            let feed = Feed { name: node.name().to_string(), dtype: ty.dtype, shape: ty.shape.0.clone() };
            let (mut rows, mut classes) = (None, None);
            if ty.dtype.is_int() {
                for (user, port) in g.uses(crate::ir::graph::ValueId { node: n, slot: 0 }) {
                    let ins = g.inputs(user);
                    let first = || ins.first().map(|&v| g.ty(v).shape.0.clone()).unwrap_or_default();
                    match (g.node(user).op(), port) {
                        (Op::Embedding, 1) => rows = first().first().copied(),
                        (Op::CrossEntropy, 1) => classes = first().last().copied(),
                        _ => {}
                    }
                }
            }
            match (rows, classes) {
                (Some(r), None) => tokens.push((feed, r)),
                (None, Some(c)) => labels.push((feed, c)),
                _ => others.push(feed.name),
            }
        }
        let need = "text data needs a graph with exactly one integer input feeding an `embedding` (the tokens) \
                    and one feeding the labels of a `cross_entropy`, and no other input";
        if tokens.len() != 1 || labels.len() != 1 || !others.is_empty() {
            let names = |v: &[(Feed, u64)]| v.iter().map(|(f, _)| format!("`{}`", f.name)).collect::<Vec<_>>();
            return Err(DataError(format!(
                "{at}: {need}; found token inputs [{}], label inputs [{}], other inputs [{}]",
                names(&tokens).join(", "),
                names(&labels).join(", "),
                others.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        let ((tokens, rows), (labels, classes)) = (tokens.remove(0), labels.remove(0));
        let Some(&b) = tokens.shape.first() else {
            return Err(DataError(format!(
                "{at}: the token input `{}` is a scalar: it has no batch dimension",
                tokens.name
            )));
        };
        let (batch, len) = (b as usize, tokens.shape[1..].iter().product::<u64>() as usize);
        if batch == 0 || len == 0 {
            return Err(DataError(format!("{at}: the token input `{}` has no elements", tokens.name)));
        }
        let n_labels = labels.shape.iter().product::<u64>() as usize;
        if n_labels != batch * len {
            return Err(DataError(format!(
                "{at}: the label input `{}` has {n_labels} elements; the token input `{}` {:?} needs {} \
                 (one label, the next character, per token)",
                labels.name,
                tokens.name,
                tokens.shape,
                batch * len
            )));
        }
        // The vocabulary: the sorted distinct characters.
        let text = read_text(path)?;
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        let limit = rows.min(classes);
        if vocab.len() as u64 > limit {
            return Err(DataError(format!(
                "{at}: {} distinct characters, more than the {limit} the graph can take (the embedding of `{}` \
                 has {rows} rows, the cross_entropy {classes} classes)",
                vocab.len(),
                tokens.name
            )));
        }
        let ids: Vec<i64> = text.chars().map(|c| vocab.binary_search(&c).unwrap_or(0) as i64).collect();
        let n = ids.len();
        let n_test = ((n as f64) * TEXT_TEST_FRACTION).round() as usize;
        let split = n - n_test;
        if split < len + 1 || n_test < len + 1 {
            return Err(DataError(format!(
                "{at}: {n} characters is too short: the training part (90%) and the test part (10%) each need \
                 at least {} (one window)",
                len + 1
            )));
        }
        Ok(Text { ids, split, tokens, labels, batch, len, seed })
    }

    /// The number of test windows: consecutive, each starting where the
    /// previous one's labels ended.
    fn test_windows(&self) -> usize {
        (self.ids.len() - self.split - 1) / self.len
    }

    fn train_batch(&self, step: u64) -> Result<State, DataError> {
        let mut rng = SplitMix64::new(combine(combine(self.seed, TEXT_STREAM), step));
        let starts = self.split - self.len; // window starts 0..starts in the training part
        let offsets: Vec<usize> = (0..self.batch).map(|_| (rng.next_u64() % starts as u64) as usize).collect();
        self.batch_of(&offsets)
    }

    fn test_batches(&self) -> Result<Vec<(State, usize)>, DataError> {
        let offsets: Vec<usize> = (0..self.test_windows()).map(|w| self.split + w * self.len).collect();
        let mut out = Vec::new();
        for chunk in offsets.chunks(self.batch) {
            let mut o = chunk.to_vec();
            o.resize(self.batch, chunk[0]);
            out.push((self.batch_of(&o)?, chunk.len() * self.len));
        }
        Ok(out)
    }

    /// Windows of `len + 1` characters at `offsets`: the first `len` are
    /// the tokens, the last `len` the labels.
    fn batch_of(&self, offsets: &[usize]) -> Result<State, DataError> {
        let (mut tokens, mut labels) = (Vec::new(), Vec::new());
        for &o in offsets {
            tokens.extend_from_slice(&self.ids[o..o + self.len]);
            labels.extend_from_slice(&self.ids[o + 1..o + self.len + 1]);
        }
        let mut state = State::new();
        for (feed, v) in [(&self.tokens, tokens), (&self.labels, labels)] {
            let t = Tensor::new(feed.shape.clone(), Data::from_i64(feed.dtype, &v))
                .map_err(|e| DataError(format!("input `{}`: {e}", feed.name)))?;
            state.insert(feed.name.clone(), t);
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
    fn text_windows_shift_by_one() {
        let text = std::fs::read_to_string("ir-examples/gpt_block.json").unwrap();
        let g = crate::parse_str(&text).unwrap();
        let d = Dataset::load_text(Path::new("ir-examples/data/declaration.txt"), &g, 7).unwrap();
        let Kind::Text(t) = &d.0 else { panic!("not a text") };
        assert_eq!((t.batch, t.len, d.rows()), (8, 32, 4151));
        let b = d.train_batch(3).unwrap();
        assert_eq!(b["tokens"].shape().0, vec![8, 32]);
        let (tok, lab) = (b["tokens"].data().to_i64_vec().unwrap(), b["targets"].data().to_i64_vec().unwrap());
        assert_eq!(lab.len(), 256);
        for w in 0..8 {
            assert_eq!(tok[w * 32 + 1..w * 32 + 32], lab[w * 32..w * 32 + 31]);
        }
        assert!(b["tokens"].bit_eq(&d.train_batch(3).unwrap()["tokens"]));
        assert!(!b["tokens"].bit_eq(&d.train_batch(4).unwrap()["tokens"]));
        let test = d.test_batches().unwrap();
        assert_eq!(test.iter().map(|(_, real)| real).sum::<usize>(), d.test_rows());
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
