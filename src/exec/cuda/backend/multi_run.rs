//! Running the groups `groups::find` forms: members note their buffers,
//! the last launches the multi-tensor kernel over all of them (or, for an
//! unscale group, `found_inf` launches the fused unscale and check), with
//! the tables in device buffers made once when the session opens.
//!
//! A table holds addresses, and the state a step reads alternates between
//! two sets of buffers, so each launch has two table buffers; a table is
//! written only when neither holds its contents (the first steps), so a
//! steady step writes nothing and stays replayable as a graph.

use std::collections::HashMap;
use std::rc::Rc;

use crate::exec::run::Plan;
use crate::exec::ExecError;
use crate::ir::op::Op;
use crate::ir::types::DType;
use crate::tensor::numel;

use super::super::gpu::{Gpu, KArg, Launch};
use super::super::launch::THREADS;
use super::super::multi::{bytes_of, pack, Member, CHUNK};
use super::groups::{self, Kind};
use super::{gpu_err, sfx, CudaBackend, CudaBuffer, Storage};

/// One group while the session runs.
pub(super) struct Group<M> {
    kind: Kind,
    /// Per member, per input: whether it must be an arena buffer (it does
    /// not outlive the step; `groups::find` checked that its planned bytes
    /// last to the launch).
    arena_in: Vec<Vec<bool>>,
    /// The first noted member's op (the group's attributes) and the
    /// addresses of the inputs all members share (step, lr; the scale).
    op: Option<Op>,
    shared: Vec<u64>,
    /// The element types of the launch: the param's (or gradient's) and the step counter's.
    types: (DType, Option<DType>),
    /// The members noted this step, with their gradient type (unscale).
    pending: Vec<(Member, DType)>,
    /// Whether a member of this step ran apart (the check then runs per tensor).
    apart: bool,
    /// Table buffers and what each holds; the next to overwrite.
    tables: Vec<(Rc<M>, Option<Vec<u64>>)>,
    next_table: usize,
}

/// The groups of a session.
pub(super) struct Multi<M> {
    pub enabled: bool,
    /// Whether a session drives the backend (see `Backend::begin_step`).
    pub in_session: bool,
    groups: Vec<Group<M>>,
    member_of: HashMap<String, (usize, usize)>,
    /// Where the flag of unscales launched before their `found_inf` goes.
    sink: Option<Rc<M>>,
    pub table_bytes: u64,
}

impl<M> Multi<M> {
    pub fn new() -> Multi<M> {
        Multi {
            enabled: true,
            in_session: false,
            groups: Vec::new(),
            member_of: HashMap::new(),
            sink: None,
            table_bytes: 0,
        }
    }

    /// The group and position of node `node`, when it is a member.
    pub fn member_of(&self, node: &str) -> Option<(usize, usize)> {
        self.member_of.get(node).copied()
    }

    /// Drops what a failed step left noted.
    pub fn forget_pending(&mut self) {
        for g in &mut self.groups {
            g.pending.clear();
            g.apart = false;
        }
    }
}

