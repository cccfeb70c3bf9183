//! A parameter-free "autoencoder" for pixel-space models: `PixelSpace` encodes an image by
//! space-to-depth (PyTorch `pixel_unshuffle`: channel `c·f² + i·f + j` holds pixel `(i, j)` of
//! each f×f patch) and decodes by the inverse (`pixel_shuffle`), so a latent-space denoiser
//! (the FLUX transformer packs latents 2×2 into tokens) runs directly on pixels with
//! `3·f²·4`-wide tokens. Lossless; `scaling_factor` / `shift_factor` as in `AutoencoderKL`.
//! It is dreamforge's own component (`_class_name: "PixelSpace"`); the built-in nano model
//! uses it because its flat-coloured world needs no learned compression.

use std::path::Path;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use dreamforge_core::{Error, Result};

/// The class name in `config.json`.
pub const PIXEL_SPACE_CLASS: &str = "PixelSpace";

fn one() -> f64 {
    1.0
}

fn three() -> usize {
    3
}

/// `vae/config.json` of a pixel-space model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelSpaceConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// The side f of the square pixel patch folded into channels.
    pub patch_size: usize,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "one")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: f64,
    /// The image side the model was trained at (the default output size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<usize>,
}

impl PixelSpaceConfig {
    pub fn new(patch_size: usize) -> Self {
        Self {
            class_name: PIXEL_SPACE_CLASS.into(),
            patch_size,
            in_channels: 3,
            scaling_factor: 1.0,
            shift_factor: 0.0,
            sample_size: None,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Self = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not a PixelSpace config: {e}")))?;
        if c.class_name != PIXEL_SPACE_CLASS {
            return Err(Error::config(
                path,
                format!(
                    "_class_name is {:?}, expected {PIXEL_SPACE_CLASS:?}",
                    c.class_name
                ),
            ));
        }
        if c.patch_size == 0 || c.in_channels == 0 || c.scaling_factor == 0.0 {
            return Err(Error::config(
                path,
                "patch_size, in_channels and scaling_factor must be non-zero",
            ));
        }
        Ok(c)
    }

    pub fn latent_channels(&self) -> usize {
        self.in_channels * self.patch_size * self.patch_size
    }
}

/// Space-to-depth by `f`.
///
/// # Shapes
/// `[B, C, H, W]` → `[B, C·f², H/f, W/f]` (H, W multiples of f)
pub fn pixel_unshuffle(x: Tensor<4>, f: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / f, f, w / f, f])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([b, c * f * f, h / f, w / f])
}

/// Depth-to-space by `f`, the inverse of [`pixel_unshuffle`].
///
/// # Shapes
/// `[B, C·f², h, w]` → `[B, C, h·f, w·f]`
pub fn pixel_shuffle(z: Tensor<4>, f: usize) -> Tensor<4> {
    let [b, cf, h, w] = z.dims();
    let c = cf / (f * f);
    z.reshape([b, c, f, f, h, w])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([b, c, h * f, w * f])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn unshuffle_matches_pytorch_channel_order_and_inverts() {
        let d = Device::flex();
        // [1, 2, 4, 6], value = c·100 + y·10 + x
        let v: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..4).flat_map(move |y| (0..6).map(move |x| (c * 100 + y * 10 + x) as f32))
            })
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(v.clone(), [1, 2, 4, 6]), &d);
        let z = pixel_unshuffle(x, 2);
        assert_eq!(z.dims(), [1, 8, 2, 3]);
        let zv = z.clone().into_data().try_to_vec::<f32>().unwrap();
        // torch: out[c·4 + i·2 + j, y, x] = in[c, 2y + i, 2x + j]
        for c in 0..2 {
            for i in 0..2 {
                for j in 0..2 {
                    for y in 0..2 {
                        for xx in 0..3 {
                            let o = ((c * 4 + i * 2 + j) * 2 + y) * 3 + xx;
                            let expect = (c * 100 + (2 * y + i) * 10 + 2 * xx + j) as f32;
                            assert_eq!(zv[o], expect);
                        }
                    }
                }
            }
        }
        let back = pixel_shuffle(z, 2).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(back, v);
    }
}
