//! T5 feed-forward (transformers `T5DenseActDense` and `T5DenseGatedActDense`): `wo(act(wi(x)))`
//! for original T5 (`relu`), `wo(act(wi_0(x)) · wi_1(x))` for T5 v1.1 (`gated-gelu`). No biases;
//! dropout is inference-off.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, relu, silu};

use dreamforge_core::{Result, WeightLoader};

use super::config::T5Activation;

/// Applies a T5 feed-forward activation.
pub fn activate<const D: usize>(act: T5Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        T5Activation::Relu => relu(x),
        T5Activation::Gelu => gelu(x),
        T5Activation::GeluTanh => crate::layers::gelu_tanh(x),
        T5Activation::Silu => silu(x),
    }
}

/// `DenseReluDense` (the upstream name whatever the activation).
#[derive(Module, Debug)]
pub struct T5DenseReluDense {
    /// `wi` (non-gated) or `wi_0` (gated, the activated branch).
    pub wi: Linear,
    /// `wi_1`, the linear gate branch (gated only).
    pub wi_1: Option<Linear>,
    pub wo: Linear,
    #[module(skip)]
    pub act: T5Activation,
}

impl T5DenseReluDense {
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        d_model: usize,
        d_ff: usize,
        gated: bool,
        act: T5Activation,
    ) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        let (wi, wi_1) = if gated {
            (
                w.linear(&p("wi_0"), d_model, d_ff, false)?,
                Some(w.linear(&p("wi_1"), d_model, d_ff, false)?),
            )
        } else {
            (w.linear(&p("wi"), d_model, d_ff, false)?, None)
        };
        Ok(Self {
            wi,
            wi_1,
            wo: w.linear(&p("wo"), d_ff, d_model, false)?,
            act,
        })
    }

    /// # Shapes
    /// `[B, T, d_model]` → `[B, T, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = activate(self.act, self.wi.forward(x.clone()));
        let h = match &self.wi_1 {
            Some(gate) => h * gate.forward(x),
            None => h,
        };
        self.wo.forward(h)
    }
}
