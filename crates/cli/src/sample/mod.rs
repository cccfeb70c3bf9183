//! `dreamforge sample`: text-to-image, img2img and inpainting with a FLUX.1-family or
//! Stable Diffusion (1.x / 2.x / XL) model — the family is detected from the model path —
//! with an indicatif progress bar and PNGs carrying the settings (A1111 `parameters` chunk +
//! `dreamforge` JSON chunk), written atomically; Ctrl-C stops between steps without writing
//! partial files.

pub(crate) mod flux;
pub(crate) mod reference;
pub(crate) mod sd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use dreamforge_core::image_io::{RgbImage, save_png};
use dreamforge_core::{DeviceSpec, Error, HostTensor, WeightSet};
use dreamforge_pipeline::{ComponentOverrides, ModelFamily, detect_family};

#[derive(Args)]
pub struct SampleArgs {
    /// Model: a diffusers pipeline folder (FLUX.1, SD 1.x/2.x, SDXL), a single-file SD/SDXL
    /// checkpoint, or a single-file FLUX transformer (BFL or diffusers keys) [default: the
    /// built-in nano model].
    #[arg(long = "model")]
    pub model_arg: Option<PathBuf>,
    /// The resolved model path (`--model`, else the built-in nano model).
    #[arg(skip)]
    pub model: PathBuf,
    /// Prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Sample the prompt as written. By default a model that declares prompt completion (the
    /// nano model, trained on full captions only) gets what the prompt leaves open filled in,
    /// drawn from the seed, and the filled-in prompt is reported.
    #[arg(long)]
    pub exact_prompt: bool,
    /// Negative prompt (SD: used with --guidance > 1; FLUX: with --true-cfg > 1).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// FLUX: true classifier-free guidance scale (runs a second, negative pass when > 1)
    /// [default: the model's sampling defaults, else 1].
    #[arg(long)]
    pub true_cfg: Option<f32>,
    /// Denoising steps [default: FLUX 28 (guidance-distilled) or 4; SD 30].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance: SD classifier-free guidance scale [default 7.5, SDXL 5]; FLUX.1-dev's
    /// distilled guidance value [default 3.5].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// SD: guidance rescale φ in [0, 1] (for zero-terminal-SNR / v-prediction models).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f32,
    /// SD: skip the last N text-encoder layers (diffusers `clip_skip`; 1 = A1111 "clip skip 2").
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// SD sampler [default: the model's scheduler]: ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras.
    #[arg(long)]
    pub sampler: Option<String>,
    /// SD: DDIM η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f32,
    /// SD: override the scheduler's prediction type (epsilon, v_prediction, sample).
    #[arg(long)]
    pub prediction_type: Option<String>,
    /// Seed; image i uses seed + i [default: random, recorded in the PNG].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Width [default: the init image's, else FLUX 1024, SD the UNet's sample size × 8].
    #[arg(long)]
    pub width: Option<usize>,
    /// Height [default: as --width].
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// img2img / inpainting: the starting image (PNG or JPEG; resized to the output size).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// How much of the schedule runs from the init image, in (0, 1] [default 0.75; 1 with --mask].
    #[arg(long)]
    pub strength: Option<f32>,
    /// Inpainting mask (same size as --init-image): white = repaint, black = keep.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Initial latents from a safetensors file holding one tensor (FLUX: packed [B,L,C] or
    /// [B,C,H,W]; SD: [B,C,H,W], before the sampler's initial scaling).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// FLUX: T5 context length [default: 512 for guidance-distilled models, 256 otherwise].
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// Device: cpu, wgpu[:N] or cuda[:N] (among those compiled in).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A diffusers folder supplying the components a single file lacks (tokenizers, VAE, ...).
    #[arg(long)]
    pub components: Option<PathBuf>,
    #[arg(long)]
    pub vae: Option<PathBuf>,
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    #[arg(long)]
    pub text_encoder_2: Option<PathBuf>,
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub tokenizer_2: Option<PathBuf>,
    /// Denoiser config.json where the weights cannot tell (FLUX RoPE axes, SD head counts).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also enlarge the written images N× with nearest-neighbour pixels (for viewing small
    /// models' outputs; the metadata describes the generated size).
    #[arg(long, default_value_t = 1)]
    pub upscale: u32,
    /// An adapter file (LoRA or T-LoRA; PEFT/diffusers or kohya naming, detected from the keys)
    /// applied at strength SCALE (default 1); repeat to stack adapters. A T-LoRA applies its
    /// timestep-dependent rank mask at every step. FLUX-family models (the nano model
    /// included) so far.
    #[arg(long = "lora", value_name = "PATH[:SCALE]")]
    pub lora: Vec<String>,
    /// Token replacement (Personalize Anything, FLUX family): a reference image whose subject
    /// is put into the new image without training; repeat for several subjects. Same size as
    /// the output: used as is; smaller: pasted at the centre (outpainting); else resized.
    #[arg(long = "ref", value_name = "IMAGE")]
    pub refs: Vec<PathBuf>,
    /// The i-th reference's mask (white = the subject; for inpainting, what to keep), `auto`
    /// for a foreground estimate against the border colour, or `all` [the whole reference].
    #[arg(long = "ref-mask", value_name = "MASK|auto|all")]
    pub ref_masks: Vec<PathBuf>,
    /// The i-th reference's move, `DX,DY` in pixels (rounded to whole tokens, reported).
    #[arg(long = "shift", value_name = "DX,DY", allow_hyphen_values = true)]
    pub shifts: Vec<String>,
    /// The i-th reference's prompt [""].
    #[arg(long = "ref-prompt")]
    pub ref_prompts: Vec<String>,
    /// Replace tokens while σ > τ; lower keeps more of the reference [the model's own
    /// default (nano: 0), else 0.6, the reference notebooks' single-subject value].
    #[arg(long)]
    pub tau: Option<f32>,
    /// Grow (> 0, dilate) or shrink (< 0, erode) every reference mask by N tokens.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub mask_grow: isize,
    /// Patch perturbation: shuffle each reference's tokens within windows of ±N tokens
    /// (0 = off).
    #[arg(long, default_value_t = 0)]
    pub shuffle_radius: usize,
    /// Seed of the patch perturbation.
    #[arg(long, default_value_t = 0)]
    pub perturb_seed: u64,
    /// Once σ ≤ τ, let the image also attend to the references' tokens (their keys and
    /// values, placed where they land) instead of plain attention.
    #[arg(long)]
    pub share_attention: bool,
    /// Latent blending: after every step, put each reference's own (re-noised) tokens back at
    /// their destinations, so the region an inpainting mask keeps (or an outpainting canvas
    /// pastes) comes back exactly (diffusers' `FluxInpaintPipeline` blending).
    #[arg(long)]
    pub ref_blend: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Per-image seeds (render jobs): one batch of `seeds.len()` images, image i from
    /// `seeds[i]`; empty = `--seed` + i for `--num-images` images.
    #[arg(skip)]
    pub seeds: Vec<u64>,
}