impl<G: Gpu> CudaBackend<G> {
    /// Finds the groups of `plan` (arena offsets `placed`) and makes their tables' buffers.
    pub(super) fn prepare_groups(
        &mut self,
        plan: &Plan,
        placed: &HashMap<usize, (usize, usize)>,
    ) -> Result<(), ExecError> {
        let (enabled, in_session) = (self.multi.enabled, self.multi.in_session);
        self.multi = Multi::new();
        (self.multi.enabled, self.multi.in_session) = (enabled, in_session);
        if !enabled {
            return Ok(());
        }
        for found in groups::find(plan, placed) {
            let g = self.multi.groups.len();
            let members: Vec<usize> = match found.kind {
                Kind::Unscale => found.steps[..found.steps.len() - 1].to_vec(),
                _ => found.steps.clone(),
            };
            // The largest tables: every member, with its real size and its
            // words after the count (pointers, then weight decay).
            let words = match found.kind {
                Kind::Unscale => 2,
                Kind::Adam => 8,
                Kind::Sgd => 4,
                Kind::SgdMomentum => 6,
                Kind::Select => 3,
            };
            let sized = |i: &usize| -> Result<Member, ExecError> {
                let ty = plan.steps[*i]
                    .out_types
                    .first()
                    .ok_or_else(|| ExecError::Graph("a member without outputs".into()))?;
                Ok(Member { n: numel(&ty.shape)? as u64, ptrs: vec![0; words], extra: vec![] })
            };
            let full =
                pack(&members.iter().map(sized).collect::<Result<Vec<_>, _>>()?, CHUNK).map_err(ExecError::Tensor)?;
            let bytes = 8 * (full.tensors.len() + full.chunks.len());
            let first = &plan.steps[members[0]];
            let grad_types: Vec<DType> = {
                let d: Vec<DType> = members
                    .iter()
                    .map(|&i| plan.steps[i].inputs[0])
                    .map(|v| input_type(plan, v))
                    .collect::<Result<_, _>>()?;
                unique(d)
            };
            let launches = if found.kind == Kind::Unscale { grad_types.len() } else { 1 };
            let mut tables = Vec::new();
            for _ in 0..2 * launches {
                let m = self.gpu.alloc(bytes.max(1)).map_err(gpu_err)?;
                self.allocated += bytes.max(1) as u64;
                self.multi.table_bytes += bytes.max(1) as u64;
                self.pool.borrow_mut().allocs += 1;
                tables.push((Rc::new(m), None));
            }
            if found.kind == Kind::Unscale && self.multi.sink.is_none() {
                self.multi.sink = Some(Rc::new(self.gpu.alloc(4).map_err(gpu_err)?));
                self.allocated += 4;
                self.multi.table_bytes += 4;
                self.pool.borrow_mut().allocs += 1;
            }
            let arena_in = found
                .steps
                .iter()
                .map(|&i| plan.steps[i].inputs.iter().map(|&v| !groups::outlives_the_step(plan, v)).collect())
                .collect();
            let step_type = match found.kind {
                Kind::Adam => Some(input_type(plan, first.inputs[4])?),
                _ => None,
            };
            let t = match found.kind {
                Kind::Unscale => grad_types[0],
                _ => first.out_types[0].dtype,
            };
            for (k, &i) in found.steps.iter().enumerate() {
                self.multi.member_of.insert(plan.steps[i].name.clone(), (g, k));
            }
            self.multi.groups.push(Group {
                kind: found.kind,
                arena_in,
                op: None,
                shared: Vec::new(),
                types: (t, step_type),
                pending: Vec::new(),
                apart: false,
                tables,
                next_table: 0,
            });
        }
        Ok(())
    }

    fn addr(&self, b: &CudaBuffer<G::Mem>) -> Result<u64, String> {
        let (m, off) = b.at();
        self.gpu.address(m, off).map_err(|e| e.to_string())
    }

