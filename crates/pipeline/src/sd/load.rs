//! Loading a UNet-family pipeline from a diffusers folder (`model_index.json`, `unet/`, `vae/`,
//! `text_encoder[_2]/`, `tokenizer[_2]/`, `scheduler/`) or from a single-file LDM checkpoint
//! (UNet, VAE and text encoders in one file; tokenizers and scheduler from `--components`,
//! per-component flags, or the family defaults), with per-component overrides.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use dreamforge_core::{Error, Result, WeightSet};
use dreamforge_models::checkpoint::{self, CheckpointKind, SdVariant};
use dreamforge_models::text::clip::{ClipTextConfig, ClipTextModel};
use dreamforge_models::text::tokenizer::TextTokenizer;
use dreamforge_models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use dreamforge_models::vae::{AutoencoderKL, AutoencoderKlConfig};
use dreamforge_sampling::{DdpmConfig, SamplerKind};

use super::{SdFamily, SdPipeline};
use crate::components::ComponentOverrides;

/// Where the UNet comes from.
#[derive(Debug, Clone)]
pub enum SdSource {
    /// A diffusers pipeline folder.
    Diffusers(PathBuf),
    /// A single-file LDM checkpoint of this variant.
    SingleFile {
        path: PathBuf,
        variant: SdVariant,
        inpainting: bool,
    },
}

/// Resolved sources of every component.
#[derive(Debug, Clone)]
pub struct SdComponents {
    pub source: SdSource,
    pub overrides: ComponentOverrides,
}

impl SdComponents {
    pub fn new(source: SdSource, overrides: ComponentOverrides) -> Self {
        Self { source, overrides }
    }

    /// The diffusers folder that supplies components: the model itself or `--components`.
    fn root(&self) -> Option<&Path> {
        match &self.source {
            SdSource::Diffusers(p) => Some(p),
            SdSource::SingleFile { .. } => self.overrides.components.as_deref(),
        }
    }

    fn component(&self, given: &Option<PathBuf>, name: &str) -> Option<PathBuf> {
        if let Some(p) = given {
            return Some(p.clone());
        }
        self.root().map(|r| r.join(name)).filter(|p| p.exists())
    }
}

/// The sampler a diffusers scheduler class corresponds to, and a notice when it is only the
/// nearest one we implement.
fn sampler_for_class(class: &str, cfg: &DdpmConfig) -> (SamplerKind, Option<String>) {
    match class {
        "DDIMScheduler" => (SamplerKind::Ddim, None),
        "EulerDiscreteScheduler" => (SamplerKind::Euler, None),
        "EulerAncestralDiscreteScheduler" => (SamplerKind::EulerAncestral, None),
        "DPMSolverMultistepScheduler" => {
            if cfg.use_karras_sigmas {
                (SamplerKind::DpmPp2mKarras, None)
            } else {
                (SamplerKind::DpmPp2m, None)
            }
        }
        other => (
            SamplerKind::Euler,
            Some(format!(
                "the model's scheduler `{other}` is not implemented; using `euler` (choose with --sampler: {})",
                SamplerKind::NAMES.join(", ")
            )),
        ),
    }
}

/// The scheduler config a single file implies, as the hub configs of the original releases
/// (scaled-linear betas 0.00085 → 0.012, offset 1) with the variant's prediction type. SD1.x /
/// SD2.x configs set no `timestep_spacing` (each sampler then uses its diffusers class default);
/// SDXL's sets `leading`.
pub fn default_scheduler(prediction_type: &str, timestep_spacing: Option<&str>) -> DdpmConfig {
    let mut v = serde_json::json!({
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
        "set_alpha_to_one": false,
        "clip_sample": false,
        "prediction_type": prediction_type,
    });
    if let Some(sp) = timestep_spacing {
        v["timestep_spacing"] = sp.into();
    }
    serde_json::from_value(v).expect("a valid scheduler config")
}

