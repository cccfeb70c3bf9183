//! `UNet2DConditionModel` configuration with the upstream (diffusers `config.json`) field names
//! and constructor defaults (diffusers `models/unets/unet_2d_condition.py`, which are SD1.5's),
//! the int-or-list fields normalised per resolution level, and the checks that make the
//! supported subset explicit: every option the SD1.x / SD2.x / SDXL checkpoints use is accepted,
//! anything else is a config error naming the field and its value.

use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use dreamforge_core::{Error, Result};

/// A config field that upstream accepts either as one value for every level or as a per-level
/// list (`layers_per_block: 2` or `[1, 2, 2]`). The list is tried first, so a nested
/// `OneOrMany<OneOrMany<_>>` reads `[1, 2]` as one entry per level, not one list for all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    /// The list length, `None` for a single value.
    pub fn len(&self) -> Option<usize> {
        match self {
            Self::One(_) => None,
            Self::Many(v) => Some(v.len()),
        }
    }

    /// True for an empty list.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
}

impl<T: Clone> OneOrMany<T> {
    /// The value at `index` (the single value for every index, or the list entry).
    ///
    /// # Panics
    /// When a list is shorter than `index + 1`; [`UNet2DConditionConfig::validate`] checks the
    /// lengths of every per-level field, so a validated config never panics here.
    pub fn at(&self, index: usize) -> T {
        match self {
            Self::One(v) => v.clone(),
            Self::Many(v) => v[index].clone(),
        }
    }

    /// The value expanded to `n` levels (a list is returned as is).
    pub fn expand(&self, n: usize) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone(); n],
            Self::Many(v) => v.clone(),
        }
    }
}

