//! Graph equality: the same nodes, edges, names and step description, node
//! ids aside (what a round trip through the file format keeps).

use super::*;

/// Two graphs are equal when they have the same metadata and the same nodes
/// (compared by name, op, role, precision, outputs and inputs) in the same
/// topological order; node indices do not matter.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        let (Ok(a), Ok(b)) = (self.topo_order(), other.topo_order()) else {
            return false;
        };
        if self.name != other.name
            || a.len() != b.len()
            || self.optimizer != other.optimizer
            || self.weights != other.weights
        {
            return false;
        }
        let vname = |g: &Graph, v: Option<ValueId>| v.map(|v| g.value_name(v).to_string());
        let pairs = |g: &Graph, ps: &[(NodeId, ValueId)]| -> Vec<(String, String)> {
            ps.iter().map(|&(n, v)| (g.node(n).name().to_string(), g.value_name(v).to_string())).collect()
        };
        let outs = |g: &Graph| -> Vec<String> { g.outputs.iter().map(|&v| g.value_name(v).to_string()).collect() };
        if vname(self, self.loss) != vname(other, other.loss)
            || pairs(self, &self.gradients) != pairs(other, &other.gradients)
            || pairs(self, &self.updates) != pairs(other, &other.updates)
            || outs(self) != outs(other)
        {
            return false;
        }
        a.iter().zip(&b).all(|(&x, &y)| {
            let (nx, ny) = (self.node(x), other.node(y));
            let ix: Vec<&str> = self.inputs(x).into_iter().map(|v| self.value_name(v)).collect();
            let iy: Vec<&str> = other.inputs(y).into_iter().map(|v| other.value_name(v)).collect();
            nx.name() == ny.name()
                && nx.op() == ny.op()
                && nx.role() == ny.role()
                && nx.precision() == ny.precision()
                && nx.output_names().eq(ny.output_names())
                && self.output_types(x).eq(other.output_types(y))
                && ix == iy
        })
    }
}
