//! FLUX single-stream block: diffusers `FluxSingleTransformerBlock` (BFL `SingleStreamBlock`):
//! parallel attention (pre-only, no out proj) and GELU-tanh MLP over the joint sequence, one
//! `proj_out` over their concatenation.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use dreamforge_core::{Result, WeightLoader};

use super::attention::QkvProj;
use super::double_block::{chunks, modulate};
use super::replace::TokenReplace;
use super::rope::Rope;
use crate::layers::{linear_rows, sdpa_merge_heads};

#[derive(Module, Debug)]
pub struct SingleBlock {
    pub norm: Linear,
    pub attn: QkvProj,
    pub proj_mlp: Linear,
    pub proj_out: Linear,
}

impl SingleBlock {
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        dim: usize,
        heads: usize,
        mlp_hidden: usize,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            norm: w.linear(&p("norm.linear"), dim, 3 * dim, true)?,
            attn: QkvProj::load(
                w,
                &p("attn"),
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                dim,
                heads,
            )?,
            proj_mlp: w.linear(&p("proj_mlp"), dim, mlp_hidden, true)?,
            proj_out: w.linear(&p("proj_out"), dim + mlp_hidden, dim, true)?,
        })
    }

    /// # Shapes
    /// `x: [B, T + L, dim]` (text first), `temb: [B, dim]` → `[B, T + L, dim]`
    pub fn forward(&self, x: Tensor<3>, temb: Tensor<2>, rope: &Rope) -> Tensor<3> {
        self.forward_replacing(x, temb, rope, None, None)
    }

    /// [`Self::forward`] with token replacement on the attention input's image tokens, which
    /// start after the first `text_len` tokens (`(replace, text_len)`; the MLP branch keeps
    /// the unmodified tokens), and / or attention sharing (`(share, text_len)`).
    pub fn forward_replacing(
        &self,
        x: Tensor<3>,
        temb: Tensor<2>,
        rope: &Rope,
        replace: Option<(&TokenReplace, usize)>,
        share: Option<(&TokenReplace, usize)>,
    ) -> Tensor<3> {
        let m = chunks(self.norm.forward(silu(temb)), 3); // shift, scale, gate
        let xn = modulate(x.clone(), m[0].clone(), m[1].clone());
        let mlp = crate::layers::gelu_tanh(linear_rows(&self.proj_mlp, xn.clone()));
        let xa = match replace {
            Some((r, text_len)) => r.apply_offset(xn, text_len),
            None => xn,
        };
        let (q, k, v) = self.attn.forward(xa);
        let a = match share {
            Some((r, text_len)) => r.shared_attention(q, k, v, rope, text_len),
            None => sdpa_merge_heads(rope.apply(q), rope.apply(k), v),
        };
        let h = linear_rows(&self.proj_out, Tensor::cat(vec![a, mlp], 2));
        x + m[2].clone() * h
    }
}
