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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn pack_matches_diffusers_index_map_and_unpack_inverts_it() {
        let device = dreamforge_core::test_device();
        let (b, c, h, w) = (2, 3, 4, 6);
        let data: Vec<f32> = (0..b * c * h * w).map(|i| i as f32).collect();
        let x: Tensor<4> = Tensor::from_data(TensorData::new(data.clone(), [b, c, h, w]), &device);
        let p = pack(x.clone());
        assert_eq!(p.dims(), [b, (h / 2) * (w / 2), 4 * c]);
        let pd = dreamforge_core::to_host(p.clone()).data;
        // diffusers: view(B, C, H/2, 2, W/2, 2).permute(0, 2, 4, 1, 3, 5) → token (i, j), feature (c, di, dj)
        for bi in 0..b {
            for i in 0..h / 2 {
                for j in 0..w / 2 {
                    for ci in 0..c {
                        for di in 0..2 {
                            for dj in 0..2 {
                                let src = ((bi * c + ci) * h + 2 * i + di) * w + 2 * j + dj;
                                let tok = i * (w / 2) + j;
                                let feat = ci * 4 + di * 2 + dj;
                                let dst = (bi * (h / 2) * (w / 2) + tok) * 4 * c + feat;
                                assert_eq!(pd[dst], data[src]);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(dreamforge_core::to_host(unpack(p, h, w)).data, data);
        assert_eq!(
            image_ids(2, 3),
            vec![
                0., 0., 0., 0., 0., 1., 0., 0., 2., 0., 1., 0., 0., 1., 1., 0., 1., 2.
            ]
        );
    }
}
