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

/// The file's sections, in file order.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Section {
    Inputs,
    Params,
    State,
    Forward,
    Backward,
    Update,
}

/// The nodes in topological order (a graph with a cycle: index order) and
/// each node's section: a section's nodes are the order's nodes of that
/// section. Not a list per section as well: that is the order's size
/// again (24 MB of a lowered 10^6-op graph's 6 M nodes, at the peak).
struct Sections {
    order: Vec<NodeId>,
    /// By node index.
    section: Vec<Section>,
    counts: [usize; 6],
}

impl Sections {
    fn of(g: &Graph) -> Sections {
        let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
        let mut section = vec![Section::Update; order.iter().map(|id| id.index() + 1).max().unwrap_or(0)];
        let mut counts = [0; 6];
        for &id in &order {
            let n = g.node(id);
            let s = match (n.op(), n.role()) {
                (Op::Input { .. }, _) => Section::Inputs,
                (Op::Param { .. }, _) => Section::Params,
                (Op::State { .. }, _) => Section::State,
                (_, Role::Forward) => Section::Forward,
                (_, Role::Backward) => Section::Backward,
                (_, Role::Optimizer | Role::Scaler) => Section::Update,
            };
            section[id.index()] = s;
            counts[s as usize] += 1;
        }
        Sections { order, section, counts }
    }

    /// The nodes of section `s`, in order.
    fn ids(&self, s: Section) -> impl Iterator<Item = NodeId> + '_ {
        self.order.iter().copied().filter(move |id| self.section[id.index()] == s)
    }

    fn len(&self, s: Section) -> usize {
        self.counts[s as usize]
    }
}

fn raw_tensor(n: Node) -> RawTensor {
    match n.op() {
        Op::Input { ty } => RawTensor { name: n.name().to_string(), shape: ishape(ty), dtype: ty.dtype },
        _ => unreachable!("only inputs are in the inputs section"),
    }
}

fn raw_state(n: Node) -> RawState {
    match n.op() {
        Op::Param { ty, init } | Op::State { ty, init } => {
            RawState { name: n.name().to_string(), shape: ishape(ty), dtype: ty.dtype, init: Some(init.clone()) }
        }
        _ => unreachable!("only params and state are in their sections"),
    }
}

/// Whether a node's outputs have the names it gets by default (`name`,
/// `name:1`, ...), so the file need not list them. Allocates nothing.
fn default_names(n: Node) -> bool {
    // `default_output_names` gives a node of no outputs its name all the same.
    n.num_outputs() != 0
        && n.output_names().enumerate().all(|(k, o)| match k {
            0 => o == n.name(),
            k => o
                .strip_prefix(n.name())
                .and_then(|r| r.strip_prefix(':'))
                .is_some_and(|r| r.parse::<usize>().is_ok_and(|i| i == k) && !r.starts_with(['0', '+'])),
        })
}

fn raw_node(g: &Graph, id: NodeId) -> RawNode {
    let mut rn = RawNode::default();
    fill_raw_node(g, id, &mut rn, &g.inputs(id));
    rn
}

/// What [`node_line`] reuses from one line to the next.
#[derive(Default)]
struct Scratch {
    rn: RawNode,
    line: Vec<u8>,
    /// By op kind, the last nameless line made for a node with default
    /// output names, and what it was made from: the nodes of a model
    /// repeat, and serializing a `RawNode` was a fifth of the emitter's time.
    last: Vec<Option<Rest>>,
}

/// A nameless node line and what it depends on besides the name and inputs.
struct Rest {
    op: crate::Op,
    scaler: bool,
    precision: Option<crate::ir::op::Precision>,
    line: Vec<u8>,
    /// Where the op's string ends in `line`.
    head: usize,
}

impl Rest {
    fn fits(&self, n: Node) -> bool {
        self.op == *n.op() && self.scaler == (n.role() == Role::Scaler) && self.precision == n.precision()
    }
}

/// The start of serde_json's line of a `RawNode` whose name is empty.
const NAMELESS: &[u8] = b"{\"name\":\"\"";

