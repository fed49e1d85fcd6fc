//! The streaming pass: JSON -> graph with no intermediate `RawGraph`.
//!
//! It accepts a file only when nothing is wrong with it and its node
//! sections come in the order `from_raw` adds them (inputs, params, state,
//! forward, backward, update; other fields anywhere), and then builds the
//! same graph `from_raw` would: nodes in the same order, edges connected in
//! the same order (a node's inputs are wired as soon as they all resolve,
//! until the first node with a forward reference; from there on, wiring
//! waits for the end, as in `from_raw`). It returns `None` at the first
//! thing it does not accept, and the caller starts over on the slow path,
//! which produces the error messages.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use serde::de::value::MapDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;

use super::{finish, Builder, Tail};
use crate::format::{Optimizer, RawNode, RawState, RawTensor, FORMAT_VERSION};
use crate::ir::graph::{name_hash, Graph, NodeId, Origin, ValueId};
use crate::ir::op::{Op, OpKind, Precision, Role};

/// Parses `text` if the streaming pass accepts it.
pub fn parse(text: &str) -> Option<Graph> {
    let mut st = State {
        b: Builder { g: Graph::new(""), problems: Vec::new(), failed: Default::default() },
        blank: RawNode::default(),
        held: None,
        seen: 0,
        stage: 0,
        deferring: false,
        pending: Vec::new(),
        checks: Vec::new(),
        format: None,
        loss: None,
        backward: false,
        has_params: false,
        gradients: BTreeMap::new(),
        updates: BTreeMap::new(),
        outputs: Vec::new(),
        optimizer: None,
        weights: None,
    };
    // Room for the nodes and edges, from the size of the text (a node
    // takes some tens of bytes: 71 on average in the 10^6-op chain, whose
    // 1.67 M nodes outgrew room for one per 80 bytes, and the copy that
    // growing made cost 40 ms and 55 MB of the peak); only what is used
    // is ever touched, and the vectors and the name table grow from there
    // if need be.
    st.b.g.reserve(text.len() / 48, text.len() / 24);
    let mut de = serde_json::Deserializer::from_str(text);
    Top(&mut st).deserialize(&mut de).ok()?;
    de.end().ok()?;
    st.finish()
}

/// Why the streaming pass gave up (never shown: the slow path reports).
fn bail<E: de::Error>() -> E {
    E::custom("not for the streaming pass")
}

/// A node's input names with their hashes.
type Names<'de> = SmallVec<[(Cow<'de, str>, u64); 2]>;

/// An input as first seen: resolved, or a name to resolve at the end.
enum In<'de> {
    Value(ValueId),
    Name(Cow<'de, str>),
}

struct Pending<'de> {
    id: NodeId,
    inputs: SmallVec<[In<'de>; 4]>,
}

/// A node read and checked, not yet added: each node is added when the
/// next one has been read, so that the name-table lines its name and
/// inputs need (prefetched as they were read) have had time to arrive.
struct Held<'de> {
    name: CompactString,
    hash: u64,
    op: Op,
    role: Role,
    /// `None`: one output named after the node.
    outs: Option<Vec<String>>,
    precision: Option<Precision>,
    origin: Origin,
    inputs: Names<'de>,
}

/// How many of the latest nodes count as recent (likely in the cache).
const RECENT: usize = 4096;

struct State<'de> {
    b: Builder,
    /// A `RawNode` with every field unset but `op`.
    blank: RawNode,
    held: Option<Held<'de>>,
    /// Top-level keys seen (bit per key), to reject repeats.
    seen: u32,
    /// The last node section begun: 1 inputs .. 6 update.
    stage: u8,
    /// A node waited for a name defined later: from there on, all wiring waits.
    deferring: bool,
    pending: Vec<Pending<'de>>,
    /// Inputs resolved by the hash of their name alone, with the name:
    /// checked against the value's name at the end.
    checks: Vec<(ValueId, &'de str)>,
    format: Option<String>,
    loss: Option<String>,
    backward: bool,
    has_params: bool,
    gradients: BTreeMap<String, String>,
    updates: BTreeMap<String, String>,
    outputs: Vec<String>,
    optimizer: Option<Optimizer>,
    weights: Option<String>,
}

impl<'de> State<'de> {
    /// Holds `next` and adds the node held before it.
    fn hold<E: de::Error>(&mut self, next: Held<'de>) -> Result<(), E> {
        self.b.g.prefetch_name(next.hash);
        match self.held.replace(next) {
            Some(h) => self.place(h),
            None => Ok(()),
        }
    }

    /// Adds the held node, if any.
    fn flush<E: de::Error>(&mut self) -> Result<(), E> {
        match self.held.take() {
            Some(h) => self.place(h),
            None => Ok(()),
        }
    }

