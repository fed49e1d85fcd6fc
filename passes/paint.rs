//! TensorFlow-style painting: which nodes compute in the low type.
//!
//! Works on a plain adjacency description ([`PaintInput`]) so that it runs
//! on mpc's IR and on any other compiler's graph alike. The steps follow
//! TensorFlow's grappler AMP pass (auto_mixed_precision.cc):
//! 1. low-class and pinned-low nodes are allowed; fp32-class, pinned-fp32
//!    and unknown ops are denied;
//! 2. deny spreads forward through infer/clear nodes that lie upstream of
//!    a deny or infer node (so a value headed for FP32 is not narrowed
//!    and widened again);
//! 3. infer/clear nodes that lie between two allowed nodes are allowed;
//! 4. allow spreads both ways through clear nodes;
//! 5. (BF16) an infer node fed by an allowed node and by no denied node is
//!    allowed, in topological order.
//!
//! Everything not allowed computes in FP32.

use super::table::Class;

/// What the painter knows of a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A node with a class, possibly pinned by the user.
    Op { class: Option<Class>, pin: Option<Pin> },
    /// A node that keeps its type and blocks propagation (sources, casts,
    /// integer ops).
    Fixed,
}

/// A per-node override.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    Low,
    Fp32,
}

/// The graph as the painter sees it: dense node indices, float edges only.
pub struct PaintInput {
    pub kinds: Vec<Kind>,
    /// Producers of each node's float inputs.
    pub fanin: Vec<Vec<u32>>,
    /// Consumers of each node's float outputs.
    pub fanout: Vec<Vec<u32>>,
    /// Node indices in topological order.
    pub order: Vec<u32>,
}

/// Why a node got its colour, for `mpc explain`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Not painted: keeps its type.
    Fixed,
    LowClass,
    Fp32Class,
    PinnedLow,
    PinnedFp32,
    /// The loss leaves the step in FP32.
    Loss,
    /// An op the table does not know: FP32, with a warning.
    Unknown,
    /// Denied because it leads from the given FP32 node to an FP32 or infer node.
    DenyFrom(u32),
    /// An infer or clear node between two low nodes.
    BetweenLow,
    /// A clear node next to a low node.
    ClearNextToLow,
    /// (BF16) an infer node fed by a low node.
    FollowsLow,
    /// An infer or clear node with no low neighbourhood: FP32.
    NotBetweenLow,
    /// The bias add of the given low matmul or conv: low with it.
    BiasOf(u32),
}

impl Rule {
    pub fn describe(self, name: &dyn Fn(u32) -> String) -> String {
        match self {
            Rule::Fixed => "keeps its declared type".into(),
            Rule::LowClass => "low class".into(),
            Rule::Fp32Class => "fp32 class".into(),
            Rule::PinnedLow => "pinned low by the node's precision attribute".into(),
            Rule::PinnedFp32 => "pinned fp32 by the node's precision attribute".into(),
            Rule::Loss => "the loss stays f32".into(),
            Rule::Unknown => "unknown op: fp32".into(),
            Rule::DenyFrom(n) => format!("feeds fp32 work downstream of `{}`", name(n)),
            Rule::BetweenLow => "between low ops".into(),
            Rule::ClearNextToLow => "clear op next to a low op".into(),
            Rule::FollowsLow => "follows a low op (bf16)".into(),
            Rule::NotBetweenLow => "not between low ops".into(),
            Rule::BiasOf(n) => format!("bias of low `{}`, added in its accumulator", name(n)),
        }
    }
}

/// The result: per node, whether it computes low, and why.
pub struct Painting {
    pub low: Vec<bool>,
    pub rule: Vec<Rule>,
}

/// Node -> neighbour lists, as the painter reads them.
pub(crate) trait Adjacency {
    fn of(&self, i: u32) -> &[u32];
}

impl Adjacency for Vec<Vec<u32>> {
    #[inline]
    fn of(&self, i: u32) -> &[u32] {
        &self[i as usize]
    }
}

/// Neighbour lists packed in one vector: node `i` has `data[span[i].0..][..span[i].1]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Packed {
    pub span: Vec<(u32, u32)>,
    pub data: Vec<u32>,
}

impl Adjacency for Packed {
    #[inline]
    fn of(&self, i: u32) -> &[u32] {
        let (start, len) = self.span[i as usize];
        &self.data[start as usize..(start + len) as usize]
    }
}

// What the painter knows of each node, a bit each (one byte per node).
const ALLOW: u8 = 1;
const DENY: u8 = 1 << 1;
const INFER: u8 = 1 << 2;
const CLEAR: u8 = 1 << 3;
const UP: u8 = 1 << 4;
const DOWN: u8 = 1 << 5;
const BETWEEN: u8 = 1 << 6;
const SPREAD: u8 = 1 << 7;

