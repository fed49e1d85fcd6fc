//! Static memory planning: one byte offset in one arena per value.
//!
//! A device executor that allocates nothing during a training step needs,
//! once per graph, an offset for every intermediate value such that values
//! live at the same time never share bytes. Finding the smallest such arena
//! is NP-hard (dynamic storage allocation), so [`plan`] uses the greedy
//! heuristic of XLA's and TVM's planners: place the largest values first,
//! each in the smallest gap that fits among the values it coexists with.
//! [`peak_live_bytes`] is the lower bound that any plan must meet, to judge
//! the result by.
//!
//! Steps are node indices in execution order, and a value is live at both
//! ends of its lifetime: a node's output never shares bytes with its inputs,
//! so kernels need not be safe to run in place.

/// The alignment of every offset and the granule of every size, in bytes:
/// cuBLASLt and vectorised kernels want 256-byte aligned operands.
pub const ALIGN: u64 = 256;

/// One value to place: `bytes` long, live from step `start` to step `end`
/// inclusive. A request with `start > end` is read as live from `end` to
/// `start`, so that no input is rejected and none is given too little.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// The value's size; it is rounded up to a multiple of [`ALIGN`].
    pub bytes: u64,
    /// The first step at which the value is live (usually its producer).
    pub start: usize,
    /// The last step at which the value is live (usually its last reader).
    pub end: usize,
}

impl Request {
    /// The lifetime as an ordered pair of steps.
    fn lifetime(&self) -> (usize, usize) {
        (self.start.min(self.end), self.start.max(self.end))
    }
}

/// Where each value lives in the arena.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemPlan {
    /// One offset per request, in the order of the requests; each is a
    /// multiple of [`ALIGN`], and the offset plus the request's size rounded
    /// up to [`ALIGN`] is at most `arena_bytes`, so that sum cannot
    /// overflow. Zero-byte requests get offset 0.
    pub offsets: Vec<u64>,
    /// The arena's size: the largest `offset + aligned size`.
    pub arena_bytes: u64,
}

/// A size rounded up to [`ALIGN`], in u128 where the rounding cannot
/// overflow (nor can a sum of up to 2^64 such sizes).
fn aligned(bytes: u64) -> u128 {
    let mask = u128::from(ALIGN - 1);
    (u128::from(bytes) + mask) & !mask
}

/// Places every request in one arena: values whose lifetimes intersect get
/// disjoint byte ranges, and the arena is kept small (see
/// [`peak_live_bytes`] for the bound it is measured against).
///
/// Requests are taken by size, largest first (ties: longer lifetime first,
/// then lower index, so the plan is a function of the input alone). Each
/// goes into the smallest gap, lowest on ties, between the already placed
/// values whose lifetimes intersect its own, or above them all if no gap
/// is big enough. Big values placed first leave gaps that small ones fill.
///
/// Returns `None` only if the arena would exceed `u64::MAX` bytes, which no
/// device can hold; below that, no arithmetic here can overflow.
///
/// Cost: O(n log n) to sort, plus per request O(log n) tree nodes read
/// and as many updated (see below), each holding the union of some placed
/// values' bytes as f disjoint runs; reading, sorting and merging the runs
/// costs O(F log F) for the F ≤ Σf runs read. The neighbours (the placed
/// values whose lifetimes intersect a request's) are thus found
/// output-sensitively and as runs of adjacent bytes rather than one by one:
/// in a training graph, where the saved activations are live across most
/// of the step and meet almost every other value, they pack into a few
/// runs (10^5 synthetic training-shaped values: 0.7 s, release). At worst
/// (no two neighbours adjacent) F is the number of neighbours, up to n,
/// and the total O(n² log n). Memory: O(n log n).
pub fn plan(requests: &[Request]) -> Option<MemPlan> {
    let n = requests.len();
    let sizes: Vec<u64> = requests.iter().map(|r| u64::try_from(aligned(r.bytes)).ok()).collect::<Option<_>>()?;
    let lifetimes: Vec<(usize, usize)> = requests.iter().map(Request::lifetime).collect();

    // Steps may be sparse and as large as usize::MAX: index the trees by the
    // rank of each step among those used instead.
    let mut steps: Vec<usize> = lifetimes.iter().flat_map(|&(s, e)| [s, e]).collect();
    steps.sort_unstable();
    steps.dedup();
    let rank = |step: usize| steps.partition_point(|&x| x < step);

    let mut order: Vec<usize> = (0..n).filter(|&i| sizes[i] > 0).collect();
    let length = |i: usize| lifetimes[i].1 - lifetimes[i].0;
    // The index tiebreak makes this a total order, so the unstable sort is
    // deterministic.
    order.sort_unstable_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(length(b).cmp(&length(a))).then(a.cmp(&b)));

    // A placed value's lifetime intersects [s, e] iff it contains s or it
    // starts in (s, e]. `during` stores each placed value's bytes at the
    // nodes covering its lifetime, so those containing s lie on the path
    // from s to the root; `starting` stores them at its start and every
    // ancestor, so those starting in (s, e] lie at the nodes covering that
    // range. Each neighbour is found once, either way.
    let mut during = Tree::new(steps.len());
    let mut starting = Tree::new(steps.len());
    let mut nodes: Vec<usize> = Vec::new();
    let mut busy: Vec<ByteRange> = Vec::new();
    let mut offsets = vec![0u64; n];
    let mut arena: u64 = 0;
    for &i in &order {
        let (s, e) = (rank(lifetimes[i].0), rank(lifetimes[i].1));
        busy.clear();
        during.path(s, &mut nodes);
        busy.extend(nodes.iter().flat_map(|&v| during.union(v)));
        if s < e {
            starting.cover(s + 1, e, &mut nodes);
            busy.extend(nodes.iter().flat_map(|&v| starting.union(v)));
        }
        busy.sort_unstable();
        let offset = best_fit(&busy, sizes[i]);
        let end = offset.checked_add(sizes[i])?;
        offsets[i] = offset;
        arena = arena.max(end);
        during.cover(s, e, &mut nodes);
        during.insert(&nodes, (offset, end));
        starting.path(s, &mut nodes);
        starting.insert(&nodes, (offset, end));
    }
    Some(MemPlan { offsets, arena_bytes: arena })
}

