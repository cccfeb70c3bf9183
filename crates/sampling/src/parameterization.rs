//! What a denoiser predicts — ε, v, x₀ or a flow velocity — and the conversions the samplers and
//! the trainer need, following the `prediction_type` branches of diffusers
//! `scheduling_euler_discrete.py::step` (σ space), `scheduling_dpmsolver_multistep.py::
//! convert_model_output` and `scheduling_ddim.py::step` (α space), and
//! `scheduling_ddpm.py::get_velocity` (the v target).
//!
//! Two ways to write a noisy sample:
//! - σ space (Euler samplers): `x = x₀ + σ·ε`;
//! - α space (DDIM, DPM-Solver, training): `x = α·x₀ + s·ε` with `α = √ᾱ`, `s = √(1−ᾱ)`
//!   (equivalently `α = 1/√(σ²+1)`, `s = σ·α`).
//!
//! A flow model predicts `v = ε − x₀` on `x_t = (1−t)·x₀ + t·ε`. Its sample relates to the α-space
//! one by `t = s/(α+s)`, `x_t = x/(α+s)`, which gives `x̂₀ = (x − s·v)/(α+s)` (diffusers'
//! `flow_prediction` when `α = 1 − σ`).

use std::str::FromStr;

use burn::tensor::Tensor;

use crate::ddpm::SdScheduleError;

/// A model's prediction target, parsed from diffusers `prediction_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parameterization {
    /// `"epsilon"`: the noise ε.
    Epsilon,
    /// `"v_prediction"`: `v = α·ε − s·x₀`.
    VPrediction,
    /// `"sample"`: x₀ itself.
    Sample,
    /// `"flow"` (or diffusers' `"flow_prediction"`): the velocity `ε − x₀`.
    Flow,
}

impl Parameterization {
    /// The accepted `prediction_type` strings.
    pub const NAMES: &[&str] = &["epsilon", "v_prediction", "sample", "flow"];

    /// Parses a diffusers `prediction_type`.
    pub fn parse(s: &str) -> Result<Self, SdScheduleError> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" => Ok(Self::Sample),
            "flow" | "flow_prediction" => Ok(Self::Flow),
            other => Err(SdScheduleError::Unsupported {
                field: "prediction_type",
                value: format!("`{other}`"),
                context: format!(" (expected one of: {})", Self::NAMES.join(", ")),
            }),
        }
    }

    /// The diffusers `prediction_type` string.
    pub fn name(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
            Self::Sample => "sample",
            Self::Flow => "flow",
        }
    }

    /// x̂₀ from a model output on a σ-space sample `x = x₀ + σ·ε` (Euler samplers).
    ///
    /// # Shapes
    /// `x`, `out`: any shape, equal
    pub fn x0_sigma<const D: usize>(self, x: Tensor<D>, out: Tensor<D>, sigma: f32) -> Tensor<D> {
        match self {
            Self::Epsilon => x - out * sigma,
            // diffusers: model_output * (-σ / (σ²+1)^½) + sample / (σ²+1)
            Self::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                out * (-sigma / s2.sqrt()) + x / s2
            }
            Self::Sample => out,
            Self::Flow => (x - out * sigma) / (1.0 + sigma),
        }
    }

    /// x̂₀ from a model output on an α-space sample `x = α·x₀ + s·ε`.
    ///
    /// # Shapes
    /// `x`, `out`: any shape, equal
    pub fn x0_alpha<const D: usize>(
        self,
        x: Tensor<D>,
        out: Tensor<D>,
        alpha: f32,
        sigma: f32,
    ) -> Tensor<D> {
        match self {
            Self::Epsilon => (x - out * sigma) / alpha,
            Self::VPrediction => x * alpha - out * sigma,
            Self::Sample => out,
            Self::Flow => (x - out * sigma) / (alpha + sigma),
        }
    }

    /// (x̂₀, ε̂) from a model output on an α-space sample, as DDIM forms them.
    ///
    /// # Shapes
    /// `x`, `out`: any shape, equal
    pub fn x0_eps_alpha<const D: usize>(
        self,
        x: Tensor<D>,
        out: Tensor<D>,
        alpha: f32,
        sigma: f32,
    ) -> (Tensor<D>, Tensor<D>) {
        match self {
            Self::Epsilon => ((x - out.clone() * sigma) / alpha, out),
            Self::VPrediction => (
                x.clone() * alpha - out.clone() * sigma,
                out * alpha + x * sigma,
            ),
            Self::Sample => {
                let eps = (x - out.clone() * alpha) / sigma;
                (out, eps)
            }
            Self::Flow => {
                let x0 = (x - out.clone() * sigma) / (alpha + sigma);
                (x0.clone(), out + x0)
            }
        }
    }

    /// The training target for clean `x0` noised with `noise` at `ᾱ = alpha_bar`
    /// (`x_t = √ᾱ·x0 + √(1−ᾱ)·noise`): ε → `noise`; v → `√ᾱ·noise − √(1−ᾱ)·x0`; sample → `x0`;
    /// flow → `noise − x0` (ᾱ unused).
    ///
    /// # Shapes
    /// `x0`, `noise`: any shape, equal
    pub fn target<const D: usize>(
        self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        alpha_bar: f32,
    ) -> Tensor<D> {
        match self {
            Self::Epsilon => noise,
            Self::VPrediction => noise * alpha_bar.sqrt() - x0 * (1.0 - alpha_bar).sqrt(),
            Self::Sample => x0,
            Self::Flow => noise - x0,
        }
    }

    /// [`Self::target`] with one ᾱ per batch element.
    ///
    /// # Shapes
    /// `x0`, `noise`: `[B, ...]`; `alpha_bar`: `[B]`
    pub fn target_batched<const D: usize>(
        self,
        x0: Tensor<D>,
        noise: Tensor<D>,
        alpha_bar: Tensor<1>,
    ) -> Tensor<D> {
        match self {
            Self::Epsilon => noise,
            Self::Sample => x0,
            Self::Flow => noise - x0,
            Self::VPrediction => {
                let mut shape = [1usize; D];
                shape[0] = alpha_bar.dims()[0];
                let a = alpha_bar.clone().sqrt().reshape(shape);
                let s = (alpha_bar.neg() + 1.0).sqrt().reshape(shape);
                noise * a - x0 * s
            }
        }
    }
}

