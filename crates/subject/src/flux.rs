//! Subject fine-tuning of a FLUX-family transformer (the nano model included): the training
//! task behind `dreamforge train`.
//!
//! Follows the T-LoRA FLUX trainer (`flux/train.py:run_train`, methods.md §1) and diffusers'
//! `train_dreambooth_lora_flux.py`: text encoded once (the encoders are frozen), latents
//! cached (the autoencoder runs once per image; a KL posterior is re-sampled every step from
//! its cached mean and variance, as `latent_dist.sample()` would), σ drawn per step
//! (uniform by default, shifted by the model's static shift), `x_t = (1 − σ)·x0 + σ·ε`,
//! target `ε − x0`, MSE; a T-LoRA's rank mask from the step's σ (`p = 1 − σ`, one σ per
//! example as the reference's batch of 1). Prior preservation adds a class example each step
//! with its own σ, weighted.
//!
//! Only the adapters train: they live in an [`AdapterSet`] (the trained module, saved in
//! checkpoints — kilobytes to megabytes, never the base weights) and are attached to the
//! frozen base by checkpoint module name for each forward.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand_distr::{Distribution, StandardNormal};

use dreamforge_adapters::at_step;
use dreamforge_adapters::rank::progress_from_sigma;
use dreamforge_core::export::ParamKeys;
use dreamforge_core::image_io::RgbImage;
use dreamforge_core::{Error, Result};
use dreamforge_models::dit::flux::{FluxInputs, FluxTransformer, Rope};
use dreamforge_models::vae::Autoencoder;
use dreamforge_pipeline::FluxPipeline;
use dreamforge_pipeline::flux::AdaptedTransformer;
use dreamforge_pipeline::latents::{image_ids, pack};
use dreamforge_train::Rngs;
use dreamforge_train::objective::{flow_matching, mse};

use crate::adapter_set::{AdapterLayout, AdapterSet};
use crate::config::SubjectConfig;

/// One cached training example.
#[derive(Clone)]
struct Example {
    /// Packed, scaled latent mean `[1, L, C]`.
    mean: Tensor<3>,
    /// Packed posterior std in scaled units (KL autoencoders), `[1, L, C]`.
    std: Option<Tensor<3>>,
    states: Tensor<3>,
    pooled: Tensor<2>,
}

/// The per-step loss of a subject fine-tune, with everything cached.
pub struct FluxSubjectTask {
    pub config: SubjectConfig,
    instances: Vec<Example>,
    class: Vec<Example>,
    rope: Rope,
    layout: AdapterLayout,
    names: ParamKeys,
    guidance: Option<f32>,
}

fn encode_image(
    vae: &Autoencoder,
    img: &RgbImage,
    device: &Device,
) -> (Tensor<3>, Option<Tensor<3>>) {
    let (w, h) = (img.width as usize, img.height as usize);
    let x = Tensor::<4>::from_data(TensorData::new(img.to_chw_signed(), [1, 3, h, w]), device);
    match vae {
        Autoencoder::Kl(kl) => {
            let (mean, logvar) = kl.encode(x);
            let scale = kl.config.scaling_factor;
            let std = (logvar * 0.5).exp() * scale;
            (pack(vae.scale_latents(mean)), Some(pack(std)))
        }
        Autoencoder::Pixel(_) => (pack(vae.scale_latents(vae.encode_mean(x))), None),
    }
}

