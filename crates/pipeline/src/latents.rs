//! FLUX latent packing (diffusers `FluxPipeline._pack_latents` / `_unpack_latents` /
//! `_prepare_latent_image_ids`): 2×2 patches of the VAE latent become tokens.

use burn::tensor::Tensor;

/// # Shapes
/// `[B, C, H, W]` → `[B, (H/2)(W/2), 4C]`
pub fn pack(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4])
}

/// # Shapes
/// `[B, (H/2)(W/2), 4C]` → `[B, C, H, W]`
pub fn unpack(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c4] = x.dims();
    let c = c4 / 4;
    x.reshape([b, h / 2, w / 2, c, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c, h, w])
}

/// Image position ids `(0, row, col)` for an `h2 × w2` token grid, row-major `[h2·w2, 3]`.
pub fn image_ids(h2: usize, w2: usize) -> Vec<f32> {
    let mut ids = Vec::with_capacity(h2 * w2 * 3);
    for r in 0..h2 {
        for c in 0..w2 {
            ids.extend([0.0, r as f32, c as f32]);
        }
    }
    ids
}
