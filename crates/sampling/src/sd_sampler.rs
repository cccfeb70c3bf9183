//! The SD-family sampler loop as one pure function: DDIM (`scheduling_ddim.py::step`, η
//! variance), Euler (`scheduling_euler_discrete.py::step`, `s_churn = 0`), Euler ancestral
//! (`scheduling_euler_ancestral_discrete.py::step`, σ_up / σ_down) and DPM-Solver++(2M)
//! (`scheduling_dpmsolver_multistep.py`: `convert_model_output`,
//! `dpm_solver_first_order_update`, `multistep_dpm_solver_second_order_update`, the
//! lower-order first / final steps), diffusers 0.42.1. `scale_model_input` is applied here; the
//! previous x̂₀ and the step counter DPM-Solver keeps are locals. Scalar coefficients are f32 and
//! evaluated in the same order as the PyTorch expressions.

use burn::tensor::Tensor;

use crate::euler::StepInfo;
use crate::parameterization::Parameterization;
use crate::sd_schedule::{SamplerKind, SdSchedule, alpha_sigma};

/// Runs steps `start..N` of `sched` from `x`, the sample exactly as diffusers holds it before
/// step `start` (the noise times `init_noise_sigma` for text-to-image, [`crate::add_noise`] at
/// `start` for img2img).
///
/// - `denoise(model_input, timestep, i)` returns the raw model output for step `i` (ε, v, x₀ or
///   flow velocity per `param`); `model_input` is already `scale_model_input`-ed.
/// - `noise(i)` gives the noise step `i` adds (Euler ancestral always, DDIM when `eta > 0`);
///   same shape as `x`.
/// - `on_step(info, x)` runs after every step with the new sample (`info.step = i + 1`, out of
///   `info.total = N`, `info.sigma` the σ reached, for DDIM its equivalent σ) and returns the
///   sample to continue with (possibly changed, e.g. inpainting's latent blending), or `None` to
///   cancel — then this returns `Ok(None)`.
///
/// `eta` only affects DDIM. DPM-Solver's history starts empty at `start`, as after diffusers'
/// `set_begin_index`, so its first step is first order.
///
/// # Shapes
/// `x`, the model output, the noise: any shape, equal (`[B, C, H, W]` for SD latents)
///
/// # Panics
/// When `kind` is not the sampler `sched` was built for, or `start > N`.
pub fn sample_sd<const D: usize, E>(
    kind: SamplerKind,
    sched: &SdSchedule,
    param: Parameterization,
    eta: f32,
    start: usize,
    mut x: Tensor<D>,
    mut denoise: impl FnMut(Tensor<D>, f32, usize) -> Result<Tensor<D>, E>,
    mut noise: impl FnMut(usize) -> Tensor<D>,
    mut on_step: impl FnMut(StepInfo, Tensor<D>) -> Option<Tensor<D>>,
) -> Result<Option<Tensor<D>>, E> {
    assert_eq!(kind, sched.kind, "schedule built for `{}`", sched.kind);
    let n = sched.len();
    assert!(start <= n, "start {start} beyond {n} steps");
    // DPM-Solver history: the previous x̂₀ and how many steps have run (`lower_order_nums`).
    let mut prev_x0: Option<Tensor<D>> = None;
    for i in start..n {
        let t = sched.timesteps[i];
        let sigma = sched.sigmas[i];
        x = match kind {
            SamplerKind::Ddim => {
                let out = denoise(x.clone(), t, i)?;
                ddim_step(sched, param, eta, i, x, out, &mut noise)
            }
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let input = x.clone() / (sigma * sigma + 1.0).sqrt();
                let out = denoise(input, t, i)?;
                let x0 = param.x0_sigma(x.clone(), out, sigma);
                let derivative = (x.clone() - x0) / sigma;
                let to = sched.sigmas[i + 1];
                if kind == SamplerKind::Euler {
                    x + derivative * (to - sigma)
                } else {
                    let up = (to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt();
                    // diffusers takes the root unclamped; when σ_from is huge (squaredcos betas)
                    // rounding can make the radicand slightly negative and its sample NaN.
                    let down = (to * to - up * up).max(0.0).sqrt();
                    let prev = x + derivative * (down - sigma);
                    prev + noise(i) * up
                }
            }
            SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => {
                let out = denoise(x.clone(), t, i)?;
                let (alpha_s0, sigma_s0) = alpha_sigma(sigma);
                let x0 = param.x0_alpha(x.clone(), out, alpha_s0, sigma_s0);
                let (alpha_t, sigma_t) = alpha_sigma(sched.sigmas[i + 1]);
                let lambda_t = alpha_t.ln() - sigma_t.ln();
                let lambda_s0 = alpha_s0.ln() - sigma_s0.ln();
                let h = lambda_t - lambda_s0;
                let em1 = (-h).exp() - 1.0;
                let last = i == n - 1 && sched.dpm.first_order_final;
                let next = match prev_x0.take() {
                    Some(m1) if !last => {
                        let (alpha_s1, sigma_s1) = alpha_sigma(sched.sigmas[i - 1]);
                        let lambda_s1 = alpha_s1.ln() - sigma_s1.ln();
                        let r0 = (lambda_s0 - lambda_s1) / h;
                        let d1 = (x0.clone() - m1) * (1.0 / r0);
                        let base = x * (sigma_t / sigma_s0) - x0.clone() * (alpha_t * em1);
                        if sched.dpm.heun {
                            base + d1 * (alpha_t * (em1 / h + 1.0))
                        } else {
                            base - d1 * (0.5 * (alpha_t * em1))
                        }
                    }
                    _ => x * (sigma_t / sigma_s0) - x0.clone() * (alpha_t * em1),
                };
                prev_x0 = Some(x0);
                next
            }
        };
        let info = StepInfo {
            step: i + 1,
            total: n,
            sigma: sched.sigmas[i + 1],
        };
        match on_step(info, x) {
            Some(next) => x = next,
            None => return Ok(None),
        }
    }
    Ok(Some(x))
}