/// Appends node `id`'s line (without indent or separator) to `out`, as
/// serde_json writes [`raw_node`]'s.
///
/// The node's name and input names are written straight from the graph, not
/// copied into the strings of a `RawNode`: the rest of the line is serde's
/// for the node with neither, which starts `{"name":"","op":"<kind>"`, and
/// `inputs` comes right after `op` in `RawNode`'s fields. (`found_inf`'s
/// 667 K input names as strings were 60 MB of the peak at 10^6 ops.)
fn node_line(g: &Graph, id: NodeId, s: &mut Scratch, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let n = g.node(id);
    let kind = n.op().kind() as usize;
    let plain = default_names(n);
    if let Some(Some(rest)) = s.last.get(kind) {
        if plain && rest.fits(n) {
            return finish_line(g, id, &rest.line, rest.head, out);
        }
    }
    let mut name = std::mem::take(&mut s.rn.name);
    name.clear();
    let mut inputs = std::mem::take(&mut s.rn.inputs);
    inputs.clear();
    fill_raw_rest(n, &mut s.rn, name, inputs);
    s.line.clear();
    serde_json::to_writer(&mut s.line, &s.rn)?;
    let Some(head) = op_end(&s.line) else {
        // Not the layout expected: the line as strings after all.
        fill_raw_node(g, id, &mut s.rn, &g.inputs(id));
        return serde_json::to_writer(out, &s.rn);
    };
    finish_line(g, id, &s.line, head, out)?;
    if plain {
        if s.last.len() <= kind {
            s.last.resize_with(kind + 1, || None);
        }
        let line = std::mem::take(&mut s.line);
        let rest = Rest { op: n.op().clone(), scaler: n.role() == Role::Scaler, precision: n.precision(), line, head };
        if let Some(old) = s.last[kind].replace(rest) {
            s.line = old.line;
        }
    }
    Ok(())
}

/// Appends node `id`'s line, made of its nameless line `line` (whose op
/// string ends at `head`), its name and its inputs' names.
fn finish_line(g: &Graph, id: NodeId, line: &[u8], head: usize, out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"name\":");
    put_str(out, g.node(id).name())?;
    out.extend_from_slice(&line[NAMELESS.len()..head]);
    let ins = g.inputs(id);
    if !ins.is_empty() {
        out.extend_from_slice(b",\"inputs\":[");
        for (k, &v) in ins.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            put_str(out, g.value_name(v))?;
        }
        out.push(b']');
    }
    out.extend_from_slice(&line[head..]);
    Ok(())
}

/// Appends `s` as the JSON string literal serde_json writes: as it is,
/// in quotes, when nothing in it needs an escape (the usual name), which
/// is a copy rather than serde's byte-by-byte walk (4 % of the samples of
/// a 10^6-op run went to that walk, and a map's strings went through the
/// writer a token at a time).
fn put_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(out, s)
}

/// Where the op's string ends in serde_json's line of a nameless `RawNode`
/// (an op kind's name needs no escapes), if the line starts as expected.
fn op_end(line: &[u8]) -> Option<usize> {
    let rest = line.strip_prefix(NAMELESS)?.strip_prefix(b",\"op\":\"")?;
    let quote = rest.iter().position(|&b| b == b'"')?;
    Some(line.len() - rest.len() + quote + 1)
}

/// Makes `rn` the file's form of node `id`, reusing the strings it holds.
fn fill_raw_node(g: &Graph, id: NodeId, rn: &mut RawNode, values: &[crate::ValueId]) {
    let n = g.node(id);
    let mut name = std::mem::take(&mut rn.name);
    name.clear();
    name.push_str(n.name());
    let mut inputs = std::mem::take(&mut rn.inputs);
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
    fill_raw_rest(n, rn, name, inputs);
}

/// Makes `rn` the file's form of node `n` with the `name` and `inputs` given.
fn fill_raw_rest(n: Node, rn: &mut RawNode, name: String, inputs: Vec<String>) {
    *rn = RawNode {
        name,
        op: n.op().kind(),
        inputs,
        outputs: (!default_names(n)).then(|| n.output_names().map(str::to_string).collect()),
        role: (n.role() == Role::Scaler).then_some(Role::Scaler),
        precision: n.precision(),
        ..RawNode::default()
    };
    op_to_raw(n.op(), rn);
}

/// A map of the file (`gradients`, `updates`): `pairs` by node name, the
/// value's name looked up as each is written.
struct Named<'g> {
    g: &'g Graph,
    pairs: &'g [(NodeId, crate::ValueId)],
    /// Node names with their pair's index, sorted by name; of pairs with
    /// one name only the last is kept, as in the file's `BTreeMap`s. Not
    /// pairs of strings and a deduplicated copy: 24 bytes a pair, not 64.
    keys: Vec<(&'g str, u32)>,
}

