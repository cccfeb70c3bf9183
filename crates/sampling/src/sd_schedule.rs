//! Timestep / sigma tables of the SD-family samplers as pure functions of a [`DdpmConfig`] and a
//! step count, following diffusers 0.42.1 `set_timesteps` of `scheduling_ddim.py`,
//! `scheduling_euler_discrete.py`, `scheduling_euler_ancestral_discrete.py` and
//! `scheduling_dpmsolver_multistep.py` (spacing `leading` / `linspace` / `trailing` with
//! `steps_offset`, linear sigma interpolation, Karras sigmas mapped back through `_sigma_to_t`,
//! `final_sigmas_type`, `init_noise_sigma`), plus `add_noise` and the img2img pipelines'
//! `get_timesteps`.
//!
//! NumPy's float64 arithmetic is reproduced operation by operation (`np.arange` with a float step
//! fills `start + i·((start+step) − start)`, `np.round` rounds half to even, `np.interp`), so
//! timesteps match diffusers exactly. Sigmas go through PyTorch's MKL square root upstream and
//! may differ by one f32 ulp; Karras timesteps of the Euler sampler use NumPy's SIMD float32
//! `log` upstream and may differ by a few f32 ulps.

use std::str::FromStr;

use burn::tensor::Tensor;

use crate::ddpm::{DdpmConfig, SdScheduleError};

/// The SD-family samplers, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `DDIMScheduler` (η from the request; `eta = 0` is deterministic DDIM).
    Ddim,
    /// `EulerDiscreteScheduler` (honours `use_karras_sigmas` from the config).
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `DPMSolverMultistepScheduler`, `dpmsolver++`, order 2, without Karras sigmas.
    DpmPp2m,
    /// The same with `use_karras_sigmas = True`.
    DpmPp2mKarras,
}

impl SamplerKind {
    pub const NAMES: &[&str] = &["ddim", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras"];
    const ALL: [SamplerKind; 5] = [
        Self::Ddim,
        Self::Euler,
        Self::EulerAncestral,
        Self::DpmPp2m,
        Self::DpmPp2mKarras,
    ];

    /// Parses a command-line name; an unknown name is an error listing the valid ones.
    pub fn parse(name: &str) -> Result<Self, SdScheduleError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| SdScheduleError::UnknownSampler { name: name.into() })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmPp2m => "dpmpp-2m",
            Self::DpmPp2mKarras => "dpmpp-2m-karras",
        }
    }

    /// The diffusers scheduler class this sampler reproduces.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            Self::Ddim => "DDIMScheduler",
            Self::Euler => "EulerDiscreteScheduler",
            Self::EulerAncestral => "EulerAncestralDiscreteScheduler",
            Self::DpmPp2m | Self::DpmPp2mKarras => "DPMSolverMultistepScheduler",
        }
    }

    /// The class default of `timestep_spacing`.
    fn default_spacing(self) -> &'static str {
        match self {
            Self::Ddim => "leading",
            _ => "linspace",
        }
    }
}

impl FromStr for SamplerKind {
    type Err = SdScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A sampler's schedule for N inference steps.
#[derive(Debug, Clone, PartialEq)]
pub struct SdSchedule {
    /// The N timesteps the model is called with (integers for DDIM / DPM-Solver).
    pub timesteps: Vec<f32>,
    /// N+1 sigmas, terminal last (0 unless `final_sigmas_type = "sigma_min"`). For DDIM these
    /// are the equivalent `√((1−ᾱ)/ᾱ)` of each timestep and, last, of the final ᾱ
    /// (`set_alpha_to_one`); DDIM itself steps in α space.
    pub sigmas: Vec<f32>,
    /// What the pipeline multiplies the initial noise by (1 for DDIM / DPM-Solver).
    pub init_noise_sigma: f32,
    pub(crate) kind: SamplerKind,
    /// ᾱ as the sampler holds it (DDIM: for `prev_timestep` look-ups and `add_noise`).
    pub(crate) alphas_cumprod: Vec<f32>,
    pub(crate) ddim: DdimState,
    pub(crate) dpm: DpmState,
}

/// DDIM's per-run constants.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct DdimState {
    /// `num_train_timesteps // num_inference_steps`: `prev_t = t − step_ratio`.
    pub step_ratio: i64,
    /// ᾱ used when `prev_t < 0`: 1 with `set_alpha_to_one`, else ᾱ₀.
    pub final_alpha_cumprod: f32,
    /// `clip_sample_range` when `clip_sample`.
    pub clip: Option<f32>,
}

