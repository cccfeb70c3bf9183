//! Subject fine-tuning of a Stable Diffusion UNet (SD 1.x / 2.x / SDXL): the training task.
//!
//! Follows the T-LoRA SDXL trainer (`tlora/trainer_sdxl.py`, methods.md §1) and diffusers'
//! `train_dreambooth_lora[_sdxl].py`: prompts encoded once with the frozen text encoders
//! (SDXL: both, penultimate states concatenated, pooled from the second), latents cached (the
//! KL posterior re-sampled every step from its cached mean and std), a DDPM timestep drawn
//! uniformly from `[0, T)` per example, `x_t = √ᾱ·x0 + √(1 − ᾱ)·ε`, the target the scheduler's
//! prediction type asks for (ε or v), MSE; SDXL size conditioning `[H₀, W₀, top, left, res,
//! res]` from the photo's size and its centre crop (diffusers); a T-LoRA's rank mask from the
//! step's timestep (`p = (T − t)/T`). Prior preservation adds a class example each step.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use dreamforge_adapters::at_step;
use dreamforge_adapters::rank::progress_from_timestep;
use dreamforge_core::export::ParamKeys;
use dreamforge_core::image_io::RgbImage;
use dreamforge_core::{Error, Result};
use dreamforge_models::unet::{AddedCondition, UNet2DConditionModel};
use dreamforge_pipeline::sd::lora::SdAdapters;
use dreamforge_pipeline::{SdFamily, SdPipeline};
use dreamforge_sampling::Parameterization;
use dreamforge_train::Rngs;
use dreamforge_train::objective::{ddpm, mse};

use crate::adapter_set::{AdapterLayout, AdapterSet};
use crate::config::SubjectConfig;

/// One cached training example.
#[derive(Clone)]
struct Example {
    /// Scaled latent mean `[1, C, h, w]`.
    mean: Tensor<4>,
    /// Posterior std in scaled units.
    std: Tensor<4>,
    states: Tensor<3>,
    /// SDXL: pooled text embeds `[1, P]` and time ids `[1, 6]`.
    added: Option<(Tensor<2>, Tensor<2>)>,
}

/// The per-step loss of a UNet subject fine-tune, with everything cached.
pub struct SdSubjectTask {
    pub config: SubjectConfig,
    instances: Vec<Example>,
    class: Vec<Example>,
    layout: AdapterLayout,
    names: ParamKeys,
    alphas_cumprod: Vec<f32>,
    param: Parameterization,
}

/// SDXL `add_time_ids` of a photo of `original` (width, height) centre-cropped to `res`:
/// `[H₀, W₀, top, left, res, res]`, the crop offsets in the resized image (diffusers).
pub fn time_ids(original: (u32, u32), res: u32) -> [f32; 6] {
    let (w, h) = (original.0 as f64, original.1 as f64);
    let scale = res as f64 / w.min(h);
    let (rw, rh) = ((w * scale).round(), (h * scale).round());
    let top = ((rh - res as f64) / 2.0).round().max(0.0);
    let left = ((rw - res as f64) / 2.0).round().max(0.0);
    [
        h as f32,
        w as f32,
        top as f32,
        left as f32,
        res as f32,
        res as f32,
    ]
}

