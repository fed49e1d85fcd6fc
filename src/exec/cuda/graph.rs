//! One CUDA graph per step: a step's device work recorded as a list of
//! launches and GEMMs with the exact bits of their arguments, captured
//! into a graph once the same list has come twice, and replayed while a
//! later step would issue that very list.
//!
//! The backend runs a step's host logic as usual, with the device
//! recording instead of issuing ([`Recorder`]); [`decide`] then compares
//! the recording with the captured graphs and the last steps' recordings,
//! a pure function of the lists, so whether a replay is exact is decided
//! by the bits a kernel would receive, not by reasoning about the graph.
//! A read or write of device memory in the middle of a step (a host-side
//! decision) issues what was recorded so far and makes the step one that
//! cannot be replayed.

use super::gpu::{Epilogue, Gemm, Launch};

/// A kernel argument as the kernel receives it: a pointer's device
/// address, or a scalar's bits (floats as bits, so that equality is exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(u32),
    F64(u64),
}

impl Arg {
    /// `a` as the kernel receives it; `address` gives a buffer's device
    /// address at a byte offset (each device checks the offset its way).
    pub fn of<M>(
        a: &super::gpu::KArg<'_, M>,
        address: impl FnOnce(&M, usize) -> Result<u64, super::gpu::GpuError>,
    ) -> Result<Arg, super::gpu::GpuError> {
        use super::gpu::KArg;
        Ok(match *a {
            KArg::Ptr(m, offset) => Arg::Ptr(address(m, offset)?),
            KArg::Addr(a) => Arg::Ptr(a),
            KArg::I32(v) => Arg::I32(v),
            KArg::U32(v) => Arg::U32(v),
            KArg::I64(v) => Arg::I64(v),
            KArg::U64(v) => Arg::U64(v),
            KArg::F32(v) => Arg::F32(v.to_bits()),
            KArg::F64(v) => Arg::F64(v.to_bits()),
        })
    }
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Arg::Ptr(a) => write!(f, "pointer {a:#x}"),
            Arg::I32(v) => write!(f, "i32 {v}"),
            Arg::U32(v) => write!(f, "u32 {v}"),
            Arg::I64(v) => write!(f, "i64 {v}"),
            Arg::U64(v) => write!(f, "u64 {v}"),
            Arg::F32(v) => write!(f, "f32 {}", f32::from_bits(v)),
            Arg::F64(v) => write!(f, "f64 {}", f64::from_bits(v)),
        }
    }
}

/// One unit of device work with its arguments resolved to bits.
#[derive(Clone, Debug)]
pub enum Work {
    Launch {
        name: String,
        cfg: Launch,
        args: Vec<Arg>,
    },
    /// A GEMM on the device addresses of A, B and C, and of its epilogue's
    /// bias and auxiliary matrix (0 when it has none).
    Gemm {
        gemm: Gemm,
        a: u64,
        b: u64,
        c: u64,
        bias: u64,
        aux: u64,
    },
}

