//! The SIMT emulation of the device: [`EmuGpu`] runs the kernels of
//! `kernels/*.cu` compiled for the host (build.rs, `kernels/emu/simt.h`) on
//! host memory, so everything above the [`Gpu`] trait is tested without a
//! GPU. See docs/EMULATION.md for what it runs and what it does not prove.
//!
//! # Memory and aliasing
//!
//! An allocation ([`EmuMem`]) is a zeroed host buffer aligned to 256 bytes,
//! owned through a raw pointer. Nothing ever makes a Rust reference to its
//! bytes that outlives one copy: `write`, `read` and `gemm` copy through raw
//! pointers, and a launch hands raw addresses (allocation + byte offset) to
//! the kernel. So two kernel arguments may point into the same allocation
//! (legal on a GPU, and common: an arena at two offsets) and the kernel may
//! read and write through both without any `&`/`&mut` being invalidated;
//! the bytes are not part of the `EmuMem` value, so writing them through a
//! shared `&EmuMem` is not a mutation of anything a `&` protects (the same
//! reasoning as `UnsafeCell`, with the buffer outside the struct).
//! `EmuMem` is `Send` (moving the owner of a heap buffer) but not `Sync`,
//! and each allocation belongs to the `EmuGpu` that made it (checked on
//! every use), whose methods take `&mut self`: at most one call touches an
//! allocation's bytes at any time.

use std::alloc::{self, Layout};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt::Write as _;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use half::{bf16, f16};

use super::gpu::{Epilogue, Extra, Gemm, Gpu, GpuError, KArg, Launch};
use super::graph::{Arg, Recorder, Recording, Work};
use crate::ir::types::DType;

/// `struct MpcEmuLaunch` of `kernels/emu/simt.h`: what `mpc_emu_<name>`
/// takes besides the argument array.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct MpcEmuLaunch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory: must be 0 (static `__shared__` arrays only).
    pub shared_bytes: u32,
    pub num_args: u32,
    /// `num_args` codes (`ARG_*`), checked against the kernel's parameters.
    pub arg_kinds: *const u8,
}

/// `extern "C" int mpc_emu_<name>(const MpcEmuLaunch* cfg, void** args)`:
/// `args[i]` points to the value of the kernel's i-th parameter.
pub(crate) type EmuKernel = unsafe extern "C" fn(*const MpcEmuLaunch, *mut *mut c_void) -> c_int;

// The argument kinds of simt.h (MPC_EMU_ARG_*).
const ARG_PTR: u8 = 0;
const ARG_I32: u8 = 1;
const ARG_U32: u8 = 2;
const ARG_I64: u8 = 3;
const ARG_U64: u8 = 4;
const ARG_F32: u8 = 5;
const ARG_F64: u8 = 6;

mod table {
    include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));
}

unsafe extern "C" {
    fn mpc_emu_last_error() -> *const c_char;
}

/// The alignment of every allocation (cudaMalloc's is at least 256).
const ALIGN: usize = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The live allocations of one emulated device, by address: start -> length.
/// Recorded work holds addresses, not allocations, so running it checks
/// each address here (a freed allocation is an error, not a stray write).
type Live = Arc<Mutex<BTreeMap<usize, usize>>>;

/// The emulated device. Launches run on the calling thread (blocks one after
/// the other, each block's threads as fibers); GEMMs run on the CPU in f32.
#[derive(Debug)]
pub struct EmuGpu {
    id: u64,
    /// Generated kernels loaded by [`Gpu::load`], by name.
    loaded: std::collections::HashMap<String, super::emu_jit::Loaded>,
    live: Live,
    rec: Recorder,
    /// Epilogues this device has no GEMM for ([`EmuGpu::without`]).
    missing: Vec<Epilogue>,
}

/// A captured step of the emulation: the recorded work, replayed as it was.
#[derive(Debug)]
pub struct EmuGraph {
    gpu: u64,
    work: Vec<Work>,
}

