//! Text-to-image, img2img and inpainting with the UNet family (SD1.x / SD2.x / SDXL), step for
//! step as diffusers `StableDiffusionPipeline`, `StableDiffusionImg2ImgPipeline`,
//! `StableDiffusionInpaintPipeline` and their XL counterparts: prompt encoding with clip skip,
//! batched classifier-free guidance (negative prompt first) with optional guidance rescale,
//! SDXL's pooled text embeds and `time_ids`, the chosen sampler over the scheduler's DDPM
//! schedule, img2img's partial schedule, latent blending for plain models and the 9-channel
//! input for inpainting UNets, then `z / scaling` and the VAE decoder.

pub mod encode;
pub mod load;
pub mod lora;

use burn::tensor::{Device, Tensor};

use dreamforge_core::{Error, HostTensor, Result, noise::randn, to_host};
use dreamforge_models::text::clip::ClipTextModel;
use dreamforge_models::text::tokenizer::TextTokenizer;
use dreamforge_models::unet::{AddedCondition, UNet2DConditionModel};
use dreamforge_models::vae::AutoencoderKL;
use dreamforge_sampling::{
    DdpmConfig, Parameterization, SamplerKind, StepInfo, add_noise, img2img_start, sample_sd,
    sd_schedule,
};

use crate::conditioning::{InitImage, nearest_resize};
use crate::guidance::{cfg_combine, rescale_noise_cfg};

pub use load::{SdComponents, SdSource};

/// Which pipeline the UNet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdFamily {
    /// SD1.x / SD2.x: one CLIP text encoder.
    Sd,
    /// SDXL: two text encoders, pooled embeds and size conditioning.
    Sdxl,
}

/// Everything one generation call takes.
#[derive(Debug, Clone)]
pub struct SdRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance scale; guidance runs when > 1.
    pub guidance_scale: f32,
    /// `guidance_rescale` φ in [0, 1].
    pub guidance_rescale: f32,
    /// diffusers `clip_skip` (1 = the penultimate layer, A1111's "clip skip 2").
    pub clip_skip: Option<usize>,
    /// `None` = the model's scheduler.
    pub sampler: Option<SamplerKind>,
    /// Overrides the scheduler config's `prediction_type`.
    pub prediction_type: Option<Parameterization>,
    /// DDIM η (0 = deterministic).
    pub eta: f32,
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub num_images: usize,
    /// Image `i` draws its noise from `seed + i` (and its ancestral noise from a stream derived
    /// from it); `image_seeds[i]` instead when given.
    pub seed: u64,
    /// Per-image seeds (empty: `seed + i`).
    pub image_seeds: Vec<u64>,
    /// Initial noise instead of seeded noise: `[B, C, h, w]` (before `init_noise_sigma`).
    pub noise: Option<HostTensor>,
    /// img2img / inpainting input.
    pub init: Option<InitImage>,
}

impl SdRequest {
    /// The seed of image `i`.
    pub fn image_seed(&self, i: usize) -> u64 {
        self.image_seeds
            .get(i)
            .copied()
            .unwrap_or(self.seed + i as u64)
    }
}

/// Images in [-1, 1] `[B, 3, H, W]` and warnings.
#[derive(Debug)]
pub struct SdOutput {
    pub images: HostTensor,
    pub warnings: Vec<String>,
    /// The sampler that ran.
    pub sampler: SamplerKind,
}

/// The loaded UNet pipeline.
pub struct SdPipeline {
    pub family: SdFamily,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub text_encoder: ClipTextModel,
    pub tokenizer: TextTokenizer,
    pub text_encoder_2: Option<ClipTextModel>,
    pub tokenizer_2: Option<TextTokenizer>,
    pub scheduler: DdpmConfig,
    /// The sampler the model's scheduler config names (or the family default).
    pub default_sampler: SamplerKind,
    /// SDXL: an absent negative prompt means zero embeddings (diffusers default true).
    pub force_zeros_for_empty_prompt: bool,
    /// Notices from loading (e.g. a scheduler class mapped to the nearest sampler).
    pub notices: Vec<String>,
    /// Adapters in use ([`Self::set_adapters`]).
    pub adapters: Option<lora::SdAdapters>,
    pub device: Device,
}