/// Defines an enum parsed from upstream block-type strings, whose parse error names the field.
macro_rules! block_type_enum {
    ($(#[$doc:meta])* $name:ident, $field:literal, [$($variant:ident),+ $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// The upstream class name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant)),+
                }
            }

            /// Parses an upstream class name (diffusers also accepts a `UNetRes` prefix).
            pub fn parse(s: &str) -> std::result::Result<Self, String> {
                let bare = s.strip_prefix("UNetRes").unwrap_or(s);
                match bare {
                    $(stringify!($variant) => Ok(Self::$variant),)+
                    _ => Err(format!(
                        "{}: block type `{s}` is not supported (supported: {})",
                        $field,
                        [$(stringify!($variant)),+].join(", ")
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(D::Error::custom)
            }
        }
    };
}

block_type_enum!(
    /// The down-block classes of the SD family.
    DownBlockType,
    "down_block_types",
    [DownBlock2D, CrossAttnDownBlock2D]
);
block_type_enum!(
    /// The up-block classes of the SD family.
    UpBlockType,
    "up_block_types",
    [UpBlock2D, CrossAttnUpBlock2D]
);
block_type_enum!(
    /// The mid-block class of the SD family (`null` in the config means no mid block).
    MidBlockType,
    "mid_block_type",
    [UNetMidBlock2DCrossAttn]
);

impl DownBlockType {
    pub fn has_attention(self) -> bool {
        self == Self::CrossAttnDownBlock2D
    }
}

impl UpBlockType {
    pub fn has_attention(self) -> bool {
        self == Self::CrossAttnUpBlock2D
    }
}

fn d_sample_size() -> Option<OneOrMany<usize>> {
    None
}
fn d_4() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_down() -> Vec<DownBlockType> {
    use DownBlockType::*;
    vec![
        CrossAttnDownBlock2D,
        CrossAttnDownBlock2D,
        CrossAttnDownBlock2D,
        DownBlock2D,
    ]
}
fn d_mid() -> Option<MidBlockType> {
    Some(MidBlockType::UNetMidBlock2DCrossAttn)
}
fn d_up() -> Vec<UpBlockType> {
    use UpBlockType::*;
    vec![
        UpBlock2D,
        CrossAttnUpBlock2D,
        CrossAttnUpBlock2D,
        CrossAttnUpBlock2D,
    ]
}
fn d_false_levels() -> OneOrMany<bool> {
    OneOrMany::One(false)
}
fn d_block_out() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_layers() -> OneOrMany<usize> {
    OneOrMany::One(2)
}
fn d_1usize() -> usize {
    1
}
fn d_1f64() -> f64 {
    1.0
}
fn d_silu() -> String {
    "silu".into()
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_cross() -> OneOrMany<usize> {
    OneOrMany::One(1280)
}
fn d_tlayers() -> OneOrMany<OneOrMany<usize>> {
    OneOrMany::One(OneOrMany::One(1))
}
fn d_head_dim() -> OneOrMany<usize> {
    OneOrMany::One(8)
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_3() -> usize {
    3
}
fn d_64() -> usize {
    64
}

/// diffusers `UNet2DConditionModel` config. Field names, meanings and defaults are upstream's;
/// note that upstream's `attention_head_dim` is the number of heads (see [`Self::heads`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(default = "d_sample_size")]
    pub sample_size: Option<OneOrMany<usize>>,
    #[serde(default = "d_4")]
    pub in_channels: usize,
    #[serde(default = "d_4")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<DownBlockType>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<MidBlockType>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<UpBlockType>,
    #[serde(default = "d_false_levels")]
    pub only_cross_attention: OneOrMany<bool>,
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: OneOrMany<usize>,
    #[serde(default = "d_1usize")]
    pub downsample_padding: usize,
    #[serde(default = "d_1f64")]
    pub mid_block_scale_factor: f64,
    /// Training-only; ignored at inference.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: OneOrMany<usize>,
    /// Per level: one count for every layer of the level, or a per-layer list.
    #[serde(default = "d_tlayers")]
    pub transformer_layers_per_block: OneOrMany<OneOrMany<usize>>,
    /// Per up level (asymmetric UNets); `None` means the reversed down-level counts.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<OneOrMany<usize>>>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Upstream's historical name for the number of heads (unless `num_attention_heads` is set).
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: OneOrMany<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// An fp16 overflow guard; computing in f32 makes it a no-op, so it is accepted and ignored
    /// (SDXL's config writes `null`).
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Only the `ResnetDownsample`/`SimpleCrossAttn` block families use it; ignored here.
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// Only the `ResnetDownsample`/`SimpleCrossAttn` block families use it; ignored here.
    #[serde(default = "d_1f64")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "d_3")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_3")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "d_default")]
    pub attention_type: String,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// Only `UNetMidBlock2DSimpleCrossAttn` uses it; ignored here.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Only the `SimpleCrossAttn` block families use it; ignored here.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Only `addition_embed_type: "text"` uses it; ignored here.
    #[serde(default = "d_64")]
    pub addition_embed_type_num_heads: usize,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' constructor defaults (the SD1.5 UNet).
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl UNet2DConditionConfig {
    /// Reads and validates a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|r| Error::config(path, r))
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: Self = serde_json::from_str(text)
            .map_err(|e| format!("not a UNet2DConditionModel config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The number of resolution levels.
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Resnets per down level `i` (up level `n − 1 − i` has one more).
    pub fn layers(&self, level: usize) -> usize {
        self.layers_per_block.at(level)
    }

    /// Attention heads at down level `i` (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self, level: usize) -> usize {
        match &self.num_attention_heads {
            Some(h) => h.at(level),
            None => self.attention_head_dim.at(level),
        }
    }

    /// Cross-attention (text) width at down level `i`.
    pub fn cross_dim(&self, level: usize) -> usize {
        self.cross_attention_dim.at(level)
    }

    /// Whether the transformers of down level `i` attend only to the text (no self-attention).
    pub fn only_cross(&self, level: usize) -> bool {
        self.only_cross_attention.at(level)
    }

    /// Transformer layers of each attention of down level `i` (one entry per resnet).
    pub fn down_transformer_layers(&self, level: usize) -> Vec<usize> {
        let n = self.layers(level);
        match self.transformer_layers_per_block.at(level) {
            OneOrMany::One(k) => vec![k; n],
            OneOrMany::Many(v) => v[..n].to_vec(),
        }
    }

    /// Transformer layers of each attention of up block `u` (ordered from the lowest
    /// resolution; one entry per resnet, i.e. `layers + 1`).
    pub fn up_transformer_layers(&self, up: usize) -> Vec<usize> {
        let level = self.levels() - 1 - up;
        let n = self.layers(level) + 1;
        let entry = match &self.reverse_transformer_layers_per_block {
            Some(rev) => rev[up].clone(),
            None => self.transformer_layers_per_block.at(level),
        };
        match entry {
            OneOrMany::One(k) => vec![k; n],
            OneOrMany::Many(v) => v[..n].to_vec(),
        }
    }

    /// Transformer layers of the mid block's single attention (the last level's first entry).
    pub fn mid_transformer_layers(&self) -> usize {
        match self.transformer_layers_per_block.at(self.levels() - 1) {
            OneOrMany::One(k) => k,
            OneOrMany::Many(v) => v[0],
        }
    }

    /// The GroupNorm group count (validated non-null).
    pub fn groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }

    /// Width of the timestep embedding the resnets receive (`time_embedding_dim` or 4·C₀).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// True for SDXL's `addition_embed_type: "text_time"` (pooled text + size/crop ids).
    pub fn is_text_time(&self) -> bool {
        self.addition_embed_type.as_deref() == Some("text_time")
    }

    /// Checks that every option is supported and every per-level list has one entry per level.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.levels();
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
        fn check_len<T>(name: &str, v: &OneOrMany<T>, n: usize) -> std::result::Result<(), String> {
            match v.len() {
                Some(l) if l != n => Err(format!(
                    "{name} has {l} entries for {n} levels (block_out_channels)"
                )),
                _ => Ok(()),
            }
        }
        check_len("only_cross_attention", &self.only_cross_attention, n)?;
        check_len("layers_per_block", &self.layers_per_block, n)?;
        check_len("cross_attention_dim", &self.cross_attention_dim, n)?;
        check_len(
            "transformer_layers_per_block",
            &self.transformer_layers_per_block,
            n,
        )?;
        check_len("attention_head_dim", &self.attention_head_dim, n)?;
        if let Some(h) = &self.num_attention_heads {
            check_len("num_attention_heads", h, n)?;
        }
        let unsupported = |field: &str, value: &dyn std::fmt::Debug, supported: &str| {
            Err(format!(
                "{field} {value:?} is not supported (supported: {supported})"
            ))
        };
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return unsupported("act_fn", &self.act_fn, "silu");
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported(
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                "default",
            );
        }
        if self.time_embedding_type != "positional" {
            return unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
                "positional",
            );
        }
        if self.attention_type != "default" {
            return unsupported("attention_type", &self.attention_type, "default");
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention", &true, "false");
        }
        if self.class_embeddings_concat {
            return unsupported("class_embeddings_concat", &true, "false");
        }
        for (field, value) in [
            ("class_embed_type", &self.class_embed_type),
            ("encoder_hid_dim_type", &self.encoder_hid_dim_type),
            ("time_embedding_act_fn", &self.time_embedding_act_fn),
            ("timestep_post_act", &self.timestep_post_act),
        ] {
            if let Some(v) = value {
                return unsupported(field, v, "null");
            }
        }
        for (field, value) in [
            ("num_class_embeds", &self.num_class_embeds),
            ("encoder_hid_dim", &self.encoder_hid_dim),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
        ] {
            if let Some(v) = value {
                return unsupported(field, v, "null");
            }
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") => {
                match (
                    self.addition_time_embed_dim,
                    self.projection_class_embeddings_input_dim,
                ) {
                    (Some(a), Some(p)) if a > 0 && p > 0 => {}
                    _ => {
                        return Err("addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim".into());
                    }
                }
            }
            Some(other) => return unsupported("addition_embed_type", &other, "null, text_time"),
        }
        for (field, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return unsupported(field, &k, "odd kernel sizes");
            }
        }
        let Some(groups) = self.norm_num_groups else {
            return unsupported("norm_num_groups", &"null", "a positive group count");
        };
        if groups == 0 {
            return Err("norm_num_groups must be positive".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err("in_channels and out_channels must be positive".into());
        }
        if !(self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor != 0.0) {
            return Err(format!(
                "mid_block_scale_factor {} must be finite and non-zero",
                self.mid_block_scale_factor
            ));
        }
        if !self.freq_shift.is_finite() {
            return Err(format!("freq_shift {} must be finite", self.freq_shift));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c == 0 || **c % groups != 0)
        {
            return Err(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups {groups}"
            ));
        }
        let t = self.time_embed_dim();
        if t == 0 {
            return Err("time_embedding_dim must be positive".into());
        }
        for i in 0..n {
            if self.layers(i) == 0 {
                return Err(format!("layers_per_block entry {i} must be positive"));
            }
            if let OneOrMany::Many(v) = self.transformer_layers_per_block.at(i)
                && v.len() < self.layers(i)
            {
                return Err(format!(
                    "transformer_layers_per_block entry {i} lists {} layer counts for {} resnets",
                    v.len(),
                    self.layers(i)
                ));
            }
        }
        match &self.reverse_transformer_layers_per_block {
            Some(rev) => {
                if rev.len() != n {
                    return Err(format!(
                        "reverse_transformer_layers_per_block has {} entries for {n} levels",
                        rev.len()
                    ));
                }
                for (u, e) in rev.iter().enumerate() {
                    let need = self.layers(n - 1 - u) + 1;
                    if let OneOrMany::Many(v) = e
                        && v.len() < need
                    {
                        return Err(format!(
                            "reverse_transformer_layers_per_block entry {u} lists {} layer counts for {need} resnets",
                            v.len()
                        ));
                    }
                }
            }
            None => {
                if let OneOrMany::Many(levels) = &self.transformer_layers_per_block
                    && levels.iter().any(|l| matches!(l, OneOrMany::Many(_)))
                {
                    return Err("transformer_layers_per_block with per-layer lists needs reverse_transformer_layers_per_block (as upstream requires)".into());
                }
            }
        }
        let attention_levels = (0..n).filter(|&i| {
            self.down_block_types[i].has_attention()
                || self.up_block_types[n - 1 - i].has_attention()
                || (i == n - 1 && self.mid_block_type.is_some())
        });
        let attention_levels: Vec<usize> = attention_levels.collect();
        if let Some(&first) = attention_levels.first()
            && let Some(&other) = attention_levels
                .iter()
                .find(|&&i| self.cross_dim(i) != self.cross_dim(first))
        {
            return Err(format!(
                "cross_attention_dim is {} at level {first} but {} at level {other}; one encoder_hidden_states tensor cannot serve both",
                self.cross_dim(first),
                self.cross_dim(other)
            ));
        }
        for &i in &attention_levels {
            let c = self.block_out_channels[i];
            let h = self.heads(i);
            if h == 0 || !c.is_multiple_of(h) {
                return Err(format!(
                    "level {i}: {c} channels cannot be split into {h} attention heads (attention_head_dim / num_attention_heads)"
                ));
            }
            if self.cross_dim(i) == 0 {
                return Err(format!("cross_attention_dim entry {i} must be positive"));
            }
        }
        Ok(())
    }
}
