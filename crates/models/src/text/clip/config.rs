//! transformers `CLIPTextConfig` (`configuration_clip.py`) with the upstream `config.json`
//! field names and defaults (those of `openai/clip-vit-base-patch32`'s text tower).

use std::path::Path;

use serde::{Deserialize, Serialize};

use dreamforge_core::{Error, Result};

fn default_vocab_size() -> usize {
    49408
}
fn default_hidden_size() -> usize {
    512
}
fn default_intermediate_size() -> usize {
    2048
}
fn default_projection_dim() -> Option<usize> {
    Some(512)
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> String {
    "quick_gelu".into()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_pad_token_id() -> Option<i64> {
    Some(1)
}
fn default_bos_token_id() -> Option<i64> {
    Some(49406)
}
fn default_eos_token_id() -> i64 {
    49407
}

/// transformers `CLIPTextConfig`. Unknown fields (`model_type`, `torch_dtype`, dropout...)
/// are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: Option<usize>,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// `"quick_gelu"` (OpenAI CLIP, SD1 / CLIP-L) or `"gelu"` (OpenCLIP bigG).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_bos_token_id")]
    pub bos_token_id: Option<i64>,
    /// `2` in legacy configs, which switches pooling to `argmax(input_ids)`.
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: i64,
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: Option<i64>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// The MLP activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x · sigmoid(1.702 x)`
    QuickGelu,
    /// exact (erf) GELU
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`)
    GeluTanh,
}

impl ClipActivation {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            _ => None,
        }
    }
}

impl ClipTextConfig {
    /// Reads a `config.json` (a `CLIPTextConfig`, or a full `CLIPConfig` whose `text_config`
    /// is used).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("invalid JSON: {e}")))?;
        if let Some(tc) = v.get("text_config").cloned() {
            v = tc;
        }
        let cfg: Self = serde_json::from_value(v)
            .map_err(|e| Error::config(path, format!("not a CLIPTextConfig: {e}")))?;
        cfg.validate().map_err(|r| Error::config(path, r))?;
        Ok(cfg)
    }

    /// Checks the values the model relies on; the message says which field is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.projection_dim == Some(0) {
            return Err("projection_dim must be positive".into());
        }
        if ClipActivation::parse(&self.hidden_act).is_none() {
            return Err(format!(
                "unsupported hidden_act `{}` (expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)",
                self.hidden_act
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps {} must be positive",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    pub fn activation(&self) -> ClipActivation {
        ClipActivation::parse(&self.hidden_act).unwrap_or(ClipActivation::QuickGelu)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// True when `architectures` names `CLIPTextModelWithProjection`.
    pub fn declares_projection(&self) -> bool {
        self.architectures
            .as_ref()
            .is_some_and(|a| a.iter().any(|s| s == "CLIPTextModelWithProjection"))
    }

    /// Legacy configs (`eos_token_id == 2`) pool at `argmax(input_ids)`.
    pub fn legacy_pooling(&self) -> bool {
        self.eos_token_id == 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_transformers() {
        let c = ClipTextConfig::default();
        assert_eq!(c.vocab_size, 49408);
        assert_eq!(c.hidden_act, "quick_gelu");
        assert_eq!(c.eos_token_id, 49407);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn rejects_bad_heads_and_activation() {
        let c = ClipTextConfig {
            num_attention_heads: 5,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("divisible"));
        let c = ClipTextConfig {
            hidden_act: "relu6".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("relu6"));
    }
}
