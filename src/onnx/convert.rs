//! One ONNX node at a time onto mpc's ops.

use std::rc::Rc;

use super::import::{Importer, Port, Source, Val, SOFTMAX_2D};
use super::proto::{AttributeProto, NodeProto};
use super::tensor::{decode, le, Const, ConstData};
use crate::ir::op::{Conv, Op, Window};
use crate::ir::types::resolve_axis;

/// Attribute lookup on one node.
struct Attrs<'a>(&'a [AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.iter().find(|a| a.name.as_deref() == Some(name))
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).and_then(|a| a.i).unwrap_or(default)
    }
    fn float(&self, name: &str, default: f32) -> f64 {
        self.get(name).and_then(|a| a.f).unwrap_or(default) as f64
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
    }
}

/// A 2-D kernel size or stride: two values of at least 1.
fn pair(v: &[i64], what: &str) -> Result<[u64; 2], String> {
    match v {
        [a, b] if *a >= 1 && *b >= 1 => Ok([*a as u64, *b as u64]),
        _ => Err(format!("{what} {v:?}: expected two values of at least 1 (2-D)")),
    }
}

/// Begin and end padding of a 2-D window from `pads` / `auto_pad`.
fn pads(at: &Attrs, hw: [u64; 2], kernel: [u64; 2], stride: [u64; 2]) -> Result<([u64; 2], [u64; 2]), String> {
    match at.string("auto_pad").as_deref() {
        None | Some("NOTSET") => {
            let p = at.ints("pads").unwrap_or_else(|| vec![0; 4]);
            match p[..] {
                [t, l, b, r] if p.iter().all(|&x| x >= 0) => Ok(([t as u64, l as u64], [b as u64, r as u64])),
                _ => Err(format!("pads {p:?}: expected [top, left, bottom, right], non-negative")),
            }
        }
        Some("VALID") => Ok(([0, 0], [0, 0])),
        Some(mode @ ("SAME_UPPER" | "SAME_LOWER")) => {
            let (mut begin, mut end) = ([0; 2], [0; 2]);
            for i in 0..2 {
                let out = hw[i].div_ceil(stride[i]);
                let total = ((out - 1) * stride[i] + kernel[i]).saturating_sub(hw[i]);
                let small = total / 2;
                (begin[i], end[i]) = if mode == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
            }
            Ok((begin, end))
        }
        Some(other) => Err(format!("auto_pad `{other}` is not an ONNX mode")),
    }
}

fn no_dilation(at: &Attrs) -> Result<(), String> {
    match at.ints("dilations") {
        Some(d) if d.iter().any(|&x| x != 1) => Err(format!("dilations {d:?} are not supported (only 1)")),
        _ => Ok(()),
    }
}

fn spatial(dims: &[u64], op: &str) -> Result<[u64; 2], String> {
    match dims {
        [_, _, h, w] => Ok([*h, *w]),
        _ => Err(format!("{op} is supported on 4-D [N, C, H, W] inputs; this one is {dims:?}")),
    }
}

/// Which elements a Gather along one axis keeps, of a row-major tensor
/// `[outer, along, inner]`.
struct Rows<'a> {
    outer: u64,
    along: u64,
    inner: u64,
    picks: &'a [u64],
}

impl Rows<'_> {
    fn take<T: Copy>(&self, v: &[T]) -> Vec<T> {
        let at = |o: u64, p: u64, k: u64| ((o * self.along + p) * self.inner + k) as usize;
        (0..self.outer)
            .flat_map(|o| self.picks.iter().flat_map(move |&p| (0..self.inner).map(move |k| v[at(o, p, k)])))
            .collect()
    }
}

