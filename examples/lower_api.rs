//! Using mpc as a library: build a training graph in code, lower it for
//! FP16, and read what autocast decided.
//!
//! Run: `cargo run --example lower_api`

use mpc::ir::op::{Init, Op, Role};
use mpc::passes::{self, LossScale, Options};
use mpc::{DType, Graph, TensorType, ValueId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut g = Graph::new("two_layer");
    let v = |node| ValueId { node, slot: 0 };
    let f32_of = |dims: &[u64]| TensorType::new(DType::F32, dims.to_vec());
    let x = v(g.add_node("x", Op::Input { ty: f32_of(&[32, 8]) }, Role::Forward, &[])?);
    let labels =
        v(g.add_node("labels", Op::Input { ty: TensorType::new(DType::I32, vec![32]) }, Role::Forward, &[])?);
    let w1 = v(g.add_node(
        "w1",
        Op::Param { ty: f32_of(&[8, 16]), init: Init::KaimingNormal { gain: 2f64.sqrt() } },
        Role::Forward,
        &[],
    )?);
    let w2 = v(g.add_node(
        "w2",
        Op::Param { ty: f32_of(&[16, 4]), init: Init::XavierUniform { gain: 1.0 } },
        Role::Forward,
        &[],
    )?);
    let mm = |a, b| Op::Matmul { transpose_a: a, transpose_b: b };
    let h = v(g.add_node("h", mm(false, false), Role::Forward, &[x, w1])?);
    let a = v(g.add_node("a", Op::Relu, Role::Forward, &[h])?);
    let logits = v(g.add_node("logits", mm(false, false), Role::Forward, &[a, w2])?);
    let loss = v(g.add_node("loss", Op::CrossEntropy, Role::Forward, &[logits, labels])?);
    g.loss = Some(loss);
    g.optimizer = Some(serde_json::from_str(r#"{"kind": "adamw", "lr": 1e-3}"#)?);
    mpc::verify(&g)?;

    let opts = Options { low: DType::F16, loss_scale: Some(LossScale::DYNAMIC), explain: true, ..Options::default() };
    let lowered = passes::lower(&mut g, &opts)?;
    print!("{}", mpc::format::emit::text::to_string(&g));
    println!("{}", lowered.autocast.summary());
    for d in lowered.autocast.decisions.iter().filter(|d| d.class.is_some()) {
        println!("  {:<8} {:<20} {:<5} {}", d.node, d.op, d.dtype, d.rule);
    }
    Ok(())
}
