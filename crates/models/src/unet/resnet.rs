//! `ResnetBlock2D` with a timestep embedding, as the SD UNet blocks build it (diffusers
//! `models/resnet.py`, `time_embedding_norm="default"`, `skip_time_act=False`): GroupNorm → SiLU
//! → conv3x3, plus `time_emb_proj(SiLU(temb))` broadcast over the feature map, GroupNorm → SiLU
//! → conv3x3, a 1x1 `conv_shortcut` when the channel count changes, and the sum divided by
//! `output_scale_factor` (1 except in the mid block).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use dreamforge_core::{Result, WeightLoader};

use crate::vae::conv::{Conv2d, GroupNorm};

/// What every resnet of one UNet shares: the group count, the epsilon, the embedding width.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    pub groups: usize,
    pub eps: f64,
    pub temb: usize,
}

#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Loads `{prefix}.norm1/conv1/time_emb_proj/norm2/conv2[/conv_shortcut]`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        spec: ResnetSpec,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            norm1: GroupNorm::load(w, &p("norm1"), c_in, spec.groups, spec.eps)?,
            conv1: Conv2d::load(w, &p("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: w.linear(&p("time_emb_proj"), spec.temb, c_out, true)?,
            norm2: GroupNorm::load(w, &p("norm2"), c_out, spec.groups, spec.eps)?,
            conv2: Conv2d::load(w, &p("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::load(w, &p("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
            output_scale_factor,
        })
    }

    /// `temb_act` is `SiLU(temb)`, computed once per forward by the caller and shared by every
    /// resnet (upstream applies the same SiLU inside each block).
    ///
    /// # Shapes
    /// `x: [B, c_in, H, W]`, `temb_act: [B, temb]` → `[B, c_out, H, W]`
    pub fn forward(&self, x: Tensor<4>, temb_act: &Tensor<2>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let [b, c, _, _] = h.dims();
        let t = self
            .time_emb_proj
            .forward(temb_act.clone())
            .reshape([b, c, 1, 1]);
        let h = self.conv2.forward(silu(self.norm2.forward(h + t)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}
