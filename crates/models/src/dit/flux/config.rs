//! `FluxTransformer2DModel` configuration with the upstream (diffusers `config.json`) field
//! names, plus inference of the config from checkpoint keys and shapes for single files.

use std::path::Path;

use serde::{Deserialize, Serialize};

use dreamforge_core::{Error, Result, WeightSet};

fn default_patch_size() -> usize {
    1
}
fn default_in_channels() -> usize {
    64
}
fn default_num_layers() -> usize {
    19
}
fn default_num_single_layers() -> usize {
    38
}
fn default_head_dim() -> usize {
    128
}
fn default_heads() -> usize {
    24
}
fn default_joint_dim() -> usize {
    4096
}
fn default_pooled_dim() -> usize {
    768
}
fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

/// diffusers `FluxTransformer2DModel` config (defaults are FLUX.1-dev's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FluxConfig {
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    #[serde(default = "default_num_single_layers")]
    pub num_single_layers: usize,
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_joint_dim")]
    pub joint_attention_dim: usize,
    #[serde(default = "default_pooled_dim")]
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub guidance_embeds: bool,
    #[serde(default = "default_axes")]
    pub axes_dims_rope: Vec<usize>,
}

impl FluxConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| {
            Error::config(path, format!("not a FluxTransformer2DModel config: {e}"))
        })?;
        cfg.validate().map_err(|r| Error::config(path, r))?;
        Ok(cfg)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    pub fn mlp_hidden_dim(&self) -> usize {
        self.inner_dim() * 4
    }

    /// Checks internal consistency (RoPE axes must cover the head dim, all even).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sum: usize = self.axes_dims_rope.iter().sum();
        if sum != self.attention_head_dim {
            return Err(format!(
                "axes_dims_rope {:?} sums to {sum}, but attention_head_dim is {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.axes_dims_rope.iter().any(|d| d % 2 == 1) {
            return Err(format!(
                "axes_dims_rope {:?} must all be even",
                self.axes_dims_rope
            ));
        }
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return Err("attention heads and head dim must be positive".into());
        }
        if self.patch_size != 1 {
            return Err(format!(
                "patch_size {} is not supported (FLUX packs 2x2 patches in the pipeline, patch_size 1)",
                self.patch_size
            ));
        }
        Ok(())
    }
}

/// Which key layout a FLUX transformer checkpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FluxKeyFormat {
    /// diffusers names (`transformer_blocks.N.attn.to_q`), with this prefix on every key.
    Diffusers { prefix: String },
    /// Original BFL names (`double_blocks.N.img_attn.qkv`), with this prefix on every key.
    Bfl { prefix: String },
}

impl FluxKeyFormat {
    /// Detects the layout from the keys (never from a flag or the file name).
    pub fn detect(set: &WeightSet) -> Option<Self> {
        for k in set.keys() {
            if let Some(i) = k.find("double_blocks.0.img_attn.qkv.weight") {
                return Some(Self::Bfl {
                    prefix: k[..i].to_string(),
                });
            }
            if let Some(i) = k.find("transformer_blocks.0.attn.to_q.weight")
                && !k[..i].ends_with("single_")
            {
                return Some(Self::Diffusers {
                    prefix: k[..i].to_string(),
                });
            }
        }
        // A model with zero double blocks: fall back on the single blocks.
        for k in set.keys() {
            if let Some(i) = k.find("single_blocks.0.linear1.weight") {
                return Some(Self::Bfl {
                    prefix: k[..i].to_string(),
                });
            }
            if let Some(i) = k.find("single_transformer_blocks.0.attn.to_q.weight") {
                return Some(Self::Diffusers {
                    prefix: k[..i].to_string(),
                });
            }
        }
        None
    }

    pub fn prefix(&self) -> &str {
        match self {
            Self::Diffusers { prefix } | Self::Bfl { prefix } => prefix,
        }
    }
}

