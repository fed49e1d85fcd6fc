//! The forward part of a graph: what `--emit onnx` exports, as a graph of
//! its own (no loss, no backward, no optimizer), so that an inference model
//! is lowered as one and not by the neighbours its training graph had.

use rustc_hash::FxHashSet;

use super::export::ExportError;
use crate::ir::graph::{DenseSet, Graph, NodeId, ValueId};
use crate::ir::op::Role;

/// The exported outputs (the graph's `outputs` that forward nodes compute),
/// the nodes they depend on in topological order, and the values those read.
pub(super) struct Reach {
    pub outputs: Vec<ValueId>,
    pub nodes: Vec<NodeId>,
    pub needed: DenseSet<ValueId>,
}

pub(super) fn reach(g: &Graph) -> Result<Reach, ExportError> {
    let order = g.topo_order().map_err(|_| ExportError::Graph("the graph has a cycle".into()))?;
    let mut outputs: Vec<ValueId> = Vec::new();
    for &v in &g.outputs {
        if computed_forward(g, v) && !outputs.contains(&v) {
            outputs.push(v);
        }
    }
    if outputs.is_empty() {
        outputs.extend(default_output(g));
    }
    if outputs.is_empty() {
        return Err(ExportError::NoOutputs);
    }
    let mut reached = vec![false; g.index_bound()];
    let mut needed = DenseSet::new(g.index_bound());
    needed.extend(outputs.iter().copied());
    let mut stack: Vec<NodeId> = outputs.iter().map(|v| v.node).collect();
    while let Some(n) = stack.pop() {
        if std::mem::replace(&mut reached[n.index()], true) {
            continue;
        }
        for v in g.inputs(n) {
            needed.insert(v);
            stack.push(v.node);
        }
    }
    let nodes: Vec<NodeId> = order.into_iter().filter(|n| reached[n.index()]).collect();
    Ok(Reach { outputs, nodes, needed })
}

/// What a graph that lists no forward outputs exports: its loss's first
/// input (the logits, or the prediction of a regression), when a forward
/// node computes it.
pub fn default_output(g: &Graph) -> Option<ValueId> {
    if g.outputs.iter().any(|&v| computed_forward(g, v)) {
        return None;
    }
    let v = *g.inputs(g.loss?.node).first()?;
    computed_forward(g, v).then_some(v)
}

fn computed_forward(g: &Graph, v: ValueId) -> bool {
    let node = g.node(v.node);
    node.role() == Role::Forward && !node.op().is_source()
}

/// `g` cut down to what the export writes: the nodes the exported outputs
/// depend on, with no loss, gradients or state updates, and those outputs.
pub fn forward_part(g: &Graph) -> Result<Graph, ExportError> {
    let Reach { outputs, nodes, .. } = reach(g)?;
    forward_part_of(g, &outputs, &nodes)
}

pub(super) fn forward_part_of(g: &Graph, outputs: &[ValueId], nodes: &[NodeId]) -> Result<Graph, ExportError> {
    let mut f = g.clone();
    let keep: FxHashSet<NodeId> = nodes.iter().copied().collect();
    let order = f.topo_order().map_err(|_| ExportError::Graph("the graph has a cycle".into()))?;
    for &n in order.iter().rev() {
        if !keep.contains(&n) {
            f.remove_node(n).map_err(|e| ExportError::Graph(e.to_string()))?;
        }
    }
    f.loss = None;
    f.gradients.clear();
    f.updates.clear();
    f.optimizer = None;
    f.outputs = outputs.to_vec();
    Ok(f)
}

/// Lowers `g` for `--emit onnx`: its forward part alone, as an inference
/// graph, so that the export is what `mpc lower model.onnx` makes of the
/// same model, not painted by the backward ops beside it. A graph lowered
/// already is taken as it was lowered.
pub fn lower_forward(g: &Graph, opts: &crate::passes::Options) -> Result<(Graph, crate::passes::Lowered), String> {
    if crate::passes::lowered_mark(g).is_some() {
        let mut g = g.clone();
        let lowered = crate::passes::lower(&mut g, opts).map_err(|e| e.to_string())?;
        return Ok((g, lowered));
    }
    let mut f = forward_part(g).map_err(|e| e.to_string())?;
    let lowered = crate::passes::lower_inference(&mut f, opts).map_err(|e| e.to_string())?;
    Ok((f, lowered))
}
