//! The real GPU behind [`Gpu`]: cudarc's driver API on one stream, the
//! kernels of kernels/*.cu compiled by NVRTC for the GPU's architecture and
//! loaded once, and cuBLASLt for GEMMs (f32 accumulation, one heuristic
//! query per GEMM shape, cached).
//!
//! Only [`CudaGpu::open`] touches the CUDA libraries, and only after
//! [`probe`](super::probe::probe) has found them: cudarc panics on a
//! missing library. What can be decided without a GPU (the cuBLASLt
//! layouts of a [`Gemm`]) is a pure function with tests.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{
    result as drv, sys as drvsys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};

use super::gpu::{Epilogue, Extra, Gemm, Gpu, GpuError, KArg, Launch};
use super::graph::{Arg, Recorder, Recording, Work};
use super::nvrtc;
use super::probe::{GpuInfo, Report};
use crate::ir::types::DType;

fn err<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> GpuError + '_ {
    move |e| GpuError(format!("{what}: {e:?}"))
}

/// One GPU, one stream, the kernels loaded, a cuBLASLt handle.
pub struct CudaGpu {
    info: GpuInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    lt: ltsys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<GemmKey, LtPlan>,
    rec: Recorder,
}

impl CudaGpu {
    /// Opens GPU `ordinal`: checks `report` (from `probe()`), compiles the
    /// kernels for its architecture (once per process) and loads them.
    pub fn open(report: &Report, ordinal: usize) -> Result<CudaGpu, GpuError> {
        let info = report.usable(ordinal).map_err(|why| GpuError(format!("no usable CUDA GPU: {why}")))?.clone();
        let ctx = CudaContext::new(ordinal).map_err(err("cannot create a CUDA context"))?;
        // One stream orders all work, so cudarc's per-buffer events (for
        // multi-stream safety) are only overhead.
        // SAFETY: no other stream is ever used with these buffers.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(err("cannot create a CUDA stream"))?;
        let modules = nvrtc::compile(&info.arch())?;
        let mut functions = HashMap::new();
        for m in modules.iter() {
            let module = ctx
                .load_module(m.image())
                .map_err(|e| GpuError(format!("cannot load kernels/{} for {}: {e:?}", m.file, m.arch)))?;
            for name in m.kernels() {
                let f = module.load_function(name).map_err(|e| GpuError(format!("kernel {name}: {e:?}")))?;
                functions.insert(name.to_string(), f);
            }
        }
        let lt = lt::create_handle().map_err(err("cublasLtCreate"))?;
        // NVIDIA's advice for the workspace: 32 MiB on Hopper, 4 MiB before.
        let ws = if info.capability.0 >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(ws).map_err(err("cuBLASLt workspace"))?;
        Ok(CudaGpu { info, ctx, stream, functions, lt, workspace, plans: HashMap::new(), rec: Recorder::default() })
    }

