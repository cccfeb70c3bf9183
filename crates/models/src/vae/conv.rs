//! The two primitive layers every AutoencoderKL block is built from, loaded from PyTorch keys:
//! `nn.Conv2d` (square kernel, symmetric zero padding, weights `[out, in, k, k]` as PyTorch
//! stores them) and `nn.GroupNorm` (affine, biased variance as PyTorch computes it).

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use dreamforge_core::{Result, WeightLoader};

/// PyTorch `nn.Conv2d(in, out, k, stride, padding)` with a bias.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`
    pub weight: Param<Tensor<4>>,
    /// `[out]`
    pub bias: Param<Tensor<1>>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// Loads `{prefix}.weight` `[c_out, c_in, k, k]` and `{prefix}.bias` `[c_out]`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: w.param(&format!("{prefix}.weight"), [c_out, c_in, kernel, kernel])?,
            bias: w.param(&format!("{prefix}.bias"), [c_out])?,
            stride,
            padding,
        })
    }

    /// # Shapes
    /// `[B, c_in, H, W]` → `[B, c_out, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1),
        )
    }
}

/// PyTorch `nn.GroupNorm(groups, channels, eps)` with affine weight and bias.
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// `[C]`
    pub weight: Param<Tensor<1>>,
    /// `[C]`
    pub bias: Param<Tensor<1>>,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight: w.param(&format!("{prefix}.weight"), [channels])?,
            bias: w.param(&format!("{prefix}.bias"), [channels])?,
            groups,
            eps,
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let g = self.groups;
        let xg = x.reshape([b, g, (c / g) * h * w]);
        let mean = xg.clone().mean_dim(2);
        let xc = xg - mean;
        let var = xc.clone().square().mean_dim(2);
        let xn = (xc / (var + self.eps).sqrt()).reshape([b, c, h, w]);
        xn * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}
