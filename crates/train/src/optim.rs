//! Optimizer settings as part of a run config (serde), built into an [`Optimizer`]: AdamW
//! (Burn's `ModuleOptimizer`; the default) with PyTorch's defaults for betas / eps and the
//! diffusers training scripts' weight decay (1e-2), or [`Prodigy`] (`"algorithm": {"prodigy":
//! {...}}`, see [`ProdigyConfig`]; it shares `beta1` / `beta2` / `eps` / `weight_decay` and the
//! clipping options, and wants a base learning rate of about 1.0). The learning rate is given
//! per step by the schedule, not stored here. [`ModelOptimizer`] is what the train steps and
//! checkpoints take: Burn's `ModuleOptimizer`, [`Prodigy`] and [`Optimizer`] implement it.

use std::path::Path;

use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use serde::{Deserialize, Deserializer, Serialize};

use crate::prodigy::{Prodigy, ProdigyConfig};

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

/// Optimizer settings.
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
    /// `"adamw"` (the default, not written) or `{"prodigy": {...}}` (also `"prodigy"` for its
    /// defaults).
    #[serde(default, skip_serializing_if = "Algorithm::is_adamw")]
    pub algorithm: Algorithm,
}

/// Which optimizer a config builds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub enum Algorithm {
    #[default]
    #[serde(rename = "adamw")]
    AdamW,
    #[serde(rename = "prodigy")]
    Prodigy(ProdigyConfig),
}

impl Algorithm {
    fn is_adamw(&self) -> bool {
        *self == Self::AdamW
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let bad = |v: &Value| {
            D::Error::custom(format!(
                "unknown optimizer {v}: expected \"adamw\", \"prodigy\" or {{\"prodigy\": {{...}}}}"
            ))
        };
        let v = Value::deserialize(d)?;
        match &v {
            Value::String(s) if s == "adamw" => Ok(Self::AdamW),
            Value::String(s) if s == "prodigy" => Ok(Self::Prodigy(ProdigyConfig::default())),
            Value::Object(m) if m.len() == 1 => {
                let (k, inner) = m.iter().next().expect("one entry");
                match k.as_str() {
                    "adamw" if inner.as_object().is_some_and(|o| o.is_empty()) => Ok(Self::AdamW),
                    "prodigy" => ProdigyConfig::deserialize(inner)
                        .map(Self::Prodigy)
                        .map_err(|e| D::Error::custom(format!("prodigy: {e}"))),
                    _ => Err(bad(&v)),
                }
            }
            _ => Err(bad(&v)),
        }
    }
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

/// An f32 setting as the decimal it was written as (0.999, not 0.99900001287…), so f64
/// arithmetic (Prodigy's) sees the value a Python reference would.
fn widen(x: f32) -> f64 {
    x.to_string().parse().expect("f32 prints as a decimal")
}

impl OptimizerConfig {
    pub fn build(&self) -> Optimizer {
        let per_tensor = self
            .grad_clip_norm
            .filter(|_| self.grad_clip_mode == ClipMode::PerTensor);
        match &self.algorithm {
            Algorithm::AdamW => Optimizer::Burn(
                AdamWConfig::new()
                    .with_beta_1(self.beta1)
                    .with_beta_2(self.beta2)
                    .with_epsilon(self.eps)
                    .with_weight_decay(self.weight_decay)
                    .with_grad_clipping(per_tensor.map(GradientClippingConfig::Norm))
                    .init(),
            ),
            Algorithm::Prodigy(p) => Optimizer::Prodigy(Prodigy::new(
                p,
                (widen(self.beta1), widen(self.beta2)),
                widen(self.eps),
                widen(self.weight_decay),
                per_tensor,
            )),
        }
    }

    /// The global clipping norm the train step applies itself (`None` when clipping is per
    /// tensor, which the optimizer does).
    pub fn global_clip(&self) -> Option<f32> {
        self.grad_clip_norm
            .filter(|_| self.grad_clip_mode == ClipMode::Global)
    }
}

/// An optimizer over a whole module whose state a checkpoint can hold.
pub trait ModelOptimizer {
    /// Updates `model` with `grads` at learning rate `lr`, advancing the state.
    fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M;
    /// The state's file name inside a checkpoint folder.
    fn state_file(&self) -> &'static str;
    /// Writes the state to `path`.
    fn save_state(&self, path: &Path) -> Result<(), String>;
    /// Reads a state [`save_state`](Self::save_state) wrote into this freshly built optimizer.
    fn load_state(self, path: &Path) -> Result<Self, String>
    where
        Self: Sized;
}

impl ModelOptimizer for ModuleOptimizer {
    fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        ModuleOptimizer::step(self, lr, model, grads)
    }

