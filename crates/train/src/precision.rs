//! Mixed-precision training (`torch.autocast` + `GradScaler`, the recipe of Micikevicius et
//! al. 2018, "Mixed Precision Training"): the optimizer keeps f32 master weights and f32
//! state; each step runs the forward and backward passes on a half-precision copy of the
//! parameters (`bf16` or `f16`), whose gradients arrive in f32 at the master weights through
//! the differentiable cast. `f16` (5 exponent bits) also scales the loss so small gradients do
//! not underflow, and adapts the scale dynamically: an overflow (a non-finite gradient) skips
//! the update and halves the scale, every [`LossScale::GROWTH_INTERVAL`] clean steps double it
//! (the defaults of `torch.amp.GradScaler`). `bf16` has f32's exponent range and needs no
//! scaling. Models must create their internal tensors in the dtype of their inputs (the FLUX
//! transformer and the CLIP text encoder do).
//!
//! Worth it on GPU backends with half-precision matrix units (CUDA tensor cores, wgpu with
//! `shader-f16`); on the flex CPU backend half-precision math is emulated through f32 and
//! slower, so the CPU default stays `f32`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The compute precision of a training run's forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32 (the default; the only sensible choice on the CPU).
    #[default]
    F32,
    /// bfloat16 compute, f32 master weights; no loss scaling.
    Bf16,
    /// float16 compute, f32 master weights, dynamic loss scaling.
    F16,
}

impl Precision {
    /// The compute dtype.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    /// The name `parse` reads and messages print.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Parses `f32`, `bf16`, `f16` (also `fp32`, `fp16`, `float16`, `bfloat16`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" | "no" => Some(Precision::F32),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            "f16" | "fp16" | "float16" => Some(Precision::F16),
            _ => None,
        }
    }

    /// Whether the loss is scaled (f16 only).
    pub fn scales_loss(self) -> bool {
        self == Precision::F16
    }
}

/// The dynamic loss scale of an f16 run (saved in checkpoints so a resume continues exactly).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f32,
    /// Clean steps since the last change.
    pub good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScale {
    /// Clean steps between doublings (`GradScaler(growth_interval=2000)`).
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// Records a step's outcome: `overflow` halves the scale, enough clean steps double it.
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale = (self.scale * 0.5).max(1.0);
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(f32::MAX / 4.0);
                self.good_steps = 0;
            }
        }
    }
}

struct CastParams(FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `model` with every float parameter cast to `dtype`, ids kept. On an autodiff device the
/// cast is recorded, so gradients of a loss computed from the copy reach the original
/// parameters (in their own dtype).
pub fn cast_params<M: Module>(model: M, dtype: FloatDType) -> M {
    model.map(&mut CastParams(dtype))
}

struct GradsFinite<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for GradsFinite<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            // Any inf / NaN element makes the f32 sum non-finite.
            let s = g.cast(FloatDType::F32).sum();
            self.sum = Some(match self.sum.take() {
                None => s,
                Some(acc) => acc + s,
            });
        }
    }
}

/// Whether every gradient of `model` in `grads` is finite (one device sync).
pub fn grads_finite<M: Module>(model: &M, grads: &GradientsParams) -> bool {
    let mut v = GradsFinite { grads, sum: None };
    model.visit(&mut v);
    v.sum.is_none_or(|s| s.into_scalar::<f32>().is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_scale_backs_off_and_grows() {
        let mut s = LossScale::default();
        s.update(true);
        assert_eq!(s.scale, 32768.0);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(false);
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.good_steps, 0);
        let mut floor = LossScale {
            scale: 1.0,
            good_steps: 5,
        };
        floor.update(true);
        assert_eq!(floor.scale, 1.0, "never below 1");
    }

    #[test]
    fn names_parse_and_serialize() {
        assert_eq!(Precision::parse("BF16"), Some(Precision::Bf16));
        assert_eq!(Precision::parse("fp16"), Some(Precision::F16));
        assert_eq!(Precision::parse("f32"), Some(Precision::F32));
        assert_eq!(Precision::parse("f8"), None);
        assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
        assert_eq!(Precision::default(), Precision::F32);
    }
}