impl FromStr for Parameterization {
    type Err = SdScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Parameterization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t(v: &[f32]) -> Tensor<1> {
        Tensor::from_floats(v, &Device::flex())
    }

    fn host(x: Tensor<1>) -> Vec<f32> {
        dreamforge_core::to_host(x).data
    }

    #[test]
    fn parses_diffusers_names() {
        for (s, p) in [
            ("epsilon", Parameterization::Epsilon),
            ("v_prediction", Parameterization::VPrediction),
            ("sample", Parameterization::Sample),
            ("flow", Parameterization::Flow),
            ("flow_prediction", Parameterization::Flow),
        ] {
            assert_eq!(s.parse::<Parameterization>().unwrap(), p);
        }
        let e = Parameterization::parse("v").unwrap_err().to_string();
        assert!(
            e.contains("prediction_type") && e.contains("v_prediction"),
            "{e}"
        );
    }

    /// Every parameterization recovers x₀ from its own target, in both spaces.
    #[test]
    fn targets_invert() {
        let x0 = [0.3f32, -1.2, 2.0];
        let eps = [1.1f32, 0.4, -0.7];
        let ab = 0.3f32;
        let (a, s) = (ab.sqrt(), (1.0 - ab).sqrt());
        let sigma = s / a;
        for p in [
            Parameterization::Epsilon,
            Parameterization::VPrediction,
            Parameterization::Sample,
            Parameterization::Flow,
        ] {
            let target = p.target(t(&x0), t(&eps), ab);
            let xa = t(&x0) * a + t(&eps) * s;
            let (got, got_eps) = p.x0_eps_alpha(xa.clone(), target.clone(), a, s);
            let alpha_only = p.x0_alpha(xa.clone(), target.clone(), a, s);
            let sig = p.x0_sigma(xa / a, target, sigma);
            for (k, v) in [host(got), host(alpha_only), host(sig)].iter().enumerate() {
                for (g, w) in v.iter().zip(x0) {
                    assert!((g - w).abs() < 1e-5, "{p:?} form {k}: {g} vs {w}");
                }
            }
            for (g, w) in host(got_eps).iter().zip(eps) {
                assert!((g - w).abs() < 1e-5, "{p:?} eps: {g} vs {w}");
            }
        }
    }

    #[test]
    fn batched_target_matches_scalar() {
        let dev = Device::flex();
        let x0 = Tensor::<2>::from_floats([[1.0f32, 2.0], [3.0, 4.0]], &dev);
        let n = Tensor::<2>::from_floats([[0.5f32, -0.5], [0.25, 1.0]], &dev);
        let ab = Tensor::<1>::from_floats([0.9f32, 0.2], &dev);
        let got = Parameterization::VPrediction.target_batched(x0.clone(), n.clone(), ab);
        let row1 = Parameterization::VPrediction.target(
            x0.slice([1..2, 0..2]),
            n.slice([1..2, 0..2]),
            0.2,
        );
        let g: Vec<f32> = dreamforge_core::to_host(got.slice([1..2, 0..2])).data;
        let w: Vec<f32> = dreamforge_core::to_host(row1).data;
        assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