    fn state_file(&self) -> &'static str {
        "optim.bpk"
    }

    fn save_state(&self, path: &Path) -> Result<(), String> {
        self.save(path).map_err(|e| format!("{e:?}"))
    }

    fn load_state(self, path: &Path) -> Result<Self, String> {
        self.load(path).map_err(|e| format!("{e:?}"))
    }
}

impl ModelOptimizer for Prodigy {
    fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        Prodigy::step(self, lr, model, grads)
    }

    fn state_file(&self) -> &'static str {
        "optim.safetensors"
    }

    fn save_state(&self, path: &Path) -> Result<(), String> {
        self.save(path)
    }

    fn load_state(self, path: &Path) -> Result<Self, String> {
        self.load(path)
    }
}

/// What [`OptimizerConfig::build`] makes: a Burn optimizer (AdamW) or Prodigy.
pub enum Optimizer {
    Burn(ModuleOptimizer),
    Prodigy(Prodigy),
}

impl From<ModuleOptimizer> for Optimizer {
    fn from(o: ModuleOptimizer) -> Self {
        Self::Burn(o)
    }
}

impl From<Prodigy> for Optimizer {
    fn from(o: Prodigy) -> Self {
        Self::Prodigy(o)
    }
}

impl ModelOptimizer for Optimizer {
    fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        match self {
            Self::Burn(o) => ModelOptimizer::step(o, lr, model, grads),
            Self::Prodigy(o) => ModelOptimizer::step(o, lr, model, grads),
        }
    }

    fn state_file(&self) -> &'static str {
        match self {
            Self::Burn(o) => o.state_file(),
            Self::Prodigy(o) => o.state_file(),
        }
    }

    fn save_state(&self, path: &Path) -> Result<(), String> {
        match self {
            Self::Burn(o) => o.save_state(path),
            Self::Prodigy(o) => o.save_state(path),
        }
    }

    fn load_state(self, path: &Path) -> Result<Self, String> {
        match self {
            Self::Burn(o) => o.load_state(path).map(Self::Burn),
            Self::Prodigy(o) => o.load_state(path).map(Self::Prodigy),
        }
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
        assert!(!serde_json::to_string(&c).unwrap().contains("algorithm"));
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

    #[test]
    fn prodigy_is_selected_by_name_or_with_settings_and_round_trips() {
        let parse = |s: &str| serde_json::from_str::<OptimizerConfig>(s);
        let named = parse(r#"{"algorithm": "prodigy"}"#).unwrap();
        assert_eq!(
            named.algorithm,
            Algorithm::Prodigy(ProdigyConfig::default())
        );
        let p = ProdigyConfig::default();
        assert_eq!(
            (
                p.beta3,
                p.decouple,
                p.use_bias_correction,
                p.safeguard_warmup
            ),
            (None, true, false, false)
        );
        assert_eq!((p.d0, p.d_coef, p.growth_rate), (1e-6, 1.0, None));
        let full = parse(
            r#"{"weight_decay": 0.0, "algorithm": {"prodigy": {"d_coef": 0.5, "growth_rate": 1.02,
                "safeguard_warmup": true}}}"#,
        )
        .unwrap();
        let Algorithm::Prodigy(p) = full.algorithm else {
            panic!("not prodigy")
        };
        assert_eq!(
            (p.d_coef, p.growth_rate, p.safeguard_warmup),
            (0.5, Some(1.02), true)
        );
        for c in [named, full] {
            let text = serde_json::to_string(&c).unwrap();
            assert!(text.contains(r#""algorithm":{"prodigy":{"#), "{text}");
            assert_eq!(parse(&text).unwrap(), c);
            assert!(matches!(c.build(), Optimizer::Prodigy(_)));
        }
        assert_eq!(
            parse(r#"{"algorithm": "adamw"}"#).unwrap(),
            OptimizerConfig::default()
        );
        assert!(matches!(
            OptimizerConfig::default().build(),
            Optimizer::Burn(_)
        ));
        let e = parse(r#"{"algorithm": "lion"}"#).unwrap_err().to_string();
        assert!(
            e.contains("unknown optimizer") && e.contains("prodigy"),
            "{e}"
        );
        let e = parse(r#"{"algorithm": {"prodigy": {"d0": "x"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("prodigy: invalid type"), "{e}");
    }
}