fn count_blocks(set: &WeightSet, prefix: &str, marker: &str) -> usize {
    let mut n = 0;
    while set.contains(&format!("{prefix}{n}.{marker}")) {
        n += 1;
    }
    n
}

/// Infers a config from a checkpoint's keys and shapes. RoPE axes cannot be read from weights:
/// `axes` supplies them; without it, the FLUX.1 split (16, 56, 56) is assumed for head dim 128
/// and anything else is an error asking for `--config`.
pub fn infer_config(
    set: &WeightSet,
    format: &FluxKeyFormat,
    axes: Option<Vec<usize>>,
) -> Result<FluxConfig> {
    let p = format.prefix();
    let shape = |k: &str| -> Result<Vec<usize>> {
        set.shape(&format!("{p}{k}"))
            .map(<[usize]>::to_vec)
            .ok_or_else(|| Error::MissingKey {
                path: set.origin().to_path_buf(),
                key: format!("{p}{k}"),
                hint: Some("needed to infer the FLUX config".into()),
            })
    };
    let (x_in, ctx_in, vec_in, guid, q_norm, final_lin, n_double, n_single) = match format {
        FluxKeyFormat::Bfl { .. } => (
            "img_in.weight",
            "txt_in.weight",
            "vector_in.in_layer.weight",
            "guidance_in.in_layer.weight",
            if set.contains(&format!(
                "{p}double_blocks.0.img_attn.norm.query_norm.scale"
            )) {
                "double_blocks.0.img_attn.norm.query_norm.scale"
            } else {
                "single_blocks.0.norm.query_norm.scale"
            },
            "final_layer.linear.weight",
            count_blocks(set, &format!("{p}double_blocks."), "img_attn.qkv.weight"),
            count_blocks(set, &format!("{p}single_blocks."), "linear1.weight"),
        ),
        FluxKeyFormat::Diffusers { .. } => (
            "x_embedder.weight",
            "context_embedder.weight",
            "time_text_embed.text_embedder.linear_1.weight",
            "time_text_embed.guidance_embedder.linear_1.weight",
            if set.contains(&format!("{p}transformer_blocks.0.attn.norm_q.weight")) {
                "transformer_blocks.0.attn.norm_q.weight"
            } else {
                "single_transformer_blocks.0.attn.norm_q.weight"
            },
            "proj_out.weight",
            count_blocks(set, &format!("{p}transformer_blocks."), "attn.to_q.weight"),
            count_blocks(
                set,
                &format!("{p}single_transformer_blocks."),
                "attn.to_q.weight",
            ),
        ),
    };
    let x = shape(x_in)?;
    let inner = x[0];
    let head_dim = shape(q_norm)?[0];
    if head_dim == 0 || inner % head_dim != 0 {
        return Err(Error::format(
            set.origin(),
            format!("inner dim {inner} is not a multiple of the head dim {head_dim}"),
        ));
    }
    let axes = match axes {
        Some(a) => a,
        None if head_dim == 128 => default_axes(),
        None => {
            return Err(Error::config(
                set.origin(),
                format!(
                    "head dim {head_dim} is not FLUX.1's 128, so the RoPE axes cannot be inferred from the weights; pass --config with `axes_dims_rope`"
                ),
            ));
        }
    };
    let out = shape(final_lin)?[0];
    let cfg = FluxConfig {
        patch_size: 1,
        in_channels: x[1],
        out_channels: Some(out),
        num_layers: n_double,
        num_single_layers: n_single,
        attention_head_dim: head_dim,
        num_attention_heads: inner / head_dim,
        joint_attention_dim: shape(ctx_in)?[1],
        pooled_projection_dim: shape(vec_in)?[1],
        guidance_embeds: set.contains(&format!("{p}{guid}")),
        axes_dims_rope: axes,
    };
    cfg.validate().map_err(|r| Error::config(set.origin(), r))?;
    Ok(cfg)
}
