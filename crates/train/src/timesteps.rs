//! Training-timestep sampling. Flow matching draws σ ∈ (0, 1): uniform, or logit-normal
//! (`σ = sigmoid(m + s·z)`, z ~ N(0, 1) — SD3 / FLUX training's default, m = 0, s = 1), with an
//! optional resolution shift `σ' = shift·σ / (1 + (shift − 1)·σ)` as the FLUX schedule applies
//! at sampling time. DDPM-family models draw integer timesteps uniformly in [0, T).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How σ (flow matching) is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimestepSampling {
    Uniform,
    LogitNormal { mean: f64, std: f64 },
}

impl Default for TimestepSampling {
    fn default() -> Self {
        Self::LogitNormal {
            mean: 0.0,
            std: 1.0,
        }
    }
}

impl TimestepSampling {
    /// `n` flow-matching σ values in (0, 1), shifted by `shift` (1 = none).
    pub fn sample_sigmas(&self, rng: &mut impl Rng, n: usize, shift: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let s = match *self {
                    Self::Uniform => rng.random::<f64>(),
                    Self::LogitNormal { mean, std } => {
                        let z: f64 = StandardNormal.sample(rng);
                        1.0 / (1.0 + (-(mean + std * z)).exp())
                    }
                };
                let s = shift * s / (1.0 + (shift - 1.0) * s);
                s.clamp(1e-5, 1.0 - 1e-5) as f32
            })
            .collect()
    }
}

/// `n` DDPM training timesteps, uniform in `[0, num_train_timesteps)`.
pub fn sample_ddpm_timesteps(
    rng: &mut impl Rng,
    n: usize,
    num_train_timesteps: usize,
) -> Vec<usize> {
    (0..n)
        .map(|_| rng.random_range(0..num_train_timesteps))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn mean(v: &[f32]) -> f64 {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }

    #[test]
    fn distributions_have_their_moments_and_are_seeded() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let u = TimestepSampling::Uniform.sample_sigmas(&mut rng, 20000, 1.0);
        assert!(u.iter().all(|&s| s > 0.0 && s < 1.0));
        assert!((mean(&u) - 0.5).abs() < 0.01);
        let ln = TimestepSampling::default().sample_sigmas(&mut rng, 20000, 1.0);
        assert!((mean(&ln) - 0.5).abs() < 0.01);
        // Logit-normal concentrates mass mid-range: P(|z| > logit(0.9) = 2.197) = 2.8 % of
        // samples in the outer tenths (uniform: 20 %).
        let outer = ln.iter().filter(|&&s| !(0.1..=0.9).contains(&s)).count();
        assert!((440..680).contains(&outer), "{outer}");
        // A shift > 1 moves mass to high noise.
        let shifted = TimestepSampling::Uniform.sample_sigmas(&mut rng, 20000, 3.0);
        assert!(mean(&shifted) > 0.65);
        let a =
            TimestepSampling::default().sample_sigmas(&mut ChaCha8Rng::seed_from_u64(9), 8, 1.0);
        let b =
            TimestepSampling::default().sample_sigmas(&mut ChaCha8Rng::seed_from_u64(9), 8, 1.0);
        assert_eq!(a, b);
        let t = sample_ddpm_timesteps(&mut rng, 5000, 1000);
        assert!(t.iter().all(|&x| x < 1000) && t.contains(&0) && t.contains(&999));
    }
}