/// DPM-Solver's per-run switches.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct DpmState {
    /// The last step is first order (`euler_at_final`, `lower_order_final` with fewer than 15
    /// steps, or `final_sigmas_type = "zero"`).
    pub first_order_final: bool,
    /// `solver_type = "heun"` (else midpoint).
    pub heun: bool,
}

impl SdSchedule {
    /// The sampler this schedule was built for.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The number of steps N.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// ᾱ_t (t = 0..num_train_timesteps) as the sampler's diffusers class holds it: DDIM's
    /// training schedule; the Euler / DPM-Solver classes set ᾱ_T = 2⁻²⁴ under zero-SNR
    /// rescaling.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ᾱ at the model timestep of step `i` (DDIM: the integer timestep's entry).
    pub(crate) fn alpha_cumprod_at(&self, t: f32) -> f32 {
        self.alphas_cumprod[t as usize]
    }
}

/// diffusers img2img `get_timesteps`: `init_timestep = min(int(N·strength), N)`,
/// `t_start = max(N − init_timestep, 0)`; returns `t_start`, the index of the first step to run
/// (0..=N; N means no step runs). The strength is taken at its shortest decimal value (what a
/// user typed), so `int(N·strength)` truncates as Python's float64 does (e.g. 10·0.7 → 7, where
/// the f32 0.7 would give 6). Negative strengths give N.
pub fn img2img_start(steps: usize, strength: f32) -> usize {
    let s: f64 = strength.to_string().parse().unwrap_or(strength as f64);
    let init = (steps as f64 * s).trunc();
    let init = if init.is_nan() || init < 0.0 {
        0
    } else {
        (init as usize).min(steps)
    };
    steps - init
}

/// `set_timesteps(steps)` of the sampler's diffusers class, built from `cfg` the way
/// `<Class>.from_config(cfg)` would (class defaults for unset fields). `dpmpp-2m` /
/// `dpmpp-2m-karras` force `algorithm_type = "dpmsolver++"`, `solver_order = 2` and
/// `use_karras_sigmas` false / true whatever the config says.
pub fn sd_schedule(
    kind: SamplerKind,
    cfg: &DdpmConfig,
    steps: usize,
) -> Result<SdSchedule, SdScheduleError> {
    if steps == 0 {
        return Err(SdScheduleError::NoSteps);
    }
    let spacing = cfg
        .timestep_spacing
        .as_deref()
        .unwrap_or(kind.default_spacing());
    match kind {
        SamplerKind::Ddim => ddim(cfg, steps, spacing),
        SamplerKind::Euler | SamplerKind::EulerAncestral => euler(kind, cfg, steps, spacing),
        SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => dpm(kind, cfg, steps, spacing),
    }
}

fn reject_sigma_variants(
    cfg: &DdpmConfig,
    kind: SamplerKind,
    dpm_fields: bool,
) -> Result<(), SdScheduleError> {
    for (field, on) in [
        ("use_exponential_sigmas", cfg.use_exponential_sigmas),
        ("use_beta_sigmas", cfg.use_beta_sigmas),
        ("use_lu_lambdas", cfg.use_lu_lambdas && dpm_fields),
        ("use_flow_sigmas", cfg.use_flow_sigmas && dpm_fields),
    ] {
        if on {
            return Err(SdScheduleError::unsupported_for(field, true, kind.name()));
        }
    }
    Ok(())
}

fn bad_spacing(spacing: &str) -> SdScheduleError {
    SdScheduleError::Unsupported {
        field: "timestep_spacing",
        value: format!("`{spacing}`"),
        context: " (expected leading, linspace or trailing)".into(),
    }
}

