//! The UNet transformer's attention (diffusers `models/attention_processor.py` `Attention` with
//! `AttnProcessor2_0`, `bias=False`, `out_bias=True`): `to_q` on the hidden states, `to_k` /
//! `to_v` on the hidden states (self-attention) or on the text states (cross-attention),
//! scaled dot-product attention over heads, `to_out.0`. `upcast_attention` only guards fp16
//! overflow; in f32 it changes nothing, so it is not modelled.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

use dreamforge_core::{Result, WeightLoader};

use crate::layers::{sdpa_merge_heads, split_heads};

#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0` (upstream's `to_out.1` is a dropout).
    pub to_out: Linear,
    pub heads: usize,
}

impl Attention {
    /// Loads `{prefix}.to_q/to_k/to_v` (no bias) and `{prefix}.to_out.0`; `kv_dim` is `dim` for
    /// self-attention and the text width for cross-attention.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        dim: usize,
        kv_dim: usize,
        heads: usize,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            to_q: w.linear(&p("to_q"), dim, dim, false)?,
            to_k: w.linear(&p("to_k"), kv_dim, dim, false)?,
            to_v: w.linear(&p("to_v"), kv_dim, dim, false)?,
            to_out: w.linear(&p("to_out.0"), dim, dim, true)?,
            heads,
        })
    }

    /// Self-attention when `context` is `None`, else cross-attention to `context`.
    ///
    /// # Shapes
    /// `x: [B, S, dim]`, `context: [B, T, kv_dim]` → `[B, S, dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let q = split_heads(self.to_q.forward(x.clone()), self.heads);
        let kv = match context {
            Some(c) => c.clone(),
            None => x,
        };
        let k = split_heads(self.to_k.forward(kv.clone()), self.heads);
        let v = split_heads(self.to_v.forward(kv), self.heads);
        self.to_out.forward(sdpa_merge_heads(q, k, v))
    }
}