    /// The GPU this runs on.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), GpuError> {
        self.ctx.mem_get_info().map_err(err("cuMemGetInfo"))
    }

    fn ptr(&self, m: &CudaSlice<u8>, offset: usize, len: usize) -> Result<u64, GpuError> {
        if offset.checked_add(len).is_none_or(|end| end > m.len()) {
            return Err(GpuError(format!(
                "{len} bytes at offset {offset} are outside an allocation of {} bytes",
                m.len()
            )));
        }
        let (p, _sync) = m.device_ptr(&self.stream);
        Ok(p + offset as u64)
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
        work.iter().try_for_each(|w| self.run_one(w))
    }

    fn run_launch(&mut self, name: &str, cfg: Launch, args: &[Arg]) -> Result<(), GpuError> {
        let f = self.functions.get(name).ok_or_else(|| GpuError(format!("no kernel named `{name}` was loaded")))?;
        let vals: Vec<Val> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(x) | Arg::U64(x) => Val::U64(x),
                Arg::I32(x) => Val::I32(x),
                Arg::U32(x) => Val::U32(x),
                Arg::I64(x) => Val::I64(x),
                Arg::F32(x) => Val::F32(f32::from_bits(x)),
                Arg::F64(x) => Val::F64(f64::from_bits(x)),
            })
            .collect();
        let mut b = self.stream.launch_builder(f);
        for v in &vals {
            match v {
                Val::U64(x) => b.arg(x),
                Val::I32(x) => b.arg(x),
                Val::U32(x) => b.arg(x),
                Val::I64(x) => b.arg(x),
                Val::F32(x) => b.arg(x),
                Val::F64(x) => b.arg(x),
            };
        }
        let lc = LaunchConfig {
            grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
            shared_mem_bytes: cfg.shared_bytes,
        };
        // SAFETY: the arguments follow the kernel's parameter list (the
        // backend's launch table, checked against the same sources in the
        // emulation); pointers were inside their allocations when recorded,
        // and recorded work runs only while those allocations are the ones
        // the step holds (see `Gpu::replay`).
        unsafe { b.launch(lc) }.map(|_| ()).map_err(|e| GpuError(format!("launch of {name}: {e:?}")))
    }

    /// Makes the plan of GEMMs like `g` the first time one is asked for
    /// (cuBLASLt's heuristic, not stream work), and returns its key.
    fn ensure_plan(&mut self, g: &Gemm) -> Result<GemmKey, GpuError> {
        let key = GemmKey::of(g);
        if !self.plans.contains_key(&key) {
            let plan = LtPlan::new(self.lt, &LtShape::of(g)?, self.workspace.len())?;
            self.plans.insert(key.clone(), plan);
        }
        Ok(key)
    }

    fn run_gemm(&mut self, g: &Gemm, [pa, pb, pc]: [u64; 3], bias: u64, aux: u64) -> Result<(), GpuError> {
        let key = self.ensure_plan(g)?;
        let plan = &self.plans[&key];
        // The bias and aux pointers are the descriptor's, shared by every
        // GEMM of this shape: set before each one (a captured graph keeps the
        // values they had when the call was captured).
        let pointers = [
            (g.epilogue.has_bias(), ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias),
            (
                g.epilogue.has_aux(),
                ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                aux,
            ),
        ];
        for (_, attr, p) in pointers.into_iter().filter(|(used, ..)| *used) {
            // SAFETY: a live descriptor; the attribute's value is a device pointer.
            unsafe { set_desc(plan.desc, attr, &p) }.map_err(|e| GpuError(format!("cuBLASLt {attr:?}: {e:?}")))?;
        }
        let (w, _sync) = self.workspace.device_ptr(&self.stream);
        // SAFETY: operands were inside their allocations (checked for the
        // whole batch when recorded); the plan was made for exactly this shape.
        unsafe {
            lt::matmul(
                self.lt,
                plan.desc,
                &g.alpha as *const f32 as *const c_void,
                &g.beta as *const f32 as *const c_void,
                pa as *const c_void,
                plan.a,
                pb as *const c_void,
                plan.b,
                pc as *const c_void,
                plan.c,
                pc as *mut c_void,
                plan.c,
                &plan.algo,
                w as *mut c_void,
                self.workspace.len(),
                self.stream.cu_stream() as ltsys::cudaStream_t,
            )
        }
        .map_err(|e| GpuError(format!("cublasLtMatmul {}x{}x{} (batch {}): {e:?}", g.m, g.n, g.k, g.batch)))
    }
}

impl Drop for CudaGpu {
    fn drop(&mut self) {
        for (_, p) in self.plans.drain() {
            p.destroy();
        }
        // SAFETY: created in `open`, destroyed once, after its plans.
        let _ = unsafe { lt::destroy_handle(self.lt) };
    }
}

/// A launch argument's value, kept alive while cudarc holds references to it.
enum Val {
    U64(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
}

impl Gpu for CudaGpu {
    type Mem = CudaSlice<u8>;

    fn memory_in_use(&self) -> Option<u64> {
        self.memory().ok().map(|(free, total)| total.saturating_sub(free) as u64)
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.info.name, self.info.arch())
    }

