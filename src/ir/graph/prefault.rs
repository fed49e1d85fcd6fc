//! Memory for the graph's tables, backed ahead of use on another core.
//!
//! A lowered 10^6-op graph fills some 800 MB of tables, and the first
//! write to each 4 KiB page traps into the kernel, which zeroes it: 0.3-0.6 s
//! of system time at 10^6 ops, on the thread doing the work. As the tables
//! fill, a pool thread asks the kernel (`MADV_POPULATE_WRITE`, Linux 5.14
//! and later) to back the room just ahead of where they are written, so
//! the zeroing happens beside the work instead of in it. Elsewhere, and
//! where the kernel refuses, pages fault in as before.

/// Nodes added between two requests; a graph smaller than this makes none.
pub(super) const TICK: usize = 1 << 14;

/// How far ahead of a table's length its room is backed, in elements.
pub(super) const REACH: usize = 1 << 16;

/// A whole table is backed at once only from this size.
pub(super) const MIN_BYTES: usize = 8 << 20;

/// Ranges to back: (address, bytes).
pub(super) type Ranges = smallvec::SmallVec<[(usize, usize); 8]>;

/// How far one table's room has been asked for.
#[derive(Clone, Debug, Default)]
pub(super) struct Ahead {
    /// The buffer asked for (a vector that grew has a new one).
    buf: usize,
    /// Elements of it asked for.
    upto: usize,
}

impl Ahead {
    /// Adds to `out` the room of `v` up to `reach` elements past its
    /// length that was not asked for yet.
    pub(super) fn next<T>(&mut self, v: &Vec<T>, reach: usize, out: &mut Ranges) {
        let base = v.as_ptr() as usize;
        if base != self.buf {
            *self = Ahead { buf: base, upto: v.len() };
        }
        let from = self.upto.max(v.len());
        let to = (v.len() + reach).min(v.capacity());
        if from < to {
            let size = std::mem::size_of::<T>();
            out.push((base + from * size, (to - from) * size));
            self.upto = to;
        }
    }
}

/// Asks a pool thread to back `ranges` with memory.
pub(super) fn populate(ranges: Ranges) {
    if ranges.is_empty() {
        return;
    }
    rayon::spawn(move || {
        for (addr, len) in ranges {
            back(addr, len);
        }
    });
}

/// Backs `len` bytes from `addr` now, the upper half on a pool thread and
/// the lower half on this one, for a table about to be written from its
/// start on. Backed ahead by the pool thread alone, a table that is read
/// before it is written (a probe finds a slot empty, then fills it) first
/// maps the shared zero page there, and the write then replaces it, which
/// flushes the TLB of the other core too: those flushes were 3 % of a 10^6
/// run's samples.
pub(super) fn populate_split(addr: usize, len: usize) {
    let half = len / 2;
    populate([(addr + half, len - half)].into_iter().collect());
    back(addr, half);
}

/// Backs the whole pages within `len` bytes from `addr`.
fn back(addr: usize, len: usize) {
    const PAGE: usize = 4096;
    let start = addr.next_multiple_of(PAGE);
    let end = (addr + len) / PAGE * PAGE;
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: MADV_POPULATE_WRITE faults pages in as a write would, without
    // reading or writing their contents, so whatever owns the range (a
    // table's room, or memory reused since) sees no change. A range no
    // longer mapped, or a kernel without the advice, gives an error, which
    // only means the pages fault in when written.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The room ahead is asked for once, from one request to the next,
    /// afresh when the vector moves; backing it changes neither what the
    /// vector holds nor what is written into it later.
    #[test]
    fn backing_ahead_leaves_contents_alone() {
        let mut v: Vec<u64> = Vec::with_capacity(4 * REACH);
        v.extend((0..REACH as u64 / 2).map(|i| i * 7 + 1));
        let (mut a, mut out) = (Ahead::default(), Ranges::new());
        a.next(&v, REACH, &mut out);
        assert_eq!(out.as_slice(), &[(v.as_ptr() as usize + v.len() * 8, REACH * 8)]);
        a.next(&v, REACH, &mut out);
        assert_eq!(out.len(), 1, "nothing new to ask for");
        v.extend((REACH as u64 / 2..REACH as u64).map(|i| i * 7 + 1));
        a.next(&v, REACH, &mut out);
        assert_eq!(out[1], (v.as_ptr() as usize + (REACH + REACH / 2) * 8, REACH / 2 * 8), "from where the last ended");
        for &(addr, len) in &out {
            back(addr, len);
        }
        back(v.as_ptr() as usize, v.len() * 8);
        populate_split(v.as_ptr() as usize, v.len() * 8);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 7 + 1));
        let n = v.len() as u64;
        v.extend((n..5 * REACH as u64).map(|i| i * 7 + 1));
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 7 + 1));
        out.clear();
        a.next(&v, REACH, &mut out);
        assert_eq!(out.first().map(|r| r.0), Some(v.as_ptr() as usize + v.len() * 8), "a moved vector starts afresh");
        let full: Vec<u8> = vec![3; 10];
        let mut none = Ranges::new();
        Ahead::default().next(&full, REACH, &mut none);
        assert!(none.is_empty(), "no room, nothing to back");
    }
}
