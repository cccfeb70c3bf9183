//! The flow-matching Euler sampler as a pure function: `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v(x_i, σ_i)`
//! (diffusers `FlowMatchEulerDiscreteScheduler.step`, deterministic path), history as locals,
//! a step callback for progress and cancellation.

use burn::tensor::Tensor;

/// One Euler update.
///
/// # Shapes
/// `x`, `v`: any shape, equal
pub fn euler_step<const D: usize>(
    x: Tensor<D>,
    v: Tensor<D>,
    sigma: f32,
    sigma_next: f32,
) -> Tensor<D> {
    x + v * (sigma_next - sigma)
}

/// What the callback learns after each step; returning `false` stops the loop (Ctrl-C).
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub step: usize,
    pub total: usize,
    pub sigma: f32,
}

/// Runs the sampler over `sigmas` (N+1 values ending at the terminal σ). `denoise(x, σ, i)`
/// returns the velocity. After every step `on_step(info, x)` gets the new sample and returns
/// the sample to continue with (changed e.g. by inpainting's latent blending) or `None` to
/// cancel, in which case the loop returns `Ok(None)`.
pub fn sample_euler<const D: usize, E>(
    mut x: Tensor<D>,
    sigmas: &[f32],
    mut denoise: impl FnMut(Tensor<D>, f32, usize) -> Result<Tensor<D>, E>,
    mut on_step: impl FnMut(StepInfo, Tensor<D>) -> Option<Tensor<D>>,
) -> Result<Option<Tensor<D>>, E> {
    let total = sigmas.len().saturating_sub(1);
    for i in 0..total {
        let v = denoise(x.clone(), sigmas[i], i)?;
        x = euler_step(x, v, sigmas[i], sigmas[i + 1]);
        let info = StepInfo {
            step: i + 1,
            total,
            sigma: sigmas[i + 1],
        };
        match on_step(info, x) {
            Some(next) => x = next,
            None => return Ok(None),
        }
    }
    Ok(Some(x))
}
