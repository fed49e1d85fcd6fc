//! The interface a device implements.

use crate::ir::op::Op;
use crate::ir::types::TensorType;

use super::rng;
use super::ExecError;
use crate::tensor::Tensor;

/// What a kernel knows about the node it runs for.
#[derive(Clone, Copy, Debug)]
pub struct OpCtx<'a> {
    /// The node's name, for errors.
    pub node: &'a str,
    /// The step number (0-based), mixed into dropout masks.
    pub step: u64,
    /// A per-node seed: the graph seed mixed with the hash of the node's
    /// name (see [`node_seed`]), so two dropout nodes with equal `seed`
    /// attributes still draw different masks.
    pub seed: u64,
}

/// The per-node seed of [`OpCtx`]: `combine(graph_seed, fnv1a(node name))`.
pub fn node_seed(graph_seed: u64, node: &str) -> u64 {
    rng::combine(graph_seed, rng::fnv1a(node))
}

/// How a step ran on a backend that can replay steps as graphs (see
/// [`Backend::begin_step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepRun {
    /// Issued launch by launch, and why it was not a graph.
    Direct(String),
    /// Captured into a graph (its work repeated a recent step's), then run.
    Captured,
    /// Replayed from a graph captured before.
    Replayed,
}

/// A device that runs ops on its own buffers.
///
/// The executor moves data to the device only at the edges of a step
/// (`upload` of params, state and batch; `download` of what the step
/// returns); between ops, values stay in `Buffer`s, so a CUDA backend needs
/// no host round trip per op.
pub trait Backend {
    /// A tensor on the device (its type is known to the executor).
    type Buffer;

    /// A short name for messages ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// Device memory in use in bytes, where the device can say (a GPU).
    fn memory_in_use(&self) -> Option<u64> {
        None
    }

    /// Sees the whole plan once, before any step: a backend checks that it
    /// can run every op and makes what it needs per node (compiled kernels,
    /// GEMM descriptors). The default accepts everything.
    fn prepare(&mut self, plan: &super::run::Plan) -> Result<(), ExecError> {
        let _ = plan;
        Ok(())
    }

    /// Which of `groups` (the plan's fusion groups, [`super::fuse`]) the
    /// backend runs as one launch each, by index; asked once, before
    /// [`Backend::prepare`], which then sees them claimed. A claimed group
    /// runs through [`Backend::run_group`] where [`super::fuse::Group::at`]
    /// stands, and its hidden values are never made (a backend that claims
    /// a cross-entropy pair runs the seed before the loss exists: it is
    /// then given no input); per-node [`Backend::run`] remains
    /// the fallback (a step that fetches a hidden value runs the group's
    /// steps one by one). The default claims nothing.
    fn claim(&mut self, plan: &super::run::Plan, groups: &[super::fuse::Group]) -> Result<Vec<usize>, ExecError> {
        let _ = (plan, groups);
        Ok(Vec::new())
    }

    /// Runs claimed group `group` (its index in [`super::run::Plan::claimed`])
    /// on its inputs (in [`super::fuse::Group::inputs`]' order) and returns
    /// its outputs ([`super::fuse::Group::outputs`]), of types `out_types`.
    /// `ctx` is that of the step where it runs ([`super::fuse::Group::at`]).
    fn run_group(
        &mut self,
        group: usize,
        ctx: &OpCtx<'_>,
        inputs: &[&Self::Buffer],
        out_types: &[TensorType],
    ) -> Result<Vec<Self::Buffer>, ExecError> {
        let _ = (inputs, out_types);
        Err(ExecError::Graph(format!("`{}`: the backend claimed no fusion group {group}", ctx.node)))
    }

    /// Copies a host tensor to the device.
    fn upload(&mut self, t: &Tensor) -> Result<Self::Buffer, ExecError>;

    /// Copies a device buffer back to the host.
    fn download(&mut self, b: &Self::Buffer) -> Result<Tensor, ExecError>;

    /// A second buffer with the same contents (a session's state update
    /// that is itself another state value). The default goes through the host.
    fn duplicate(&mut self, b: &Self::Buffer) -> Result<Self::Buffer, ExecError> {
        let t = self.download(b)?;
        self.upload(&t)
    }

    /// Takes a buffer the executor holds past its planned life (a value
    /// fetched at the end of the step): a backend that places values in a
    /// planned arena moves it out of there. The default keeps it as it is.
    fn keep(&mut self, b: Self::Buffer) -> Result<Self::Buffer, ExecError> {
        Ok(b)
    }

    /// Copies a host tensor into `b`, which holds its type, in place where
    /// the backend can (a session's batch keeps its address from step to
    /// step). The default makes a new buffer.
    fn upload_into(&mut self, t: &Tensor, b: &mut Self::Buffer) -> Result<(), ExecError> {
        *b = self.upload(t)?;
        Ok(())
    }

    /// Starts step number `step` of a session (its fed values resident to
    /// the end of the step). With `record`, the backend may capture the
    /// step's device work and replay it as a graph: until
    /// [`Backend::end_step`] it records the work rather than issuing it.
    /// False (the default) when it does not record; `end_step` is then
    /// not called.
    fn begin_step(&mut self, step: u64, record: bool) -> bool {
        let _ = (step, record);
        false
    }

    /// Ends the step [`Backend::begin_step`] started and issues its work:
    /// from a graph when an identical step was captured.
    fn end_step(&mut self) -> Result<StepRun, ExecError> {
        Ok(StepRun::Direct("the backend has no graphs".into()))
    }

    /// Runs `op` on `inputs` (in the op's input order, see
    /// [`crate::ir::infer::input_names`]) and returns one buffer per output,
    /// of the types `out_types` (the node's inferred output types).
    fn run(
        &mut self,
        op: &Op,
        ctx: &OpCtx<'_>,
        inputs: &[&Self::Buffer],
        out_types: &[TensorType],
    ) -> Result<Vec<Self::Buffer>, ExecError>;
}
