//! Graph generators: training graphs of a given size in the mpc/1 format,
//! for benchmarks and tests that need a model bigger than the examples
//! (`mpc gen gpt`).

use serde_json::{json, Value};

/// A GPT (decoder-only transformer, GPT-2's layout: pre-norm blocks of
/// causal multi-head attention and a 4x GELU MLP, learned positions, a
/// final layer norm and an untied LM head) trained with AdamW and global
/// gradient-norm clipping on next-token cross-entropy.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt {
    pub layers: u64,
    pub d_model: u64,
    pub heads: u64,
    pub seq: u64,
    pub vocab: u64,
    pub batch: u64,
    /// Dropout on the attention weights (0: none).
    pub dropout: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub clip: f64,
}

impl Gpt {
    /// GPT-2 small: 12 layers, d_model 768, 12 heads, 1024 positions,
    /// GPT-2's 50257 tokens, batch 8.
    pub fn gpt2_small() -> Gpt {
        Gpt {
            layers: 12,
            d_model: 768,
            heads: 12,
            seq: 1024,
            vocab: 50257,
            batch: 8,
            dropout: 0.1,
            lr: 3e-4,
            weight_decay: 0.1,
            clip: 1.0,
        }
    }

    /// Why the sizes do not make a model, if they do not.
    pub fn problem(&self) -> Option<String> {
        let sizes = [
            ("layers", self.layers),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("seq", self.seq),
            ("vocab", self.vocab),
            ("batch", self.batch),
        ];
        if let Some((what, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Some(format!("{what} must be at least 1"));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Some(format!("d_model {} is not a multiple of heads {}", self.d_model, self.heads));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Some(format!("dropout must be in [0, 1), found {}", self.dropout));
        }
        None
    }

    /// The parameter count (weights and biases, embeddings included).
    pub fn parameters(&self) -> u64 {
        let (d, v, t) = (self.d_model, self.vocab, self.seq);
        let block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
        v * d + t * d + self.layers * block + 2 * d + d * v
    }

    /// The graph as mpc/1 JSON.
    pub fn graph(&self) -> Value {
        let (b, t, d, h) = (self.batch, self.seq, self.d_model, self.heads);
        let hd = d / h;
        let normal = json!({"kind": "normal", "std": 0.02});
        let mut params = vec![
            json!({"name": "tok_emb", "shape": [self.vocab, d], "init": normal}),
            json!({"name": "pos_emb", "shape": [t, d], "init": normal}),
        ];
        let mut fwd = vec![
            json!({"name": "tok", "op": "embedding", "inputs": ["tok_emb", "tokens"]}),
            json!({"name": "x0", "op": "add", "inputs": ["tok", "pos_emb"]}),
        ];
        let mut x = "x0".to_string();
        let ln = |params: &mut Vec<Value>, fwd: &mut Vec<Value>, name: &str, input: &str| {
            params.push(json!({"name": format!("{name}_g"), "shape": [d], "init": {"kind": "ones"}}));
            params.push(json!({"name": format!("{name}_b"), "shape": [d], "init": {"kind": "zeros"}}));
            fwd.push(
                json!({"name": name, "op": "layer_norm", "inputs": [input, format!("{name}_g"), format!("{name}_b")],
                "outputs": [name, format!("{name}_mean"), format!("{name}_rstd")]}),
            );
        };
        // y = x·w + b, with w [k, n] and b [n] as params.
        let linear =
            |params: &mut Vec<Value>, fwd: &mut Vec<Value>, y: &str, x: &str, w: &str, bias: &str, k: u64, n: u64| {
                params.push(json!({"name": w, "shape": [k, n], "init": normal}));
                params.push(json!({"name": bias, "shape": [n], "init": {"kind": "zeros"}}));
                fwd.push(json!({"name": format!("{y}_mm"), "op": "matmul", "inputs": [x, w]}));
                fwd.push(json!({"name": y, "op": "add", "inputs": [format!("{y}_mm"), bias]}));
            };
        for l in 0..self.layers {
            let p = format!("l{l}");
            ln(&mut params, &mut fwd, &format!("{p}_ln1"), &x);
            for (q, w, bias) in [("q", "wq", "bq"), ("k", "wk", "bk"), ("v", "wv", "bv")] {
                let y = format!("{p}_{q}");
                linear(
                    &mut params,
                    &mut fwd,
                    &y,
                    &format!("{p}_ln1"),
                    &format!("{p}_{w}"),
                    &format!("{p}_{bias}"),
                    d,
                    d,
                );
                fwd.push(json!({"name": format!("{y}_split"), "op": "reshape", "inputs": [y], "shape": [b, t, h, hd]}));
                fwd.push(json!({"name": format!("{y}_heads"), "op": "transpose", "inputs": [format!("{y}_split")], "perm": [0, 2, 1, 3]}));
            }
            fwd.push(json!({"name": format!("{p}_scores"), "op": "matmul", "inputs": [format!("{p}_q_heads"), format!("{p}_k_heads")], "transpose_b": true}));
            fwd.push(json!({"name": format!("{p}_scores_scaled"), "op": "scale", "inputs": [format!("{p}_scores")], "value": 1.0 / (hd as f64).sqrt()}));
            fwd.push(json!({"name": format!("{p}_attn"), "op": "softmax", "inputs": [format!("{p}_scores_scaled")], "causal": true}));
            let mut attn = format!("{p}_attn");
            if self.dropout > 0.0 {
                fwd.push(json!({"name": format!("{p}_attn_drop"), "op": "dropout", "inputs": [attn],
                    "outputs": [format!("{p}_attn_drop"), format!("{p}_attn_mask")], "p": self.dropout, "seed": l + 1}));
                attn = format!("{p}_attn_drop");
            }
            fwd.push(
                json!({"name": format!("{p}_ctx_heads"), "op": "matmul", "inputs": [attn, format!("{p}_v_heads")]}),
            );
            fwd.push(json!({"name": format!("{p}_ctx_split"), "op": "transpose", "inputs": [format!("{p}_ctx_heads")], "perm": [0, 2, 1, 3]}));
            fwd.push(json!({"name": format!("{p}_ctx"), "op": "reshape", "inputs": [format!("{p}_ctx_split")], "shape": [b, t, d]}));
            linear(
                &mut params,
                &mut fwd,
                &format!("{p}_attn_out"),
                &format!("{p}_ctx"),
                &format!("{p}_wo"),
                &format!("{p}_bo"),
                d,
                d,
            );
            fwd.push(json!({"name": format!("{p}_res1"), "op": "add", "inputs": [x, format!("{p}_attn_out")]}));
            ln(&mut params, &mut fwd, &format!("{p}_ln2"), &format!("{p}_res1"));
            linear(
                &mut params,
                &mut fwd,
                &format!("{p}_fc"),
                &format!("{p}_ln2"),
                &format!("{p}_w_fc"),
                &format!("{p}_b_fc"),
                d,
                4 * d,
            );
            fwd.push(json!({"name": format!("{p}_fc_act"), "op": "gelu", "inputs": [format!("{p}_fc")]}));
            linear(
                &mut params,
                &mut fwd,
                &format!("{p}_mlp_out"),
                &format!("{p}_fc_act"),
                &format!("{p}_w_out"),
                &format!("{p}_b_out"),
                4 * d,
                d,
            );
            fwd.push(json!({"name": format!("{p}_res2"), "op": "add", "inputs": [format!("{p}_res1"), format!("{p}_mlp_out")]}));
            x = format!("{p}_res2");
        }
        ln(&mut params, &mut fwd, "lnf", &x);
        params.push(json!({"name": "lm_head", "shape": [d, self.vocab], "init": normal}));
        fwd.push(json!({"name": "logits", "op": "matmul", "inputs": ["lnf", "lm_head"]}));
        fwd.push(json!({"name": "logits_flat", "op": "reshape", "inputs": ["logits"], "shape": [b * t, self.vocab]}));
        fwd.push(json!({"name": "loss", "op": "cross_entropy", "inputs": ["logits_flat", "targets"]}));
        json!({
            "format": "mpc/1",
            "name": format!("gpt_{}l_{}d_{}h_{}t", self.layers, d, h, t),
            "inputs": [
                {"name": "tokens", "shape": [b, t], "dtype": "i32"},
                {"name": "targets", "shape": [b * t], "dtype": "i32"}
            ],
            "params": params,
            "forward": fwd,
            "loss": "loss",
            "optimizer": {"kind": "adamw", "lr": self.lr, "weight_decay": self.weight_decay, "clip_grad_norm": self.clip}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator at gpt_block's sizes writes gpt_block (the hand-written
    /// example) but for its name: the same params, nodes and attributes.
    #[test]
    fn at_gpt_block_sizes_it_is_gpt_block() {
        let cfg = Gpt { layers: 2, d_model: 64, heads: 4, seq: 32, vocab: 65, batch: 8, ..Gpt::gpt2_small() };
        let mut got = cfg.graph();
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string("ir-examples/gpt_block.json").unwrap()).unwrap();
        got["name"] = want["name"].clone();
        for key in ["inputs", "params", "forward", "loss", "optimizer", "name"] {
            assert_eq!(got[key], want[key], "{key}");
        }
        let params: u64 = want["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>())
            .sum();
        assert_eq!(cfg.parameters(), params);
    }

    #[test]
    fn gpt2_small_has_its_parameter_count_and_checks() {
        let g = Gpt::gpt2_small();
        assert_eq!(g.problem(), None);
        // GPT-2 small's 124M with an untied head (+ 50257·768 = 38.6M).
        assert_eq!(g.parameters(), 124_439_808 + 50257 * 768);
        assert!(Gpt { heads: 5, ..g.clone() }.problem().unwrap().contains("not a multiple"));
        let text = g.graph().to_string();
        let parsed = crate::parse_str(&text).unwrap();
        crate::verify(&parsed).unwrap();
    }
}