/// A byte range `start..end` in the arena.
type ByteRange = (u64, u64);

/// The offset of the smallest gap of at least `size` bytes below the top of
/// `busy` (ranges sorted by start, possibly overlapping), the lowest of
/// equal gaps; the top if no gap fits. The result is a multiple of
/// [`ALIGN`] when every bound in `busy` is.
fn best_fit(busy: &[ByteRange], size: u64) -> u64 {
    let mut best: Option<(u64, u64)> = None; // (gap, its offset)
    let mut top: u64 = 0;
    for &(lo, hi) in busy {
        if lo > top {
            let gap = lo - top;
            if gap >= size && best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, top));
            }
        }
        top = top.max(hi);
    }
    best.map_or(top, |(_, offset)| offset)
}

/// A perfect binary tree over step ranks whose every node holds a union of
/// byte ranges (disjoint, sorted; touching ones merged). Which nodes a
/// value is stored at is up to the caller: see [`Tree::cover`] and
/// [`Tree::path`].
struct Tree {
    leaves: usize,
    unions: Vec<Vec<ByteRange>>,
}

impl Tree {
    fn new(ranks: usize) -> Self {
        let leaves = ranks.next_power_of_two();
        Tree { leaves, unions: vec![Vec::new(); 2 * leaves] }
    }

    /// Sets `out` to the O(log m) nodes whose leaves partition the ranks
    /// `lo..=hi` (both below the tree's rank count).
    fn cover(&self, lo: usize, hi: usize, out: &mut Vec<usize>) {
        out.clear();
        let (mut l, mut r) = (lo + self.leaves, hi + self.leaves + 1);
        while l < r {
            if l & 1 == 1 {
                out.push(l);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                out.push(r);
            }
            l /= 2;
            r /= 2;
        }
    }

    /// Sets `out` to the nodes from the leaf of `rank` to the root: exactly
    /// one of them is among the [`Tree::cover`] of any range holding `rank`,
    /// and none of a range that does not.
    fn path(&self, rank: usize, out: &mut Vec<usize>) {
        out.clear();
        out.extend(std::iter::successors(Some(rank + self.leaves), |&v| (v > 1).then_some(v / 2)));
    }

