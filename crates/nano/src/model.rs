//! The nano model: a FLUX-architecture transformer (diffusers `FluxTransformer2DModel` config)
//! and a CLIP-architecture text encoder (transformers `CLIPTextModel` config) trained jointly,
//! on pixels folded 4×4 into channels by a `PixelSpace` autoencoder (no learned compression:
//! the world is flat colours, and a trained autoencoder would cost pretraining time and blur
//! the small shapes the judge must tell apart). A 64×64 image is a 16×16×48 "latent", packed
//! 2×2 into 64 tokens of 192 values. The text encoder has no T5 partner: its
//! `last_hidden_state` is the transformer's context and its pooled output the `vec` input.
//!
//! The bundle is a diffusers pipeline folder (`model_index.json`, `transformer/`,
//! `text_encoder/`, `tokenizer/`, `vae/`, `scheduler/`), so the ordinary FLUX pipeline loads it
//! and nothing in the engine special-cases it. The tokenizer is word-level over the world's
//! vocabulary (`tokenizer.json` of the `tokenizers` library).

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::json;

use dreamforge_core::export::{ParamKeys, save_safetensors};
use dreamforge_core::{Error, Result};
use dreamforge_models::dit::flux::{FluxConfig, FluxTransformer};
use dreamforge_models::text::clip::{ClipTextConfig, ClipTextModel};
use dreamforge_models::vae::PixelSpaceConfig;
use dreamforge_sampling::FlowMatchConfig;

use crate::caption::vocabulary;

/// Start / end-of-text tokens (CLIP's names; the end token also pads, as in CLIP).
pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";
pub const UNK: &str = "<|unk|>";

/// The tokenizer's vocabulary: specials, `,`, then the world's words (sorted).
pub fn tokens() -> Vec<String> {
    let mut t: Vec<String> = [BOS, EOS, UNK, ","].iter().map(|s| s.to_string()).collect();
    t.extend(vocabulary().into_iter().map(str::to_string));
    t
}

/// The `tokenizer.json` of the nano tokenizer: lower-cased, split on whitespace and
/// punctuation, one id per word, `<|startoftext|> … <|endoftext|>` around every text.
pub fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = tokens()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, json!(i)))
        .collect();
    let special = |id: usize, s: &str| {
        json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, BOS), special(1, EOS), special(2, UNK)],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": EOS, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": EOS, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": EOS, "type_id": 1}}],
            "special_tokens": {
                BOS: {"id": BOS, "ids": [0], "tokens": [BOS]},
                EOS: {"id": EOS, "ids": [1], "tokens": [EOS]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
    })
}

/// The nano model's architecture and data settings (part of the run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NanoConfig {
    /// Image side in pixels.
    pub side: usize,
    pub transformer: FluxConfig,
    pub text_encoder: ClipTextConfig,
    pub vae: PixelSpaceConfig,
    pub scheduler: FlowMatchConfig,
}

impl Default for NanoConfig {
    fn default() -> Self {
        let n_tokens = tokens().len();
        let text_width = 128;
        let patch = 4;
        let latent = 3 * patch * patch;
        let transformer: FluxConfig = serde_json::from_value(json!({
            "patch_size": 1,
            "in_channels": 4 * latent,
            "num_layers": 2,
            "num_single_layers": 4,
            "attention_head_dim": 32,
            "num_attention_heads": 8,
            "joint_attention_dim": text_width,
            "pooled_projection_dim": text_width,
            "guidance_embeds": false,
            "axes_dims_rope": [8, 12, 12]
        }))
        .expect("valid FLUX config");
        let text_encoder: ClipTextConfig = serde_json::from_value(json!({
            "architectures": ["CLIPTextModel"],
            "vocab_size": n_tokens,
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "hidden_act": "gelu",
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1
        }))
        .expect("valid CLIP config");
        let scheduler: FlowMatchConfig = serde_json::from_value(json!({
            "num_train_timesteps": 1000,
            "shift": 3.0,
            "use_dynamic_shifting": false
        }))
        .expect("valid scheduler config");
        Self {
            side: 64,
            transformer,
            text_encoder,
            vae: PixelSpaceConfig {
                sample_size: Some(64),
                ..PixelSpaceConfig::new(patch)
            },
            scheduler,
        }
    }
}

impl NanoConfig {
    /// Tokens per text (the text encoder's positions).
    /// A tiny configuration of the same architecture (16×16 pixels, width 16, one block of
    /// each kind) for fast tests of code paths, not for quality.
    pub fn tiny() -> Self {
        let mut c = Self {
            side: 16,
            ..Default::default()
        };
        c.vae.patch_size = 2;
        c.vae.sample_size = Some(16);
        c.transformer.in_channels = 48;
        c.transformer.num_attention_heads = 2;
        c.transformer.attention_head_dim = 8;
        c.transformer.axes_dims_rope = vec![2, 2, 4];
        c.transformer.num_layers = 1;
        c.transformer.num_single_layers = 1;
        c.transformer.joint_attention_dim = 16;
        c.transformer.pooled_projection_dim = 16;
        c.text_encoder.hidden_size = 16;
        c.text_encoder.intermediate_size = 32;
        c.text_encoder.num_attention_heads = 2;
        c.text_encoder.num_hidden_layers = 1;
        c
    }

