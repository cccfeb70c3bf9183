//! The AutoencoderKL mid-block self-attention (diffusers `Attention` built with
//! `_from_deprecated_attn_block=True` and `AttnProcessor2_0`): GroupNorm over the feature map,
//! one head spanning all channels over the H·W positions, `to_q/to_k/to_v/to_out.0` with bias,
//! residual connection, output scale 1. Checkpoints saved by diffusers before 0.14 name the
//! projections `query/key/value/proj_attn`; [`legacy_attention_key_map`] maps those.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;

use dreamforge_core::{HostTensor, KeyMap, KeySource, Result, WeightLoader, WeightSet};

use super::conv::GroupNorm;
use super::resnet::VAE_NORM_EPS;
use crate::layers::sdpa_merge_heads;

/// (current diffusers name, legacy diffusers name) of the mid-block attention projections.
const LEGACY_NAMES: &[(&str, &str)] = &[
    ("to_q", "query"),
    ("to_k", "key"),
    ("to_v", "value"),
    ("to_out.0", "proj_attn"),
];

/// Maps current parameter names (`….attentions.0.to_q.weight`) to the legacy keys
/// (`….attentions.0.query.weight`) for every legacy key the set holds; empty for current files.
pub fn legacy_attention_key_map(set: &WeightSet) -> KeyMap {
    let mut map = KeyMap::new();
    for key in set.keys() {
        if !key.contains(".attentions.") {
            continue;
        }
        for (new, old) in LEGACY_NAMES {
            for suffix in ["weight", "bias"] {
                let tail = format!(".{old}.{suffix}");
                if let Some(stem) = key.strip_suffix(&tail) {
                    map.insert(format!("{stem}.{new}.{suffix}"), KeySource::whole(key));
                }
            }
        }
    }
    map
}

/// A linear projection stored either as `nn.Linear` `[out, in]` or as a 1x1 conv
/// `[out, in, 1, 1]` (some converted checkpoints keep the conv shape).
fn linear_or_1x1(w: &WeightLoader, prefix: &str, dim: usize) -> Result<Linear> {
    match w.host(&format!("{prefix}.weight"), &[dim, dim, 1, 1]) {
        Ok(conv) => Ok(Linear {
            weight: Param::from_tensor(
                HostTensor::new(vec![dim, dim], conv.data)
                    .transpose2()
                    .to_device(w.device()),
            ),
            bias: Some(w.param(&format!("{prefix}.bias"), [dim])?),
        }),
        // Not a 1x1 conv: read it as `nn.Linear`, whose errors name the expected `[out, in]`.
        Err(_) => w.linear(prefix, dim, dim, true),
    }
}

#[derive(Module, Debug)]
pub struct VaeAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
}

impl VaeAttention {
    /// Loads `{prefix}.group_norm`, `{prefix}.to_q/to_k/to_v/to_out.0`.
    pub fn load(w: &WeightLoader, prefix: &str, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::load(
                w,
                &format!("{prefix}.group_norm"),
                channels,
                groups,
                VAE_NORM_EPS,
            )?,
            to_q: linear_or_1x1(w, &format!("{prefix}.to_q"), channels)?,
            to_k: linear_or_1x1(w, &format!("{prefix}.to_k"), channels)?,
            to_v: linear_or_1x1(w, &format!("{prefix}.to_v"), channels)?,
            to_out: linear_or_1x1(w, &format!("{prefix}.to_out.0"), channels)?,
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let hs = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let q = self.to_q.forward(hs.clone()).unsqueeze_dim::<4>(1);
        let k = self.to_k.forward(hs.clone()).unsqueeze_dim::<4>(1);
        let v = self.to_v.forward(hs).unsqueeze_dim::<4>(1);
        let o = self.to_out.forward(sdpa_merge_heads(q, k, v));
        o.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}
