//! Optimizer settings as part of a run config (serde), built into Burn's `ModuleOptimizer`.
//! AdamW with PyTorch's defaults for betas / eps and the diffusers training scripts' weight
//! decay (1e-2); the learning rate is given per step by the schedule, not stored here.

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use serde::{Deserialize, Serialize};

fn beta1() -> f32 {
    0.9
}
fn beta2() -> f32 {
    0.999
}
fn eps() -> f32 {
    1e-8
}
fn weight_decay() -> f32 {
    1e-2
}

/// AdamW settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    #[serde(default = "beta1")]
    pub beta1: f32,
    #[serde(default = "beta2")]
    pub beta2: f32,
    #[serde(default = "eps")]
    pub eps: f32,
    #[serde(default = "weight_decay")]
    pub weight_decay: f32,
    /// Clip gradients to this L2 norm, per tensor or globally (see `grad_clip_mode`).
    #[serde(default)]
    pub grad_clip_norm: Option<f32>,
    /// `per_tensor` (Burn's clipping: each parameter's gradient on its own; the default) or
    /// `global` (all gradients scaled together, `torch.nn.utils.clip_grad_norm_`).
    #[serde(default, skip_serializing_if = "ClipMode::is_per_tensor")]
    pub grad_clip_mode: ClipMode,
}

/// Where the clipping norm is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipMode {
    #[default]
    PerTensor,
    Global,
}

impl ClipMode {
    fn is_per_tensor(&self) -> bool {
        *self == Self::PerTensor
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl OptimizerConfig {
    pub fn build(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.eps)
            .with_weight_decay(self.weight_decay)
            .with_grad_clipping(
                self.grad_clip_norm
                    .filter(|_| self.grad_clip_mode == ClipMode::PerTensor)
                    .map(GradientClippingConfig::Norm),
            )
            .init()
    }

    /// The global clipping norm the train step applies itself (`None` when clipping is per
    /// tensor, which the optimizer does).
    pub fn global_clip(&self) -> Option<f32> {
        self.grad_clip_norm
            .filter(|_| self.grad_clip_mode == ClipMode::Global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn defaults_roundtrip_and_configs_with_and_without_clipping_build_and_step() {
        let c = OptimizerConfig::default();
        assert_eq!(
            (c.beta1, c.beta2, c.eps, c.weight_decay),
            (0.9, 0.999, 1e-8, 1e-2)
        );
        let back: OptimizerConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        // The default mode is not written, so run configs from before the option compare equal.
        assert!(
            !serde_json::to_string(&c)
                .unwrap()
                .contains("grad_clip_mode")
        );
        let g: OptimizerConfig =
            serde_json::from_str(r#"{"grad_clip_norm": 1.0, "grad_clip_mode": "global"}"#).unwrap();
        assert_eq!((g.global_clip(), c.global_clip()), (Some(1.0), None));
        // Adam's first step moves each weight by lr against the gradient's sign whatever the
        // gradient's scale, so both configs must give exactly that update (clipping's effect
        // on later steps is Burn's, not tested here).
        let d = Device::flex().autodiff();
        for clip in [None, Some(1.0)] {
            let mut opt = OptimizerConfig {
                grad_clip_norm: clip,
                weight_decay: 0.0,
                ..c
            }
            .build();
            let mut l: Linear = LinearConfig::new(2, 1).with_bias(false).init(&d);
            l.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32, 1.0], [2, 1]),
                &d,
            ));
            let x = Tensor::<2>::from_data(TensorData::new(vec![1e4f32, -1e4], [1, 2]), &d);
            let (l, r) = crate::step::train_step(l, &mut opt, 0.1, |m| m.forward(x.clone()).sum());
            assert!(r.is_ok());
            let w: Vec<f32> = l.weight.val().into_data().try_to_vec().unwrap();
            assert!(
                (w[0] - 0.9).abs() < 1e-4 && (w[1] - 1.1).abs() < 1e-4,
                "{w:?}"
            );
        }
    }
}
