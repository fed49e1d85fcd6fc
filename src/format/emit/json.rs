//! Graph -> the JSON file format; `parse(emit(g)) == g`.
//!
//! [`write`](fn@write) streams the file: each item is serialised straight to the
//! writer as its turn comes, so emitting a graph of millions of nodes holds
//! one item at a time, not a `serde_json::Value` tree of the whole file and
//! the text (together 9.9 GB for a graph of 6 M nodes). [`to_raw`] is the
//! same file as one serde value, for callers that want it.

use std::io::{self, Write};

use crate::format::attrs::op_to_raw;
use crate::format::{RawGraph, RawNode, RawState, RawTensor, FORMAT_VERSION};
use crate::ir::graph::{Graph, Node};
use crate::ir::op::{Op, Role};
use crate::NodeId;

fn ishape(t: &crate::TensorType) -> Vec<i64> {
    t.shape.dims().iter().map(|&d| d as i64).collect()
}

/// The file's sections, each a list of nodes in topological order. A graph
/// with a cycle is written in index order.
#[derive(Default)]
struct Sections {
    inputs: Vec<NodeId>,
    params: Vec<NodeId>,
    state: Vec<NodeId>,
    forward: Vec<NodeId>,
    backward: Vec<NodeId>,
    update: Vec<NodeId>,
}

impl Sections {
    fn of(g: &Graph) -> Sections {
        let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
        let mut s = Sections::default();
        for id in order {
            let n = g.node(id);
            let section = match (&n.op, n.role) {
                (Op::Input { .. }, _) => &mut s.inputs,
                (Op::Param { .. }, _) => &mut s.params,
                (Op::State { .. }, _) => &mut s.state,
                (_, Role::Forward) => &mut s.forward,
                (_, Role::Backward) => &mut s.backward,
                (_, Role::Optimizer | Role::Scaler) => &mut s.update,
            };
            section.push(id);
        }
        s
    }
}

fn raw_tensor(n: &Node) -> RawTensor {
    match &n.op {
        Op::Input { ty } => RawTensor { name: n.name.clone(), shape: ishape(ty), dtype: ty.dtype },
        _ => unreachable!("only inputs are in the inputs section"),
    }
}

fn raw_state(n: &Node) -> RawState {
    match &n.op {
        Op::Param { ty, init } | Op::State { ty, init } => {
            RawState { name: n.name.clone(), shape: ishape(ty), dtype: ty.dtype, init: Some(init.clone()) }
        }
        _ => unreachable!("only params and state are in their sections"),
    }
}

/// Whether a node's outputs have the names it gets by default (`name`,
/// `name:1`, ...), so the file need not list them. Allocates nothing.
fn default_names(n: &Node) -> bool {
    // `default_output_names` gives a node of no outputs its name all the same.
    !n.outputs.is_empty()
        && n.output_names().enumerate().all(|(k, o)| match k {
            0 => o == n.name,
            k => o
                .strip_prefix(n.name.as_str())
                .and_then(|r| r.strip_prefix(':'))
                .is_some_and(|r| r.parse::<usize>().is_ok_and(|i| i == k) && !r.starts_with(['0', '+'])),
        })
}

fn raw_node(g: &Graph, id: NodeId) -> RawNode {
    let mut rn = RawNode::default();
    fill_raw_node(g, id, &mut rn);
    rn
}

/// Makes `rn` the file's form of node `id`, reusing the strings it holds
/// (the streamed emitter fills one `RawNode` per node of the graph).
fn fill_raw_node(g: &Graph, id: NodeId, rn: &mut RawNode) {
    let n = g.node(id);
    let mut name = std::mem::take(&mut rn.name);
    name.clear();
    name.push_str(&n.name);
    let mut inputs = std::mem::take(&mut rn.inputs);
    let values = g.inputs(id);
    inputs.truncate(values.len());
    for (k, &v) in values.iter().enumerate() {
        match inputs.get_mut(k) {
            Some(s) => {
                s.clear();
                s.push_str(g.value_name(v));
            }
            None => inputs.push(g.value_name(v).to_string()),
        }
    }
    *rn = RawNode {
        name,
        op: n.op.kind(),
        inputs,
        outputs: (!default_names(n)).then(|| n.output_names().map(str::to_string).collect()),
        role: (n.role == Role::Scaler).then_some(Role::Scaler),
        precision: n.precision,
        ..RawNode::default()
    };
    op_to_raw(&n.op, rn);
}

