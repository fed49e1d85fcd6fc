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

/// Depth-first from `start`: `next` pushes a node's neighbours, `enter`
/// says whether to go into a (non-start) node, `visit` is called once per
/// node gone into.
fn dfs(
    start: u32,
    stack: &mut Vec<u32>,
    next: impl Fn(u32, &mut Vec<u32>),
    mut enter: impl FnMut(u32) -> bool,
    mut visit: impl FnMut(u32),
) {
    stack.clear();
    stack.push(start);
    let mut first = true;
    while let Some(n) = stack.pop() {
        if !first && !enter(n) {
            continue;
        }
        first = false;
        visit(n);
        next(n, stack);
    }
}

/// Paints the graph. `follow_low` enables step 5 (TensorFlow does it for BF16).
pub fn paint(g: &PaintInput, follow_low: bool) -> Painting {
    paint_with(&g.kinds, &g.fanin, &g.fanout, &g.order, follow_low)
}

/// [`paint`] over any adjacency representation.
pub(crate) fn paint_with(
    kinds: &[Kind],
    fanin_of: &impl Adjacency,
    fanout_of: &impl Adjacency,
    order: &[u32],
    follow_low: bool,
) -> Painting {
    let n = kinds.len();
    let mut allow = vec![false; n];
    let mut deny = vec![false; n];
    let mut rule = vec![Rule::Fixed; n];
    let mut infer = vec![false; n];
    let mut clear = vec![false; n];
    for (i, k) in kinds.iter().enumerate() {
        if let Kind::Op { class, pin } = *k {
            match (pin, class) {
                (Some(Pin::Low), _) => (allow[i], rule[i]) = (true, Rule::PinnedLow),
                (Some(Pin::Fp32), _) => (deny[i], rule[i]) = (true, Rule::PinnedFp32),
                (None, Some(Class::Low)) => (allow[i], rule[i]) = (true, Rule::LowClass),
                (None, Some(Class::Fp32)) => (deny[i], rule[i]) = (true, Rule::Fp32Class),
                (None, None) => (deny[i], rule[i]) = (true, Rule::Unknown),
                (None, Some(Class::Infer)) => (infer[i], rule[i]) = (true, Rule::NotBetweenLow),
                (None, Some(Class::Clear)) => (clear[i], rule[i]) = (true, Rule::NotBetweenLow),
                (None, Some(Class::Int)) => rule[i] = Rule::Fixed,
            }
        }
    }
    let fanin = |i: u32, s: &mut Vec<u32>| s.extend_from_slice(fanin_of.of(i));
    let fanout = |i: u32, s: &mut Vec<u32>| s.extend_from_slice(fanout_of.of(i));
    let mut stack = Vec::new();

    // 2. Deny spreads forward through clear/infer nodes upstream of deny or infer nodes.
    let mut upstream = vec![false; n];
    for r in (0..n as u32).filter(|&r| deny[r as usize] || infer[r as usize]) {
        let up = std::cell::RefCell::new(&mut upstream);
        dfs(
            r,
            &mut stack,
            fanin,
            |i| !up.borrow()[i as usize] && clear[i as usize],
            |i| up.borrow_mut()[i as usize] = true,
        );
    }
    let roots: Vec<u32> = (0..n as u32).filter(|&r| deny[r as usize]).collect();
    for r in roots {
        let d = std::cell::RefCell::new((&mut deny, &mut rule));
        dfs(
            r,
            &mut stack,
            fanout,
            |i| !d.borrow().0[i as usize] && upstream[i as usize] && !allow[i as usize],
            |i| {
                let mut b = d.borrow_mut();
                if !b.0[i as usize] {
                    b.0[i as usize] = true;
                    b.1[i as usize] = Rule::DenyFrom(r);
                }
            },
        );
    }

    // 3. Infer/clear nodes between two allowed nodes are allowed.
    let open = |i: usize, allow: &[bool], deny: &[bool]| !allow[i] && !deny[i] && (infer[i] || clear[i]);
    let mut downstream = vec![false; n];
    let roots: Vec<u32> = (0..n as u32).filter(|&r| allow[r as usize]).collect();
    for &r in &roots {
        let down = std::cell::RefCell::new(&mut downstream);
        dfs(
            r,
            &mut stack,
            fanout,
            |i| !down.borrow()[i as usize] && open(i as usize, &allow, &deny),
            |i| down.borrow_mut()[i as usize] = true,
        );
    }
    let mut between = vec![false; n];
    for &r in &roots {
        let b = std::cell::RefCell::new(&mut between);
        dfs(
            r,
            &mut stack,
            fanin,
            |i| !b.borrow()[i as usize] && downstream[i as usize] && !allow[i as usize] && !deny[i as usize],
            |i| {
                if i != r {
                    b.borrow_mut()[i as usize] = true
                }
            },
        );
    }
    for i in 0..n {
        if between[i] {
            allow[i] = true;
            rule[i] = Rule::BetweenLow;
        }
    }

    // 4. Allow spreads both ways through clear nodes.
    let roots: Vec<u32> = (0..n as u32).filter(|&r| allow[r as usize]).collect();
    let mut spread = vec![false; n];
    for r in roots {
        let s = std::cell::RefCell::new(&mut spread);
        dfs(
            r,
            &mut stack,
            |i, s| {
                fanin(i, s);
                fanout(i, s);
            },
            |i| {
                let i = i as usize;
                !s.borrow()[i] && clear[i] && !allow[i] && !deny[i]
            },
            |i| {
                if i != r {
                    s.borrow_mut()[i as usize] = true
                }
            },
        );
    }
    for i in 0..n {
        if spread[i] {
            allow[i] = true;
            rule[i] = Rule::ClearNextToLow;
        }
    }

    // 5. (BF16) infer nodes fed by allowed nodes and no denied node.
    if follow_low {
        for &i in order {
            if infer[i as usize] && !allow[i as usize] && !deny[i as usize] {
                let ins = fanin_of.of(i);
                let i = i as usize;
                if ins.iter().any(|&p| allow[p as usize]) && !ins.iter().any(|&p| deny[p as usize]) {
                    allow[i] = true;
                    rule[i] = Rule::FollowsLow;
                }
            }
        }
    }
    Painting { low: allow, rule }
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