    fn alloc(&mut self, bytes: usize) -> Result<CudaSlice<u8>, GpuError> {
        // cuMemAlloc refuses 0 bytes; a 1-byte allocation stands for an empty value.
        self.stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| GpuError(format!("cannot allocate {bytes} bytes on {}: {e:?}", self.info.name)))
    }

    fn write(&mut self, dst: &CudaSlice<u8>, offset: usize, src: &[u8]) -> Result<(), GpuError> {
        self.flush("writes device memory from the host")?;
        let p = self.ptr(dst, offset, src.len())?;
        // SAFETY: p..p+len is inside `dst` (checked); from pageable memory the
        // driver stages `src` before returning, so it may go away after.
        unsafe { drv::memcpy_htod_async(p, src, self.stream.cu_stream()) }.map_err(err("host to device copy"))
    }

    fn read(&mut self, src: &CudaSlice<u8>, offset: usize, dst: &mut [u8]) -> Result<(), GpuError> {
        self.flush("reads a device value on the host")?;
        let p = self.ptr(src, offset, dst.len())?;
        // SAFETY: as in `write`; the synchronize keeps `dst` borrowed until the copy is done.
        unsafe { drv::memcpy_dtoh_async(dst, p, self.stream.cu_stream()) }.map_err(err("device to host copy"))?;
        self.sync()
    }

    fn address(&self, m: &CudaSlice<u8>, offset: usize) -> Result<u64, GpuError> {
        self.ptr(m, offset, 0)
    }

    fn launch(&mut self, name: &str, cfg: Launch, args: &[KArg<'_, CudaSlice<u8>>]) -> Result<(), GpuError> {
        let bits = args.iter().map(|a| Arg::of(a, |m, off| self.ptr(m, off, 0))).collect::<Result<Vec<_>, _>>()?;
        match self.rec.keep(Work::Launch { name: name.to_string(), cfg, args: bits }) {
            Some(w) => self.run_one(&w),
            None => Ok(()),
        }
    }

    fn load(&mut self, names: &[String], source: &str) -> Result<(), GpuError> {
        if names.iter().all(|n| self.functions.contains_key(n)) {
            return Ok(());
        }
        let tc = nvrtc::probe()?;
        let arch = self.info.arch();
        let (ptx, cubin) = nvrtc::compile_generated(&tc, "fused.cu", source, &arch)?;
        let m = nvrtc::Module { file: "generated", arch, ptx, cubin, log: String::new() };
        let module =
            self.ctx.load_module(m.image()).map_err(|e| GpuError(format!("cannot load the fused kernels: {e:?}")))?;
        for name in names {
            let f = module.load_function(name).map_err(|e| GpuError(format!("kernel {name}: {e:?}")))?;
            self.functions.insert(name.clone(), f);
        }
        Ok(())
    }

    /// Makes (and keeps) the GEMM's plan: cuBLASLt's heuristic finds an
    /// algorithm for the shape, types and epilogue, or says it has none.
    fn check_gemm(&mut self, g: &Gemm) -> Result<(), GpuError> {
        self.ensure_plan(g).map(drop)
    }

    fn gemm_extra(
        &mut self,
        g: &Gemm,
        a: (&CudaSlice<u8>, usize),
        b: (&CudaSlice<u8>, usize),
        c: (&CudaSlice<u8>, usize),
        extra: Extra<'_, CudaSlice<u8>>,
    ) -> Result<(), GpuError> {
        let shape = LtShape::of(g)?;
        let [sa, sb, sc] = shape.spans();
        let pa = self.ptr(a.0, a.1, sa)?;
        let pb = self.ptr(b.0, b.1, sb)?;
        let pc = self.ptr(c.0, c.1, sc)?;
        g.epilogue.check_operands(extra.bias.is_some(), extra.aux.is_some())?;
        let pbias = match extra.bias {
            Some((m, off)) => self.ptr(m, off, shape.bias_bytes())?,
            None => 0,
        };
        // The auxiliary matrix has C's type and layout.
        let paux = match extra.aux {
            Some((m, off)) => self.ptr(m, off, sc)?,
            None => 0,
        };
        match self.rec.keep(Work::Gemm { gemm: g.clone(), a: pa, b: pb, c: pc, bias: pbias, aux: paux }) {
            Some(w) => self.run_one(&w),
            None => Ok(()),
        }
    }

    fn sync(&mut self) -> Result<(), GpuError> {
        self.flush("waits for the device")?;
        self.stream.synchronize().map_err(err("stream synchronize"))
    }

    type Graph = CudaGraph;

    fn start_recording(&mut self) {
        self.rec.start();
    }

    fn stop_recording(&mut self) -> Recording {
        self.rec.stop()
    }

    fn run_work(&mut self, work: &[Work]) -> Result<(), GpuError> {
        work.iter().try_for_each(|w| self.run_one(w))
    }

    fn capture(&mut self, work: &[Work]) -> Result<CudaGraph, GpuError> {
        // The GEMM plans are made before capturing: their heuristic query is not stream work.
        for w in work {
            if let Work::Gemm { gemm, .. } = w {
                self.ensure_plan(gemm)?;
            }
        }
        self.stream
            .begin_capture(drvsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
            .map_err(err("cuStreamBeginCapture"))?;
        let issued = self.run_work(work);
        // Capture ends whatever happened, so that the stream is usable again.
        let ended = self.stream.end_capture(drvsys::CUgraphInstantiate_flags(0)).map_err(err("cuStreamEndCapture"));
        issued?;
        ended?.ok_or_else(|| GpuError("the stream capture was invalidated (no graph came back)".into()))
    }

    fn replay(&mut self, g: &CudaGraph) -> Result<(), GpuError> {
        g.launch().map_err(err("cuGraphLaunch"))
    }
}

/// One matrix as cuBLASLt's layout sees it (column-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LtMatrix {
    pub dtype: DType,
    pub rows: u64,
    pub cols: u64,
    pub ld: u64,
    /// Elements between batch entries (0: broadcast).
    pub stride: u64,
}

