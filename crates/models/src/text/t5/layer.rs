//! The two sub-layers of a T5 encoder block (transformers `T5LayerSelfAttention` and
//! `T5LayerFF`): pre-norm with `T5LayerNorm` (RMS norm, no mean subtraction, no bias), then a
//! residual add. Dropout is inference-off.

use burn::module::Module;
use burn::tensor::Tensor;

use dreamforge_core::{Result, WeightLoader};

use super::attention::T5Attention;
use super::config::T5Config;
use super::ff::T5DenseReluDense;
use crate::layers::RmsNorm;

/// `layer.0`: `x + SelfAttention(layer_norm(x))`.
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention {
    pub self_attention: T5Attention,
    pub layer_norm: RmsNorm,
}

impl T5LayerSelfAttention {
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        cfg: &T5Config,
        has_relative_attention_bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            self_attention: T5Attention::load(
                w,
                &format!("{prefix}.SelfAttention"),
                cfg.d_model,
                cfg.num_heads,
                cfg.d_kv,
                has_relative_attention_bias,
                cfg.relative_attention_num_buckets,
                cfg.relative_attention_max_distance,
            )?,
            layer_norm: RmsNorm::load(
                w,
                &format!("{prefix}.layer_norm"),
                cfg.d_model,
                cfg.layer_norm_epsilon,
            )?,
        })
    }

    /// # Shapes
    /// `x: [B, T, d_model]`, `bias: [B, H, T, T]` → `[B, T, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let h = self
            .self_attention
            .forward(self.layer_norm.forward(x.clone()), bias);
        x + h
    }
}

/// `layer.1`: `x + DenseReluDense(layer_norm(x))`.
#[derive(Module, Debug)]
pub struct T5LayerFF {
    pub dense_relu_dense: T5DenseReluDense,
    pub layer_norm: RmsNorm,
}

impl T5LayerFF {
    pub fn load(w: &WeightLoader, prefix: &str, cfg: &T5Config) -> Result<Self> {
        let (gated, act) = cfg
            .feed_forward()
            .map_err(|r| dreamforge_core::Error::config(w.set().origin(), r))?;
        Ok(Self {
            dense_relu_dense: T5DenseReluDense::load(
                w,
                &format!("{prefix}.DenseReluDense"),
                cfg.d_model,
                cfg.d_ff,
                gated,
                act,
            )?,
            layer_norm: RmsNorm::load(
                w,
                &format!("{prefix}.layer_norm"),
                cfg.d_model,
                cfg.layer_norm_epsilon,
            )?,
        })
    }

    /// # Shapes
    /// `[B, T, d_model]` → `[B, T, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self
            .dense_relu_dense
            .forward(self.layer_norm.forward(x.clone()));
        x + h
    }
}
