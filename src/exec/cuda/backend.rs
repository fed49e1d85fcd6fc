//! The CUDA backend: mpc's ops as launches of `kernels/*.cu` and GEMMs,
//! on any [`Gpu`] (the real device, or the SIMT emulation in tests).
//!
//! Which kernel runs for which op, with which arguments and launch sizes,
//! is decided here, once for both devices; [`super::launch`] holds the pure
//! host arithmetic (broadcast strides, `sum_to` masks, the GEMM layout),
//! unit-tested on its own. A step's values live in one arena, at the
//! offsets the static memory plan gave them (`exec::memory`, allocated once
//! in `prepare`); what the plan does not place (uploads, the new state,
//! scratch, values kept past their planned life) comes from a pool keyed
//! by size. After the first step a step makes no device allocation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::exec::backend::{Backend, OpCtx, StepRun};
use crate::exec::fuse::Group;
use crate::exec::run::Plan;
use crate::exec::ExecError;
use crate::exec::{memory, memplan};
use crate::ir::op::Op;
use crate::ir::types::{DType, TensorType};
use crate::tensor::{numel, Data, Tensor};

use super::gpu::{Epilogue, Extra, Gemm, Gpu, GpuError, KArg, Launch};

mod cnn;
mod groups;
mod multi_run;
mod steps;
use steps::{Graphs, Pinned};
mod transformer;
use super::launch::{self, blocks, Broadcast, THREADS};

/// Freed allocations by size, for reuse.
struct Pool<M> {
    free: HashMap<usize, Vec<M>>,
    /// Allocations made so far (each a device `alloc`).
    allocs: u64,
}

/// Where a buffer's bytes are.
enum Storage<M> {
    /// An allocation of its own, back to the pool on drop (taken only then).
    Pooled(Option<M>),
    /// The step arena, at `offset`.
    Arena(Rc<M>, usize),
    /// An allocation pinned to one request of a recorded step (see [`Pinned`]).
    Pinned(Rc<M>),
}

/// A tensor on the device.
pub struct CudaBuffer<M> {
    storage: Storage<M>,
    bytes: usize,
    ty: TensorType,
    pool: Rc<RefCell<Pool<M>>>,
}

impl<M> CudaBuffer<M> {
    /// The allocation and the byte offset of the tensor in it.
    fn at(&self) -> (&M, usize) {
        match &self.storage {
            Storage::Pooled(m) => (m.as_ref().unwrap_or_else(|| unreachable!("a live buffer has its allocation")), 0),
            Storage::Arena(m, off) => (m, *off),
            Storage::Pinned(m) => (m, 0),
        }
    }

    /// The tensor type the buffer holds.
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }
}

impl<M> Drop for CudaBuffer<M> {
    fn drop(&mut self) {
        if let Storage::Pooled(m) = &mut self.storage {
            if let Some(m) = m.take() {
                self.pool.borrow_mut().free.entry(self.bytes).or_default().push(m);
            }
        }
    }
}

/// Whether the CUDA backend runs an op: the op table's `cuda` column
/// (today every op but the sources, which are fed, not computed).
pub fn supports(op: &Op) -> bool {
    op.info().cuda
}

/// Why the backend cannot run `plan` (the ops it lacks, by node, the first
/// eight), or None when it runs every step.
pub fn refusal(plan: &Plan) -> Option<String> {
    let missing: Vec<String> =
        plan.steps.iter().filter(|s| !supports(&s.op)).map(|s| format!("`{}` ({})", s.name, s.op.name())).collect();
    if missing.is_empty() {
        return None;
    }
    let shown = missing.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    let more = if missing.len() > 8 { format!(" and {} more", missing.len() - 8) } else { String::new() };
    Some(format!("the CUDA backend does not run these ops yet: {shown}{more} (use --device cpu)"))
}

/// The step arena and where each node's outputs go in it.
struct Arena<M> {
    mem: Rc<M>,
    bytes: u64,
    /// Node name -> per output, its (offset, bytes), or None when the plan
    /// leaves it to the pool (the new state).
    at: HashMap<String, Vec<Option<(usize, usize)>>>,
}

/// The CUDA backend over a device `G`.
pub struct CudaBackend<G: Gpu> {
    // Before the memory: a graph's addresses must not outlive their allocations.
    graphs: Graphs<G::Graph>,
    multi: multi_run::Multi<G::Mem>,
    pinned: Pinned<G::Mem>,
    gpu: G,
    pool: Rc<RefCell<Pool<G::Mem>>>,
    arena: Option<Arena<G::Mem>>,
    /// Bytes of every device allocation made (arena, pool).
    allocated: u64,
    /// The step number on the device (dropout combines its seeds there, so
    /// that a step's arguments repeat) and the step it holds.
    step_mem: Option<(Rc<G::Mem>, u64)>,
    /// TF32 tensor cores for f32 GEMMs (off: f32 GEMMs are exact f32).
    tf32: bool,
    /// Whether to claim fusion groups (see [`CudaBackend::with_fusion`]).
    fuse: bool,
    /// With `fuse`: claim the matmul-and-bias groups as epilogue GEMMs.
    gemm_epilogues: bool,
    /// The kernel of each claimed group, by its index in the plan's claims,
    /// and where its outputs go: (node, output slot) of each.
    fused: Vec<(super::fused::FusedKernel, Vec<(String, usize)>)>,
}