/// `sqrt((1 − ᾱ)/ᾱ)` elementwise in f32.
fn train_sigmas(ac: &[f32]) -> Vec<f32> {
    ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// `DDIMScheduler.set_timesteps`.
fn ddim(cfg: &DdpmConfig, steps: usize, spacing: &str) -> Result<SdSchedule, SdScheduleError> {
    let n_train = cfg.num_train_timesteps;
    if steps > n_train {
        return Err(SdScheduleError::TooManySteps {
            steps,
            train: n_train,
        });
    }
    if cfg.thresholding {
        return Err(SdScheduleError::unsupported_for(
            "thresholding",
            true,
            "ddim",
        ));
    }
    let ac = cfg.alphas_cumprod()?;
    let ts: Vec<i64> = match spacing {
        "linspace" => np_linspace(0.0, (n_train - 1) as f64, steps)
            .iter()
            .rev()
            .map(|&t| round_half_even(t) as i64)
            .collect(),
        "leading" => {
            let ratio = (n_train / steps) as i64;
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + cfg.steps_offset)
                .collect()
        }
        "trailing" => np_arange(n_train as f64, 0.0, -(n_train as f64 / steps as f64))
            .iter()
            .map(|&t| round_half_even(t) as i64 - 1)
            .collect(),
        other => return Err(bad_spacing(other)),
    };
    for &t in &ts {
        if t < 0 || t as usize >= n_train {
            return Err(SdScheduleError::TimestepOutOfRange {
                timestep: t,
                train: n_train,
            });
        }
    }
    let final_alpha_cumprod = if cfg.set_alpha_to_one.unwrap_or(true) {
        1.0
    } else {
        ac[0]
    };
    let mut sigmas: Vec<f32> = ts
        .iter()
        .map(|&t| {
            let a = ac[t as usize];
            ((1.0 - a) / a).sqrt()
        })
        .collect();
    sigmas.push(((1.0 - final_alpha_cumprod) / final_alpha_cumprod).sqrt());
    Ok(SdSchedule {
        timesteps: ts.iter().map(|&t| t as f32).collect(),
        sigmas,
        init_noise_sigma: 1.0,
        kind: SamplerKind::Ddim,
        alphas_cumprod: ac,
        ddim: DdimState {
            step_ratio: (n_train / steps) as i64,
            final_alpha_cumprod,
            clip: cfg
                .clip_sample
                .unwrap_or(true)
                .then_some(cfg.clip_sample_range as f32),
        },
        dpm: DpmState::default(),
    })
}

/// ᾱ of the Euler / DPM-Solver classes: with zero-SNR rescaling, ᾱ_T = 2⁻²⁴ (not 0).
fn sigma_sampler_alphas_cumprod(cfg: &DdpmConfig) -> Result<Vec<f32>, SdScheduleError> {
    let mut ac = cfg.alphas_cumprod()?;
    if cfg.rescale_betas_zero_snr
        && let Some(last) = ac.last_mut()
    {
        *last = 2f32.powi(-24);
    }
    Ok(ac)
}