/// Folds `data` gathered at `idx` along `axis` (both constants).
fn gather_const(data: &Const, idx: &[i64], idx_dims: &[u64], ax: usize) -> Result<Const, String> {
    let d = &data.dims;
    let outer: u64 = d[..ax].iter().product();
    let inner: u64 = d[ax + 1..].iter().product();
    let n = d[ax] as i64;
    let mut picks = Vec::with_capacity(idx.len());
    for &i in idx {
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(format!("index {i} is out of range for a dimension of {n}"));
        }
        picks.push(j as u64);
    }
    let dims: Vec<u64> = d[..ax].iter().chain(idx_dims).chain(&d[ax + 1..]).copied().collect();
    let rows = Rows { outer, along: d[ax], inner, picks: &picks };
    let out = match &data.data {
        ConstData::Fill(x) => ConstData::Fill(*x),
        ConstData::F32(v) => ConstData::F32(rows.take(v)),
        ConstData::Raw(b) => ConstData::F32(rows.take(&le(b, f32::from_le_bytes))),
        ConstData::I64(v) => ConstData::I64(rows.take(v)),
    };
    Ok(Const { dims, data: out, float: data.float })
}

impl<'m> Importer<'m> {
    /// Converts one node; the message says what was expected.
    pub fn node(&mut self, n: &'m NodeProto) -> Result<(), String> {
        let op = n.op_type.as_deref().unwrap_or("");
        let at = Attrs(&n.attribute);
        let input = |k: usize| n.input.get(k).map(String::as_str).unwrap_or("");
        let has = |k: usize| !input(k).is_empty();
        let out = n.output.first().map(String::as_str).unwrap_or("");
        let name = if out.is_empty() { n.name.as_deref().unwrap_or(op) } else { out };
        let v = match op {
            "Identity" => {
                let v = self.val(input(0))?;
                self.bind(out, v);
                return Ok(());
            }
            "Add" | "Sub" | "Mul" | "Div" => return self.binary(n, op, name),
            "Sum" => {
                let mut acc = self.tensor(input(0), Port::Data)?;
                for k in 1..n.input.len() {
                    let b = self.tensor(input(k), Port::Data)?;
                    acc = self.add(name, Op::Add, &[acc, b])?;
                }
                acc
            }
            "MatMul" => {
                let a = self.tensor(input(0), Port::Data)?;
                let b = self.tensor(input(1), Port::Weight)?;
                self.add(name, Op::Matmul { transpose_a: false, transpose_b: false }, &[a, b])?
            }
            "Gemm" => {
                let a = self.tensor(input(0), Port::Data)?;
                let b = self.tensor(input(1), Port::Weight)?;
                if self.dims(a).len() != 2 || self.dims(b).len() != 2 {
                    return Err("Gemm takes 2-D A and B".into());
                }
                let (ta, tb) = (at.int("transA", 0) != 0, at.int("transB", 0) != 0);
                let (alpha, beta) = (at.float("alpha", 1.0), at.float("beta", 1.0));
                let mm_name = if has(2) { format!("{name}.matmul") } else { name.to_string() };
                let mut y = self.add(&mm_name, Op::Matmul { transpose_a: ta, transpose_b: tb }, &[a, b])?;
                if alpha != 1.0 {
                    y = self.add(&format!("{name}.alpha"), Op::Scale { value: alpha }, &[y])?;
                }
                if has(2) {
                    let mut c = self.tensor(input(2), Port::Weight)?;
                    if beta != 1.0 {
                        c = self.add(&format!("{name}.beta"), Op::Scale { value: beta }, &[c])?;
                    }
                    y = self.add(name, Op::Add, &[y, c])?;
                }
                y
            }
            "Conv" => {
                let x = self.tensor(input(0), Port::Data)?;
                let w = self.tensor(input(1), Port::Weight)?;
                let xd = self.dims(x);
                let hw = spatial(&xd, "Conv")?;
                let wd = self.dims(w);
                if wd.len() != 4 {
                    return Err(format!("the weight must be 4-D [Cout, Cin/group, kh, kw], found {wd:?}"));
                }
                let kernel = [wd[2], wd[3]];
                if let Some(k) = at.ints("kernel_shape") {
                    if pair(&k, "kernel_shape")? != kernel {
                        return Err(format!("kernel_shape {k:?} disagrees with the weight {wd:?}"));
                    }
                }
                let stride = pair(&at.ints("strides").unwrap_or(vec![1, 1]), "strides")?;
                let dilation = pair(&at.ints("dilations").unwrap_or(vec![1, 1]), "dilations")?;
                let groups = at.int("group", 1);
                if groups < 1 {
                    return Err(format!("group {groups} must be at least 1"));
                }
                let cv = Conv { dilation, ..Conv::new(stride, [0, 0], groups as u64) };
                // auto_pad pads for the dilated kernel's extent, as ONNX defines it.
                let extent = cv
                    .extent(kernel)
                    .ok_or_else(|| format!("the kernel {kernel:?} dilated by {dilation:?} is too large"))?;
                let (begin, end) = pads(&at, hw, extent, stride)?;
                if begin != end {
                    return Err(format!(
                        "asymmetric convolution padding (begin {begin:?}, end {end:?}) is not supported"
                    ));
                }
                let conv_name = if has(2) { format!("{name}.conv") } else { name.to_string() };
                let op = Op::Conv2d(Conv { padding: begin, ..cv }.into());
                let y = self.add(&conv_name, op, &[x, w])?;
                if has(2) {
                    let b = self.tensor_shaped(input(2), Port::Weight, Some(&[wd[0], 1, 1]))?;
                    self.add(name, Op::Add, &[y, b])?
                } else {
                    y
                }
            }
            "MaxPool" | "AveragePool" => {
                let x = self.tensor(input(0), Port::Data)?;
                let hw = spatial(&self.dims(x), op)?;
                let kernel = pair(&at.ints("kernel_shape").ok_or("kernel_shape is required")?, "kernel_shape")?;
                no_dilation(&at)?;
                let stride = pair(&at.ints("strides").unwrap_or(vec![1, 1]), "strides")?;
                let (begin, mut end) = pads(&at, hw, kernel, stride)?;
                let include_pad = at.int("count_include_pad", 0) != 0;
                if at.int("ceil_mode", 0) != 0 {
                    if op == "AveragePool" && include_pad {
                        return Err("ceil_mode with count_include_pad is not supported".into());
                    }
                    // Extra end padding that the floor formula turns into the ceil
                    // output size; padded positions never win a max or count
                    // in an average without count_include_pad.
                    for i in 0..2 {
                        let span = hw[i].checked_add(begin[i]).and_then(|x| x.checked_add(end[i]));
                        let Some(span) = span.filter(|&x| x >= kernel[i]) else {
                            return Err(format!("the window {kernel:?} does not fit the padded input"));
                        };
                        let mut out = (span - kernel[i]).div_ceil(stride[i]) + 1;
                        // (out - 1) * stride <= span - kernel < 2^64: no overflow below.
                        if (out - 1) * stride[i] >= hw[i] + begin[i] {
                            out -= 1; // the last window would start in the end padding
                        }
                        end[i] = ((out - 1) * stride[i] + kernel[i]).saturating_sub(hw[i] + begin[i]).max(end[i]);
                    }
                }
                let window = Window { kernel, stride, padding: begin, padding_end: end };
                let o = if op == "MaxPool" {
                    Op::MaxPool2d(window.into())
                } else {
                    Op::AvgPool2d { window: window.into(), count_include_pad: include_pad }
                };
                self.add(name, o, &[x])?
            }
            "GlobalAveragePool" => {
                let x = self.tensor(input(0), Port::Data)?;
                let r = self.dims(x).len();
                if r < 3 {
                    return Err(format!("the input must be [N, C, ...], found rank {r}"));
                }
                let axes = (2..r as i64).collect();
                self.add(name, Op::ReduceMean { axes, keepdims: true }, &[x])?
            }
            "GlobalMaxPool" => {
                let x = self.tensor(input(0), Port::Data)?;
                let kernel = spatial(&self.dims(x), op)?;
                let window = Window { kernel, stride: [1, 1], padding: [0, 0], padding_end: [0, 0] };
                self.add(name, Op::MaxPool2d(window.into()), &[x])?
            }
            "BatchNormalization" => {
                if at.int("training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err("only inference-mode BatchNormalization (one output) is supported".into());
                }
                if at.int("spatial", 1) != 1 {
                    return Err("spatial=0 is not supported".into());
                }
                let x = self.tensor(input(0), Port::Data)?;
                let gamma = self.tensor(input(1), Port::Weight)?;
                let beta = self.tensor(input(2), Port::Weight)?;
                let mean = self.tensor(input(3), Port::Stats)?;
                let var = self.tensor(input(4), Port::Stats)?;
                let eps = at.float("epsilon", 1e-5);
                self.add(name, Op::FrozenBatchNorm { eps }, &[x, gamma, beta, mean, var])?
            }
            "LRN" => {
                let x = self.tensor(input(0), Port::Data)?;
                let size = at.int("size", 0);
                if size < 1 {
                    return Err("size is required and must be at least 1".into());
                }
                let o = Op::Lrn {
                    size: size as u64,
                    alpha: at.float("alpha", 1e-4),
                    beta: at.float("beta", 0.75),
                    bias: at.float("bias", 1.0),
                };
                self.add(name, o, &[x])?
            }
            "Concat" => return self.concat(n, &at, name),
            "Reshape" => {
                let shape = self.constant(input(1), "the shape")?.ints().ok_or("the shape must be integers")?;
                let in_dims = self.dims_of(input(0))?;
                let dims = reshape_dims(&in_dims, &shape, at.int("allowzero", 0) != 0)?;
                return self.relayout(input(0), out, name, dims);
            }
            "Flatten" => {
                let d = self.dims_of(input(0))?;
                let a = at.int("axis", 1);
                let a = if a < 0 { a + d.len() as i64 } else { a };
                if a < 0 || a > d.len() as i64 {
                    return Err(format!("axis {} is out of range for rank {}", at.int("axis", 1), d.len()));
                }
                let dims = vec![d[..a as usize].iter().product(), d[a as usize..].iter().product()];
                return self.relayout(input(0), out, name, dims);
            }
            "Unsqueeze" | "Squeeze" => {
                let axes = if self.opset >= 13 && has(1) {
                    Some(self.constant(input(1), "the axes")?.ints().ok_or("the axes must be integers")?)
                } else {
                    at.ints("axes")
                };
                let d = self.dims_of(input(0))?;
                let dims = if op == "Unsqueeze" {
                    let axes = axes.ok_or("the axes are required")?;
                    let r = d.len() + axes.len();
                    let mut pos = axes.iter().map(|&a| resolve_axis(a, r)).collect::<Result<Vec<_>, _>>()?;
                    pos.sort_unstable();
                    let mut src = d.iter();
                    (0..r).map(|i| if pos.contains(&i) { 1 } else { *src.next().unwrap_or(&1) }).collect()
                } else {
                    let drop: Vec<usize> = match axes {
                        Some(a) => a.iter().map(|&x| resolve_axis(x, d.len())).collect::<Result<_, _>>()?,
                        None => (0..d.len()).filter(|&i| d[i] == 1).collect(),
                    };
                    if let Some(&i) = drop.iter().find(|&&i| d[i] != 1) {
                        return Err(format!("cannot squeeze axis {i} of size {}", d[i]));
                    }
                    d.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &x)| x).collect()
                };
                return self.relayout(input(0), out, name, dims);
            }
            "Transpose" => {
                let x = self.tensor(input(0), Port::Data)?;
                let r = self.dims(x).len();
                let perm = match at.ints("perm") {
                    Some(p) => p
                        .iter()
                        .map(|&a| usize::try_from(a).map_err(|_| format!("perm {p:?} is negative")))
                        .collect::<Result<_, _>>()?,
                    None => (0..r).rev().collect(),
                };
                self.add(name, Op::Transpose { perm }, &[x])?
            }
            "Softmax" | "LogSoftmax" => {
                let x = self.tensor(input(0), Port::Data)?;
                let d = self.dims(x);
                let default = if self.opset >= 13 { -1 } else { 1 };
                let a = resolve_axis(at.int("axis", default), d.len())?;
                let make = |axis: i64| {
                    if op == "Softmax" {
                        Op::Softmax { axis, causal: false }
                    } else {
                        Op::LogSoftmax { axis }
                    }
                };
                if self.opset >= 13 || a + 1 == d.len() {
                    self.add(name, make(a as i64), &[x])?
                } else {
                    // Before opset 13 the input is coerced to 2-D at `axis`.
                    let flat = vec![d[..a].iter().product::<u64>() as i64, d[a..].iter().product::<u64>() as i64];
                    let x2 = self.add(&format!("{name}{SOFTMAX_2D}"), Op::Reshape { shape: flat }, &[x])?;
                    let y2 = self.add(&format!("{name}.2d"), make(1), &[x2])?;
                    let back = d.iter().map(|&v| v as i64).collect();
                    self.add(name, Op::Reshape { shape: back }, &[y2])?
                }
            }
            "Dropout" => {
                let x = self.tensor(input(0), Port::Data)?;
                let p = if self.opset >= 12 {
                    if has(1) {
                        self.constant(input(1), "the ratio")?.scalar().ok_or("the ratio must be a scalar")?
                    } else {
                        0.5
                    }
                } else {
                    at.float("ratio", 0.5)
                };
                if n.output.get(1).is_some_and(|m| self.used.contains(m)) {
                    return Err("its mask output is used, and mpc's dropout mask is not ONNX's boolean mask".into());
                }
                if p == 0.0 {
                    x
                } else {
                    self.dropout_seed += 1;
                    self.add(name, Op::Dropout { p, seed: self.dropout_seed - 1 }, &[x])?
                }
            }
            "Constant" => {
                let c = constant_attr(&at)?;
                self.bind(out, Val::C(Rc::new(c), Source::Node));
                return Ok(());
            }
            "ConstantOfShape" => {
                // A fill of a fixed shape (an initializer's) stands in for a
                // weight, as the ONNX zoo's light models write theirs, and
                // trains as the initializer would; one of a computed shape is
                // a run-time fill.
                let source = match self.val(input(0))? {
                    Val::C(_, Source::Initializer) => Source::Initializer,
                    _ => Source::Node,
                };
                let dims = self.constant(input(0), "the shape")?.ints().ok_or("the shape must be integers")?;
                let dims = dims
                    .iter()
                    .map(|&x| u64::try_from(x).map_err(|_| format!("negative dimension in {dims:?}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let (value, float) = match at.get("value").and_then(|a| a.t.as_ref()) {
                    Some(t) => {
                        let c = decode(t)?;
                        (c.scalar().ok_or("value must hold one element")?, c.float)
                    }
                    None => (0.0, true),
                };
                let n = crate::ir::types::Shape(dims.clone())
                    .numel()
                    .ok_or_else(|| format!("the shape {dims:?} has too many elements"))?;
                // Integer constants are folded (shapes, indices): expanded in memory.
                if !float && n > INT_FILL_MAX {
                    return Err(format!(
                        "an integer fill of {n} elements: mpc folds integer constants (shapes, indices) and takes \
                         at most {INT_FILL_MAX}"
                    ));
                }
                self.bind(out, Val::C(Rc::new(Const { dims, data: ConstData::Fill(value), float }), source));
                return Ok(());
            }
            "Shape" => {
                let d = self.dims_of(input(0))?;
                let r = d.len() as i64;
                let clamp = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
                let (s, e) = (clamp(at.int("start", 0)), clamp(at.int("end", r)));
                let v: Vec<i64> = d[s..e.max(s)].iter().map(|&x| x as i64).collect();
                self.bind(out, Val::C(Rc::new(Const::from_ints(vec![v.len() as u64], v)), Source::Node));
                return Ok(());
            }
            "Gather" => return self.gather(n, &at, name),
            "Cast" => {
                let to = at.int("to", 0) as i32;
                let to_float = matches!(to, 1 | 10 | 11 | 16);
                match self.val(input(0))? {
                    Val::C(c, src) => {
                        let c = cast_const(&c, to_float);
                        self.bind(out, Val::C(Rc::new(c), src));
                    }
                    Val::T(v) => {
                        if self.g.ty(v).dtype.is_float() != to_float {
                            return Err("casts between integer and float tensors are not supported".into());
                        }
                        if to != 1 {
                            self.notes.push(format!(
                                "Cast `{name}` to a low type is dropped: mpc's autocast decides precision"
                            ));
                        }
                        self.bind(out, Val::T(v));
                    }
                }
                return Ok(());
            }
            "LayerNormalization" => {
                let x = self.tensor(input(0), Port::Data)?;
                let d = self.dims(x);
                if resolve_axis(at.int("axis", -1), d.len())? + 1 != d.len() {
                    return Err("only normalisation over the last axis is supported".into());
                }
                let gamma = self.tensor(input(1), Port::Weight)?;
                let beta = if has(2) {
                    self.tensor(input(2), Port::Weight)?
                } else {
                    let c = Const { dims: vec![*d.last().unwrap_or(&1)], data: ConstData::Fill(0.0), float: true };
                    // A node of its own, not a name in the model's namespace.
                    self.materialize(&format!("{name}.beta"), &c, Source::Node, Port::Stats, None)?
                };
                let eps = at.float("epsilon", 1e-5);
                self.add(name, Op::LayerNorm { eps }, &[x, gamma, beta])?
            }
            "Gelu" => {
                let x = self.tensor(input(0), Port::Data)?;
                match at.string("approximate").as_deref() {
                    Some("tanh") => self.add(name, Op::Gelu, &[x])?,
                    None | Some("none") => {
                        // 0.5 x (1 + erf(x / sqrt 2)), exactly as the ONNX definition.
                        let s = self.add(
                            &format!("{name}.scaled"),
                            Op::Scale { value: std::f64::consts::FRAC_1_SQRT_2 },
                            &[x],
                        )?;
                        let e = self.add(&format!("{name}.erf"), Op::Erf, &[s])?;
                        let ty = crate::TensorType::scalar(self.g.ty(x).dtype);
                        let one = self.add(&format!("{name}.one"), Op::Constant { value: 1.0, ty }, &[])?;
                        let p = self.add(&format!("{name}.plus1"), Op::Add, &[e, one])?;
                        let h = self.add(&format!("{name}.half"), Op::Scale { value: 0.5 }, &[x])?;
                        self.add(name, Op::Mul, &[h, p])?
                    }
                    Some(other) => return Err(format!("approximate `{other}` is not `none` or `tanh`")),
                }
            }
            // The op table's `Onnx::Direct` ops with one input (relu, exp, ...).
            other => match direct(other) {
                Some(o) if o.info().arity() == (1, 1) => {
                    let x = self.tensor(input(0), Port::Data)?;
                    self.add(name, o, &[x])?
                }
                _ => return Err(format!("no conversion for {other}")),
            },
        };
        self.bind(out, Val::T(v));
        Ok(())
    }