impl<G: Gpu> CudaBackend<G> {
    /// A backend on `gpu`; `tf32` allows TF32 for f32 GEMMs.
    pub fn new(gpu: G, tf32: bool) -> CudaBackend<G> {
        CudaBackend {
            graphs: Graphs::new(),
            multi: multi_run::Multi::new(),
            pinned: Pinned::new(),
            gpu,
            pool: Rc::new(RefCell::new(Pool { free: HashMap::new(), allocs: 0 })),
            arena: None,
            allocated: 0,
            step_mem: None,
            tf32,
            fuse: false,
            gemm_epilogues: true,
            fused: Vec::new(),
        }
    }

    /// Runs each fusion group of the plan ([`crate::exec::fuse`]) as one
    /// generated kernel ([`super::fused`]), compiled when the plan is
    /// prepared; the results are the unfused kernels' bit for bit.
    pub fn with_fusion(mut self, on: bool) -> CudaBackend<G> {
        self.fuse = on;
        self
    }

    /// With fusion: whether a matmul and its bias add (and relu or gelu) run
    /// as one GEMM with a cuBLASLt epilogue, and a weight gradient with its
    /// bias's (on by default). The sum is then rounded once, where the
    /// unfused steps round the product and then the sum: within one
    /// rounding of the low type, not bit for bit; the bias gradient is
    /// summed in the GEMM's order.
    pub fn with_gemm_epilogues(mut self, on: bool) -> CudaBackend<G> {
        self.gemm_epilogues = on;
        self
    }

    /// How many fused kernels the backend runs per step.
    pub fn fused_kernels(&self) -> usize {
        self.fused.len()
    }

    /// Runs groups of optimizer and unscale nodes as one multi-tensor launch
    /// each (on by default); set before the session opens (`prepare` finds
    /// the groups).
    pub fn with_multi_tensor(mut self, on: bool) -> CudaBackend<G> {
        self.multi.enabled = on;
        self
    }

    /// The bytes of the multi-tensor launches' tables.
    pub fn table_bytes(&self) -> u64 {
        self.multi.table_bytes
    }

    /// The device.
    pub fn gpu(&mut self) -> &mut G {
        &mut self.gpu
    }

    /// How many device allocations the backend has made.
    pub fn allocations(&self) -> u64 {
        self.pool.borrow().allocs + u64::from(self.arena.is_some())
    }

    /// The bytes of every device allocation the backend has made.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// The size of the step arena (0 before `prepare`).
    pub fn arena_bytes(&self) -> u64 {
        self.arena.as_ref().map_or(0, |a| a.bytes)
    }

    /// Output `i` of node `node`: at its planned offset in the arena, else
    /// from the pool.
    fn output(&mut self, node: &str, i: usize, ty: &TensorType) -> Result<CudaBuffer<G::Mem>, ExecError> {
        let n = numel(&ty.shape)?;
        let bytes = n.checked_mul(ty.dtype.size_bytes()).ok_or_else(|| too_big(ty))?;
        let planned = self.arena.as_ref().and_then(|a| Some((a, (*a.at.get(node)?.get(i)?)?)));
        match planned {
            // The plan sized it from the same type; a mismatch goes to the pool rather than overrun.
            Some((a, (offset, size))) if size == bytes => Ok(CudaBuffer {
                storage: Storage::Arena(a.mem.clone(), offset),
                bytes,
                ty: ty.clone(),
                pool: self.pool.clone(),
            }),
            _ => self.scratch(bytes, ty.clone()),
        }
    }

    fn buffer(&mut self, ty: &TensorType) -> Result<CudaBuffer<G::Mem>, ExecError> {
        let n = numel(&ty.shape)?;
        let bytes = n.checked_mul(ty.dtype.size_bytes()).ok_or_else(|| too_big(ty))?;
        self.scratch(bytes, ty.clone())
    }

    fn scratch(&mut self, bytes: usize, ty: TensorType) -> Result<CudaBuffer<G::Mem>, ExecError> {
        let storage = match self.pinned.next {
            Some(i) => {
                self.pinned.next = Some(i + 1);
                if self.pinned.slots.len() <= i {
                    self.pinned.slots.resize_with(i + 1, Vec::new);
                }
                let free = self.pinned.slots[i].iter().find(|(b, m)| *b == bytes && Rc::strong_count(m) == 1);
                match free {
                    Some((_, m)) => Storage::Pinned(m.clone()),
                    None => {
                        let m = Rc::new(self.fresh(bytes)?);
                        self.pinned.slots[i].push((bytes, m.clone()));
                        Storage::Pinned(m)
                    }
                }
            }
            None => Storage::Pooled(Some(self.fresh(bytes)?)),
        };
        Ok(CudaBuffer { storage, bytes, ty, pool: self.pool.clone() })
    }

    /// An allocation of `bytes` from the pool, or a new one.
    fn fresh(&mut self, bytes: usize) -> Result<G::Mem, ExecError> {
        let reused = self.pool.borrow_mut().free.get_mut(&bytes).and_then(Vec::pop);
        match reused {
            Some(m) => Ok(m),
            None => {
                self.pool.borrow_mut().allocs += 1;
                self.allocated += bytes.max(1) as u64;
                // At least one byte: a zero-sized allocation is an error on a GPU.
                self.gpu.alloc(bytes.max(1)).map_err(gpu_err)
            }
        }
    }