/// A loaded pipeline of either family.
pub(crate) enum Loaded {
    Flux(Box<dreamforge_pipeline::FluxPipeline>),
    Sd(Box<dreamforge_pipeline::SdPipeline>),
}

impl Loaded {
    /// Detects the family of `a.model` and loads it (family-specific flags checked first).
    pub fn load(a: &SampleArgs, ctx: &Ctx) -> anyhow::Result<Self> {
        Ok(match detect_family(&a.model)? {
            ModelFamily::Flux => Self::Flux(Box::new(flux::load(a, ctx)?)),
            ModelFamily::Sd(source) => Self::Sd(Box::new(sd::load(a, ctx, source)?)),
        })
    }

    /// Uses `loras` from now on (replacing any set before; none = the base model); returns
    /// warnings about layers that matched nothing.
    pub fn set_adapters(&mut self, loras: &LoraFiles) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Flux(p) => {
                let unmatched = p.set_adapters(&loras.adapters())?;
                loras.check(&unmatched, "this FLUX transformer")
            }
            Self::Sd(p) => {
                let unmatched = p.set_adapters(&loras.adapters())?;
                loras.check(&unmatched, "this UNet or its text encoders")
            }
        }
    }

    /// One request; `Ok(None)` after Ctrl-C.
    pub fn generate(
        &self,
        a: &SampleArgs,
        ctx: &Ctx,
        lora_meta: Vec<serde_json::Value>,
        init_size: Option<(usize, usize)>,
        t0: Instant,
    ) -> anyhow::Result<Option<Rendered>> {
        match self {
            Self::Flux(p) => flux::generate(p, a, ctx, lora_meta, init_size, t0),
            Self::Sd(p) => sd::generate(p, a, ctx, lora_meta, init_size, t0),
        }
    }
}

