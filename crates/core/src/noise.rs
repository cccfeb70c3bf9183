//! Deterministic, backend-independent Gaussian noise: drawn on the host from a ChaCha8 stream
//! seeded by the user's seed, so the same seed gives the same latents on every device.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::weights::HostTensor;

/// Standard-normal samples of `shape` from `seed`.
pub fn randn(seed: u64, shape: &[usize]) -> HostTensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    HostTensor::new(shape.to_vec(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_roughly_standard() {
        let a = randn(7, &[4, 1000]);
        assert_eq!(a, randn(7, &[4, 1000]));
        assert_ne!(a, randn(8, &[4, 1000]));
        let mean = a.data.iter().sum::<f32>() / a.data.len() as f32;
        let var = a.data.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / a.data.len() as f32;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.1,
            "mean {mean} var {var}"
        );
    }
}