/// Depth-first from `root` (which is not marked here) along `next`, into
/// the nodes without the `mark` bit whose flags `ok` accepts; sets `mark`
/// on each node entered and calls `on_mark` on it. `ok` must not depend on
/// `mark`.
fn flood<'a>(
    root: u32,
    stack: &mut Vec<u32>,
    flags: &mut [u8],
    mark: u8,
    next: impl Fn(u32) -> (&'a [u32], &'a [u32]),
    ok: impl Fn(u8) -> bool,
    mut on_mark: impl FnMut(usize),
) {
    stack.clear();
    let push = |stack: &mut Vec<u32>, flags: &[u8], n: u32| {
        let (a, b) = next(n);
        stack.extend(a.iter().chain(b).copied().filter(|&i| {
            let f = flags[i as usize];
            f & mark == 0 && ok(f)
        }));
    };
    push(stack, flags, root);
    while let Some(i) = stack.pop() {
        if flags[i as usize] & mark != 0 {
            continue;
        }
        flags[i as usize] |= mark;
        on_mark(i as usize);
        push(stack, flags, i);
    }
}

/// Paints the graph. `follow_low` enables step 5 (TensorFlow does it for BF16).
pub fn paint(g: &PaintInput, follow_low: bool) -> Painting {
    paint_with(&g.kinds, &g.fanin, &g.fanout, &g.order, follow_low, true)
}

