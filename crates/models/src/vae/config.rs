//! `AutoencoderKL` configuration with the upstream (diffusers `config.json`) field names and
//! defaults (diffusers `models/autoencoders/autoencoder_kl.py`), plus the consistency checks
//! the model relies on.

use std::path::Path;

use serde::{Deserialize, Serialize};

use dreamforge_core::{Error, Result};

fn default_in_channels() -> usize {
    3
}
fn default_out_channels() -> usize {
    3
}
fn default_down_block_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn default_up_block_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_layers_per_block() -> usize {
    1
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_latent_channels() -> usize {
    4
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_sample_size() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

/// diffusers `AutoencoderKL` config (defaults are diffusers' own constructor defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlConfig {
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(default = "default_out_channels")]
    pub out_channels: usize,
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl AutoencoderKlConfig {
    /// Reads and validates a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|r| Error::config(path, r))
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| format!("not an AutoencoderKL config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The shift subtracted before scaling latents (0 when `shift_factor` is null).
    pub fn shift(&self) -> f64 {
        self.shift_factor.unwrap_or(0.0)
    }

    /// Checks internal consistency: block lists of one length, supported block types and
    /// activation, channel counts divisible by the group count.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({n}) must have the same length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(format!(
                "down block type `{t}` is not supported (only DownEncoderBlock2D)"
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(format!(
                "up block type `{t}` is not supported (only UpDecoderBlock2D)"
            ));
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(format!(
                "act_fn `{}` is not supported (only silu)",
                self.act_fn
            ));
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups must be positive".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c == 0 || **c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("in_channels, out_channels and latent_channels must be positive".into());
        }
        if self.scaling_factor == 0.0 || !self.scaling_factor.is_finite() {
            return Err(format!(
                "scaling_factor {} must be finite and non-zero",
                self.scaling_factor
            ));
        }
        for (name, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if let Some(v) = v
                && v.len() != self.latent_channels
            {
                return Err(format!(
                    "{name} has {} entries for {} latent channels",
                    v.len(),
                    self.latent_channels
                ));
            }
        }
        Ok(())
    }
}
