//! `dreamforge train --subject DIR --token T --class C --method lora|tlora --out DIR`: subject
//! fine-tuning of a FLUX-family model (default: the built-in nano model). Writes under `--out`:
//! `adapter.safetensors` (the final adapter), `adapters/step-N.safetensors` at every
//! checkpoint, `checkpoint/` (resumable: adapters + optimizer + RNG + step + run config),
//! `loss.jsonl`, `run_config.json`, `samples/step-N/*.png` validation renders, and
//! `class_images/` (prior preservation, generated once by the base model and reused).
//! Ctrl-C saves a checkpoint and exits 130; `--resume` continues with the saved settings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use clap::{Args, ValueEnum};

use dreamforge_core::image_io::{RgbImage, read_png_text, save_png};
use dreamforge_core::{DeviceSpec, Error};
use dreamforge_models::dit::flux::FluxTransformer;
use dreamforge_models::unet::UNet2DConditionModel;
use dreamforge_pipeline::{
    ComponentOverrides, FluxComponents, FluxPipeline, FluxRequest, ModelFamily, SdComponents,
    SdFamily, SdPipeline, SdRequest, SdSource, detect_family,
};
use dreamforge_subject::config::{
    FLUX_ALL_LINEAR, FLUX_ATTENTION, UNET_ALL_LINEAR, UNET_ATTENTION,
};
use dreamforge_subject::export::{base_fingerprint, write_adapter};
use dreamforge_subject::{
    AdapterLayout, AdapterSet, FluxSubjectTask, Method, PriorConfig, SdSubjectTask, SubjectConfig,
    init_adapters, load_subject, use_adapters, use_sd_adapters,
};
use dreamforge_train::{RunOutput, Trainer};

use crate::nano::{bar, ended, run_error, stop_flag, write_run_config};

