//! Text-to-image with the FLUX.1 family, step for step as diffusers `FluxPipeline`: CLIP pooled
//! output and T5 states, packed latents with image ids, `linspace(1, 1/N, N)` sigmas shifted by
//! μ(L), the distilled guidance embedding, optional true CFG with a negative prompt, FlowMatch
//! Euler, unpack, `z / scaling + shift`, VAE decode.

use burn::tensor::{Device, Int, Tensor, TensorData};
use dreamforge_adapters::rank::progress_from_sigma;
use dreamforge_adapters::{FileAdapter, RankSchedule, at_step, attach_files};
use dreamforge_core::export::ParamKeys;

use dreamforge_core::{Error, HostTensor, Result, WeightSet, noise::randn, to_host};
use dreamforge_models::dit::flux::{FluxConfig, FluxInputs, FluxTransformer, Rope};
use dreamforge_models::text::clip::ClipTextModel;
use dreamforge_models::text::t5::T5Encoder;
use dreamforge_models::text::tokenizer::TextTokenizer;
use dreamforge_models::vae::Autoencoder;
use dreamforge_sampling::{
    FlowMatchConfig, StepInfo, calculate_shift, flow_match_schedule, flux_pipeline_sigmas,
    sample_euler,
};

use crate::components::FluxComponents;
use crate::conditioning::{InitImage, nearest_resize};
use crate::guidance::cfg_combine;
use crate::latents::{image_ids, pack, unpack};

/// CLIP's context length in every FLUX release.
const CLIP_MAX_LENGTH: usize = 77;

/// Everything one generation call takes.
#[derive(Debug, Clone)]
pub struct FluxRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// True CFG scale (applies only with a negative prompt and a value > 1).
    pub true_cfg_scale: f32,
    /// The distilled guidance value fed to the guidance embedding (dev); ignored by schnell.
    pub guidance: f32,
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub num_images: usize,
    /// Image `i` draws its noise from `seed + i`, or from `image_seeds[i]` when given.
    pub seed: u64,
    /// Per-image seeds (empty: `seed + i`); lets one batch hold seeds that are not
    /// consecutive.
    pub image_seeds: Vec<u64>,
    /// T5 context length (512 for dev, 256 for schnell).
    pub max_sequence_length: usize,
    /// Initial latents instead of seeded noise: packed `[B, L, C]` or unpacked `[B, C, H, W]`.
    pub noise: Option<HostTensor>,
    /// img2img (`FluxImg2ImgPipeline`) / inpainting (`FluxInpaintPipeline`) input.
    pub init: Option<InitImage>,
}

impl FluxRequest {
    /// The seed of image `i`.
    pub fn image_seed(&self, i: usize) -> u64 {
        self.image_seeds
            .get(i)
            .copied()
            .unwrap_or(self.seed + i as u64)
    }
}

/// A generation's result: images in [-1, 1], `[B, 3, H, W]`, and warnings (e.g. truncation).
#[derive(Debug)]
pub struct FluxOutput {
    pub images: HostTensor,
    pub warnings: Vec<String>,
}

/// The transformer with adapters attached (a clone: the base stays untouched, so adapters can be
/// swapped without reloading) and, per adapter slot, its T-LoRA rank schedule (`None`: LoRA).
#[derive(Debug, Clone)]
pub struct AdaptedTransformer {
    pub model: FluxTransformer,
    pub schedules: Vec<Option<RankSchedule>>,
}

/// The loaded FLUX pipeline.
pub struct FluxPipeline {
    pub transformer: FluxTransformer,
    /// Module path → diffusers parameter name of `transformer` (what adapters match).
    pub transformer_names: ParamKeys,
    /// Adapters in use ([`Self::set_adapters`]).
    pub adapters: Option<AdaptedTransformer>,
    /// Words the tokenizers may not know but that are meant (adapter trigger words: a
    /// word-level tokenizer maps them to its unknown token, which the adapter was trained on);
    /// no unknown-word warning for them.
    pub trigger_words: Vec<String>,
    pub vae: Autoencoder,
    pub text_encoder: ClipTextModel,
    /// T5; `None` for a CLIP-only model, whose sequence states are CLIP's `last_hidden_state`.
    pub text_encoder_2: Option<T5Encoder>,
    pub tokenizer: TextTokenizer,
    pub tokenizer_2: Option<TextTokenizer>,
    pub scheduler: FlowMatchConfig,
    pub device: Device,
}

