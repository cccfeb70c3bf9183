//! `dreamforge models inspect`: what a path holds — family, key format, parameter count,
//! dtypes, and for pipeline folders which components are present or missing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use dreamforge_core::{Error, Result, WeightSet};
use dreamforge_models::dit::flux::{FluxKeyFormat, infer_config};

use crate::components::FLUX_COMPONENTS;

/// A human-readable report on `path`.
pub fn inspect(path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let mut out = String::new();
    if path.is_dir() && path.join("model_index.json").exists() {
        let idx_path = path.join("model_index.json");
        let text = std::fs::read_to_string(&idx_path).map_err(|e| Error::io(&idx_path, e))?;
        let idx: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&idx_path, format!("invalid JSON: {e}")))?;
        let class = idx["_class_name"].as_str().unwrap_or("unknown");
        let _ = writeln!(out, "{}: diffusers pipeline `{class}`", path.display());
        let declared: Vec<String> = idx
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| {
                        !k.starts_with('_')
                            && v.as_array().is_some_and(|a| a.iter().any(|x| !x.is_null()))
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let names: Vec<String> = if declared.is_empty() {
            FLUX_COMPONENTS.iter().map(|s| s.to_string()).collect()
        } else {
            declared
        };
        for name in names {
            let p = path.join(&name);
            if !p.exists() {
                let _ = writeln!(out, "  {name:<16} MISSING");
                continue;
            }
            match WeightSet::open(&p) {
                Ok(set) => {
                    let _ = writeln!(out, "  {name:<16} {}", summarize(&set));
                }
                Err(Error::Format { .. }) => {
                    let files: Vec<String> = std::fs::read_dir(&p)
                        .map(|rd| {
                            rd.filter_map(|e| {
                                e.ok().map(|e| e.file_name().to_string_lossy().into_owned())
                            })
                            .collect()
                        })
                        .unwrap_or_default();
                    let _ = writeln!(out, "  {name:<16} files: {}", files.join(", "));
                }
                Err(e) => {
                    let _ = writeln!(out, "  {name:<16} ERROR {e}");
                }
            }
        }
        return Ok(out);
    }
    let set = WeightSet::open(path)?;
    let _ = writeln!(out, "{}: {}", path.display(), summarize(&set));
    if let Some(fmt) = FluxKeyFormat::detect(&set) {
        match infer_config(&set, &fmt, None) {
            Ok(c) => {
                let _ = writeln!(
                    out,
                    "  FLUX transformer: {} double + {} single blocks, width {} ({} heads x {}), {}, in {} / out {} channels, text dim {}, pooled dim {}",
                    c.num_layers,
                    c.num_single_layers,
                    c.inner_dim(),
                    c.num_attention_heads,
                    c.attention_head_dim,
                    if c.guidance_embeds {
                        "guidance-distilled (dev)"
                    } else {
                        "no guidance embedding (schnell)"
                    },
                    c.in_channels,
                    c.out_channels(),
                    c.joint_attention_dim,
                    c.pooled_projection_dim
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  FLUX transformer; config not inferable: {e}");
            }
        }
    }
    Ok(out)
}

/// Family guess, key format, parameter count and dtype histogram.
pub fn summarize(set: &WeightSet) -> String {
    let keys = set.keys();
    let mut params = 0u64;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for k in &keys {
        if let Some(s) = set.shape(k) {
            params += s.iter().product::<usize>() as u64;
        }
        if let Some(d) = set.dtype(k) {
            *dtypes.entry(format!("{d:?}")).or_default() += 1;
        }
    }
    let family = match FluxKeyFormat::detect(set) {
        Some(FluxKeyFormat::Bfl { prefix }) => {
            format!("FLUX transformer, BFL keys{}", prefix_note(&prefix))
        }
        Some(FluxKeyFormat::Diffusers { prefix }) => {
            format!("FLUX transformer, diffusers keys{}", prefix_note(&prefix))
        }
        None => match dreamforge_models::checkpoint::detect(set) {
            kind @ dreamforge_models::checkpoint::CheckpointKind::SdSingleFile { .. } => {
                let mut d = kind.describe();
                if let Some(first) = d.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                d
            }
            _ => guess_family(&keys).to_string(),
        },
    };
    let dt: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
    format!(
        "{family}; {} tensors, {} parameters ({}); dtypes {}",
        keys.len(),
        params,
        human(params),
        dt.join(", ")
    )
}

fn prefix_note(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!(" under `{prefix}`")
    }
}

fn guess_family(keys: &[&str]) -> &'static str {
    let has = |s: &str| keys.iter().any(|k| k.contains(s));
    if has("encoder.down_blocks") && has("decoder.up_blocks") {
        "AutoencoderKL (diffusers keys)"
    } else if has("encoder.block.0.layer.0.SelfAttention") {
        "T5 encoder"
    } else if has("encoder.layers.0.self_attn") && has("token_embedding") {
        "CLIP text encoder"
    } else if has("down_blocks") && has("mid_block") {
        "UNet2DConditionModel (diffusers keys)"
    } else if has("model.diffusion_model.input_blocks") {
        "Stable Diffusion single file (LDM keys)"
    } else if has("lora_A") || has("lora_down") || has("lora_B") {
        "LoRA adapter"
    } else {
        "unknown family"
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
