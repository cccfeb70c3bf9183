//! The image ↔ latent component of a pipeline: a learned `AutoencoderKL` or the parameter-free
//! [`PixelSpace`](super::pixel) fold, chosen by `config.json`'s `_class_name`.

use std::path::Path;

use burn::tensor::{Device, Tensor};

use dreamforge_core::{Error, Result};

use super::AutoencoderKL;
use super::pixel::{PIXEL_SPACE_CLASS, PixelSpaceConfig, pixel_shuffle, pixel_unshuffle};

/// A pipeline's autoencoder.
pub enum Autoencoder {
    Kl(Box<AutoencoderKL>),
    Pixel(PixelSpaceConfig),
}

impl Autoencoder {
    /// Loads a component folder: `PixelSpace` configs need no weights; anything else is an
    /// `AutoencoderKL`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let cfg = path.join("config.json");
        if path.is_dir() && cfg.exists() {
            let text = std::fs::read_to_string(&cfg).map_err(|e| Error::io(&cfg, e))?;
            let class = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("_class_name")?.as_str().map(str::to_string));
            if class.as_deref() == Some(PIXEL_SPACE_CLASS) {
                return Ok(Self::Pixel(PixelSpaceConfig::from_file(&cfg)?));
            }
        }
        Ok(Self::Kl(Box::new(AutoencoderKL::load(path, device)?)))
    }

    pub fn latent_channels(&self) -> usize {
        match self {
            Self::Kl(v) => v.config.latent_channels,
            Self::Pixel(c) => c.latent_channels(),
        }
    }

    /// Pixels per latent along each side.
    pub fn downscale_factor(&self) -> usize {
        match self {
            Self::Kl(v) => v.downscale_factor(),
            Self::Pixel(c) => c.patch_size,
        }
    }

    /// The image side a pixel-space model was trained at, when its config says.
    pub fn native_size(&self) -> Option<usize> {
        match self {
            Self::Kl(_) => None,
            Self::Pixel(c) => c.sample_size,
        }
    }

    /// Widest full-resolution activation channels of a decode (memory estimates).
    pub fn decoder_width(&self) -> usize {
        match self {
            Self::Kl(v) => *v.config.block_out_channels.first().unwrap_or(&128),
            Self::Pixel(c) => c.in_channels,
        }
    }

    /// Images in [-1, 1] → unscaled latents (the posterior mean for a KL autoencoder).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, latent_channels, H/f, W/f]`
    pub fn encode_mean(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Kl(v) => v.encode(x).0,
            Self::Pixel(c) => pixel_unshuffle(x, c.patch_size),
        }
    }

    /// Unscaled latents → images.
    ///
    /// # Shapes
    /// `[B, latent_channels, h, w]` → `[B, 3, h·f, w·f]`
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Kl(v) => v.decode(z),
            Self::Pixel(c) => pixel_shuffle(z, c.patch_size),
        }
    }

    fn factors(&self) -> (f64, f64) {
        match self {
            Self::Kl(v) => (v.config.scaling_factor, v.config.shift()),
            Self::Pixel(c) => (c.scaling_factor, c.shift_factor),
        }
    }

    /// Autoencoder latents → diffusion latents: `(z − shift) · scaling`.
    pub fn scale_latents<const D: usize>(&self, z: Tensor<D>) -> Tensor<D> {
        let (s, m) = self.factors();
        (z - m) * s
    }

    /// Diffusion latents → autoencoder latents: `z / scaling + shift`.
    pub fn unscale_latents<const D: usize>(&self, z: Tensor<D>) -> Tensor<D> {
        let (s, m) = self.factors();
        z / s + m
    }
}
