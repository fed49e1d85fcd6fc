//! The readable text form: one op per line with its result types,
//! e.g. `%h:f16[64,256] = matmul %x, %w1`. Snapshots show this form.

use std::fmt::Write;

use crate::format::attrs::op_attrs_text;
use crate::ir::graph::Graph;
use crate::ir::op::{Op, Precision};

pub fn to_string(g: &Graph) -> String {
    let mut s = String::with_capacity(64 * g.node_count());
    let _ = write(g, &mut s);
    s
}

fn write(g: &Graph, s: &mut String) -> std::fmt::Result {
    writeln!(s, "graph {} {{", serde_json::Value::String(g.name.clone()))?;
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    let mut role = None;
    for id in order {
        let n = g.node(id);
        if !n.op().is_source() && role != Some(n.role()) {
            role = Some(n.role());
            writeln!(s, "  // {}", n.role().name())?;
        }
        s.push_str("  ");
        if n.output_names().next() != Some(n.name()) {
            write!(s, "{}: ", n.name())?;
        }
        for (i, (t, name)) in g.output_types(id).zip(n.output_names()).enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            write!(s, "%{}:{}", name, t)?;
        }
        write!(s, " = {}", n.op().name())?;
        match n.op() {
            Op::Param { init, .. } | Op::State { init, .. } => write!(s, " init={init}")?,
            op => {
                for (i, v) in g.inputs(id).into_iter().enumerate() {
                    s.push_str(if i == 0 { " %" } else { ", %" });
                    s.push_str(g.value_name(v));
                }
                s.push_str(&op_attrs_text(op));
            }
        }
        match n.precision() {
            Some(Precision::Fp32) => s.push_str(" precision=fp32"),
            Some(Precision::Low) => s.push_str(" precision=low"),
            None => {}
        }
        s.push('\n');
    }
    if let Some(l) = g.loss {
        writeln!(s, "  loss %{}", g.value_name(l))?;
    }
    for &(p, v) in &g.gradients {
        writeln!(s, "  gradient %{} = %{}", g.node(p).name(), g.value_name(v))?;
    }
    for &(p, v) in &g.updates {
        writeln!(s, "  update %{} <- %{}", g.node(p).name(), g.value_name(v))?;
    }
    for &v in &g.outputs {
        writeln!(s, "  output %{}", g.value_name(v))?;
    }
    if let Some(o) = &g.optimizer {
        let v = serde_json::to_value(o).unwrap_or_default();
        write!(s, "  optimizer")?;
        if let serde_json::Value::Object(m) = v {
            for (k, val) in m {
                match val {
                    serde_json::Value::String(t) => write!(s, " {k}={t}")?,
                    other => write!(s, " {k}={other}")?,
                }
            }
        }
        s.push('\n');
    }
    s.push_str("}\n");
    Ok(())
}
