//! `dreamforge sample`: text-to-image with a FLUX.1-family model, an indicatif progress bar,
//! PNGs with the settings embedded (A1111 `parameters` chunk + `dreamforge` JSON chunk),
//! written atomically; Ctrl-C stops between steps without writing partial files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use dreamforge_core::image_io::{RgbImage, save_png};
use dreamforge_core::{DeviceSpec, Error, WeightSet};
use dreamforge_pipeline::{ComponentOverrides, FluxComponents, FluxPipeline, FluxRequest};

#[derive(Args)]
pub struct SampleArgs {
    /// Model: a diffusers FLUX pipeline folder, or a single-file transformer (BFL or diffusers keys).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Negative prompt (used with --true-cfg > 1).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// True classifier-free guidance scale (runs a second, negative pass when > 1).
    #[arg(long, default_value_t = 1.0)]
    pub true_cfg: f32,
    /// Denoising steps [default: 28 for guidance-distilled models, 4 otherwise].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Distilled guidance value (FLUX.1-dev's guidance embedding).
    #[arg(long, default_value_t = 3.5)]
    pub guidance: f32,
    /// Seed; image i uses seed + i [default: random, recorded in the PNG].
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 1024)]
    pub width: usize,
    #[arg(long, default_value_t = 1024)]
    pub height: usize,
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Output folder (created if missing).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Initial latents from a safetensors file holding one tensor (packed [B,L,C] or [B,C,H,W]).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// T5 context length [default: 512 for guidance-distilled models, 256 otherwise].
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// Device: cpu, wgpu[:N] or cuda[:N] (among those compiled in).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A diffusers folder supplying the components a single-file transformer lacks.
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
    /// Transformer config.json where the weights cannot tell (e.g. RoPE axes).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
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
    check_output_dir(&a.out)?;
    let noise = a.noise.as_deref().map(read_noise).transpose()?;
    let overrides = ComponentOverrides {
        components: a.components.clone(),
        vae: a.vae.clone(),
        text_encoder: a.text_encoder.clone(),
        text_encoder_2: a.text_encoder_2.clone(),
        tokenizer: a.tokenizer.clone(),
        tokenizer_2: a.tokenizer_2.clone(),
        config: a.config.clone(),
    };
    let comps = FluxComponents::resolve(&a.model, &overrides)?;
    let t0 = Instant::now();
    let pipe = FluxPipeline::load(&comps, &device)?;
    let distilled = pipe.transformer.config.guidance_embeds;
    let seed = a.seed.unwrap_or_else(rand_seed);
    let req = FluxRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        true_cfg_scale: a.true_cfg,
        guidance: a.guidance,
        steps: a.steps.unwrap_or(if distilled { 28 } else { 4 }),
        width: a.width,
        height: a.height,
        num_images: a.num_images,
        seed,
        max_sequence_length: a
            .max_sequence_length
            .unwrap_or(if distilled { 512 } else { 256 }),
        noise,
    };
    pipe.validate(&req)?;
    if !a.quiet {
        eprintln!(
            "loaded {} on {spec} in {:.1}s",
            a.model.display(),
            t0.elapsed().as_secs_f32()
        );
    }

    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(req.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let t1 = Instant::now();
    let out = pipe.generate(&req, |info| {
        bar.set_position(info.step as u64);
        bar.set_message(format!("σ={:.3}", info.sigma));
        !stop.load(Ordering::SeqCst)
    })?;
    bar.finish_and_clear();
    let Some(out) = out else {
        return Err(Error::Interrupted.into());
    };
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    let [b, _, h, w] = [
        out.images.shape[0],
        out.images.shape[1],
        out.images.shape[2],
        out.images.shape[3],
    ];
    let plane = 3 * h * w;
    let model_name = a
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for i in 0..b {
        let img = RgbImage::from_chw_signed(&out.images.data[i * plane..(i + 1) * plane], h, w);
        let image_seed = seed + i as u64;
        let params = a1111_parameters(&req, image_seed, &model_name, distilled);
        let json = serde_json::json!({
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "true_cfg_scale": req.true_cfg_scale,
            "guidance": if distilled { Some(req.guidance) } else { None },
            "steps": req.steps,
            "sampler": "flow_match_euler",
            "seed": image_seed,
            "width": req.width,
            "height": req.height,
            "max_sequence_length": req.max_sequence_length,
            "noise_file": a.noise.as_ref().map(|p| p.display().to_string()),
            "model": a.model.display().to_string(),
            "device": spec.to_string(),
            "dreamforge_version": env!("CARGO_PKG_VERSION"),
        });
        let path = next_free_path(&a.out, image_seed);
        save_png(
            &path,
            &img,
            &[("parameters", &params), ("dreamforge", &json.to_string())],
        )?;
        println!("{}", path.display());
    }
    if !a.quiet {
        let secs = t1.elapsed().as_secs_f32();
        eprintln!(
            "{} image(s), {} steps in {:.1}s ({:.2} it/s)",
            b,
            req.steps,
            secs,
            req.steps as f32 / secs
        );
    }
    Ok(())
}

fn a1111_parameters(r: &FluxRequest, seed: u64, model: &str, distilled: bool) -> String {
    let mut s = r.prompt.clone();
    if let Some(n) = &r.negative_prompt {
        s.push_str(&format!("\nNegative prompt: {n}"));
    }
    s.push_str(&format!(
        "\nSteps: {}, Sampler: Euler (flow match), CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {model}",
        r.steps, r.true_cfg_scale, r.width, r.height
    ));
    if distilled {
        s.push_str(&format!(", Distilled CFG Scale: {}", r.guidance));
    }
    s.push_str(&format!(
        ", Version: dreamforge {}",
        env!("CARGO_PKG_VERSION")
    ));
    s
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
