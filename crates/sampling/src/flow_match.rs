//! Flow-matching sigma schedules as pure functions, following diffusers
//! `FlowMatchEulerDiscreteScheduler.set_timesteps` (static shift `sσ/(1+(s−1)σ)`, dynamic
//! exponential / linear time shift with μ, optional `shift_terminal` stretch) and the FLUX
//! pipeline's `calculate_shift` / `linspace(1, 1/N, N)` sigmas.

use serde::{Deserialize, Serialize};

fn one() -> f64 {
    1.0
}
fn thousand() -> usize {
    1000
}
fn half() -> f64 {
    0.5
}
fn max_shift_default() -> f64 {
    1.15
}
fn base_len() -> usize {
    256
}
fn max_len() -> usize {
    4096
}
fn exponential() -> String {
    "exponential".into()
}

/// The scheduler's `scheduler_config.json`, upstream field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowMatchConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "half")]
    pub base_shift: f64,
    #[serde(default = "max_shift_default")]
    pub max_shift: f64,
    #[serde(default = "base_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "max_len")]
    pub max_image_seq_len: usize,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default = "exponential")]
    pub time_shift_type: String,
}

impl Default for FlowMatchConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

/// A schedule: `timesteps[i] = 1000·σ_i` for the N steps, `sigmas` has N+1 entries (terminal 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
}

/// FLUX pipeline `calculate_shift`: μ linear in the image sequence length.
pub fn calculate_shift(image_seq_len: usize, cfg: &FlowMatchConfig) -> f64 {
    let m = (cfg.max_shift - cfg.base_shift)
        / (cfg.max_image_seq_len as f64 - cfg.base_image_seq_len as f64);
    let b = cfg.base_shift - m * cfg.base_image_seq_len as f64;
    image_seq_len as f64 * m + b
}

/// The sigmas the FLUX pipeline passes: `linspace(1, 1/N, N)`.
pub fn flux_pipeline_sigmas(steps: usize) -> Vec<f64> {
    linspace(1.0, 1.0 / steps as f64, steps)
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            // numpy: start + i*step, with the last element exactly `b`.
            let step = (b - a) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| a + i as f64 * step).collect();
            v[n - 1] = b;
            v
        }
    }
}

/// Errors in a schedule request.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "the scheduler config uses dynamic shifting: μ (or the image sequence length) is required"
    )]
    MissingMu,
    #[error("{0} sigma schedules are not supported for flow matching")]
    Unsupported(&'static str),
    #[error("time_shift_type `{0}` is not `exponential` or `linear`")]
    BadShiftType(String),
    #[error("{0} sigmas given for {1} steps")]
    LengthMismatch(usize, usize),
    #[error("steps must be at least 1")]
    NoSteps,
}

/// `set_timesteps(num_inference_steps, sigmas, mu)` as a pure function.
pub fn flow_match_schedule(
    cfg: &FlowMatchConfig,
    steps: usize,
    sigmas: Option<&[f64]>,
    mu: Option<f64>,
) -> Result<Schedule, ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::NoSteps);
    }
    if cfg.use_karras_sigmas {
        return Err(ScheduleError::Unsupported("karras"));
    }
    if cfg.use_exponential_sigmas {
        return Err(ScheduleError::Unsupported("exponential"));
    }
    if cfg.use_beta_sigmas {
        return Err(ScheduleError::Unsupported("beta"));
    }
    let n_train = cfg.num_train_timesteps as f64;
    let mut s: Vec<f64> = match sigmas {
        Some(s) if s.len() != steps => return Err(ScheduleError::LengthMismatch(s.len(), steps)),
        // diffusers casts user sigmas to float32 before shifting.
        Some(s) => s.iter().map(|&v| v as f32 as f64).collect(),
        None => {
            // Training sigmas: linspace(1, N, N)[::-1] / N, statically shifted unless dynamic.
            let static_shift = |x: f64| {
                if cfg.use_dynamic_shifting {
                    x
                } else {
                    cfg.shift * x / (1.0 + (cfg.shift - 1.0) * x)
                }
            };
            let sigma_max = static_shift(1.0) as f32 as f64;
            let sigma_min = static_shift((1.0f32 / n_train as f32) as f64) as f32 as f64;
            linspace(sigma_max * n_train, sigma_min * n_train, steps)
                .into_iter()
                .map(|t| t / n_train)
                .collect()
        }
    };
    if cfg.use_dynamic_shifting {
        let mu = mu.ok_or(ScheduleError::MissingMu)?;
        let a = match cfg.time_shift_type.as_str() {
            "exponential" => mu.exp(),
            "linear" => mu,
            other => return Err(ScheduleError::BadShiftType(other.into())),
        };
        s = if sigmas.is_some() {
            // numpy evaluates this on the float32 array (Python scalars are weak): do the same.
            let a = a as f32;
            s.iter()
                .map(|&t| (a / (a + (1.0 / t as f32 - 1.0))) as f64)
                .collect()
        } else {
            s.iter().map(|&t| a / (a + (1.0 / t - 1.0))).collect()
        };
    } else {
        s = s
            .iter()
            .map(|&t| cfg.shift * t / (1.0 + (cfg.shift - 1.0) * t))
            .collect();
    }
    if let Some(term) = cfg.shift_terminal {
        let last = 1.0 - s[s.len() - 1];
        let scale = last / (1.0 - term);
        s = s.iter().map(|&t| 1.0 - (1.0 - t) / scale).collect();
    }
    let mut sig: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    if cfg.invert_sigmas {
        sig = sig.iter().map(|v| 1.0 - v).collect();
    }
    let timesteps = sig
        .iter()
        .map(|v| v * cfg.num_train_timesteps as f32)
        .collect();
    sig.push(if cfg.invert_sigmas { 1.0 } else { 0.0 });
    Ok(Schedule {
        timesteps,
        sigmas: sig,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_dev_mu_at_1024_is_max_shift() {
        let cfg = FlowMatchConfig {
            use_dynamic_shifting: true,
            ..Default::default()
        };
        assert!((calculate_shift(4096, &cfg) - 1.15).abs() < 1e-12);
        assert!((calculate_shift(256, &cfg) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn schedule_ends_at_zero_and_decreases() {
        let cfg = FlowMatchConfig::default();
        let s = flow_match_schedule(&cfg, 4, Some(&flux_pipeline_sigmas(4)), None).unwrap();
        assert_eq!(s.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(s.timesteps, vec![1000.0, 750.0, 500.0, 250.0]);
    }
}