impl EmuGraph {
    /// The launches and GEMMs the graph replays.
    pub fn work(&self) -> &[Work] {
        &self.work
    }
}

impl Default for EmuGpu {
    fn default() -> EmuGpu {
        EmuGpu::new()
    }
}

impl EmuGpu {
    pub fn new() -> EmuGpu {
        EmuGpu {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            loaded: Default::default(),
            live: Live::default(),
            rec: Recorder::default(),
            missing: Vec::new(),
        }
    }

    /// The emulation of a device whose GEMM library has no algorithm for
    /// the epilogue `e` (as a cuBLASLt version may lack one): `check_gemm`
    /// and the GEMM itself refuse it, as cuBLASLt's heuristic would.
    pub fn without(mut self, e: Epilogue) -> EmuGpu {
        self.missing.push(e);
        self
    }

    fn has(&self, g: &Gemm) -> Result<(), GpuError> {
        match self.missing.contains(&g.epilogue) {
            true => Err(GpuError(format!("emulated gemm: no algorithm for the epilogue {:?}", g.epilogue))),
            false => Ok(()),
        }
    }

    /// The names of the kernels the emulation has, sorted.
    pub fn kernels() -> impl Iterator<Item = &'static str> {
        table::KERNELS.iter().map(|(name, _)| *name)
    }

    fn own(&self, m: &EmuMem, what: &str) -> Result<(), GpuError> {
        if m.gpu == self.id {
            Ok(())
        } else {
            Err(GpuError(format!("{what}: the allocation belongs to another emulated device")))
        }
    }

    /// The address of `bytes` bytes at `offset` in `m`, checked.
    fn span(&self, m: &EmuMem, offset: usize, bytes: usize, what: &str) -> Result<*mut u8, GpuError> {
        self.own(m, what)?;
        match offset.checked_add(bytes) {
            Some(end) if end <= m.len => Ok(m.ptr.as_ptr().wrapping_add(offset)),
            _ => Err(GpuError(format!(
                "{what}: {bytes} bytes at offset {offset} do not fit the allocation of {} bytes",
                m.len
            ))),
        }
    }

    /// `bytes` bytes at address `addr`, checked to lie in one live
    /// allocation of this device (`bytes` = 0: a pointer into or one past one).
    fn region(&self, addr: usize, bytes: usize, what: &str) -> Result<*mut u8, GpuError> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((&start, &len)) = live.range(..=addr).next_back().filter(|(&start, &len)| addr - start <= len) else {
            return Err(GpuError(format!("{what}: address {addr:#x} is not inside a live allocation of this device")));
        };
        let offset = addr - start;
        match offset.checked_add(bytes) {
            Some(end) if end <= len => Ok(addr as *mut u8),
            _ => Err(GpuError(format!(
                "{what}: {bytes} bytes at offset {offset} do not fit the allocation of {len} bytes"
            ))),
        }
    }

    /// Runs one recorded launch.
    fn run_launch(&mut self, name: &str, cfg: Launch, args: &[Arg]) -> Result<(), GpuError> {
        let (kernel, error): (EmuKernel, super::emu_jit::LastError) = match table::find(name) {
            Some(k) => (k, mpc_emu_last_error),
            None => self.loaded.get(name).map(|l| (l.kernel, l.last_error)).ok_or_else(|| unknown_kernel(name))?,
        };
        let mut slots = Vec::with_capacity(args.len());
        let mut kinds = Vec::with_capacity(args.len());
        for (i, arg) in args.iter().enumerate() {
            let (slot, kind) = match *arg {
                Arg::Ptr(a) => {
                    let addr = usize::try_from(a)
                        .map_err(|_| GpuError(format!("kernel {name}, argument {i}: address {a:#x}")))?;
                    let p = self.region(addr, 0, &format!("kernel {name}, argument {i}"))?;
                    (Slot { ptr: p.cast() }, ARG_PTR)
                }
                Arg::I32(v) => (Slot { i32: v }, ARG_I32),
                Arg::U32(v) => (Slot { u32: v }, ARG_U32),
                Arg::I64(v) => (Slot { i64: v }, ARG_I64),
                Arg::U64(v) => (Slot { u64: v }, ARG_U64),
                Arg::F32(v) => (Slot { f32: f32::from_bits(v) }, ARG_F32),
                Arg::F64(v) => (Slot { f64: f64::from_bits(v) }, ARG_F64),
            };
            slots.push(slot);
            kinds.push(kind);
        }
        let num_args =
            u32::try_from(args.len()).map_err(|_| GpuError(format!("kernel {name}: {} arguments", args.len())))?;
        let mut argv: Vec<*mut c_void> = slots.iter_mut().map(|s| ptr::from_mut(s).cast::<c_void>()).collect();
        let launch = MpcEmuLaunch {
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes,
            num_args,
            arg_kinds: kinds.as_ptr(),
        };
        // SAFETY: `kernel` has the EmuKernel signature (declared so by
        // build.rs from MPC_EXPORT, which defines it). `launch` and `argv`
        // live across the call; argv[i] points to slots[i], which holds a
        // value of the kind kinds[i] says, and the C side checks those kinds
        // against the kernel's parameter types before reading any. Pointer
        // arguments are addresses within live allocations of this device
        // (checked above; `&mut self` keeps any from being freed meanwhile),
        // reached only through raw pointers (see the module documentation).
        // What the kernel then does with them is the kernel's contract, as
        // with any foreign code: kernels/*.cu are part of this crate and are
        // tested here.
        let rc = unsafe { kernel(&launch, argv.as_mut_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(GpuError(format!("emulated launch: {}", last_error(error))))
        }
    }

    fn run_one(&mut self, w: &Work) -> Result<(), GpuError> {
        match w {
            Work::Launch { name, cfg, args } => self.run_launch(name, *cfg, args),
            Work::Gemm { gemm, a, b, c, bias, aux } => self.run_gemm(gemm, [*a, *b, *c], *bias, *aux),
        }
    }

    /// A read or write: what a recording kept so far is issued first.
    fn flush(&mut self, what: &str) -> Result<(), GpuError> {
        let work = self.rec.interrupt(what);
        self.run_work(&work)
    }
}

