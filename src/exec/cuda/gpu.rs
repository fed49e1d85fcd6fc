//! What a CUDA-like device offers the CUDA backend: memory, kernel launches
//! by name and GEMMs.
//!
//! Two implementations stand behind it: the real device on cudarc (driver
//! API, NVRTC-compiled `kernels/*.cu`, cuBLASLt) and the SIMT emulation,
//! which runs the same kernel sources compiled for the host (see
//! `kernels/emu/`). Everything above this trait (which kernel runs for
//! which op, launch configurations, the memory plan) is shared, so it is
//! tested without a GPU.

use crate::ir::types::DType;

use super::graph::{Recording, Work};

/// An error from the device layer (driver, NVRTC, cuBLASLt, emulation).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct GpuError(pub String);

/// Grid and block sizes of one launch, and its dynamic shared memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory (`extern __shared__`).
    pub shared_bytes: u32,
}

impl Launch {
    /// A 1-D launch of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Launch {
        Launch { grid: [blocks, 1, 1], block: [threads, 1, 1], shared_bytes: 0 }
    }
}

/// One kernel argument, in the order of the kernel's parameters. A pointer
/// is an allocation and a byte offset into it (a value planned in the
/// arena is the arena at its offset).
#[derive(Debug)]
pub enum KArg<'a, M> {
    Ptr(&'a M, usize),
    /// A device address from [`Gpu::address`] (a table's, or a buffer's
    /// noted earlier in the step); the emulation checks it when it runs.
    Addr(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

// By hand: a derive would ask `M: Copy`, but only a reference to M is held.
impl<M> Clone for KArg<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for KArg<'_, M> {}

/// What a GEMM applies to its f32 result before the one rounding to C's
/// type (cuBLASLt's `CUBLASLT_MATMUL_DESC_EPILOGUE`): the bias add of a
/// matmul and the activation after it, fused into the GEMM, so that the
/// product is neither stored nor read back and rounds once, not per op.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Epilogue {
    #[default]
    None,
    /// `c[i, j] += bias[i]`: a vector of `m` elements of C's type, the same
    /// for every column and batch entry (mpc's bias over a row-major
    /// matmul's last axis, which is cuBLAS's rows).
    Bias,
    /// The bias, then `relu`.
    ReluBias,
    /// The bias, then `gelu` (its tanh form, as mpc's `gelu`).
    GeluBias,
    /// [`Epilogue::GeluBias`] that also stores the biased product, the
    /// gelu's input, in an auxiliary matrix of C's type and layout
    /// (`CUBLASLT_EPILOGUE_GELU_AUX_BIAS`): the value `gelu_grad` reads in
    /// training, rounded once from f32 like C.
    GeluAuxBias,
    /// No change to C; the bias vector is written instead of read: the sum
    /// of op(A) over k, `bias[i] = Σ_p op(A)[i, p]`, accumulated in f32 and
    /// stored in f32 (`f32`: the bias type `CUDA_R_32F`) or in C's type
    /// (cuBLASLt's default) (`CUBLASLT_EPILOGUE_BGRADA`): a weight
    /// gradient's GEMM that also makes its bias's gradient, the sum of the
    /// output gradient over the rows (mpc's `sum_to` of it). One batch entry.
    BiasGradA { f32: bool },
}

impl Epilogue {
    /// Whether the GEMM reads a bias vector (or, [`Epilogue::BiasGradA`],
    /// writes one).
    pub fn has_bias(self) -> bool {
        self != Epilogue::None
    }

    /// The bias vector's element type: C's, but f32 for a bias gradient.
    pub fn bias_type(self, c: DType) -> DType {
        match self {
            Epilogue::BiasGradA { f32: true } => DType::F32,
            _ => c,
        }
    }

    /// Whether the bias vector is a gradient the GEMM writes.
    pub fn is_bias_grad(self) -> bool {
        matches!(self, Epilogue::BiasGradA { .. })
    }

    /// Whether the GEMM writes an auxiliary matrix beside C.
    pub fn has_aux(self) -> bool {
        self == Epilogue::GeluAuxBias
    }

    /// cuBLASLt's rules for the epilogue on the GEMM's layout: a bias
    /// gradient is of one matrix, and a stored gelu input (C's layout) has
    /// a leading dimension of eights (`CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD`).
    pub fn check_layout(self, batch: u64, ldc: u64) -> Result<(), GpuError> {
        if self.is_bias_grad() && batch > 1 {
            return Err(GpuError(format!("a bias-gradient GEMM of a batch of {batch}: one matrix only")));
        }
        if self.has_aux() && !ldc.is_multiple_of(8) {
            return Err(GpuError(format!(
                "GEMM with epilogue {self:?}: the auxiliary matrix's leading dimension {ldc} is not a multiple of 8"
            )));
        }
        Ok(())
    }

    /// Whether the operands `given` (a bias vector, an auxiliary matrix)
    /// are the ones the epilogue uses.
    pub fn check_operands(self, bias: bool, aux: bool) -> Result<(), GpuError> {
        match (self.has_bias(), bias, self.has_aux(), aux) {
            (true, false, ..) => Err(GpuError(format!("GEMM with epilogue {self:?}: no bias vector was given"))),
            (false, true, ..) => Err(GpuError("GEMM without a bias epilogue: a bias vector was given".into())),
            (.., true, false) => Err(GpuError(format!("GEMM with epilogue {self:?}: no auxiliary matrix was given"))),
            (.., false, true) => Err(GpuError(format!("GEMM with epilogue {self:?}: an auxiliary matrix was given"))),
            _ => Ok(()),
        }
    }
}

/// The operands of a GEMM's epilogue beside A, B and C, as
/// `(allocation, byte offset)`: the bias vector it reads, and the
/// auxiliary matrix it writes ([`Epilogue::has_aux`]).
pub struct Extra<'m, M> {
    pub bias: Option<(&'m M, usize)>,
    pub aux: Option<(&'m M, usize)>,
}

impl<M> Extra<'_, M> {
    /// No epilogue operands.
    pub fn none() -> Self {
        Extra { bias: None, aux: None }
    }
}

/// A (batched) GEMM `C = alpha · op(A) · op(B) + beta · C`, column-major
/// as cuBLASLt sees it; the CUDA backend maps mpc's row-major `matmul` onto
/// it (see `layout.rs`). Accumulation is always f32 (`CUBLAS_COMPUTE_32F`,
/// or `_32F_FAST_TF32` only when `tf32` is set).
#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: u64,
    pub ldb: u64,
    pub ldc: u64,
    /// Element type of A and B.
    pub ab: DType,
    /// Element type of C (the output).
    pub c: DType,
    pub batch: u64,
    /// Element strides between consecutive matrices of a batch (0: the
    /// same matrix for every batch entry, i.e. broadcast).
    pub stride_a: u64,
    pub stride_b: u64,
    pub stride_c: u64,
    pub alpha: f32,
    pub beta: f32,
    pub tf32: bool,
    /// Applied after `alpha` and `beta`: `C = act(alpha · op(A) · op(B) +
    /// beta · C + bias)`.
    pub epilogue: Epilogue,
}