/// `EulerDiscreteScheduler.set_timesteps` / `EulerAncestralDiscreteScheduler.set_timesteps`.
fn euler(
    kind: SamplerKind,
    cfg: &DdpmConfig,
    steps: usize,
    spacing: &str,
) -> Result<SdSchedule, SdScheduleError> {
    let n_train = cfg.num_train_timesteps;
    let ancestral = kind == SamplerKind::EulerAncestral;
    let karras = !ancestral && cfg.use_karras_sigmas;
    if !ancestral {
        reject_sigma_variants(cfg, kind, false)?;
        if cfg.interpolation_type != "linear" {
            return Err(SdScheduleError::unsupported_for(
                "interpolation_type",
                format!("`{}`", cfg.interpolation_type),
                kind.name(),
            ));
        }
    }
    let ac = sigma_sampler_alphas_cumprod(cfg)?;
    let mut ts: Vec<f64> = match spacing {
        // np.linspace(0, T−1, N, dtype=float32): float64 values cast to f32.
        "linspace" => np_linspace(0.0, (n_train - 1) as f64, steps)
            .iter()
            .rev()
            .map(|&t| t as f32 as f64)
            .collect(),
        "leading" => {
            let ratio = n_train / steps;
            (0..steps)
                .rev()
                .map(|i| ((i * ratio) as f32 + cfg.steps_offset as f32) as f64)
                .collect()
        }
        "trailing" => np_arange(n_train as f64, 0.0, -(n_train as f64 / steps as f64))
            .iter()
            .map(|&t| (round_half_even(t) as f32 - 1.0) as f64)
            .collect(),
        other => return Err(bad_spacing(other)),
    };
    let train = train_sigmas(&ac);
    let train64: Vec<f64> = train.iter().map(|&s| s as f64).collect();
    let mut sig: Vec<f64> = ts.iter().map(|&t| np_interp_arange(t, &train64)).collect();
    if karras {
        let log_sigmas = log_f32(&train);
        sig = karras_sigmas(&sig, cfg, steps);
        ts = sig.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
    }
    let last = if ancestral {
        0.0
    } else {
        final_sigma(cfg, &ac, kind)?
    };
    let mut sigmas: Vec<f32> = sig.iter().map(|&s| s as f32).collect();
    sigmas.push(last);
    let continuous_v =
        !ancestral && cfg.timestep_type == "continuous" && cfg.prediction_type == "v_prediction";
    let timesteps: Vec<f32> = if continuous_v {
        sigmas[..sigmas.len() - 1]
            .iter()
            .map(|s| 0.25 * s.ln())
            .collect()
    } else {
        ts.iter().map(|&t| t as f32).collect()
    };
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let init_noise_sigma = if matches!(spacing, "linspace" | "trailing") {
        max
    } else {
        (max * max + 1.0).sqrt()
    };
    Ok(SdSchedule {
        timesteps,
        sigmas,
        init_noise_sigma,
        kind,
        alphas_cumprod: ac,
        ddim: DdimState::default(),
        dpm: DpmState::default(),
    })
}

/// `final_sigmas_type`: 0, or σ at ᾱ₀.
fn final_sigma(cfg: &DdpmConfig, ac: &[f32], kind: SamplerKind) -> Result<f32, SdScheduleError> {
    match cfg.final_sigmas_type.as_str() {
        "zero" => Ok(0.0),
        "sigma_min" => Ok(((1.0 - ac[0]) / ac[0]).sqrt()),
        other => Err(SdScheduleError::unsupported_for(
            "final_sigmas_type",
            format!("`{other}`"),
            kind.name(),
        )),
    }
}