/// A GEMM's description as bits, for exact comparison.
fn gemm_bits(g: &Gemm) -> ([u64; 10], [bool; 3], [u32; 2], [&'static str; 2], Epilogue) {
    (
        [g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.batch, g.stride_a, g.stride_b, g.stride_c],
        [g.trans_a, g.trans_b, g.tf32],
        [g.alpha.to_bits(), g.beta.to_bits()],
        [g.ab.name(), g.c.name()],
        g.epilogue,
    )
}

impl Work {
    /// What differs between `self` and `other`, in words, or None when a
    /// device would receive the same bits.
    pub fn difference(&self, other: &Work) -> Option<String> {
        match (self, other) {
            (Work::Launch { name, cfg, args }, Work::Launch { name: n2, cfg: c2, args: a2 }) => {
                if name != n2 {
                    return Some(format!("`{name}` where `{n2}` was"));
                }
                if cfg != c2 {
                    return Some(format!("`{name}`: launch sizes {cfg:?} where {c2:?} were"));
                }
                if args.len() != a2.len() {
                    return Some(format!("`{name}`: {} arguments where {} were", args.len(), a2.len()));
                }
                let i = args.iter().zip(a2).position(|(a, b)| a != b)?;
                Some(format!("`{name}` argument {i}: {} where {} was", args[i], a2[i]))
            }
            (
                Work::Gemm { gemm, a, b, c, bias, aux },
                Work::Gemm { gemm: g2, a: a2, b: b2, c: c2, bias: bias2, aux: aux2 },
            ) => {
                if gemm_bits(gemm) != gemm_bits(g2) {
                    return Some(format!(
                        "a GEMM {}x{}x{} (epilogue {:?}) where {}x{}x{} (epilogue {:?}) was",
                        gemm.m, gemm.n, gemm.k, gemm.epilogue, g2.m, g2.n, g2.k, g2.epilogue
                    ));
                }
                let at = [(a, a2, "A"), (b, b2, "B"), (c, c2, "C"), (bias, bias2, "bias"), (aux, aux2, "aux")]
                    .into_iter()
                    .find(|(x, y, _)| x != y)?;
                Some(format!("GEMM operand {} at {:#x} where {:#x} was", at.2, at.0, at.1))
            }
            (Work::Launch { name, .. }, Work::Gemm { .. }) => Some(format!("`{name}` where a GEMM was")),
            (Work::Gemm { .. }, Work::Launch { name, .. }) => Some(format!("a GEMM where `{name}` was")),
        }
    }
}

/// The first difference between two lists of work, in words (which item),
/// or None when they are the same bits.
pub fn difference(now: &[Work], then: &[Work]) -> Option<String> {
    if let Some((i, d)) = now.iter().zip(then).enumerate().find_map(|(i, (a, b))| Some((i, a.difference(b)?))) {
        return Some(format!("item {i} of the step's work: {d}"));
    }
    (now.len() != then.len()).then(|| format!("{} launches and GEMMs where {} were", now.len(), then.len()))
}

/// What a device records while a step's host logic runs.
#[derive(Debug, Default)]
pub struct Recorder {
    on: bool,
    work: Vec<Work>,
    issued: Vec<Work>,
    broken: Option<String>,
}

/// A recorded step: its work, and why it cannot be replayed (when a read
/// or write of device memory came in the middle; `work` is then what came
/// after it, the rest having been issued at that point).
#[derive(Debug, Default)]
pub struct Recording {
    pub work: Vec<Work>,
    pub broken: Option<String>,
    /// What was issued at the reads or writes, before `work`: with it, the
    /// step's whole list, which a later step may repeat (the reads and
    /// writes are not device work: a later step without them can be
    /// captured).
    pub issued: Vec<Work>,
}

impl Recording {
    /// The step's whole list of work, issued early or not.
    pub fn whole(self) -> Vec<Work> {
        let mut all = self.issued;
        all.extend(self.work);
        all
    }
}

impl Recorder {
    /// Starts keeping work instead of issuing it.
    pub fn start(&mut self) {
        *self = Recorder { on: true, ..Recorder::default() };
    }

    /// Keeps `w` when recording (None), or gives it back to be issued now.
    pub fn keep(&mut self, w: Work) -> Option<Work> {
        match self.on {
            true => {
                self.work.push(w);
                None
            }
            false => Some(w),
        }
    }

    /// A read or write of device memory (`what`) while recording: the
    /// work kept so far, to be issued before it; the step is not replayable.
    pub fn interrupt(&mut self, what: &str) -> Vec<Work> {
        if !self.on {
            return Vec::new();
        }
        if self.broken.is_none() {
            self.broken = Some(format!("the step {what} in the middle of its work"));
        }
        let w = std::mem::take(&mut self.work);
        self.issued.extend(w.iter().cloned());
        w
    }

    /// Stops recording.
    pub fn stop(&mut self) -> Recording {
        let r = std::mem::take(self);
        Recording { work: r.work, broken: r.broken, issued: r.issued }
    }
}

/// The most graphs a backend keeps: the state alternates between two
/// sets of buffers (a step reads one and writes the other), so steady
/// training repeats two lists of work.
pub const MAX_GRAPHS: usize = 2;

/// How a recorded step is to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Replay captured graph `i`.
    Replay(usize),
    /// Capture the work into a new graph (it repeats a recent step's), then replay it.
    Capture,
    /// Issue the work as it is, and why it is not a graph.
    Direct(String),
}