/// The `--lora` files, read before the model loads (a bad file fails fast).
pub(crate) struct LoraFiles {
    pub specs: Vec<(PathBuf, f64)>,
    pub files: Vec<dreamforge_adapters::AdapterFile>,
}

impl LoraFiles {
    pub fn read(a: &SampleArgs) -> anyhow::Result<Self> {
        let specs: Vec<(PathBuf, f64)> = a.lora.iter().map(|s| parse_lora(s)).collect();
        let files = specs
            .iter()
            .map(|(p, _)| dreamforge_adapters::AdapterFile::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { specs, files })
    }

    pub fn adapters(&self) -> Vec<dreamforge_adapters::FileAdapter<'_>> {
        self.files
            .iter()
            .zip(&self.specs)
            .map(|(file, (_, strength))| dreamforge_adapters::FileAdapter {
                file,
                strength: *strength,
            })
            .collect()
    }

    /// Warnings for layers that matched nothing and ignored tensors; an error when a file
    /// matched nothing at all (`what`: the model, e.g. "this FLUX transformer").
    pub fn check(&self, unmatched: &[Vec<String>], what: &str) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        for (f, unmatched) in self.files.iter().zip(unmatched) {
            if !f.layers.is_empty() && unmatched.len() == f.layers.len() {
                return Err(Error::InvalidInput(format!(
                    "{}: none of its {} layers matches a weight of {what} (an adapter for another model or model part?), e.g. `{}`",
                    f.path.display(),
                    f.layers.len(),
                    unmatched[0]
                ))
                .into());
            }
            if f.layers.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{}: no layer it holds can be applied (only k×k convolution adapters?); ignored tensors e.g. `{}`",
                    f.path.display(),
                    f.ignored.first().map(String::as_str).unwrap_or("")
                ))
                .into());
            }
            if !unmatched.is_empty() {
                warnings.push(format!(
                    "{}: {} of its {} layers match no weight of this model and were skipped, e.g. `{}`",
                    f.path.display(),
                    unmatched.len(),
                    f.layers.len(),
                    unmatched[0]
                ));
            }
            if !f.ignored.is_empty() {
                warnings.push(format!(
                    "{}: {} tensor(s) are not low-rank pairs this engine applies (e.g. `{}`) and were ignored",
                    f.path.display(),
                    f.ignored.len(),
                    f.ignored[0]
                ));
            }
        }
        Ok(warnings)
    }

    /// The PNG metadata entries describing the adapters.
    pub fn metadata(&self) -> Vec<serde_json::Value> {
        self.files
            .iter()
            .zip(&self.specs)
            .map(|(f, (p, s))| {
                serde_json::json!({
                    "path": p.display().to_string(),
                    "strength": s,
                    "method": if f.schedule().is_some() { "tlora" } else { "lora" },
                    "trigger": f.trigger(),
                })
            })
            .collect()
    }
}

/// `PATH[:SCALE]` → (path, scale); a suffix after the last `:` that is not a number belongs
/// to the path.
pub(crate) fn parse_lora(spec: &str) -> (PathBuf, f64) {
    match spec.rsplit_once(':') {
        Some((p, s)) if !p.is_empty() => match s.parse::<f64>() {
            Ok(v) => (PathBuf::from(p), v),
            Err(_) => (PathBuf::from(spec), 1.0),
        },
        _ => (PathBuf::from(spec), 1.0),
    }
}

