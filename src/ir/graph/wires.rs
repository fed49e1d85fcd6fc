//! The graph's edges. A node's inputs lie side by side in one arena, in
//! port order, so reading them is one contiguous load; each entry is also a
//! link in its producer's list of uses, so finding a value's readers walks
//! only them. 16 bytes an input, against 24 for a petgraph edge whose
//! inputs were a linked list through the whole edge vector.

use super::*;

/// No entry: the end of a list of uses, or a port that nothing feeds.
pub(super) const NONE: u32 = u32::MAX;

/// One input of a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Wire {
    /// The producer; `NONE` when the port is not connected.
    pub(super) from: u32,
    /// The producer's output slot.
    pub(super) slot: u32,
    /// The consumer.
    pub(super) to: u32,
    /// The next use of the producer's outputs (`NONE`: the last).
    pub(super) next: u32,
}

impl Wire {
    const VACANT: Wire = Wire { from: NONE, slot: 0, to: NONE, next: NONE };

    #[inline]
    pub(super) fn value(self) -> ValueId {
        ValueId { node: NodeId::at(self.from), slot: self.slot }
    }

    #[inline]
    pub(super) fn is_live(self) -> bool {
        self.from != NONE
    }
}

/// Where a node's inputs lie in the arena: ports `0..len` from `start`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Span {
    start: u32,
    len: u32,
}

/// Every node's inputs and every node's list of uses.
#[derive(Clone, Debug, Default)]
pub(super) struct Wires {
    arena: Vec<Wire>,
    /// By node index.
    spans: Vec<Span>,
    /// By node index: the newest use of the node's outputs (`NONE`: unread).
    heads: Vec<u32>,
    /// Connected ports.
    count: usize,
    /// (node, port) pairs connected a second time without the first input
    /// being taken off: the verifier reports them, as it would two edges
    /// on one port.
    doubled: Vec<(u32, u32)>,
    /// How far the room of `spans`, `heads` and `arena` has been backed.
    ahead: [prefault::Ahead; 3],
}

fn index(i: usize) -> u32 {
    // Node indices and arena positions count in `u32`, like petgraph's before.
    u32::try_from(i).expect("fewer than 2^32 graph entries")
}

impl Wires {
    pub(super) fn count(&self) -> usize {
        self.count
    }

    pub(super) fn reserve(&mut self, nodes: usize, edges: usize) {
        self.spans.reserve(nodes);
        self.heads.reserve(nodes);
        self.arena.reserve(edges);
    }

    /// Adds to `out` the room of the tables to back ahead of their use
    /// (see `prefault`): an input per node on average, and more.
    pub(super) fn ahead(&mut self, out: &mut prefault::Ranges) {
        self.ahead[0].next(&self.spans, prefault::REACH, out);
        self.ahead[1].next(&self.heads, prefault::REACH, out);
        self.ahead[2].next(&self.arena, 2 * prefault::REACH, out);
    }

    /// A node enters at index `i` (new or vacated), with no inputs and no uses.
    pub(super) fn enter(&mut self, i: usize) {
        if i == self.spans.len() {
            self.spans.push(Span::default());
            self.heads.push(NONE);
        } else {
            self.spans[i] = Span::default();
            self.heads[i] = NONE;
        }
    }

    /// Node `i`'s input entries, in port order (vacant ports included).
    #[inline]
    pub(super) fn inputs(&self, i: usize) -> &[Wire] {
        let s = self.spans[i];
        &self.arena[s.start as usize..(s.start + s.len) as usize]
    }

    /// The arena position of node `i`'s port `port`, if within its span.
    #[inline]
    fn at(&self, i: usize, port: u32) -> Option<usize> {
        let s = self.spans[i];
        (port < s.len).then_some((s.start + port) as usize)
    }

    /// Whether node `i`'s outputs have no reader.
    #[inline]
    pub(super) fn unread(&self, i: usize) -> bool {
        self.heads[i] == NONE
    }

