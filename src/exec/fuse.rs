//! The fusion decision: which runs of consecutive plan steps could run as
//! one kernel. It reads a [`Plan`] (the lowered graph in execution order)
//! and changes nothing: the emitted graph stays as it was, and a backend
//! decides which of the groups it claims ([`super::Backend::claim`]).
//!
//! A group is a run of consecutive steps whose ops the op table marks
//! `fusable` (elementwise, casts included), every value of a float type,
//! every step's output of the one shape the group writes (inputs from
//! outside may broadcast to it, so element i of every step is computed
//! from element i of the steps before: one thread per output element
//! computes the whole chain). Every value made inside but the last is
//! read exactly once, by a later step of the group, and is not returned
//! by the step (the loss, an output, a state update): those values are
//! never stored. Consecutive, so that running the group where its last
//! step stood keeps every other value's lifetime as the plan made it.
//!
//! A `layer_norm` right after a run, normalising the run's output (the
//! residual add before a transformer's norms), joins it as the group's tail:
//! the run's output is then stored and read back by the same threads in
//! the same kernel, which saves a launch and a pass over memory. A
//! `softmax` right after a run whose output only it reads (the scaled
//! attention scores) joins it too, and then the run's output is not
//! stored at all: the softmax recomputes the chain at each of its reads.
//!
//! Besides the chains, a `cross_entropy` and the `cross_entropy_grad` of the
//! same logits and labels pair up ([`Kind::CrossEntropy`]): one kernel reads
//! each row once for both the row's loss term and its gradient row. The
//! gradient's `dloss` is the scaled seed, and a seed reads the loss (for
//! its type) before the gradient, so the pair cannot run at the forward
//! step; it runs at the gradient's step, where everything it reads is
//! alive anyway. The gradient is written where it always was and the loss
//! later than before (every step in between that reads the loss must be a
//! seed, which needs its type only), so no value lives longer and the
//! pair costs no arena byte.
//!
//! A `layer_norm_grad` whose dx only the `add` right after it reads (the
//! residual branch's gradient plus the norm's, in a transformer's backward)
//! joins that add ([`Kind::LayerNormGradAdd`]): the kernel writes the sum
//! and dx is never stored.

use crate::ir::op::Op;
use crate::ir::types::{DType, TensorType};

use super::run::Plan;

/// What a group computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The elementwise steps `first..=last`, and a tail at `last + 1`.
    Chain,
    /// The `cross_entropy` at `first` and its gradient at `last` (the
    /// steps between are not members and run as they are).
    CrossEntropy,
    /// The `layer_norm_grad` at `first` and the `add` of its dx at `last`
    /// (`first + 1`).
    LayerNormGradAdd,
    /// The `matmul` at `first`, the `add` of its bias at `last`, and a
    /// `relu` or `gelu` of the sum right after as the tail, run as one GEMM
    /// whose epilogue adds the bias (and applies the activation) before its
    /// one rounding (the steps between are not members and run as they
    /// are). With a tail, the sum is written too when others read it.
    GemmBias,
    /// The weight gradient `dw = x^T · d` at `last` (d the output gradient
    /// dy or its 2-D reshape) with the bias's gradient `sum_to(dy)` (at
    /// `also`, of dy's cast to f32 at `first` when dy is 16-bit, or at
    /// `first` itself): one GEMM whose epilogue sums d over the rows into
    /// the bias gradient (f32, or dy's type), so the f32 copy of dy is
    /// never made.
    GemmBiasGrad,
}

impl Kind {
    /// The kind's name, in `mpc explain --fusion --json`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Chain => "chain",
            Kind::CrossEntropy => "cross_entropy",
            Kind::LayerNormGradAdd => "layer_norm_grad_add",
            Kind::GemmBias => "gemm_bias",
            Kind::GemmBiasGrad => "gemm_bias_grad",
        }
    }
}