    /// Member `k` of group `g` runs: notes its buffers, and launches when
    /// it is the last. False when the member must run apart (its kernel as
    /// ever), after the members noted before it have launched.
    pub(super) fn note(
        &mut self,
        g: usize,
        k: usize,
        op: &Op,
        x: &[&CudaBuffer<G::Mem>],
        y: &[CudaBuffer<G::Mem>],
    ) -> Result<bool, String> {
        let grp = &self.multi.groups[g];
        let last = grp.arena_in.len() - 1;
        let kind = grp.kind;
        let placed = grp.arena_in[k].iter().zip(x).all(|(&must, b)| !must || matches!(b.storage, Storage::Arena(..)));
        if kind == Kind::Unscale && k == last {
            // found_inf: every unscale noted launches now, fused with the check.
            if self.multi.groups[g].apart || !placed {
                self.flush_group(g)?;
                self.multi.groups[g].apart = false;
                return Ok(false);
            }
            let flag = y.first().ok_or("found_inf has an output")?;
            let (m, off) = flag.at();
            self.gpu
                .launch("constant_f32", Launch::linear(1, THREADS), &[KArg::Ptr(m, off), KArg::I64(1), KArg::F64(0.0)])
                .map_err(|e| e.to_string())?;
            let at = self.addr(flag)?;
            self.launch_unscale(g, at)?;
            return Ok(true);
        }
        if !placed {
            self.flush_group(g)?;
            self.multi.groups[g].apart = true;
            return Ok(false);
        }
        let (ptrs, extra, shared, n) = match (kind, op) {
            (Kind::Unscale, _) => {
                let (gr, o) = (x.first().ok_or("unscale takes a gradient")?, y.first().ok_or("unscale has an output")?);
                let scale = x.get(1).ok_or("unscale takes a scale")?;
                (vec![self.addr(gr)?, self.addr(o)?], vec![], vec![self.addr(scale)?], o.bytes / 4)
            }
            (
                _,
                Op::Adam { weight_decay, .. } | Op::Sgd { weight_decay, .. } | Op::SgdMomentum { weight_decay, .. },
            ) => {
                let base = match kind {
                    Kind::Adam => 4,
                    Kind::Sgd => 2,
                    _ => 3,
                };
                let mut ptrs = Vec::new();
                for b in x.iter().take(base).copied().chain(y.iter()) {
                    ptrs.push(self.addr(b)?);
                }
                let shared = x.iter().skip(base).map(|b| self.addr(b)).collect::<Result<Vec<_>, _>>()?;
                let o = y.first().ok_or("an optimizer has outputs")?;
                (ptrs, vec![weight_decay.to_bits()], shared, o.bytes / o.ty.dtype.size_bytes().max(1))
            }
            (Kind::Select, Op::Select) => {
                let [flag, on_inf, otherwise] = x else { return Err("select takes three inputs".into()) };
                let o = y.first().ok_or("select has an output")?;
                let ptrs = vec![self.addr(on_inf)?, self.addr(otherwise)?, self.addr(o)?];
                (ptrs, vec![], vec![self.addr(flag)?], o.bytes / o.ty.dtype.size_bytes().max(1))
            }
            _ => return Err(format!("`{}` is not an optimizer", op.name())),
        };
        let grad_type = x.first().map_or(DType::F32, |b| b.ty.dtype);
        let grp = &mut self.multi.groups[g];
        // The first member of a launch: the shared inputs are this step's
        // (the scale and the step counter are state, which alternates).
        if grp.pending.is_empty() {
            grp.op = Some(op.clone());
            grp.shared = shared;
        }
        grp.pending.push((Member { n: n as u64, ptrs, extra }, grad_type));
        if kind != Kind::Unscale && k == last {
            self.flush_group(g)?;
        }
        Ok(true)
    }

    /// Launches what every group has noted (before anything else reads or
    /// writes the device).
    pub(super) fn flush_groups(&mut self) -> Result<(), ExecError> {
        for g in 0..self.multi.groups.len() {
            if !self.multi.groups[g].pending.is_empty() {
                self.flush_group(g).map_err(ExecError::Tensor)?;
            }
        }
        Ok(())
    }

    /// Launches group `g`'s noted members; unscales before their
    /// `found_inf` send their flag to the sink (the check then runs apart).
    fn flush_group(&mut self, g: usize) -> Result<(), String> {
        if self.multi.groups[g].pending.is_empty() {
            return Ok(());
        }
        match self.multi.groups[g].kind {
            Kind::Unscale => {
                let sink = self.multi.sink.clone().ok_or("an unscale group without its sink")?;
                let at = self.gpu.address(&sink, 0).map_err(|e| e.to_string())?;
                self.launch_unscale(g, at)?;
                self.multi.groups[g].apart = true;
                Ok(())
            }
            _ => self.launch_optimizer(g),
        }
    }

