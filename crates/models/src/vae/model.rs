//! `AutoencoderKL` (diffusers `models/autoencoders/autoencoder_kl.py`): encoder → optional
//! `quant_conv` → diagonal-Gaussian posterior (mean, clamped log-variance), and optional
//! `post_quant_conv` → decoder. Covers the 4-channel SD/SDXL layout (quant convs) and the
//! 16-channel FLUX layout (no quant convs, `shift_factor`).

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use dreamforge_core::{Error, Result, WeightLoader, WeightSet};

use super::attention::legacy_attention_key_map;
use super::config::AutoencoderKlConfig;
use super::conv::Conv2d;
use super::decoder::Decoder;
use super::encoder::Encoder;

/// diffusers `DiagonalGaussianDistribution` clamps the log-variance to this range.
pub const LOGVAR_RANGE: (f32, f32) = (-30.0, 20.0);

#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    #[module(skip)]
    pub config: AutoencoderKlConfig,
}

impl AutoencoderKL {
    /// Loads a diffusers component folder (`config.json` + `diffusion_pytorch_model.safetensors`
    /// or another weights layout [`WeightSet::open`] accepts). Strict: missing, unused and
    /// wrongly shaped weights are errors.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.is_dir() {
            return Err(Error::format(
                path,
                "an AutoencoderKL is loaded from a diffusers folder holding config.json and the weights",
            ));
        }
        let config = AutoencoderKlConfig::from_file(&path.join("config.json"))?;
        let set = WeightSet::open(path)?;
        Self::from_weights(&set, config, device)
    }

    /// Builds the model from an open weight set (diffusers key names, current or legacy
    /// attention names) and a config.
    pub fn from_weights(
        set: &WeightSet,
        config: AutoencoderKlConfig,
        device: &Device,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let w = WeightLoader::new(set, device).with_key_map(legacy_attention_key_map(set));
        let model = Self::from_loader(&w, config)?;
        w.finish()?;
        Ok(model)
    }

    /// Builds the model from a prepared loader whose parameter names (after its prefix and key
    /// map) are diffusers names; the caller checks for unused keys (`w.finish()`).
    pub(crate) fn from_loader(w: &WeightLoader, config: AutoencoderKlConfig) -> Result<Self> {
        let l = config.latent_channels;
        Ok(Self {
            encoder: Encoder::load(w, "encoder", &config)?,
            decoder: Decoder::load(w, "decoder", &config)?,
            quant_conv: if config.use_quant_conv {
                Some(Conv2d::load(w, "quant_conv", 2 * l, 2 * l, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if config.use_post_quant_conv {
                Some(Conv2d::load(w, "post_quant_conv", l, l, 1, 1, 0)?)
            } else {
                None
            },
            config,
        })
    }

    /// The latent-space downsampling factor, 2^(levels − 1) (8 for SD and FLUX).
    pub fn downscale_factor(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// Encodes images to the posterior `(mean, logvar)`, logvar clamped to [-30, 20].
    ///
    /// # Shapes
    /// `[B, in_channels, H, W]` → (`[B, latent_channels, h, w]`, same), h = ⌈H / f⌉ for the
    /// factor f of [`Self::downscale_factor`]
    pub fn encode(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let mut moments = self.encoder.forward(x);
        if let Some(q) = &self.quant_conv {
            moments = q.forward(moments);
        }
        let l = self.config.latent_channels;
        let [b, _, h, w] = moments.dims();
        let mean = moments.clone().slice([0..b, 0..l, 0..h, 0..w]);
        let logvar = moments
            .slice([0..b, l..2 * l, 0..h, 0..w])
            .clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1);
        (mean, logvar)
    }

    /// Decodes (unscaled) latents to images.
    ///
    /// # Shapes
    /// `[B, latent_channels, h, w]` → `[B, out_channels, h · f, w · f]`
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }

    /// VAE latents → diffusion latents: `(z − shift_factor) · scaling_factor`.
    pub fn scale_latents<const D: usize>(&self, z: Tensor<D>) -> Tensor<D> {
        (z - self.config.shift()) * self.config.scaling_factor
    }

    /// Diffusion latents → VAE latents: `z / scaling_factor + shift_factor`.
    pub fn unscale_latents<const D: usize>(&self, z: Tensor<D>) -> Tensor<D> {
        z / self.config.scaling_factor + self.config.shift()
    }
}
