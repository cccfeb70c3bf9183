//! transformers `CLIPMLP`: `fc2(act(fc1(x)))` with `hidden_act` (quick_gelu for OpenAI CLIP,
//! gelu for OpenCLIP bigG).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, sigmoid};

use dreamforge_core::{Result, WeightLoader};

use super::config::ClipActivation;

#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub act: ClipActivation,
}

impl ClipMlp {
    /// `prefix` is the `mlp` module path.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        dim: usize,
        inner: usize,
        act: ClipActivation,
    ) -> Result<Self> {
        Ok(Self {
            fc1: w.linear(&format!("{prefix}.fc1"), dim, inner, true)?,
            fc2: w.linear(&format!("{prefix}.fc2"), inner, dim, true)?,
            act,
        })
    }

    /// # Shapes
    /// `[B, T, dim]` → `[B, T, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.fc1.forward(x);
        let h = match self.act {
            ClipActivation::QuickGelu => h.clone() * sigmoid(h * 1.702),
            ClipActivation::Gelu => gelu(h),
            ClipActivation::GeluTanh => crate::layers::gelu_tanh(h),
        };
        self.fc2.forward(h)
    }
}