/// One fusion group of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub kind: Kind,
    /// The elementwise steps `first..=last` (at least two without a tail),
    /// or the two steps of a pair.
    pub first: usize,
    pub last: usize,
    /// The values the group reads and does not make, in order of first read.
    pub inputs: Vec<usize>,
    /// The elementwise chain's result: step `last`'s output (stored, but
    /// for a softmax tail, which recomputes it where it reads it); a
    /// pair's gradient.
    pub output: usize,
    /// The values made inside and never stored, in step order.
    pub hidden: Vec<usize>,
    /// A `layer_norm` or `softmax` at step `last + 1` of `output` (a GEMM's
    /// `relu` or `gelu`): it runs in the same kernel.
    pub tail: Option<usize>,
    /// Every value the group writes: `output` (unless hidden), then the
    /// tail's outputs; a pair's loss, then its gradient; the add's sum,
    /// then dgamma and dbeta; a weight gradient, then its bias's.
    pub outputs: Vec<usize>,
    /// Member steps between `first` and `last` besides the tail (a bias
    /// gradient's sum_to after its cast).
    pub also: Vec<usize>,
}

impl Group {
    /// The step where the group runs: its last, the tail if it has one.
    pub fn at(&self) -> usize {
        self.tail.unwrap_or(self.last)
    }

    /// The plan steps of the group, its tail included, in order.
    pub fn steps(&self) -> impl Iterator<Item = usize> + '_ {
        (self.first..=self.at()).filter(|&i| {
            self.kind == Kind::Chain
                || i == self.first
                || i == self.last
                || Some(i) == self.tail
                || self.also.contains(&i)
        })
    }

    /// Kernel launches the group saves (one launch instead of one per step).
    pub fn launches_saved(&self) -> usize {
        self.steps().count() - 1
    }
}

fn float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::Bf16)
}

/// Whether step `i` may be a member: a fusable op with one output, every
/// value a float, every input broadcastable to the output (its rank no
/// greater; the op's own inference checked the sizes).
fn member(plan: &Plan, i: usize) -> bool {
    let s = &plan.steps[i];
    if !s.op.info().fusable || s.outputs.len() != 1 {
        return false;
    }
    let out = &s.out_types[0];
    let attrs_ok = match &s.op {
        // The attribute goes into the generated source as a literal.
        Op::Scale { value } => value.is_finite(),
        _ => true,
    };
    attrs_ok
        && float(out.dtype)
        && s.inputs.iter().all(|&v| {
            let t = &plan.types[v];
            float(t.dtype) && t.shape.0.len() <= out.shape.0.len()
        })
}

/// Whether step `t` is a layer_norm of `x` that a group ending in `x` can
/// run as its tail: float types and an eps the source can spell.
fn ln_tail(plan: &Plan, t: usize, x: usize) -> bool {
    let s = &plan.steps[t];
    matches!(s.op, Op::LayerNorm { eps } if eps.is_finite())
        && s.inputs.first() == Some(&x)
        && s.inputs.iter().all(|&v| float(plan.types[v].dtype))
        && !plan.types[x].shape.0.is_empty()
}

/// Whether step `t` is a softmax of `x` (read by it alone) that a group
/// ending in `x` can run as its tail, recomputing the chain at each of the
/// softmax's reads: float types, x's type in and out.
fn softmax_tail(plan: &Plan, t: usize, x: usize) -> bool {
    let s = &plan.steps[t];
    matches!(s.op, Op::Softmax { .. })
        && s.inputs.first() == Some(&x)
        && float(plan.types[x].dtype)
        && s.out_types[0].dtype == plan.types[x].dtype
}

