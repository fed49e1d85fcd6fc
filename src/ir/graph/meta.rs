//! A node's meta byte: its role's rank and kind flags, packed so that the
//! passes' walks test them without touching the node itself.

use super::*;

/// The rank of the node's role in topological order (0 forward, 1 backward, 2 the rest).
pub(super) const RANK: u8 = 0b11;
/// The node index is vacant (the node was removed).
pub(super) const VACANT: u8 = 1 << 2;
/// The node is a cast.
pub(super) const CAST: u8 = 1 << 4;
/// The node is an input, param or state declaration.
pub(super) const SOURCE: u8 = 1 << 5;

pub(super) fn rank(role: Role) -> u8 {
    match role {
        Role::Forward => 0,
        Role::Backward => 1,
        Role::Optimizer | Role::Scaler => 2,
    }
}

pub(super) fn meta_of(op: &Op, role: Role) -> u8 {
    let kind = match op {
        Op::Cast { .. } => CAST,
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } => SOURCE,
        _ => 0,
    };
    rank(role) | kind
}
