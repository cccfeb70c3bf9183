//! `UNetMidBlock2D` as the AutoencoderKL encoder and decoder use it (diffusers
//! `unets/unet_2d_blocks.py`, no time embedding): resnet → attention (optional,
//! `mid_block_add_attention`) → resnet, all at the deepest channel count.

use burn::module::Module;
use burn::tensor::Tensor;

use dreamforge_core::{Result, WeightLoader};

use super::attention::VaeAttention;
use super::resnet::ResnetBlock2D;

#[derive(Module, Debug)]
pub struct MidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attention: Option<VaeAttention>,
}

impl MidBlock2D {
    /// Loads `{prefix}.resnets.{0,1}` and, when `add_attention`, `{prefix}.attentions.0`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        channels: usize,
        groups: usize,
        add_attention: bool,
    ) -> Result<Self> {
        Ok(Self {
            resnets: (0..2)
                .map(|i| {
                    ResnetBlock2D::load(
                        w,
                        &format!("{prefix}.resnets.{i}"),
                        channels,
                        channels,
                        groups,
                    )
                })
                .collect::<Result<_>>()?,
            attention: if add_attention {
                Some(VaeAttention::load(
                    w,
                    &format!("{prefix}.attentions.0"),
                    channels,
                    groups,
                )?)
            } else {
                None
            },
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x);
        if let Some(a) = &self.attention {
            x = a.forward(x);
        }
        self.resnets[1].forward(x)
    }
}