    /// mpc's row-major `o = a · b` (transposes as the matmul's) as one GEMM
    /// with `epilogue`, whose bias `bias` is (a vector over o's last axis)
    /// and whose auxiliary output `aux` is (o's type and shape).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        a: &CudaBuffer<G::Mem>,
        b: &CudaBuffer<G::Mem>,
        o: &CudaBuffer<G::Mem>,
        (transpose_a, transpose_b): (bool, bool),
        epilogue: Epilogue,
        bias: Option<&CudaBuffer<G::Mem>>,
        aux: Option<&CudaBuffer<G::Mem>>,
    ) -> Result<(), String> {
        let (fa, fb) = (self.full_batch(a, &o.ty.shape.0)?, self.full_batch(b, &o.ty.shape.0)?);
        let (a, b) = (fa.as_ref().unwrap_or(a), fb.as_ref().unwrap_or(b));
        let g = self.gemm_of(&a.ty, &b.ty, &o.ty, (transpose_a, transpose_b), epilogue)?;
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: B's buffer is cuBLAS's
        // A, and the bias over C's last axis is over Cᵀ's rows, as cuBLAS adds it.
        let extra = Extra { bias: bias.map(|x| x.at()), aux: aux.map(|x| x.at()) };
        self.gpu.gemm_extra(&g, b.at(), a.at(), o.at(), extra).map_err(|e| e.to_string())
    }

    /// The GEMM of mpc's row-major `o = a · b` with `epilogue`, as [`Self::gemm`]
    /// runs it: an operand whose batch broadcasts partially at its full batch.
    fn gemm_of(
        &self,
        a: &TensorType,
        b: &TensorType,
        o: &TensorType,
        (transpose_a, transpose_b): (bool, bool),
        epilogue: Epilogue,
    ) -> Result<Gemm, String> {
        let shape = |x: &TensorType| batch_shape(&x.shape.0, &o.shape.0).unwrap_or_else(|| x.shape.0.clone());
        let g = launch::matmul_gemm(
            (&shape(a), transpose_a),
            (&shape(b), transpose_b),
            &o.shape.0,
            a.dtype,
            o.dtype,
            self.tf32,
        )?;
        Ok(Gemm { epilogue, ..g })
    }

    /// A matmul operand whose batch axes broadcast partially against the
    /// output's (`[2, 1, m, k]` against `[2, 3, ...]`), gathered into the
    /// full batch: a strided batched GEMM can repeat an operand only whole
    /// (stride 0). None when it is used as it is.
    fn full_batch(&mut self, x: &CudaBuffer<G::Mem>, out: &[u64]) -> Result<Option<CudaBuffer<G::Mem>>, String> {
        let s = &x.ty.shape.0;
        let Some(full) = batch_shape(s, out) else { return Ok(None) };
        let ty = TensorType::new(x.ty.dtype, full.clone());
        let buf = self.buffer(&ty).map_err(|e| e.to_string())?;
        let g = launch::broadcast_to(s, &full)?;
        let n = n_of(&ty);
        let mut args = vec![p(x), p(&buf), KArg::I64(n), KArg::I32(g.rank)];
        args.extend(g.dims.iter().chain(&g.strides).map(|&v| KArg::I64(v)));
        self.launch(&format!("transpose_{}", sfx(ty.dtype)), n as u64, &args)?;
        Ok(Some(buf))
    }

    fn launch(&mut self, name: &str, work: u64, args: &[KArg<'_, G::Mem>]) -> Result<(), String> {
        self.gpu.launch(name, Launch::linear(blocks(work), THREADS), args).map_err(|e| e.to_string())
    }
}

/// The shape a matmul operand of shape `s` is copied to before its GEMM
/// (`out`'s batch, `s`'s matrix), or None when it is used as it is: of one
/// matrix, or of `out`'s batch already.
fn batch_shape(s: &[u64], out: &[u64]) -> Option<Vec<u64>> {
    let r = out.len();
    if s.len() < 2 || r < 2 {
        return None;
    }
    let (batch, out_batch) = (&s[..s.len() - 2], &out[..r - 2]);
    let (b, bo) = (batch.iter().product::<u64>(), out_batch.iter().product::<u64>());
    if b == bo || b == 1 {
        return None;
    }
    let mut full = out_batch.to_vec();
    full.extend_from_slice(&s[s.len() - 2..]);
    Some(full)
}

/// An optimizer's input arguments, and its lr attribute's when it has no lr input.
type OptimizerArgs<'a, M> = (Vec<KArg<'a, M>>, Option<KArg<'a, M>>);

/// An optimizer's inputs as kernel arguments, its `base` inputs with the lr
/// input among them when given, and the lr attribute as the argument after
/// the outputs and size when not.
fn optimizer_args<'a, M>(
    x: &[&'a CudaBuffer<M>],
    base: usize,
    name: &str,
    lr: f64,
) -> Result<OptimizerArgs<'a, M>, String> {
    match x.len() {
        n if n == base => Ok((x.iter().map(|b| p(b)).collect(), Some(KArg::F64(lr)))),
        n if n == base + 1 => {
            if x[base].ty.dtype != DType::F32 || x[base].ty.shape.numel() != Some(1) {
                return Err(format!("{name}: the lr input must be an f32 scalar, found {}", x[base].ty));
            }
            Ok((x.iter().map(|b| p(b)).collect(), None))
        }
        n => Err(format!("{name} takes {base} inputs, or {} with an lr, not {n}", base + 1)),
    }
}

