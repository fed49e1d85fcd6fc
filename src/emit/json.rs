//! Graph -> the JSON file format; `parse(emit(g)) == g`.

use crate::attrs::op_to_raw;
use crate::format::{RawGraph, RawNode, RawState, RawTensor, FORMAT_VERSION};
use crate::graph::{default_output_names, Graph};
use crate::op::{Op, Role};

fn ishape(t: &crate::TensorType) -> Vec<i64> {
    t.shape.dims().iter().map(|&d| d as i64).collect()
}

/// The file's serde form of a graph. Nodes go to the section of their role,
/// in topological order. A graph with a cycle is written in index order.
pub fn to_raw(g: &Graph) -> RawGraph {
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    let mut raw = RawGraph {
        format: FORMAT_VERSION.to_string(),
        name: g.name.clone(),
        loss: g.loss.map(|v| g.value_name(v).to_string()).unwrap_or_default(),
        optimizer: g.optimizer.clone(),
        weights: g.weights.clone(),
        ..RawGraph::default()
    };
    let mut backward = Vec::new();
    for id in order {
        let n = g.node(id);
        match &n.op {
            Op::Input { ty } => raw.inputs.push(RawTensor { name: n.name.clone(), shape: ishape(ty), dtype: ty.dtype }),
            Op::Param { ty, init } | Op::State { ty, init } => {
                let s = RawState { name: n.name.clone(), shape: ishape(ty), dtype: ty.dtype, init: Some(init.clone()) };
                if matches!(n.op, Op::Param { .. }) {
                    raw.params.push(s)
                } else {
                    raw.state.push(s)
                }
            }
            op => {
                let names: Vec<String> = n.outputs.iter().map(|o| o.name.clone()).collect();
                let mut rn = RawNode {
                    name: n.name.clone(),
                    op: op.kind(),
                    inputs: g.inputs(id).into_iter().map(|v| g.value_name(v).to_string()).collect(),
                    outputs: (names != default_output_names(&n.name, names.len())).then_some(names),
                    role: (n.role == Role::Scaler).then_some(Role::Scaler),
                    precision: n.precision,
                    ..RawNode::default()
                };
                op_to_raw(op, &mut rn);
                match n.role {
                    Role::Forward => raw.forward.push(Box::new(rn)),
                    Role::Backward => backward.push(Box::new(rn)),
                    Role::Optimizer | Role::Scaler => raw.update.push(Box::new(rn)),
                }
            }
        }
    }
    if !backward.is_empty() || !g.gradients.is_empty() {
        raw.backward = Some(backward);
    }
    let named = |pairs: &[(crate::NodeId, crate::ValueId)]| {
        pairs.iter().map(|&(n, v)| (g.node(n).name.clone(), g.value_name(v).to_string())).collect()
    };
    raw.gradients = named(&g.gradients);
    raw.updates = named(&g.updates);
    raw.outputs = g.outputs.iter().map(|&v| g.value_name(v).to_string()).collect();
    raw
}

/// Pretty JSON with one node per line, so a diff of two graphs reads like a
/// diff of code.
pub fn to_string(g: &Graph) -> String {
    let raw = to_raw(g);
    let v = serde_json::to_value(&raw).expect("a graph serialises");
    let mut out = String::with_capacity(128 * g.node_count());
    write_compact_items(&v, &mut out);
    out.push('\n');
    out
}

/// Top-level fields on their own lines, array items one per line.
fn write_compact_items(v: &serde_json::Value, out: &mut String) {
    let serde_json::Value::Object(map) = v else {
        out.push_str(&v.to_string());
        return;
    };
    out.push_str("{\n");
    let n = map.len();
    for (i, (k, val)) in map.iter().enumerate() {
        out.push_str("  ");
        out.push_str(&serde_json::Value::String(k.clone()).to_string());
        out.push_str(": ");
        match val {
            serde_json::Value::Array(items) if !items.is_empty() => {
                out.push_str("[\n");
                for (j, item) in items.iter().enumerate() {
                    out.push_str("    ");
                    out.push_str(&item.to_string());
                    if j + 1 < items.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str("  ]");
            }
            serde_json::Value::Object(m) if m.len() > 1 => {
                out.push_str("{\n");
                for (j, (k2, v2)) in m.iter().enumerate() {
                    out.push_str("    ");
                    out.push_str(&serde_json::Value::String(k2.clone()).to_string());
                    out.push_str(": ");
                    out.push_str(&v2.to_string());
                    if j + 1 < m.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str("  }");
            }
            other => out.push_str(&other.to_string()),
        }
        if i + 1 < n {
            out.push(',');
        }
        out.push('\n');
    }
    out.push('}');
}