/// One allocation of an [`EmuGpu`]: `len` zeroed bytes aligned to 256.
#[derive(Debug)]
pub struct EmuMem {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
    gpu: u64,
    live: Live,
}

// SAFETY: an EmuMem owns its buffer; moving it to another thread moves that
// ownership. It is not Sync (see the module documentation).
unsafe impl Send for EmuMem {}

impl EmuMem {
    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for EmuMem {
    fn drop(&mut self) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(&(self.ptr.as_ptr() as usize));
        // SAFETY: allocated in EmuGpu::alloc with this layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// One kernel argument's value, where `args[i]` points (8 bytes, aligned for
/// every kind; the kernel reads the bytes of its parameter's type).
#[repr(C)]
#[derive(Copy, Clone)]
union Slot {
    i32: i32,
    u32: u32,
    i64: i64,
    u64: u64,
    f32: f32,
    f64: f64,
    ptr: *mut c_void,
}

fn last_error(error: super::emu_jit::LastError) -> String {
    // SAFETY: mpc_emu_last_error (the static runtime's or a loaded
    // library's) returns null or a NUL-terminated string in a thread-local
    // buffer, unchanged until this thread's next launch.
    let p = unsafe { error() };
    if p.is_null() {
        return "unknown error".to_string();
    }
    // SAFETY: see above.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn unknown_kernel(name: &str) -> GpuError {
    let mut msg = format!("no emulated kernel named `{name}` (no kernels/*.cu file exports it)");
    let names: Vec<&str> = EmuGpu::kernels().collect();
    if names.is_empty() {
        msg.push_str("; none is exported at all");
        return GpuError(msg);
    }
    if let Some(best) = names
        .iter()
        .map(|n| (strsim::jaro_winkler(n, name), *n))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
    {
        let _ = write!(msg, "; did you mean `{}`?", best.1);
    }
    const SHOWN: usize = 40;
    let _ = write!(msg, " The {} exported: {}", names.len(), names[..names.len().min(SHOWN)].join(", "));
    if names.len() > SHOWN {
        msg.push_str(", ...");
    }
    GpuError(msg)
}

/// A matrix operand of a GEMM: `rows` x `cols`, column-major with leading
/// dimension `ld`, `batch` of them `stride` elements apart.
struct Operand {
    name: &'static str,
    dtype: DType,
    rows: u64,
    cols: u64,
    ld: u64,
    stride: u64,
}

impl Operand {
    /// Elements of one matrix from its first to its last (gaps included).
    fn span(&self) -> Option<u64> {
        if self.rows == 0 || self.cols == 0 {
            return Some(0);
        }
        (self.cols - 1).checked_mul(self.ld)?.checked_add(self.rows)
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize, GpuError> {
    usize::try_from(v).map_err(|_| GpuError(format!("emulated gemm: {what} = {v} does not fit in memory")))
}

fn to_isize(v: u64, what: &str) -> Result<isize, GpuError> {
    isize::try_from(v).map_err(|_| GpuError(format!("emulated gemm: {what} = {v} does not fit in memory")))
}

/// Reads `count` elements of `dtype` at `src` as f32.
///
/// SAFETY: `src` must be valid for reading `count * dtype.size_bytes()` bytes.
unsafe fn load(src: *const u8, count: usize, dtype: DType) -> Vec<f32> {
    let size = dtype.size_bytes();
    let mut raw = vec![0u8; count * size];
    // SAFETY: by the caller's contract; `raw` is a fresh buffer.
    unsafe { ptr::copy_nonoverlapping(src, raw.as_mut_ptr(), raw.len()) };
    match dtype {
        DType::F16 => raw.chunks_exact(2).map(|c| f16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32()).collect(),
        DType::Bf16 => {
            raw.chunks_exact(2).map(|c| bf16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32()).collect()
        }
        _ => raw.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect(),
    }
}

/// Writes `values` rounded once to `dtype` at `dst`.
///
/// SAFETY: `dst` must be valid for writing `values.len() * dtype.size_bytes()` bytes.
unsafe fn store(dst: *mut u8, values: &[f32], dtype: DType) {
    let raw: Vec<u8> = match dtype {
        DType::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_ne_bytes()).collect(),
        DType::Bf16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_ne_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_ne_bytes()).collect(),
    };
    // SAFETY: by the caller's contract; `raw` is a fresh buffer.
    unsafe { ptr::copy_nonoverlapping(raw.as_ptr(), dst, raw.len()) };
}

impl Gpu for EmuGpu {
    type Mem = EmuMem;

    fn describe(&self) -> String {
        format!(
            "SIMT emulation on the host CPU ({}; {} kernels from kernels/*.cu)",
            std::env::consts::ARCH,
            table::KERNELS.len()
        )
    }

    fn alloc(&mut self, bytes: usize) -> Result<EmuMem, GpuError> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|_| GpuError(format!("emulated alloc: {bytes} bytes is too large")))?;
        // SAFETY: the layout's size is at least 1.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr =
            NonNull::new(ptr).ok_or_else(|| GpuError(format!("emulated alloc: out of host memory ({bytes} bytes)")))?;
        self.live.lock().unwrap_or_else(PoisonError::into_inner).insert(ptr.as_ptr() as usize, bytes);
        Ok(EmuMem { ptr, len: bytes, layout, gpu: self.id, live: self.live.clone() })
    }