/// `lr_` for an optimizer given its lr as an input (`base` inputs without it).
fn lr_tag<M>(x: &[&CudaBuffer<M>], base: usize) -> &'static str {
    if x.len() > base {
        "lr_"
    } else {
        ""
    }
}

fn too_big(ty: &TensorType) -> ExecError {
    ExecError::Tensor(format!("{ty} is too large to allocate"))
}

fn gpu_err(e: super::gpu::GpuError) -> ExecError {
    ExecError::Tensor(e.to_string())
}

/// A pointer argument to the start of `b`.
fn p<M>(b: &CudaBuffer<M>) -> KArg<'_, M> {
    let (m, off) = b.at();
    KArg::Ptr(m, off)
}

fn n_of(ty: &TensorType) -> i64 {
    ty.shape.0.iter().product::<u64>() as i64
}

/// The dtype suffix of a kernel name.
fn sfx(d: DType) -> &'static str {
    d.name()
}

impl<G: Gpu> Backend for CudaBackend<G> {
    type Buffer = CudaBuffer<G::Mem>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn memory_in_use(&self) -> Option<u64> {
        self.gpu.memory_in_use()
    }

    fn prepare(&mut self, plan: &Plan) -> Result<(), ExecError> {
        if let Some(why) = refusal(plan) {
            return Err(ExecError::Graph(why));
        }
        let reqs = memory::requests(plan)?;
        let requests: Vec<_> = reqs.iter().map(|(_, r)| *r).collect();
        let mut placed = memplan::plan(&requests)
            .ok_or_else(|| ExecError::Tensor("the step's values do not fit a 64-bit address space".into()))?;
        // Multi-tensor groups read their members' inputs at the last member:
        // planned with those lives lengthened, when that costs no arena byte.
        if self.multi.enabled {
            let longer = groups::lengthened(plan, &reqs);
            if let Some(p) = memplan::plan(&longer).filter(|p| p.arena_bytes == placed.arena_bytes) {
                placed = p;
            }
        }
        let mut offset_of = HashMap::new();
        for ((v, r), &off) in reqs.iter().zip(&placed.offsets) {
            let size = usize::try_from(r.bytes).map_err(|_| ExecError::Tensor("a value is too large".into()))?;
            offset_of.insert(*v, (off as usize, size));
        }
        let at = plan
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.outputs.iter().map(|v| offset_of.get(v).copied()).collect()))
            .collect();
        let bytes =
            usize::try_from(placed.arena_bytes).map_err(|_| ExecError::Tensor("the arena is too large".into()))?;
        self.arena = None;
        let mem = self.gpu.alloc(bytes.max(1)).map_err(gpu_err)?;
        self.allocated += bytes.max(1) as u64;
        self.arena = Some(Arena { mem: Rc::new(mem), bytes: placed.arena_bytes, at });
        self.prepare_groups(plan, &offset_of)
    }

    fn claim(&mut self, plan: &Plan, groups: &[Group]) -> Result<Vec<usize>, ExecError> {
        self.fused.clear();
        if !self.fuse {
            return Ok(Vec::new());
        }
        let mut taken = Vec::new();
        for (k, g) in groups.iter().enumerate() {
            let gemm = matches!(g.kind, crate::exec::fuse::Kind::GemmBias | crate::exec::fuse::Kind::GemmBiasGrad);
            if gemm && !self.gemm_epilogues {
                continue;
            }
            // A group the generator cannot express, or whose GEMM the device
            // cannot run, runs unfused.
            let Ok(kernel) = super::fused::generate(plan, g) else { continue };
            if let super::fused::Work::Gemm { epilogue, transpose_a, transpose_b } = kernel.work {
                let Some((a, b, o, ..)) = super::fused::gemm_operands(epilogue, &g.inputs, &g.outputs) else {
                    continue;
                };
                let ty = |v: &usize| plan.value_type(*v);
                let gm = self.gemm_of(ty(a), ty(b), ty(o), (transpose_a, transpose_b), epilogue);
                if gm.map_err(GpuError).and_then(|gm| self.gpu.check_gemm(&gm)).is_err() {
                    continue;
                }
            }
            // Each output goes where the member step that makes it puts it.
            let mut outs = Vec::with_capacity(g.outputs.len());
            for &v in &g.outputs {
                let place = g.steps().find_map(|m| {
                    let slot = plan.steps[m].outputs.iter().position(|&o| o == v)?;
                    Some((plan.steps[m].name.clone(), slot))
                });
                outs.push(place.ok_or_else(|| {
                    ExecError::Graph(format!("fusion group {k} writes `{}`, which no member makes", plan.value_name(v)))
                })?);
            }
            self.fused.push((kernel, outs));
            taken.push(k);
        }
        let kernels: Vec<_> = self.fused.iter().map(|(k, _)| k.clone()).filter(|k| k.generated()).collect();
        if !kernels.is_empty() {
            let names: Vec<String> = kernels.iter().map(|k| k.name.clone()).collect();
            self.gpu.load(&names, &super::fused::module(&kernels)).map_err(gpu_err)?;
        }
        Ok(taken)
    }

    fn run_group(
        &mut self,
        group: usize,
        ctx: &OpCtx<'_>,
        inputs: &[&Self::Buffer],
        out_types: &[TensorType],
    ) -> Result<Vec<Self::Buffer>, ExecError> {
        let err = |message: String| ExecError::Op { node: ctx.node.to_string(), op: "fused", message };
        let (kernel, places) = self.fused.get(group).cloned().ok_or_else(|| err(format!("no fused group {group}")))?;
        if places.len() != out_types.len() {
            return Err(err(format!("{} outputs, expected {}", out_types.len(), places.len())));
        }
        self.flush_groups()?;
        let mut outs = Vec::with_capacity(out_types.len());
        for ((node, slot), ty) in places.iter().zip(out_types) {
            outs.push(self.output(node, *slot, ty)?);
        }
        if let super::fused::Work::CrossEntropy { rows, classes } = kernel.work {
            let ([dloss, logits, labels], [loss, dx]) = (inputs, outs.as_slice()) else {
                return Err(err("a cross-entropy pair reads 3 values and writes 2".into()));
            };
            let pre = [p(dloss), p(logits), p(labels), KArg::I64(rows), KArg::I64(classes), p(dx)];
            self.two_pass(&kernel.name, rows as u64 * 32, loss, rows as f64, &pre).map_err(err)?;
            return Ok(outs);
        }
        if let super::fused::Work::Gemm { epilogue, transpose_a, transpose_b } = kernel.work {
            let written: Vec<&CudaBuffer<G::Mem>> = outs.iter().collect();
            let Some((a, b, o, bias, aux)) = super::fused::gemm_operands(epilogue, inputs, &written) else {
                return Err(err(format!(
                    "a GEMM with epilogue {epilogue:?} does not read {} values and write {}",
                    inputs.len(),
                    outs.len()
                )));
            };
            self.gemm(a, b, o, (transpose_a, transpose_b), epilogue, bias.copied(), aux.copied()).map_err(err)?;
            return Ok(outs);
        }
        if let super::fused::Work::LayerNormGradAdd { rows, width, dx_first } = kernel.work {
            let ([dy, x, gamma, mean, rstd, dres], [sum, dgamma, dbeta]) = (inputs, outs.as_slice()) else {
                return Err(err("a layer_norm_grad with its add reads 6 values and writes 3".into()));
            };
            let (r, w) = (KArg::I64(rows), KArg::I64(width));
            let order = KArg::I64(i64::from(dx_first));
            let args = [p(dy), p(x), p(gamma), p(mean), p(rstd), p(dres), p(sum), r, w, order];
            self.launch(&kernel.name, rows as u64 * 32, &args).map_err(err)?;
            // The params kernel is the unfused one's, named alike.
            let params = kernel.name.replacen("_add_", "_params_", 1);
            let args = [p(dy), p(x), p(mean), p(rstd), p(dgamma), p(dbeta), r, w];
            self.launch(&params, width as u64, &args).map_err(err)?;
            return Ok(outs);
        }
        let mut args: Vec<KArg<'_, G::Mem>> = inputs.iter().map(|b| p(b)).collect();
        args.extend(outs.iter().map(|b| p(b)));
        let work = match kernel.work {
            super::fused::Work::Elements => {
                let n = n_of(&out_types[0]);
                args.push(KArg::I64(n));
                n as u64
            }
            super::fused::Work::Rows { rows, width } => {
                args.extend([KArg::I64(rows), KArg::I64(width)]);
                rows as u64 * 32
            }
            super::fused::Work::Softmax { outer, len, inner, causal } => {
                args.extend([KArg::I64(outer), KArg::I64(len), KArg::I64(inner), KArg::I64(causal)]);
                (outer * inner) as u64 * 32
            }
            super::fused::Work::CrossEntropy { .. }
            | super::fused::Work::LayerNormGradAdd { .. }
            | super::fused::Work::Gemm { .. } => {
                return Err(err("a kernel of kernels/*.cu ran as a generated one".into()));
            }
        };
        self.launch(&kernel.name, work, &args).map_err(err)?;
        Ok(outs)
    }

    fn upload(&mut self, t: &Tensor) -> Result<Self::Buffer, ExecError> {
        self.flush_groups()?;
        // From the pool, not pinned: an upload in the middle of a step makes
        // it unreplayable already, and must not shift the pinned requests
        // after it (the steps after would not repeat the ones before).
        let pinned = self.pinned.next.take();
        let b = self.buffer(&t.ty());
        self.pinned.next = pinned;
        let b = b?;
        let bytes = t.data().to_le_bytes();
        let (m, off) = b.at();
        self.gpu.write(m, off, &bytes).map_err(gpu_err)?;
        Ok(b)
    }

    fn download(&mut self, b: &Self::Buffer) -> Result<Tensor, ExecError> {
        self.flush_groups()?;
        let mut bytes = vec![0u8; b.bytes];
        let (m, off) = b.at();
        self.gpu.read(m, off, &mut bytes).map_err(gpu_err)?;
        Ok(Tensor::new(b.ty.shape.clone(), Data::from_le_bytes(b.ty.dtype, &bytes))?)
    }

    fn duplicate(&mut self, b: &Self::Buffer) -> Result<Self::Buffer, ExecError> {
        self.flush_groups()?;
        let out = self.buffer(&b.ty)?;
        let d = sfx(b.ty.dtype);
        let n = n_of(&b.ty);
        self.launch(&format!("identity_{d}"), n as u64, &[p(b), p(&out), KArg::I64(n)]).map_err(ExecError::Tensor)?;
        Ok(out)
    }

    fn keep(&mut self, b: Self::Buffer) -> Result<Self::Buffer, ExecError> {
        match b.storage {
            Storage::Arena(..) => self.duplicate(&b),
            Storage::Pooled(_) | Storage::Pinned(_) => Ok(b),
        }
    }

    fn upload_into(&mut self, t: &Tensor, b: &mut Self::Buffer) -> Result<(), ExecError> {
        self.flush_groups()?;
        if b.ty != t.ty() || matches!(b.storage, Storage::Arena(..)) {
            *b = self.upload(t)?;
            return Ok(());
        }
        let (m, off) = b.at();
        self.gpu.write(m, off, &t.data().to_le_bytes()).map_err(gpu_err)
    }

    fn begin_step(&mut self, step: u64, record: bool) -> bool {
        self.start_step(step, record)
    }

    fn end_step(&mut self) -> Result<StepRun, ExecError> {
        self.finish_step()
    }

    fn run(
        &mut self,
        op: &Op,
        ctx: &OpCtx<'_>,
        inputs: &[&Self::Buffer],
        out_types: &[TensorType],
    ) -> Result<Vec<Self::Buffer>, ExecError> {
        let err = |message: String| ExecError::Op { node: ctx.node.to_string(), op: op.name(), message };
        // Only a session's: its fed values are resident, so deferred reads
        // find them (an executor's uploads die after their last reader).
        let member = self.multi.member_of(ctx.node).filter(|_| self.multi.in_session);
        if member.is_none() {
            self.flush_groups()?;
        }
        let mut outs = Vec::with_capacity(out_types.len());
        for (i, ty) in out_types.iter().enumerate() {
            outs.push(self.output(ctx.node, i, ty)?);
        }
        if let Some((g, k)) = member {
            if self.note(g, k, op, inputs, &outs).map_err(err)? {
                return Ok(outs);
            }
        }
        self.kernel(op, ctx, inputs, &outs).map_err(err)?;
        Ok(outs)
    }
}

