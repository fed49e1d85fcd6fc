//! `mpc explain --fusion`: the fusion groups of a lowered step
//! (`mpc::exec::fuse`) and what they save: launches, stored intermediates
//! and planned peak memory.

use std::path::Path;

use mpc::exec::{fuse, memory, Plan};

pub fn explain_fusion(model: &Path, g: &mpc::Graph, json: bool) -> Result<(), miette::Report> {
    let at = |e: mpc::exec::ExecError| miette::Report::msg(format!("{}: {e}", model.display()));
    let mut plan = Plan::new(g, 0).map_err(at)?;
    let before = memory::report(&plan).map_err(at)?;
    let groups = plan.fusion_groups();
    plan.claim(groups.clone()).map_err(at)?;
    let after = memory::report(&plan).map_err(at)?;
    if json {
        let rows: Vec<serde_json::Value> = groups
            .iter()
            .map(|gr| {
                serde_json::json!({
                    "kind": gr.kind.name(),
                    "steps": gr.steps().map(|i| {
                        let (name, op) = plan.step(i);
                        serde_json::json!({"node": name, "op": op.name()})
                    }).collect::<Vec<_>>(),
                    "output": plan.value_name(gr.output),
                    "outputs": gr.outputs.iter().map(|&v| plan.value_name(v)).collect::<Vec<_>>(),
                    "hidden": gr.hidden.iter().map(|&v| plan.value_name(v)).collect::<Vec<_>>(),
                    "hidden_bytes": gr.hidden.iter().map(|&v| fuse::bytes(plan.value_type(v))).sum::<u64>(),
                })
            })
            .collect();
        let report = serde_json::json!({
            "model": model.display().to_string(),
            "groups": rows,
            "launches_saved": groups.iter().map(fuse::Group::launches_saved).sum::<usize>(),
            "planned_peak_bytes": {"unfused": before.peak(), "fused": after.peak()},
            "peak_live_bytes": {"unfused": before.peak_live, "fused": after.peak_live},
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(());
    }
    println!("{}: fusion of the lowered step ({} steps)", model.display(), g.node_count());
    print!("{}", fuse::describe(&plan, &groups));
    println!(
        "planned peak: {} unfused, {} fused (arena {} -> {}; step values live at once at most {} -> {})",
        memory::human(before.peak()),
        memory::human(after.peak()),
        memory::human(before.arena.arena_bytes),
        memory::human(after.arena.arena_bytes),
        memory::human(before.peak_live),
        memory::human(after.peak_live)
    );
    Ok(())
}