/// How the step `rec` runs, given the captured graphs' work and the work of
/// the last steps (`recent`, oldest first): a replay when a graph has the
/// same bits; a capture when a recent step had them (the list repeats) and
/// there is room; else directly, with the reason.
pub fn decide(rec: &Recording, graphs: &[&[Work]], recent: &[&[Work]]) -> Verdict {
    if let Some(why) = &rec.broken {
        return Verdict::Direct(why.clone());
    }
    if let Some(i) = graphs.iter().position(|g| difference(&rec.work, g).is_none()) {
        return Verdict::Replay(i);
    }
    if recent.iter().any(|r| difference(&rec.work, r).is_none()) {
        return match graphs.len() < MAX_GRAPHS {
            true => Verdict::Capture,
            false => Verdict::Direct(format!("the step repeats, but {MAX_GRAPHS} other graphs are captured already")),
        };
    }
    // The step two before is the one a steady step repeats (the state alternates).
    match recent.first() {
        None => Verdict::Direct("no earlier step to compare with (the first steps warm up)".into()),
        Some(_) if recent.len() < 2 => Verdict::Direct("the first steps warm up".into()),
        Some(r) => Verdict::Direct(format!(
            "the step's work differs from the step two before's: {}",
            difference(&rec.work, r).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::types::DType;

    fn launch(name: &str, args: Vec<Arg>) -> Work {
        Work::Launch { name: name.into(), cfg: Launch::linear(2, 256), args }
    }

    fn gemm(c: u64) -> Work {
        let g = Gemm::packed(4, 4, 4, (false, false), DType::F16, DType::F16);
        Work::Gemm { gemm: g, a: 0x1000, b: 0x2000, c, bias: 0, aux: 0 }
    }

    fn rec(work: Vec<Work>) -> Recording {
        Recording { work, broken: None, issued: Vec::new() }
    }

    #[test]
    fn differences_name_the_item_and_the_argument() {
        let a = vec![launch("cast_f32_f16", vec![Arg::Ptr(0x100), Arg::I64(8)]), gemm(0x3000)];
        assert_eq!(difference(&a, &a.clone()), None);
        let moved = vec![launch("cast_f32_f16", vec![Arg::Ptr(0x200), Arg::I64(8)]), gemm(0x3000)];
        assert_eq!(
            difference(&moved, &a).unwrap(),
            "item 0 of the step's work: `cast_f32_f16` argument 0: pointer 0x200 where pointer 0x100 was"
        );
        let c = vec![a[0].clone(), gemm(0x4000)];
        assert_eq!(difference(&c, &a).unwrap(), "item 1 of the step's work: GEMM operand C at 0x4000 where 0x3000 was");
        assert_eq!(difference(&a[..1], &a).unwrap(), "1 launches and GEMMs where 2 were");
        // Floats compare by bits: -0.0 is not 0.0 to a kernel that prints it.
        let z = [launch("scale_f32", vec![Arg::F64(0f64.to_bits())])];
        let nz = [launch("scale_f32", vec![Arg::F64((-0f64).to_bits())])];
        assert!(difference(&z, &nz).is_some());
    }

    #[test]
    fn a_step_is_captured_when_it_repeats_and_replayed_after() {
        let even = vec![launch("k", vec![Arg::Ptr(0x100)])];
        let odd = vec![launch("k", vec![Arg::Ptr(0x200)])];
        let first = vec![launch("k", vec![Arg::Ptr(0x300)])];
        assert!(matches!(decide(&rec(first.clone()), &[], &[]), Verdict::Direct(_)));
        assert!(matches!(decide(&rec(odd.clone()), &[], &[&first]), Verdict::Direct(_)));
        // Step 2 reads what step 1 wrote: new again.
        assert!(matches!(decide(&rec(even.clone()), &[], &[&first, &odd]), Verdict::Direct(_)));
        assert_eq!(decide(&rec(odd.clone()), &[], &[&odd, &even]), Verdict::Capture);
        assert_eq!(decide(&rec(even.clone()), &[&odd], &[&even, &odd]), Verdict::Capture);
        assert_eq!(decide(&rec(odd.clone()), &[&odd, &even], &[&odd, &even]), Verdict::Replay(0));
        assert_eq!(decide(&rec(even.clone()), &[&odd, &even], &[&even, &odd]), Verdict::Replay(1));
        // A third repeating list finds no room.
        let third = vec![launch("k", vec![Arg::Ptr(0x400)])];
        let v = decide(&rec(third.clone()), &[&odd, &even], &[&third, &odd]);
        assert_eq!(v, Verdict::Direct("the step repeats, but 2 other graphs are captured already".into()));
    }

    #[test]
    fn changing_arguments_are_refused_with_the_reason() {
        // A dropout seed that changes every step, or a buffer that moved.
        let at = |s: u64| vec![launch("dropout_f16", vec![Arg::Ptr(0x100), Arg::U64(s)])];
        let v = decide(&rec(at(3)), &[], &[&at(1), &at(2)]);
        assert_eq!(
            v,
            Verdict::Direct(
                "the step's work differs from the step two before's: item 0 of the step's work: \
                 `dropout_f16` argument 1: u64 3 where u64 1 was"
                    .into()
            )
        );
        let mut r = Recorder::default();
        r.start();
        assert!(r.keep(at(1)[0].clone()).is_none());
        assert_eq!(r.interrupt("reads a device value on the host").len(), 1);
        assert!(r.keep(at(1)[0].clone()).is_none());
        let stopped = r.stop();
        assert_eq!((stopped.work.len(), stopped.issued.len()), (1, 1));
        let v = decide(&stopped, &[&at(1)], &[&at(1)]);
        assert_eq!(v, Verdict::Direct("the step reads a device value on the host in the middle of its work".into()));
        assert_eq!(difference(&stopped.whole(), &[at(1)[0].clone(), at(1)[0].clone()]), None);
        // Not recording: work is issued at once, and reads interrupt nothing.
        assert!(r.keep(at(1)[0].clone()).is_some());
        assert!(r.interrupt("reads").is_empty());
    }
}