/// `DPMSolverMultistepScheduler.set_timesteps` (dpmsolver++, order 2).
fn dpm(
    kind: SamplerKind,
    cfg: &DdpmConfig,
    steps: usize,
    spacing: &str,
) -> Result<SdSchedule, SdScheduleError> {
    let n_train = cfg.num_train_timesteps;
    reject_sigma_variants(cfg, kind, true)?;
    if cfg.thresholding {
        return Err(SdScheduleError::unsupported_for(
            "thresholding",
            true,
            kind.name(),
        ));
    }
    if let Some(v) = &cfg.variance_type {
        return Err(SdScheduleError::unsupported_for(
            "variance_type",
            format!("`{v}`"),
            kind.name(),
        ));
    }
    let heun = match cfg.solver_type.as_str() {
        "midpoint" | "logrho" | "bh1" | "bh2" => false,
        "heun" => true,
        other => {
            return Err(SdScheduleError::unsupported_for(
                "solver_type",
                format!("`{other}`"),
                kind.name(),
            ));
        }
    };
    let ac = sigma_sampler_alphas_cumprod(cfg)?;
    // lambda_min_clipped: searchsorted(flip(λ), λ_min) counts trailing timesteps to skip.
    let clipped = if cfg.lambda_min_clipped == f64::NEG_INFINITY {
        0
    } else {
        let lmin = cfg.lambda_min_clipped as f32;
        ac.iter()
            .rev()
            .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
            .take_while(|&l| l < lmin)
            .count()
    };
    let last_timestep = n_train - clipped;
    let mut ts: Vec<i64> = match spacing {
        "linspace" => {
            let v = np_linspace(0.0, last_timestep as f64 - 1.0, steps + 1);
            v[1..]
                .iter()
                .rev()
                .map(|&t| round_half_even(t) as i64)
                .collect()
        }
        "leading" => {
            let ratio = (last_timestep / (steps + 1)) as i64;
            (1..=steps as i64)
                .rev()
                .map(|i| i * ratio + cfg.steps_offset)
                .collect()
        }
        "trailing" => np_arange(last_timestep as f64, 0.0, -(n_train as f64 / steps as f64))
            .iter()
            .map(|&t| round_half_even(t) as i64 - 1)
            .collect(),
        other => return Err(bad_spacing(other)),
    };
    let train = train_sigmas(&ac);
    let train64: Vec<f64> = train.iter().map(|&s| s as f64).collect();
    let sig: Vec<f64> = if kind == SamplerKind::DpmPp2mKarras {
        let log_sigmas = log_f32(&train);
        let flipped: Vec<f64> = train64.iter().rev().copied().collect();
        let sig = karras_sigmas(&flipped, cfg, steps);
        let squaredcos = cfg.trained_betas.is_none() && cfg.beta_schedule == "squaredcos_cap_v2";
        ts = sig
            .iter()
            .map(|&s| {
                let t = sigma_to_t(s, &log_sigmas);
                // `.round()` unless squaredcos_cap_v2, then `.to(torch.int64)` truncates.
                (if squaredcos { t } else { round_half_even(t) }) as i64
            })
            .collect();
        sig
    } else {
        ts.iter()
            .map(|&t| np_interp_arange(t as f64, &train64))
            .collect()
    };
    let mut sigmas: Vec<f32> = sig.iter().map(|&s| s as f32).collect();
    let final_type = cfg.final_sigmas_type.as_str();
    sigmas.push(final_sigma(cfg, &ac, kind)?);
    let n = ts.len();
    Ok(SdSchedule {
        timesteps: ts.iter().map(|&t| t as f32).collect(),
        sigmas,
        init_noise_sigma: 1.0,
        kind,
        alphas_cumprod: ac,
        ddim: DdimState::default(),
        dpm: DpmState {
            first_order_final: cfg.euler_at_final
                || (cfg.lower_order_final && n < 15)
                || final_type == "zero",
            heun,
        },
    })
}

/// `_convert_to_karras`: ρ = 7 between σ_max = `sigma_max` or `in_sigmas[0]` and σ_min =
/// `sigma_min` or `in_sigmas[-1]` (float64).
fn karras_sigmas(in_sigmas: &[f64], cfg: &DdpmConfig, n: usize) -> Vec<f64> {
    let sigma_min = cfg.sigma_min.unwrap_or(in_sigmas[in_sigmas.len() - 1]);
    let sigma_max = cfg.sigma_max.unwrap_or(in_sigmas[0]);
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .iter()
        .map(|&r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// `np.log` of an f32 array (f32 results).
fn log_f32(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&s| (s as f64).ln() as f32).collect()
}

/// `_sigma_to_t`: the fractional training timestep whose log-σ interpolates `sigma`.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of cumsum(dists >= 0): the last index where log σ_i ≤ log σ (0 when none).
    let mut low = 0usize;
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - l as f64 >= 0.0 {
            low = i;
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// `np.linspace(a, b, n)` in float64: `i·step + a`, the last element exactly `b`.
pub(crate) fn np_linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + a).collect();
            v[n - 1] = b;
            v
        }
    }
}

