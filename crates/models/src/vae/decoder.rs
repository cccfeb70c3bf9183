//! The AutoencoderKL `Decoder` (diffusers `models/autoencoders/vae.py`, `norm_type="group"`):
//! conv_in → mid block → `UpDecoderBlock2D`s over the reversed channel list
//! (`layers_per_block + 1` resnets, then `Upsample2D` on all but the last level) → GroupNorm →
//! SiLU → conv_out.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use dreamforge_core::{Result, WeightLoader};

use super::config::AutoencoderKlConfig;
use super::conv::{Conv2d, GroupNorm};
use super::mid_block::MidBlock2D;
use super::resnet::{ResnetBlock2D, VAE_NORM_EPS};
use super::sampling::Upsample2D;

/// `UpDecoderBlock2D`: resnets, then an optional upsampler.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// Loads `{prefix}.resnets.N` and `{prefix}.upsamplers.0` (when `upsample`).
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Result<Self> {
        Ok(Self {
            resnets: (0..layers)
                .map(|j| {
                    let c = if j == 0 { c_in } else { c_out };
                    ResnetBlock2D::load(w, &format!("{prefix}.resnets.{j}"), c, c_out, groups)
                })
                .collect::<Result<_>>()?,
            upsampler: if upsample {
                Some(Upsample2D::load(
                    w,
                    &format!("{prefix}.upsamplers.0"),
                    c_out,
                )?)
            } else {
                None
            },
        })
    }

    /// # Shapes
    /// `[B, c_in, H, W]` → `[B, c_out, H', W']` (doubled when upsampling)
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for r in &self.resnets {
            x = r.forward(x);
        }
        match &self.upsampler {
            Some(u) => u.forward(x),
            None => x,
        }
    }
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    /// Loads the `decoder.` subtree.
    pub fn load(w: &WeightLoader, prefix: &str, c: &AutoencoderKlConfig) -> Result<Self> {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let g = c.norm_num_groups;
        Ok(Self {
            conv_in: Conv2d::load(
                w,
                &format!("{prefix}.conv_in"),
                c.latent_channels,
                rev[0],
                3,
                1,
                1,
            )?,
            mid_block: MidBlock2D::load(
                w,
                &format!("{prefix}.mid_block"),
                rev[0],
                g,
                c.mid_block_add_attention,
            )?,
            up_blocks: (0..rev.len())
                .map(|i| {
                    let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                    UpDecoderBlock2D::load(
                        w,
                        &format!("{prefix}.up_blocks.{i}"),
                        c_in,
                        rev[i],
                        c.layers_per_block + 1,
                        g,
                        i + 1 < rev.len(),
                    )
                })
                .collect::<Result<_>>()?,
            conv_norm_out: GroupNorm::load(
                w,
                &format!("{prefix}.conv_norm_out"),
                c.block_out_channels[0],
                g,
                VAE_NORM_EPS,
            )?,
            conv_out: Conv2d::load(
                w,
                &format!("{prefix}.conv_out"),
                c.block_out_channels[0],
                c.out_channels,
                3,
                1,
                1,
            )?,
        })
    }

    /// # Shapes
    /// `[B, latent_channels, h, w]` → `[B, out_channels, h · f, w · f]`, f = 2^(levels − 1)
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let x = self.conv_in.forward(z);
        let mut x = self.mid_block.forward(x);
        for b in &self.up_blocks {
            x = b.forward(x);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}
