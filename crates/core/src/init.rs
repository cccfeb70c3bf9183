//! Fresh parameters for training from scratch, drawn through the same [`WeightLoader`] calls
//! that read a checkpoint, so a model family needs no second constructor: every parameter is
//! requested by its file key and shape, and an [`Initializer`] answers instead of a file.
//!
//! Defaults follow PyTorch's module init where it matters for training (`nn.Linear` /
//! `nn.Conv*` weights `U(±1/√fan_in)`, norm scales 1) with zero biases (as DiT / FLUX training
//! code initializes them); a model family adds its own rules (adaLN-zero modulation, embedding
//! tables) through [`Initializer::with_rule`]. Values depend only on the seed and the key, not
//! on the order parameters are requested in.
//!
//! [`WeightLoader`]: crate::WeightLoader

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::HostTensor;

/// How one parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitKind {
    Zeros,
    Ones,
    /// `U(-b, b)`.
    Uniform(f32),
    /// `N(0, std²)`.
    Normal(f32),
}

/// A family's rule: `Some` decides the parameter `key` of file shape `shape`, `None` defers to
/// the defaults.
pub type InitRule = fn(key: &str, shape: &[usize]) -> Option<InitKind>;

/// Draws parameters by key from a seed.
#[derive(Debug, Clone)]
pub struct Initializer {
    pub seed: u64,
    rules: Vec<InitRule>,
}

impl Initializer {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rules: Vec::new(),
        }
    }

    /// Adds a rule consulted before the defaults (earlier rules win).
    pub fn with_rule(mut self, rule: InitRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The kind chosen for `key` of file shape `shape`.
    pub fn kind(&self, key: &str, shape: &[usize]) -> InitKind {
        if let Some(k) = self.rules.iter().find_map(|r| r(key, shape)) {
            return k;
        }
        default_kind(key, shape)
    }

    /// The initial value of `key` (file layout, e.g. `[out, in]` for a linear weight).
    pub fn tensor(&self, key: &str, shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(key_seed(self.seed, key));
        let data = match self.kind(key, shape) {
            InitKind::Zeros => vec![0.0; n],
            InitKind::Ones => vec![1.0; n],
            InitKind::Uniform(b) => (0..n).map(|_| rng.random_range(-b..=b)).collect(),
            InitKind::Normal(s) => (0..n)
                .map(|_| {
                    let z: f32 = StandardNormal.sample(&mut rng);
                    z * s
                })
                .collect(),
        };
        HostTensor::new(shape.to_vec(), data)
    }
}

/// PyTorch-like defaults: weights of rank ≥ 2 `U(±1/√fan_in)` (fan_in = product of all but
/// the first dim), 1-D `.weight` (norm scales) ones, everything else (biases, tables) zeros.
pub fn default_kind(key: &str, shape: &[usize]) -> InitKind {
    if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        InitKind::Uniform(1.0 / (fan_in.max(1) as f32).sqrt())
    } else if key.ends_with(".weight") || key.ends_with(".scale") {
        InitKind::Ones
    } else {
        InitKind::Zeros
    }
}

/// The random stream seed of `key` under `seed` (what [`Initializer::tensor`] draws from).
pub fn key_seed(seed: u64, key: &str) -> u64 {
    seed ^ fnv1a(key)
}

/// 64-bit FNV-1a: a stable per-key seed (std's hasher is not specified to be stable).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_pytorch_and_values_depend_on_seed_and_key_only() {
        let i = Initializer::new(7);
        assert_eq!(i.kind("a.weight", &[4, 9]), InitKind::Uniform(1.0 / 3.0));
        assert_eq!(
            i.kind("c.weight", &[8, 2, 3, 3]),
            InitKind::Uniform(1.0 / 18f32.sqrt())
        );
        assert_eq!(i.kind("norm.weight", &[4]), InitKind::Ones);
        assert_eq!(i.kind("a.bias", &[4]), InitKind::Zeros);
        let t = i.tensor("a.weight", &[4, 9]);
        assert!(t.data.iter().all(|v| v.abs() <= 1.0 / 3.0));
        let mean = t.data.iter().sum::<f32>() / 36.0;
        assert!(mean.abs() < 0.15, "mean {mean}");
        assert_eq!(t, Initializer::new(7).tensor("a.weight", &[4, 9]));
        assert_ne!(t, Initializer::new(8).tensor("a.weight", &[4, 9]));
        assert_ne!(t.data, i.tensor("b.weight", &[4, 9]).data);
        let z = i
            .clone()
            .with_rule(|k, _| k.starts_with("a.").then_some(InitKind::Zeros))
            .tensor("a.weight", &[4, 9]);
        assert!(z.data.iter().all(|&v| v == 0.0));
        let n = Initializer::new(1)
            .with_rule(|_, _| Some(InitKind::Normal(0.5)))
            .tensor("e", &[4000]);
        let var = n.data.iter().map(|v| v * v).sum::<f32>() / 4000.0;
        assert!((var.sqrt() - 0.5).abs() < 0.03, "std {}", var.sqrt());
    }
}