#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    Lora,
    Tlora,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Folder of subject photos (PNG / JPEG), each with an optional caption in a `.txt` of
    /// the same name.
    #[arg(long)]
    pub subject: PathBuf,
    /// The trigger word that will stand for the subject (e.g. sks).
    #[arg(long)]
    pub token: String,
    /// The subject's class noun (e.g. dog); prompts read "a photo of {token} {class}".
    #[arg(long = "class")]
    pub class: String,
    /// lora, or tlora (timestep-dependent rank).
    #[arg(long, value_enum, default_value = "tlora")]
    pub method: MethodArg,
    /// Run folder (adapter, checkpoints, samples, logs).
    #[arg(long)]
    pub out: PathBuf,
    /// Base model: a FLUX-family or Stable Diffusion (1.x / 2.x / XL) diffusers folder, or an
    /// SD single file [default: the built-in nano model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Optimizer steps [default: tlora 1000, lora 500].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Learning rate [default: tlora 1 (Prodigy), lora 1e-4 (AdamW)].
    #[arg(long)]
    pub lr: Option<f64>,
    /// adamw or prodigy [default: tlora prodigy, lora adamw].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Adapter rank [default: tlora 32, lora 16].
    #[arg(long)]
    pub rank: Option<usize>,
    /// T-LoRA: rank kept at pure noise [default 1].
    #[arg(long)]
    pub min_rank: Option<usize>,
    /// T-LoRA: exponent α of the rank schedule [default 1].
    #[arg(long)]
    pub rank_exponent: Option<f64>,
    /// T-LoRA: orthogonal parametrization (SVD-style init, trainable singular values)
    /// [default: SD / SDXL yes (the SDXL reference), FLUX no (the FLUX reference)];
    /// `--orthogonal false` for vanilla layers.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub orthogonal: Option<bool>,
    /// LoRA alpha (scale alpha/rank) [default: the rank].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// LoRA: scale alpha/√rank (rsLoRA).
    #[arg(long)]
    pub rslora: bool,
    /// Target modules: `attention` (q/k/v/out of both streams, the default), `all-linear`,
    /// or a regex over module names like `transformer_blocks.0.attn.to_q`.
    #[arg(long, default_value = "attention")]
    pub targets: String,
    /// Training resolution (square) [default: the model's native size, else 512].
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Mirror the subject images at random (off by default, as the T-LoRA references: text and
    /// asymmetric details flip too).
    #[arg(long)]
    pub flip: bool,
    /// Caption of images without a .txt [default: "a photo of {token} {class}"].
    #[arg(long)]
    pub instance_prompt: Option<String>,
    /// Prior preservation: train on N class images (drawn once by the base model) too.
    #[arg(long, default_value_t = 0)]
    pub prior_images: usize,
    /// Prompt of the class images [default: "a photo of {class}"].
    #[arg(long)]
    pub class_prompt: Option<String>,
    /// Weight of the prior-preservation loss.
    #[arg(long, default_value_t = 1.0)]
    pub prior_weight: f64,
    /// Validation prompt (repeatable; `{token}` and `{class}` are replaced) [default: the
    /// instance prompt].
    #[arg(long = "validation-prompt")]
    pub validation_prompts: Vec<String>,
    /// Render the validation prompts every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub validate_every: u64,
    /// Sampling steps of validation and class images [default: the model's, else 28].
    #[arg(long)]
    pub validation_steps: Option<usize>,
    /// Seed of the adapter init (data and noise streams use seed + 1, seed + 2).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between checkpoints (each also writes adapters/step-N.safetensors).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// A run config JSON (as written to run_config.json) instead of the flags above.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out with its saved settings (run_config.json).
    #[arg(long)]
    pub resume: bool,
    /// Compute precision: f32, or bf16 / f16 mixed precision (f32 adapter weights, the frozen
    /// base in half precision; pays off on GPU backends).
    #[arg(long, value_parser = crate::nano::parse_precision)]
    pub precision: Option<dreamforge_train::Precision>,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

fn fill(template: &str, token: &str, class: &str) -> String {
    template.replace("{token}", token).replace("{class}", class)
}

/// The loaded base model of either family.
enum Base {
    Flux {
        pipe: Box<FluxPipeline>,
        transformer_path: PathBuf,
    },
    Sd {
        pipe: Box<SdPipeline>,
        weights: PathBuf,
    },
}

impl Base {
    fn load(model: &Path, device: &burn::tensor::Device) -> anyhow::Result<Self> {
        Ok(match detect_family(model)? {
            ModelFamily::Flux => {
                let comps = FluxComponents::resolve(model, &ComponentOverrides::default())?;
                Base::Flux {
                    pipe: Box::new(FluxPipeline::load(&comps, device)?),
                    transformer_path: comps.transformer,
                }
            }
            ModelFamily::Sd(source) => {
                let weights = match &source {
                    SdSource::Diffusers(root) => root.join("unet"),
                    SdSource::SingleFile { path, .. } => path.clone(),
                };
                let pipe = SdPipeline::load(
                    &SdComponents::new(source, ComponentOverrides::default()),
                    device,
                )?;
                Base::Sd {
                    pipe: Box::new(pipe),
                    weights,
                }
            }
        })
    }

    fn family_defaults(
        &self,
        method: Method,
        token: &str,
        class: &str,
        res: Option<u32>,
    ) -> SubjectConfig {
        match self {
            Base::Flux { pipe, .. } => {
                let res = res.unwrap_or(pipe.vae.native_size().unwrap_or(512) as u32);
                let mut c = SubjectConfig::flux_defaults(method, token, class, res);
                // diffusers' DreamBooth FLUX script draws training timesteps from the
                // scheduler's own (statically shifted, or unshifted with dynamic shifting)
                // schedule.
                c.timestep_shift = if pipe.scheduler.use_dynamic_shifting {
                    1.0
                } else {
                    pipe.scheduler.shift
                };
                c.validation.steps = if pipe.transformer.config.guidance_embeds {
                    28
                } else {
                    4
                };
                c
            }
            Base::Sd { pipe, .. } => {
                let res = res.unwrap_or(pipe.default_size() as u32);
                SubjectConfig::sd_defaults(method, token, class, res, pipe.family == SdFamily::Sdxl)
            }
        }
    }

    fn targets(&self, preset: &str) -> String {
        let flux = matches!(self, Base::Flux { .. });
        match (preset, flux) {
            ("attention", true) => FLUX_ATTENTION.to_string(),
            ("all-linear", true) => FLUX_ALL_LINEAR.to_string(),
            ("attention", false) => UNET_ATTENTION.to_string(),
            ("all-linear", false) => UNET_ALL_LINEAR.to_string(),
            (other, _) => other.to_string(),
        }
    }

    fn weights_path(&self) -> &Path {
        match self {
            Base::Flux {
                transformer_path, ..
            } => transformer_path,
            Base::Sd { weights, .. } => weights,
        }
    }

    /// One image at the config's resolution.
    fn render(
        &self,
        cfg: &SubjectConfig,
        prompt: &str,
        seed: u64,
        steps: usize,
    ) -> anyhow::Result<RgbImage> {
        let side = cfg.resolution as usize;
        let images = match self {
            Base::Flux { pipe, .. } => {
                let distilled = pipe.transformer.config.guidance_embeds;
                let req = FluxRequest {
                    prompt: prompt.to_string(),
                    negative_prompt: cfg.validation.negative_prompt.clone(),
                    true_cfg_scale: cfg.validation.cfg_scale,
                    guidance: 3.5,
                    steps,
                    width: side,
                    height: side,
                    num_images: 1,
                    seed,
                    image_seeds: Vec::new(),
                    max_sequence_length: if distilled { 512 } else { 256 },
                    noise: None,
                    init: None,
                };
                pipe.generate(&req, |_| true)?
                    .expect("generation without cancellation returns images")
                    .images
            }
            Base::Sd { pipe, .. } => {
                let req = SdRequest {
                    prompt: prompt.to_string(),
                    negative_prompt: cfg.validation.negative_prompt.clone(),
                    guidance_scale: cfg.validation.cfg_scale,
                    guidance_rescale: 0.0,
                    clip_skip: None,
                    sampler: None,
                    prediction_type: None,
                    eta: 0.0,
                    steps,
                    width: side,
                    height: side,
                    num_images: 1,
                    seed,
                    image_seeds: Vec::new(),
                    noise: None,
                    init: None,
                };
                pipe.generate(&req, |_| true)?
                    .expect("generation without cancellation returns images")
                    .images
            }
        };
        Ok(RgbImage::from_chw_signed(&images.data, side, side))
    }

    fn use_adapters(&mut self, layout: &AdapterLayout, set: &AdapterSet, cfg: &SubjectConfig) {
        match self {
            Base::Flux { pipe, .. } => use_adapters(pipe, layout, set, cfg),
            Base::Sd { pipe, .. } => use_sd_adapters(pipe, layout, set, cfg),
        }
    }

    fn clear_adapters(&mut self) {
        match self {
            Base::Flux { pipe, .. } => pipe.adapters = None,
            Base::Sd { pipe, .. } => pipe.adapters = None,
        }
    }
}

/// The training images: each subject image, and with `flip` its mirror too (drawing uniformly
/// from both is a random flip with probability ½).
fn examples(
    images: &[dreamforge_subject::SubjectImage],
    flip: bool,
) -> impl Iterator<Item = (&dreamforge_subject::SubjectImage, RgbImage)> {
    images.iter().flat_map(move |s| {
        let mirror = flip.then(|| (s, s.image.flipped_horizontal()));
        std::iter::once((s, s.image.clone())).chain(mirror)
    })
}

/// The training task and the frozen base it runs on (on the autodiff device).
enum Task {
    Flux(Box<(FluxSubjectTask, FluxTransformer)>),
    Sd(Box<(SdSubjectTask, UNet2DConditionModel)>),
}

/// The run config from the flags (family defaults, then overrides).
fn config_from_flags(a: &TrainArgs, base: &Base, model: &Path) -> anyhow::Result<SubjectConfig> {
    let method = match a.method {
        MethodArg::Lora => Method::Lora,
        MethodArg::Tlora => Method::Tlora,
    };
    let mut c = base.family_defaults(method, &a.token, &a.class, a.resolution);
    // A model folder may declare its own training defaults (`_dreamforge_train` in
    // model_index.json: the nano model does — Prodigy at lr 1, tuned for 12B FLUX, diverges on
    // a 4-million-parameter model).
    let declared = train_defaults(model);
    if let Some(o) = &declared.optimizer {
        c.optimizer.algorithm = serde_json::from_value(serde_json::json!(o))
            .map_err(|e| Error::config(model, format!("_dreamforge_train.optimizer: {e}")))?;
    }
    if let Some(lr) = declared.lr {
        c.lr = lr;
    }
    if let Some(s) = declared.steps {
        c.steps = s;
        c.schedule.total_steps = s;
    }
    if let Some(p) = &a.instance_prompt {
        c.instance_prompt = fill(p, &a.token, &a.class);
    }
    c.flip = a.flip;
    if let Some(p) = a.precision {
        c.precision = p;
    }
    if let Some(s) = a.steps {
        c.steps = s;
        c.schedule.total_steps = s;
    }
    if let Some(o) = &a.optimizer {
        c.optimizer.algorithm = serde_json::from_value(serde_json::json!(o))
            .map_err(|e| Error::InvalidInput(format!("--optimizer: {e}")))?;
        if a.lr.is_none() {
            c.lr = if o == "prodigy" { 1.0 } else { 1e-4 };
        }
    }
    if let Some(lr) = a.lr {
        c.lr = lr;
    }
    if let Some(r) = a.rank {
        c.adapter.rank = r;
        c.adapter.alpha = r as f64;
    }
    if let Some(al) = a.alpha {
        c.adapter.alpha = al;
    }
    c.adapter.rslora = a.rslora;
    if let Some(m) = a.min_rank {
        c.adapter.min_rank = m;
    }
    if let Some(e) = a.rank_exponent {
        c.adapter.rank_exponent = e;
    }
    if let Some(o) = a.orthogonal {
        c.adapter.orthogonal = o;
    }
    if method != Method::Tlora {
        if a.orthogonal == Some(true) {
            bail!(Error::InvalidInput(
                "--orthogonal is a T-LoRA parametrization (use --method tlora)".into()
            ));
        }
        c.adapter.orthogonal = false;
    }
    c.adapter.target_modules = base.targets(&a.targets);
    c.adapter.seed = a.seed;
    c.data_seed = a.seed + 1;
    c.noise_seed = a.seed + 2;
    if a.prior_images > 0 {
        c.prior = Some(PriorConfig {
            class_prompt: fill(
                a.class_prompt.as_deref().unwrap_or("a photo of {class}"),
                &a.token,
                &a.class,
            ),
            num_images: a.prior_images,
            weight: a.prior_weight,
            seed: a.seed + 1000,
        });
    }
    let defaults = crate::sample::flux::sample_defaults(model);
    c.validation.prompts = if a.validation_prompts.is_empty() {
        vec![c.instance_prompt.clone()]
    } else {
        a.validation_prompts
            .iter()
            .map(|p| fill(p, &a.token, &a.class))
            .collect()
    };
    c.validation.every = a.validate_every;
    if let Some(st) = a.validation_steps.or(defaults.steps) {
        c.validation.steps = st;
    }
    if let Some(g) = defaults.true_cfg_scale {
        c.validation.cfg_scale = g;
    }
    if defaults.negative_prompt.is_some() {
        c.validation.negative_prompt = defaults.negative_prompt;
    }
    Ok(c)
}

/// Training defaults a pipeline folder declares in `model_index.json` under
/// `_dreamforge_train`.
#[derive(Debug, Default, serde::Deserialize)]
struct TrainDefaults {
    optimizer: Option<String>,
    lr: Option<f64>,
    steps: Option<u64>,
}

fn train_defaults(model: &Path) -> TrainDefaults {
    std::fs::read_to_string(model.join("model_index.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v.get("_dreamforge_train")?.clone()).ok())
        .unwrap_or_default()
}

fn read_config(p: &Path) -> anyhow::Result<SubjectConfig> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    Ok(serde_json::from_str(&text)
        .map_err(|e| Error::config(p, format!("not a subject training config: {e}")))?)
}

/// The class images of prior preservation: `class_images/class-NNNN.png`, reused when a
/// previous run drew them with the same prompt, seed, size and steps.
fn class_images(
    base: &mut Base,
    cfg: &SubjectConfig,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<Vec<RgbImage>> {
    let Some(p) = &cfg.prior else {
        return Ok(Vec::new());
    };
    let dir = out.join("class_images");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    base.clear_adapters();
    let mut images = Vec::with_capacity(p.num_images);
    let bar = bar(quiet, p.num_images as u64);
    bar.set_message("class images (prior preservation)");
    for i in 0..p.num_images {
        let path = dir.join(format!("class-{i:04}.png"));
        let tag = serde_json::json!({"prompt": p.class_prompt, "seed": p.seed + i as u64,
            "size": cfg.resolution, "steps": cfg.validation.steps})
        .to_string();
        let cached = read_png_text(&path)
            .ok()
            .is_some_and(|t| t.iter().any(|(k, v)| k == "dreamforge_class" && *v == tag));
        let img = if cached {
            RgbImage::read(&path)?
        } else {
            let img = base.render(
                cfg,
                &p.class_prompt,
                p.seed + i as u64,
                cfg.validation.steps,
            )?;
            save_png(&path, &img, &[("dreamforge_class", &tag)])?;
            img
        };
        images.push(img);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(images)
}

/// Validation renders into `samples/<label>/`.
fn validate(
    base: &mut Base,
    layout: &AdapterLayout,
    set: &AdapterSet,
    cfg: &SubjectConfig,
    out: &Path,
    label: &str,
) -> anyhow::Result<()> {
    base.use_adapters(layout, set, cfg);
    let dir = out.join("samples").join(label);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for (i, prompt) in cfg.validation.prompts.iter().enumerate() {
        let img = base.render(cfg, prompt, cfg.validation.seed, cfg.validation.steps)?;
        let meta = serde_json::json!({"prompt": prompt, "seed": cfg.validation.seed,
            "steps": cfg.validation.steps, "adapter_step": label})
        .to_string();
        save_png(
            &dir.join(format!("{i:02}.png")),
            &img,
            &[("parameters", prompt.as_str()), ("dreamforge", &meta)],
        )?;
    }
    Ok(())
}

fn describe(cfg: &SubjectConfig, layers: usize, flux: bool) -> String {
    let a = &cfg.adapter;
    let method = match (a.method, a.orthogonal) {
        (Method::Lora, _) => format!(
            "LoRA rank {} alpha {}{}",
            a.rank,
            a.alpha,
            if a.rslora { " (rsLoRA)" } else { "" }
        ),
        (Method::Tlora, o) => format!(
            "T-LoRA{} rank {} min rank {} exponent {}",
            if o { " (orthogonal)" } else { "" },
            a.rank,
            a.min_rank,
            a.rank_exponent
        ),
    };
    let optim = match cfg.optimizer.algorithm {
        dreamforge_train::Algorithm::AdamW => "AdamW",
        dreamforge_train::Algorithm::Prodigy(_) => "Prodigy",
    };
    let noise = if flux {
        format!("σ {:?} shift {}", cfg.timesteps, cfg.timestep_shift)
    } else {
        "DDPM t uniform".to_string()
    };
    format!(
        "{method} on {layers} layers; {optim} lr {} ({:?}), {} steps, batch 1, {noise}, resolution {}{}{}",
        cfg.lr,
        cfg.schedule.kind,
        cfg.steps,
        cfg.resolution,
        if cfg.flip { ", random flips" } else { "" },
        match &cfg.prior {
            Some(p) => format!(
                "; prior preservation: {} class images of \"{}\", weight {}",
                p.num_images, p.class_prompt, p.weight
            ),
            None => String::new(),
        }
    )
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => crate::builtin::nano_model()?,
    };
    if a.token.trim().is_empty() || a.token.contains(char::is_whitespace) {
        bail!(Error::InvalidInput(format!(
            "--token must be one word, got \"{}\"",
            a.token
        )));
    }
    let spec: DeviceSpec = a.device.parse()?;
    let device = dreamforge_core::select_device(spec)?;
    let train_device = device.clone().autodiff();
    let t0 = Instant::now();
    let mut base = Base::load(&model, &device)?;
    let fingerprint = base_fingerprint(base.weights_path())?;
    let mut cfg = if a.resume {
        let p = a.out.join("run_config.json");
        if !p.exists() {
            bail!(Error::InvalidInput(format!(
                "{}: no run to resume (start without --resume)",
                p.display()
            )));
        }
        let c = read_config(&p)?;
        if c.base_fingerprint
            .as_deref()
            .is_some_and(|f| f != fingerprint)
        {
            bail!(Error::InvalidInput(format!(
                "{}: the run was started on another base model than {} (fingerprints differ); resume with the model it started on",
                a.out.display(),
                model.display()
            )));
        }
        c
    } else if let Some(p) = &a.config {
        read_config(p)?
    } else {
        config_from_flags(&a, &base, &model)?
    };
    cfg.base_fingerprint = Some(fingerprint.clone());
    cfg.validate()
        .map_err(|r| Error::InvalidInput(format!("training settings: {r}")))?;
    if let Base::Flux { pipe, .. } = &mut base {
        pipe.trigger_words = vec![cfg.token.clone()];
    }
    let subject = load_subject(&a.subject, &cfg.instance_prompt, &cfg.token, cfg.resolution)?;
    for w in &subject.warnings {
        eprintln!("warning: {w}");
    }
    let (set, layout) = match &base {
        Base::Flux { pipe, .. } => init_adapters(
            &pipe.transformer,
            &pipe.transformer_names,
            &cfg,
            &train_device,
        )?,
        Base::Sd { pipe, .. } => init_adapters(&pipe.unet, &pipe.unet.names, &cfg, &train_device)?,
    };
    if !a.quiet {
        eprintln!(
            "loaded {} on {} in {:.1}s; {} subject image(s)",
            model.display(),
            spec,
            t0.elapsed().as_secs_f32(),
            subject.images.len(),
        );
    }
    // The settings in effect (defaults included) are always printed.
    eprintln!(
        "{}",
        describe(
            &cfg,
            layout.modules.len(),
            matches!(base, Base::Flux { .. })
        )
    );
    let state = a.out.join("checkpoint/state.json");
    if !a.resume && state.exists() {
        bail!(Error::InvalidInput(format!(
            "{}: a run is already here (checkpoint/state.json); pass --resume to continue it, or choose another --out",
            a.out.display()
        )));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    write_run_config(&a.out, &cfg)?;
    let class = class_images(&mut base, &cfg, &a.out, a.quiet)?;
    let (task, warnings) = match &base {
        Base::Flux { pipe, .. } => {
            let pairs: Vec<(RgbImage, String)> = examples(&subject.images, cfg.flip)
                .map(|(s, img)| (img, s.caption.clone()))
                .collect();
            let (t, w) = FluxSubjectTask::new(
                cfg.clone(),
                pipe,
                &pairs,
                &class,
                layout.clone(),
                &train_device,
            )?;
            let frozen = pipe.transformer.clone().fork(&train_device).no_grad();
            let frozen = dreamforge_train::precision::cast_params(frozen, cfg.precision.dtype());
            (Task::Flux(Box::new((t, frozen))), w)
        }
        Base::Sd { pipe, .. } => {
            let triples: Vec<(RgbImage, String, (u32, u32))> = examples(&subject.images, cfg.flip)
                .map(|(s, img)| (img, s.caption.clone(), s.original))
                .collect();
            let (t, w) = SdSubjectTask::new(
                cfg.clone(),
                pipe,
                &triples,
                &class,
                layout.clone(),
                &train_device,
            )?;
            let frozen = pipe.unet.clone().fork(&train_device).no_grad();
            let frozen = dreamforge_train::precision::cast_params(frozen, cfg.precision.dtype());
            (Task::Sd(Box::new((t, frozen))), w)
        }
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let base_model = serde_json::json!({
        "path": model.display().to_string(),
        "fingerprint": fingerprint,
    });
    let base_component = match base {
        Base::Flux { .. } => "transformer",
        Base::Sd { .. } => "unet",
    };
    let stop = stop_flag();
    let trainer = Trainer {
        out_dir: &a.out,
        total_steps: cfg.steps,
        checkpoint_every: a.checkpoint_every,
        base_lr: cfg.lr,
        schedule: cfg.schedule,
        optimizer: cfg.optimizer,
        data_seed: cfg.data_seed,
        noise_seed: cfg.noise_seed,
        stop: &stop,
        ema_decay: None,
        precision: cfg.precision,
    };
    let adapters_dir = a.out.join("adapters");
    let bar = bar(a.quiet, cfg.steps);
    let mut side_err: Option<anyhow::Error> = None;
    let mut smooth: Option<f32> = None;
    let result = trainer.run(
        &cfg,
        set,
        a.resume,
        |m, rngs, _| match &task {
            Task::Flux(t) => t.0.loss(&t.1, m, rngs, &train_device),
            Task::Sd(t) => t.0.loss(&t.1, m, rngs, &train_device),
        },
        |p, m, _| {
            let s = smooth.map_or(p.loss, |v| 0.9 * v + 0.1 * p.loss);
            smooth = Some(s);
            let rate = p.session_steps as f64 / p.session_seconds.max(1e-9);
            bar.set_position(p.step);
            bar.set_message(format!("loss {s:.4}  lr {:.2e}  {rate:.2} it/s", p.lr));
            if side_err.is_some() {
                return;
            }
            if p.checkpointed {
                if a.quiet {
                    eprintln!(
                        "step {}/{} loss {s:.4} ({:.0} s)",
                        p.step, p.total_steps, p.seconds
                    );
                }
                let path = adapters_dir.join(format!("step-{:06}.safetensors", p.step));
                side_err = std::fs::create_dir_all(&adapters_dir)
                    .map_err(|e| Error::io(&adapters_dir, e).into())
                    .and_then(|_| {
                        write_adapter(
                            &path,
                            base_component,
                            &m.valid(),
                            &layout,
                            &cfg,
                            &base_model,
                            p.step,
                        )
                        .map_err(Into::into)
                    })
                    .err();
            }
            let every = cfg.validation.every;
            if every > 0 && p.step % every == 0 && p.step < p.total_steps {
                side_err = validate(
                    &mut base,
                    &layout,
                    m,
                    &cfg,
                    &a.out,
                    &format!("step-{:06}", p.step),
                )
                .context("validation renders")
                .err();
            }
        },
    );
    bar.finish_and_clear();
    if let Some(e) = side_err {
        return Err(e);
    }
    let RunOutput {
        model: set,
        outcome,
        ..
    } = result.map_err(run_error)?;
    ended(outcome, &a.out, &trainer.checkpoint_dir())?;
    let set = set.valid();
    let final_path = a.out.join("adapter.safetensors");
    write_adapter(
        &final_path,
        base_component,
        &set,
        &layout,
        &cfg,
        &base_model,
        cfg.steps,
    )?;
    validate(&mut base, &layout, &set, &cfg, &a.out, "final").context("validation renders")?;
    eprintln!(
        "trained {} steps; adapter written to {} (samples in {})",
        cfg.steps,
        final_path.display(),
        a.out.join("samples/final").display()
    );
    Ok(())
}