    /// Adds a node: resolves its inputs by the hash of their names (a
    /// value written long ago is checked at the end, with the others,
    /// rather than fetched now), then wires it or queues it.
    fn place<E: de::Error>(&mut self, h: Held<'de>) -> Result<(), E> {
        let g = &mut self.b.g;
        let recent = g.index_bound().saturating_sub(RECENT);
        let mut inputs: SmallVec<[In<'de>; 4]> = SmallVec::new();
        let mut all = true;
        for (input, hash) in h.inputs {
            inputs.push(match (g.value_by_hash(hash), input) {
                (Some(v), Cow::Borrowed(s)) if v.node.index() < recent => {
                    self.checks.push((v, s));
                    In::Value(v)
                }
                (Some(v), input) if g.value_name(v) == input => In::Value(v),
                (_, input) => {
                    all = false;
                    In::Name(input)
                }
            });
        }
        let added = match h.outs {
            None => g.add_single_by_hash(h.name, h.hash, h.op, h.role, Some(h.origin)),
            Some(outs) => g.add_untyped(h.name.into(), h.op, h.role, outs, Some(h.origin)),
        };
        let id = added.map_err(|_| bail::<E>())?;
        if h.precision.is_some() {
            g.set_precision(id, h.precision);
        }
        if all && !self.deferring {
            for (port, i) in inputs.iter().enumerate() {
                if let In::Value(v) = i {
                    g.connect(*v, id, port as u32);
                }
            }
        } else {
            self.deferring = true;
            self.pending.push(Pending { id, inputs });
        }
        Ok(())
    }

    fn finish(mut self) -> Option<Graph> {
        if self.format.as_deref() != Some(FORMAT_VERSION) || self.seen & FORWARD == 0 {
            return None;
        }
        let loss = self.loss.take()?;
        let g = &self.b.g;
        if self.checks.iter().any(|&(v, name)| g.value_name(v) != name) {
            return None;
        }
        for p in std::mem::take(&mut self.pending) {
            for (port, input) in p.inputs.into_iter().enumerate() {
                let v = match input {
                    In::Value(v) => v,
                    In::Name(name) => self.b.g.value(&name)?,
                };
                self.b.g.connect(v, p.id, port as u32);
            }
        }
        let tail = Tail {
            loss: &loss,
            backward: self.backward,
            has_params: self.has_params,
            gradients: &self.gradients,
            updates: &self.updates,
            outputs: &self.outputs,
            optimizer: self.optimizer.as_ref(),
            weights: self.weights.as_deref(),
        };
        finish(self.b, tail).ok()
    }

    /// Starts node section `stage`; sections must come in order.
    fn stage<E: de::Error>(&mut self, stage: u8) -> Result<(), E> {
        if stage < self.stage {
            return Err(bail());
        }
        self.stage = stage;
        Ok(())
    }

    fn ok<E: de::Error>(&self) -> Result<(), E> {
        if self.b.problems.is_empty() {
            Ok(())
        } else {
            Err(bail())
        }
    }
}

const FORWARD: u32 = 1 << 5;

/// The top-level object.
struct Top<'a, 'de>(&'a mut State<'de>);

impl<'de> DeserializeSeed<'de> for Top<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an mpc graph")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let st = self.0;
        while let Some(Str(key)) = map.next_key()? {
            const KEYS: [&str; 14] = super::TOP_LEVEL_KEYS;
            let Some(k) = KEYS.iter().position(|&k| k == key) else {
                return Err(bail());
            };
            if st.seen & (1 << k) != 0 {
                return Err(bail());
            }
            st.seen |= 1 << k;
            match KEYS[k] {
                "format" => st.format = Some(map.next_value()?),
                "name" => st.b.g.name = map.next_value()?,
                "inputs" => {
                    st.stage(1)?;
                    map.next_value_seed(Section { st: &mut *st, section: "inputs" })?;
                }
                "params" => {
                    st.stage(2)?;
                    map.next_value_seed(Section { st: &mut *st, section: "params" })?;
                }
                "state" => {
                    st.stage(3)?;
                    map.next_value_seed(Section { st: &mut *st, section: "state" })?;
                }
                "forward" => {
                    st.stage(4)?;
                    map.next_value_seed(Section { st: &mut *st, section: "forward" })?;
                }
                "backward" => {
                    st.stage(5)?;
                    map.next_value_seed(Backward(&mut *st))?;
                }
                "update" => {
                    st.stage(6)?;
                    map.next_value_seed(Section { st: &mut *st, section: "update" })?;
                }
                "loss" => st.loss = Some(map.next_value()?),
                "gradients" => st.gradients = map.next_value()?,
                "updates" => st.updates = map.next_value()?,
                "outputs" => st.outputs = map.next_value()?,
                "optimizer" => st.optimizer = map.next_value()?,
                _ => st.weights = map.next_value()?,
            }
        }
        st.flush()
    }
}

/// `"backward"`: null, or a node section.
struct Backward<'a, 'de>(&'a mut State<'de>);

