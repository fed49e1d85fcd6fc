//! What a graph holds per node: a record of its op and role, its name,
//! and (for the few nodes whose outputs are not one value named as the
//! node) its outputs; the view through which the rest of the crate reads a
//! node; and where a parsed node was written in its source file.

use std::fmt;

use super::ops::OpId;
use super::types::TypeId;
use super::Graph;
use crate::ir::op::{Op, Precision, Role};

/// Where a node was written in its source file, for error messages.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The section, by its place in [`SECTIONS`]: 8 bytes in all rather
    /// than a 16-byte string.
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

/// One output of a node whose outputs are not the usual one value named
/// as the node: its name and type.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Output {
    /// `None` when it is the node's own name, which then is not stored twice.
    pub(super) name: Option<Box<str>>,
    pub(super) ty: TypeId,
}

impl Output {
    /// An output named `name` of a node named `node`.
    pub(super) fn new(name: String, node: &str, ty: TypeId) -> Output {
        Output { name: (name != node).then(|| name.into_boxed_str()), ty }
    }
}

/// What whole-graph walks read of a node, 8 bytes by node index: the op
/// (interned: a lowered chain has a handful of distinct ops over millions
/// of nodes), the role and the precision pin.
#[derive(Copy, Clone, Debug)]
pub(super) struct Rec {
    pub(super) op: OpId,
    pub(super) role: Role,
    pub(super) precision: Option<Precision>,
    /// The node has one output, named as the node; otherwise its outputs
    /// are in the graph's `outs` map.
    pub(super) single: bool,
}

impl Rec {
    /// The record of a vacated index.
    pub(super) const VACANT: Rec = Rec { op: OpId::NONE, role: Role::Forward, precision: None, single: true };
}

/// A node of a [`Graph`], as [`Graph::node`] shows it: a view of the
/// graph's per-node tables, valid while the graph is borrowed.
#[derive(Copy, Clone)]
pub struct Node<'g> {
    pub(super) g: &'g Graph,
    pub(super) i: u32,
}

impl<'g> Node<'g> {
    #[inline]
    pub(super) fn rec(&self) -> Rec {
        self.g.recs[self.i as usize]
    }

    /// The outputs, for a node whose outputs are not the usual one.
    #[inline]
    fn outs(&self) -> Option<&'g [Output]> {
        if self.rec().single {
            return None;
        }
        self.g.outs.get(&self.i).map(|o| &**o)
    }

    /// The node's name (that of its first output, for nearly every node).
    #[inline]
    pub fn name(&self) -> &'g str {
        &self.g.labels[self.i as usize]
    }

    #[inline]
    pub fn op(&self) -> &'g Op {
        self.g.ops.get(self.rec().op)
    }

    #[inline]
    pub fn role(&self) -> Role {
        self.rec().role
    }

    /// The node's override of the precision table, if it has one.
    #[inline]
    pub fn precision(&self) -> Option<Precision> {
        self.rec().precision
    }

    /// How many outputs (values) the node has.
    #[inline]
    pub fn num_outputs(&self) -> usize {
        self.outs().map_or(1, <[Output]>::len)
    }

    /// The name of output `slot`; panics when there is no such output.
    #[inline]
    pub fn output_name(&self, slot: usize) -> &'g str {
        match self.outs() {
            None if slot == 0 => self.name(),
            None => panic!("node `{}` has one output, not {}", self.name(), slot + 1),
            Some(outs) => outs[slot].name.as_deref().unwrap_or(self.name()),
        }
    }

    /// The names of the outputs, in slot order.
    pub fn output_names(&self) -> impl Iterator<Item = &'g str> + 'g {
        let name = self.name();
        let outs = self.outs();
        let single = outs.is_none().then_some(name);
        single.into_iter().chain(outs.unwrap_or(&[]).iter().map(move |o| o.name.as_deref().unwrap_or(name)))
    }
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name())
            .field("op", self.op())
            .field("role", &self.role())
            .field("precision", &self.precision())
            .field("outputs", &self.output_names().collect::<Vec<_>>())
            .finish()
    }
}