/// The groups of `plan`, in order of their first steps, none sharing a
/// step: elementwise runs of two or more steps, any elementwise run (one
/// step will do) whose output the next step layer-normalises or (read by it
/// alone) softmaxes, with that step as its tail, the cross-entropy pairs,
/// the layer_norm_grads with the add of their dx, the matmuls with their
/// bias add (and activation) and the weight gradients with their bias's
/// (those before the chains: their adds and casts are no chain's).
pub fn groups(plan: &Plan) -> Vec<Group> {
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); plan.num_values()];
    for (i, s) in plan.steps.iter().enumerate() {
        for &v in &s.inputs {
            readers[v].push(i);
        }
    }
    let mut kept = vec![false; plan.num_values()];
    for &v in plan.loss.iter().chain(&plan.outputs).chain(plan.updates.iter().map(|(_, v)| v)) {
        kept[v] = true;
    }
    let mut out = layer_norm_grad_adds(plan, &readers, &kept);
    out.extend(gemm_biases(plan, &readers, &kept));
    let mut taken = vec![false; plan.steps.len()];
    for g in &out {
        for i in g.steps() {
            taken[i] = true;
        }
    }
    // No step in two groups: a weight gradient's cast or sum_to is no other group's.
    for g in gemm_bias_grads(plan, &readers, &kept) {
        if g.steps().all(|i| !taken[i]) {
            g.steps().for_each(|i| taken[i] = true);
            out.push(g);
        }
    }
    out.extend(chains(plan, &readers, &kept, &taken));
    out.extend(cross_entropy_pairs(plan, &readers));
    out.sort_by_key(|g| g.first);
    out
}

/// The cross-entropy pairs: a `cross_entropy` of float logits and the
/// `cross_entropy_grad` of the same logits and labels after it, when every
/// step before the gradient that reads the loss is a seed (the loss is
/// written at the gradient's step) and the gradient does not read the loss.
fn cross_entropy_pairs(plan: &Plan, readers: &[Vec<usize>]) -> Vec<Group> {
    let mut out = Vec::new();
    for (f, s) in plan.steps.iter().enumerate() {
        let ([x, labels], [loss]) = (s.inputs.as_slice(), s.outputs.as_slice()) else { continue };
        if !matches!(s.op, Op::CrossEntropy) || !float(plan.types[*x].dtype) {
            continue;
        }
        let grad = readers[*x].iter().copied().find(|&g| {
            let t = &plan.steps[g];
            g > f
                && matches!(t.op, Op::CrossEntropyGrad)
                && t.outputs.len() == 1
                && matches!(t.inputs.as_slice(), [d, x2, l2] if x2 == x && l2 == labels && d != loss)
        });
        let Some(g) = grad else { continue };
        if readers[*loss].iter().any(|&r| r <= g && !matches!(plan.steps[r].op, Op::Seed)) {
            continue;
        }
        let dx = plan.steps[g].outputs[0];
        out.push(Group {
            kind: Kind::CrossEntropy,
            first: f,
            last: g,
            inputs: plan.steps[g].inputs.clone(),
            output: dx,
            hidden: Vec::new(),
            tail: None,
            outputs: vec![*loss, dx],
            also: Vec::new(),
        });
    }
    out
}