    /// Dims of a value, tensor or constant.
    fn dims_of(&self, name: &str) -> Result<Vec<u64>, String> {
        Ok(match self.val(name)? {
            Val::T(v) => self.dims(v),
            Val::C(c, _) => c.dims.clone(),
        })
    }

    /// A reshape: folded on constants, a `reshape` node on tensors.
    fn relayout(&mut self, input: &'m str, out: &'m str, name: &str, dims: Vec<u64>) -> Result<(), String> {
        let v = match self.val(input)? {
            Val::C(c, src) => Val::C(Rc::new(Const { dims, data: c.data.clone(), float: c.float }), src),
            Val::T(x) => {
                if self.dims(x) == dims {
                    Val::T(x)
                } else {
                    let shape = dims.iter().map(|&d| d as i64).collect();
                    Val::T(self.add(name, Op::Reshape { shape }, &[x])?)
                }
            }
        };
        self.bind(out, v);
        Ok(())
    }

    fn binary(&mut self, n: &'m NodeProto, op: &str, name: &str) -> Result<(), String> {
        let (a, b) =
            (n.input.first().map(String::as_str).unwrap_or(""), n.input.get(1).map(String::as_str).unwrap_or(""));
        let out = n.output.first().map(String::as_str).unwrap_or("");
        let (va, vb) = (self.val(a)?, self.val(b)?);
        if let (Val::C(ca, _), Val::C(cb, _)) = (&va, &vb) {
            let c = fold_binary(ca, cb, op)?;
            self.bind(out, Val::C(Rc::new(c), Source::Node));
            return Ok(());
        }
        // x * c and x / c with one scalar constant: a `scale` node, no tensor.
        let scalar = |v: &Val| match v {
            Val::C(c, _) if c.float => c.scalar(),
            _ => None,
        };
        let scale = match (op, scalar(&va), scalar(&vb)) {
            ("Mul", Some(c), None) => Some((b, c)),
            ("Mul", None, Some(c)) => Some((a, c)),
            ("Div", None, Some(c)) if c != 0.0 => Some((a, 1.0 / c)),
            _ => None,
        };
        if let Some((x, value)) = scale {
            let x = self.tensor(x, Port::Data)?;
            let v = self.add(name, Op::Scale { value }, &[x])?;
            self.bind(out, Val::T(v));
            return Ok(());
        }
        let x = self.tensor_of(a, va, Port::Data, None)?;
        let y = self.tensor_of(b, vb, Port::Data, None)?;
        let o = direct(op).ok_or_else(|| format!("no conversion for {op}"))?;
        let v = self.add(name, o, &[x, y])?;
        self.bind(out, Val::T(v));
        Ok(())
    }

