//! Training inputs and targets from clean samples, for every parameterization the samplers use
//! (one `Parameterization` serves both): flow matching noises `x_t = (1 − σ)·x0 + σ·ε` and
//! regresses `ε − x0`; DDPM-family models noise `x_t = √ᾱ·x0 + √(1 − ᾱ)·ε` and regress ε, v or
//! x0. The loss is the mean squared error over every element.

use burn::tensor::Tensor;

use dreamforge_sampling::Parameterization;

fn per_batch<const D: usize>(v: Tensor<1>) -> Tensor<D> {
    let mut shape = [1usize; D];
    shape[0] = v.dims()[0];
    v.reshape(shape)
}

/// Flow matching: (`x_t`, target) for per-sample `sigmas` `[B]`.
///
/// # Shapes
/// `x0`, `noise`: `[B, ...]`, `sigmas`: `[B]` → both `[B, ...]`
pub fn flow_matching<const D: usize>(
    x0: Tensor<D>,
    noise: Tensor<D>,
    sigmas: Tensor<1>,
) -> (Tensor<D>, Tensor<D>) {
    let s: Tensor<D> = per_batch(sigmas);
    let x_t = x0.clone() * (s.clone().neg() + 1.0) + noise.clone() * s;
    (x_t, Parameterization::Flow.target(x0, noise, 0.0))
}

/// DDPM family: (`x_t`, target) for per-sample `alpha_bars` `[B]` (ᾱ at each sample's timestep).
///
/// # Shapes
/// `x0`, `noise`: `[B, ...]`, `alpha_bars`: `[B]` → both `[B, ...]`
pub fn ddpm<const D: usize>(
    param: Parameterization,
    x0: Tensor<D>,
    noise: Tensor<D>,
    alpha_bars: Tensor<1>,
) -> (Tensor<D>, Tensor<D>) {
    let a: Tensor<D> = per_batch(alpha_bars.clone().sqrt());
    let s: Tensor<D> = per_batch((alpha_bars.clone().neg() + 1.0).sqrt());
    let x_t = x0.clone() * a + noise.clone() * s;
    (x_t, param.target_batched(x0, noise, alpha_bars))
}

/// Mean squared error over all elements.
pub fn mse<const D: usize>(prediction: Tensor<D>, target: Tensor<D>) -> Tensor<1> {
    (prediction - target).square().mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t2(v: Vec<f32>) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [2, 2]), &Device::default())
    }
    fn t1(v: Vec<f32>) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v, [2]), &Device::default())
    }
    fn vals(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn noised_inputs_and_targets_follow_the_formulas() {
        let x0 = vec![1.0, 2.0, 3.0, 4.0];
        let n = vec![0.5, -0.5, 1.0, -1.0];
        let (xt, tgt) = flow_matching(t2(x0.clone()), t2(n.clone()), t1(vec![0.25, 1.0]));
        assert_eq!(vals(xt), vec![0.875, 1.375, 1.0, -1.0]);
        assert_eq!(vals(tgt), vec![-0.5, -2.5, -2.0, -5.0]);
        let ab = [0.64f32, 0.36];
        let (xt, eps) = ddpm(
            Parameterization::Epsilon,
            t2(x0.clone()),
            t2(n.clone()),
            t1(ab.to_vec()),
        );
        let want: Vec<f32> = (0..4)
            .map(|i| ab[i / 2].sqrt() * x0[i] + (1.0 - ab[i / 2]).sqrt() * n[i])
            .collect();
        for (a, b) in vals(xt).iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(vals(eps), n);
        let (_, v) = ddpm(
            Parameterization::VPrediction,
            t2(x0.clone()),
            t2(n.clone()),
            t1(ab.to_vec()),
        );
        let want_v: Vec<f32> = (0..4)
            .map(|i| ab[i / 2].sqrt() * n[i] - (1.0 - ab[i / 2]).sqrt() * x0[i])
            .collect();
        for (a, b) in vals(v).iter().zip(&want_v) {
            assert!((a - b).abs() < 1e-6);
        }
        let l: f32 = mse(t2(x0), t2(n)).into_scalar();
        assert!((l - (0.25 + 6.25 + 4.0 + 25.0) / 4.0).abs() < 1e-6);
    }
}
