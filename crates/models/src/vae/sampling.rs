//! The resolution changes between AutoencoderKL levels (diffusers `models/downsampling.py`
//! `Downsample2D(use_conv=True, padding=0)` and `models/upsampling.py`
//! `Upsample2D(use_conv=True)`).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, PadMode};

use dreamforge_core::{Result, WeightLoader};

use super::conv::Conv2d;

/// Zero-pads right and bottom by one (`F.pad(x, (0, 1, 0, 1))`), then a 3x3 conv, stride 2,
/// no padding.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    /// Loads `{prefix}.conv`.
    pub fn load(w: &WeightLoader, prefix: &str, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(w, &format!("{prefix}.conv"), channels, channels, 3, 2, 0)?,
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, ⌊(H - 2) / 2⌋ + 1, ⌊(W - 2) / 2⌋ + 1]` (H/2 for even H)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv
            .forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
    }
}

/// Nearest-neighbour x2 upsampling, then a 3x3 conv with padding 1.
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
    /// `[B, C, H, W]` → `[B, C, 2H, 2W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let up = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]),
        );
        self.conv.forward(up)
    }
}