    /// The fused unscale and check of the noted unscales, one launch per gradient type, into `flag`.
    fn launch_unscale(&mut self, g: usize, flag: u64) -> Result<(), String> {
        let pending = std::mem::take(&mut self.multi.groups[g].pending);
        let scale = *self.multi.groups[g].shared.first().ok_or("no scale noted")?;
        for (slot, d) in unique(pending.iter().map(|(_, d)| *d).collect()).into_iter().enumerate() {
            let members: Vec<Member> = pending.iter().filter(|(_, t)| *t == d).map(|(m, _)| m.clone()).collect();
            let tables = pack(&members, CHUNK)?;
            if tables.blocks == 0 {
                continue;
            }
            let (tensors, chunks) = self.table(g, slot, &tables.tensors, &tables.chunks)?;
            let args =
                [KArg::Addr(tensors), KArg::Addr(chunks), KArg::I64(CHUNK as i64), KArg::Addr(scale), KArg::Addr(flag)];
            let name = format!("multi_unscale_found_inf_{}", sfx(d));
            self.gpu.launch(&name, Launch::linear(tables.blocks, THREADS), &args).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The noted optimizer members, one launch.
    fn launch_optimizer(&mut self, g: usize) -> Result<(), String> {
        let grp = &mut self.multi.groups[g];
        let members: Vec<Member> = std::mem::take(&mut grp.pending).into_iter().map(|(m, _)| m).collect();
        let op = grp.op.clone().ok_or("no optimizer noted")?;
        let shared = grp.shared.clone();
        let (t, s) = grp.types;
        let tables = pack(&members, CHUNK)?;
        if tables.blocks == 0 {
            return Ok(());
        }
        let (tensors, chunks) = self.table(g, 0, &tables.tensors, &tables.chunks)?;
        let mut args = vec![KArg::Addr(tensors), KArg::Addr(chunks), KArg::I64(CHUNK as i64)];
        let lr_arg = |lr: f64, at: Option<&u64>| at.map_or(KArg::F64(lr), |&a| KArg::Addr(a));
        let name = match op {
            Op::Adam { lr, beta1, beta2, eps, decoupled, .. } => {
                let step = *shared.first().ok_or("adam without its step")?;
                args.extend([KArg::Addr(step), lr_arg(lr, shared.get(1))]);
                args.extend([KArg::F64(beta1), KArg::F64(beta2), KArg::F64(eps), KArg::I32(i32::from(decoupled))]);
                let s = s.ok_or("adam without its step type")?;
                format!("multi_adam_{}{}_{}", tag(shared.len() > 1), sfx(t), sfx(s))
            }
            Op::Sgd { lr, .. } => {
                args.push(lr_arg(lr, shared.first()));
                format!("multi_sgd_{}{}", tag(!shared.is_empty()), sfx(t))
            }
            Op::SgdMomentum { lr, momentum, .. } => {
                args.extend([lr_arg(lr, shared.first()), KArg::F64(momentum)]);
                format!("multi_sgd_momentum_{}{}", tag(!shared.is_empty()), sfx(t))
            }
            Op::Select => {
                args.push(KArg::Addr(*shared.first().ok_or("select without its flag")?));
                format!("multi_select_{}", sfx(t))
            }
            _ => return Err(format!("`{}` is not an optimizer", op.name())),
        };
        self.gpu.launch(&name, Launch::linear(tables.blocks, THREADS), &args).map_err(|e| e.to_string())
    }

    /// The device addresses of tables with these contents, for launch
    /// `slot` of group `g`: a table buffer that holds them, else the older
    /// of the launch's two, written.
    fn table(&mut self, g: usize, slot: usize, tensors: &[u64], chunks: &[i64]) -> Result<(u64, u64), String> {
        let words: Vec<u64> = tensors.iter().copied().chain(chunks.iter().map(|&c| c as u64)).collect();
        let grp = &mut self.multi.groups[g];
        let pair = 2 * slot..2 * slot + 2;
        let held = pair.clone().find(|&i| grp.tables.get(i).and_then(|t| t.1.as_ref()) == Some(&words));
        let i = match held {
            Some(i) => i,
            None => {
                let i = pair.start + grp.next_table % 2;
                grp.next_table += 1;
                let m = grp.tables.get(i).ok_or("no table buffer for this launch")?.0.clone();
                self.gpu.write(&m, 0, &bytes_of(words.iter().copied())).map_err(|e| e.to_string())?;
                self.multi.groups[g].tables[i].1 = Some(words);
                i
            }
        };
        let m = self.multi.groups[g].tables[i].0.clone();
        let base = self.gpu.address(&m, 0).map_err(|e| e.to_string())?;
        Ok((base, base + 8 * tensors.len() as u64))
    }
}

/// The distinct types of `d`, in their first order.
fn unique(d: Vec<DType>) -> Vec<DType> {
    let mut out: Vec<DType> = Vec::new();
    for t in d {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

fn tag(lr_input: bool) -> &'static str {
    if lr_input {
        "lr_"
    } else {
        ""
    }
}

/// The element type of value `v` of `plan`.
fn input_type(plan: &Plan, v: usize) -> Result<DType, ExecError> {
    if let Some(s) = plan.sources.iter().find(|s| s.value == v) {
        return Ok(s.ty.dtype);
    }
    plan.steps
        .iter()
        .find_map(|s| s.outputs.iter().position(|&o| o == v).map(|k| s.out_types[k].dtype))
        .ok_or_else(|| ExecError::Graph(format!("value `{}` has no type", plan.names[v])))
}