    fn write(&mut self, dst: &EmuMem, offset: usize, src: &[u8]) -> Result<(), GpuError> {
        self.flush("writes device memory from the host")?;
        let p = self.span(dst, offset, src.len(), "emulated write")?;
        // SAFETY: `p` is valid for src.len() bytes (checked); `src` cannot
        // overlap the allocation, whose bytes no reference ever covers.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    fn read(&mut self, src: &EmuMem, offset: usize, dst: &mut [u8]) -> Result<(), GpuError> {
        self.flush("reads a device value on the host")?;
        let p = self.span(src, offset, dst.len(), "emulated read")?;
        // SAFETY: as in `write`.
        unsafe { ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn address(&self, m: &EmuMem, offset: usize) -> Result<u64, GpuError> {
        self.own(m, "address")?;
        match offset <= m.len {
            true => Ok((m.ptr.as_ptr() as usize + offset) as u64),
            false => Err(GpuError(format!("address: offset {offset} is past the end of an allocation of {}", m.len))),
        }
    }

    fn launch(&mut self, name: &str, cfg: Launch, args: &[KArg<'_, EmuMem>]) -> Result<(), GpuError> {
        let mut bits = Vec::with_capacity(args.len());
        for (i, arg) in args.iter().enumerate() {
            bits.push(Arg::of(arg, |m, offset| {
                // One past the end is a valid pointer (a kernel given an
                // empty range); the kernel's own accesses are its business,
                // as on a GPU.
                let what = format!("kernel {name}, argument {i}");
                self.own(m, &what)?;
                if offset > m.len {
                    return Err(GpuError(format!(
                        "{what}: byte offset {offset} is past the end of its allocation of {} bytes",
                        m.len
                    )));
                }
                Ok((m.ptr.as_ptr() as usize + offset) as u64)
            })?);
        }
        match self.rec.keep(Work::Launch { name: name.to_string(), cfg, args: bits }) {
            Some(w) => self.run_one(&w),
            None => Ok(()),
        }
    }

    /// cuBLASLt's rules on the description (as the device checks them before
    /// its heuristic), and the epilogues this emulated device lacks.
    fn check_gemm(&mut self, g: &Gemm) -> Result<(), GpuError> {
        super::device::LtShape::of(g)?;
        self.has(g)
    }

    /// Compiles `source` for the host (see [`super::emu_jit`]) and loads
    /// its kernels `names`.
    fn load(&mut self, names: &[String], source: &str) -> Result<(), GpuError> {
        for (name, l) in super::emu_jit::load(names, source)? {
            self.loaded.insert(name, l);
        }
        Ok(())
    }

    /// `C = alpha · op(A) · op(B) + beta · C` per batch entry, in cuBLAS's
    /// conventions: column-major, element (i, j) of a matrix with leading
    /// dimension ld at `i + j·ld`; op(A) is m x k, stored m x k (lda ≥ m) or,
    /// with `trans_a`, k x m (lda ≥ k); op(B) is k x n, stored k x n
    /// (ldb ≥ k) or, with `trans_b`, n x k (ldb ≥ n); C is m x n (ldc ≥ m);
    /// batch entry b's matrices start `b · stride` elements after the first
    /// (A and B may use stride 0 to broadcast; C may not when batch > 1).
    /// With beta = 0, C is not read (NaNs there do not propagate). The
    /// products accumulate in f32 (an order other than the GPU's, and full
    /// f32 even with `tf32`) and are rounded once to `g.c`.
    fn gemm_extra(
        &mut self,
        g: &Gemm,
        a: (&EmuMem, usize),
        b: (&EmuMem, usize),
        c: (&EmuMem, usize),
        extra: Extra<'_, EmuMem>,
    ) -> Result<(), GpuError> {
        let mut at = [0u64; 5];
        let named = [a, b, c].into_iter().map(Some).chain([extra.bias, extra.aux]).zip(["A", "B", "C", "bias", "aux"]);
        for ((operand, name), addr) in named.zip(at.iter_mut()) {
            let Some((mem, offset)) = operand else { continue };
            let what = format!("emulated gemm, {name}");
            self.own(mem, &what)?;
            if offset > mem.len {
                return Err(GpuError(format!("{what}: byte offset {offset} is past the end of its allocation")));
            }
            *addr = (mem.ptr.as_ptr() as usize + offset) as u64;
        }
        g.epilogue.check_operands(extra.bias.is_some(), extra.aux.is_some())?;
        self.has(g)?;
        match self.rec.keep(Work::Gemm { gemm: g.clone(), a: at[0], b: at[1], c: at[2], bias: at[3], aux: at[4] }) {
            Some(w) => self.run_one(&w),
            None => Ok(()),
        }
    }

    fn sync(&mut self) -> Result<(), GpuError> {
        self.flush("waits for the device")
    }

    type Graph = EmuGraph;

    fn start_recording(&mut self) {
        self.rec.start();
    }

    fn stop_recording(&mut self) -> Recording {
        self.rec.stop()
    }

    fn run_work(&mut self, work: &[Work]) -> Result<(), GpuError> {
        work.iter().try_for_each(|w| self.run_one(w))
    }

    fn capture(&mut self, work: &[Work]) -> Result<EmuGraph, GpuError> {
        Ok(EmuGraph { gpu: self.id, work: work.to_vec() })
    }

    fn replay(&mut self, g: &EmuGraph) -> Result<(), GpuError> {
        if g.gpu != self.id {
            return Err(GpuError("replay: the graph was captured on another emulated device".into()));
        }
        self.run_work(&g.work)
    }
}

impl EmuGpu {
    /// Runs a recorded GEMM on the device addresses of A, B and C, and of
    /// its epilogue's bias and auxiliary matrix (0: none).
    fn run_gemm(&mut self, g: &Gemm, [a, b, c]: [u64; 3], bias_at: u64, aux_at: u64) -> Result<(), GpuError> {
        let err = |msg: String| GpuError(format!("emulated gemm: {msg}"));
        match (g.ab, g.c) {
            (DType::F32, DType::F32)
            | (DType::F16, DType::F16 | DType::F32)
            | (DType::Bf16, DType::Bf16 | DType::F32) => {}
            (ab, c) => {
                return Err(err(format!(
                    "A and B of {ab} with C of {c}: the types are f32 -> f32, f16 -> f16 or f32, bf16 -> bf16 or f32"
                )))
            }
        }
        let (ra, ca) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (rb, cb) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        // cuBLASLt's rules, kept so that what runs here runs there.
        g.epilogue.check_layout(g.batch, g.ldc).map_err(|e| err(e.0))?;
        let ops = [
            Operand { name: "A", dtype: g.ab, rows: ra, cols: ca, ld: g.lda, stride: g.stride_a },
            Operand { name: "B", dtype: g.ab, rows: rb, cols: cb, ld: g.ldb, stride: g.stride_b },
            Operand { name: "C", dtype: g.c, rows: g.m, cols: g.n, ld: g.ldc, stride: g.stride_c },
            // C's type and layout; checked only when the epilogue writes it.
            Operand { name: "aux", dtype: g.c, rows: g.m, cols: g.n, ld: g.ldc, stride: g.stride_c },
        ];
        let used = if g.epilogue.has_aux() { 4 } else { 3 };
        let mut bases = [ptr::null_mut::<u8>(); 4];
        let mut spans = [0usize; 4];
        let at = [a, b, c, aux_at];
        for ((op, addr), (base, span)) in ops.iter().zip(at).zip(bases.iter_mut().zip(spans.iter_mut())).take(used) {
            let offset = usize::try_from(addr).map_err(|_| err(format!("address {addr:#x}")))?;
            let name = op.name;
            if op.ld < op.rows.max(1) {
                return Err(err(format!(
                    "ld{} = {} is less than the {} rows {name} has as stored",
                    name.to_lowercase(),
                    op.ld,
                    op.rows
                )));
            }
            let size = op.dtype.size_bytes();
            // Allocations are 256-aligned: the address's alignment is the offset's.
            if offset % size != 0 {
                return Err(err(format!("{name} at address {offset:#x} is not aligned to its {size}-byte elements")));
            }
            let one = op.span().ok_or_else(|| err(format!("{name}'s extent overflows")))?;
            // Elements from the first matrix's start to the last one's end.
            let total = match g.batch {
                0 => Some(0),
                n => (n - 1).checked_mul(op.stride).and_then(|s| s.checked_add(one)),
            }
            .ok_or_else(|| err(format!("{name}'s extent over the batch overflows")))?;
            let bytes = to_usize(total, name)?
                .checked_mul(size)
                .ok_or_else(|| err(format!("{name}'s extent over the batch overflows")))?;
            *base = self.region(offset, bytes, &format!("emulated gemm, {name}"))?;
            *span = to_usize(one, name)?;
        }
        if g.batch > 1 && g.m > 0 && g.n > 0 && g.stride_c < ops[2].span().unwrap_or(u64::MAX) {
            return Err(err(format!(
                "stride_c = {} makes the {} outputs of the batch overlap (one C spans {} elements)",
                g.stride_c,
                g.batch,
                ops[2].span().unwrap_or(u64::MAX)
            )));
        }
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        let (m, n, k) = (to_usize(g.m, "m")?, to_usize(g.n, "n")?, to_usize(g.k, "k")?);
        // A bias gradient is written, not read.
        let grad = g.epilogue.is_bias_grad();
        let (bias, bias_base) = match g.epilogue.has_bias() {
            false => (Vec::new(), ptr::null_mut()),
            true => {
                let offset = usize::try_from(bias_at).map_err(|_| err(format!("bias address {bias_at:#x}")))?;
                let t = g.epilogue.bias_type(g.c);
                let size = t.size_bytes();
                if offset % size != 0 {
                    return Err(err(format!("the bias at {offset:#x} is not aligned to its {size}-byte elements")));
                }
                let base = self.region(offset, m * size, "emulated gemm, bias")?;
                // SAFETY: `region` checked that m elements lie in one live allocation.
                (if grad { Vec::new() } else { unsafe { load(base, m, t) } }, base)
            }
        };
        let (lda, ldb, ldc) = (to_isize(g.lda, "lda")?, to_isize(g.ldb, "ldb")?, to_isize(g.ldc, "ldc")?);
        let ldc_elems = to_usize(g.ldc, "ldc")?;
        // Row and column strides of op(A) and op(B) in their stored buffers.
        let (rsa, csa) = if g.trans_a { (lda, 1) } else { (1, lda) };
        let (rsb, csb) = if g.trans_b { (ldb, 1) } else { (1, ldb) };
        let elem = |op: &Operand, entry: u64| -> Result<usize, GpuError> {
            let e = to_usize(entry * op.stride, op.name)?;
            Ok(e * op.dtype.size_bytes())
        };
        for entry in 0..g.batch {
            let (off_a, off_b, off_c) = (elem(&ops[0], entry)?, elem(&ops[1], entry)?, elem(&ops[2], entry)?);
            // SAFETY: each operand's extent over the whole batch was checked
            // against its allocation above; entry `entry` lies within it.
            let av = unsafe { load(bases[0].wrapping_add(off_a), spans[0], g.ab) };
            let bv = unsafe { load(bases[1].wrapping_add(off_b), spans[1], g.ab) };
            let mut cv = if g.beta == 0.0 {
                vec![0.0; spans[2]]
            } else {
                unsafe { load(bases[2].wrapping_add(off_c), spans[2], g.c) }
            };
            // SAFETY: the largest index matrixmultiply reads of A is
            // (m-1)·rsa + (k-1)·csa = span(A) - 1, of B likewise, and of C
            // (m-1) + (n-1)·ldc = span(C) - 1; ldc ≥ m keeps C's elements
            // apart. With k = 0 it only scales C.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    g.alpha,
                    av.as_ptr(),
                    rsa,
                    csa,
                    bv.as_ptr(),
                    rsb,
                    csb,
                    g.beta,
                    cv.as_mut_ptr(),
                    1,
                    ldc,
                )
            };
            // Only the m rows of each column: the gap up to ldc is not C's.
            let size = g.c.size_bytes();
            if grad {
                // Row i of op(A) summed over k in f32, in order (cuBLASLt's order is its own).
                let sums: Vec<f32> =
                    (0..m as isize).map(|i| (0..k as isize).map(|p| av[(i * rsa + p * csa) as usize]).sum()).collect();
                // SAFETY: `region` checked that m elements of the bias type lie at `bias_base`.
                unsafe { store(bias_base, &sums, g.epilogue.bias_type(g.c)) };
            } else if g.epilogue.has_bias() {
                for (j, col) in cv.chunks_mut(ldc_elems).take(n).enumerate() {
                    let col = &mut col[..m];
                    for (v, b) in col.iter_mut().zip(&bias) {
                        *v += b;
                    }
                    if g.epilogue.has_aux() {
                        let dst = bases[3].wrapping_add(off_c + j * ldc_elems * size);
                        // SAFETY: column j of the aux matrix lies within its checked extent, laid out as C.
                        unsafe { store(dst, col, g.c) };
                    }
                    activate(g.epilogue, col);
                }
            }
            for (j, col) in cv.chunks(ldc_elems).take(n).enumerate() {
                let dst = bases[2].wrapping_add(off_c + j * ldc_elems * size);
                // SAFETY: column j of entry `entry` lies within C's checked extent.
                unsafe { store(dst, &col[..m], g.c) };
            }
        }
        Ok(())
    }
}

/// A column of a GEMM's biased f32 result through the epilogue's
/// activation, in f32 as cuBLASLt computes it before the rounding to C's
/// type, with the CPU's formula.
fn activate(e: Epilogue, col: &mut [f32]) {
    use crate::exec::cpu::elementwise::{gelu, relu};
    let f: fn(f32) -> f32 = match e {
        Epilogue::ReluBias => relu,
        Epilogue::GeluBias | Epilogue::GeluAuxBias => gelu,
        Epilogue::None | Epilogue::Bias | Epilogue::BiasGradA { .. } => return,
    };
    for v in col {
        *v = f(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_finds_every_kernel() {
        let names: Vec<&str> = EmuGpu::kernels().collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        for name in &names {
            assert!(table::find(name).is_some(), "{name}");
        }
        assert!(table::find("selftest_saxpy").is_some());
        assert!(table::find("selftest_saxpy_").is_none());
        assert!(table::find("").is_none());
    }

    #[test]
    fn launch_struct_matches_the_c_layout() {
        // uint32_t grid[3], block[3], shared_bytes, num_args; const uint8_t*.
        assert_eq!(std::mem::offset_of!(MpcEmuLaunch, shared_bytes), 24);
        assert_eq!(std::mem::offset_of!(MpcEmuLaunch, num_args), 28);
        assert_eq!(std::mem::offset_of!(MpcEmuLaunch, arg_kinds), 32);
        assert_eq!(std::mem::size_of::<Slot>(), 8);
    }

    #[test]
    fn allocations_are_aligned_zeroed_and_owned() {
        let mut gpu = EmuGpu::new();
        let mut other = EmuGpu::new();
        for bytes in [0, 1, 3, 256, 1000] {
            let m = gpu.alloc(bytes).unwrap();
            assert_eq!(m.ptr.as_ptr() as usize % ALIGN, 0);
            assert_eq!(m.len(), bytes);
            let mut back = vec![1u8; bytes];
            gpu.read(&m, 0, &mut back).unwrap();
            assert!(back.iter().all(|b| *b == 0));
            let e = other.read(&m, 0, &mut back).unwrap_err();
            assert!(e.0.contains("another emulated device"), "{e}");
        }
    }
}