    /// The union held at node `v`.
    fn union(&self, v: usize) -> impl Iterator<Item = ByteRange> + '_ {
        self.unions[v].iter().copied()
    }

    /// Adds `(lo, hi)` (non-empty) to the union at each of `nodes`, merging
    /// the ranges it overlaps or touches: O(log f) to find them and O(f) to
    /// shift the rest, f the ranges held at the node.
    fn insert(&mut self, nodes: &[usize], (lo, hi): ByteRange) {
        for &v in nodes {
            let union = &mut self.unions[v];
            // Both ends increase along a union, so these are prefixes; the
            // ranges between them end at or after `lo` and start at or
            // before `hi`: they merge with the new one.
            let first = union.partition_point(|&(_, h)| h < lo);
            let after = union.partition_point(|&(l, _)| l <= hi);
            let merged = match union.get(first..after) {
                Some([(l, _), .., (_, h)]) | Some([(l, h)]) => (lo.min(*l), hi.max(*h)),
                _ => (lo, hi),
            };
            union.splice(first..after, [merged]);
        }
    }
}

/// The largest total aligned size of the values live at one step: they
/// pairwise intersect, so no plan can use less. Saturates at `u64::MAX`
/// (where [`plan`] returns `None`).
pub fn peak_live_bytes(requests: &[Request]) -> u64 {
    // (step, departs, size): at one step arrivals sort before departures,
    // since values whose lifetimes merely touch are live together.
    let mut events: Vec<(usize, bool, u128)> = Vec::with_capacity(2 * requests.len());
    for r in requests.iter().filter(|r| r.bytes > 0) {
        let (s, e) = r.lifetime();
        events.push((s, false, aligned(r.bytes)));
        events.push((e, true, aligned(r.bytes)));
    }
    events.sort_unstable_by_key(|&(step, departs, _)| (step, departs));
    let (mut live, mut peak) = (0u128, 0u128);
    for (_, departs, size) in events {
        if departs {
            // Its arrival came first, so this cannot underflow.
            live -= size;
        } else {
            live += size;
            peak = peak.max(live);
        }
    }
    u64::try_from(peak).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: u64, start: usize, end: usize) -> Request {
        Request { bytes, start, end }
    }

    fn plan_ok(requests: &[Request]) -> MemPlan {
        let p = plan(requests).expect("the arena fits in u64");
        assert_eq!(p.offsets.len(), requests.len());
        p
    }

    #[test]
    fn empty_input_gives_an_empty_arena() {
        assert_eq!(plan_ok(&[]), MemPlan { offsets: vec![], arena_bytes: 0 });
        assert_eq!(peak_live_bytes(&[]), 0);
    }

    #[test]
    fn disjoint_lifetimes_share_offset_zero() {
        let r = [req(1024, 0, 1), req(512, 2, 3), req(2048, 4, 9)];
        let p = plan_ok(&r);
        assert_eq!(p.offsets, vec![0, 0, 0]);
        assert_eq!(p.arena_bytes, 2048);
        assert_eq!(peak_live_bytes(&r), 2048);
    }

    #[test]
    fn overlapping_lifetimes_get_disjoint_ranges() {
        let r = [req(512, 0, 5), req(1024, 3, 9)];
        let p = plan_ok(&r);
        // The larger is placed first.
        assert_eq!(p.offsets, vec![1024, 0]);
        assert_eq!(p.arena_bytes, 1536);
        assert_eq!(peak_live_bytes(&r), 1536);
    }

    #[test]
    fn lifetimes_that_touch_at_one_step_overlap() {
        // The second value is written by the node that last reads the first.
        let r = [req(256, 0, 3), req(256, 3, 5)];
        assert_eq!(plan_ok(&r).offsets, vec![0, 256]);
        assert_eq!(peak_live_bytes(&r), 512);
    }

    #[test]
    fn a_gap_is_reused_by_a_later_smaller_value() {
        // C coexists only with B, which sits above A's bytes.
        let r = [req(1024, 0, 4), req(1024, 3, 7), req(512, 6, 9)];
        let p = plan_ok(&r);
        assert_eq!(p.offsets, vec![0, 1024, 0]);
        assert_eq!(p.arena_bytes, 2048);
    }

    #[test]
    fn the_smallest_gap_that_fits_wins_over_the_lowest() {
        let r = [
            req(1024, 0, 1), // 0..1024
            req(768, 0, 9),  // 1024..1792
            req(512, 0, 1),  // 1792..2304
            req(256, 0, 9),  // 2304..2560
            // Coexists with the two long ones only: gaps of 1024 bytes at 0
            // and of 512 at 1792.
            req(256, 5, 9),
        ];
        let p = plan_ok(&r);
        assert_eq!(p.offsets, vec![0, 1024, 1792, 2304, 1792]);
        assert_eq!(p.arena_bytes, 2560);
        assert_eq!(peak_live_bytes(&r), 2560);
    }

    #[test]
    fn sizes_round_up_to_the_alignment() {
        let r = [req(1, 0, 2), req(300, 1, 3), req(257, 2, 2)];
        let p = plan_ok(&r);
        // 300 and 257 round to 512, 1 to 256; equal sizes go by lifetime.
        assert_eq!(p.offsets, vec![1024, 0, 512]);
        assert_eq!(p.arena_bytes, 1280);
        assert!(p.offsets.iter().all(|o| o % ALIGN == 0));
        assert_eq!(peak_live_bytes(&r), 1280);
    }

    #[test]
    fn zero_byte_requests_take_no_room() {
        let r = [req(0, 0, 9), req(512, 0, 9), req(0, 3, 4), req(256, 2, 5)];
        let p = plan_ok(&r);
        assert_eq!(p.offsets, vec![0, 0, 0, 512]);
        assert_eq!(p.arena_bytes, 768);
        let zeros = [req(0, 0, 1), req(0, 0, 1)];
        assert_eq!(plan_ok(&zeros), MemPlan { offsets: vec![0, 0], arena_bytes: 0 });
        assert_eq!(peak_live_bytes(&zeros), 0);
    }

    #[test]
    fn equal_requests_are_placed_in_index_order() {
        let r = [req(256, 0, 1); 4];
        assert_eq!(plan_ok(&r).offsets, vec![0, 256, 512, 768]);
    }

    #[test]
    fn a_reversed_lifetime_is_read_in_order() {
        let r = [req(256, 5, 2), req(256, 3, 3)];
        assert_eq!(plan_ok(&r).offsets, vec![0, 256]);
        assert_eq!(peak_live_bytes(&r), 512);
    }

    #[test]
    fn extreme_steps_are_handled() {
        let r = [req(256, usize::MAX, usize::MAX), req(256, 0, usize::MAX), req(256, usize::MAX - 1, 0)];
        let p = plan_ok(&r);
        // The last one coexists with the first only at step usize::MAX,
        // where the second (reversed) is no longer live.
        assert_eq!(p.offsets, vec![256, 0, 256]);
        assert_eq!(p.arena_bytes, 512);
        assert_eq!(peak_live_bytes(&r), 512);
    }

    #[test]
    fn an_arena_beyond_u64_is_refused() {
        let half = 1u64 << 63;
        assert_eq!(plan(&[req(half, 0, 1), req(half, 1, 2)]), None);
        assert_eq!(peak_live_bytes(&[req(half, 0, 1), req(half, 1, 2)]), u64::MAX);
        let p = plan_ok(&[req(half, 0, 1), req(half, 2, 3)]);
        assert_eq!(p, MemPlan { offsets: vec![0, 0], arena_bytes: half });
        // Rounding up alone overflows.
        assert_eq!(plan(&[req(u64::MAX, 0, 0)]), None);
        assert_eq!(peak_live_bytes(&[req(u64::MAX, 0, 0)]), u64::MAX);
        let top = u64::MAX - (ALIGN - 1);
        assert_eq!(plan_ok(&[req(top, 0, 0)]).arena_bytes, top);
    }

    #[test]
    fn a_path_meets_each_cover_holding_its_rank_once() {
        let t = Tree::new(7);
        let (mut path, mut cover) = (Vec::new(), Vec::new());
        for lo in 0..7 {
            for hi in lo..7 {
                t.cover(lo, hi, &mut cover);
                for rank in 0..7 {
                    t.path(rank, &mut path);
                    let met = path.iter().filter(|v| cover.contains(v)).count();
                    assert_eq!(met, usize::from((lo..=hi).contains(&rank)), "{lo}..={hi} at {rank}");
                }
            }
        }
    }

    #[test]
    fn unions_merge_overlapping_and_touching_ranges() {
        let mut t = Tree::new(1);
        for r in [(512, 768), (0, 256), (1024, 1280), (256, 512), (2048, 2304), (1000, 1100)] {
            t.insert(&[1], r);
        }
        assert_eq!(t.union(1).collect::<Vec<_>>(), vec![(0, 768), (1000, 1280), (2048, 2304)]);
        t.insert(&[1], (700, 2048));
        assert_eq!(t.union(1).collect::<Vec<_>>(), vec![(0, 2304)]);
    }
}
