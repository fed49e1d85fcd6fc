//! Reference data for an export: seeded inputs and the outputs mpc's CPU
//! executor computes for them (`--onnx-test-data`), and the values of the
//! params and state it reads.

use super::*;

/// Reference inputs and outputs for an export, in the ONNX test-data layout
/// (`input_K.pb`, `output_K.pb`: `TensorProto`s named and typed as the
/// model's inputs and outputs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TestData {
    pub inputs: Vec<TensorProto>,
    pub outputs: Vec<TensorProto>,
}

/// Runs the exported part of `g` on mpc's CPU reference executor, at
/// inference (every `dropout` keeps everything), on seeded random inputs:
/// floats N(0, 1), ids uniform over the rows of the embedding table they
/// index (else 0 or 1). `model` is `export(g, opts)`, whose input and
/// output names and types the tensors take. This is what the export
/// should compute: onnxruntime's results are compared with it.
pub fn test_data(g: &Graph, opts: &Options, model: &ModelProto) -> Result<TestData, ExportError> {
    use crate::exec::rng::{combine, fnv1a, SplitMix64};
    use crate::exec::{CpuBackend, Executor, RunOptions};
    let Plan { outputs, nodes, .. } = plan(g)?;
    let state = initial_values(g, &nodes, opts, true, true)?;
    // The exported part alone, dropout off.
    let mut f = crate::onnx::forward::forward_part_of(g, &outputs, &nodes)?;
    for &n in &nodes {
        if let &Op::Dropout { seed, .. } = f.node(n).op() {
            f.set_op(n, Op::Dropout { p: 0.0, seed });
        }
    }
    let mut batch = State::new();
    let mut inputs = Vec::new();
    for &n in &nodes {
        let Op::Input { ty } = g.node(n).op() else { continue };
        let name = &g.node(n).name();
        let count = ty.shape.numel().unwrap_or(0) as usize;
        let bound = g
            .users(n)
            .find(|(u, e)| matches!(g.node(*u).op(), Op::Embedding) && e.port == 1)
            .map(|(u, _)| g.ty(g.inputs(u)[0]).shape.0[0])
            .unwrap_or(2);
        let mut rng = SplitMix64::new(combine(opts.seed, fnv1a(name)));
        let v: Vec<f32> = if ty.dtype.is_float() {
            (0..count).map(|_| rng.normal() as f32).collect()
        } else {
            (0..count).map(|_| (rng.next_u64() % bound) as f32).collect()
        };
        let t = Tensor::from_f32(ty.dtype, ty.shape.clone(), &v)?;
        batch.insert(name.to_string(), t);
        inputs.push(name.to_string());
    }
    let run = |e: ExecError| ExportError::Graph(format!("the reference run on the CPU executor: {e}"));
    let mut ex = Executor::new(&f, CpuBackend, opts.seed).map_err(run)?;
    let r = ex.step(&state, &batch, 0, &RunOptions::default()).map_err(run)?;
    let graph = model.graph.as_ref().ok_or_else(|| ExportError::Graph("the model has no graph".into()))?;
    let proto = |t: &Tensor, info: &ValueInfoProto| -> TensorProto {
        let elem = match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TypeValue::TensorType(t)) => t.elem_type.unwrap_or(data_type::FLOAT),
            None => data_type::FLOAT,
        };
        tensor_proto(info.name.as_deref().unwrap_or(""), t, elem, &t.shape().0)
    };
    let mut data = TestData::default();
    for (name, info) in inputs.iter().zip(&graph.input) {
        data.inputs.push(proto(&batch[name], info));
    }
    for (v, info) in outputs.iter().zip(&graph.output) {
        let t = r
            .outputs
            .get(g.value_name(*v))
            .ok_or_else(|| ExportError::Graph(format!("the executor did not return `{}`", g.value_name(*v))))?;
        data.outputs.push(proto(t, info));
    }
    Ok(data)
}

/// The values of the params and state among `nodes`, as `mpc train` starts
/// from them: `init_state_with` on a graph of just those nodes (a value
/// depends only on its name, type, init and the seed).
/// Fills are left out unless `fills` (the executor needs every value; the
/// exporter writes fills as ConstantOfShape).
pub(super) fn initial_values(
    g: &Graph,
    nodes: &[NodeId],
    opts: &Options,
    fills: bool,
    file: bool,
) -> Result<State, ExportError> {
    let mut sources = Graph::new(g.name.clone());
    sources.weights = if file { g.weights.clone() } else { None };
    for &n in nodes {
        let node = g.node(n);
        if matches!(node.op(), Op::Param { .. } | Op::State { .. }) && (fills || fill_value(node.op()).is_none()) {
            sources
                .add_node(node.name(), node.op().clone(), Role::Forward, &[])
                .map_err(|e| ExportError::Graph(e.to_string()))?;
        }
    }
    if sources.node_count() == 0 {
        return Ok(State::new());
    }
    Ok(crate::exec::init::init_state_from(&sources, opts.seed, opts.base_dir.as_deref(), opts.allow_outside_weights)?)
}