/// `np.arange(start, stop, step)` in float64: length `ceil((stop − start)/step)`, elements
/// `start + i·δ` with `δ = (start + step) − start`.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return vec![];
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// NumPy's `round` (half to even).
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.interp(x, arange(len(fp)), fp)`.
fn np_interp_arange(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0];
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / 1.0;
    let r = slope * (x - j as f64) + fp[j];
    if r.is_nan() {
        let r2 = slope * (x - (j + 1) as f64) + fp[j + 1];
        if r2.is_nan() && fp[j] == fp[j + 1] {
            return fp[j];
        }
        return r2;
    }
    r
}

/// diffusers `add_noise(x0, noise, timesteps[index])` for this sampler (with the img2img
/// pipelines' `set_begin_index`): DDIM `√ᾱ_t·x0 + √(1−ᾱ_t)·noise`; Euler / Euler ancestral
/// `x0 + σ_i·noise`; DPM-Solver `α_i·x0 + s_i·noise` with `α = 1/√(σ²+1)`, `s = σ·α`.
/// `index == N` means "after the last step" and returns `x0` unchanged.
///
/// # Shapes
/// `x0`, `noise`: any shape, equal
///
/// # Panics
/// When `index > N` or `kind` is not the schedule's sampler.
pub fn add_noise<const D: usize>(
    kind: SamplerKind,
    sched: &SdSchedule,
    x0: Tensor<D>,
    noise: Tensor<D>,
    index: usize,
) -> Tensor<D> {
    assert_eq!(kind, sched.kind, "schedule built for `{}`", sched.kind);
    let n = sched.len();
    assert!(index <= n, "add_noise index {index} beyond {n} steps");
    if index == n {
        return x0;
    }
    match kind {
        SamplerKind::Ddim => {
            let a = sched.alpha_cumprod_at(sched.timesteps[index]);
            x0 * a.sqrt() + noise * (1.0 - a).sqrt()
        }
        SamplerKind::Euler | SamplerKind::EulerAncestral => x0 + noise * sched.sigmas[index],
        SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => {
            let (alpha, sigma) = alpha_sigma(sched.sigmas[index]);
            x0 * alpha + noise * sigma
        }
    }
}

/// DPM-Solver's `_sigma_to_alpha_sigma_t`: `α = 1/√(σ²+1)`, `s = σ·α` (f32).
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> DdpmConfig {
        serde_json::from_value(serde_json::json!({
            "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
            "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false
        }))
        .unwrap()
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for &n in SamplerKind::NAMES {
            assert_eq!(SamplerKind::parse(n).unwrap().name(), n);
        }
        let e = SamplerKind::parse("dpm++").unwrap_err().to_string();
        for &n in SamplerKind::NAMES {
            assert!(e.contains(n), "{e}");
        }
    }

    #[test]
    fn img2img_start_matches_python() {
        assert_eq!(img2img_start(50, 0.8), 10);
        assert_eq!(img2img_start(20, 0.6), 8);
        assert_eq!(img2img_start(10, 0.7), 3); // int(10 * 0.7) = 7 in float64
        assert_eq!(img2img_start(10, 1.0), 0);
        assert_eq!(img2img_start(10, 1.5), 0);
        assert_eq!(img2img_start(10, 0.0), 10);
        assert_eq!(img2img_start(10, -0.5), 10);
        assert_eq!(img2img_start(3, 0.3), 3); // int(0.9) = 0
    }

    #[test]
    fn ddim_leading_sd15() {
        let s = sd_schedule(SamplerKind::Ddim, &sd15(), 20).unwrap();
        let want: Vec<f32> = (0..20).rev().map(|i| (i * 50 + 1) as f32).collect();
        assert_eq!(s.timesteps, want);
        assert_eq!(s.init_noise_sigma, 1.0);
        assert_eq!(s.sigmas.len(), 21);
    }

    #[test]
    fn euler_takes_its_class_default_spacing() {
        // SD1.5's file leaves timestep_spacing unset: Euler uses linspace, σ_max as init sigma.
        let s = sd_schedule(SamplerKind::Euler, &sd15(), 7).unwrap();
        assert_eq!(
            s.timesteps,
            vec![999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]
        );
        assert_eq!(s.init_noise_sigma, s.sigmas[0]);
        let lead = DdpmConfig {
            timestep_spacing: Some("leading".into()),
            ..sd15()
        };
        let s = sd_schedule(SamplerKind::Euler, &lead, 7).unwrap();
        assert_eq!(s.timesteps[0], 6.0 * 142.0 + 1.0);
        assert_eq!(s.init_noise_sigma, (s.sigmas[0] * s.sigmas[0] + 1.0).sqrt());
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
    }

    #[test]
    fn trailing_arange_quirk_gives_an_extra_step() {
        // np.arange(1000, 0, -1000/61) has 62 elements, the last rounding to timestep -1.
        let cfg = DdpmConfig {
            timestep_spacing: Some("trailing".into()),
            ..sd15()
        };
        let s = sd_schedule(SamplerKind::Euler, &cfg, 61).unwrap();
        assert_eq!(s.timesteps.len(), 62);
        assert_eq!(*s.timesteps.last().unwrap(), -1.0);
        assert!(matches!(
            sd_schedule(SamplerKind::Ddim, &cfg, 61),
            Err(SdScheduleError::TimestepOutOfRange { timestep: -1, .. })
        ));
    }

    /// Karras sigmas: ρ = 7 spacing between the training extremes, so σ^(1/7) is linear in
    /// the step index; timesteps are the rounded training timesteps of those sigmas.
    #[test]
    fn karras_sigmas_are_linear_in_inverse_rho() {
        let s = sd_schedule(SamplerKind::DpmPp2mKarras, &sd15(), 12).unwrap();
        let ac = sd15().alphas_cumprod().unwrap();
        let smax = ((1.0 - ac[999]) / ac[999]).sqrt();
        let smin = ((1.0 - ac[0]) / ac[0]).sqrt();
        assert!((s.sigmas[0] - smax).abs() < 1e-5 * smax);
        assert!((s.sigmas[11] - smin).abs() < 1e-5);
        assert_eq!(s.sigmas[12], 0.0);
        let r: Vec<f64> = s.sigmas[..12]
            .iter()
            .map(|&x| (x as f64).powf(1.0 / 7.0))
            .collect();
        let d = r[1] - r[0];
        for w in r.windows(2) {
            assert!(((w[1] - w[0]) - d).abs() < 1e-5, "{r:?}");
        }
        assert_eq!(s.timesteps[0], 999.0);
        assert_eq!(s.timesteps[11], 0.0);
        assert!(s.timesteps.iter().all(|t| t.fract() == 0.0));
        assert!(s.timesteps.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(s.init_noise_sigma, 1.0);
    }

    #[test]
    fn zero_snr_sigma_samplers_cap_terminal_alpha() {
        let cfg = DdpmConfig {
            rescale_betas_zero_snr: true,
            timestep_spacing: Some("trailing".into()),
            prediction_type: "v_prediction".into(),
            ..sd15()
        };
        let s = sd_schedule(SamplerKind::Euler, &cfg, 10).unwrap();
        assert_eq!(s.timesteps[0], 999.0);
        assert!((s.sigmas[0] - 4096.0).abs() < 0.01, "{}", s.sigmas[0]);
        assert_eq!(s.init_noise_sigma, s.sigmas[0]);
        let d = sd_schedule(SamplerKind::Ddim, &cfg, 10).unwrap();
        assert_eq!(d.alphas_cumprod[999], 0.0);
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let cfg = DdpmConfig {
            timestep_spacing: Some("uniform".into()),
            ..sd15()
        };
        let e = sd_schedule(SamplerKind::Euler, &cfg, 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("timestep_spacing") && e.contains("uniform"),
            "{e}"
        );
        let cfg = DdpmConfig {
            use_exponential_sigmas: true,
            ..sd15()
        };
        let e = sd_schedule(SamplerKind::DpmPp2m, &cfg, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_exponential_sigmas"), "{e}");
        assert!(matches!(
            sd_schedule(SamplerKind::Ddim, &sd15(), 0),
            Err(SdScheduleError::NoSteps)
        ));
        assert!(matches!(
            sd_schedule(SamplerKind::Ddim, &sd15(), 1001),
            Err(SdScheduleError::TooManySteps { .. })
        ));
    }
}
