//! Classifier-free guidance as pure functions (diffusers `StableDiffusionPipeline.__call__`):
//! `uncond + g·(cond − uncond)`, and `rescale_noise_cfg` (Lin et al. 2023, §3.4), which pulls
//! the guided prediction's per-sample standard deviation back towards the conditional one.

use burn::tensor::Tensor;

/// `uncond + scale · (cond − uncond)`.
///
/// # Shapes
/// `uncond`, `cond`: equal, any rank
pub fn cfg_combine<const D: usize>(uncond: Tensor<D>, cond: Tensor<D>, scale: f32) -> Tensor<D> {
    uncond.clone() + (cond - uncond) * scale
}

/// diffusers `rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale)`: standard
/// deviations over every dim but the batch (unbiased, as `torch.std`), then
/// `φ · cfg·(σ_text/σ_cfg) + (1 − φ) · cfg`.
///
/// # Shapes
/// `noise_cfg`, `noise_pred_text`: `[B, C, H, W]`
pub fn rescale_noise_cfg(noise_cfg: Tensor<4>, noise_pred_text: Tensor<4>, phi: f32) -> Tensor<4> {
    if phi == 0.0 {
        return noise_cfg;
    }
    let std_text = std_per_sample(noise_pred_text);
    let std_cfg = std_per_sample(noise_cfg.clone());
    let rescaled = noise_cfg.clone() * (std_text / std_cfg);
    rescaled * phi + noise_cfg * (1.0 - phi)
}

/// Unbiased standard deviation over dims 1.. → `[B, 1, 1, 1]`.
fn std_per_sample(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let n = (c * h * w) as f32;
    let flat = x.reshape([b, c * h * w]);
    let mean = flat.clone().mean_dim(1);
    let var = (flat - mean).square().sum_dim(1) / (n - 1.0).max(1.0);
    var.sqrt().reshape([b, 1, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v, shape), &Device::default())
    }

    #[test]
    fn combine_and_rescale_match_hand_computation() {
        let u = t(vec![0.0, 1.0, 2.0, 3.0], [1, 1, 2, 2]);
        let c = t(vec![1.0, 1.0, 4.0, 3.0], [1, 1, 2, 2]);
        let g: Vec<f32> = cfg_combine(u, c.clone(), 2.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(g, vec![2.0, 1.0, 6.0, 3.0]);
        // std(text) over [1,1,4,3] and std(cfg) over [2,1,6,3], unbiased.
        let sd = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / (v.len() as f32 - 1.0)).sqrt()
        };
        let ratio = sd(&[1.0, 1.0, 4.0, 3.0]) / sd(&g);
        let out: Vec<f32> = rescale_noise_cfg(t(g.clone(), [1, 1, 2, 2]), c, 0.7)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (o, gv) in out.iter().zip(&g) {
            let want = 0.7 * gv * ratio + 0.3 * gv;
            assert!((o - want).abs() < 1e-5, "{o} vs {want}");
        }
    }
}