    pub fn max_tokens(&self) -> usize {
        self.text_encoder.max_position_embeddings
    }

    /// Latent side (`side / patch`).
    pub fn latent_side(&self) -> usize {
        self.side / self.vae.patch_size
    }

    /// Checks that the parts fit together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.transformer;
        if t.in_channels != 4 * self.vae.latent_channels() {
            return Err(format!(
                "transformer in_channels {} ≠ 4 × the pixel fold's {} channels",
                t.in_channels,
                self.vae.latent_channels()
            ));
        }
        if t.joint_attention_dim != self.text_encoder.hidden_size
            || t.pooled_projection_dim != self.text_encoder.hidden_size
        {
            return Err("joint_attention_dim and pooled_projection_dim must equal the text encoder's hidden_size".into());
        }
        if self.text_encoder.vocab_size != tokens().len() {
            return Err(format!(
                "text encoder vocab_size {} ≠ {} nano tokens",
                self.text_encoder.vocab_size,
                tokens().len()
            ));
        }
        if !self.side.is_multiple_of(2 * self.vae.patch_size) {
            return Err(format!(
                "side {} is not a multiple of {}",
                self.side,
                2 * self.vae.patch_size
            ));
        }
        t.validate()?;
        self.text_encoder.validate()
    }
}

/// The jointly trained pair.
#[derive(Module, Debug)]
pub struct NanoModel {
    pub transformer: FluxTransformer,
    pub text_encoder: ClipTextModel,
}

/// Checkpoint keys of both parts (diffusers / transformers layout).
#[derive(Debug, Clone)]
pub struct NanoKeys {
    pub transformer: ParamKeys,
    pub text_encoder: ParamKeys,
}

/// A fresh model from `seed` (the text encoder draws from `seed + 1`).
pub fn init(cfg: &NanoConfig, seed: u64, device: &Device) -> Result<(NanoModel, NanoKeys)> {
    cfg.validate()
        .map_err(|r| Error::InvalidInput(format!("nano config: {r}")))?;
    let (transformer, tk) = FluxTransformer::init(cfg.transformer.clone(), seed, device)?;
    let (text_encoder, ck) = ClipTextModel::init(cfg.text_encoder.clone(), seed + 1, device)?;
    Ok((
        NanoModel {
            transformer,
            text_encoder,
        },
        NanoKeys {
            transformer: tk,
            text_encoder: ck,
        },
    ))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::InvalidInput(format!("cannot serialize {}: {e}", path.display())))?;
    dreamforge_core::image_io::write_atomic(path, format!("{text}\n").as_bytes())
}

/// Writes `model` as a diffusers FLUX pipeline folder at `dir` (created; files replaced
/// atomically one by one). `metadata` goes into both weight files.
pub fn write_bundle(
    dir: &Path,
    cfg: &NanoConfig,
    model: &NanoModel,
    keys: &NanoKeys,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    for sub in [
        "transformer",
        "text_encoder",
        "tokenizer",
        "vae",
        "scheduler",
    ] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "FluxPipeline",
            "_diffusers_version": "0.35.0",
            "_dreamforge_sample": {"steps": 20, "true_cfg_scale": 4.0, "negative_prompt": "", "tau": 0.0, "complete_prompt": "nano"},
            "_dreamforge_train": {"optimizer": "adamw", "lr": 1e-3, "steps": 300},
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": [null, null],
            "tokenizer": ["tokenizers", "Tokenizer"],
            "tokenizer_2": [null, null],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["dreamforge", "PixelSpace"]
        }),
    )?;
    let mut tcfg = serde_json::to_value(&cfg.transformer).expect("serializes");
    tcfg["_class_name"] = json!("FluxTransformer2DModel");
    write_json(&dir.join("transformer/config.json"), &tcfg)?;
    save_safetensors(
        &dir.join("transformer/diffusion_pytorch_model.safetensors"),
        &keys.transformer.export(&model.transformer)?,
        metadata,
    )?;
    write_json(&dir.join("text_encoder/config.json"), &cfg.text_encoder)?;
    save_safetensors(
        &dir.join("text_encoder/model.safetensors"),
        &keys.text_encoder.export(&model.text_encoder)?,
        metadata,
    )?;
    crate::pretrain::write_tokenizer(&dir.join("tokenizer"), cfg)?;
    write_json(&dir.join("vae/config.json"), &cfg.vae)?;
    let mut scfg = serde_json::to_value(&cfg.scheduler).expect("serializes");
    scfg["_class_name"] = json!("FlowMatchEulerDiscreteScheduler");
    write_json(&dir.join("scheduler/scheduler_config.json"), &scfg)?;
    Ok(())
}