    fn concat(&mut self, n: &'m NodeProto, at: &Attrs, name: &str) -> Result<(), String> {
        let out = n.output.first().map(String::as_str).unwrap_or("");
        let first = n.input.first().ok_or("Concat needs at least one input")?;
        let vals = n.input.iter().map(|i| self.val(i)).collect::<Result<Vec<_>, _>>()?;
        let rank = self.dims_of(first)?.len();
        let ax = resolve_axis(at.int("axis", 0), rank.max(1))?;
        if vals.iter().all(|v| matches!(v, Val::C(c, _) if !c.float)) {
            // Shape arithmetic: 1-D integer constants.
            let mut all = Vec::new();
            for v in &vals {
                if let Val::C(c, _) = v {
                    if c.dims.len() != 1 {
                        return Err("only 1-D integer constants are concatenated at import".into());
                    }
                    all.extend(c.ints().unwrap_or_default());
                }
            }
            self.bind(out, Val::C(Rc::new(Const::from_ints(vec![all.len() as u64], all)), Source::Node));
            return Ok(());
        }
        let xs = n.input.iter().map(|i| self.tensor(i, Port::Data)).collect::<Result<Vec<_>, _>>()?;
        let v = if xs.len() == 1 { xs[0] } else { self.add(name, Op::Concat { axis: ax as i64 }, &xs)? };
        self.bind(out, Val::T(v));
        Ok(())
    }

