//! The UNet's decoder levels (diffusers `models/unets/unet_2d_blocks.py` `UpBlock2D`,
//! `CrossAttnUpBlock2D`; `models/upsampling.py` `Upsample2D(use_conv=True)`): each resnet takes
//! the previous output concatenated (channels) with the most recent unused skip state, a spatial
//! transformer follows each resnet in the cross-attention variant, and all but the last level
//! end with nearest-neighbour upsampling to the next skip's size and a 3x3 conv.

use burn::module::Module;
use burn::tensor::Tensor;

use dreamforge_core::{Result, WeightLoader};

use super::resnet::{ResnetBlock2D, ResnetSpec};
use super::transformer::{Transformer2DModel, TransformerSpec};
use crate::vae::conv::Conv2d;

/// Nearest-neighbour resize (x2, or to the size of the skip it meets when the input size was
/// not a multiple of the UNet's total downscale), then a 3x3 conv with padding 1.
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    /// Loads `{prefix}.conv`.
    pub fn load(w: &WeightLoader, prefix: &str, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(w, &format!("{prefix}.conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, size[0], size[1]]` (`size` = `[2H, 2W]` for sizes divisible by
    /// the total downscale)
    pub fn forward(&self, x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
        self.conv.forward(crate::layers::nearest_resize(x, size))
    }
}

/// One decoder level; `attentions` is empty for `UpBlock2D` and holds one transformer per
/// resnet for `CrossAttnUpBlock2D`.
#[derive(Module, Debug)]
pub struct UpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Option<Upsample2D>,
}

/// How to build one up level (channel names as upstream's `get_up_block` arguments).
#[derive(Debug, Clone)]
pub struct UpBlockSpec {
    /// Channels of the deepest skip this level consumes (the next-higher-resolution level's).
    pub c_in: usize,
    /// Channels coming from the level below (or the mid block).
    pub c_prev: usize,
    pub c_out: usize,
    /// Resnets (the matching down level's count + 1).
    pub layers: usize,
    /// One transformer spec per resnet (cross-attention blocks only).
    pub attention: Option<Vec<TransformerSpec>>,
    pub upsample: bool,
}

impl UpBlock2D {
    /// Loads `{prefix}.resnets.{j}`, `{prefix}.attentions.{j}`, `{prefix}.upsamplers.0`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        spec: &UpBlockSpec,
        resnet: ResnetSpec,
    ) -> Result<Self> {
        let resnets = (0..spec.layers)
            .map(|j| {
                let skip = if j + 1 == spec.layers {
                    spec.c_in
                } else {
                    spec.c_out
                };
                let from = if j == 0 { spec.c_prev } else { spec.c_out };
                ResnetBlock2D::load(
                    w,
                    &format!("{prefix}.resnets.{j}"),
                    from + skip,
                    spec.c_out,
                    resnet,
                    1.0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = match &spec.attention {
            Some(specs) => specs
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    Transformer2DModel::load(w, &format!("{prefix}.attentions.{j}"), spec.c_out, *t)
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let upsamplers = if spec.upsample {
            Some(Upsample2D::load(
                w,
                &format!("{prefix}.upsamplers.0"),
                spec.c_out,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsamplers,
        })
    }

    /// Pops one skip state per resnet from the end of `skips`; upsamples to the spatial size of
    /// the skip the next level will pop first.
    ///
    /// # Shapes
    /// `x: [B, c_prev, H, W]`, skips as the down blocks pushed them → `[B, c_out, H', W']`
    /// (H' = the next skip's height when upsampling, else H)
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb_act: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the UNet pushes one skip state per up-block resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), temb_act);
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context);
            }
        }
        if let Some(up) = &self.upsamplers {
            let size = match skips.last() {
                Some(next) => {
                    let [_, _, h, w] = next.dims();
                    [h, w]
                }
                None => {
                    let [_, _, h, w] = x.dims();
                    [2 * h, 2 * w]
                }
            };
            x = up.forward(x, size);
        }
        x
    }
}
