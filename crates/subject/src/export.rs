//! Writing a trained subject adapter: PEFT / diffusers naming under `transformer.` (what
//! diffusers' `load_lora_weights`, ComfyUI and dreamforge read), the diffusers
//! `lora_adapter_metadata` (`r`, `lora_alpha`, `target_modules`) and dreamforge's own
//! description (`dreamforge_adapter`: method, parametrization, ranks, T-LoRA schedule, trigger,
//! base-model fingerprint, run config). Orthogonal T-LoRA layers are stored as their exact
//! rank-`2r` pair (see `dreamforge_adapters::file::META_KEY`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};

use dreamforge_adapters::{AdapterFile, META_KEY, branch_weights};
use dreamforge_core::{Result, WeightSet};

use crate::adapter_set::{AdapterLayout, AdapterSet};
use crate::config::{Method, SubjectConfig};

/// A fingerprint of the base transformer's architecture and weights layout: SHA-256 over its
/// sorted parameter names, shapes and the weight files' sizes (cheap for a 24 GB file; equal
/// for the same checkpoint, different for another model or another fine-tune size).
pub fn base_fingerprint(transformer: &Path) -> Result<String> {
    let set = WeightSet::open(transformer)?;
    let mut keys: Vec<&str> = set.keys();
    keys.sort_unstable();
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.as_bytes());
        h.update(format!("{:?};", set.shape(k)).as_bytes());
    }
    let mut files: Vec<_> = if transformer.is_dir() {
        std::fs::read_dir(transformer)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    } else {
        vec![transformer.to_path_buf()]
    };
    files.sort();
    for f in files {
        if f.extension().is_some_and(|e| e == "safetensors")
            && let Ok(m) = std::fs::metadata(&f)
        {
            h.update(m.len().to_le_bytes());
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Writes `set` (moved to the host) to `path` atomically, its layers under `component`
/// (`transformer` for FLUX, `unet` for SD).
pub fn write_adapter(
    path: &Path,
    component: &str,
    set: &AdapterSet,
    layout: &AdapterLayout,
    cfg: &SubjectConfig,
    base_model: &serde_json::Value,
    step: u64,
) -> Result<()> {
    let layers: BTreeMap<String, _> = layout
        .modules
        .iter()
        .zip(&set.branches)
        .map(|(m, b)| (m.clone(), branch_weights(b)))
        .collect();
    let a = &cfg.adapter;
    let orthogonal = a.method == Method::Tlora && a.orthogonal;
    // Every layer applies at scale 1 (scales folded into the up factors): PEFT metadata says
    // lora_alpha = r, with per-module patterns for layers whose rank was capped by their size.
    let rank = if orthogonal { 2 * a.rank } else { a.rank };
    let mut rank_pattern = serde_json::Map::new();
    for (m, l) in &layers {
        if l.rank() != rank {
            rank_pattern.insert(m.clone(), serde_json::json!(l.rank()));
        }
    }
    let targets: Vec<String> = {
        let mut t: Vec<String> = layout
            .modules
            .iter()
            .map(|m| {
                // PEFT matches target modules as name suffixes: keep what follows the block
                // index (`attn.to_out.0`, `ff.net.2`).
                let parts: Vec<&str> = m.split('.').collect();
                match parts
                    .iter()
                    .position(|p| p.chars().all(|c| c.is_ascii_digit()))
                {
                    Some(i) if i + 1 < parts.len() => parts[i + 1..].join("."),
                    _ => m.clone(),
                }
            })
            .collect();
        t.sort();
        t.dedup();
        t
    };
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    meta.insert(
        "lora_adapter_metadata".into(),
        serde_json::json!({
            format!("{component}.r"): rank,
            format!("{component}.lora_alpha"): rank,
            format!("{component}.target_modules"): targets,
            format!("{component}.rank_pattern"): rank_pattern,
            format!("{component}.alpha_pattern"): rank_pattern,
        })
        .to_string(),
    );
    meta.insert(
        META_KEY.into(),
        serde_json::json!({
            "method": match a.method { Method::Lora => "lora", Method::Tlora => "tlora" },
            "parametrization": if orthogonal { "orthogonal" } else { "vanilla" },
            "rank": a.rank,
            "min_rank": a.min_rank,
            "rank_exponent": a.rank_exponent,
            "lora_alpha": a.alpha,
            "rslora": a.rslora,
            "target_modules": a.target_modules,
            "trigger": cfg.token,
            "class": cfg.class,
            "instance_prompt": cfg.instance_prompt,
            "step": step,
            "base_model": base_model,
            "run_config": cfg,
        })
        .to_string(),
    );
    AdapterFile::write_peft(path, component, &layers, &meta)
}