    fn gather(&mut self, n: &'m NodeProto, at: &Attrs, name: &str) -> Result<(), String> {
        let input = |k: usize| n.input.get(k).map(String::as_str).unwrap_or("");
        let out = n.output.first().map(String::as_str).unwrap_or("");
        let data_dims = self.dims_of(input(0))?;
        let ax = resolve_axis(at.int("axis", 0), data_dims.len())?;
        match (self.val(input(0))?, self.val(input(1))?) {
            (Val::C(data, src), Val::C(idx, _)) => {
                let ids = idx.ints().ok_or("the indices must be integers")?;
                let c = gather_const(&data, &ids, &idx.dims, ax)?;
                self.bind(out, Val::C(Rc::new(c), src));
                Ok(())
            }
            (_, Val::T(ids)) if ax == 0 && data_dims.len() == 2 => {
                let table = self.tensor(input(0), Port::Weight)?;
                let v = self.add(name, Op::Embedding, &[table, ids])?;
                self.bind(out, Val::T(v));
                Ok(())
            }
            _ => Err("only constant folding and embedding lookups (axis 0 of a 2-D table) are supported".into()),
        }
    }
}

/// The most elements of an integer ConstantOfShape (integer constants are
/// expanded to be folded; they are shapes and indices, never this large).
const INT_FILL_MAX: u64 = 1 << 24;