/// [`paint`] over any adjacency representation; `order` is read only with
/// `follow_low`, and `rules: false` leaves [`Painting::rule`] empty.
pub(crate) fn paint_with(
    kinds: &[Kind],
    fanin_of: &impl Adjacency,
    fanout_of: &impl Adjacency,
    order: &[u32],
    follow_low: bool,
    rules: bool,
) -> Painting {
    let n = kinds.len();
    let mut flags = vec![0u8; n];
    let mut rule = if rules { vec![Rule::Fixed; n] } else { Vec::new() };
    let set_rule = |rule: &mut Vec<Rule>, i: usize, r: Rule| {
        if let Some(x) = rule.get_mut(i) {
            *x = r;
        }
    };
    for (i, k) in kinds.iter().enumerate() {
        if let Kind::Op { class, pin } = *k {
            let (f, r) = match (pin, class) {
                (Some(Pin::Low), _) => (ALLOW, Rule::PinnedLow),
                (Some(Pin::Fp32), _) => (DENY, Rule::PinnedFp32),
                (None, Some(Class::Low)) => (ALLOW, Rule::LowClass),
                (None, Some(Class::Fp32)) => (DENY, Rule::Fp32Class),
                (None, None) => (DENY, Rule::Unknown),
                (None, Some(Class::Infer)) => (INFER, Rule::NotBetweenLow),
                (None, Some(Class::Clear)) => (CLEAR, Rule::NotBetweenLow),
                (None, Some(Class::Int)) => (0, Rule::Fixed),
            };
            flags[i] = f;
            set_rule(&mut rule, i, r);
        }
    }
    let fanin = |i: u32| (fanin_of.of(i), &[][..]);
    let fanout = |i: u32| (fanout_of.of(i), &[][..]);
    let both = |i: u32| (fanin_of.of(i), fanout_of.of(i));
    let has = |f: u8, bit: u8| f & bit != 0;
    let mut stack = Vec::new();

    // 2. Deny spreads forward through clear/infer nodes upstream of deny or infer nodes.
    for r in 0..n {
        if has(flags[r], DENY | INFER) {
            flags[r] |= UP;
            flood(r as u32, &mut stack, &mut flags, UP, fanin, |f| has(f, CLEAR), |_| {});
        }
    }
    let roots: Vec<u32> = (0..n as u32).filter(|&r| has(flags[r as usize], DENY)).collect();
    for r in roots {
        let ok = |f: u8| has(f, UP) && !has(f, ALLOW);
        flood(r, &mut stack, &mut flags, DENY, fanout, ok, |i| set_rule(&mut rule, i, Rule::DenyFrom(r)));
    }

    // 3. Infer/clear nodes between two allowed nodes are allowed.
    for r in 0..n {
        if has(flags[r], ALLOW) {
            flags[r] |= DOWN;
            let open = |f: u8| !has(f, ALLOW | DENY) && has(f, INFER | CLEAR);
            flood(r as u32, &mut stack, &mut flags, DOWN, fanout, open, |_| {});
        }
    }
    for r in 0..n {
        if has(flags[r], ALLOW) {
            let ok = |f: u8| has(f, DOWN) && !has(f, ALLOW | DENY);
            flood(r as u32, &mut stack, &mut flags, BETWEEN, fanin, ok, |_| {});
        }
    }
    for (i, f) in flags.iter_mut().enumerate() {
        if has(*f, BETWEEN) {
            *f |= ALLOW;
            set_rule(&mut rule, i, Rule::BetweenLow);
        }
    }

    // 4. Allow spreads both ways through clear nodes.
    for r in 0..n {
        if has(flags[r], ALLOW) && !has(flags[r], SPREAD) {
            let ok = |f: u8| has(f, CLEAR) && !has(f, ALLOW | DENY);
            flood(r as u32, &mut stack, &mut flags, SPREAD, both, ok, |_| {});
        }
    }
    for (i, f) in flags.iter_mut().enumerate() {
        if has(*f, SPREAD) {
            *f |= ALLOW;
            set_rule(&mut rule, i, Rule::ClearNextToLow);
        }
    }

    // 5. (BF16) infer nodes fed by allowed nodes and no denied node.
    if follow_low {
        for &i in order {
            let f = flags[i as usize];
            if has(f, INFER) && !has(f, ALLOW | DENY) {
                let ins = fanin_of.of(i);
                if ins.iter().any(|&p| has(flags[p as usize], ALLOW))
                    && !ins.iter().any(|&p| has(flags[p as usize], DENY))
                {
                    flags[i as usize] |= ALLOW;
                    set_rule(&mut rule, i as usize, Rule::FollowsLow);
                }
            }
        }
    }
    Painting { low: flags.iter().map(|&f| has(f, ALLOW)).collect(), rule }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of classes, node i feeding node i+1.
    fn chain(classes: &[Option<Class>]) -> PaintInput {
        let n = classes.len();
        PaintInput {
            kinds: classes.iter().map(|&c| Kind::Op { class: c, pin: None }).collect(),
            fanin: (0..n).map(|i| if i == 0 { vec![] } else { vec![i as u32 - 1] }).collect(),
            fanout: (0..n).map(|i| if i + 1 == n { vec![] } else { vec![i as u32 + 1] }).collect(),
            order: (0..n as u32).collect(),
        }
    }

    use Class::*;

    #[test]
    fn tensorflow_deny_example() {
        // From auto_mixed_precision.cc: deny -> infer -> clear -> infer -> clear -> allow -> infer
        // becomes deny -> deny -> deny -> deny -> clear -> allow -> infer.
        let g = chain(&[Some(Fp32), Some(Infer), Some(Clear), Some(Infer), Some(Clear), Some(Low), Some(Infer)]);
        let p = paint(&g, false);
        assert_eq!(p.low, [false, false, false, false, true, true, false]);
        assert_eq!(p.rule[3], Rule::DenyFrom(0));
        assert_eq!(p.rule[4], Rule::ClearNextToLow);
        assert_eq!(p.rule[6], Rule::NotBetweenLow);
    }

    #[test]
    fn infer_between_low_goes_low() {
        let g = chain(&[Some(Low), Some(Infer), Some(Clear), Some(Infer), Some(Low)]);
        let p = paint(&g, false);
        assert_eq!(p.low, [true; 5]);
    }

    #[test]
    fn infer_before_fp32_stays_fp32() {
        // matmul -> add -> softmax: the add feeds FP32 work, so it stays FP32
        // and there is one cast (after the matmul), not two.
        let g = chain(&[Some(Low), Some(Infer), Some(Fp32)]);
        assert_eq!(paint(&g, false).low, [true, false, false]);
    }

    #[test]
    fn bf16_follows_low() {
        let g = chain(&[Some(Low), Some(Infer), Some(Infer)]);
        assert_eq!(paint(&g, false).low, [true, false, false]);
        let p = paint(&g, true);
        assert_eq!(p.low, [true, true, true]);
        assert_eq!(p.rule[2], Rule::FollowsLow);
    }

    #[test]
    fn unknown_ops_and_pins() {
        let mut g = chain(&[Some(Low), None, Some(Low)]);
        assert_eq!(paint(&g, false).rule[1], Rule::Unknown);
        g.kinds[0] = Kind::Op { class: Some(Low), pin: Some(Pin::Fp32) };
        g.kinds[1] = Kind::Op { class: None, pin: Some(Pin::Low) };
        let p = paint(&g, false);
        assert_eq!(p.low, [false, true, true]);
        assert_eq!(p.rule[0], Rule::PinnedFp32);
    }
}