impl FluxSubjectTask {
    /// Encodes the subject images (`(image, caption)`) and class images with the pipeline's
    /// autoencoder and text encoders (on the pipeline's device), then moves the cache to the
    /// training `device`. Returns warnings from tokenization (unknown words, truncation).
    pub fn new(
        config: SubjectConfig,
        pipe: &FluxPipeline,
        subject: &[(RgbImage, String)],
        class_images: &[RgbImage],
        layout: AdapterLayout,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let mut warnings = Vec::new();
        let side = config.resolution as usize;
        let m = pipe.vae_scale_factor() * 2;
        if !side.is_multiple_of(m) {
            return Err(Error::InvalidInput(format!(
                "resolution {side} is not a multiple of {m} (the autoencoder's factor × 2)"
            )));
        }
        let max_seq = 512;
        let mut encode = |img: &RgbImage, caption: &str| -> Result<Example> {
            let (mean, std) = encode_image(&pipe.vae, img, &pipe.device);
            let (states, pooled) = pipe.encode_prompt(caption, 1, max_seq, &mut warnings)?;
            let to = |t: Tensor<3>| Tensor::<3>::from_data(t.into_data(), device);
            Ok(Example {
                mean: to(mean),
                std: std.map(to),
                states: to(states),
                pooled: Tensor::<2>::from_data(pooled.into_data(), device),
            })
        };
        let instances = subject
            .iter()
            .map(|(img, cap)| encode(img, cap))
            .collect::<Result<Vec<_>>>()?;
        let class_prompt = config
            .prior
            .as_ref()
            .map(|p| p.class_prompt.clone())
            .unwrap_or_default();
        let class = class_images
            .iter()
            .map(|img| encode(img, &class_prompt))
            .collect::<Result<Vec<_>>>()?;
        warnings.sort();
        warnings.dedup();
        let l = side / m;
        let t_len = instances[0].states.dims()[1];
        let rope = pipe
            .transformer
            .rope(&vec![0.0; t_len * 3], &image_ids(l, l), device);
        let guidance = pipe
            .transformer
            .config
            .guidance_embeds
            .then_some(config.guidance);
        Ok((
            Self {
                config,
                instances,
                class,
                rope,
                layout,
                names: pipe.transformer_names.clone(),
                guidance,
            },
            warnings,
        ))
    }

    pub fn layout(&self) -> &AdapterLayout {
        &self.layout
    }

    fn example_loss(
        &self,
        ex: &Example,
        base: &FluxTransformer,
        set: &AdapterSet,
        rngs: &mut Rngs,
        device: &Device,
    ) -> Tensor<1> {
        let [_, l, c] = ex.mean.dims();
        let sigma =
            self.config
                .timesteps
                .sample_sigmas(&mut rngs.noise, 1, self.config.timestep_shift)[0];
        let mut gauss = |n: usize| -> Tensor<3> {
            let v: Vec<f32> = (0..n)
                .map(|_| StandardNormal.sample(&mut rngs.noise))
                .collect();
            Tensor::from_data(TensorData::new(v, [1, l, c]), device)
        };
        let x0 = match &ex.std {
            Some(s) => ex.mean.clone() + s.clone() * gauss(l * c),
            None => ex.mean.clone(),
        };
        let noise = gauss(l * c);
        let s = Tensor::<1>::from_data(TensorData::new(vec![sigma], [1]), device);
        let (x_t, target) = flow_matching(x0, noise, s);
        // Mixed precision: `base` and `set` arrive in the compute dtype, the inputs follow.
        let dtype = self.config.precision.dtype();
        let model = self.layout.attach(base.clone(), &self.names, set);
        let model = at_step(
            model,
            &[self.config.adapter.schedule()],
            progress_from_sigma(sigma as f64),
        );
        let pred = model
            .forward(
                FluxInputs {
                    hidden_states: x_t.cast(dtype),
                    encoder_hidden_states: ex.states.clone().cast(dtype),
                    pooled_projections: ex.pooled.clone().cast(dtype),
                    timestep: vec![sigma],
                    guidance: self.guidance.map(|g| vec![g]),
                },
                &self.rope,
            )
            .expect("shapes fixed when the task was built");
        mse(pred.cast(burn::tensor::FloatDType::F32), target)
    }

    /// One step's loss: a random subject image (data stream), σ and noise (noise stream); with
    /// prior preservation plus `weight ×` the loss of a random class image.
    pub fn loss(
        &self,
        base: &FluxTransformer,
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

/// The pipeline's adapters set to `set` (moved to the pipeline's device), for validation
/// renders with the adapter as it is now.
pub fn use_adapters(
    pipe: &mut FluxPipeline,
    layout: &AdapterLayout,
    set: &AdapterSet,
    cfg: &SubjectConfig,
) {
    let set = set.valid();
    let model = layout.attach(pipe.transformer.clone(), &pipe.transformer_names, &set);
    pipe.adapters = Some(AdaptedTransformer {
        model,
        schedules: vec![cfg.adapter.schedule()],
    });
}
