//! transformers `CLIPEncoderLayer`: pre-norm residual block,
//! `x + attn(ln1(x))` then `x + mlp(ln2(x))`. Also [`ClipLayerNorm`], the affine
//! `nn.LayerNorm` used here and as the model's `final_layer_norm`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::module::layer_norm;

use dreamforge_core::{Result, WeightLoader};

use super::attention::ClipAttention;
use super::config::ClipActivation;
use super::mlp::ClipMlp;

/// `nn.LayerNorm(dim, eps)` with weight and bias.
#[derive(Module, Debug)]
pub struct ClipLayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl ClipLayerNorm {
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.param(&format!("{prefix}.weight"), [dim])?,
            bias: w.param(&format!("{prefix}.bias"), [dim])?,
            eps,
        })
    }

    /// # Shapes
    /// `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(x, self.weight.val(), Some(self.bias.val()), self.eps)
    }
}

#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub layer_norm1: ClipLayerNorm,
    pub self_attn: ClipAttention,
    pub layer_norm2: ClipLayerNorm,
    pub mlp: ClipMlp,
}

/// The sizes one layer is built with.
#[derive(Debug, Clone, Copy)]
pub struct LayerDims {
    pub dim: usize,
    pub heads: usize,
    pub inner: usize,
    pub eps: f64,
    pub act: ClipActivation,
}

impl ClipEncoderLayer {
    /// `prefix` is the layer path (e.g. `text_model.encoder.layers.3`).
    pub fn load(w: &WeightLoader, prefix: &str, d: LayerDims) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            layer_norm1: ClipLayerNorm::load(w, &p("layer_norm1"), d.dim, d.eps)?,
            self_attn: ClipAttention::load(w, &p("self_attn"), d.dim, d.heads)?,
            layer_norm2: ClipLayerNorm::load(w, &p("layer_norm2"), d.dim, d.eps)?,
            mlp: ClipMlp::load(w, &p("mlp"), d.dim, d.inner, d.act)?,
        })
    }

    /// # Shapes
    /// `[B, T, dim]` → `[B, T, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}