fn reshape_dims(input: &[u64], shape: &[i64], allowzero: bool) -> Result<Vec<u64>, String> {
    let total: u64 = input.iter().product();
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allowzero => {
                dims.push(*input.get(i).ok_or(format!("shape {shape:?}: 0 at {i} copies no input dim"))?)
            }
            s if s >= 0 => dims.push(s as u64),
            _ => return Err(format!("shape {shape:?} is not a valid reshape target")),
        }
    }
    let known = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?}: its size overflows"))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {shape:?}"));
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(format!("cannot reshape {input:?} ({total} elements) to {shape:?}"));
    }
    Ok(dims)
}

fn constant_attr(at: &Attrs) -> Result<Const, String> {
    if let Some(t) = at.get("value").and_then(|a| a.t.as_ref()) {
        return decode(t);
    }
    if let Some(a) = at.get("value_float") {
        return Ok(Const { dims: vec![], data: ConstData::F32(vec![a.f.unwrap_or(0.0)]), float: true });
    }
    if let Some(a) = at.get("value_floats") {
        return Ok(Const { dims: vec![a.floats.len() as u64], data: ConstData::F32(a.floats.clone()), float: true });
    }
    if let Some(a) = at.get("value_int") {
        return Ok(Const::from_ints(vec![], vec![a.i.unwrap_or(0)]));
    }
    if let Some(a) = at.get("value_ints") {
        return Ok(Const::from_ints(vec![a.ints.len() as u64], a.ints.clone()));
    }
    Err("only tensor, float(s) and int(s) constants are supported".into())
}