/// The cuBLASLt description of a [`Gemm`]: the three layouts, the compute type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LtShape {
    pub a: LtMatrix,
    pub b: LtMatrix,
    pub c: LtMatrix,
    pub batch: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    /// `CUBLAS_COMPUTE_32F_FAST_TF32` rather than `_32F`.
    pub tf32: bool,
    pub epilogue: Epilogue,
}

impl LtShape {
    /// The layouts of `g`, or why cuBLASLt cannot run it.
    pub fn of(g: &Gemm) -> Result<LtShape, GpuError> {
        let float = |t: DType| matches!(t, DType::F32 | DType::F16 | DType::Bf16);
        if !float(g.ab) || !float(g.c) {
            return Err(GpuError(format!("GEMM of {} into {}: only float types", g.ab.name(), g.c.name())));
        }
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let m = |dtype, rows: u64, cols: u64, ld: u64, stride| {
            if ld < rows.max(1) {
                return Err(GpuError(format!("GEMM leading dimension {ld} is below the {rows} rows")));
            }
            Ok(LtMatrix { dtype, rows, cols, ld, stride })
        };
        let mut s = LtShape {
            a: m(g.ab, ar, ac, g.lda, g.stride_a)?,
            b: m(g.ab, br, bc, g.ldb, g.stride_b)?,
            c: m(g.c, g.m, g.n, g.ldc, g.stride_c)?,
            batch: g.batch.max(1),
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            // TF32 only speeds up f32 inputs; for 16-bit inputs it means nothing.
            tf32: g.tf32 && g.ab == DType::F32,
            epilogue: g.epilogue,
        };
        if s.batch == 1 {
            s.a.stride = 0;
            s.b.stride = 0;
            s.c.stride = 0;
        }
        s.epilogue.check_layout(s.batch, s.c.ld)?;
        Ok(s)
    }