/// Reads a JSON config as Python's `json` writes it: bare `NaN` / `Infinity` / `-Infinity`
/// (diffusers saves DPMSolverMultistep's `lambda_min_clipped = -inf` that way) become the
/// strings `"nan"` / `"inf"` / `"-inf"`, which the config types accept.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&python_json_to_strict(&text))
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Replaces Python's non-standard JSON number tokens outside strings.
pub fn python_json_to_strict(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if in_str {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_str = false;
            }
            rest = &rest[ch.len_utf8()..];
            continue;
        }
        if ch == '"' {
            in_str = true;
        }
        let mut matched = false;
        for (tok, rep) in [
            ("-Infinity", "\"-inf\""),
            ("Infinity", "\"inf\""),
            ("NaN", "\"nan\""),
        ] {
            if rest.starts_with(tok) {
                out.push_str(rep);
                rest = &rest[tok.len()..];
                matched = true;
                break;
            }
        }
        if !matched {
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

fn load_tokenizer(dir: &Path) -> Result<TextTokenizer> {
    TextTokenizer::load(dir)
}

/// A text encoder folder (transformers layout) or a bare weights file with a config beside it.
fn load_text_encoder(path: &Path, device: &Device) -> Result<ClipTextModel> {
    ClipTextModel::load(path, device)
}

impl SdPipeline {
    /// Loads every component; nothing heavy is read before all paths are known to exist.
    pub fn load(c: &SdComponents, device: &Device) -> Result<Self> {
        let o = &c.overrides;
        let mut notices = Vec::new();
        // Scheduler: the folder's config, else the variant default.
        let sched_path = c
            .root()
            .map(|r| r.join("scheduler").join("scheduler_config.json"))
            .filter(|p| p.exists());
        let (scheduler, default_sampler) = match &sched_path {
            Some(p) => {
                let v = read_json(p)?;
                let class = v["_class_name"].as_str().unwrap_or("").to_string();
                let cfg: DdpmConfig = serde_json::from_value(v).map_err(|e| {
                    Error::config(p, format!("not a DDPM-family scheduler config: {e}"))
                })?;
                let (kind, notice) = sampler_for_class(&class, &cfg);
                notices.extend(notice);
                (cfg, kind)
            }
            None => {
                let pred = match &c.source {
                    // SD2 768-v is v-prediction; SD2-base users pass --prediction-type epsilon.
                    SdSource::SingleFile {
                        variant: SdVariant::Sd2,
                        inpainting: false,
                        ..
                    } => "v_prediction",
                    _ => "epsilon",
                };
                match &c.source {
                    SdSource::SingleFile {
                        variant: SdVariant::Sdxl,
                        ..
                    } => (default_scheduler(pred, Some("leading")), SamplerKind::Euler),
                    _ => (default_scheduler(pred, None), SamplerKind::DpmPp2mKarras),
                }
            }
        };
        let unet_config = o
            .config
            .as_deref()
            .map(UNet2DConditionConfig::from_file)
            .transpose()?;

        match &c.source {
            SdSource::Diffusers(root) => {
                let idx = read_json(&root.join("model_index.json"))?;
                let class = idx["_class_name"].as_str().unwrap_or("");
                let force_zeros = idx["force_zeros_for_empty_prompt"]
                    .as_bool()
                    .unwrap_or(true);
                let need = |name: &str| -> Result<PathBuf> {
                    let p = root.join(name);
                    if p.exists() {
                        Ok(p)
                    } else {
                        Err(Error::format(
                            root,
                            format!("component `{name}/` is missing"),
                        ))
                    }
                };
                let unet_dir = need("unet")?;
                let has_te2 = o.text_encoder_2.is_some() || root.join("text_encoder_2").exists();
                let family = if class.contains("XL") || has_te2 {
                    SdFamily::Sdxl
                } else {
                    SdFamily::Sd
                };
                let unet = match unet_config {
                    Some(cfg) => UNet2DConditionModel::from_weights(
                        &WeightSet::open(&unet_dir)?,
                        "",
                        cfg,
                        device,
                    )?,
                    None => UNet2DConditionModel::load(&unet_dir, device)?,
                };
                let vae =
                    AutoencoderKL::load(&o.vae.clone().map_or_else(|| need("vae"), Ok)?, device)?;
                let text_encoder = load_text_encoder(
                    &o.text_encoder
                        .clone()
                        .map_or_else(|| need("text_encoder"), Ok)?,
                    device,
                )?;
                let tokenizer =
                    load_tokenizer(&o.tokenizer.clone().map_or_else(|| need("tokenizer"), Ok)?)?;
                let (text_encoder_2, tokenizer_2) = if family == SdFamily::Sdxl {
                    (
                        Some(load_text_encoder(
                            &o.text_encoder_2
                                .clone()
                                .map_or_else(|| need("text_encoder_2"), Ok)?,
                            device,
                        )?),
                        Some(load_tokenizer(
                            &o.tokenizer_2
                                .clone()
                                .map_or_else(|| need("tokenizer_2"), Ok)?,
                        )?),
                    )
                } else {
                    (None, None)
                };
                let pipe = Self {
                    family,
                    unet,
                    vae,
                    text_encoder,
                    tokenizer,
                    text_encoder_2,
                    tokenizer_2,
                    scheduler,
                    default_sampler,
                    force_zeros_for_empty_prompt: force_zeros,
                    notices,
                    adapters: None,
                    device: device.clone(),
                };
                pipe.check_compatible(root)?;
                Ok(pipe)
            }
            SdSource::SingleFile { path, variant, .. } => {
                let set = WeightSet::open(path)?;
                let family = match variant {
                    SdVariant::Sd1 | SdVariant::Sd2 => SdFamily::Sd,
                    SdVariant::Sdxl => SdFamily::Sdxl,
                    SdVariant::SdxlRefiner => {
                        return Err(Error::format(
                            path,
                            "SDXL refiner checkpoints (one OpenCLIP text encoder, img2img only) are not supported yet",
                        ));
                    }
                };
                let kind = checkpoint::detect(&set);
                let (has_vae, has_te) = match kind {
                    CheckpointKind::SdSingleFile {
                        has_vae,
                        has_text_encoders,
                        ..
                    } => (has_vae, has_text_encoders),
                    _ => (false, false),
                };
                // As diffusers' `from_single_file(config=...)`: a `--components` folder's
                // component configs replace what would otherwise be inferred from the keys.
                let comp_config = |name: &str| -> Option<PathBuf> {
                    c.root()
                        .map(|r| r.join(name).join("config.json"))
                        .filter(|p| p.exists())
                };
                let unet_config = match (unet_config, comp_config("unet")) {
                    (Some(cfg), _) => Some(cfg),
                    (None, Some(p)) => Some(UNet2DConditionConfig::from_file(&p)?),
                    (None, None) => None,
                };
                let unet = UNet2DConditionModel::from_single_file(&set, unet_config, device)?;
                let vae = match (&o.vae, c.component(&None, "vae")) {
                    (Some(p), _) => AutoencoderKL::load(p, device)?,
                    (None, _) if has_vae => {
                        let cfg = match comp_config("vae") {
                            Some(p) => AutoencoderKlConfig::from_file(&p)?,
                            None => checkpoint::sd_single_file_vae_config(&set, *variant)?,
                        };
                        AutoencoderKL::from_single_file(&set, cfg, device)?
                    }
                    (None, Some(p)) => AutoencoderKL::load(&p, device)?,
                    (None, None) => {
                        return Err(Error::format(
                            path,
                            "the checkpoint holds no VAE (no `first_stage_model.*` keys): pass --vae <diffusers vae folder> or --components",
                        ));
                    }
                };
                // The file's own text encoders (diffusers order), unless overridden.
                let from_file = if has_te {
                    let mut bad = None;
                    let list =
                        checkpoint::sd_single_file_text_encoders_with(&set, *variant, |n| {
                            let p = comp_config(n)?;
                            ClipTextConfig::from_file(&p)
                                .map_err(|e| bad = Some(e))
                                .ok()
                        })?;
                    if let Some(e) = bad {
                        return Err(e);
                    }
                    list
                } else {
                    Vec::new()
                };
                let te = |given: &Option<PathBuf>, component: &str| -> Result<ClipTextModel> {
                    if let Some(p) = given {
                        return load_text_encoder(p, device);
                    }
                    if !has_te && let Some(p) = c.component(&None, component) {
                        return load_text_encoder(&p, device);
                    }
                    match from_file.iter().find(|t| t.component == component) {
                        Some(t) => t.load(&set, device),
                        None => Err(Error::format(
                            path,
                            format!(
                                "the checkpoint holds no `{component}`: pass --{} or --components <diffusers folder>",
                                component.replace('_', "-")
                            ),
                        )),
                    }
                };
                let text_encoder = te(&o.text_encoder, "text_encoder")?;
                let text_encoder_2 = match family {
                    SdFamily::Sdxl => Some(te(&o.text_encoder_2, "text_encoder_2")?),
                    SdFamily::Sd => None,
                };
                let tok = |given: &Option<PathBuf>,
                           name: &str,
                           flag: &str|
                 -> Result<TextTokenizer> {
                    match c.component(given, name) {
                        Some(p) => load_tokenizer(&p),
                        None => Err(Error::InvalidInput(format!(
                            "{}: a single-file checkpoint carries no tokenizer: pass --{flag} <CLIP tokenizer folder> or --components <diffusers folder>",
                            path.display()
                        ))),
                    }
                };
                let tokenizer = tok(&o.tokenizer, "tokenizer", "tokenizer")?;
                let tokenizer_2 = match family {
                    SdFamily::Sdxl => Some(tok(&o.tokenizer_2, "tokenizer_2", "tokenizer-2")?),
                    SdFamily::Sd => None,
                };
                let pipe = Self {
                    family,
                    unet,
                    vae,
                    text_encoder,
                    tokenizer,
                    text_encoder_2,
                    tokenizer_2,
                    scheduler,
                    default_sampler,
                    force_zeros_for_empty_prompt: true,
                    notices,
                    adapters: None,
                    device: device.clone(),
                };
                pipe.check_compatible(path)?;
                Ok(pipe)
            }
        }
    }

    /// The parts must fit: latent channels, cross-attention width, inpainting channels.
    fn check_compatible(&self, origin: &Path) -> Result<()> {
        let u = &self.unet.config;
        let l = self.latent_channels();
        if u.in_channels != l && u.in_channels != 2 * l + 1 {
            return Err(Error::config(
                origin,
                format!(
                    "the UNet takes {} input channels but the VAE has {l} latent channels (expected {l}, or {} for inpainting)",
                    u.in_channels,
                    2 * l + 1
                ),
            ));
        }
        let width = self.text_encoder.config().hidden_size
            + self
                .text_encoder_2
                .as_ref()
                .map_or(0, |e| e.config().hidden_size);
        let cross = u.cross_dim(0);
        if cross != width {
            return Err(Error::config(
                origin,
                format!(
                    "the UNet's cross_attention_dim is {cross} but the text encoder(s) give {width} features"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_non_finite_values_become_strings_outside_strings_only() {
        let text = r#"{"lambda_min_clipped": -Infinity, "x": Infinity, "y": NaN, "s": "a -Infinity \" NaN"}"#;
        let v: serde_json::Value = serde_json::from_str(&python_json_to_strict(text)).unwrap();
        assert_eq!(v["lambda_min_clipped"], "-inf");
        assert_eq!(v["x"], "inf");
        assert_eq!(v["y"], "nan");
        assert_eq!(v["s"], "a -Infinity \" NaN");
        // A real DPMSolverMultistepScheduler config as diffusers writes it parses.
        let dpm = r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "lambda_min_clipped": -Infinity, "use_karras_sigmas": true, "steps_offset": 1}"#;
        let v: serde_json::Value = serde_json::from_str(&python_json_to_strict(dpm)).unwrap();
        let cfg: DdpmConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            sampler_for_class(v["_class_name"].as_str().unwrap(), &cfg).0,
            SamplerKind::DpmPp2mKarras
        );
    }

    #[test]
    fn unsupported_scheduler_classes_fall_back_with_a_notice() {
        let cfg = default_scheduler("epsilon", None);
        let (kind, notice) = sampler_for_class("PNDMScheduler", &cfg);
        assert_eq!(kind, SamplerKind::Euler);
        assert!(notice.unwrap().contains("PNDMScheduler"));
        assert_eq!(
            sampler_for_class("DDIMScheduler", &cfg).0,
            SamplerKind::Ddim
        );
        let xl = default_scheduler("epsilon", Some("leading"));
        assert_eq!(xl.timestep_spacing.as_deref(), Some("leading"));
        assert_eq!(
            default_scheduler("v_prediction", None)
                .parameterization()
                .unwrap(),
            dreamforge_sampling::Parameterization::VPrediction
        );
    }
}
