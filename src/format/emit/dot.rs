//! Graphviz DOT, nodes coloured by the dtype of their first output.

use std::fmt::Write;

use crate::ir::graph::Graph;
use crate::ir::op::Role;
use crate::ir::types::DType;

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
    to_string_with(g, &Options::default())
}

/// What a DOT rendering shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Only the forward (inference) part: a training graph's backward,
    /// loss-scaling and optimizer parts triple its size.
    pub forward_only: bool,
}

/// Above this many nodes edges carry no type labels: Graphviz spends most
/// of a big graph's layout placing them.
const LABELLED_EDGES: usize = 300;

const ROLES: [(Role, &str); 4] =
    [(Role::Forward, ""), (Role::Backward, "#868e96"), (Role::Optimizer, "#e03131"), (Role::Scaler, "#9c36b5")];

pub fn to_string_with(g: &Graph, opts: &Options) -> String {
    let mut s = String::with_capacity(96 * g.node_count());
    let _ = write(g, opts, &mut s);
    s
}

fn write(g: &Graph, opts: &Options, s: &mut String) -> std::fmt::Result {
    // Forward only: the forward nodes, and of the sources (which all have
    // the forward role) those a forward node reads: not optimizer moments.
    let mut show = vec![!opts.forward_only; g.index_bound()];
    if opts.forward_only {
        for id in g.node_ids().filter(|&id| g.node(id).role() == Role::Forward && !g.node(id).op().is_source()) {
            show[id.index()] = true;
            for v in g.inputs(id) {
                show[v.node.index()] = true;
            }
        }
    }
    let shown_role = |role: Role| !opts.forward_only || role == Role::Forward;
    let count = g.node_ids().filter(|&id| show[id.index()]).count();
    writeln!(s, "digraph {} {{", quote(&g.name))?;
    writeln!(s, "  node [shape=box, style=\"rounded,filled\", fontname=\"monospace\", fontsize=10];")?;
    writeln!(s, "  edge [fontname=\"monospace\", fontsize=8];")?;
    // One cluster per role, so that Graphviz lays the parts out apart.
    for (role, border) in ROLES {
        if !shown_role(role) {
            continue;
        }
        writeln!(
            s,
            "  subgraph cluster_{} {{ label=\"{}\"; fontname=\"monospace\"; style=dashed;",
            role.name(),
            role.name()
        )?;
        for id in g.node_ids().filter(|&id| g.node(id).role() == role && show[id.index()]) {
            let n = g.node(id);
            let ty = g.output_types(id).map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
            let label = format!("{}\n{}\n{}", n.name(), n.op().name(), ty);
            let dtype = g.output_types(id).next().map(|t| t.dtype).unwrap_or(DType::F32);
            let shape = if n.op().is_source() { ", shape=ellipse" } else { "" };
            let border = match border {
                "" => String::new(),
                c => format!(", color=\"{c}\", penwidth=2"),
            };
            writeln!(
                s,
                "    n{} [label={}, fillcolor=\"{}\"{shape}{border}];",
                id.index(),
                quote(&label),
                colour(dtype)
            )?;
        }
        writeln!(s, "  }}")?;
    }
    for id in g.node_ids().filter(|&id| show[id.index()]) {
        for v in g.inputs(id).into_iter().filter(|v| show[v.node.index()]) {
            match count <= LABELLED_EDGES {
                true => {
                    writeln!(s, "  n{} -> n{} [label={}];", v.node.index(), id.index(), quote(&g.ty(v).to_string()))?
                }
                false => writeln!(s, "  n{} -> n{};", v.node.index(), id.index())?,
            }
        }
    }
    writeln!(s, "  subgraph cluster_legend {{ label=\"legend\"; fontname=\"monospace\";")?;
    for d in [DType::F32, DType::F16, DType::Bf16, DType::I32, DType::Bool] {
        writeln!(s, "    legend_{d} [label=\"{d}\", fillcolor=\"{}\"];", colour(d))?;
    }
    for (role, border) in ROLES.iter().filter(|(r, _)| shown_role(*r)) {
        let border = if border.is_empty() { "black" } else { border };
        writeln!(
            s,
            "    legend_{0} [label=\"{0} border\", fillcolor=\"white\", color=\"{border}\", penwidth=2];",
            role.name()
        )?;
    }
    writeln!(s, "  }}")?;
    s.push_str("}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_only_drops_the_training_parts_and_big_graphs_drop_edge_labels() {
        let mut g = crate::parse_str(&std::fs::read_to_string("ir-examples/mlp.json").unwrap()).unwrap();
        crate::passes::lower(&mut g, &crate::passes::Options::default()).unwrap();
        let all = to_string(&g);
        let fwd = to_string_with(&g, &Options { forward_only: true });
        for part in ["cluster_forward", "cluster_backward", "cluster_optimizer", "legend_optimizer"] {
            assert!(all.contains(part), "{part}");
        }
        assert!(fwd.contains("cluster_forward") && !fwd.contains("cluster_backward") && !fwd.contains("adam"));
        assert!(fwd.len() < all.len() / 2);
        // Every edge of the forward rendering joins two shown nodes.
        let shown: Vec<&str> = fwd
            .lines()
            .filter(|l| l.trim_start().starts_with('n') && l.contains("[label="))
            .filter(|l| !l.contains("->"))
            .map(|l| l.trim().split(' ').next().unwrap())
            .collect();
        for l in fwd.lines().filter(|l| l.contains("->")) {
            let ends: Vec<&str> =
                l.trim().trim_end_matches(';').split(" -> ").map(|e| e.split(' ').next().unwrap()).collect();
            assert!(ends.iter().all(|e| shown.contains(e)), "{l}");
        }
        let labelled = |dot: &str| dot.lines().any(|l| l.contains("->") && l.contains("[label="));
        assert!(labelled(&all), "a small graph's edges carry types");
        let mut big = crate::parse_str(&std::fs::read_to_string("ir-examples/gpt_block.json").unwrap()).unwrap();
        crate::passes::lower(&mut big, &crate::passes::Options::default()).unwrap();
        assert!(big.node_count() > LABELLED_EDGES);
        assert!(!labelled(&to_string(&big)), "a big graph's edges carry no labels");
    }
}