impl<'g> Named<'g> {
    fn of(g: &'g Graph, pairs: &'g [(NodeId, crate::ValueId)]) -> Named<'g> {
        let mut keys: Vec<(u64, &str, u32)> = pairs
            .iter()
            .enumerate()
            .map(|(i, &(n, _))| {
                let name = g.node(n).name();
                (prefix(name), name, i as u32)
            })
            .collect();
        // By name, then by place: the last of a name ends its run. The
        // prefix decides most comparisons without reading the names, which
        // lie in nodes all over the graph (at 10^6 ops, sorting the names
        // themselves was a quarter of the emitter's time).
        keys.sort_unstable();
        keys.dedup_by(|next, kept| {
            let same = next.1 == kept.1;
            if same {
                *kept = *next;
            }
            same
        });
        Named { g, pairs, keys: keys.into_iter().map(|(_, name, i)| (name, i)).collect() }
    }

    fn iter(&self) -> impl ExactSizeIterator<Item = (&'g str, &'g str)> + '_ {
        debug_assert!(self.keys.is_sorted_by(|a, b| a.0 < b.0));
        self.keys.iter().map(|&(k, i)| (k, self.g.value_name(self.pairs[i as usize].1)))
    }
}

/// The first 8 bytes of `s`, zero-padded, as a number: where two prefixes
/// differ they order as the strings do (a string that ends first pads with
/// zeros, and is a prefix of the other where the other's byte is nonzero).
fn prefix(s: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = s.len().min(8);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// The file's serde form of a graph. Nodes go to the section of their role,
/// in topological order. A graph with a cycle is written in index order.
pub fn to_raw(g: &Graph) -> RawGraph {
    let s = Sections::of(g);
    let nodes = |section| s.ids(section).map(|id| Box::new(raw_node(g, id))).collect::<Vec<_>>();
    let map = |pairs| Named::of(g, pairs).iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    RawGraph {
        format: FORMAT_VERSION.to_string(),
        name: g.name.clone(),
        inputs: s.ids(Section::Inputs).map(|id| raw_tensor(g.node(id))).collect(),
        params: s.ids(Section::Params).map(|id| raw_state(g.node(id))).collect(),
        state: s.ids(Section::State).map(|id| raw_state(g.node(id))).collect(),
        forward: nodes(Section::Forward),
        loss: g.loss.map(|v| g.value_name(v).to_string()).unwrap_or_default(),
        backward: (s.len(Section::Backward) > 0 || !g.gradients.is_empty()).then(|| nodes(Section::Backward)),
        gradients: map(&g.gradients),
        update: nodes(Section::Update),
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
    let mut scratch = Scratch::default();
    top.w.write_all(b"{\n")?;
    top.small("format", &FORMAT_VERSION)?;
    top.small("name", &g.name)?;
    top.items("inputs", &s, Section::Inputs, |id| raw_tensor(g.node(id)))?;
    top.items("params", &s, Section::Params, |id| raw_state(g.node(id)))?;
    if s.len(Section::State) > 0 {
        top.items("state", &s, Section::State, |id| raw_state(g.node(id)))?;
    }
    top.nodes("forward", &s, Section::Forward, g, &mut scratch)?;
    top.small("loss", &g.loss.map(|v| g.value_name(v)).unwrap_or_default())?;
    if s.len(Section::Backward) > 0 || !g.gradients.is_empty() {
        top.nodes("backward", &s, Section::Backward, g, &mut scratch)?;
    }
    if !g.gradients.is_empty() {
        top.map("gradients", &Named::of(g, &g.gradients))?;
    }
    if s.len(Section::Update) > 0 {
        top.nodes("update", &s, Section::Update, g, &mut scratch)?;
    }
    if !g.updates.is_empty() {
        top.map("updates", &Named::of(g, &g.updates))?;
    }
    if !g.outputs.is_empty() {
        top.array("outputs", g.outputs.len(), g.outputs.iter().copied(), |v, line| put_str(line, g.value_name(v)))?;
    }
    if let Some(o) = &g.optimizer {
        top.small("optimizer", o)?;
    }
    if let Some(weights) = &g.weights {
        top.small("weights", weights)?;
    }
    top.w.write_all(b"\n}\n")
}

/// Appends one line of an array: the indent, the item `put` writes, and a
/// comma unless it is the last.
fn item_line(
    out: &mut Vec<u8>,
    last: bool,
    put: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> serde_json::Result<()> {
    out.extend_from_slice(b"    ");
    put(out)?;
    out.extend_from_slice(if last { b"\n" } else { b",\n" });
    Ok(())
}

/// Writes a window's texts in order, keeping their buffers for the next.
fn put_texts(w: &mut impl Write, texts: Vec<serde_json::Result<Vec<u8>>>, spare: &mut Vec<Vec<u8>>) -> io::Result<()> {
    for text in texts {
        let mut text = text?;
        w.write_all(&text)?;
        text.clear();
        spare.push(text);
    }
    Ok(())
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

    /// An array field of `len` items, each written by `item` into the line buffer.
    fn array<T>(
        &mut self,
        key: &str,
        len: usize,
        ids: impl Iterator<Item = T>,
        mut item: impl FnMut(T, &mut Vec<u8>) -> serde_json::Result<()>,
    ) -> io::Result<()> {
        self.key(key)?;
        if len == 0 {
            return self.w.write_all(b"[]");
        }
        self.w.write_all(b"[\n")?;
        for (j, id) in ids.enumerate() {
            self.line.clear();
            item_line(&mut self.line, j + 1 == len, |line| item(id, line))?;
            self.w.write_all(&self.line)?;
        }
        self.w.write_all(b"  ]")
    }

    /// A section's array, its items made one at a time by `item`.
    fn items<S: serde::Serialize>(
        &mut self,
        key: &str,
        s: &Sections,
        section: Section,
        item: impl Fn(NodeId) -> S,
    ) -> io::Result<()> {
        self.array(key, s.len(section), s.ids(section), |id, line| serde_json::to_writer(line, &item(id)))
    }

    /// A section of op nodes. Their lines are made in blocks, the blocks of
    /// a window on all cores at once (a node's line depends only on the
    /// graph), and written in order: the file is the same as one made a
    /// node at a time.
    fn nodes(&mut self, key: &str, s: &Sections, section: Section, g: &Graph, sc: &mut Scratch) -> io::Result<()> {
        use rayon::prelude::*;
        let size = self.block;
        let len = s.len(section);
        let mut ids = s.ids(section);
        if len < size.saturating_mul(2) {
            return self.array(key, len, ids, |id, line| node_line(g, id, sc, line));
        }
        self.key(key)?;
        self.w.write_all(b"[\n")?;
        // A block: the place of its first node in the section, and its nodes.
        let block =
            |sc: &mut Scratch, (at, block): (usize, &[NodeId]), mut out: Vec<u8>| -> serde_json::Result<Vec<u8>> {
                for (k, &id) in block.iter().enumerate() {
                    item_line(&mut out, at + k + 1 == len, |out| node_line(g, id, sc, out))?;
                }
                Ok(out)
            };
        let make = |at: usize, window: &[NodeId], bufs: Vec<Vec<u8>>| -> Vec<serde_json::Result<Vec<u8>>> {
            window
                .par_chunks(size)
                .enumerate()
                .zip(bufs)
                .map_init(Scratch::default, |sc, ((b, ids), buf)| block(sc, (at + b * size, ids), buf))
                .collect()
        };
        // A few blocks per core at a time (the text held is a few MB, not the
        // section's), each window made while this thread writes the last one
        // (the writes are mostly the kernel's time, filling the page cache).
        // The blocks' buffers go round: fresh ones would be fresh pages.
        let w = &mut self.w;
        let per_window = 2 * rayon::current_num_threads();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        // The window's ids go to its maker and come back with its text.
        let mut window: Vec<NodeId> = Vec::with_capacity(per_window * size);
        let mut at = 0;
        std::thread::scope(|scope| -> io::Result<()> {
            let mut made = Vec::new();
            loop {
                window.clear();
                window.extend(ids.by_ref().take(per_window * size));
                if window.is_empty() {
                    break;
                }
                let bufs: Vec<Vec<u8>> = (0..window.len().div_ceil(size))
                    .map(|_| spare.pop().unwrap_or_else(|| Vec::with_capacity(size * 128)))
                    .collect();
                let (start, taken) = (at, std::mem::take(&mut window));
                let next = scope.spawn(move || (make(start, &taken, bufs), taken));
                put_texts(w, std::mem::take(&mut made), &mut spare)?;
                (made, window) = next.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                at += window.len();
            }
            put_texts(w, made, &mut spare)
        })?;
        self.w.write_all(b"  ]")
    }

    /// A map of names to names.
    fn map(&mut self, key: &str, map: &Named) -> io::Result<()> {
        self.key(key)?;
        let mut pairs = map.iter();
        let len = pairs.len();
        if len == 1 {
            let (k, v) = pairs.next().unwrap_or_default();
            // One entry: compact, as any object of fewer than two.
            self.w.write_all(b"{")?;
            self.string(k)?;
            self.w.write_all(b":")?;
            self.string(v)?;
            return self.w.write_all(b"}");
        }
        self.w.write_all(b"{\n")?;
        for (j, (k, v)) in pairs.enumerate() {
            let line = &mut self.line;
            line.clear();
            line.extend_from_slice(b"    ");
            put_str(line, k)?;
            line.extend_from_slice(b": ");
            put_str(line, v)?;
            line.extend_from_slice(if j + 1 < len { b",\n" } else { b"\n" });
            self.w.write_all(line)?;
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
        self.line.clear();
        put_str(&mut self.line, s)?;
        self.w.write_all(&self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `put_str` writes what serde_json writes, escapes or none.
    #[test]
    fn put_str_writes_serde_jsons_string() {
        for s in
            ["", "x", "W266665.f16", "d\"x\"", "a\\b", "tab\there", "nl\n", "\u{1}\u{1f}", "\u{7f}", "é∂🦀", "/slash"]
        {
            let mut out = b"[".to_vec();
            put_str(&mut out, s).unwrap();
            assert_eq!(&out[1..], serde_json::to_string(s).unwrap().as_bytes(), "{s:?}");
        }
    }

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

    /// Every node of every ir-example, before and after lowering, has
    /// serde_json's line of its `RawNode`, the scratch space going from one
    /// node to the next as in a section.
    #[test]
    fn a_line_made_for_one_node_is_not_reused_for_a_pinned_one() {
        use crate::ir::op::{Op, Precision, Role};
        let mut g = Graph::new("t");
        let ty = crate::TensorType::new(crate::DType::F32, vec![4]);
        let x = g.add_node("x", Op::Input { ty }, Role::Forward, &[]).unwrap();
        let mut v = crate::ValueId { node: x, slot: 0 };
        let mut ids = Vec::new();
        for (k, pin) in [None, Some(Precision::Fp32), None, Some(Precision::Low)].into_iter().enumerate() {
            let id = g.add_node(format!("r{k}"), Op::Relu, Role::Forward, &[v]).unwrap();
            g.set_precision(id, pin);
            v = crate::ValueId { node: id, slot: 0 };
            ids.push(id);
        }
        let mut sc = Scratch::default();
        for id in ids {
            let mut line = Vec::new();
            node_line(&g, id, &mut sc, &mut line).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), serde_json::to_string(&raw_node(&g, id)).unwrap());
        }
    }

    #[test]
    fn every_line_is_serde_jsons() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ir-examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let mut g = crate::parse_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for lower in [false, true] {
                if lower {
                    crate::passes::lower(&mut g, &crate::passes::Options::default()).unwrap();
                }
                let mut sc = Scratch::default();
                for id in g.node_ids() {
                    let mut line = Vec::new();
                    node_line(&g, id, &mut sc, &mut line).unwrap();
                    let want = serde_json::to_string(&raw_node(&g, id)).unwrap();
                    assert_eq!(String::from_utf8(line).unwrap(), want, "{}", path.display());
                    seen += 1;
                }
            }
        }
        assert!(seen > 1000, "{seen} lines");
    }

    proptest::proptest! {
        /// The prefix orders names as the names do, wherever it decides.
        #[test]
        fn a_prefix_orders_as_its_string(a in "[a\\x00\u{e9}.0-9]{0,12}", b in "[a\\x00\u{e9}.0-9]{0,12}") {
            proptest::prop_assert_eq!((prefix(&a), &a).cmp(&(prefix(&b), &b)), a.cmp(&b));
        }
    }

    /// A node of one or many inputs, names that need escaping, has
    /// serde_json's line of its `RawNode`.
    #[test]
    fn a_line_of_many_inputs_is_serde_jsons() {
        use crate::ir::op::Init;
        let mut g = Graph::new("many");
        let ty = crate::TensorType::new(crate::DType::F32, vec![2]);
        let params: Vec<crate::ValueId> = (0..67)
            .map(|i| {
                let op = Op::Param { ty: ty.clone(), init: Init::Zeros };
                crate::ValueId { node: g.add_node(format!("p\"{i}"), op, Role::Forward, &[]).unwrap(), slot: 0 }
            })
            .collect();
        for n in [1, 2, 64, 65, 67] {
            let id = g.add_node(format!("f{n}"), Op::FoundInf, Role::Scaler, &params[..n]).unwrap();
            let mut line = Vec::new();
            node_line(&g, id, &mut Scratch::default(), &mut line).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), serde_json::to_string(&raw_node(&g, id)).unwrap(), "{n}");
        }
    }
}
