//! `sd_single_file` fixtures: one original-LDM-layout Stable Diffusion checkpoint (written by
//! tools/parity/single_file.py and checked there against diffusers' own
//! `convert_ldm_vae_checkpoint` / `convert_ldm_clip_checkpoint` / `convert_open_clip_checkpoint`).
//! The runner detects the family from the keys (`checkpoint::detect`) and compares it with
//! golden.json's `expect`, infers every component config from shapes
//! (`sd_single_file_vae_config`, `sd_single_file_text_encoders`; `vae_config_overrides` holds
//! what shapes cannot tell), loads each component from the single file and runs each case on
//! its `component`: `vae` (encode: `sample` → `latent_mean`, `latent_logvar`; decode: `latent`
//! → `sample`), `text_encoder` / `text_encoder_2` (`input_ids` → `last_hidden_state`,
//! `penultimate_hidden_state`, `pooler_output` or `text_embeds`).

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use dreamforge_core::{HostTensor, WeightSet, to_host};
use dreamforge_models::checkpoint::{
    CheckpointKind, detect, sd_single_file_text_encoders, sd_single_file_vae_config,
};
use dreamforge_models::text::clip::ClipTextModel;
use dreamforge_models::vae::{AutoencoderKL, AutoencoderKlConfig};

use super::golden::{Case, Fixture, Outcome};

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `expect.<name>` must equal `got` (compared as JSON values).
fn expect_eq(expect: &serde_json::Value, name: &str, got: serde_json::Value) -> Result<(), String> {
    match expect.get(name) {
        Some(want) if *want != got => Err(format!("expected {name} = {want}, detected {got}")),
        _ => Ok(()),
    }
}

fn vae_config(
    fx: &Fixture,
    set: &WeightSet,
    kind: &CheckpointKind,
) -> Result<AutoencoderKlConfig, String> {
    let CheckpointKind::SdSingleFile { variant, .. } = kind else {
        unreachable!("checked by the caller")
    };
    let cfg = sd_single_file_vae_config(set, *variant).map_err(s)?;
    expect_eq(
        &fx.json["expect"],
        "vae_scaling_factor",
        serde_json::json!(cfg.scaling_factor),
    )?;
    let mut v = serde_json::to_value(&cfg).map_err(s)?;
    if let Some(o) = fx
        .json
        .get("vae_config_overrides")
        .and_then(|o| o.as_object())
    {
        for (k, val) in o {
            v[k] = val.clone();
        }
    }
    serde_json::from_value(v).map_err(|e| format!("vae_config_overrides: {e}"))
}

fn run_text(
    fx: &Fixture,
    case: &Case,
    model: &ClipTextModel,
    device: &Device,
) -> Result<BTreeMap<String, HostTensor>, String> {
    let key = case
        .inputs
        .get("input_ids")
        .ok_or("case has no input `input_ids`")?;
    let (shape, ids) = fx.golden.read_i64(key).map_err(s)?;
    let [b, t] = shape[..] else {
        return Err(format!("input_ids has shape {shape:?}, expected [B, T]"));
    };
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let y = model.forward(ids).map_err(s)?;
    let mut m = BTreeMap::from([
        (
            "last_hidden_state".to_string(),
            to_host(y.last_hidden_state),
        ),
        ("pooler_output".to_string(), to_host(y.pooler_output)),
        (
            "penultimate_hidden_state".to_string(),
            to_host(y.penultimate_hidden_state),
        ),
    ]);
    if let Some(te) = y.text_embeds {
        m.insert("text_embeds".to_string(), to_host(te));
    }
    Ok(m)
}

fn run_vae(
    fx: &Fixture,
    case: &Case,
    model: &AutoencoderKL,
    device: &Device,
) -> Result<BTreeMap<String, HostTensor>, String> {
    if let Some(x) = fx.input_opt(case, "sample")? {
        let (mean, logvar) = model.encode(x.to_device(device));
        Ok(BTreeMap::from([
            ("latent_mean".to_string(), to_host(mean)),
            ("latent_logvar".to_string(), to_host(logvar)),
        ]))
    } else if let Some(z) = fx.input_opt(case, "latent")? {
        let y = model.decode(z.to_device(device));
        Ok(BTreeMap::from([("sample".to_string(), to_host(y))]))
    } else {
        Err("vae case has neither a `sample` (encode) nor a `latent` (decode) input".into())
    }
}

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let set = WeightSet::open(fx.weights_path()).map_err(s)?;
    let kind = detect(&set);
    let CheckpointKind::SdSingleFile {
        variant,
        inpainting,
        has_vae,
        has_text_encoders,
    } = kind
    else {
        return Err(format!(
            "expected a Stable Diffusion single-file checkpoint but found {}",
            kind.describe()
        ));
    };
    let expect = &fx.json["expect"];
    expect_eq(expect, "variant", variant.name().into())?;
    expect_eq(expect, "inpainting", inpainting.into())?;
    expect_eq(expect, "has_vae", has_vae.into())?;
    expect_eq(expect, "has_text_encoders", has_text_encoders.into())?;

    let wants = |c: &str| {
        fx.cases
            .iter()
            .any(|k| k.extra.get("component").and_then(|v| v.as_str()) == Some(c))
    };
    let vae = if wants("vae") {
        let cfg = vae_config(fx, &set, &kind)?;
        Some(AutoencoderKL::from_single_file(&set, cfg, device).map_err(s)?)
    } else {
        None
    };
    let mut text = BTreeMap::new();
    if has_text_encoders {
        for te in sd_single_file_text_encoders(&set, variant).map_err(s)? {
            if let Some(want) = expect["text_encoders"].get(te.component) {
                let got = serde_json::to_value(&te.config).map_err(s)?;
                for (k, v) in want.as_object().into_iter().flatten() {
                    if got.get(k) != Some(v) {
                        return Err(format!(
                            "{}: expected {k} = {v}, inferred {}",
                            te.component,
                            got.get(k).cloned().unwrap_or_default()
                        ));
                    }
                }
            }
            if wants(te.component) {
                text.insert(te.component, te.load(&set, device).map_err(s)?);
            }
        }
    }

    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let component = case
            .extra
            .get("component")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let r = match (component, &vae) {
            ("vae", Some(m)) => run_vae(fx, case, m, device),
            _ => match text.get(component) {
                Some(m) => run_text(fx, case, m, device),
                None => Err(format!(
                    "case component `{component}` is not in this checkpoint (found {})",
                    kind.describe()
                )),
            },
        };
        out.push(match r {
            Ok(computed) => fx.check(i, case, &computed),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
