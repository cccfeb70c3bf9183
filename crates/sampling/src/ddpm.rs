//! The DDPM training schedule shared by the SD-family samplers and the trainer, following the
//! constructors of diffusers `scheduling_ddim.py` / `scheduling_ddpm.py` /
//! `scheduling_euler_discrete.py` / `scheduling_dpmsolver_multistep.py` (0.42.1): betas
//! (`linear`, `scaled_linear`, `squaredcos_cap_v2` via `betas_for_alpha_bar`, `trained_betas`),
//! `rescale_zero_terminal_snr`, `alphas_cumprod`; and [`DdpmConfig`], the one serde struct that
//! reads any of those classes' `scheduler_config.json` (upstream field names).
//!
//! Float arithmetic follows PyTorch on the CPU: `torch.linspace` in f32 with a fused
//! multiply-add per element, `torch.cumprod` accumulating in f64, everything else elementwise
//! in f32. PyTorch takes `sqrt` from MKL (within one ulp, not always correctly rounded), so
//! values derived through a square root may differ from diffusers by one f32 ulp.

use serde::{Deserialize, Deserializer, Serialize};

use crate::parameterization::Parameterization;

/// Errors in an SD-family schedule or sampler request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SdScheduleError {
    #[error("unknown sampler `{name}`; expected one of: {}", crate::sd_schedule::SamplerKind::NAMES.join(", "))]
    UnknownSampler { name: String },
    #[error("scheduler config `{field}` = {value} is not supported{context}")]
    Unsupported {
        field: &'static str,
        value: String,
        context: String,
    },
    #[error("steps must be at least 1")]
    NoSteps,
    #[error("{steps} steps exceed the {train} training timesteps")]
    TooManySteps { steps: usize, train: usize },
    #[error("trained_betas has {len} values for {train} training timesteps")]
    TrainedBetasLength { len: usize, train: usize },
    #[error("the schedule reaches timestep {timestep}, outside the {train} training timesteps")]
    TimestepOutOfRange { timestep: i64, train: usize },
}

impl SdScheduleError {
    pub(crate) fn unsupported(field: &'static str, value: impl std::fmt::Display) -> Self {
        Self::Unsupported {
            field,
            value: value.to_string(),
            context: String::new(),
        }
    }

    pub(crate) fn unsupported_for(
        field: &'static str,
        value: impl std::fmt::Display,
        sampler: &str,
    ) -> Self {
        Self::Unsupported {
            field,
            value: value.to_string(),
            context: format!(" by the `{sampler}` sampler"),
        }
    }
}

/// `scheduler_config.json` of any DDPM-family diffusers scheduler (`DDIMScheduler`,
/// `PNDMScheduler`, `DDPMScheduler`, `EulerDiscreteScheduler`,
/// `EulerAncestralDiscreteScheduler`, `DPMSolverMultistepScheduler`, ...), upstream field names
/// and defaults. Fields a class does not have are ignored by the samplers that lack them.
///
/// Three defaults differ between diffusers classes: `timestep_spacing` (`leading` for
/// DDIM/PNDM/DDPM, `linspace` for Euler/DPM-Solver), `clip_sample` (`true` for DDIM/DDPM) and
/// `set_alpha_to_one` (`true` for DDIM, `false` for PNDM). They are `None` here when the file
/// does not set them (or lists them in `_use_default_values`, as diffusers does for values it
/// filled in), and the sampler's own class default applies — which is what
/// `<Class>.from_config(config)` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawDdpmConfig")]
pub struct DdpmConfig {
    /// `_class_name`, when the file records it.
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: String,
    pub timestep_spacing: Option<String>,
    pub steps_offset: i64,
    pub set_alpha_to_one: Option<bool>,
    pub rescale_betas_zero_snr: bool,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub interpolation_type: String,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_type: String,
    pub final_sigmas_type: String,
    pub solver_order: usize,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub algorithm_type: String,
    pub solver_type: String,
    pub lambda_min_clipped: f64,
    pub variance_type: Option<String>,
}

impl Default for DdpmConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

/// What the JSON holds; absent fields become the defaults of [`DdpmConfig`].
#[derive(Deserialize)]
struct RawDdpmConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    #[serde(rename = "_use_default_values", default)]
    use_default_values: Vec<String>,
    num_train_timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    beta_schedule: Option<String>,
    trained_betas: Option<Vec<f64>>,
    prediction_type: Option<String>,
    timestep_spacing: Option<String>,
    steps_offset: Option<i64>,
    set_alpha_to_one: Option<bool>,
    rescale_betas_zero_snr: Option<bool>,
    clip_sample: Option<bool>,
    clip_sample_range: Option<f64>,
    thresholding: Option<bool>,
    dynamic_thresholding_ratio: Option<f64>,
    sample_max_value: Option<f64>,
    interpolation_type: Option<String>,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    use_lu_lambdas: Option<bool>,
    use_flow_sigmas: Option<bool>,
    #[serde(default, deserialize_with = "float_or_string")]
    sigma_min: Option<f64>,
    #[serde(default, deserialize_with = "float_or_string")]
    sigma_max: Option<f64>,
    timestep_type: Option<String>,
    final_sigmas_type: Option<String>,
    solver_order: Option<usize>,
    lower_order_final: Option<bool>,
    euler_at_final: Option<bool>,
    algorithm_type: Option<String>,
    solver_type: Option<String>,
    #[serde(default, deserialize_with = "float_or_string")]
    lambda_min_clipped: Option<f64>,
    variance_type: Option<String>,
}