impl SdSubjectTask {
    /// Encodes the subject images (`(image, caption, original size)`) and class images with the
    /// pipeline's VAE and text encoders, then moves the cache to the training `device`.
    /// Returns tokenizer warnings.
    pub fn new(
        config: SubjectConfig,
        pipe: &SdPipeline,
        subject: &[(RgbImage, String, (u32, u32))],
        class_images: &[RgbImage],
        layout: AdapterLayout,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let side = config.resolution as usize;
        let m = pipe.vae_scale_factor();
        if !side.is_multiple_of(m) {
            return Err(Error::InvalidInput(format!(
                "resolution {side} is not a multiple of {m} (the autoencoder's factor)"
            )));
        }
        let mut warnings = Vec::new();
        let scaling = pipe.vae.config.scaling_factor;
        let mut encode = |img: &RgbImage, caption: &str, original: (u32, u32)| -> Result<Example> {
            let (w, h) = (img.width as usize, img.height as usize);
            let x = Tensor::<4>::from_data(
                TensorData::new(img.to_chw_signed(), [1, 3, h, w]),
                &pipe.device,
            );
            let (mean, logvar) = pipe.vae.encode(x);
            let to4 = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), device);
            let to2 = |t: Tensor<2>| Tensor::<2>::from_data(t.into_data(), device);
            let (states, pooled) = pipe.encode_prompt(caption, &mut warnings)?;
            let added = match (pipe.family, pooled) {
                (SdFamily::Sdxl, Some(p)) => {
                    let ids = time_ids(original, config.resolution);
                    Some((
                        to2(p),
                        Tensor::<2>::from_data(TensorData::new(ids.to_vec(), [1, 6]), device),
                    ))
                }
                _ => None,
            };
            Ok(Example {
                mean: to4(mean * scaling),
                std: to4((logvar * 0.5).exp() * scaling),
                states: Tensor::<3>::from_data(states.into_data(), device),
                added,
            })
        };
        let instances = subject
            .iter()
            .map(|(img, cap, orig)| encode(img, cap, *orig))
            .collect::<Result<Vec<_>>>()?;
        let class_prompt = config
            .prior
            .as_ref()
            .map(|p| p.class_prompt.clone())
            .unwrap_or_default();
        let res = config.resolution;
        let class = class_images
            .iter()
            .map(|img| encode(img, &class_prompt, (res, res)))
            .collect::<Result<Vec<_>>>()?;
        warnings.sort();
        warnings.dedup();
        let alphas_cumprod = pipe
            .scheduler
            .alphas_cumprod()
            .map_err(|e| Error::InvalidInput(format!("scheduler: {e}")))?;
        let param = pipe
            .scheduler
            .parameterization()
            .map_err(|e| Error::InvalidInput(format!("scheduler: {e}")))?;
        if !matches!(
            param,
            Parameterization::Epsilon | Parameterization::VPrediction
        ) {
            return Err(Error::InvalidInput(format!(
                "training a {param:?}-prediction UNet is not supported (epsilon and v_prediction are)"
            )));
        }
        Ok((
            Self {
                config,
                instances,
                class,
                layout,
                names: pipe.unet.names.clone(),
                alphas_cumprod,
                param,
            },
            warnings,
        ))
    }

    fn example_loss(
        &self,
        ex: &Example,
        base: &UNet2DConditionModel,
        set: &AdapterSet,
        rngs: &mut Rngs,
        device: &Device,
    ) -> Tensor<1> {
        let [_, c, h, w] = ex.mean.dims();
        let n = self.alphas_cumprod.len();
        let t = rngs.noise.random_range(0..n);
        let mut gauss = || -> Tensor<4> {
            let v: Vec<f32> = (0..c * h * w)
                .map(|_| StandardNormal.sample(&mut rngs.noise))
                .collect();
            Tensor::from_data(TensorData::new(v, [1, c, h, w]), device)
        };
        let x0 = ex.mean.clone() + ex.std.clone() * gauss();
        let noise = gauss();
        let a = Tensor::<1>::from_data(TensorData::new(vec![self.alphas_cumprod[t]], [1]), device);
        let (x_t, target) = ddpm(self.param, x0, noise, a);
        let model = self.layout.attach(base.clone(), &self.names, set);
        let model = at_step(
            model,
            &[self.config.adapter.schedule()],
            progress_from_timestep(t as f64, n as f64),
        );
        // Mixed precision: `base` and `set` arrive in the compute dtype, the inputs follow
        // (the SDXL time ids stay f32: the UNet embeds them in f32).
        let dtype = self.config.precision.dtype();
        let pred = model
            .forward(
                x_t.cast(dtype),
                &[t as f32],
                ex.states.clone().cast(dtype),
                ex.added.as_ref().map(|(p, ids)| AddedCondition {
                    text_embeds: p.clone().cast(dtype),
                    time_ids: ids.clone(),
                }),
            )
            .expect("shapes fixed when the task was built");
        mse(pred.cast(burn::tensor::FloatDType::F32), target)
    }

    /// One step's loss: a random subject image (data stream), timestep and noise (noise
    /// stream); with prior preservation plus `weight ×` the loss of a random class image.
    pub fn loss(
        &self,
        base: &UNet2DConditionModel,
        set: &AdapterSet,
        rngs: &mut Rngs,
        device: &Device,
    ) -> Tensor<1> {
        crate::with_prior(
            &self.instances,
            &self.class,
            self.config.prior.as_ref(),
            rngs,
            |ex, rngs| self.example_loss(ex, base, set, rngs, device),
        )
    }
}

/// The pipeline's adapters set to `set` on the UNet (moved to the pipeline's device), for
/// validation renders.
pub fn use_sd_adapters(
    pipe: &mut SdPipeline,
    layout: &AdapterLayout,
    set: &AdapterSet,
    cfg: &SubjectConfig,
) {
    let set = set.valid();
    let unet = layout.attach(pipe.unet.clone(), &pipe.unet.names, &set);
    pipe.adapters = Some(SdAdapters {
        unet,
        text_encoder: pipe.text_encoder.clone(),
        text_encoder_2: pipe.text_encoder_2.clone(),
        schedules: vec![cfg.adapter.schedule()],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_time_ids_follow_the_centre_crop() {
        // A square photo: no crop offset.
        assert_eq!(
            time_ids((1024, 1024), 1024),
            [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]
        );
        // 1536×1024 (w×h) at 1024: resized to 1536×1024, left offset 256.
        assert_eq!(
            time_ids((1536, 1024), 1024),
            [1024.0, 1536.0, 0.0, 256.0, 1024.0, 1024.0]
        );
        // 800×1200 at 512: resized to 512×768, top offset 128.
        assert_eq!(
            time_ids((800, 1200), 512),
            [1200.0, 800.0, 128.0, 0.0, 512.0, 512.0]
        );
    }
}