/// One `DDIMScheduler.step` (`use_clipped_model_output = False`).
fn ddim_step<const D: usize>(
    sched: &SdSchedule,
    param: Parameterization,
    eta: f32,
    i: usize,
    x: Tensor<D>,
    out: Tensor<D>,
    noise: &mut impl FnMut(usize) -> Tensor<D>,
) -> Tensor<D> {
    let t = sched.timesteps[i] as i64;
    let prev_t = t - sched.ddim.step_ratio;
    let alpha_t = sched.alphas_cumprod[t as usize];
    let alpha_prev = if prev_t >= 0 {
        sched.alphas_cumprod[prev_t as usize]
    } else {
        sched.ddim.final_alpha_cumprod
    };
    let beta_t = 1.0 - alpha_t;
    let (mut x0, eps) = param.x0_eps_alpha(x, out, alpha_t.sqrt(), beta_t.sqrt());
    if let Some(r) = sched.ddim.clip {
        x0 = x0.clamp(-r, r);
    }
    let beta_prev = 1.0 - alpha_prev;
    let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
    let std = eta * variance.sqrt();
    let direction = eps * (1.0 - alpha_prev - std * std).sqrt();
    let prev = x0 * alpha_prev.sqrt() + direction;
    if eta > 0.0 {
        prev + noise(i) * std
    } else {
        prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DdpmConfig, add_noise, sd_schedule};
    use burn::tensor::Device;

    fn cfg() -> DdpmConfig {
        serde_json::from_value(serde_json::json!({
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "steps_offset": 1, "set_alpha_to_one": false, "clip_sample": false
        }))
        .unwrap()
    }

    fn full(v: f32) -> Tensor<4> {
        Tensor::full([1, 2, 2, 2], v, &Device::flex())
    }

    fn host(x: Tensor<4>) -> Vec<f32> {
        dreamforge_core::to_host(x).data
    }

    /// A denoiser that knows x₀ exactly lands every sampler on x₀ (ε-prediction).
    #[test]
    fn oracle_denoiser_recovers_x0() {
        let x0 = 0.37f32;
        let eps = -1.3f32;
        for kind in [
            SamplerKind::Ddim,
            SamplerKind::Euler,
            SamplerKind::EulerAncestral,
            SamplerKind::DpmPp2m,
            SamplerKind::DpmPp2mKarras,
        ] {
            let s = sd_schedule(kind, &cfg(), 12).unwrap();
            let x = add_noise(kind, &s, full(x0), full(eps), 0);
            let scale = |i: usize| match kind {
                SamplerKind::Euler | SamplerKind::EulerAncestral => {
                    1.0 / (s.sigmas[i] * s.sigmas[i] + 1.0).sqrt()
                }
                _ => 1.0,
            };
            let mut steps = 0;
            let out = sample_sd(
                kind,
                &s,
                Parameterization::Epsilon,
                0.0,
                0,
                x,
                |inp: Tensor<4>, _t, i| -> Result<Tensor<4>, ()> {
                    // Recover ε from the (scaled) input: x = α·x0 + s·ε or x0 + σ·ε.
                    let v = host(inp)[0] / scale(i);
                    let e = match kind {
                        SamplerKind::Ddim => {
                            let a = s.alpha_cumprod_at(s.timesteps[i]);
                            (v - a.sqrt() * x0) / (1.0 - a).sqrt()
                        }
                        SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => {
                            let (a, sg) = alpha_sigma(s.sigmas[i]);
                            (v - a * x0) / sg
                        }
                        _ => (v - x0) / s.sigmas[i],
                    };
                    Ok(full(e))
                },
                |_| full(0.0),
                |info, x| {
                    steps += 1;
                    assert_eq!(info.step, steps);
                    Some(x)
                },
            )
            .unwrap()
            .unwrap();
            let got = host(out)[0];
            // DDIM ends at ᾱ₀ (set_alpha_to_one = false), the others at σ = 0.
            let want = match kind {
                SamplerKind::Ddim => {
                    let a = s.alphas_cumprod[0];
                    a.sqrt() * x0 + (1.0 - a).sqrt() * eps
                }
                _ => x0,
            };
            assert!((got - want).abs() < 1e-4, "{kind}: {got} vs {want}");
            assert_eq!(steps, 12);
        }
    }

    #[test]
    fn cancel_returns_none_and_start_skips_steps() {
        let s = sd_schedule(SamplerKind::Euler, &cfg(), 5).unwrap();
        let mut calls = Vec::new();
        let r = sample_sd(
            SamplerKind::Euler,
            &s,
            Parameterization::Epsilon,
            0.0,
            2,
            full(1.0),
            |x, _t, i| -> Result<Tensor<4>, ()> {
                calls.push(i);
                Ok(x * 0.0)
            },
            |_| full(0.0),
            |info, x| (info.step < 4).then_some(x),
        )
        .unwrap();
        assert!(r.is_none());
        assert_eq!(calls, vec![2, 3]);
    }
}
