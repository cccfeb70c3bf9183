//! transformers `CLIPAttention` for the text tower: q/k/v/out projections with biases,
//! `head_dim^-0.5` scaling and a causal mask (`CLIPTextModel` always runs it causally).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use dreamforge_core::{Result, WeightLoader};

use crate::layers::split_heads;

#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
}

impl ClipAttention {
    /// `prefix` is the `self_attn` module path.
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize, heads: usize) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            q_proj: w.linear(&p("q_proj"), dim, dim, true)?,
            k_proj: w.linear(&p("k_proj"), dim, dim, true)?,
            v_proj: w.linear(&p("v_proj"), dim, dim, true)?,
            out_proj: w.linear(&p("out_proj"), dim, dim, true)?,
            heads,
        })
    }

    /// Causal multi-head self-attention.
    ///
    /// # Shapes
    /// `x: [B, T, dim]` → `[B, T, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, dim] = x.dims();
        let q = split_heads(self.q_proj.forward(x.clone()), self.heads);
        let k = split_heads(self.k_proj.forward(x.clone()), self.heads);
        let v = split_heads(self.v_proj.forward(x), self.heads);
        let o = attention(
            q,
            k,
            v,
            None,
            None,
            AttentionModuleOptions {
                is_causal: true,
                ..Default::default()
            },
        );
        self.out_proj
            .forward(o.swap_dims(1, 2).reshape([b, t, dim]))
    }
}
