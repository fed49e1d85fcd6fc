//! Graphviz DOT, nodes coloured by the dtype of their first output.

use std::fmt::Write;

use crate::graph::Graph;
use crate::op::Role;
use crate::types::DType;

fn colour(d: DType) -> &'static str {
    match d {
        DType::F32 => "#cfe2ff",
        DType::F16 => "#ffd8a8",
        DType::Bf16 => "#c3f0ca",
        DType::I32 | DType::I64 => "#e9ecef",
        DType::Bool => "#fff3bf",
    }
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            _ => q.push(c),
        }
    }
    q.push('"');
    q
}

pub fn to_string(g: &Graph) -> String {
    let mut s = String::with_capacity(96 * g.node_count());
    let _ = write(g, &mut s);
    s
}

fn write(g: &Graph, s: &mut String) -> std::fmt::Result {
    writeln!(s, "digraph {} {{", quote(&g.name))?;
    writeln!(s, "  node [shape=box, style=\"rounded,filled\", fontname=\"monospace\", fontsize=10];")?;
    writeln!(s, "  edge [fontname=\"monospace\", fontsize=8];")?;
    for id in g.node_ids() {
        let n = g.node(id);
        let ty = n.outputs.iter().map(|o| o.ty.to_string()).collect::<Vec<_>>().join(", ");
        let label = format!("{}\n{}\n{}", n.name, n.op.name(), ty);
        let dtype = n.outputs.first().map(|o| o.ty.dtype).unwrap_or(DType::F32);
        let shape = if n.op.is_source() { ", shape=ellipse" } else { "" };
        let border = match n.role {
            Role::Forward => "",
            Role::Backward => ", color=\"#868e96\", penwidth=2",
            Role::Optimizer => ", color=\"#e03131\", penwidth=2",
            Role::Scaler => ", color=\"#9c36b5\", penwidth=2",
        };
        writeln!(s, "  n{} [label={}, fillcolor=\"{}\"{shape}{border}];", id.index(), quote(&label), colour(dtype))?;
    }
    for id in g.node_ids() {
        for v in g.inputs(id) {
            writeln!(s, "  n{} -> n{} [label={}];", v.node.index(), id.index(), quote(&g.ty(v).to_string()))?;
        }
    }
    writeln!(s, "  subgraph cluster_legend {{ label=\"dtype\"; fontname=\"monospace\";")?;
    for d in [DType::F32, DType::F16, DType::Bf16, DType::I32, DType::Bool] {
        writeln!(s, "    legend_{d} [label=\"{d}\", fillcolor=\"{}\"];", colour(d))?;
    }
    writeln!(s, "  }}")?;
    s.push_str("}\n");
    Ok(())
}
