//! `T5Config` (transformers `configuration_t5.py`) with the upstream `config.json` field names
//! and defaults, and the feed-forward activation it implies (`feed_forward_proj` →
//! `dense_act_fn` / `is_gated_act`, exactly as `T5Config.__post_init__` derives them).

use std::path::Path;

use serde::{Deserialize, Serialize};

use dreamforge_core::{Error, Result};

fn default_vocab_size() -> usize {
    32128
}
fn default_d_model() -> usize {
    512
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    2048
}
fn default_num_layers() -> usize {
    6
}
fn default_num_heads() -> usize {
    8
}
fn default_num_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_dropout_rate() -> f64 {
    0.1
}
fn default_layer_norm_epsilon() -> f64 {
    1e-6
}
fn default_feed_forward_proj() -> String {
    "relu".into()
}

/// transformers `T5Config` (defaults are `t5-small`'s, as upstream). Only the encoder-side fields
/// are used; unknown fields in `config.json` are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    #[serde(default = "default_d_ff")]
    pub d_ff: usize,
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_dropout_rate")]
    pub dropout_rate: f64,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// `"relu"` (original T5), `"gated-gelu"` (T5 v1.1, FLUX / SD3), or `[gated-]<act>`.
    #[serde(default = "default_feed_forward_proj")]
    pub feed_forward_proj: String,
    /// Written by `save_pretrained`; recomputed from `feed_forward_proj` like upstream does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_act_fn: Option<String>,
    /// Written by `save_pretrained`; recomputed from `feed_forward_proj` like upstream does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_gated_act: Option<bool>,
}

impl Default for T5Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// The activation of the feed-forward block (transformers `ACT2FN[dense_act_fn]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Activation {
    Relu,
    /// Exact (erf) GELU, `"gelu"`.
    Gelu,
    /// Tanh-approximated GELU: `"gelu_new"` (what `"gated-gelu"` maps to), `"gelu_pytorch_tanh"`,
    /// `"gelu_fast"`.
    GeluTanh,
    /// `"silu"` / `"swish"`.
    Silu,
}

impl T5Activation {
    /// Parses a transformers `ACT2FN` name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "relu" => Self::Relu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }
}

impl T5Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not a T5Config: {e}")))?;
        cfg.validate().map_err(|r| Error::config(path, r))?;
        Ok(cfg)
    }

    /// `num_heads · d_kv`, the width of q/k/v (need not equal `d_model`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// `(is_gated_act, activation)` from `feed_forward_proj`, as `T5Config.__post_init__`:
    /// `"gated-gelu"` means gated `gelu_new` for backwards compatibility.
    pub fn feed_forward(&self) -> std::result::Result<(bool, T5Activation), String> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let bad = || {
            format!(
                "feed_forward_proj `{}` is not `gated-{{ACT}}` or `{{ACT}}` (e.g. `gated-gelu`, `relu`)",
                self.feed_forward_proj
            )
        };
        let (gated, act) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => return Err(bad()),
        };
        let act = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            act
        };
        let act = T5Activation::from_name(act).ok_or_else(|| {
            format!(
                "activation `{act}` (from feed_forward_proj `{}`) is not supported",
                self.feed_forward_proj
            )
        })?;
        Ok((gated, act))
    }

    /// Checks what the model needs to be well defined.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.feed_forward()?;
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        // Bidirectional buckets: half per direction, half of those exact, the rest logarithmic
        // up to max_distance (which must lie beyond the exact range, or the log bins divide by 0).
        let max_exact = self.relative_attention_num_buckets / 4;
        if max_exact == 0 {
            return Err(format!(
                "relative_attention_num_buckets {} is too small (at least 4)",
                self.relative_attention_num_buckets
            ));
        }
        if self.relative_attention_max_distance <= max_exact {
            return Err(format!(
                "relative_attention_max_distance {} must exceed the exact-bucket range {max_exact}",
                self.relative_attention_max_distance
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon >= 0.0) {
            return Err(format!(
                "layer_norm_epsilon {} is invalid",
                self.layer_norm_epsilon
            ));
        }
        Ok(())
    }
}
