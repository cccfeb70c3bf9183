//! FLUX double-stream block: diffusers `FluxTransformerBlock` (BFL `DoubleStreamBlock`).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use dreamforge_core::{Result, WeightLoader};

use super::attention::JointAttention;
use super::replace::TokenReplace;
use super::rope::Rope;
use crate::layers::{layer_norm_plain, linear_rows};

pub(crate) const NORM_EPS: f64 = 1e-6;

/// `FeedForward(dim, activation_fn="gelu-tanh")`: `net.0.proj → GELU(tanh) → net.2`.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub proj_in: Linear,
    pub proj_out: Linear,
}

impl FeedForward {
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            proj_in: w.linear(&format!("{prefix}.net.0.proj"), dim, hidden, true)?,
            proj_out: w.linear(&format!("{prefix}.net.2"), hidden, dim, true)?,
        })
    }

    /// # Shapes
    /// `[B, S, dim]` → `[B, S, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear_rows(
            &self.proj_out,
            crate::layers::gelu_tanh(linear_rows(&self.proj_in, x)),
        )
    }
}

/// Splits a `[B, n·dim]` modulation into `n` tensors of `[B, 1, dim]`.
pub(crate) fn chunks(m: Tensor<2>, n: usize) -> Vec<Tensor<3>> {
    let [b, nd] = m.dims();
    m.reshape([b, 1, nd]).chunk(n, 2)
}

/// `LN(x)·(1 + scale) + shift` with a parameter-free LayerNorm.
pub(crate) fn modulate(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
    layer_norm_plain(x, NORM_EPS) * (scale + 1.0) + shift
}

#[derive(Module, Debug)]
pub struct DoubleBlock {
    pub norm1: Linear,
    pub norm1_context: Linear,
    pub attn: JointAttention,
    pub ff: FeedForward,
    pub ff_context: FeedForward,
}

impl DoubleBlock {
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        dim: usize,
        heads: usize,
        mlp_hidden: usize,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            norm1: w.linear(&p("norm1.linear"), dim, 6 * dim, true)?,
            norm1_context: w.linear(&p("norm1_context.linear"), dim, 6 * dim, true)?,
            attn: JointAttention::load(w, &p("attn"), dim, heads)?,
            ff: FeedForward::load(w, &p("ff"), dim, mlp_hidden)?,
            ff_context: FeedForward::load(w, &p("ff_context"), dim, mlp_hidden)?,
        })
    }

    /// # Shapes
    /// `img: [B, L, dim]`, `txt: [B, T, dim]`, `temb: [B, dim]` → (`img`, `txt`) same shapes
    pub fn forward(
        &self,
        img: Tensor<3>,
        txt: Tensor<3>,
        temb: Tensor<2>,
        rope: &Rope,
    ) -> (Tensor<3>, Tensor<3>) {
        self.forward_replacing(img, txt, temb, rope, None, None)
    }

    /// [`Self::forward`] with token replacement on the attention input of the image stream
    /// and / or attention sharing.
    pub fn forward_replacing(
        &self,
        img: Tensor<3>,
        txt: Tensor<3>,
        temb: Tensor<2>,
        rope: &Rope,
        replace: Option<&TokenReplace>,
        share: Option<&TokenReplace>,
    ) -> (Tensor<3>, Tensor<3>) {
        let act = silu(temb);
        let m = chunks(self.norm1.forward(act.clone()), 6);
        let c = chunks(self.norm1_context.forward(act), 6);
        // [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp]
        let img_n = modulate(img.clone(), m[0].clone(), m[1].clone());
        let txt_n = modulate(txt.clone(), c[0].clone(), c[1].clone());
        let img_n = match replace {
            Some(r) => r.apply(img_n),
            None => img_n,
        };
        let (img_a, txt_a) = self.attn.forward_shared(img_n, txt_n, rope, share);

        let img = img + m[2].clone() * img_a;
        let img_n = modulate(img.clone(), m[3].clone(), m[4].clone());
        let img = img + m[5].clone() * self.ff.forward(img_n);

        let txt = txt + c[2].clone() * txt_a;
        let txt_n = modulate(txt.clone(), c[3].clone(), c[4].clone());
        let txt = txt + c[5].clone() * self.ff_context.forward(txt_n);
        (img, txt)
    }
}