impl SdPipeline {
    /// Uses `files` (each at its strength; a T-LoRA applies its rank mask to the UNet at every
    /// step) on the UNet and text encoders from now on, replacing any set before; an empty list
    /// removes them. PEFT / diffusers and kohya naming (SD1 diffusers-style and SDXL SGM-style
    /// UNet names). Returns, per file, the layers no model part matched. A layer that does not
    /// fit its weight is an error.
    pub fn set_adapters(
        &mut self,
        files: &[dreamforge_adapters::FileAdapter<'_>],
    ) -> Result<Vec<Vec<String>>> {
        if files.is_empty() {
            self.adapters = None;
            return Ok(Vec::new());
        }
        let converted: Vec<_> = files
            .iter()
            .map(|f| {
                lora::to_peft_layout(
                    f.file,
                    &self.unet,
                    Some(&self.text_encoder),
                    self.text_encoder_2.as_ref(),
                )
            })
            .collect();
        let files: Vec<_> = converted
            .iter()
            .zip(files)
            .map(|(file, f)| dreamforge_adapters::FileAdapter {
                file,
                strength: f.strength,
            })
            .collect();
        let (adapters, unmatched) = lora::attach_sd(
            &files,
            &self.unet,
            &self.text_encoder,
            self.text_encoder_2.as_ref(),
        )?;
        self.adapters = Some(adapters);
        Ok(unmatched)
    }

    /// (sequence states `[1, 77, D]`, SDXL pooled `[1, P]`) of one prompt with the base text
    /// encoders (what training conditions on; no clip skip).
    pub fn encode_prompt(
        &self,
        prompt: &str,
        warnings: &mut Vec<String>,
    ) -> Result<(Tensor<3>, Option<Tensor<2>>)> {
        let d = &self.device;
        match (&self.tokenizer_2, &self.text_encoder_2) {
            (Some(t2), Some(e2)) if self.family == SdFamily::Sdxl => {
                let (s, p) = encode::encode_sdxl(
                    [&self.tokenizer, t2],
                    [&self.text_encoder, e2],
                    &[prompt],
                    None,
                    d,
                    warnings,
                )?;
                Ok((s, Some(p)))
            }
            _ => Ok((
                encode::encode_sd(
                    &self.tokenizer,
                    &self.text_encoder,
                    &[prompt],
                    None,
                    d,
                    warnings,
                )?,
                None,
            )),
        }
    }

    /// The VAE's spatial downsampling (8 for SD).
    pub fn vae_scale_factor(&self) -> usize {
        1 << self.vae.config.block_out_channels.len().saturating_sub(1)
    }

    /// Latent channels the sampler works on (the VAE's, 4 for SD).
    fn latent_channels(&self) -> usize {
        self.vae.config.latent_channels
    }

    /// True for a 9-channel inpainting UNet (latents + mask + masked-image latents).
    pub fn is_inpainting_model(&self) -> bool {
        self.unet.config.in_channels == 2 * self.latent_channels() + 1
    }

    /// The native image size: the UNet's `sample_size` × the VAE factor (512 SD1, 1024 SDXL).
    pub fn default_size(&self) -> usize {
        self.unet
            .config
            .sample_size
            .as_ref()
            .map_or(64, |s| s.at(0))
            * self.vae_scale_factor()
    }

    /// Sizes must be multiples of the VAE factor (8), as diffusers requires; the UNet itself
    /// takes any latent size (its up blocks upsample to the skips' sizes).
    pub fn size_multiple(&self) -> usize {
        self.vae_scale_factor()
    }

    /// Checks a request before any heavy work.
    pub fn validate(&self, r: &SdRequest) -> Result<()> {
        if !r.image_seeds.is_empty() && r.image_seeds.len() != r.num_images {
            return Err(Error::InvalidInput(format!(
                "{} per-image seeds for {} images",
                r.image_seeds.len(),
                r.num_images
            )));
        }
        let m = self.size_multiple();
        if r.width == 0
            || r.height == 0
            || !r.width.is_multiple_of(m)
            || !r.height.is_multiple_of(m)
        {
            return Err(Error::InvalidInput(format!(
                "width and height must be positive multiples of {m} for this model (got {}x{})",
                r.width, r.height
            )));
        }
        if r.steps == 0 {
            return Err(Error::InvalidInput("steps must be at least 1".into()));
        }
        if r.num_images == 0 {
            return Err(Error::InvalidInput("num-images must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&r.guidance_rescale) {
            return Err(Error::InvalidInput(format!(
                "--guidance-rescale must be in [0, 1] (got {})",
                r.guidance_rescale
            )));
        }
        if !(r.guidance_scale.is_finite() && r.eta.is_finite() && r.eta >= 0.0) {
            return Err(Error::InvalidInput(
                "guidance scale and eta must be finite (eta ≥ 0)".into(),
            ));
        }
        if let Some(k) = r.clip_skip {
            let n = self.text_encoder.layers.len();
            let limit = if self.family == SdFamily::Sdxl {
                n - 1
            } else {
                n
            };
            if k >= limit {
                return Err(Error::InvalidInput(format!(
                    "--clip-skip {k} is too large for a text encoder with {n} layers"
                )));
            }
        }
        if let Some(init) = &r.init {
            crate::conditioning::check_strength(init.strength)?;
            if init.image.shape != [1, 3, r.height, r.width] {
                return Err(Error::InvalidInput(format!(
                    "the init image tensor has shape {:?}, expected [1, 3, {}, {}]",
                    init.image.shape, r.height, r.width
                )));
            }
            let n = r.steps;
            if init.mask.is_none() || !self.is_inpainting_model() || init.strength < 1.0 {
                let start = img2img_start(n, init.strength);
                if start >= n {
                    return Err(Error::InvalidInput(format!(
                        "--strength {} with {n} steps runs no denoising step (int({n}·strength) = 0); raise --strength or --steps",
                        init.strength
                    )));
                }
            }
        }
        let need = self.estimate_bytes(r);
        if let Some(avail) = crate::flux::available_memory_bytes(&self.device)
            && need > avail
        {
            return Err(Error::InvalidInput(format!(
                "{}x{} x{} needs about {:.1} GiB of working memory but about {:.1} GiB is available; use a smaller size or fewer images",
                r.width,
                r.height,
                r.num_images,
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            )));
        }
        if self.is_inpainting_model() && r.init.as_ref().is_some_and(|i| i.mask.is_none()) {
            return Err(Error::InvalidInput(
                "this is an inpainting model: an --init-image needs a --mask".into(),
            ));
        }
        Ok(())
    }

    /// Rough peak working memory of a request in bytes (f32): the VAE decoder's widest
    /// full-resolution activations, or the UNet's largest self-attention score matrix
    /// (heads × tokens² per image, doubled under CFG) at the first level with attention.
    pub fn estimate_bytes(&self, r: &SdRequest) -> u64 {
        let px = (r.width * r.height) as u64;
        let n = r.num_images as u64;
        let c0 = *self.vae.config.block_out_channels.first().unwrap_or(&128) as u64;
        let vae = n * c0 * px * 4 * 4;
        let u = &self.unet.config;
        let vsf = self.vae_scale_factor() as u64;
        let mut attn = 0u64;
        for (level, t) in u.down_block_types.iter().enumerate() {
            if t.has_attention() {
                let tokens = (px / (vsf * vsf)) >> (2 * level);
                let heads = u.heads(level) as u64;
                attn = attn.max(heads * tokens * tokens * 4 * 2);
                break;
            }
        }
        let batch = if r.guidance_scale > 1.0 { 2 * n } else { n };
        vae.max(batch * attn)
    }

    /// (positive, negative) prompt states and, for SDXL, pooled embeds; `None` negative when
    /// guidance is off.
    #[allow(clippy::type_complexity)]
    fn encode(
        &self,
        r: &SdRequest,
        cfg: bool,
        warnings: &mut Vec<String>,
    ) -> Result<(
        Tensor<3>,
        Option<Tensor<3>>,
        Option<(Tensor<2>, Option<Tensor<2>>)>,
    )> {
        let d = &self.device;
        match self.family {
            SdFamily::Sd => {
                let texts: Vec<&str> = if cfg {
                    vec![
                        r.prompt.as_str(),
                        r.negative_prompt.as_deref().unwrap_or(""),
                    ]
                } else {
                    vec![r.prompt.as_str()]
                };
                let s = encode::encode_sd(
                    &self.tokenizer,
                    self.adapters
                        .as_ref()
                        .map_or(&self.text_encoder, |a| &a.text_encoder),
                    &texts,
                    r.clip_skip,
                    d,
                    warnings,
                )?;
                if cfg {
                    let [_, t, c] = s.dims();
                    let pos = s.clone().slice([0..1, 0..t, 0..c]);
                    let neg = s.slice([1..2, 0..t, 0..c]);
                    Ok((pos, Some(neg), None))
                } else {
                    Ok((s, None, None))
                }
            }
            SdFamily::Sdxl => {
                let (t2, e2) = match (&self.tokenizer_2, &self.text_encoder_2) {
                    (Some(t), Some(e)) => (t, e),
                    _ => {
                        return Err(Error::InvalidInput(
                            "an SDXL pipeline needs text_encoder_2 and tokenizer_2".into(),
                        ));
                    }
                };
                let toks = [&self.tokenizer, t2];
                let encs = match &self.adapters {
                    Some(a) => [&a.text_encoder, a.text_encoder_2.as_ref().unwrap_or(e2)],
                    None => [&self.text_encoder, e2],
                };
                let zeros_neg = r.negative_prompt.is_none() && self.force_zeros_for_empty_prompt;
                let texts: Vec<&str> = if cfg && !zeros_neg {
                    vec![
                        r.prompt.as_str(),
                        r.negative_prompt.as_deref().unwrap_or(""),
                    ]
                } else {
                    vec![r.prompt.as_str()]
                };
                let (s, p) = encode::encode_sdxl(toks, encs, &texts, r.clip_skip, d, warnings)?;
                if !cfg {
                    return Ok((s, None, Some((p, None))));
                }
                if zeros_neg {
                    let (ns, np) = (s.zeros_like(), p.zeros_like());
                    return Ok((s, Some(ns), Some((p, Some(np)))));
                }
                let [_, t, c] = s.dims();
                let pc = p.dims()[1];
                Ok((
                    s.clone().slice([0..1, 0..t, 0..c]),
                    Some(s.slice([1..2, 0..t, 0..c])),
                    Some((p.clone().slice([0..1, 0..pc]), Some(p.slice([1..2, 0..pc])))),
                ))
            }
        }
    }

    /// SDXL `add_time_ids`: `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]`.
    fn time_ids(&self, r: &SdRequest, n: usize) -> Tensor<2> {
        let (h, w) = (r.height as f32, r.width as f32);
        let row = [h, w, 0.0, 0.0, h, w];
        let data: Vec<f32> = (0..n).flat_map(|_| row).collect();
        HostTensor::new(vec![n, 6], data).to_device(&self.device)
    }

    fn initial_noise(&self, r: &SdRequest, c: usize, h: usize, w: usize) -> Result<Tensor<4>> {
        let b = r.num_images;
        match &r.noise {
            Some(t) if t.shape == [b, c, h, w] => Ok(t.clone().to_device(&self.device)),
            Some(t) => Err(Error::InvalidInput(format!(
                "--noise tensor has shape {:?}; for {}x{} with {b} image(s) expected {:?}",
                t.shape,
                r.width,
                r.height,
                [b, c, h, w]
            ))),
            None => {
                let per: Vec<f32> = (0..b)
                    .flat_map(|i| randn(r.image_seed(i), &[1, c, h, w]).data)
                    .collect();
                Ok(HostTensor::new(vec![b, c, h, w], per).to_device(&self.device))
            }
        }
    }

    /// Scaled VAE latents (posterior mean · scaling) of `[1, 3, H, W]` pixels, repeated `b` times.
    fn encode_image(&self, pixels: HostTensor, b: usize) -> Tensor<4> {
        let (mean, _) = self.vae.encode(pixels.to_device(&self.device));
        self.vae.scale_latents(mean).repeat_dim(0, b)
    }

    /// Runs one request. `on_step` returning `false` cancels (then `Ok(None)`).
    pub fn generate(
        &self,
        r: &SdRequest,
        mut on_step: impl FnMut(StepInfo) -> bool,
    ) -> Result<Option<SdOutput>> {
        self.validate(r)?;
        let mut warnings = Vec::new();
        let d = &self.device;
        let b = r.num_images;
        let vsf = self.vae_scale_factor();
        let (h, w) = (r.height / vsf, r.width / vsf);
        let c = self.latent_channels();
        let kind = r.sampler.unwrap_or(self.default_sampler);
        let param = match r.prediction_type {
            Some(p) => p,
            None => self
                .scheduler
                .parameterization()
                .map_err(|e| Error::InvalidInput(format!("scheduler: {e}")))?,
        };
        let sched = sd_schedule(kind, &self.scheduler, r.steps)
            .map_err(|e| Error::InvalidInput(format!("scheduler: {e}")))?;
        let cfg = r.guidance_scale > 1.0;
        if r.negative_prompt.is_some() && !cfg {
            warnings
                .push("a negative prompt has no effect unless --guidance is greater than 1".into());
        }

        let (pos, neg, pooled) = self.encode(r, cfg, &mut warnings)?;
        let states = match &neg {
            Some(n) => Tensor::cat(vec![n.clone().repeat_dim(0, b), pos.repeat_dim(0, b)], 0),
            None => pos.repeat_dim(0, b),
        };
        let batch = if cfg { 2 * b } else { b };
        let added = match pooled {
            Some((p, np)) => {
                self.check_sdxl_widths(p.dims()[1])?;
                let text_embeds = match np {
                    Some(np) => Tensor::cat(vec![np.repeat_dim(0, b), p.repeat_dim(0, b)], 0),
                    None => p.repeat_dim(0, b),
                };
                Some(AddedCondition {
                    text_embeds,
                    time_ids: self.time_ids(r, batch),
                })
            }
            None => None,
        };

        let noise = self.initial_noise(r, c, h, w)?;
        let inpaint_model = self.is_inpainting_model();
        // img2img / inpainting: image latents, the mask on the latent grid, where to start.
        let mut start = 0;
        let mut image_latents = None;
        let mut latent_mask = None;
        let mut unet_extra = None;
        if let Some(init) = &r.init {
            let x0 = self.encode_image(init.image.clone(), b);
            let pure_noise_start = init.mask.is_some() && init.strength >= 1.0;
            if !pure_noise_start {
                start = img2img_start(r.steps, init.strength);
            }
            if let Some(m) = &init.mask {
                let m = nearest_resize(m, h, w).to_device::<4>(d).repeat_dim(0, b);
                if inpaint_model {
                    let masked = self.encode_image(init.masked_image(), b);
                    unet_extra = Some((m.clone(), masked));
                }
                latent_mask = Some(m);
            }
            image_latents = Some((x0, pure_noise_start));
        } else if inpaint_model {
            // Text-to-image with an inpainting UNet: everything is repainted, the masked image
            // is a neutral grey (as A1111 does).
            let grey = HostTensor::new(
                vec![1, 3, r.height, r.width],
                vec![0.0; 3 * r.height * r.width],
            );
            unet_extra = Some((
                Tensor::<4>::ones([b, 1, h, w], d),
                self.encode_image(grey, b),
            ));
        }
        let x = match &image_latents {
            Some((x0, false)) => add_noise(kind, &sched, x0.clone(), noise.clone(), start),
            _ => noise.clone() * sched.init_noise_sigma,
        };
        let unet_extra = unet_extra.map(|(m, l)| {
            if cfg {
                (
                    Tensor::cat(vec![m.clone(), m], 0),
                    Tensor::cat(vec![l.clone(), l], 0),
                )
            } else {
                (m, l)
            }
        });

        let denoise = |x: Tensor<4>, t: f32, _i: usize| -> Result<Tensor<4>> {
            let input = if cfg {
                Tensor::cat(vec![x.clone(), x], 0)
            } else {
                x
            };
            let input = match &unet_extra {
                Some((m, l)) => Tensor::cat(vec![input, m.clone(), l.clone()], 1),
                None => input,
            };
            let ts = vec![t; batch];
            // Adapters: the per-step pass sets T-LoRA rank masks for this timestep.
            let adapted = self.adapters.as_ref().map(|a| {
                dreamforge_adapters::at_step(
                    a.unet.clone(),
                    &a.schedules,
                    dreamforge_adapters::rank::progress_from_timestep(
                        t as f64,
                        self.scheduler.num_train_timesteps as f64,
                    ),
                )
            });
            let out = adapted.as_ref().unwrap_or(&self.unet).forward(
                input,
                &ts,
                states.clone(),
                added.as_ref().map(|a| AddedCondition {
                    text_embeds: a.text_embeds.clone(),
                    time_ids: a.time_ids.clone(),
                }),
            )?;
            if !cfg {
                return Ok(out);
            }
            let [_, oc, oh, ow] = out.dims();
            let uncond = out.clone().slice([0..b, 0..oc, 0..oh, 0..ow]);
            let text = out.slice([b..2 * b, 0..oc, 0..oh, 0..ow]);
            let guided = cfg_combine(uncond, text.clone(), r.guidance_scale);
            Ok(rescale_noise_cfg(guided, text, r.guidance_rescale))
        };
        // Ancestral / η > 0 noise: one stream per image derived from its seed.
        let step_noise = |i: usize| -> Tensor<4> {
            let per: Vec<f32> = (0..b)
                .flat_map(|k| {
                    let s = r.image_seed(k) ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1));
                    randn(s, &[1, c, h, w]).data
                })
                .collect();
            HostTensor::new(vec![b, c, h, w], per).to_device(d)
        };
        let n = sched.timesteps.len();
        let blend = match (&latent_mask, &image_latents, inpaint_model) {
            (Some(m), Some((x0, _)), false) => Some((m.clone(), x0.clone())),
            _ => None,
        };
        let step = |info: StepInfo, x: Tensor<4>| -> Option<Tensor<4>> {
            if !on_step(info) {
                return None;
            }
            match &blend {
                // StableDiffusionInpaintPipeline with a plain UNet: the known region is the
                // image latents noised to the next timestep (clean after the last step).
                Some((m, x0)) => {
                    let next = info.step;
                    let proper = if next < n {
                        add_noise(kind, &sched, x0.clone(), noise.clone(), next)
                    } else {
                        x0.clone()
                    };
                    Some(proper * (m.clone().neg() + 1.0) + x * m.clone())
                }
                None => Some(x),
            }
        };
        let Some(latents) = sample_sd(
            kind, &sched, param, r.eta, start, x, denoise, step_noise, step,
        )?
        else {
            return Ok(None);
        };
        let image = self.vae.decode(self.vae.unscale_latents(latents));
        Ok(Some(SdOutput {
            images: to_host(image),
            warnings,
            sampler: kind,
        }))
    }

    /// SDXL's add-embedding input width must be `6 · addition_time_embed_dim + pooled width`.
    fn check_sdxl_widths(&self, pooled: usize) -> Result<()> {
        let cfg = &self.unet.config;
        let time = cfg.addition_time_embed_dim.unwrap_or(0);
        if let Some(expected) = cfg.projection_class_embeddings_input_dim
            && expected != 6 * time + pooled
        {
            return Err(Error::config(
                "unet",
                format!(
                    "the UNet's add embedding takes {expected} features but the text encoder gives {pooled} pooled + 6·{time} time features = {}",
                    6 * time + pooled
                ),
            ));
        }
        Ok(())
    }
}