/// The matmuls whose product only the `add` of a bias reads: a vector of
/// the product's type over its last axis, the sum of the product's type.
/// A `relu` right after the add that alone reads the sum joins as the
/// tail, and so does a `gelu` of the sum: when others read the sum too
/// (`gelu_grad`, in training) the GEMM stores it beside its output
/// (cuBLASLt's auxiliary matrix; a relu's would be a bit mask, so a relu
/// whose input others read does not join). The group runs at the add (or
/// its tail), so every input of the matmul must still be there: none is
/// freed by a step between that is not a member.
fn gemm_biases(plan: &Plan, readers: &[Vec<usize>], kept: &[bool]) -> Vec<Group> {
    let mut out = Vec::new();
    for (i, s) in plan.steps.iter().enumerate() {
        let (Op::Matmul { .. }, [a, b], [mm]) = (&s.op, s.inputs.as_slice(), s.outputs.as_slice()) else { continue };
        let ty = &s.out_types[0];
        let (&[add], false) = (readers[*mm].as_slice(), kept[*mm]) else { continue };
        let t = &plan.steps[add];
        let bias = match (&t.op, t.inputs.as_slice()) {
            (Op::Add, [x, y]) if x == mm && y != mm => *y,
            (Op::Add, [x, y]) if y == mm && x != mm => *x,
            _ => continue,
        };
        let width = ty.shape.0.last().copied();
        let bias_ty = &plan.types[bias];
        if !float(ty.dtype)
            || t.out_types.as_slice() != std::slice::from_ref(ty)
            || bias_ty.dtype != ty.dtype
            || bias_ty.shape.0.as_slice() != width.as_slice()
            || ty.shape.0.len() < 2
        {
            continue;
        }
        let sum = t.outputs[0];
        let alone = readers[sum] == [add + 1] && !kept[sum];
        let tail = Some(add + 1).filter(|&r| {
            plan.steps.get(r).is_some_and(|st| {
                st.inputs == [sum]
                    && st.out_types[0] == *ty
                    && match st.op {
                        Op::Relu => alone,
                        Op::Gelu => true,
                        _ => false,
                    }
            })
        });
        let at = tail.unwrap_or(add);
        let inputs = vec![*a, *b, bias];
        if (i + 1..at).filter(|&j| j != add).any(|j| plan.steps[j].free_after.iter().any(|v| inputs.contains(v))) {
            continue;
        }
        let (hidden, outputs) = match tail {
            Some(r) if alone => (vec![*mm, sum], vec![plan.steps[r].outputs[0]]),
            Some(r) => (vec![*mm], vec![sum, plan.steps[r].outputs[0]]),
            None => (vec![*mm], vec![sum]),
        };
        out.push(Group {
            kind: Kind::GemmBias,
            first: i,
            last: add,
            inputs,
            output: sum,
            hidden,
            tail,
            outputs,
            also: Vec::new(),
        });
    }
    out
}

/// The weight-gradient matmuls `dw = x^T · d` (2-D, `transpose_a` only, d of
/// x's type) whose d is an output gradient dy or its reshape to 2-D, when
/// a `sum_to` of dy to its last axis (the bias's gradient) runs before: of
/// dy itself (in f32 or dy's type), or in f32 of a cast of dy to f32 that
/// only the sum_to reads and the step does not return (it is then never
/// stored). Both sum the same
/// values, d's elements, the GEMM in its own order. The group runs at the
/// matmul: the gradient is written later than before, so no step up to
/// the matmul may read it, and no step between that is not a member may
/// free x or d.
fn gemm_bias_grads(plan: &Plan, readers: &[Vec<usize>], kept: &[bool]) -> Vec<Group> {
    let mut made_by = vec![usize::MAX; plan.num_values()];
    for (i, s) in plan.steps.iter().enumerate() {
        for &v in &s.outputs {
            made_by[v] = i;
        }
    }
    let mut out = Vec::new();
    for (mi, s) in plan.steps.iter().enumerate() {
        let (Op::Matmul { transpose_a: true, transpose_b: false }, [x, d], [dw]) =
            (&s.op, s.inputs.as_slice(), s.outputs.as_slice())
        else {
            continue;
        };
        let (xt, dt) = (&plan.types[*x], &plan.types[*d]);
        let &[_, n] = dt.shape.0.as_slice() else { continue };
        if xt.shape.0.len() != 2 || xt.dtype != dt.dtype || !float(dt.dtype) || !float(s.out_types[0].dtype) {
            continue;
        }
        // dy: d, or what a reshape made d from.
        let mut dys = vec![*d];
        if let Some(r) = plan.steps.get(made_by[*d]) {
            if matches!(r.op, Op::Reshape { .. }) && r.inputs.len() == 1 {
                dys.push(r.inputs[0]);
            }
        }
        // In f32, or (of dy itself) in dy's type: the GEMM's bias type.
        let sum_of = |v: usize, j: usize| {
            let st = &plan.steps[j];
            j < mi
                && matches!(&st.op, Op::SumTo { shape } if shape.as_slice() == [n])
                && st.inputs == [v]
                && (st.out_types[0].dtype == DType::F32 || st.out_types[0].dtype == plan.types[v].dtype)
        };
        let found = dys.iter().find_map(|&dy| {
            let t = &plan.types[dy];
            if t.dtype != dt.dtype || t.shape.0.last() != Some(&n) || t.shape.0.len() < 2 {
                return None;
            }
            if let Some(s) = readers[dy].iter().copied().find(|&j| sum_of(dy, j)) {
                return Some((s, None));
            }
            readers[dy].iter().find_map(|&c| {
                let st = &plan.steps[c];
                let &[cv] = st.outputs.as_slice() else { return None };
                let cast = matches!(st.op, Op::Cast { to: DType::F32 }) && st.inputs == [dy];
                let s = match readers[cv].as_slice() {
                    &[s] if cast && !kept[cv] && sum_of(cv, s) => s,
                    _ => return None,
                };
                Some((s, Some((c, cv))))
            })
        });
        let Some((sum, cast)) = found else { continue };
        let db = plan.steps[sum].outputs[0];
        if plan.loss == Some(db) || readers[db].iter().any(|&r| r <= mi) {
            continue;
        }
        let first = cast.map_or(sum, |(c, _)| c);
        let members = [first, sum, mi];
        if (first + 1..mi)
            .filter(|j| !members.contains(j))
            .any(|j| plan.steps[j].free_after.iter().any(|v| v == x || v == d))
        {
            continue;
        }
        out.push(Group {
            kind: Kind::GemmBiasGrad,
            first,
            last: mi,
            inputs: vec![*x, *d],
            output: *dw,
            hidden: cast.map(|(_, cv)| cv).into_iter().collect(),
            tail: None,
            outputs: vec![*dw, db],
            also: if cast.is_some() { vec![sum] } else { Vec::new() },
        });
    }
    out
}