/// What a family's run hands back for writing.
pub(crate) struct Rendered {
    /// `[B, 3, H, W]` in [-1, 1].
    pub images: HostTensor,
    pub warnings: Vec<String>,
    /// A1111 `parameters` text for image i (given its seed).
    pub parameters: Box<dyn Fn(u64) -> String>,
    /// The `dreamforge` JSON chunk for image i (given its seed).
    pub json: Box<dyn Fn(u64) -> serde_json::Value>,
    pub steps: usize,
}

/// State shared by both families' runs.
pub(crate) struct Ctx {
    pub device: burn::tensor::Device,
    pub spec: DeviceSpec,
    pub seed: u64,
    pub noise: Option<HostTensor>,
    pub stop: Arc<AtomicBool>,
    pub overrides: ComponentOverrides,
    /// A step bar owned by the caller (render's multi-bar), used instead of a new one.
    pub step_bar: Option<ProgressBar>,
}

impl Ctx {
    pub fn bar(&self, quiet: bool, steps: usize) -> ProgressBar {
        if let Some(b) = &self.step_bar {
            b.reset();
            b.set_length(steps as u64);
            return b.clone();
        }
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(steps as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    }

    /// Clears a bar made by [`Self::bar`] (a caller's shared bar stays).
    pub fn finish(&self, bar: &ProgressBar) {
        if self.step_bar.is_none() {
            bar.finish_and_clear();
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The sampler's step callback: moves `bar`, shows σ, and returns false after Ctrl-C.
    pub fn on_step<'a>(
        &'a self,
        bar: &'a ProgressBar,
    ) -> impl FnMut(dreamforge_sampling::StepInfo) -> bool + 'a {
        move |info| {
            bar.set_length(info.total as u64);
            bar.set_position(info.step as u64);
            bar.set_message(format!("σ={:.3}", info.sigma));
            !self.stopped()
        }
    }

    /// The JSON metadata every image carries whatever the family.
    pub fn metadata(&self, a: &SampleArgs) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "noise_file".into(),
            a.noise.as_ref().map(|p| p.display().to_string()).into(),
        );
        m.insert("model".into(), a.model.display().to_string().into());
        m.insert("device".into(), self.spec.to_string().into());
        m.insert(
            "dreamforge_version".into(),
            env!("CARGO_PKG_VERSION").into(),
        );
        m
    }
}