impl Gemm {
    /// `C = op(A) · op(B)` of one matrix, every operand packed (its leading
    /// dimension its stored rows, at least 1), alpha 1, beta 0, no TF32, no
    /// epilogue.
    pub fn packed(m: u64, n: u64, k: u64, (trans_a, trans_b): (bool, bool), ab: DType, c: DType) -> Gemm {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda: if trans_a { k } else { m }.max(1),
            ldb: if trans_b { n } else { k }.max(1),
            ldc: m.max(1),
            ab,
            c,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            alpha: 1.0,
            beta: 0.0,
            tf32: false,
            epilogue: Epilogue::None,
        }
    }
}

/// A device: allocations, copies, kernel launches, GEMMs. Work is ordered
/// as issued (one stream); `read` waits for the work before it.
pub trait Gpu {
    /// One device allocation.
    type Mem;

    /// What the device is, for messages ("NVIDIA H100 80GB HBM3 (sm_90)").
    fn describe(&self) -> String;

    /// A zeroed allocation of `bytes` bytes.
    fn alloc(&mut self, bytes: usize) -> Result<Self::Mem, GpuError>;

    /// Copies `src` to `dst` at byte `offset`.
    fn write(&mut self, dst: &Self::Mem, offset: usize, src: &[u8]) -> Result<(), GpuError>;

