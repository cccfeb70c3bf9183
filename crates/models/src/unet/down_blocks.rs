//! The UNet's encoder levels (diffusers `models/unets/unet_2d_blocks.py` `DownBlock2D`,
//! `CrossAttnDownBlock2D`; `models/downsampling.py` `Downsample2D(use_conv=True, name="op")`):
//! resnets (each followed by a spatial transformer in the cross-attention variant), every output
//! kept as a skip connection, then a stride-2 conv on all but the last level.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;

use dreamforge_core::{Result, WeightLoader};

use super::resnet::{ResnetBlock2D, ResnetSpec};
use super::transformer::{Transformer2DModel, TransformerSpec};
use crate::vae::conv::Conv2d;

/// A 3x3 conv with stride 2. With upstream's `downsample_padding` 1 (every SD checkpoint) the
/// conv pads by one on every side; with 0 the input is first zero-padded right and bottom by one.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    pub asymmetric_pad: bool,
}

impl Downsample2D {
    /// Loads `{prefix}.conv`.
    pub fn load(w: &WeightLoader, prefix: &str, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(
                w,
                &format!("{prefix}.conv"),
                channels,
                channels,
                3,
                2,
                padding,
            )?,
            asymmetric_pad: padding == 0,
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, ⌊(H + 2p − 3) / 2⌋ + 1, …]` (⌈H / 2⌉ for padding 1)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.asymmetric_pad {
            self.conv
                .forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
        } else {
            self.conv.forward(x)
        }
    }
}

/// One encoder level; `attentions` is empty for `DownBlock2D` and holds one transformer per
/// resnet for `CrossAttnDownBlock2D`.
#[derive(Module, Debug)]
pub struct DownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Option<Downsample2D>,
}

/// How to build one down level.
#[derive(Debug, Clone)]
pub struct DownBlockSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub layers: usize,
    /// One transformer spec per resnet (cross-attention blocks only).
    pub attention: Option<Vec<TransformerSpec>>,
    /// `Some(downsample_padding)` on all but the last level.
    pub downsample: Option<usize>,
}

impl DownBlock2D {
    /// Loads `{prefix}.resnets.{j}`, `{prefix}.attentions.{j}`, `{prefix}.downsamplers.0`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        spec: &DownBlockSpec,
        resnet: ResnetSpec,
    ) -> Result<Self> {
        let resnets = (0..spec.layers)
            .map(|j| {
                let c_in = if j == 0 { spec.c_in } else { spec.c_out };
                ResnetBlock2D::load(
                    w,
                    &format!("{prefix}.resnets.{j}"),
                    c_in,
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
        let downsamplers = spec
            .downsample
            .map(|p| Downsample2D::load(w, &format!("{prefix}.downsamplers.0"), spec.c_out, p))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsamplers,
        })
    }

    /// Returns the level's output and pushes every skip state (one per resnet, plus the
    /// downsampled output) onto `skips`.
    ///
    /// # Shapes
    /// `x: [B, c_in, H, W]`, `temb_act: [B, temb]`, `context: [B, T, cross_dim]` →
    /// `[B, c_out, H', W']` (H' = ⌈H / 2⌉ when downsampling, else H)
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb_act: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, temb_act);
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context);
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}
