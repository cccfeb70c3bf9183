//! `ResnetBlock2D` as the AutoencoderKL uses it (diffusers `models/resnet.py`, no time
//! embedding, pre-norm, output scale 1): GroupNorm(eps 1e-6) → SiLU → conv3x3, twice, plus a
//! 1x1 `conv_shortcut` when the channel count changes.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use dreamforge_core::{Result, WeightLoader};

use super::conv::{Conv2d, GroupNorm};

/// The GroupNorm epsilon every AutoencoderKL block uses.
pub const VAE_NORM_EPS: f64 = 1e-6;

#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// Loads `{prefix}.norm1/conv1/norm2/conv2[/conv_shortcut]`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        groups: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(w, &format!("{prefix}.norm1"), c_in, groups, VAE_NORM_EPS)?,
            conv1: Conv2d::load(w, &format!("{prefix}.conv1"), c_in, c_out, 3, 1, 1)?,
            norm2: GroupNorm::load(w, &format!("{prefix}.norm2"), c_out, groups, VAE_NORM_EPS)?,
            conv2: Conv2d::load(w, &format!("{prefix}.conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::load(
                    w,
                    &format!("{prefix}.conv_shortcut"),
                    c_in,
                    c_out,
                    1,
                    1,
                    0,
                )?)
            } else {
                None
            },
        })
    }

    /// # Shapes
    /// `[B, c_in, H, W]` → `[B, c_out, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        shortcut + h
    }
}
