//! Which model family a `--model` path holds, detected from what is there (principle 1: from
//! the keys and the pipeline index, never from a flag): a diffusers pipeline folder by its
//! `model_index.json` class, a single file by its weight keys.

use std::path::Path;

use dreamforge_core::{Error, Result, WeightSet};
use dreamforge_models::checkpoint::{self, CheckpointKind};

use crate::sd::SdSource;

/// The family of a model path.
#[derive(Debug, Clone)]
pub enum ModelFamily {
    /// FLUX.1: a diffusers `FluxPipeline` folder or a single-file transformer.
    Flux,
    /// SD1.x / SD2.x / SDXL.
    Sd(SdSource),
}

/// What a diffusers pipeline folder is, from `model_index.json` `_class_name`.
pub fn pipeline_class(dir: &Path) -> Result<Option<String>> {
    let idx = dir.join("model_index.json");
    if !idx.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&idx).map_err(|e| Error::io(&idx, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&idx, format!("invalid JSON: {e}")))?;
    Ok(v["_class_name"].as_str().map(str::to_string))
}

fn is_flux_class(class: &str) -> bool {
    class.starts_with("Flux")
}

fn is_sd_class(class: &str) -> bool {
    class.starts_with("StableDiffusion")
}

/// Detects the family of `model`.
pub fn detect_family(model: &Path) -> Result<ModelFamily> {
    if !model.exists() {
        return Err(Error::io(
            model,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if model.is_dir() {
        return match pipeline_class(model)? {
            Some(c) if is_flux_class(&c) => Ok(ModelFamily::Flux),
            Some(c) if is_sd_class(&c) => Ok(ModelFamily::Sd(SdSource::Diffusers(model.into()))),
            Some(c) => Err(Error::format(
                model,
                format!(
                    "diffusers pipeline `{c}` is not supported (FLUX.1, Stable Diffusion 1.x/2.x and SDXL pipelines are)"
                ),
            )),
            None if model.join("transformer").exists() => Ok(ModelFamily::Flux),
            None if model.join("unet").exists() => {
                Ok(ModelFamily::Sd(SdSource::Diffusers(model.into())))
            }
            // A component folder (e.g. a diffusers transformer: config.json + weights) is
            // detected from its weights like a single file.
            None if has_safetensors(model) => detect_weights(model),
            None => Err(Error::format(
                model,
                "not a diffusers pipeline folder (no model_index.json) and not a weights file",
            )),
        };
    }
    detect_weights(model)
}

fn has_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
    })
}

fn detect_weights(model: &Path) -> Result<ModelFamily> {
    let set = WeightSet::open(model)?;
    match checkpoint::detect(&set) {
        CheckpointKind::FluxBfl | CheckpointKind::FluxDiffusers => Ok(ModelFamily::Flux),
        CheckpointKind::SdSingleFile {
            variant,
            inpainting,
            ..
        } => Ok(ModelFamily::Sd(SdSource::SingleFile {
            path: model.into(),
            variant,
            inpainting,
        })),
        other => Err(Error::format(
            model,
            format!(
                "found {}; --model takes a FLUX.1 transformer, a single-file SD/SDXL checkpoint or a diffusers pipeline folder",
                other.describe()
            ),
        )),
    }
}

/// A `--components` folder must belong to the same family as the model.
pub fn check_components_family(components: &Path, expected_flux: bool) -> Result<()> {
    let Some(class) = pipeline_class(components)? else {
        return Ok(());
    };
    let ok = if expected_flux {
        is_flux_class(&class)
    } else {
        is_sd_class(&class)
    };
    if ok {
        return Ok(());
    }
    Err(Error::config(
        components,
        format!(
            "--components is a `{class}` folder but the model is {}",
            if expected_flux {
                "a FLUX.1 transformer"
            } else {
                "a Stable Diffusion checkpoint"
            }
        ),
    ))
}
