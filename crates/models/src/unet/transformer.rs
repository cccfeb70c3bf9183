//! The UNet's spatial transformer: diffusers `Transformer2DModel` on continuous input
//! (`models/transformers/transformer_2d.py`) with `BasicTransformerBlock`s
//! (`models/attention.py`, `norm_type="layer_norm"`, `activation_fn="geglu"`).
//!
//! GroupNorm(eps 1e-6) → `proj_in` → blocks → `proj_out` → + residual. SD1 checkpoints store
//! `proj_in` / `proj_out` as 1x1 convs (`use_linear_projection: false`), SD2 / SDXL as linears;
//! a 1x1 conv on the feature map equals the linear on the `[B, H·W, C]` tokens, so both load into
//! one [`Linear`] applied to the tokens. Each block: LayerNorm → self-attention (`attn1`, or
//! cross-attention when `only_cross_attention`) → + x; LayerNorm → cross-attention to the text
//! (`attn2`) → + x; LayerNorm → GEGLU feed-forward (`ff.net.0.proj`, `ff.net.2`) → + x.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;

use dreamforge_core::{Result, WeightLoader};

use super::attention::Attention;
use crate::layers::layer_norm_plain;
use crate::vae::conv::GroupNorm;

/// `nn.LayerNorm` eps of `BasicTransformerBlock` (upstream's `norm_eps` default, which the UNet
/// never overrides).
const LAYER_NORM_EPS: f64 = 1e-5;
/// `Transformer2DModel`'s GroupNorm eps (hard-coded upstream, independent of the UNet's `norm_eps`).
const GROUP_NORM_EPS: f64 = 1e-6;

/// `nn.LayerNorm(dim)` with affine weight and bias.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.param(&format!("{prefix}.weight"), [dim])?,
            bias: w.param(&format!("{prefix}.bias"), [dim])?,
            eps,
        })
    }

    /// # Shapes
    /// `[B, S, dim]` → `[B, S, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let d = self.weight.dims()[0];
        layer_norm_plain(x, self.eps) * self.weight.val().reshape([1, 1, d])
            + self.bias.val().reshape([1, 1, d])
    }
}

/// `FeedForward(dim, activation_fn="geglu")`: `net.0.proj` (`dim → 2·4·dim`), split into
/// `hidden, gate`, `hidden · GELU(gate)` (exact erf GELU), `net.2` (`4·dim → dim`).
#[derive(Module, Debug)]
pub struct GegluFeedForward {
    pub proj: Linear,
    pub out: Linear,
}

impl GegluFeedForward {
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: w.linear(&format!("{prefix}.net.0.proj"), dim, 2 * inner, true)?,
            out: w.linear(&format!("{prefix}.net.2"), inner, dim, true)?,
        })
    }

    /// # Shapes
    /// `[B, S, dim]` → `[B, S, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let h = self.proj.forward(x);
        let inner = h.dims()[2] / 2;
        let hidden = h.clone().slice([0..b, 0..s, 0..inner]);
        let gate = h.slice([0..b, 0..s, inner..2 * inner]);
        self.out.forward(hidden * gelu(gate))
    }
}

/// What a transformer block needs to know about its place in the UNet.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec {
    pub heads: usize,
    pub cross_dim: usize,
    pub only_cross: bool,
    pub layers: usize,
    pub linear_projection: bool,
    pub groups: usize,
}

#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: GegluFeedForward,
    /// `attn1` attends to the text instead of the tokens themselves.
    pub only_cross: bool,
}

impl BasicTransformerBlock {
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize, spec: TransformerSpec) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        let attn1_kv = if spec.only_cross { spec.cross_dim } else { dim };
        Ok(Self {
            norm1: LayerNorm::load(w, &p("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: Attention::load(w, &p("attn1"), dim, attn1_kv, spec.heads)?,
            norm2: LayerNorm::load(w, &p("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: Attention::load(w, &p("attn2"), dim, spec.cross_dim, spec.heads)?,
            norm3: LayerNorm::load(w, &p("norm3"), dim, LAYER_NORM_EPS)?,
            ff: GegluFeedForward::load(w, &p("ff"), dim)?,
            only_cross: spec.only_cross,
        })
    }

    /// # Shapes
    /// `x: [B, S, dim]`, `context: [B, T, cross_dim]` → `[B, S, dim]`
    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let self_ctx = self.only_cross.then_some(context);
        let x = self.attn1.forward(self.norm1.forward(x.clone()), self_ctx) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// A projection stored as `nn.Linear` `[out, in]` or, for `use_linear_projection: false`, as a
/// 1x1 `nn.Conv2d` `[out, in, 1, 1]` (strictly the shape the config implies).
fn projection(
    w: &WeightLoader,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    conv: bool,
) -> Result<Linear> {
    if !conv {
        return w.linear(prefix, d_in, d_out, true);
    }
    let weight = w.host(&format!("{prefix}.weight"), &[d_out, d_in, 1, 1])?;
    let weight = dreamforge_core::HostTensor::new(vec![d_out, d_in], weight.data).transpose2();
    let weight = Param::from_tensor(weight.to_device(w.device()));
    w.name_param(weight.id, &format!("{prefix}.weight"));
    Ok(Linear {
        weight,
        bias: Some(w.param(&format!("{prefix}.bias"), [d_out])?),
    })
}

#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
}

impl Transformer2DModel {
    /// Loads `{prefix}.norm`, `{prefix}.proj_in`, `{prefix}.transformer_blocks.{k}`,
    /// `{prefix}.proj_out` for `channels` = heads · head_dim (the UNet's inner dim equals the
    /// block's channel count).
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        channels: usize,
        spec: TransformerSpec,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        let conv = !spec.linear_projection;
        Ok(Self {
            norm: GroupNorm::load(w, &p("norm"), channels, spec.groups, GROUP_NORM_EPS)?,
            proj_in: projection(w, &p("proj_in"), channels, channels, conv)?,
            transformer_blocks: (0..spec.layers)
                .map(|k| {
                    BasicTransformerBlock::load(
                        w,
                        &p(&format!("transformer_blocks.{k}")),
                        channels,
                        spec,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: projection(w, &p("proj_out"), channels, channels, conv)?,
        })
    }

    /// # Shapes
    /// `x: [B, C, H, W]`, `context: [B, T, cross_dim]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let mut t = self.proj_in.forward(tokens);
        for block in &self.transformer_blocks {
            t = block.forward(t, context);
        }
        let out = self
            .proj_out
            .forward(t)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        out + x
    }
}