fn cast_const(c: &Const, to_float: bool) -> Const {
    let data = match (&*c.data.unpacked(), to_float) {
        (ConstData::I64(v), true) => ConstData::F32(v.iter().map(|&x| x as f32).collect()),
        (ConstData::F32(v), false) => ConstData::I64(v.iter().map(|&x| x as i64).collect()),
        (ConstData::Fill(x), false) => ConstData::Fill(x.trunc()),
        (d, _) => d.clone(),
    };
    Const { dims: c.dims.clone(), data, float: to_float }
}

/// Integer shape arithmetic on constants (same shape, or one scalar).
fn fold_binary(a: &Const, b: &Const, op: &str) -> Result<Const, String> {
    let (Some(x), Some(y)) = (a.ints(), b.ints()) else {
        return Err("arithmetic on two float constants is not folded; make one an input".into());
    };
    let n = x.len().max(y.len());
    if x.is_empty() != y.is_empty() || !(x.len() == y.len() || x.len() == 1 || y.len() == 1) {
        return Err(format!("constants of shapes {:?} and {:?} do not broadcast", a.dims, b.dims));
    }
    let at = |v: &[i64], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (p, q) = (at(&x, i), at(&y, i));
        out.push(match op {
            "Add" => p.wrapping_add(q),
            "Sub" => p.wrapping_sub(q),
            "Mul" => p.wrapping_mul(q),
            _ => p.checked_div(q).ok_or("integer division by zero in a constant")?,
        });
    }
    let dims = if x.len() >= y.len() { a.dims.clone() } else { b.dims.clone() };
    Ok(Const::from_ints(dims, out))
}

/// The op a table-driven (`Onnx::Direct`) ONNX type converts to.
fn direct(op_type: &str) -> Option<Op> {
    crate::ir::opinfo::from_onnx(op_type).and_then(Op::plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_targets_follow_onnx() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(reshape_dims(&[1, 1024, 1, 1], &[1, -1], false).unwrap(), vec![1, 1024]);
        assert!(reshape_dims(&[2, 3], &[4, -1], false).is_err());
        assert!(reshape_dims(&[2, 3], &[-1, -1], false).is_err());
    }

    #[test]
    fn gathers_fold() {
        let d = Const::from_ints(vec![4], vec![1, 3, 224, 224]);
        let g = gather_const(&d, &[0], &[], 0).unwrap();
        assert_eq!((g.dims.clone(), g.ints()), (vec![], Some(vec![1])));
        let g = gather_const(&d, &[-1, 1], &[2], 0).unwrap();
        assert_eq!(g.ints(), Some(vec![224, 3]));
        assert!(gather_const(&d, &[4], &[], 0).is_err());
    }
}
