//! One CUDA graph per step, the backend's side: the pinned allocations
//! that make a step's addresses repeat, the device's copy of the step
//! number, and the end of a recorded step (replay, capture or issue, as
//! `cuda::graph::decide` says).

use std::collections::VecDeque;
use std::rc::Rc;

use crate::exec::backend::StepRun;
use crate::exec::ExecError;

use super::super::gpu::Gpu;
use super::super::graph::{self, Verdict, Work};
use super::{gpu_err, CudaBackend};

/// The allocations of recorded steps, by request: the i-th buffer a step
/// asks for outside the arena (new state, scratch, kept values) is the one
/// the i-th request got before, when free, so that a step's addresses
/// repeat and its work can be replayed as a graph. The new state is still
/// held (as the state) while the next step makes its own: that request
/// then gets a second allocation, and the two alternate.
pub(super) struct Pinned<M> {
    /// Per request index: (bytes, allocation); free when only this holds it.
    pub slots: Vec<Vec<(usize, Rc<M>)>>,
    /// The next request's index, while a step is recorded.
    pub next: Option<usize>,
}

/// The graphs of a backend, and the last steps' work to find repeats in.
pub(super) struct Graphs<Gr> {
    pub captured: Vec<(Vec<Work>, Gr)>,
    pub recent: VecDeque<Vec<Work>>,
}

impl<M> Pinned<M> {
    pub fn new() -> Pinned<M> {
        Pinned { slots: Vec::new(), next: None }
    }
}

impl<Gr> Graphs<Gr> {
    pub fn new() -> Graphs<Gr> {
        Graphs { captured: Vec::new(), recent: VecDeque::new() }
    }
}

impl<G: Gpu> CudaBackend<G> {
    /// How many launches and GEMMs the last recorded step issued.
    pub fn last_step_work(&self) -> Option<usize> {
        self.graphs.recent.back().map(Vec::len)
    }

    /// The device's copy of step number `step`, written when it changes.
    pub(super) fn device_step(&mut self, step: u64) -> Result<Rc<G::Mem>, ExecError> {
        let m = match &self.step_mem {
            Some((m, at)) if *at == step => return Ok(m.clone()),
            Some((m, _)) => m.clone(),
            None => {
                self.pool.borrow_mut().allocs += 1;
                self.allocated += 8;
                Rc::new(self.gpu.alloc(8).map_err(gpu_err)?)
            }
        };
        self.gpu.write(&m, 0, &step.to_le_bytes()).map_err(gpu_err)?;
        self.step_mem = Some((m.clone(), step));
        Ok(m)
    }

    /// See [`Backend::begin_step`].
    pub(super) fn start_step(&mut self, step: u64, record: bool) -> bool {
        self.multi.in_session = true;
        self.multi.forget_pending();
        // Before recording: a write in the middle of a step's work would make it unreplayable.
        // On failure the step runs unrecorded, and meets the error where it needs the step.
        if !record || (self.step_mem.is_some() && self.device_step(step).is_err()) {
            return false;
        }
        self.pinned.next = Some(0);
        self.gpu.start_recording();
        true
    }

    /// See [`Backend::end_step`]: the recorded work replayed, captured or
    /// issued as [`graph::decide`] says.
    pub(super) fn finish_step(&mut self) -> Result<StepRun, ExecError> {
        let flushed = self.flush_groups();
        self.pinned.next = None;
        let rec = self.gpu.stop_recording();
        let verdict = {
            let captured: Vec<&[Work]> = self.graphs.captured.iter().map(|(w, _)| w.as_slice()).collect();
            let recent: Vec<&[Work]> = self.graphs.recent.iter().map(Vec::as_slice).collect();
            graph::decide(&rec, &captured, &recent)
        };
        let run = match verdict {
            Verdict::Replay(i) => {
                self.gpu.replay(&self.graphs.captured[i].1).map_err(gpu_err)?;
                StepRun::Replayed
            }
            Verdict::Capture => {
                let g = self.gpu.capture(&rec.work).map_err(gpu_err)?;
                self.gpu.replay(&g).map_err(gpu_err)?;
                self.graphs.captured.push((rec.work.clone(), g));
                StepRun::Captured
            }
            Verdict::Direct(why) => {
                self.gpu.run_work(&rec.work).map_err(gpu_err)?;
                StepRun::Direct(why)
            }
        };
        self.graphs.recent.push_back(rec.whole());
        if self.graphs.recent.len() > 2 {
            self.graphs.recent.pop_front();
        }
        flushed?;
        Ok(run)
    }
}