    /// Bytes A, B and C span, from their first element to past their last
    /// (the whole batch), for the bounds check before a launch.
    pub fn spans(&self) -> [usize; 3] {
        let span = |x: &LtMatrix| {
            let one = x.cols.saturating_sub(1) * x.ld + x.rows;
            ((one + x.stride * (self.batch - 1)) as usize) * x.dtype.size_bytes()
        };
        [span(&self.a), span(&self.b), span(&self.c)]
    }

    /// Bytes of the epilogue's bias: one element per row of C, of C's type
    /// (f32 for a bias gradient).
    pub fn bias_bytes(&self) -> usize {
        self.c.rows as usize * self.epilogue.bias_type(self.c.dtype).size_bytes()
    }

    /// cuBLASLt's name for the epilogue.
    fn lt_epilogue(&self) -> ltsys::cublasLtEpilogue_t {
        use ltsys::cublasLtEpilogue_t as E;
        match self.epilogue {
            Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::ReluBias => E::CUBLASLT_EPILOGUE_RELU_BIAS,
            Epilogue::GeluBias => E::CUBLASLT_EPILOGUE_GELU_BIAS,
            Epilogue::GeluAuxBias => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            Epilogue::BiasGradA { .. } => E::CUBLASLT_EPILOGUE_BGRADA,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GemmKey([u64; 10], [bool; 3], [DType; 2], Epilogue);

impl GemmKey {
    fn of(g: &Gemm) -> GemmKey {
        GemmKey(
            [g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.batch, g.stride_a, g.stride_b, g.stride_c],
            [g.trans_a, g.trans_b, g.tf32],
            [g.ab, g.c],
            g.epilogue,
        )
    }
}

/// Sets attribute `attr` of the matmul descriptor `desc` to `value`.
///
/// # Safety
/// `desc` is a live descriptor and `T` is the attribute's documented type.
unsafe fn set_desc<T>(
    desc: ltsys::cublasLtMatmulDesc_t,
    attr: ltsys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), lt::CublasError> {
    // SAFETY: the caller's contract; `value` lives for the call.
    unsafe { lt::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, std::mem::size_of::<T>()) }
}

fn cuda_type(t: DType) -> ltsys::cudaDataType {
    use ltsys::cudaDataType_t as T;
    match t {
        DType::F16 => T::CUDA_R_16F,
        DType::Bf16 => T::CUDA_R_16BF,
        _ => T::CUDA_R_32F,
    }
}

/// cuBLASLt's descriptors and chosen algorithm for one GEMM shape.
struct LtPlan {
    desc: ltsys::cublasLtMatmulDesc_t,
    a: ltsys::cublasLtMatrixLayout_t,
    b: ltsys::cublasLtMatrixLayout_t,
    c: ltsys::cublasLtMatrixLayout_t,
    algo: ltsys::cublasLtMatmulAlgo_t,
}

impl LtPlan {
    fn new(handle: ltsys::cublasLtHandle_t, s: &LtShape, workspace: usize) -> Result<LtPlan, GpuError> {
        use ltsys::cublasLtMatmulDescAttributes_t as D;
        use ltsys::cublasLtMatrixLayoutAttribute_t as L;
        let e = |what: &'static str| move |x: lt::CublasError| GpuError(format!("{what}: {x:?}"));
        let compute = match s.tf32 {
            true => ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            false => ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let desc = lt::create_matmul_desc(compute, ltsys::cudaDataType_t::CUDA_R_32F).map_err(e("matmul desc"))?;
        let mut plan = LtPlan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: ltsys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let layout = |x: &LtMatrix| -> Result<ltsys::cublasLtMatrixLayout_t, GpuError> {
            let l = lt::create_matrix_layout(cuda_type(x.dtype), x.rows, x.cols, x.ld as i64)
                .map_err(e("matrix layout"))?;
            if s.batch > 1 {
                let count = s.batch as i32;
                let stride = x.stride as i64;
                // SAFETY: `l` is a live layout; the values are the attribute's types.
                unsafe {
                    lt::set_matrix_layout_attribute(
                        l,
                        L::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        &count as *const i32 as *const c_void,
                        4,
                    )
                    .and_then(|_| {
                        lt::set_matrix_layout_attribute(
                            l,
                            L::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                            &stride as *const i64 as *const c_void,
                            8,
                        )
                    })
                    .map_err(e("batch layout"))?;
                }
            }
            Ok(l)
        };
        // Filled one by one so that `plan`'s drop frees what was made on an error.
        plan.a = layout(&s.a).inspect_err(|_| plan.destroy_ref())?;
        plan.b = layout(&s.b).inspect_err(|_| plan.destroy_ref())?;
        plan.c = layout(&s.c).inspect_err(|_| plan.destroy_ref())?;
        let ta = s.trans_a as i32;
        let tb = s.trans_b as i32;
        let epilogue = || -> Result<(), lt::CublasError> {
            if s.epilogue == Epilogue::None {
                return Ok(());
            }
            // SAFETY: a live descriptor; each value is its attribute's type
            // (the epilogue enum and the data type 32 bits, ld and strides 64).
            unsafe {
                set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &(s.lt_epilogue() as u32))?;
                // The bias is the same for every batch entry.
                set_desc(desc, D::CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &0i64)?;
                if s.epilogue == (Epilogue::BiasGradA { f32: true }) {
                    // The gradient in f32, as the graph's sum_to makes it (the default is C's type).
                    let t = ltsys::cudaDataType_t::CUDA_R_32F as i32;
                    set_desc(desc, D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &t)?;
                }
                if s.epilogue.has_aux() {
                    // C's layout; its type is cuBLASLt's default for the GELU input.
                    set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &(s.c.ld as i64))?;
                    set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, &(s.c.stride as i64))?;
                }
            }
            Ok(())
        };
        epilogue().map_err(|x| {
            plan.destroy_ref();
            GpuError(format!("cuBLASLt epilogue {:?}: {x:?}", s.epilogue))
        })?;
        let pref = lt::create_matmul_pref().map_err(e("matmul preference"))?;
        // SAFETY: live descriptors; attribute values of the documented types.
        let found = unsafe {
            set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &ta)
                .and_then(|_| set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &tb))
                .and_then(|_| {
                    lt::set_matmul_pref_attribute(
                        pref,
                        ltsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                        &workspace as *const usize as *const c_void,
                        std::mem::size_of::<usize>(),
                    )
                })
                .and_then(|_| lt::get_matmul_algo_heuristic(handle, desc, plan.a, plan.b, plan.c, plan.c, pref))
        };
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        match found {
            Ok(h) => {
                plan.algo = h.algo;
                Ok(plan)
            }
            Err(x) => {
                plan.destroy_ref();
                Err(GpuError(format!(
                    "cuBLASLt has no algorithm for {}x{}x{} {} -> {} (batch {}, epilogue {:?}): {x:?}",
                    s.c.rows,
                    s.c.cols,
                    if s.trans_a { s.a.rows } else { s.a.cols },
                    s.a.dtype.name(),
                    s.c.dtype.name(),
                    s.batch,
                    s.epilogue
                )))
            }
        }
    }

    fn destroy_ref(&self) {
        // SAFETY: each handle was created by cuBLASLt or is null; called once
        // per plan (on its error path or through `destroy`).
        unsafe {
            for l in [self.a, self.b, self.c] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }

    fn destroy(self) {
        self.destroy_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemm(m: u64, n: u64, k: u64, ta: bool, tb: bool) -> Gemm {
        Gemm { tf32: true, ..Gemm::packed(m, n, k, (ta, tb), DType::F16, DType::F16) }
    }

    #[test]
    fn an_epilogue_names_cublaslts_and_its_bias_spans_the_rows() {
        let mut g = gemm(5, 3, 7, false, false);
        for (e, lt) in [
            (Epilogue::None, ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT),
            (Epilogue::Bias, ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS),
            (Epilogue::ReluBias, ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS),
            (Epilogue::GeluBias, ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS),
            (Epilogue::GeluAuxBias, ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_AUX_BIAS),
            (Epilogue::BiasGradA { f32: true }, ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADA),
            (Epilogue::BiasGradA { f32: false }, ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADA),
        ] {
            g.epilogue = e;
            g.ldc = if e.has_aux() { 8 } else { 5 };
            let s = LtShape::of(&g).unwrap();
            assert_eq!(s.lt_epilogue(), lt);
            // One f16 per row of C (m = 5), whatever the batch; a gradient's in f32.
            assert_eq!(s.bias_bytes(), if e == (Epilogue::BiasGradA { f32: true }) { 20 } else { 10 });
            // A plan is made per epilogue: the key tells them apart.
            let plain = GemmKey::of(&Gemm { ldc: g.ldc, ..gemm(5, 3, 7, false, false) });
            assert_eq!(GemmKey::of(&g) == plain, e == Epilogue::None);
        }
    }

    #[test]
    fn a_gelu_input_matrix_needs_a_leading_dimension_of_eights() {
        let g = Gemm { epilogue: Epilogue::GeluAuxBias, ..gemm(5, 3, 7, false, false) };
        let e = LtShape::of(&g).unwrap_err().0;
        assert!(e.contains("leading dimension 5 is not a multiple of 8"), "{e}");
        assert!(LtShape::of(&Gemm { ldc: 16, ..g.clone() }).is_ok());
        // Only the auxiliary matrix asks it.
        assert!(LtShape::of(&Gemm { epilogue: Epilogue::GeluBias, ..g }).is_ok());
    }

    #[test]
    fn a_bias_gradient_is_of_one_matrix() {
        let g = Gemm { epilogue: Epilogue::BiasGradA { f32: true }, ..gemm(5, 3, 7, false, true) };
        assert!(LtShape::of(&g).is_ok());
        let e = LtShape::of(&Gemm { batch: 2, stride_a: 35, stride_b: 21, stride_c: 15, ..g }).unwrap_err().0;
        assert!(e.contains("batch of 2"), "{e}");
    }

    #[test]
    fn transposes_swap_the_stored_shape() {
        let s = LtShape::of(&gemm(5, 3, 7, true, false)).unwrap();
        assert_eq!((s.a.rows, s.a.cols, s.a.ld), (7, 5, 7));
        assert_eq!((s.b.rows, s.b.cols, s.b.ld), (7, 3, 7));
        assert_eq!((s.c.rows, s.c.cols, s.c.ld), (5, 3, 5));
        // f16 inputs: TF32 does not apply.
        assert!(!s.tf32);
        assert_eq!(s.spans(), [7 * 5 * 2, 7 * 3 * 2, 5 * 3 * 2]);
        let s = LtShape::of(&gemm(5, 3, 7, false, true)).unwrap();
        assert_eq!((s.b.rows, s.b.cols, s.b.ld), (3, 7, 3));
    }

    #[test]
    fn batches_span_their_strides_and_broadcast_spans_one_matrix() {
        let mut g = gemm(4, 2, 3, false, false);
        g.ab = DType::F32;
        g.c = DType::F32;
        g.batch = 5;
        g.stride_a = 0;
        g.stride_b = 6;
        g.stride_c = 8;
        let s = LtShape::of(&g).unwrap();
        assert!(s.tf32);
        assert_eq!(s.spans(), [12 * 4, (6 * 4 + 6) * 4, (8 * 4 + 8) * 4]);
        // A padded leading dimension: the last column ends at rows, not ld.
        g.batch = 1;
        g.ldc = 10;
        assert_eq!(LtShape::of(&g).unwrap().spans()[2], (10 + 4) * 4);
    }

    #[test]
    fn bad_gemms_are_refused() {
        let mut g = gemm(4, 2, 3, false, false);
        g.lda = 3;
        assert!(LtShape::of(&g).unwrap_err().0.contains("leading dimension 3 is below the 4 rows"));
        let mut g = gemm(4, 2, 3, false, false);
        g.ab = DType::I32;
        assert!(LtShape::of(&g).unwrap_err().0.contains("only float types"));
    }
}