impl<G: Gpu> CudaBackend<G> {
    /// Issues the launches of one op, writing `y`.
    fn kernel(
        &mut self,
        op: &Op,
        ctx: &OpCtx<'_>,
        x: &[&CudaBuffer<G::Mem>],
        y: &[CudaBuffer<G::Mem>],
    ) -> Result<(), String> {
        use Op::*;
        let arity = |k: usize| if x.len() == k { Ok(()) } else { Err(format!("expected {k} inputs, got {}", x.len())) };
        let o = y.first().ok_or("an op without outputs")?;
        let n = n_of(&o.ty);
        let t = sfx(o.ty.dtype);
        match op {
            Constant { value, .. } => {
                self.launch(&format!("constant_{t}"), n as u64, &[p(o), KArg::I64(n), KArg::F64(*value)])
            }
            Seed => self.launch(&format!("constant_{t}"), n as u64, &[p(o), KArg::I64(n), KArg::F64(1.0)]),
            Cast { to } => {
                arity(1)?;
                let name = format!("cast_{}_{}", sfx(x[0].ty.dtype), sfx(*to));
                self.launch(&name, n as u64, &[p(x[0]), p(o), KArg::I64(n)])
            }
            Identity => {
                arity(1)?;
                self.launch(&format!("identity_{t}"), n as u64, &[p(x[0]), p(o), KArg::I64(n)])
            }
            Add | Sub | Mul | Div => {
                arity(2)?;
                let bc = Broadcast::new(&x[0].ty.shape.0, &x[1].ty.shape.0, &o.ty.shape.0)?;
                let mut args = vec![p(x[0]), p(x[1]), p(o), KArg::I64(n), KArg::I32(bc.rank)];
                args.extend(bc.dims.iter().chain(&bc.sa).chain(&bc.sb).map(|&v| KArg::I64(v)));
                self.launch(&format!("{}_{t}", op.name()), n as u64, &args)
            }
            Scale { value } => {
                arity(1)?;
                self.launch(&format!("scale_{t}"), n as u64, &[p(x[0]), p(o), KArg::I64(n), KArg::F64(*value)])
            }
            Relu | Gelu | Tanh | Sigmoid | Exp | Log | Erf | Sqrt => {
                arity(1)?;
                self.launch(&format!("{}_{t}", op.name()), n as u64, &[p(x[0]), p(o), KArg::I64(n)])
            }
            ReluGrad | GeluGrad | TanhGrad | SigmoidGrad | ErfGrad => {
                arity(2)?;
                self.launch(&format!("{}_{t}", op.name()), n as u64, &[p(x[0]), p(x[1]), p(o), KArg::I64(n)])
            }
            Matmul { transpose_a, transpose_b } => {
                arity(2)?;
                self.gemm(x[0], x[1], o, (*transpose_a, *transpose_b), Epilogue::None, None, None)
            }
            SumTo { .. } => {
                arity(1)?;
                let s = launch::sum_to(&x[0].ty.shape.0, &o.ty.shape.0)?;
                let work = if s.last_reduced() { s.m as u64 * 32 } else { s.m as u64 };
                let mut args = vec![p(x[0]), p(o), KArg::I64(s.m), KArg::I64(s.count)];
                args.extend(s.dims.iter().map(|&d| KArg::I64(d)));
                args.push(KArg::U32(s.mask));
                self.launch(&format!("sum_to_{t}"), work, &args)
            }
            ReduceSum { axes, .. } | ReduceMean { axes, .. } => {
                arity(1)?;
                if x[0].ty.dtype != o.ty.dtype {
                    return Err(format!("{} keeps its input's type", op.name()));
                }
                let s = launch::reduce(&x[0].ty.shape.0, axes)?;
                let mut args = vec![p(x[0]), p(o), KArg::I64(s.m), KArg::I64(s.count)];
                args.extend(s.dims.iter().map(|&d| KArg::I64(d)));
                args.push(KArg::U32(s.mask));
                args.push(KArg::I32(i32::from(matches!(op, ReduceMean { .. }))));
                self.launch(&format!("reduce_{t}"), s.m as u64, &args)
            }
            CrossEntropy => {
                arity(2)?;
                let (rows, classes) = launch::rows_classes(&x[0].ty.shape.0)?;
                let (lt, it) = (sfx(x[0].ty.dtype), sfx(x[1].ty.dtype));
                let pre = [p(x[0]), p(x[1]), KArg::I64(rows), KArg::I64(classes)];
                self.two_pass(&format!("cross_entropy_partial_{lt}_{it}"), rows as u64 * 32, o, rows as f64, &pre)
            }
            Mse => {
                arity(2)?;
                let m = n_of(&x[0].ty);
                let pre = [p(x[0]), p(x[1]), KArg::I64(m)];
                self.two_pass(&format!("mse_partial_{}", sfx(x[0].ty.dtype)), m as u64, o, m as f64, &pre)
            }
            CrossEntropyGrad => {
                arity(3)?;
                need_f32(x[0], "dloss")?;
                let (rows, classes) = launch::rows_classes(&x[1].ty.shape.0)?;
                let name = format!("cross_entropy_grad_{t}_{}", sfx(x[2].ty.dtype));
                let args = [p(x[0]), p(x[1]), p(x[2]), KArg::I64(rows), KArg::I64(classes), p(o)];
                self.launch(&name, rows as u64 * 32, &args)
            }
            MseGrad => {
                arity(3)?;
                need_f32(x[0], "dloss")?;
                self.launch(&format!("mse_grad_{t}"), n as u64, &[p(x[0]), p(x[1]), p(x[2]), KArg::I64(n), p(o)])
            }
            Unscale => {
                arity(2)?;
                need_f32(x[1], "scale")?;
                let name = format!("unscale_{}", sfx(x[0].ty.dtype));
                self.launch(&name, n as u64, &[p(x[0]), p(x[1]), p(o), KArg::I64(n)])
            }
            FoundInf => {
                need_f32(o, "found_inf")?;
                self.launch("constant_f32", 1, &[p(o), KArg::I64(1), KArg::F64(0.0)])?;
                for g in x {
                    let m = n_of(&g.ty);
                    self.launch(&format!("found_inf_{}", sfx(g.ty.dtype)), m as u64, &[p(g), KArg::I64(m), p(o)])?;
                }
                Ok(())
            }
            GlobalNorm => {
                let sizes: Vec<u64> = x.iter().map(|g| n_of(&g.ty) as u64).collect();
                let parts: Vec<u32> = sizes.iter().map(|&m| launch::partial_blocks(m)).collect();
                let total: u64 = parts.iter().map(|&b| u64::from(b)).sum();
                let part =
                    self.scratch(total as usize * 8, TensorType::new(DType::F32, vec![])).map_err(|e| e.to_string())?;
                let mut at = 0usize;
                for ((g, &m), &b) in x.iter().zip(&sizes).zip(&parts) {
                    let name = format!("global_norm_partial_{}", sfx(g.ty.dtype));
                    let args = [p(g), KArg::I64(m as i64), KArg::Ptr(part.at().0, part.at().1 + at * 8)];
                    self.gpu.launch(&name, Launch::linear(b, THREADS), &args).map_err(|e| e.to_string())?;
                    at += b as usize;
                }
                let args = [p(&part), KArg::I64(total as i64), p(o)];
                self.gpu.launch("global_norm_finish_f32", Launch::linear(1, THREADS), &args).map_err(|e| e.to_string())
            }
            ScaleUpdate { growth_factor, backoff_factor, growth_interval } => {
                arity(3)?;
                let t1 = y.get(1).ok_or("scale_update has two outputs")?;
                let args = [
                    p(x[0]),
                    p(x[1]),
                    p(x[2]),
                    p(o),
                    p(t1),
                    KArg::F64(*growth_factor),
                    KArg::F64(*backoff_factor),
                    KArg::U32(*growth_interval),
                ];
                self.gpu.launch("scale_update_f32", Launch::linear(1, 32), &args).map_err(|e| e.to_string())
            }
            Select => {
                arity(3)?;
                need_f32(x[0], "found_inf")?;
                self.launch(&format!("select_{t}"), n as u64, &[p(x[0]), p(x[1]), p(x[2]), p(o), KArg::I64(n)])
            }
            // An optimizer's lr is its attribute, or its last input (a
            // schedule's f32 scalar on the device): the `_lr_` kernels.
            Sgd { lr, weight_decay } => {
                let (mut args, lr) = optimizer_args(x, 2, "sgd", *lr)?;
                args.extend([p(o), KArg::I64(n)]);
                args.extend(lr);
                args.push(KArg::F64(*weight_decay));
                self.launch(&format!("sgd_{}{t}", lr_tag(x, 2)), n as u64, &args)
            }
            SgdMomentum { lr, momentum, weight_decay } => {
                let b1 = y.get(1).ok_or("sgd_momentum has two outputs")?;
                let (mut args, lr) = optimizer_args(x, 3, "sgd_momentum", *lr)?;
                args.extend([p(o), p(b1), KArg::I64(n)]);
                args.extend(lr);
                args.extend([KArg::F64(*momentum), KArg::F64(*weight_decay)]);
                self.launch(&format!("sgd_momentum_{}{t}", lr_tag(x, 3)), n as u64, &args)
            }
            Adam { lr, beta1, beta2, eps, weight_decay, decoupled } => {
                let (m1, v1) = match y {
                    [_, m1, v1] => (m1, v1),
                    _ => return Err("adam has three outputs".into()),
                };
                let (mut args, lr) = optimizer_args(x, 5, "adam", *lr)?;
                args.extend([p(o), p(m1), p(v1), KArg::I64(n)]);
                args.extend(lr);
                args.extend([
                    KArg::F64(*beta1),
                    KArg::F64(*beta2),
                    KArg::F64(*eps),
                    KArg::F64(*weight_decay),
                    KArg::I32(i32::from(*decoupled)),
                ]);
                self.launch(&format!("adam_{}{t}_{}", lr_tag(x, 5), sfx(x[4].ty.dtype)), n as u64, &args)
            }
            LrSchedule { lr, warmup, total, min_lr } => {
                arity(1)?;
                let args = [p(x[0]), p(o), KArg::F64(*lr), KArg::U32(*warmup), KArg::U32(*total), KArg::F64(*min_lr)];
                let name = format!("lr_schedule_{}", sfx(x[0].ty.dtype));
                self.gpu.launch(&name, Launch::linear(1, 32), &args).map_err(|e| e.to_string())
            }
            Reshape { .. } | Transpose { .. } | BroadcastTo { .. } | Embedding | EmbeddingGrad { .. } => {
                self.layout(op, x, o)
            }
            LayerNorm { .. }
            | LayerNormGrad
            | Softmax { .. }
            | SoftmaxGrad { .. }
            | LogSoftmax { .. }
            | LogSoftmaxGrad { .. } => self.norm(op, x, y),
            Dropout { p: keep_p, seed } => {
                arity(1)?;
                let mask = y.get(1).ok_or("dropout has two outputs")?;
                // The CPU's mask seed (cpu::elementwise::dropout_mask), mixed on the device.
                let step = self.device_step(ctx.step).map_err(|e| e.to_string())?;
                let args = [
                    p(x[0]),
                    p(o),
                    p(mask),
                    KArg::I64(n),
                    KArg::U64(ctx.seed),
                    KArg::U64(*seed),
                    KArg::Ptr(&step, 0),
                    KArg::F64(*keep_p),
                ];
                self.launch(&format!("dropout_step_{t}"), n as u64, &args)
            }
            DropoutGrad { p: keep_p } => {
                arity(2)?;
                let args = [p(x[0]), p(x[1]), p(o), KArg::I64(n), KArg::F64(*keep_p)];
                self.launch(&format!("dropout_grad_{t}"), n as u64, &args)
            }
            ClipCoef { max_norm } => {
                arity(1)?;
                need_f32(x[0], "norm")?;
                self.gpu
                    .launch("clip_coef_f32", Launch::linear(1, 32), &[p(x[0]), p(o), KArg::F64(*max_norm)])
                    .map_err(|e| e.to_string())
            }
            Conv2d(_)
            | Conv2dGradInput { .. }
            | Conv2dGradWeight { .. }
            | MaxPool2d(_)
            | MaxPool2dGrad(_)
            | AvgPool2d { .. }
            | AvgPool2dGrad { .. }
            | BatchNorm { .. }
            | BatchNormGrad { .. }
            | FrozenBatchNorm { .. }
            | FrozenBatchNormGrad { .. }
            | Lrn { .. }
            | LrnGrad { .. }
            | Flatten { .. }
            | Concat { .. }
            | Split { .. } => self.cnn(op, x, y),
            Input { .. } | Param { .. } | State { .. } => {
                Err(format!("`{}` values are fed to the step, not computed", op.name()))
            }
        }
    }

