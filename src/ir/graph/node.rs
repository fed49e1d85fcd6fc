//! What a graph holds per node: the node itself and its outputs; and
//! where a parsed node was written in its source file.

use compact_str::CompactString;
use smallvec::SmallVec;

use super::types::TypeId;
use crate::ir::op::{Op, Precision, Role};

/// Where a node was written in its source file, for error messages.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The section, by its place in [`SECTIONS`]: 8 bytes in all rather
    /// than a 16-byte string, so that a node fits mimalloc's 160-byte class.
    section: u8,
    pub index: u32,
}

/// The JSON sections that declare nodes, in file order.
pub const SECTIONS: [&str; 6] = ["inputs", "params", "state", "forward", "backward", "update"];

impl Origin {
    /// Node `index` of `section` (one of [`SECTIONS`]; another name reads
    /// back as `update`, the last).
    pub fn new(section: &str, index: u32) -> Origin {
        let section = SECTIONS.iter().position(|&s| s == section).unwrap_or(SECTIONS.len() - 1) as u8;
        Origin { section, index }
    }

    /// The JSON section.
    pub fn section(&self) -> &'static str {
        SECTIONS[usize::from(self.section).min(SECTIONS.len() - 1)]
    }

    /// RFC 6901 pointer to the node's object in the source file.
    pub fn pointer(&self) -> String {
        format!("/{}/{}", self.section(), self.index)
    }
}

/// One output of a node: its name and type. Read the type through the
/// graph ([`Graph::ty`](super::Graph::ty), [`Graph::output_types`](super::Graph::output_types)),
/// which holds each distinct type once.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// The name; `None` when it is the node's own (the usual first output),
    /// which then is not stored twice. Read it with [`Node::output_name`].
    pub(super) name: Option<Box<str>>,
    pub(super) ty: TypeId,
}

impl Output {
    /// An output named `name` of a node named `node`.
    pub(super) fn new(name: String, node: &str, ty: TypeId) -> Output {
        Output { name: (name != node).then(|| name.into_boxed_str()), ty }
    }
}

/// A node of a graph. Read through its accessors: how the graph stores a
/// node is its own business (docs/FLAT_IR.md plans flat arrays), and
/// changes go through the graph (`Graph::rename`, `Graph::set_op`, ...),
/// which keeps its name table and per-node flags in step. Where a parsed
/// node was written is the graph's too ([`Graph::origin`](super::Graph::origin)).
#[derive(Clone, Debug)]
pub struct Node {
    pub(super) name: CompactString,
    pub(super) op: Op,
    pub(super) role: Role,
    /// A per-node override of the precision table.
    pub(super) precision: Option<Precision>,
    /// Inline: nearly every node has one output, and a vector would be a
    /// second allocation per node.
    pub(super) outputs: SmallVec<[Output; 1]>,
}

impl Node {
    /// The node's name (that of its first output, for nearly every node).
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    pub fn op(&self) -> &Op {
        &self.op
    }

    #[inline]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The node's override of the precision table, if it has one.
    #[inline]
    pub fn precision(&self) -> Option<Precision> {
        self.precision
    }

    /// The outputs, in slot order.
    #[inline]
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The name of output `slot`.
    #[inline]
    pub fn output_name(&self, slot: usize) -> &str {
        self.outputs[slot].name.as_deref().unwrap_or(&self.name)
    }

    /// The names of the outputs, in slot order.
    pub fn output_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.outputs.iter().map(|o| o.name.as_deref().unwrap_or(&self.name))
    }

    /// Names output `slot` (not the graph's name table: see [`Graph::rename`]).
    pub fn set_output_name(&mut self, slot: usize, name: &str) {
        self.outputs[slot].name = (name != self.name).then(|| name.into());
    }
}