impl<'de> DeserializeSeed<'de> for Backward<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Backward<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a backward section")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.backward = true;
        Section { st: self.0, section: "backward" }.deserialize(d)
    }
}

/// One of the sections that declare nodes, element by element.
struct Section<'a, 'de> {
    st: &'a mut State<'de>,
    section: &'static str,
}

impl<'de> DeserializeSeed<'de> for Section<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Section<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let st = self.st;
        let section = self.section;
        let mut index = 0;
        let source = |name: String, op: Option<Op>, st: &mut State<'de>, index: usize| -> Result<(), A::Error> {
            let op = op.ok_or_else(bail)?;
            let hash = name_hash(&name);
            let origin = Origin::new(section, index as u32);
            let held = Held {
                name: name.into(),
                hash,
                op,
                role: Role::Forward,
                outs: None,
                precision: None,
                origin,
                inputs: SmallVec::new(),
            };
            st.hold(held)
        };
        match section {
            "inputs" => {
                while let Some(t) = seq.next_element::<RawTensor>()? {
                    let op = st.b.input_op(index, &t);
                    source(t.name, op, st, index)?;
                    index += 1;
                }
            }
            "params" | "state" => {
                while let Some(p) = seq.next_element::<RawState>()? {
                    let op = st.b.declare_op(section, index, &p);
                    source(p.name, op, st, index)?;
                    st.has_params |= section == "params";
                    index += 1;
                }
            }
            _ => {
                while seq.next_element_seed(NodeSeed { st: &mut *st, section, index })?.is_some() {
                    index += 1;
                }
            }
        }
        st.ok()?;
        st.flush()
    }
}

/// One node object of a node section.
struct NodeSeed<'a, 'de> {
    st: &'a mut State<'de>,
    section: &'static str,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// A `RawValue` holding `""` and one holding `"relu"`: stand-ins for the
/// node's name and op (read directly) when the other fields go through
/// `RawNode`'s own deserializer.
fn stand_ins() -> (&'static RawValue, &'static RawValue) {
    static V: std::sync::OnceLock<(&'static RawValue, &'static RawValue)> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        let name: &'static RawValue = serde_json::from_str("\"\"").expect("a JSON string");
        let op: &'static RawValue = serde_json::from_str("\"relu\"").expect("a JSON string");
        (name, op)
    })
}

impl<'de> Visitor<'de> for NodeSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let st = self.st;
        let mut name: Option<CompactString> = None;
        let mut op: Option<OpKind> = None;
        let mut inputs: Option<Names<'de>> = None;
        let mut rest: SmallVec<[(Cow<'de, str>, &'de RawValue); 4]> = SmallVec::new();
        while let Some(Str(key)) = map.next_key()? {
            match &*key {
                "name" if name.is_none() => name = Some(map.next_value()?),
                "op" if op.is_none() => op = Some(map.next_value()?),
                "inputs" if inputs.is_none() => inputs = Some(map.next_value_seed(InputNames(&st.b.g))?),
                "name" | "op" | "inputs" => return Err(bail()),
                _ => rest.push((key, map.next_value()?)),
            }
        }
        let (Some(name), Some(op)) = (name, op) else {
            return Err(bail());
        };
        let inputs = inputs.unwrap_or_default();
        let (section, index) = (self.section, self.index);
        if name.is_empty() {
            return Err(bail());
        }
        // A node with no attributes is checked on the state's blank
        // `RawNode` (only its op set), not on a new one.
        let mut fresh = None;
        let raw = if rest.is_empty() {
            st.blank.op = op;
            &mut st.blank
        } else {
            let (n, o) = stand_ins();
            let fields = rest.into_iter().chain([(Cow::Borrowed("name"), n), (Cow::Borrowed("op"), o)]);
            let fields = MapDeserializer::<_, serde_json::Error>::new(fields);
            let mut r = RawNode::deserialize(fields).map_err(|_| bail::<A::Error>())?;
            r.op = op;
            fresh.insert(r)
        };
        let parts = st.b.node_parts(section, index, &name, raw, inputs.len());
        let precision = raw.precision;
        let Some((op, role, outs)) = parts else {
            return Err(bail());
        };
        let hash = name_hash(&name);
        let origin = Origin::new(section, index as u32);
        st.hold(Held { name, hash, op, role, outs, precision, origin, inputs })
    }
}

/// A node's `inputs`: the names, hashed, their table lines prefetched.
struct InputNames<'a>(&'a Graph);

impl<'de> DeserializeSeed<'de> for InputNames<'_> {
    type Value = Names<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputNames<'_> {
    type Value = Names<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of value names")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = SmallVec::new();
        while let Some(Str(name)) = seq.next_element()? {
            let h = name_hash(&name);
            self.0.prefetch_name(h);
            out.push((name, h));
        }
        Ok(out)
    }
}

/// A string, borrowed from the text when it has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}
