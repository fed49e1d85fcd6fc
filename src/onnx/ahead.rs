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

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::raw::{convert_piece, cores, Rounding, PIECE, STREAM_MIN};

/// Wakes a pool thread, so that it is up when [`Ahead::start`] hands it
/// work: a sleeping rayon worker takes tens of µs to wake, which delayed
/// the conversions by as much (SqueezeNet's in-process best: 0.30–0.34 ms
/// without, 0.27–0.29 ms with, measured side by side). Call it before
/// decoding the model.
pub fn wake() {
    if cores() > 1 {
        rayon::spawn(|| {});
    }
}

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
    /// The next piece to claim.
    next: AtomicUsize,
    /// Pieces converted.
    done: AtomicUsize,
    /// The arena's buffer (owned by [`Ahead::arena`]), as an address so that
    /// the threads can share it: each piece writes only its own range.
    base: usize,
    /// Whether the conversions use non-temporal stores (see [`STREAM_MIN`]).
    stream: bool,
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
            // thread (the counter), and the arena is neither read nor freed
            // before every claimed piece is counted done (`wait`).
            let dst = unsafe {
                std::slice::from_raw_parts_mut((self.base as *mut std::mem::MaybeUninit<u8>).add(p.dst), len)
            };
            convert_piece(src, dst, *r, self.stream);
            // Release: the piece's bytes are written before it counts as done.
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Waits until `claimed` pieces are converted (the threads are at most
    /// one piece each from done).
    fn wait(&self, claimed: usize) {
        while self.done.load(Ordering::Acquire) < claimed {
            std::thread::yield_now();
        }
    }
}

/// Conversions under way. Dropping it stops handing out pieces and waits
/// for those being converted.
pub struct Ahead {
    shared: Arc<Shared>,
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
    /// rayon's pool, on all but one of the cores, since the caller goes on
    /// working. `None` when there is too little to convert to be worth it
    /// or no second core.
    pub fn start(jobs: Vec<(Bytes, Rounding)>) -> Option<Ahead> {
        let values: usize = jobs.iter().map(|(s, _)| s.len() / 4).sum();
        if values < MIN_VALUES || cores() < 2 {
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
        let helpers = (cores() - 1).min(pieces.len()).min(15);
        let shared = Arc::new(Shared {
            jobs,
            pieces,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            base: arena.as_mut_ptr() as usize,
            stream: at >= STREAM_MIN,
        });
        for _ in 0..helpers {
            let s = Arc::clone(&shared);
            rayon::spawn(move || s.work());
        }
        Some(Ahead { shared, arena, spans })
    }

    /// Helps with what is left, waits for the pieces being converted, and
    /// returns every conversion by its [`key`].
    pub fn finish(mut self) -> FxHashMap<Key, Bytes> {
        self.shared.work();
        self.shared.wait(self.shared.pieces.len());
        let total = self.spans.last().map_or(0, |s| s.1);
        let mut arena = std::mem::take(&mut self.arena);
        // SAFETY: every piece is converted (`done` counts them all, with
        // acquire ordering), and the pieces cover the first `total` bytes
        // exactly.
        unsafe { arena.set_len(total) };
        let arena = Bytes::from(arena);
        self.shared.jobs.iter().zip(&self.spans).map(|((src, r), &(a, b))| (key(src, *r), arena.slice(a..b))).collect()
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // Stop handing out pieces, then wait for those claimed: they write
        // into `arena`. A helper that starts later finds nothing to claim.
        // (After `finish`, every piece is done: nothing to wait for.)
        let claimed = self.shared.next.swap(usize::MAX / 2, Ordering::Relaxed).min(self.shared.pieces.len());
        self.shared.wait(claimed);
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
            // Enough for streaming stores (STREAM_MIN bytes written in all).
            (f32_bytes(STREAM_MIN / 2 + 9, 5), Rounding::F16),
        ];
        let want = convert(&jobs);
        match Ahead::start(jobs.clone()) {
            Some(a) => {
                let got = a.finish();
                for ((src, r), w) in jobs.iter().zip(&want) {
                    assert_eq!(got[&key(src, *r)], w, "{r:?}");
                }
            }
            None => assert!(cores() < 2),
        }
        // Too little to be worth a thread.
        assert!(Ahead::start(vec![(f32_bytes(100, 5), Rounding::F16)]).is_none());
    }

    #[test]
    fn dropping_unfinished_work_waits_for_the_pieces_under_way() {
        for _ in 0..20 {
            let jobs = vec![(f32_bytes(8 * PIECE, 6), Rounding::F16)];
            drop(Ahead::start(jobs));
        }
    }
}
