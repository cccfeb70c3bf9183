//! `unet_2d_condition` fixtures: the weights' layout is detected from their keys. A diffusers
//! folder loads with its config.json; an LDM single file loads with the folder's config.json
//! when there is one, and its inferred structure (levels, channels, resnets, attention levels,
//! transformer depths, text width, projection kind, SDXL embedding) must match that config — the
//! head counts, which no weight reveals, excepted. Without a config.json the inferred config is
//! used. Each case compares `sample`.

use std::collections::BTreeMap;

use burn::tensor::Device;

use dreamforge_core::{WeightSet, to_host};
use dreamforge_models::unet::{
    AddedCondition, UNet2DConditionConfig, UNet2DConditionModel, infer_ldm_structure, is_ldm_unet,
};

use super::golden::{Fixture, Outcome};

/// Compares what [`infer_ldm_structure`] read from the keys with the fixture's config.
fn check_inferred_structure(
    inferred: &UNet2DConditionConfig,
    given: &UNet2DConditionConfig,
) -> Result<(), String> {
    let n = given.levels();
    let mut diffs = Vec::new();
    let mut same = |what: &str, a: String, b: String| {
        if a != b {
            diffs.push(format!("{what}: inferred {a}, config {b}"));
        }
    };
    same(
        "in/out channels",
        format!("{}/{}", inferred.in_channels, inferred.out_channels),
        format!("{}/{}", given.in_channels, given.out_channels),
    );
    same(
        "block_out_channels",
        format!("{:?}", inferred.block_out_channels),
        format!("{:?}", given.block_out_channels),
    );
    same(
        "down_block_types",
        format!("{:?}", inferred.down_block_types),
        format!("{:?}", given.down_block_types),
    );
    same(
        "up_block_types",
        format!("{:?}", inferred.up_block_types),
        format!("{:?}", given.up_block_types),
    );
    same(
        "mid_block_type",
        format!("{:?}", inferred.mid_block_type),
        format!("{:?}", given.mid_block_type),
    );
    if inferred.levels() == n {
        let per_level = |c: &UNet2DConditionConfig| {
            (0..n)
                .map(|i| {
                    let down = c.down_block_types[i]
                        .has_attention()
                        .then(|| c.down_transformer_layers(i));
                    let up = c.up_block_types[n - 1 - i]
                        .has_attention()
                        .then(|| c.up_transformer_layers(n - 1 - i));
                    (c.layers(i), down, up)
                })
                .collect::<Vec<_>>()
        };
        same(
            "(resnets, down / up transformer layers) per level",
            format!("{:?}", per_level(inferred)),
            format!("{:?}", per_level(given)),
        );
        if given.mid_block_type.is_some() {
            same(
                "mid transformer layers",
                inferred.mid_transformer_layers().to_string(),
                given.mid_transformer_layers().to_string(),
            );
        }
        same(
            "cross_attention_dim",
            inferred.cross_dim(n - 1).to_string(),
            given.cross_dim(n - 1).to_string(),
        );
    }
    same(
        "use_linear_projection",
        inferred.use_linear_projection.to_string(),
        given.use_linear_projection.to_string(),
    );
    same(
        "addition_embed_type",
        format!("{:?}", inferred.addition_embed_type),
        format!("{:?}", given.addition_embed_type),
    );
    same(
        "projection_class_embeddings_input_dim",
        format!("{:?}", inferred.projection_class_embeddings_input_dim),
        format!("{:?}", given.projection_class_embeddings_input_dim),
    );
    same(
        "time_embed_dim",
        inferred.time_embed_dim().to_string(),
        given.time_embed_dim().to_string(),
    );
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "config inferred from the LDM keys disagrees with config.json: {}",
            diffs.join("; ")
        ))
    }
}

pub fn load(fx: &Fixture, device: &Device) -> Result<UNet2DConditionModel, String> {
    let e = |e: dreamforge_core::Error| e.to_string();
    let set = WeightSet::open(fx.weights_path()).map_err(e)?;
    let cfg_path = fx.dir.join("config.json");
    let config = if cfg_path.exists() {
        Some(UNet2DConditionConfig::from_file(&cfg_path).map_err(e)?)
    } else {
        None
    };
    if is_ldm_unet(&set) {
        if let Some(given) = &config {
            check_inferred_structure(&infer_ldm_structure(&set).map_err(e)?, given)?;
        }
        UNet2DConditionModel::from_single_file_named(&set, config, device)
            .map(|(m, _)| m)
            .map_err(e)
    } else {
        let config =
            config.ok_or("a diffusers-layout UNet fixture needs config.json".to_string())?;
        UNet2DConditionModel::from_weights_named(&set, "", config, device)
            .map(|(m, _)| m)
            .map_err(e)
    }
}

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let model = load(fx, device)?;
    run_cases(fx, device, |_| Ok(model.clone()))
}

/// Runs every case through the model `model_for(case)` gives and compares `sample`.
pub fn run_cases(
    fx: &Fixture,
    device: &Device,
    mut model_for: impl FnMut(&super::golden::Case) -> Result<UNet2DConditionModel, String>,
) -> Result<Vec<Outcome>, String> {
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = (|| -> Result<BTreeMap<String, _>, String> {
            let model = &model_for(case)?;
            let sample = fx.input(case, "sample")?;
            let timestep = fx.input(case, "timestep")?;
            let ehs = fx.input(case, "encoder_hidden_states")?;
            let added = match (
                fx.input_opt(case, "text_embeds")?,
                fx.input_opt(case, "time_ids")?,
            ) {
                (Some(text), Some(ids)) => Some(AddedCondition {
                    text_embeds: text.to_device(device),
                    time_ids: ids.to_device(device),
                }),
                (None, None) => None,
                _ => {
                    return Err("a case needs both `text_embeds` and `time_ids`, or neither".into());
                }
            };
            let y = model
                .forward(
                    sample.to_device(device),
                    &timestep.data,
                    ehs.to_device(device),
                    added,
                )
                .map_err(|e| e.to_string())?;
            Ok(BTreeMap::from([("sample".to_string(), to_host(y))]))
        })();
        out.push(match r {
            Ok(computed) => fx.check(i, case, &computed),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