/// The `layer_norm_grad`s whose dx is read only by the `add` at the next
/// step, of another value of dx's type (no broadcast).
fn layer_norm_grad_adds(plan: &Plan, readers: &[Vec<usize>], kept: &[bool]) -> Vec<Group> {
    let mut out = Vec::new();
    for (i, s) in plan.steps.iter().enumerate() {
        let ([dy, x, _, _, _], [dx, dgamma, dbeta]) = (s.inputs.as_slice(), s.outputs.as_slice()) else { continue };
        if !matches!(s.op, Op::LayerNormGrad) || readers[*dx] != [i + 1] || kept[*dx] {
            continue;
        }
        let Some(add) = plan.steps.get(i + 1) else { continue };
        let &[sum] = add.outputs.as_slice() else { continue };
        let ty = &plan.types[*dx];
        let dres = match add.inputs.as_slice() {
            [a, b] if a == dx && b != dx => *b,
            [a, b] if b == dx && a != dx => *a,
            _ => continue,
        };
        if !matches!(add.op, Op::Add) || !float(ty.dtype) || [dres, sum, *x, *dy].iter().any(|&v| &plan.types[v] != ty)
        {
            continue;
        }
        let mut inputs = s.inputs.clone();
        inputs.push(dres);
        out.push(Group {
            kind: Kind::LayerNormGradAdd,
            first: i,
            last: i + 1,
            inputs,
            output: sum,
            hidden: vec![*dx],
            tail: None,
            outputs: vec![sum, *dgamma, *dbeta],
            also: Vec::new(),
        });
    }
    out
}