    /// Copies `dst.len()` bytes from `src` at byte `offset` (waits for the
    /// work issued before).
    fn read(&mut self, src: &Self::Mem, offset: usize, dst: &mut [u8]) -> Result<(), GpuError>;

    /// The device address of byte `offset` of `m` (for tables of pointers
    /// that kernels read, see `multi`).
    fn address(&self, m: &Self::Mem, offset: usize) -> Result<u64, GpuError>;

    /// Launches the kernel `name` (an `extern "C"` name from kernels/*.cu).
    fn launch(&mut self, name: &str, cfg: Launch, args: &[KArg<'_, Self::Mem>]) -> Result<(), GpuError>;

    /// Compiles a generated source (`#include`s of kernels/*.cuh only) and
    /// makes its kernels `names` launchable. The default cannot.
    fn load(&mut self, names: &[String], source: &str) -> Result<(), GpuError> {
        let _ = source;
        Err(GpuError(format!("{}: cannot load the generated kernels {}", self.describe(), names.join(", "))))
    }

    /// Whether the device can run GEMMs of `g`'s shape, types and epilogue
    /// (cuBLASLt has an algorithm for it), asked before a fusion group is
    /// claimed, so that one it cannot run stays unfused instead of failing
    /// the step. The default can run every GEMM.
    fn check_gemm(&mut self, g: &Gemm) -> Result<(), GpuError> {
        let _ = g;
        Ok(())
    }

    /// Runs a GEMM on `(allocation, byte offset)` operands.
    fn gemm(
        &mut self,
        g: &Gemm,
        a: (&Self::Mem, usize),
        b: (&Self::Mem, usize),
        c: (&Self::Mem, usize),
    ) -> Result<(), GpuError> {
        self.gemm_extra(g, a, b, c, Extra::none())
    }

    /// [`Gpu::gemm`] with the operands of its epilogue, each given exactly
    /// when the epilogue uses it ([`Epilogue::check_operands`]).
    fn gemm_extra(
        &mut self,
        g: &Gemm,
        a: (&Self::Mem, usize),
        b: (&Self::Mem, usize),
        c: (&Self::Mem, usize),
        extra: Extra<'_, Self::Mem>,
    ) -> Result<(), GpuError>;

    /// Waits for all issued work.
    fn sync(&mut self) -> Result<(), GpuError>;

    /// Device memory in use (total less free) in bytes, where the device
    /// says (a real GPU; not the emulation).
    fn memory_in_use(&self) -> Option<u64> {
        None
    }

    /// A captured list of work, replayable ([`Gpu::capture`]).
    type Graph;

    /// Starts recording: launches and GEMMs are kept as [`Work`] (their
    /// arguments resolved to bits) instead of issued, until
    /// [`Gpu::stop_recording`]. A `read` or `write` meanwhile issues what
    /// was kept first and marks the recording as not replayable.
    fn start_recording(&mut self);

    /// Stops recording and returns what was kept.
    fn stop_recording(&mut self) -> Recording;

    /// Issues recorded work, as the calls it was recorded from would have.
    fn run_work(&mut self, work: &[Work]) -> Result<(), GpuError>;

    /// Makes a replayable graph of `work` (a CUDA graph; the emulation keeps
    /// the list) without running it.
    fn capture(&mut self, work: &[Work]) -> Result<Self::Graph, GpuError>;

    /// Runs a captured graph. The allocations its work points into must be
    /// the live ones the work was recorded on: the caller replays only a
    /// graph whose work it has just recorded again, bit for bit (the
    /// emulation checks every address against its live allocations).
    fn replay(&mut self, g: &Self::Graph) -> Result<(), GpuError>;
}
