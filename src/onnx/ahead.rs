//! Weight conversions started ahead, on other threads, while the caller
//! imports, lowers and exports the graph.
//!
//! `mpc lower model.onnx` knows a model's weights as soon as the protobuf is
//! decoded, and which rounding nearly all of them will get (the low type of
//! the lowering), long before the export asks for them. [`Ahead::start`]
//! converts them on background threads meanwhile; the export takes the
//! results it asked for from [`Ahead::finish`] (which converts what the
//! threads have not reached yet on the calling thread too) and converts
//! the rest itself. A guess that turns out wrong (a weight the export keeps
//! f32, or rounds otherwise) costs only the wasted conversion.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::raw::{convert_piece, Rounding, PIECE};

/// A conversion's key: the source bytes (where they are, how many) and the rounding.
pub type Key = (usize, usize, Rounding);

/// The key of converting `src` with `r`.
pub fn key(src: &Bytes, r: Rounding) -> Key {
    (src.as_ptr() as usize, src.len(), r)
}

/// Below this many values in all, converting ahead is not worth a thread.
const MIN_VALUES: usize = PIECE;

struct Piece {
    job: usize,
    /// Byte range of the source.
    src: (usize, usize),
    /// Byte offset in the arena.
    dst: usize,
}

struct Shared {
    jobs: Vec<(Bytes, Rounding)>,
    pieces: Vec<Piece>,
    next: AtomicUsize,
    /// The arena's buffer (owned by [`Ahead::arena`]), as an address so that
    /// the threads can share it: each piece writes only its own range.
    base: usize,
}

impl Shared {
    /// Claims and converts pieces until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = self.pieces.get(i) else { return };
            let (src, r) = &self.jobs[p.job];
            let src = &src[p.src.0..p.src.1];
            let len = src.len() / 4 * r.out_bytes();
            // SAFETY: the pieces' ranges lie inside the arena's capacity and do
            // not overlap (laid out in `start`); each is claimed by exactly one
            // thread (the counter), and the arena outlives every thread (joined
            // in `finish` or on drop before the buffer is freed).
            let dst = unsafe {
                std::slice::from_raw_parts_mut((self.base as *mut std::mem::MaybeUninit<u8>).add(p.dst), len)
            };
            convert_piece(src, dst, *r);
        }
    }
}

/// Conversions under way. Dropping it stops and joins the threads.
pub struct Ahead {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    arena: Vec<u8>,
    /// Each job's byte range in the arena.
    spans: Vec<(usize, usize)>,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ahead({} conversions, {} bytes)", self.spans.len(), self.arena.capacity())
    }
}

impl Ahead {
    /// Starts converting `jobs` (little-endian f32 bytes, rounding) on
    /// background threads: all but one of the cores, since the caller goes
    /// on working. `None` when there is too little to convert to be worth
    /// it or no second core.
    pub fn start(jobs: Vec<(Bytes, Rounding)>) -> Option<Ahead> {
        let values: usize = jobs.iter().map(|(s, _)| s.len() / 4).sum();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if values < MIN_VALUES || cores < 2 {
            return None;
        }
        let mut pieces = Vec::new();
        let mut spans = Vec::with_capacity(jobs.len());
        let mut at = 0;
        for (j, (src, r)) in jobs.iter().enumerate() {
            let start = at;
            let whole = src.len() / 4 * 4;
            let mut s = 0;
            while s < whole {
                let e = (s + PIECE * 4).min(whole);
                pieces.push(Piece { job: j, src: (s, e), dst: at });
                at += (e - s) / 4 * r.out_bytes();
                s = e;
            }
            spans.push((start, at));
        }
        let mut arena: Vec<u8> = Vec::with_capacity(at);
        super::raw::advise_huge_pages(arena.as_mut_ptr(), at);
        let threads = (cores - 1).min(pieces.len()).min(15);
        let shared = Arc::new(Shared { jobs, pieces, next: AtomicUsize::new(0), base: arena.as_mut_ptr() as usize });
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new().name("mpc-convert".into()).spawn(move || s.work()) {
                Ok(h) => handles.push(h),
                // No thread: `finish` converts on the caller's.
                Err(_) => break,
            }
        }
        Some(Ahead { shared, threads: handles, arena, spans })
    }

    /// Helps with what is left, waits for the threads, and returns every
    /// conversion by its [`key`].
    pub fn finish(mut self) -> FxHashMap<Key, Bytes> {
        self.shared.work();
        self.join();
        let total = self.spans.last().map_or(0, |s| s.1);
        let mut arena = std::mem::take(&mut self.arena);
        // SAFETY: every piece was converted (the counter passed the last one
        // and every thread that claimed one has been joined), and the pieces
        // cover the first `total` bytes exactly.
        unsafe { arena.set_len(total) };
        let arena = Bytes::from(arena);
        self.shared.jobs.iter().zip(&self.spans).map(|((src, r), &(a, b))| (key(src, *r), arena.slice(a..b))).collect()
    }

    fn join(&mut self) {
        for h in self.threads.drain(..) {
            // A conversion does not panic; if one did, `finish` would not be
            // reached with its piece unwritten: the panic propagates here.
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // Stop handing out pieces, then wait: the threads write into `arena`.
        self.shared.next.store(usize::MAX / 2, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::raw::convert;

    fn f32_bytes(n: usize, seed: u32) -> Bytes {
        let mut x = seed.wrapping_mul(2654435761) | 1;
        let v: Vec<u8> = (0..n)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (f32::from_bits(x) % 1e4).to_le_bytes()
            })
            .collect();
        Bytes::from(v)
    }

    #[test]
    fn ahead_converts_as_the_batch_does() {
        let jobs: Vec<(Bytes, Rounding)> = vec![
            (f32_bytes(PIECE + 3, 1), Rounding::F16),
            (f32_bytes(7, 2), Rounding::Bf16),
            (f32_bytes(2 * PIECE, 3), Rounding::Bf16AsF32),
            (f32_bytes(0, 4), Rounding::F16),
        ];
        let want = convert(&jobs);
        match Ahead::start(jobs.clone()) {
            Some(a) => {
                let got = a.finish();
                for ((src, r), w) in jobs.iter().zip(&want) {
                    assert_eq!(got[&key(src, *r)], w, "{r:?}");
                }
            }
            None => assert!(std::thread::available_parallelism().map_or(1, |n| n.get()) < 2),
        }
        // Too little to be worth a thread.
        assert!(Ahead::start(vec![(f32_bytes(100, 5), Rounding::F16)]).is_none());
    }

    #[test]
    fn dropping_unfinished_work_joins_the_threads() {
        let jobs = vec![(f32_bytes(8 * PIECE, 6), Rounding::F16)];
        drop(Ahead::start(jobs));
    }
}