/// A float that may be written as a string (`"-inf"`, `"inf"`, `"nan"`, `"-Infinity"`), as the
/// parity generator writes non-finite values.
fn float_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        Num(f64),
        Str(String),
    }
    match Option::<F>::deserialize(d)? {
        None => Ok(None),
        Some(F::Num(v)) => Ok(Some(v)),
        Some(F::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "inf" | "+inf" | "infinity" | "+infinity" => Ok(Some(f64::INFINITY)),
            "-inf" | "-infinity" => Ok(Some(f64::NEG_INFINITY)),
            "nan" => Ok(Some(f64::NAN)),
            other => other
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a number"))),
        },
    }
}

impl From<RawDdpmConfig> for DdpmConfig {
    fn from(r: RawDdpmConfig) -> Self {
        let defaulted = |name: &str| r.use_default_values.iter().any(|n| n == name);
        let unless_defaulted = |name: &str, v: Option<bool>| if defaulted(name) { None } else { v };
        Self {
            timestep_spacing: if defaulted("timestep_spacing") {
                None
            } else {
                r.timestep_spacing
            },
            set_alpha_to_one: unless_defaulted("set_alpha_to_one", r.set_alpha_to_one),
            clip_sample: unless_defaulted("clip_sample", r.clip_sample),
            class_name: r.class_name,
            num_train_timesteps: r.num_train_timesteps.unwrap_or(1000),
            beta_start: r.beta_start.unwrap_or(0.0001),
            beta_end: r.beta_end.unwrap_or(0.02),
            beta_schedule: r.beta_schedule.unwrap_or_else(|| "linear".into()),
            trained_betas: r.trained_betas,
            prediction_type: r.prediction_type.unwrap_or_else(|| "epsilon".into()),
            steps_offset: r.steps_offset.unwrap_or(0),
            rescale_betas_zero_snr: r.rescale_betas_zero_snr.unwrap_or(false),
            clip_sample_range: r.clip_sample_range.unwrap_or(1.0),
            thresholding: r.thresholding.unwrap_or(false),
            dynamic_thresholding_ratio: r.dynamic_thresholding_ratio.unwrap_or(0.995),
            sample_max_value: r.sample_max_value.unwrap_or(1.0),
            interpolation_type: r.interpolation_type.unwrap_or_else(|| "linear".into()),
            use_karras_sigmas: r.use_karras_sigmas.unwrap_or(false),
            use_exponential_sigmas: r.use_exponential_sigmas.unwrap_or(false),
            use_beta_sigmas: r.use_beta_sigmas.unwrap_or(false),
            use_lu_lambdas: r.use_lu_lambdas.unwrap_or(false),
            use_flow_sigmas: r.use_flow_sigmas.unwrap_or(false),
            sigma_min: r.sigma_min,
            sigma_max: r.sigma_max,
            timestep_type: r.timestep_type.unwrap_or_else(|| "discrete".into()),
            final_sigmas_type: r.final_sigmas_type.unwrap_or_else(|| "zero".into()),
            solver_order: r.solver_order.unwrap_or(2),
            lower_order_final: r.lower_order_final.unwrap_or(true),
            euler_at_final: r.euler_at_final.unwrap_or(false),
            algorithm_type: r.algorithm_type.unwrap_or_else(|| "dpmsolver++".into()),
            solver_type: r.solver_type.unwrap_or_else(|| "midpoint".into()),
            lambda_min_clipped: r.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            variance_type: r.variance_type,
        }
    }
}

impl DdpmConfig {
    /// The model's parameterization from `prediction_type`.
    pub fn parameterization(&self) -> Result<Parameterization, SdScheduleError> {
        self.prediction_type.parse()
    }

