//! The AutoencoderKL `Encoder` (diffusers `models/autoencoders/vae.py`, `double_z=True`):
//! conv_in → `DownEncoderBlock2D`s (resnets, then `Downsample2D` on all but the last level) →
//! mid block → GroupNorm → SiLU → conv_out to `2 · latent_channels` moments.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use dreamforge_core::{Result, WeightLoader};

use super::config::AutoencoderKlConfig;
use super::conv::{Conv2d, GroupNorm};
use super::mid_block::MidBlock2D;
use super::resnet::{ResnetBlock2D, VAE_NORM_EPS};
use super::sampling::Downsample2D;

/// `DownEncoderBlock2D`: `layers_per_block` resnets, then an optional downsampler.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    /// Loads `{prefix}.resnets.N` and `{prefix}.downsamplers.0` (when `downsample`).
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
    ) -> Result<Self> {
        Ok(Self {
            resnets: (0..layers)
                .map(|j| {
                    let c = if j == 0 { c_in } else { c_out };
                    ResnetBlock2D::load(w, &format!("{prefix}.resnets.{j}"), c, c_out, groups)
                })
                .collect::<Result<_>>()?,
            downsampler: if downsample {
                Some(Downsample2D::load(
                    w,
                    &format!("{prefix}.downsamplers.0"),
                    c_out,
                )?)
            } else {
                None
            },
        })
    }

    /// # Shapes
    /// `[B, c_in, H, W]` → `[B, c_out, H', W']` (halved when downsampling)
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for r in &self.resnets {
            x = r.forward(x);
        }
        match &self.downsampler {
            Some(d) => d.forward(x),
            None => x,
        }
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: MidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    /// Loads the `encoder.` subtree (the loader's names are relative to `prefix`).
    pub fn load(w: &WeightLoader, prefix: &str, c: &AutoencoderKlConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let last = *ch.last().expect("validated: non-empty");
        Ok(Self {
            conv_in: Conv2d::load(
                w,
                &format!("{prefix}.conv_in"),
                c.in_channels,
                ch[0],
                3,
                1,
                1,
            )?,
            down_blocks: (0..ch.len())
                .map(|i| {
                    let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                    DownEncoderBlock2D::load(
                        w,
                        &format!("{prefix}.down_blocks.{i}"),
                        c_in,
                        ch[i],
                        c.layers_per_block,
                        g,
                        i + 1 < ch.len(),
                    )
                })
                .collect::<Result<_>>()?,
            mid_block: MidBlock2D::load(
                w,
                &format!("{prefix}.mid_block"),
                last,
                g,
                c.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::load(
                w,
                &format!("{prefix}.conv_norm_out"),
                last,
                g,
                VAE_NORM_EPS,
            )?,
            conv_out: Conv2d::load(
                w,
                &format!("{prefix}.conv_out"),
                last,
                2 * c.latent_channels,
                3,
                1,
                1,
            )?,
        })
    }

    /// # Shapes
    /// `[B, in_channels, H, W]` → `[B, 2 · latent_channels, H / f, W / f]`,
    /// f = 2^(levels − 1)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.conv_in.forward(x);
        for b in &self.down_blocks {
            x = b.forward(x);
        }
        let x = self.mid_block.forward(x);
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}
