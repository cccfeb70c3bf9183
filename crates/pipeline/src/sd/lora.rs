//! Adapters on Stable Diffusion pipelines: LoRA / T-LoRA files on the UNet and the text
//! encoders, in PEFT / diffusers naming (`unet.<module>`, `text_encoder.<module>`,
//! `text_encoder_2.<module>`) or kohya sd-scripts naming (`lora_unet_` on diffusers module
//! names — SD1 files — or on the original LDM / SGM names — SDXL files, e.g.
//! `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q` —, `lora_te_` / `lora_te1_`,
//! `lora_te2_`). kohya names are flattened paths (`.` → `_`), so they are resolved against the
//! loaded models' own parameter names and the UNet's LDM key map, never un-flattened by guess.

use std::collections::HashMap;

use dreamforge_adapters::{AdapterFile, FileAdapter, Format, RankSchedule, attach_files};
use dreamforge_core::Result;
use dreamforge_core::export::ParamKeys;
use dreamforge_models::text::clip::ClipTextModel;
use dreamforge_models::unet::UNet2DConditionModel;
use dreamforge_models::unet::keys::ldm_key_map;

/// The pipeline's models with adapters attached (clones: the base models stay untouched) and,
/// per adapter slot, its T-LoRA schedule (applied to the UNet at every step).
#[derive(Debug, Clone)]
pub struct SdAdapters {
    pub unet: UNet2DConditionModel,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: Option<ClipTextModel>,
    pub schedules: Vec<Option<RankSchedule>>,
}

fn modules(names: &ParamKeys) -> impl Iterator<Item = &str> {
    names.keys().filter_map(|k| k.strip_suffix(".weight"))
}

/// Full kohya layer name → `component.module` for the given models.
fn kohya_names(
    unet: &UNet2DConditionModel,
    te: Option<&ClipTextModel>,
    te2: Option<&ClipTextModel>,
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut add = |prefixes: &[&str], component: &str, module: &str, alias: &str| {
        for p in prefixes {
            map.insert(
                format!("{p}{}", alias.replace('.', "_")),
                format!("{component}.{module}"),
            );
        }
    };
    for m in modules(&unet.names) {
        add(&["lora_unet_"], "unet", m, m);
    }
    for (ours, src) in ldm_key_map(&unet.config) {
        if let (Some(m), Some(ldm), None) = (
            ours.strip_suffix(".weight"),
            src.key.strip_suffix(".weight"),
            src.rows,
        ) {
            add(&["lora_unet_"], "unet", m, ldm);
        }
    }
    if let Some(te) = te {
        for m in modules(&te.names) {
            add(&["lora_te_", "lora_te1_"], "text_encoder", m, m);
        }
    }
    if let Some(te2) = te2 {
        for m in modules(&te2.names) {
            add(&["lora_te2_"], "text_encoder_2", m, m);
        }
    }
    map
}

/// `file` in PEFT naming with component prefixes (kohya names resolved against the models);
/// other files are returned unchanged.
pub fn to_peft_layout(
    file: &AdapterFile,
    unet: &UNet2DConditionModel,
    te: Option<&ClipTextModel>,
    te2: Option<&ClipTextModel>,
) -> AdapterFile {
    if file.format != Format::Kohya {
        return file.clone();
    }
    let map = kohya_names(unet, te, te2);
    let mut source_names = std::collections::BTreeMap::new();
    let layers = file
        .layers
        .iter()
        .map(|(k, v)| {
            let new = map.get(k).cloned().unwrap_or_else(|| k.clone());
            source_names.insert(new.clone(), k.clone());
            (new, v.clone())
        })
        .collect();
    AdapterFile {
        format: Format::Peft,
        layers,
        source_names,
        ..file.clone()
    }
}

/// Attaches `files` (already in PEFT layout) to clones of the models. Returns the adapted
/// models and, per file, the layers no model part matched.
pub fn attach_sd(
    files: &[FileAdapter<'_>],
    unet: &UNet2DConditionModel,
    te: &ClipTextModel,
    te2: Option<&ClipTextModel>,
) -> Result<(SdAdapters, Vec<Vec<String>>)> {
    let (u, un_u) = attach_files(unet.clone(), "unet", |p| unet.names.key_of(p), files)?;
    let (t, un_t) = attach_files(te.clone(), "text_encoder", |p| te.names.key_of(p), files)?;
    let (t2, un_t2) = match te2 {
        Some(e) => {
            let (m, un) = attach_files(e.clone(), "text_encoder_2", |p| e.names.key_of(p), files)?;
            (Some(m), un)
        }
        None => (
            None,
            files
                .iter()
                .map(|f| f.file.layers.keys().cloned().collect())
                .collect(),
        ),
    };
    let unmatched = (0..files.len())
        .map(|i| {
            un_u[i]
                .iter()
                .filter(|k| un_t[i].contains(k) && un_t2[i].contains(k))
                .cloned()
                .collect()
        })
        .collect();
    Ok((
        SdAdapters {
            unet: u,
            text_encoder: t,
            text_encoder_2: t2,
            schedules: files.iter().map(|f| f.file.schedule()).collect(),
        },
        unmatched,
    ))
}