pub fn run(mut a: SampleArgs) -> anyhow::Result<()> {
    a.model = match a.model_arg.clone() {
        Some(m) => m,
        None => crate::builtin::nano_model()?,
    };
    if a.upscale == 0 || a.upscale > 64 {
        return Err(Error::InvalidInput("--upscale must be between 1 and 64".into()).into());
    }
    // Ctrl-C sets a flag the sampler checks after every step; a second one exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let spec: DeviceSpec = a.device.parse()?;
    let device = dreamforge_core::select_device(spec)?;
    if a.prompt.trim().is_empty() {
        return Err(Error::InvalidInput("--prompt is empty".into()).into());
    }
    if a.mask.is_some() && a.init_image.is_none() {
        return Err(Error::InvalidInput("--mask needs an --init-image".into()).into());
    }
    if let Some(s) = a.strength {
        if a.init_image.is_none() {
            return Err(Error::InvalidInput("--strength needs an --init-image".into()).into());
        }
        dreamforge_pipeline::conditioning::check_strength(s)?;
    }
    check_output_dir(&a.out)?;
    let noise = a.noise.as_deref().map(read_noise).transpose()?;
    // Read the init image and mask once now, so a bad file fails before the model loads.
    let init_size = match &a.init_image {
        Some(p) => {
            let img = RgbImage::read(p)?;
            if let Some(m) = &a.mask {
                dreamforge_core::image_io::GrayImage::read(m)?;
            }
            Some((img.width as usize, img.height as usize))
        }
        None => None,
    };
    let overrides = ComponentOverrides {
        components: a.components.clone(),
        vae: a.vae.clone(),
        text_encoder: a.text_encoder.clone(),
        text_encoder_2: a.text_encoder_2.clone(),
        tokenizer: a.tokenizer.clone(),
        tokenizer_2: a.tokenizer_2.clone(),
        config: a.config.clone(),
    };
    let ctx = Ctx {
        device,
        spec,
        seed: a.seed.unwrap_or_else(rand_seed),
        noise,
        stop,
        overrides,
        step_bar: None,
    };
    let t0 = Instant::now();
    // Adapter files are read before the model loads: a bad file fails fast.
    let loras = LoraFiles::read(&a)?;
    let mut pipe = Loaded::load(&a, &ctx)?;
    let mut warnings = pipe.set_adapters(&loras)?;
    let Some(r) = pipe.generate(&a, &ctx, loras.metadata(), init_size, t0)? else {
        return Err(Error::Interrupted.into());
    };
    warnings.extend(r.warnings.iter().cloned());
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let [b, _, h, w] = [
        r.images.shape[0],
        r.images.shape[1],
        r.images.shape[2],
        r.images.shape[3],
    ];
    let plane = 3 * h * w;
    for i in 0..b {
        let img = RgbImage::from_chw_signed(&r.images.data[i * plane..(i + 1) * plane], h, w)
            .upscaled_nearest(a.upscale);
        let image_seed = a.seeds.get(i).copied().unwrap_or(ctx.seed + i as u64);
        let params = (r.parameters)(image_seed);
        let json = (r.json)(image_seed);
        let path = next_free_path(&a.out, image_seed);
        save_png(
            &path,
            &img,
            &[("parameters", &params), ("dreamforge", &json.to_string())],
        )?;
        println!("{}", path.display());
    }
    if !a.quiet {
        let secs = t0.elapsed().as_secs_f32();
        eprintln!("{b} image(s), {} steps, {secs:.1}s in all", r.steps);
    }
    Ok(())
}

/// The output size: explicit flags, else the init image's size rounded down to `multiple`,
/// else `default`.
pub(crate) fn output_size(
    a: &SampleArgs,
    init: Option<(usize, usize)>,
    multiple: usize,
    default: usize,
) -> (usize, usize) {
    let round = |v: usize| (v / multiple).max(1) * multiple;
    match (a.width, a.height, init) {
        (w, h, Some((iw, ih))) => (w.unwrap_or(round(iw)), h.unwrap_or(round(ih))),
        (w, h, None) => (w.unwrap_or(default), h.unwrap_or(default)),
    }
}

/// The `--init-image` / `--mask` / `--strength` input at the output size (strength defaults to
/// 0.75 for img2img and 1 for inpainting), or `None` without an init image.
pub(crate) fn init_image(
    a: &SampleArgs,
    width: usize,
    height: usize,
    notices: &mut Vec<String>,
) -> Result<Option<dreamforge_pipeline::InitImage>, Error> {
    let Some(p) = &a.init_image else {
        return Ok(None);
    };
    let strength = a
        .strength
        .unwrap_or(if a.mask.is_some() { 1.0 } else { 0.75 });
    dreamforge_pipeline::InitImage::load(p, a.mask.as_deref(), strength, width, height, notices)
        .map(Some)
}

/// The model's file or folder name, for metadata.
pub(crate) fn model_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Creates the folder and proves it is writable before any heavy work.
fn check_output_dir(dir: &Path) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::Output {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".dreamforge-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// `<dir>/NNNNN-<seed>.png` with the first index not taken: never overwrites earlier images.
fn next_free_path(dir: &Path, seed: u64) -> PathBuf {
    let mut n = std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0);
    loop {
        let p = dir.join(format!("{n:05}-{seed}.png"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

fn read_noise(path: &Path) -> Result<dreamforge_core::HostTensor, Error> {
    let set = WeightSet::open(path)?;
    let keys = set.keys();
    if keys.len() != 1 {
        return Err(Error::format(
            path,
            format!("expected exactly one tensor, found {}", keys.len()),
        ));
    }
    set.read_f32(keys[0])
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % 4_294_967_296
}