    /// Betas as the scheduler constructors build them, before any zero-SNR rescaling.
    pub fn betas(&self) -> Result<Vec<f32>, SdScheduleError> {
        let n = self.num_train_timesteps;
        if n == 0 {
            return Err(SdScheduleError::unsupported("num_train_timesteps", 0));
        }
        if let Some(tb) = &self.trained_betas {
            if tb.len() != n {
                return Err(SdScheduleError::TrainedBetasLength {
                    len: tb.len(),
                    train: n,
                });
            }
            return Ok(tb.iter().map(|&b| b as f32).collect());
        }
        match self.beta_schedule.as_str() {
            "linear" => Ok(torch_linspace_f32(self.beta_start, self.beta_end, n)),
            "scaled_linear" => {
                Ok(
                    torch_linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                        .into_iter()
                        .map(|b| b * b)
                        .collect(),
                )
            }
            "squaredcos_cap_v2" => Ok(betas_for_alpha_bar_cosine(n, 0.999)),
            other => Err(SdScheduleError::unsupported(
                "beta_schedule",
                format!("`{other}`"),
            )),
        }
    }

    /// `alphas_cumprod` (ᾱ_t, t = 0..num_train_timesteps) as DDIM/DDPM hold it: betas, then
    /// `rescale_zero_terminal_snr` when `rescale_betas_zero_snr`, then the cumulative product.
    /// (The Euler / DPM-Solver samplers additionally set ᾱ_T = 2⁻²⁴ when rescaling; see
    /// [`crate::sd_schedule`].) This is also the trainer's noise schedule.
    pub fn alphas_cumprod(&self) -> Result<Vec<f32>, SdScheduleError> {
        let mut betas = self.betas()?;
        if self.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        Ok(cumprod(&alphas))
    }
}

/// `torch.linspace(a, b, n, dtype=float32)` on the CPU: the endpoints rounded to f32, an f32
/// step, and each element `a + step·i` (first half) or `b − step·(n−1−i)` (second half) with a
/// single rounding (PyTorch's kernel compiles to a fused multiply-add).
pub(crate) fn torch_linspace_f32(a: f64, b: f64, n: usize) -> Vec<f32> {
    let (a, b) = (a as f32, b as f32);
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f32;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        step.mul_add(i as f32, a)
                    } else {
                        (-step).mul_add((n - 1 - i) as f32, b)
                    }
                })
                .collect()
        }
    }
}

/// `torch.cumprod` of an f32 tensor on the CPU: the running product is kept in f64.
pub(crate) fn cumprod(v: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    v.iter()
        .map(|&a| {
            acc *= a as f64;
            acc as f32
        })
        .collect()
}

/// diffusers `betas_for_alpha_bar(n, max_beta, "cosine")` (f64 like Python, then f32).
fn betas_for_alpha_bar_cosine(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// diffusers `rescale_zero_terminal_snr` (arXiv 2305.08891, Algorithm 1), in f32.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let ac = cumprod(&alphas);
    let sqrt: Vec<f32> = ac.iter().map(|a| a.sqrt()).collect();
    let (s0, st) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = s0 / (s0 - st);
    let bar: Vec<f32> = sqrt
        .iter()
        .map(|s| {
            let s = (s - st) * scale;
            s * s
        })
        .collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> DdpmConfig {
        serde_json::from_str(
            r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
                "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#,
        )
        .unwrap()
    }

    #[test]
    fn reads_sd15_config_with_class_defaults_unset() {
        let c = sd15();
        assert_eq!(c.class_name.as_deref(), Some("PNDMScheduler"));
        assert_eq!(c.timestep_spacing, None);
        assert_eq!(c.set_alpha_to_one, Some(false));
        assert_eq!(c.steps_offset, 1);
        assert_eq!(c.parameterization().unwrap(), Parameterization::Epsilon);
    }

    #[test]
    fn use_default_values_unsets_class_dependent_fields() {
        let c: DdpmConfig = serde_json::from_str(
            r#"{"timestep_spacing": "leading", "clip_sample": true, "lambda_min_clipped": "-inf",
                "_use_default_values": ["timestep_spacing"]}"#,
        )
        .unwrap();
        assert_eq!(c.timestep_spacing, None);
        assert_eq!(c.clip_sample, Some(true));
        assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
    }

    #[test]
    fn training_schedule_endpoints() {
        let ac = sd15().alphas_cumprod().unwrap();
        assert_eq!(ac.len(), 1000);
        assert!((ac[0] - (1.0 - 0.00085)).abs() < 1e-7);
        assert!(ac.windows(2).all(|w| w[1] < w[0]));
        let z = DdpmConfig {
            rescale_betas_zero_snr: true,
            ..sd15()
        };
        let az = z.alphas_cumprod().unwrap();
        assert_eq!(az[999], 0.0);
        assert!((az[0] - ac[0]).abs() < 1e-6);
    }

    #[test]
    fn bad_values_name_the_field() {
        let c = DdpmConfig {
            beta_schedule: "sigmoid".into(),
            ..Default::default()
        };
        let e = c.betas().unwrap_err().to_string();
        assert!(e.contains("beta_schedule") && e.contains("sigmoid"), "{e}");
        let c = DdpmConfig {
            prediction_type: "noise".into(),
            ..Default::default()
        };
        assert!(
            c.parameterization()
                .unwrap_err()
                .to_string()
                .contains("prediction_type")
        );
    }
}
