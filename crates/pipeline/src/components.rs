//! Where a pipeline's parts live: a diffusers folder (`model_index.json`, `transformer/`,
//! `vae/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `scheduler/`), or a
//! single-file transformer plus component paths (a diffusers folder for the rest, or one path
//! per component). Missing parts are reported by name before anything heavy is loaded; parts
//! the pipeline index declares absent (`[null, null]`, e.g. no T5 for a CLIP-only model) are
//! optional.

use std::path::{Path, PathBuf};

use dreamforge_core::{Error, Result};

/// Per-component overrides given by the user (`--vae`, `--text-encoder`, ...).
#[derive(Debug, Clone, Default)]
pub struct ComponentOverrides {
    /// A diffusers folder supplying every component not given otherwise.
    pub components: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    pub text_encoder_2: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_2: Option<PathBuf>,
    /// A `config.json` for the transformer where the weights cannot tell (e.g. RoPE axes).
    pub config: Option<PathBuf>,
}

/// Resolved paths of the FLUX pipeline's components.
#[derive(Debug, Clone)]
pub struct FluxComponents {
    pub transformer: PathBuf,
    pub transformer_config: Option<PathBuf>,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    /// The T5 encoder; `None` for a CLIP-only model (`model_index.json` lists
    /// `text_encoder_2` as `[null, null]`), whose sequence states come from the CLIP encoder.
    pub text_encoder_2: Option<PathBuf>,
    pub tokenizer: PathBuf,
    pub tokenizer_2: Option<PathBuf>,
    pub scheduler_config: Option<PathBuf>,
}

/// The component folder names of a diffusers `FluxPipeline`.
pub const FLUX_COMPONENTS: &[&str] = &[
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
];

impl FluxComponents {
    /// Resolves `model` (diffusers folder or single transformer file) with `overrides`.
    pub fn resolve(model: &Path, o: &ComponentOverrides) -> Result<Self> {
        if !model.exists() {
            return Err(Error::io(
                model,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        let root: Option<&Path> = if model.is_dir() && model.join("model_index.json").exists() {
            Some(model)
        } else {
            o.components.as_deref()
        };
        if let Some(r) = root
            && !r.join("model_index.json").exists()
        {
            return Err(Error::format(
                r,
                "not a diffusers pipeline folder (no model_index.json)",
            ));
        }
        let pick = |given: &Option<PathBuf>, name: &str| -> Result<PathBuf> {
            if let Some(p) = given {
                return Ok(p.clone());
            }
            match root {
                Some(r) if r.join(name).exists() => Ok(r.join(name)),
                Some(r) => Err(Error::format(r, format!("component `{name}/` is missing"))),
                None => Err(Error::InvalidInput(format!(
                    "{}: a single-file transformer needs the other components: pass --components <diffusers folder> or --{}",
                    model.display(),
                    name.replace('_', "-")
                ))),
            }
        };
        let transformer = if root == Some(model) {
            let t = model.join("transformer");
            if !t.exists() {
                return Err(Error::format(model, "component `transformer/` is missing"));
            }
            t
        } else {
            model.to_path_buf()
        };
        // A component the pipeline index declares absent (`[null, null]`) is optional.
        let declared_absent = |name: &str| -> bool {
            root.and_then(|r| std::fs::read_to_string(r.join("model_index.json")).ok())
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get(name).cloned())
                .is_some_and(|e| e.as_array().is_some_and(|a| a.iter().all(|x| x.is_null())))
        };
        let optional = |given: &Option<PathBuf>, name: &str| -> Result<Option<PathBuf>> {
            if given.is_none() && declared_absent(name) {
                Ok(None)
            } else {
                pick(given, name).map(Some)
            }
        };
        let scheduler_config = root
            .map(|r| r.join("scheduler").join("scheduler_config.json"))
            .filter(|p| p.exists());
        Ok(Self {
            transformer,
            transformer_config: o.config.clone(),
            vae: pick(&o.vae, "vae")?,
            text_encoder: pick(&o.text_encoder, "text_encoder")?,
            text_encoder_2: optional(&o.text_encoder_2, "text_encoder_2")?,
            tokenizer: pick(&o.tokenizer, "tokenizer")?,
            tokenizer_2: optional(&o.tokenizer_2, "tokenizer_2")?,
            scheduler_config,
        })
    }
}