    /// A loss: the `_partial` kernel (its arguments `pre`, then the
    /// scratch) writes one f64 per block, then `loss_mean` divides their sum
    /// by `count` in one block.
    fn two_pass(
        &mut self,
        partial: &str,
        work: u64,
        out: &CudaBuffer<G::Mem>,
        count: f64,
        pre: &[KArg<'_, G::Mem>],
    ) -> Result<(), String> {
        let b = launch::partial_blocks(work);
        let part = self.scratch(b as usize * 8, TensorType::new(DType::F32, vec![])).map_err(|e| e.to_string())?;
        let mut args = pre.to_vec();
        args.push(p(&part));
        self.gpu.launch(partial, Launch::linear(b, THREADS), &args).map_err(|e| e.to_string())?;
        let name = format!("loss_mean_{}", sfx(out.ty.dtype));
        let args = [p(&part), KArg::I64(i64::from(b)), KArg::F64(count), p(out)];
        self.gpu.launch(&name, Launch::linear(1, THREADS), &args).map_err(|e| e.to_string())
    }
}

fn need_f32<M>(b: &CudaBuffer<M>, what: &str) -> Result<(), String> {
    match b.ty.dtype {
        DType::F32 => Ok(()),
        d => Err(format!("`{what}` must be f32 on the CUDA backend, found {}", d.name())),
    }
}