impl FluxPipeline {
    pub fn load(c: &FluxComponents, device: &Device) -> Result<Self> {
        let config = c
            .transformer_config
            .as_deref()
            .map(FluxConfig::from_file)
            .transpose()?;
        let scheduler: Option<FlowMatchConfig> = match &c.scheduler_config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    Error::config(p, format!("not a flow-match scheduler config: {e}"))
                })?)
            }
            None => None,
        };
        check_weights_fit(c, device)?;
        let (transformer, transformer_names) =
            FluxTransformer::load_named(&c.transformer, config, device)?;
        let scheduler =
            scheduler.unwrap_or_else(|| default_scheduler(transformer.config.guidance_embeds));
        let pipe = Self {
            tokenizer: TextTokenizer::load(&c.tokenizer)?,
            tokenizer_2: c
                .tokenizer_2
                .as_deref()
                .map(TextTokenizer::load)
                .transpose()?,
            text_encoder: ClipTextModel::load(&c.text_encoder, device)?,
            text_encoder_2: c
                .text_encoder_2
                .as_deref()
                .map(|p| T5Encoder::load(p, device))
                .transpose()?,
            vae: Autoencoder::load(&c.vae, device)?,
            transformer,
            transformer_names,
            adapters: None,
            trigger_words: Vec::new(),
            scheduler,
            device: device.clone(),
        };
        pipe.check_compatible(c)?;
        Ok(pipe)
    }

    /// The components must fit together: packed VAE latents, T5 width and CLIP width are the
    /// transformer's input widths.
    fn check_compatible(&self, c: &FluxComponents) -> Result<()> {
        let t = &self.transformer.config;
        if self.text_encoder_2.is_some() != self.tokenizer_2.is_some() {
            return Err(Error::config(
                &c.transformer,
                "the T5 encoder and its tokenizer must be given together (or both left out for a CLIP-only model)",
            ));
        }
        let latent = self.vae.latent_channels();
        if t.in_channels != 4 * latent {
            return Err(Error::config(
                &c.transformer,
                format!(
                    "in_channels {} does not fit the VAE at {} ({latent} latent channels, packed 2x2 = {})",
                    t.in_channels,
                    c.vae.display(),
                    4 * latent
                ),
            ));
        }
        if t.out_channels() != t.in_channels {
            return Err(Error::config(
                &c.transformer,
                "out_channels must equal in_channels for FLUX sampling",
            ));
        }
        let clip = self.text_encoder.config().hidden_size;
        let (seq_width, seq_from) = match (&self.text_encoder_2, &c.text_encoder_2) {
            (Some(t5), Some(p)) => (
                t5.config.d_model,
                format!("the T5 encoder at {} (d_model", p.display()),
            ),
            _ => (
                clip,
                format!(
                    "the CLIP text encoder at {} (no T5; hidden_size",
                    c.text_encoder.display()
                ),
            ),
        };
        if t.joint_attention_dim != seq_width {
            return Err(Error::config(
                &c.transformer,
                format!(
                    "joint_attention_dim {} does not fit {seq_from} {seq_width})",
                    t.joint_attention_dim,
                ),
            ));
        }
        if t.pooled_projection_dim != clip {
            return Err(Error::config(
                &c.transformer,
                format!(
                    "pooled_projection_dim {} does not fit the CLIP text encoder at {} (hidden_size {clip})",
                    t.pooled_projection_dim,
                    c.text_encoder.display()
                ),
            ));
        }
        Ok(())
    }

    /// The autoencoder's spatial downsampling (8 for FLUX's VAE).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.downscale_factor()
    }

    /// Checks the request before any heavy work: sizes, steps, a noise tensor's shape, memory.
    pub fn validate(&self, r: &FluxRequest) -> Result<()> {
        if !r.image_seeds.is_empty() && r.image_seeds.len() != r.num_images {
            return Err(Error::InvalidInput(format!(
                "{} per-image seeds for {} images",
                r.image_seeds.len(),
                r.num_images
            )));
        }
        let m = self.vae_scale_factor() * 2;
        if r.width == 0
            || r.height == 0
            || !r.width.is_multiple_of(m)
            || !r.height.is_multiple_of(m)
        {
            return Err(Error::InvalidInput(format!(
                "width and height must be positive multiples of {m} (got {}x{})",
                r.width, r.height
            )));
        }
        if r.steps == 0 {
            return Err(Error::InvalidInput("steps must be at least 1".into()));
        }
        if r.num_images == 0 {
            return Err(Error::InvalidInput("num-images must be at least 1".into()));
        }
        if let Some(init) = &r.init {
            crate::conditioning::check_strength(init.strength)?;
            if init.image.shape != [1, 3, r.height, r.width] {
                return Err(Error::InvalidInput(format!(
                    "the init image tensor has shape {:?}, expected [1, 3, {}, {}]",
                    init.image.shape, r.height, r.width
                )));
            }
        }
        if r.max_sequence_length == 0 {
            return Err(Error::InvalidInput(
                "max-sequence-length must be at least 1".into(),
            ));
        }
        let need = self.estimate_bytes(r);
        if let Some(avail) = available_memory_bytes(&self.device)
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
        Ok(())
    }

    /// Rough peak working memory of a request, in bytes (f32): the VAE decoder's widest
    /// full-resolution activations dominate at large sizes, then transformer activations.
    pub fn estimate_bytes(&self, r: &FluxRequest) -> u64 {
        let b = r.num_images as u64 * if r.negative_prompt.is_some() { 2 } else { 1 };
        let px = (r.width * r.height) as u64;
        let c0 = self.vae.decoder_width() as u64;
        let vae = r.num_images as u64 * c0 * px * 4 * 4;
        let m = (self.vae_scale_factor() * 2) as u64;
        let l = px / (m * m);
        let seq = l + r.max_sequence_length as u64;
        let inner = self.transformer.config.inner_dim() as u64;
        let dit = b * seq * inner * 4 * 16;
        vae.max(dit)
    }

    fn tokenize(
        &self,
        tok: &TextTokenizer,
        texts: &[&str],
        max_len: usize,
        what: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Tensor<2, Int>> {
        for text in texts {
            let mut unknown = tok.unknown_words(text);
            unknown.retain(|w| !self.trigger_words.iter().any(|t| t.eq_ignore_ascii_case(w)));
            if !unknown.is_empty() {
                let words = tok.words();
                let known = if words.len() <= 200 {
                    format!(" It knows only these words: {}", words.join(" "))
                } else {
                    String::new()
                };
                warnings.push(format!(
                    "the {what} tokenizer does not know the word(s) {}; the model cannot follow them.{known}",
                    unknown.join(", ")
                ));
            }
        }
        let enc = tok.encode_batch(texts, max_len)?;
        if enc.truncated.iter().any(|&t| t) {
            warnings.push(format!(
                "the prompt is longer than the {what} limit of {max_len} tokens and was truncated (as diffusers does)"
            ));
        }
        let n = enc.ids.len();
        let flat: Vec<i64> = enc.ids.into_iter().flatten().collect();
        Ok(Tensor::from_data(
            TensorData::new(flat, [n, max_len]),
            &self.device,
        ))
    }

    /// CLIP's context length: 77 in every FLUX release, less for an encoder with fewer
    /// positions.
    pub fn clip_max_length(&self) -> usize {
        CLIP_MAX_LENGTH.min(self.text_encoder.config().max_position_embeddings)
    }

    /// (sequence states `[B, T, D]`, CLIP pooled `[B, P]`) for `prompt` repeated `n` times: T5
    /// states at `max_seq` tokens, or, without T5, CLIP's `last_hidden_state`.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        n: usize,
        max_seq: usize,
        warnings: &mut Vec<String>,
    ) -> Result<(Tensor<3>, Tensor<2>)> {
        let clip_ids = self.tokenize(
            &self.tokenizer,
            &[prompt],
            self.clip_max_length(),
            "CLIP",
            warnings,
        )?;
        let clip = self.text_encoder.forward(clip_ids)?;
        let states = match (&self.text_encoder_2, &self.tokenizer_2) {
            (Some(t5), Some(tok)) => {
                let t5_ids = self.tokenize(tok, &[prompt], max_seq, "T5", warnings)?;
                t5.forward(t5_ids, None)
            }
            _ => clip.last_hidden_state,
        };
        Ok((states.repeat_dim(0, n), clip.pooler_output.repeat_dim(0, n)))
    }

    /// The diffusers FLUX schedule for `steps` at `l` image tokens (μ shift when dynamic).
    pub(crate) fn schedule(
        &self,
        steps: usize,
        l: usize,
    ) -> Result<dreamforge_sampling::flow_match::Schedule> {
        let mu = self
            .scheduler
            .use_dynamic_shifting
            .then(|| calculate_shift(l, &self.scheduler));
        flow_match_schedule(
            &self.scheduler,
            steps,
            Some(&flux_pipeline_sigmas(steps)),
            mu,
        )
        .map_err(|e| Error::InvalidInput(format!("scheduler: {e}")))
    }

    /// RoPE tables for `t_len` text tokens (ids 0) and the image grid of `h × w` latents.
    pub(crate) fn rope(&self, t_len: usize, h: usize, w: usize) -> Rope {
        self.transformer.rope(
            &vec![0.0; t_len * 3],
            &image_ids(h / 2, w / 2),
            &self.device,
        )
    }

    /// The adapted transformer with T-LoRA rank masks set for `sigma`, or `None` without
    /// adapters (use the base).
    pub(crate) fn adapted_at(&self, sigma: f32) -> Option<FluxTransformer> {
        self.adapters.as_ref().map(|a| {
            at_step(
                a.model.clone(),
                &a.schedules,
                progress_from_sigma(sigma as f64),
            )
        })
    }

    fn initial_latents(&self, r: &FluxRequest, c: usize, h: usize, w: usize) -> Result<Tensor<3>> {
        let b = r.num_images;
        let l = (h / 2) * (w / 2);
        match &r.noise {
            Some(t) if t.shape == [b, l, c * 4] => Ok(t.clone().to_device(&self.device)),
            Some(t) if t.shape == [b, c, h, w] => Ok(pack(t.clone().to_device(&self.device))),
            Some(t) => Err(Error::InvalidInput(format!(
                "--noise tensor has shape {:?}; for {}x{} with {b} image(s) expected packed {:?} or unpacked {:?}",
                t.shape,
                r.width,
                r.height,
                [b, l, c * 4],
                [b, c, h, w]
            ))),
            None => {
                let per: Vec<f32> = (0..b)
                    .flat_map(|i| randn(r.image_seed(i), &[1, c, h, w]).data)
                    .collect();
                Ok(pack(
                    HostTensor::new(vec![b, c, h, w], per).to_device(&self.device),
                ))
            }
        }
    }

    /// Packed image latents `[B, L, 4C]` of an init image: `(mean − shift) · scaling` (the
    /// posterior mean; diffusers samples the posterior with its generator, a difference far
    /// below the noise added on top).
    fn image_latents(&self, init: &InitImage, b: usize) -> Tensor<3> {
        let mean = self
            .vae
            .encode_mean(init.image.clone().to_device(&self.device));
        pack(self.vae.scale_latents(mean)).repeat_dim(0, b)
    }

    /// Runs one request. `on_step` returning `false` cancels (then `Ok(None)`).
    /// Uses `files` (each at its strength; T-LoRA files apply their rank mask at every step)
    /// from now on, replacing any adapters set before; an empty list removes them. Returns,
    /// per file, the layers that matched no transformer weight (a file for another model part
    /// or architecture: worth a warning). A layer that does not fit its weight is an error.
    pub fn set_adapters(&mut self, files: &[FileAdapter<'_>]) -> Result<Vec<Vec<String>>> {
        self.trigger_words = files.iter().filter_map(|f| f.file.trigger()).collect();
        if files.is_empty() {
            self.adapters = None;
            return Ok(Vec::new());
        }
        // BFL-layout files (kohya, XLabs, BFL) → diffusers module names.
        let converted: Vec<_> = files
            .iter()
            .map(|f| crate::flux_lora::to_diffusers_layout(f.file, &self.transformer.config))
            .collect();
        let files: Vec<FileAdapter> = converted
            .iter()
            .zip(files)
            .map(|(file, f)| FileAdapter {
                file,
                strength: f.strength,
            })
            .collect();
        let names = &self.transformer_names;
        let (model, unmatched) = attach_files(
            self.transformer.clone(),
            "transformer",
            |p| names.key_of(p),
            &files,
        )?;
        self.adapters = Some(AdaptedTransformer {
            model,
            schedules: files.iter().map(|f| f.file.schedule()).collect(),
        });
        Ok(unmatched)
    }

    pub fn generate(
        &self,
        r: &FluxRequest,
        mut on_step: impl FnMut(StepInfo) -> bool,
    ) -> Result<Option<FluxOutput>> {
        self.validate(r)?;
        let mut warnings = Vec::new();
        let b = r.num_images;
        let vsf = self.vae_scale_factor();
        let (h, w) = (2 * (r.height / (vsf * 2)), 2 * (r.width / (vsf * 2)));
        let c = self.transformer.config.in_channels / 4;
        let (states, pooled) =
            self.encode_prompt(&r.prompt, b, r.max_sequence_length, &mut warnings)?;
        let cfg = match (&r.negative_prompt, r.true_cfg_scale > 1.0) {
            (Some(neg), true) => {
                Some(self.encode_prompt(neg, b, r.max_sequence_length, &mut warnings)?)
            }
            (Some(_), false) => {
                warnings.push(
                    "a negative prompt has no effect unless --true-cfg is greater than 1".into(),
                );
                None
            }
            _ => None,
        };
        let noise = self.initial_latents(r, c, h, w)?;
        let l = noise.dims()[1];
        let t_len = states.dims()[1];
        let rope = self.rope(t_len, h, w);

        let schedule = self.schedule(r.steps, l)?;
        // img2img / inpainting: FluxImg2ImgPipeline.get_timesteps starts at
        // int(max(N − N·strength, 0)) and noises the image latents to that σ.
        let (start, image_latents, mask) = match &r.init {
            Some(init) => {
                let n = r.steps as f32;
                let start = (n - n * init.strength).max(0.0) as usize;
                let x0 = self.image_latents(init, b);
                let mask = init.mask.as_ref().map(|m| {
                    let m = nearest_resize(m, h, w).to_device::<4>(&self.device);
                    pack(m.repeat_dim(1, c)).repeat_dim(0, b)
                });
                (start, Some(x0), mask)
            }
            None => (0, None, None),
        };
        let sigmas = &schedule.sigmas[start..];
        let latents = match &image_latents {
            Some(x0) => {
                let s = sigmas[0];
                noise.clone() * s + x0.clone() * (1.0 - s)
            }
            None => noise.clone(),
        };
        let guidance = self
            .transformer
            .config
            .guidance_embeds
            .then(|| vec![r.guidance; b]);

        let denoise = |x: Tensor<3>, sigma: f32, i: usize| -> Result<Tensor<3>> {
            // diffusers passes `t / 1000` with t = 1000·σ rounded to f32.
            let t = vec![schedule.timesteps[start + i] / 1000.0; b];
            // Adapters: the per-step pass sets T-LoRA rank masks for this σ.
            let adapted = self.adapted_at(sigma);
            let model = adapted.as_ref().unwrap_or(&self.transformer);
            let run = |s: &Tensor<3>, p: &Tensor<2>| {
                model.forward(
                    FluxInputs {
                        hidden_states: x.clone(),
                        encoder_hidden_states: s.clone(),
                        pooled_projections: p.clone(),
                        timestep: t.clone(),
                        guidance: guidance.clone(),
                    },
                    &rope,
                )
            };
            let v = run(&states, &pooled)?;
            match &cfg {
                Some((ns, np)) => Ok(cfg_combine(run(ns, np)?, v, r.true_cfg_scale)),
                None => Ok(v),
            }
        };
        // FluxInpaintPipeline: after each step the known region is replaced by the image
        // latents noised to the next σ (clean after the last step).
        let step = |info: StepInfo, x: Tensor<3>| -> Option<Tensor<3>> {
            if !on_step(info) {
                return None;
            }
            match (&mask, &image_latents) {
                (Some(m), Some(x0)) => {
                    let s = info.sigma;
                    let proper = noise.clone() * s + x0.clone() * (1.0 - s);
                    Some(proper * (m.clone().neg() + 1.0) + x * m.clone())
                }
                _ => Some(x),
            }
        };
        let Some(latents) = sample_euler(latents, sigmas, denoise, step)? else {
            return Ok(None);
        };
        let z = self.vae.unscale_latents(unpack(latents, h, w));
        let image = self.vae.decode(z);
        Ok(Some(FluxOutput {
            images: to_host(image),
            warnings,
        }))
    }
}