/// The elementwise chains (with their tails), in step order, of steps not
/// `taken` by another group.
fn chains(plan: &Plan, readers: &[Vec<usize>], kept: &[bool], taken: &[bool]) -> Vec<Group> {
    let n = plan.steps.len();
    let is_member: Vec<bool> = (0..n).map(|i| !taken[i] && member(plan, i)).collect();
    let shape = |i: usize| &plan.steps[i].out_types[0].shape;
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if !is_member[i] {
            i += 1;
            continue;
        }
        // Extend over the run of members of one shape; [i, j] is a group
        // when every value made before j is read once, by a step up to j.
        let mut best = i;
        let mut furthest = i;
        let mut j = i + 1;
        while j < n && is_member[j] && shape(j) == shape(i) {
            let v = plan.steps[j - 1].outputs[0];
            match readers[v].as_slice() {
                [r] if !kept[v] => furthest = furthest.max(*r),
                _ => break,
            }
            if furthest <= j {
                best = j;
            }
            j += 1;
        }
        let last = plan.steps[best].outputs[0];
        let sole = readers[last].len() == 1 && !kept[last];
        let tail =
            Some(best + 1).filter(|&t| t < n && (ln_tail(plan, t, last) || (sole && softmax_tail(plan, t, last))));
        let softmax = tail.is_some_and(|t| matches!(plan.steps[t].op, Op::Softmax { .. }));
        if best == i && tail.is_none() {
            i += 1;
            continue;
        }
        // Before a softmax, the chain's own result is not stored either.
        let stored = if softmax { best + 1 } else { best };
        let hidden: Vec<usize> = (i..stored).map(|k| plan.steps[k].outputs[0]).collect();
        let output = plan.steps[best].outputs[0];
        let mut inputs = Vec::new();
        for k in (i..=best).chain(tail) {
            for &v in &plan.steps[k].inputs {
                if v != output && !hidden.contains(&v) && !inputs.contains(&v) {
                    inputs.push(v);
                }
            }
        }
        let mut outputs = if softmax { Vec::new() } else { vec![output] };
        outputs.extend(tail.iter().flat_map(|&t| plan.steps[t].outputs.iter().copied()));
        out.push(Group {
            kind: Kind::Chain,
            first: i,
            last: best,
            inputs,
            output,
            hidden,
            tail,
            outputs,
            also: Vec::new(),
        });
        i = tail.unwrap_or(best) + 1;
    }
    out
}

/// The bytes of a value of type `ty` (0 when it overflows, which inference refuses).
pub fn bytes(ty: &TensorType) -> u64 {
    ty.shape.numel().and_then(|n| n.checked_mul(ty.dtype.size_bytes() as u64)).unwrap_or(0)
}

/// A fusion plan in words: one paragraph per group (its steps, ops, the
/// values no longer stored and their bytes), then the totals.
pub fn describe(plan: &Plan, groups: &[Group]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let (mut saved, mut launches) = (0u64, 0usize);
    for (k, g) in groups.iter().enumerate() {
        let hidden: u64 = g.hidden.iter().map(|&v| bytes(&plan.types[v])).sum();
        saved += hidden;
        launches += g.launches_saved();
        let outs: Vec<String> = g.outputs.iter().map(|&v| format!("`{}` {}", plan.names[v], plan.types[v])).collect();
        let _ = writeln!(s, "group {k}: {} steps -> {}", g.steps().count(), outs.join(", "));
        for i in g.steps() {
            let st = &plan.steps[i];
            let ins: Vec<&str> = st.inputs.iter().map(|&v| plan.names[v].as_str()).collect();
            let _ = writeln!(s, "  {:24} {:14} ({})", st.name, st.op.name(), ins.join(", "));
        }
        let names: Vec<String> = g.hidden.iter().map(|&v| format!("`{}` {}", plan.names[v], plan.types[v])).collect();
        if g.kind == Kind::CrossEntropy {
            let _ = writeln!(s, "  not stored: nothing (one pass over the logits makes the loss and its gradient)");
        } else if names.is_empty() && g.kind == Kind::GemmBiasGrad {
            let _ = writeln!(s, "  not stored: nothing (the GEMM sums the output gradient as it reads it)");
        } else if names.is_empty() {
            let _ = writeln!(s, "  not stored: nothing (the layer_norm reads its input where the chain wrote it)");
        } else {
            let _ = writeln!(s, "  not stored: {} ({hidden} bytes)", names.join(", "));
        }
    }
    let _ = writeln!(
        s,
        "{} groups over {} steps: {launches} launches and {saved} bytes of intermediates fewer",
        groups.len(),
        groups.iter().map(|g| g.steps().count()).sum::<usize>()
    );
    s
}
