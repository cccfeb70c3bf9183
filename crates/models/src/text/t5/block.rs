//! One T5 encoder block (transformers `T5Block` with `is_decoder=False`): self-attention
//! sub-layer then feed-forward sub-layer (`encoder.block.N.layer.{0,1}`). The fp16 inf-clamping
//! of the reference only applies to f16 compute and is not reproduced (compute is f32).

use burn::module::Module;
use burn::tensor::Tensor;

use dreamforge_core::{Result, WeightLoader};

use super::config::T5Config;
use super::layer::{T5LayerFF, T5LayerSelfAttention};

#[derive(Module, Debug)]
pub struct T5Block {
    /// `layer.0`
    pub self_attention: T5LayerSelfAttention,
    /// `layer.1`
    pub ff: T5LayerFF,
}

impl T5Block {
    /// `prefix` = `encoder.block.N`; only block 0 has the relative attention bias.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        cfg: &T5Config,
        has_relative_attention_bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            self_attention: T5LayerSelfAttention::load(
                w,
                &format!("{prefix}.layer.0"),
                cfg,
                has_relative_attention_bias,
            )?,
            ff: T5LayerFF::load(w, &format!("{prefix}.layer.1"), cfg)?,
        })
    }

    /// # Shapes
    /// `x: [B, T, d_model]`, `bias: [B, H, T, T]` → `[B, T, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        self.ff.forward(self.self_attention.forward(x, bias))
    }
}