/// `(node name, value name)` pairs, sorted by node name (the file's maps
/// are `BTreeMap`s; with a repeated key the last pair wins, as there).
fn named<'g>(g: &'g Graph, pairs: &[(NodeId, crate::ValueId)]) -> Vec<(&'g str, &'g str)> {
    let mut v: Vec<(&str, &str)> = pairs.iter().map(|&(n, val)| (g.node(n).name.as_str(), g.value_name(val))).collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    let mut out: Vec<(&str, &str)> = Vec::with_capacity(v.len());
    for p in v {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    out
}

/// The file's serde form of a graph. Nodes go to the section of their role,
/// in topological order. A graph with a cycle is written in index order.
pub fn to_raw(g: &Graph) -> RawGraph {
    let s = Sections::of(g);
    let nodes = |ids: &[NodeId]| ids.iter().map(|&id| Box::new(raw_node(g, id))).collect::<Vec<_>>();
    let map = |pairs| named(g, pairs).into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    RawGraph {
        format: FORMAT_VERSION.to_string(),
        name: g.name.clone(),
        inputs: s.inputs.iter().map(|&id| raw_tensor(g.node(id))).collect(),
        params: s.params.iter().map(|&id| raw_state(g.node(id))).collect(),
        state: s.state.iter().map(|&id| raw_state(g.node(id))).collect(),
        forward: nodes(&s.forward),
        loss: g.loss.map(|v| g.value_name(v).to_string()).unwrap_or_default(),
        backward: (!s.backward.is_empty() || !g.gradients.is_empty()).then(|| nodes(&s.backward)),
        gradients: map(&g.gradients),
        update: nodes(&s.update),
        updates: map(&g.updates),
        outputs: g.outputs.iter().map(|&v| g.value_name(v).to_string()).collect(),
        optimizer: g.optimizer.clone(),
        weights: g.weights.clone(),
    }
}

/// Pretty JSON with one node per line, so a diff of two graphs reads like a
/// diff of code.
pub fn to_string(g: &Graph) -> String {
    let mut out = Vec::with_capacity(128 * g.node_count());
    write(g, &mut out).expect("writing to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Writes [`to_string`]'s text to `w`, one item at a time (give it a
/// buffered writer). The fields are [`RawGraph`]'s, in its order and with
/// its omissions.
pub fn write(g: &Graph, w: impl Write) -> io::Result<()> {
    // Nodes per block: enough to amortise a task (a line takes about 0.3 µs).
    write_in_blocks(g, w, 8192)
}

/// [`write`](fn@write), a section's nodes made in blocks of `block` on all
/// cores when it has two blocks or more.
fn write_in_blocks(g: &Graph, w: impl Write, block: usize) -> io::Result<()> {
    let s = Sections::of(g);
    let mut top = Top { w, first: true, line: Vec::with_capacity(256), block };
    let mut rn = RawNode::default();
    top.w.write_all(b"{\n")?;
    top.small("format", &FORMAT_VERSION)?;
    top.small("name", &g.name)?;
    top.items("inputs", &s.inputs, |id| raw_tensor(g.node(id)))?;
    top.items("params", &s.params, |id| raw_state(g.node(id)))?;
    if !s.state.is_empty() {
        top.items("state", &s.state, |id| raw_state(g.node(id)))?;
    }
    top.nodes("forward", &s.forward, g, &mut rn)?;
    top.small("loss", &g.loss.map(|v| g.value_name(v)).unwrap_or_default())?;
    if !s.backward.is_empty() || !g.gradients.is_empty() {
        top.nodes("backward", &s.backward, g, &mut rn)?;
    }
    if !g.gradients.is_empty() {
        top.map("gradients", &named(g, &g.gradients))?;
    }
    if !s.update.is_empty() {
        top.nodes("update", &s.update, g, &mut rn)?;
    }
    if !g.updates.is_empty() {
        top.map("updates", &named(g, &g.updates))?;
    }
    if !g.outputs.is_empty() {
        top.items("outputs", &g.outputs, |v| g.value_name(v))?;
    }
    if let Some(o) = &g.optimizer {
        top.small("optimizer", o)?;
    }
    if let Some(weights) = &g.weights {
        top.small("weights", weights)?;
    }
    top.w.write_all(b"\n}\n")
}

/// The top-level object: fields on their own lines, array items and the
/// entries of an object of two or more one per line, anything else compact.
struct Top<W> {
    w: W,
    first: bool,
    /// One item's line, made in memory and written whole: the writer (a
    /// `dyn Write` from the caller) then sees a call per line, not per token.
    line: Vec<u8>,
    /// Nodes per block of a section made in parallel.
    block: usize,
}

impl<W: Write> Top<W> {
    fn key(&mut self, key: &str) -> io::Result<()> {
        if !self.first {
            self.w.write_all(b",\n")?;
        }
        self.first = false;
        write!(self.w, "  \"{key}\": ")
    }

    /// An array field, each item written by `item` into the line buffer.
    fn array<T: Copy>(
        &mut self,
        key: &str,
        ids: &[T],
        mut item: impl FnMut(T, &mut Vec<u8>) -> serde_json::Result<()>,
    ) -> io::Result<()> {
        self.key(key)?;
        if ids.is_empty() {
            return self.w.write_all(b"[]");
        }
        self.w.write_all(b"[\n")?;
        for (j, &id) in ids.iter().enumerate() {
            self.line.clear();
            self.line.extend_from_slice(b"    ");
            item(id, &mut self.line)?;
            self.line.extend_from_slice(if j + 1 < ids.len() { b",\n" } else { b"\n" });
            self.w.write_all(&self.line)?;
        }
        self.w.write_all(b"  ]")
    }

    /// An array field, its items made one at a time by `item`.
    fn items<T: Copy, S: serde::Serialize>(&mut self, key: &str, ids: &[T], item: impl Fn(T) -> S) -> io::Result<()> {
        self.array(key, ids, |id, line| serde_json::to_writer(line, &item(id)))
    }

    /// A section of op nodes. Their lines are made in blocks, the blocks of
    /// a window on all cores at once (a node's line depends only on the
    /// graph), and written in order: the file is the same as one made a
    /// node at a time.
    fn nodes(&mut self, key: &str, ids: &[NodeId], g: &Graph, rn: &mut RawNode) -> io::Result<()> {
        use rayon::prelude::*;
        let size = self.block;
        if ids.len() < size.saturating_mul(2) {
            return self.array(key, ids, |id, line| {
                fill_raw_node(g, id, rn);
                serde_json::to_writer(line, &*rn)
            });
        }
        self.key(key)?;
        self.w.write_all(b"[\n")?;
        let last = ids.len() - 1;
        let block =
            |rn: &mut RawNode, (b, block): (usize, &[NodeId]), mut out: Vec<u8>| -> serde_json::Result<Vec<u8>> {
                for (k, &id) in block.iter().enumerate() {
                    out.extend_from_slice(b"    ");
                    fill_raw_node(g, id, rn);
                    serde_json::to_writer(&mut out, &*rn)?;
                    out.extend_from_slice(if b * size + k < last { b",\n" } else { b"\n" });
                }
                Ok(out)
            };
        let blocks: Vec<(usize, &[NodeId])> = ids.chunks(size).enumerate().collect();
        let make = |window: &[(usize, &[NodeId])], bufs: Vec<Vec<u8>>| -> Vec<serde_json::Result<Vec<u8>>> {
            window.par_iter().zip(bufs).map_init(RawNode::default, |rn, (&b, buf)| block(rn, b, buf)).collect()
        };
        // A few blocks per core at a time (the text held is a few MB, not the
        // section's), each window made while this thread writes the last one
        // (the writes are mostly the kernel's time, filling the page cache).
        // The blocks' buffers go round: fresh ones would be fresh pages.
        let w = &mut self.w;
        let per_window = 4 * rayon::current_num_threads();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        std::thread::scope(|scope| -> io::Result<()> {
            let mut made: Option<Vec<serde_json::Result<Vec<u8>>>> = None;
            for window in blocks.chunks(per_window) {
                let bufs: Vec<Vec<u8>> =
                    (0..window.len()).map(|_| spare.pop().unwrap_or_else(|| Vec::with_capacity(size * 128))).collect();
                let next = scope.spawn(|| make(window, bufs));
                for text in made.take().into_iter().flatten() {
                    let mut text = text?;
                    w.write_all(&text)?;
                    text.clear();
                    spare.push(text);
                }
                made = Some(next.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            for text in made.into_iter().flatten() {
                w.write_all(&text?)?;
            }
            Ok(())
        })?;
        self.w.write_all(b"  ]")
    }

    /// A map of names to names.
    fn map(&mut self, key: &str, pairs: &[(&str, &str)]) -> io::Result<()> {
        self.key(key)?;
        if let [(k, v)] = pairs {
            // One entry: compact, as any object of fewer than two.
            self.w.write_all(b"{")?;
            self.string(k)?;
            self.w.write_all(b":")?;
            self.string(v)?;
            return self.w.write_all(b"}");
        }
        self.w.write_all(b"{\n")?;
        for (j, (k, v)) in pairs.iter().enumerate() {
            self.w.write_all(b"    ")?;
            self.string(k)?;
            self.w.write_all(b": ")?;
            self.string(v)?;
            self.w.write_all(if j + 1 < pairs.len() { b",\n" } else { b"\n" })?;
        }
        self.w.write_all(b"  }")
    }

    /// A field of a few bytes, through a `serde_json::Value`: an object of
    /// two or more entries one per line, anything else compact.
    fn small(&mut self, key: &str, value: &impl serde::Serialize) -> io::Result<()> {
        self.key(key)?;
        match serde_json::to_value(value)? {
            serde_json::Value::Object(m) if m.len() > 1 => {
                self.w.write_all(b"{\n")?;
                for (j, (k, v)) in m.iter().enumerate() {
                    self.w.write_all(b"    ")?;
                    self.string(k)?;
                    write!(self.w, ": {v}")?;
                    self.w.write_all(if j + 1 < m.len() { b",\n" } else { b"\n" })?;
                }
                self.w.write_all(b"  }")
            }
            v => write!(self.w, "{v}"),
        }
    }

    /// A string as a JSON string literal.
    fn string(&mut self, s: &str) -> io::Result<()> {
        Ok(serde_json::to_writer(&mut self.w, s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks made in parallel, windows and spare buffers included, give
    /// the text made a node at a time, to the byte.
    #[test]
    fn blocks_made_in_parallel_give_the_same_text() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ir-examples");
        let text = std::fs::read_to_string(dir.join("gpt_block.json")).unwrap();
        let mut g = crate::parse_str(&text).unwrap();
        crate::passes::lower(&mut g, &crate::passes::Options::default()).unwrap();
        let made = |block| {
            let mut out = Vec::new();
            write_in_blocks(&g, &mut out, block).unwrap();
            String::from_utf8(out).unwrap()
        };
        let one_at_a_time = made(usize::MAX);
        assert!(one_at_a_time.lines().count() > 200);
        for block in [1, 2, 7, 64] {
            assert_eq!(made(block), one_at_a_time, "blocks of {block}");
        }
        assert_eq!(to_string(&g), one_at_a_time);
    }
}
