//! Orders of a graph's nodes (topological, with the nodes a cycle leaves
//! stuck) and type inference along one.

use super::*;

impl Graph {
    /// A topological order, deterministic: forward nodes first, then
    /// backward, then optimizer and scaler nodes; within a role, nodes go in
    /// index order, each right after the inputs it still waits for (so a
    /// graph written in order keeps its order, and an inserted cast stands
    /// just before its first reader). `Err` holds the nodes that lie on or
    /// behind a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let bound = self.bound();
        let mut counts = [0usize; 4];
        let rank: Vec<u8> = (0..bound)
            .map(|i| {
                let m = self.meta(i);
                let r = if m & VACANT != 0 { 3 } else { m & RANK };
                counts[r as usize] += 1;
                r
            })
            .collect();
        // 0: not seen, 1: entered (on the current path), 2: emitted.
        let mut state = vec![0u8; bound];
        let mut order = Vec::with_capacity(self.node_count());
        enum Step {
            Enter(usize),
            Exit(usize),
        }
        let mut stack = Vec::new();
        for r in 0..3u8 {
            if counts[r as usize] == 0 {
                continue;
            }
            for root in (0..bound).filter(|&i| rank[i] == r) {
                if state[root] == 2 {
                    continue;
                }
                // Most nodes find their inputs emitted already.
                if self.wires.inputs(root).iter().all(|w| !w.is_live() || state[w.from as usize] == 2) {
                    state[root] = 2;
                    order.push(NodeId::at(root as u32));
                    continue;
                }
                stack.push(Step::Enter(root));
                while let Some(step) = stack.pop() {
                    match step {
                        Step::Exit(n) => {
                            state[n] = 2;
                            order.push(NodeId::at(n as u32));
                        }
                        Step::Enter(n) => match state[n] {
                            2 => {}
                            1 => return Err(self.stuck_nodes()),
                            _ => {
                                state[n] = 1;
                                stack.push(Step::Exit(n));
                                // Last port first, so that port 0's producer is entered first.
                                let ins = self.wires.inputs(n).iter().rev();
                                let todo = ins.filter(|w| w.is_live() && state[w.from as usize] != 2);
                                stack.extend(todo.map(|w| Step::Enter(w.from as usize)));
                            }
                        },
                    }
                }
            }
        }
        Ok(order)
    }

    /// Nodes that Kahn's algorithm cannot order: on or behind a cycle.
    fn stuck_nodes(&self) -> Vec<NodeId> {
        let mut indeg = vec![0u32; self.bound()];
        for n in self.node_ids() {
            indeg[n.index()] = self.wires.inputs(n.index()).iter().filter(|w| w.is_live()).count() as u32;
        }
        let mut ready: Vec<NodeId> = self.node_ids().filter(|n| indeg[n.index()] == 0).collect();
        while let Some(n) = ready.pop() {
            for (t, _) in self.users(n) {
                indeg[t.index()] -= 1;
                if indeg[t.index()] == 0 {
                    ready.push(t);
                }
            }
        }
        self.node_ids().filter(|n| indeg[n.index()] > 0).collect()
    }

    /// Types every node from its inputs, in topological order. Returns the
    /// problems found, one per node, skipping nodes behind a failed one.
    pub fn infer_types(&mut self, order: &[NodeId]) -> Vec<(NodeId, String)> {
        let mut failed = vec![false; self.bound()];
        let mut problems = Vec::new();
        for &id in order {
            let ins = self.inputs(id);
            if ins.iter().any(|v| failed[v.node.index()]) {
                failed[id.index()] = true;
                continue;
            }
            let result = {
                let ids: SmallVec<[TypeId; 4]> = ins.iter().map(|&v| self.ty_id(v)).collect();
                let op = self.node(id).rec().op;
                let Graph { ops, types, memo, .. } = self;
                memo.infer(types, ops, op, &ids)
            };
            match result {
                Ok(tys) => {
                    let node = self.node(id);
                    if tys.len() != node.num_outputs() {
                        failed[id.index()] = true;
                        problems.push((
                            id,
                            format!(
                                "{} produces {} outputs but {} are named",
                                node.op().name(),
                                tys.len(),
                                node.num_outputs()
                            ),
                        ));
                        continue;
                    }
                    self.put_types(id, &tys);
                }
                Err(m) => {
                    failed[id.index()] = true;
                    problems.push((id, m));
                }
            }
        }
        problems
    }
}