/// FLUX.1's scheduler when the model folder has none: dev (guidance-distilled) uses dynamic
/// shifting, schnell a static shift of 1.
fn default_scheduler(distilled: bool) -> FlowMatchConfig {
    FlowMatchConfig {
        use_dynamic_shifting: distilled,
        shift: if distilled { 3.0 } else { 1.0 },
        ..Default::default()
    }
}

/// Refuses, before reading any tensor, a model whose f32 weights cannot fit in memory (a
/// 12B FLUX.1 needs ~48 GiB in f32), instead of being killed half-way through loading.
fn check_weights_fit(c: &FluxComponents, device: &Device) -> Result<()> {
    let Some(avail) = available_memory_bytes(device) else {
        return Ok(());
    };
    let mut params = 0u64;
    let mut paths = vec![&c.transformer, &c.text_encoder];
    paths.extend(c.text_encoder_2.as_ref());
    if !is_pixel_space(&c.vae) {
        paths.push(&c.vae);
    }
    for p in paths {
        let set = WeightSet::open(p)?;
        for k in set.keys() {
            params += set
                .shape(k)
                .map_or(0, |s| s.iter().product::<usize>() as u64);
        }
    }
    let need = params * 4;
    if need > avail {
        return Err(Error::InvalidInput(format!(
            "{}: the model has {:.2}B parameters, about {:.1} GiB in f32, but about {:.1} GiB of memory is available",
            c.transformer.display(),
            params as f64 / 1e9,
            need as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// True for a parameter-free `PixelSpace` autoencoder folder (nothing to weigh).
fn is_pixel_space(vae: &std::path::Path) -> bool {
    std::fs::read_to_string(vae.join("config.json"))
        .is_ok_and(|t| t.contains(dreamforge_models::vae::pixel::PIXEL_SPACE_CLASS))
}

/// Memory the device can still give, where it can be known (CPU: `MemAvailable`).
pub(crate) fn available_memory_bytes(device: &Device) -> Option<u64> {
    // GPU memory is not visible here; the host limit applies to the CPU (flex) backend only.
    if !format!("{device:?}").to_ascii_lowercase().contains("flex") {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