    /// The uses of node `i`'s outputs, newest first: (consumer, edge).
    pub(super) fn uses(&self, i: usize) -> impl Iterator<Item = (NodeId, Edge)> + '_ {
        let mut at = self.heads[i];
        std::iter::from_fn(move || {
            if at == NONE {
                return None;
            }
            let w = self.arena[at as usize];
            let port = at - self.spans[w.to as usize].start;
            at = w.next;
            Some((NodeId::at(w.to), Edge { slot: w.slot, port }))
        })
    }

    /// The ports connected twice on node `i`.
    pub(super) fn doubled(&self, i: usize) -> impl Iterator<Item = u32> + '_ {
        self.doubled.iter().filter(move |&&(n, _)| n as usize == i).map(|&(_, p)| p)
    }

    /// Puts the entry at `at` at the head of its producer's list.
    #[inline]
    fn link(&mut self, at: usize) {
        let from = self.arena[at].from as usize;
        self.arena[at].next = self.heads[from];
        self.heads[from] = index(at);
    }

    /// Makes whatever in `from`'s list of uses points at entry `old` (the
    /// head, or the entry before it) point at `new` instead.
    fn repoint(&mut self, from: usize, old: usize, new: u32) {
        if self.heads[from] as usize == old {
            self.heads[from] = new;
            return;
        }
        let mut prev = self.heads[from];
        while prev != NONE {
            let next = self.arena[prev as usize].next;
            if next as usize == old {
                self.arena[prev as usize].next = new;
                return;
            }
            prev = next;
        }
        debug_assert!(false, "a live entry is on its producer's list");
    }

    /// Takes the entry at `at` out of its producer's list.
    fn unlink(&mut self, at: usize) {
        let w = self.arena[at];
        self.repoint(w.from as usize, at, w.next);
    }

    /// Gives a node with no inputs yet all of them at once, ports `0..n`
    /// (each put on its producer's list in port order, as one `connect` per
    /// port would).
    pub(super) fn set_all(&mut self, i: usize, inputs: &[ValueId]) {
        debug_assert_eq!(self.spans[i].len, 0);
        let start = self.arena.len();
        let to = index(i);
        for v in inputs {
            self.arena.push(Wire { from: v.node.0, slot: v.slot, to, next: NONE });
        }
        for at in start..self.arena.len() {
            self.link(at);
        }
        self.spans[i] = Span { start: index(start), len: index(inputs.len()) };
        self.count += inputs.len();
    }

    /// Feeds `v` into port `port` of node `to`.
    pub(super) fn connect(&mut self, v: ValueId, to: usize, port: u32) {
        if let Some(at) = self.at(to, port) {
            if self.arena[at].is_live() {
                self.doubled.push((index(to), port));
                self.unlink(at);
                self.arena[at].from = NONE;
                self.count -= 1;
            }
            self.fill(at, v);
            return;
        }
        let s = self.spans[to];
        if s.len == 0 {
            self.spans[to].start = index(self.arena.len());
        } else if (s.start + s.len) as usize != self.arena.len() {
            self.move_to_end(to);
        }
        let s = self.spans[to];
        let vacant = Wire { to: index(to), ..Wire::VACANT };
        self.arena.extend(std::iter::repeat_n(vacant, (port - s.len) as usize + 1));
        self.spans[to].len = port + 1;
        self.fill(self.arena.len() - 1, v);
    }

    /// Makes the vacant entry at `at` read `v`.
    fn fill(&mut self, at: usize, v: ValueId) {
        let w = &mut self.arena[at];
        debug_assert!(!w.is_live());
        (w.from, w.slot) = (v.node.0, v.slot);
        self.link(at);
        self.count += 1;
    }

    /// Makes port `port` of node `to` read `v`, taking off what it read.
    pub(super) fn set(&mut self, to: usize, port: u32, v: ValueId) {
        match self.at(to, port) {
            Some(at) if self.arena[at].is_live() => {
                self.unlink(at);
                let w = &mut self.arena[at];
                (w.from, w.slot) = (v.node.0, v.slot);
                self.link(at);
            }
            _ => self.connect(v, to, port),
        }
        self.doubled.retain(|&(n, p)| (n as usize, p) != (to, port));
    }

    /// Moves node `to`'s entries to the arena's end, so that it can grow.
    fn move_to_end(&mut self, to: usize) {
        let s = self.spans[to];
        let new = self.arena.len();
        for k in 0..s.len as usize {
            let old = s.start as usize + k;
            let w = self.arena[old];
            self.arena.push(w);
            self.arena[old] = Wire::VACANT;
            if w.is_live() {
                self.repoint(w.from as usize, old, index(new + k));
            }
        }
        self.spans[to].start = index(new);
    }

    /// Makes every use of `old` read `new`: each, newest first, is taken off
    /// `old`'s producer's list and put at the head of `new`'s.
    pub(super) fn replace(&mut self, old: ValueId, new: ValueId) {
        let mut moving: SmallVec<[usize; 4]> = SmallVec::new();
        let mut at = self.heads[old.node.index()];
        while at != NONE {
            let w = self.arena[at as usize];
            if w.slot == old.slot {
                moving.push(at as usize);
            }
            at = w.next;
        }
        for at in moving {
            self.unlink(at);
            let w = &mut self.arena[at];
            (w.from, w.slot) = (new.node.0, new.slot);
            self.link(at);
        }
    }

    /// Takes node `i`'s inputs off their producers' lists (the node is
    /// being removed; nothing reads it).
    pub(super) fn remove(&mut self, i: usize) {
        let s = self.spans[i];
        for at in s.start as usize..(s.start + s.len) as usize {
            if self.arena[at].is_live() {
                self.unlink(at);
                self.arena[at] = Wire::VACANT;
                self.count -= 1;
            }
        }
        self.spans[i] = Span::default();
        self.doubled.retain(|&(n, _)| n as usize != i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the arena must agree with: every edge (from, slot, to, port),
    /// oldest first, as a multigraph that keeps edges in insertion order
    /// (petgraph's, which the arena replaced) has them.
    #[derive(Default)]
    struct Model {
        nodes: Vec<bool>,
        edges: Vec<(u32, u32, u32, u32)>,
        doubled: Vec<(u32, u32)>,
    }

    #[derive(Clone, Debug)]
    enum Step {
        Add(Vec<(u8, u8)>),
        Connect(u8, u8, u8, u8),
        Set(u8, u8, u8, u8),
        Replace(u8, u8, u8, u8),
        Remove(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        let v = (any::<u8>(), 0u8..2);
        prop_oneof![
            proptest::collection::vec(v, 0..4).prop_map(Step::Add),
            (any::<u8>(), 0u8..2, any::<u8>(), 0u8..4).prop_map(|(a, b, c, d)| Step::Connect(a, b, c, d)),
            (any::<u8>(), 0u8..2, any::<u8>(), 0u8..4).prop_map(|(a, b, c, d)| Step::Set(a, b, c, d)),
            (any::<u8>(), 0u8..2, any::<u8>(), 0u8..2).prop_map(|(a, b, c, d)| Step::Replace(a, b, c, d)),
            any::<u8>().prop_map(Step::Remove),
        ]
    }

    fn value(node: u32, slot: u8) -> ValueId {
        ValueId { node: NodeId::at(node), slot: slot as u32 }
    }

    proptest! {
        /// Any sequence of additions, connections, rewirings and removals
        /// leaves every node's inputs, uses (in order) and ports as the
        /// multigraph model has them.
        #[test]
        fn agrees_with_a_multigraph(steps in proptest::collection::vec(step(), 1..60)) {
            let (mut w, mut m) = (Wires::default(), Model::default());
            let live: fn(&Model) -> Vec<u32> =
                |m| (0..m.nodes.len() as u32).filter(|&i| m.nodes[i as usize]).collect();
            for s in steps {
                let nodes = live(&m);
                let pick = |k: u8| (!nodes.is_empty()).then(|| nodes[k as usize % nodes.len()]);
                match s {
                    Step::Add(ins) => {
                        let ins: Vec<ValueId> = ins.iter().filter_map(|&(k, s)| pick(k).map(|n| value(n, s))).collect();
                        let i = m.nodes.len();
                        m.nodes.push(true);
                        w.enter(i);
                        w.set_all(i, &ins);
                        for (p, v) in ins.iter().enumerate() {
                            m.edges.push((v.node.0, v.slot, i as u32, p as u32));
                        }
                    }
                    Step::Connect(a, slot, b, port) | Step::Set(a, slot, b, port) => {
                        let (Some(a), Some(b)) = (pick(a), pick(b)) else { continue };
                        let port = port as u32;
                        let on_port = m.edges.iter().position(|e| e.2 == b && e.3 == port);
                        if let Some(k) = on_port {
                            m.edges.remove(k);
                        }
                        if matches!(s, Step::Connect(..)) {
                            if on_port.is_some() {
                                m.doubled.push((b, port));
                            }
                            w.connect(value(a, slot), b as usize, port);
                        } else {
                            m.doubled.retain(|&d| d != (b, port));
                            w.set(b as usize, port, value(a, slot));
                        }
                        m.edges.push((a, slot as u32, b, port));
                    }
                    Step::Replace(a, sa, b, sb) => {
                        let (Some(a), Some(b)) = (pick(a), pick(b)) else { continue };
                        let (sa, sb) = (sa as u32, sb as u32);
                        // Newest first, each re-added as the newest.
                        let moved: Vec<_> = m.edges.iter().rev().filter(|e| (e.0, e.1) == (a, sa)).copied().collect();
                        m.edges.retain(|e| (e.0, e.1) != (a, sa));
                        m.edges.extend(moved.into_iter().map(|e| (b, sb, e.2, e.3)));
                        w.replace(value(a, sa as u8), value(b, sb as u8));
                    }
                    Step::Remove(k) => {
                        let Some(n) = pick(k) else { continue };
                        if m.edges.iter().any(|e| e.0 == n) {
                            prop_assert!(!w.unread(n as usize));
                            continue;
                        }
                        m.nodes[n as usize] = false;
                        m.edges.retain(|e| e.2 != n);
                        m.doubled.retain(|d| d.0 != n);
                        w.remove(n as usize);
                    }
                }
                prop_assert_eq!(w.count(), m.edges.len());
                for n in live(&m) {
                    let mut ins: Vec<(u32, ValueId)> =
                        m.edges.iter().filter(|e| e.2 == n).map(|e| (e.3, value(e.0, e.1 as u8))).collect();
                    ins.sort_by_key(|e| e.0);
                    let have: Vec<(u32, ValueId)> = w
                        .inputs(n as usize)
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.is_live())
                        .map(|(p, x)| (p as u32, x.value()))
                        .collect();
                    prop_assert_eq!(have, ins);
                    let uses: Vec<(NodeId, Edge)> = m
                        .edges
                        .iter()
                        .rev()
                        .filter(|e| e.0 == n)
                        .map(|e| (NodeId::at(e.2), Edge { slot: e.1, port: e.3 }))
                        .collect();
                    prop_assert_eq!(w.uses(n as usize).collect::<Vec<_>>(), uses);
                    prop_assert_eq!(w.unread(n as usize), !m.edges.iter().any(|e| e.0 == n));
                    let doubled: Vec<u32> = m.doubled.iter().filter(|d| d.0 == n).map(|d| d.1).collect();
                    prop_assert_eq!(w.doubled(n as usize).collect::<Vec<_>>(), doubled);
                }
            }
        }
    }
}
