//! The UNet's bottleneck: diffusers `UNetMidBlock2DCrossAttn` (`models/unets/unet_2d_blocks.py`,
//! `num_layers=1`): resnet → spatial transformer → resnet at the lowest resolution, the resnets'
//! outputs divided by `mid_block_scale_factor`.

use burn::module::Module;
use burn::tensor::Tensor;

use dreamforge_core::{Result, WeightLoader};

use super::resnet::{ResnetBlock2D, ResnetSpec};
use super::transformer::{Transformer2DModel, TransformerSpec};

#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    /// Two resnets around the attention.
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// Loads `{prefix}.resnets.0`, `{prefix}.attentions.0`, `{prefix}.resnets.1`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        channels: usize,
        resnet: ResnetSpec,
        attention: TransformerSpec,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let res = |j: usize| {
            ResnetBlock2D::load(
                w,
                &format!("{prefix}.resnets.{j}"),
                channels,
                channels,
                resnet,
                output_scale_factor,
            )
        };
        Ok(Self {
            resnets: vec![res(0)?, res(1)?],
            attentions: vec![Transformer2DModel::load(
                w,
                &format!("{prefix}.attentions.0"),
                channels,
                attention,
            )?],
        })
    }

    /// # Shapes
    /// `x: [B, C, H, W]`, `temb_act: [B, temb]`, `context: [B, T, cross_dim]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, temb_act: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, temb_act);
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, context), temb_act);
        }
        x
    }
}
