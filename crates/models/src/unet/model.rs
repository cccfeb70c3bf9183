//! `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`) for SD1.x, SD2.x and
//! SDXL: timestep (+ SDXL text/size) embedding, `conv_in`, down blocks keeping skip states, the
//! cross-attention mid block, up blocks consuming the skips, GroupNorm → SiLU → `conv_out`.
//! Loads diffusers folders / files and original LDM single files (keys detected, never flagged).

use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use dreamforge_core::export::ParamKeys;
use dreamforge_core::{Error, Result, WeightLoader, WeightSet};

use super::config::UNet2DConditionConfig;
use super::down_blocks::{DownBlock2D, DownBlockSpec};
use super::embeddings::{TimestepEmbedding, text_time_features};
use super::keys::{infer_ldm_config, ldm_key_map, ldm_prefix};
use super::mid_block::UNetMidBlock2DCrossAttn;
use super::resnet::ResnetSpec;
use super::transformer::TransformerSpec;
use super::up_blocks::{UpBlock2D, UpBlockSpec};
use crate::layers::timestep_embedding;
use crate::vae::conv::{Conv2d, GroupNorm};

/// SDXL's additional conditioning (`added_cond_kwargs` upstream), required when the config has
/// `addition_embed_type: "text_time"` and ignored otherwise (as upstream ignores it).
#[derive(Debug, Clone)]
pub struct AddedCondition {
    /// `[B, P]` pooled text embedding (OpenCLIP bigG's projected `text_embeds` for SDXL).
    pub text_embeds: Tensor<2>,
    /// `[B, 6]` `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]` (the refiner's 5).
    pub time_ids: Tensor<2>,
}

#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    /// SDXL `text_time` only.
    pub add_embedding: Option<TimestepEmbedding>,
    pub down_blocks: Vec<DownBlock2D>,
    pub mid_block: Option<UNetMidBlock2DCrossAttn>,
    pub up_blocks: Vec<UpBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    #[module(skip)]
    pub config: UNet2DConditionConfig,
    /// Every parameter's diffusers name by module path (whatever the file's layout), with its
    /// storage orientation: for matching adapters and exporting in diffusers layout (a 1×1
    /// convolution kept as a linear map exports 2-D).
    #[module(skip)]
    pub names: ParamKeys,
}

impl UNet2DConditionModel {
    /// Loads a diffusers component folder (`config.json` + `diffusion_pytorch_model.safetensors`,
    /// an index, or another layout [`WeightSet::open`] accepts; a folder whose weights use LDM
    /// keys loads through [`Self::from_single_file`] with its config.json), or an LDM single
    /// `.safetensors` file with the config inferred from its keys. Strict: missing, unused and
    /// wrongly shaped weights are errors naming the key.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Ok(Self::load_named(path, device)?.0)
    }

    /// [`Self::load`] with every parameter's diffusers name by module path.
    pub fn load_named(path: &Path, device: &Device) -> Result<(Self, ParamKeys)> {
        if path.is_dir() {
            let config = UNet2DConditionConfig::from_file(&path.join("config.json"))?;
            let set = WeightSet::open(path)?;
            if ldm_prefix(&set).is_some() {
                return Self::from_single_file_named(&set, Some(config), device);
            }
            return Self::from_weights_named(&set, "", config, device);
        }
        let set = WeightSet::open(path)?;
        if ldm_prefix(&set).is_none() {
            return Err(Error::format(
                path,
                "not an LDM UNet single file (no `model.diffusion_model.input_blocks.0.0.weight`); a diffusers UNet is loaded from its folder with config.json",
            ));
        }
        Self::from_single_file_named(&set, None, device)
    }

    /// Builds the model from diffusers-named weights, every key under `prefix` (`""`, `"unet."`).
    pub fn from_weights(
        set: &WeightSet,
        prefix: &str,
        config: UNet2DConditionConfig,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self::from_weights_named(set, prefix, config, device)?.0)
    }

    /// [`Self::from_weights`], also returning every parameter's diffusers name by module path
    /// (for matching adapters).
    pub fn from_weights_named(
        set: &WeightSet,
        prefix: &str,
        config: UNet2DConditionConfig,
        device: &Device,
    ) -> Result<(Self, ParamKeys)> {
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let w = WeightLoader::new(set, device).with_prefix(prefix);
        let mut model = Self::build(&w, config)?;
        let names = ParamKeys::of(&model, &w.canonical_keys());
        model.names = names.clone();
        w.finish()?;
        Ok((model, names))
    }

    /// Builds the model from an original LDM / SGM single file (UNet keys under
    /// `model.diffusion_model.`; VAE, text-encoder and schedule tensors outside it are left
    /// alone). Without `config`, it is inferred from the keys ([`infer_ldm_config`]).
    pub fn from_single_file(
        set: &WeightSet,
        config: Option<UNet2DConditionConfig>,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self::from_single_file_named(set, config, device)?.0)
    }

    /// [`Self::from_single_file`], also returning every parameter's diffusers name by module
    /// path (whatever the file's layout), for matching adapters.
    pub fn from_single_file_named(
        set: &WeightSet,
        config: Option<UNet2DConditionConfig>,
        device: &Device,
    ) -> Result<(Self, ParamKeys)> {
        let prefix = ldm_prefix(set).ok_or_else(|| {
            Error::format(
                set.origin(),
                "not an LDM UNet checkpoint: no `model.diffusion_model.input_blocks.0.0.weight`",
            )
        })?;
        let config = match config {
            Some(c) => c,
            None => infer_ldm_config(set)?,
        };
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let w = WeightLoader::new(set, device)
            .with_prefix(prefix)
            .with_key_map(ldm_key_map(&config));
        let mut model = Self::build(&w, config)?;
        let names = ParamKeys::of(&model, &w.canonical_keys());
        model.names = names.clone();
        w.finish()?;
        Ok((model, names))
    }

    /// Loads every block by its diffusers name (the loader's key map translates other layouts).
    fn build(w: &WeightLoader, config: UNet2DConditionConfig) -> Result<Self> {
        let c = &config;
        let n = c.levels();
        let ch = &c.block_out_channels;
        let temb = c.time_embed_dim();
        let resnet = ResnetSpec {
            groups: c.groups(),
            eps: c.norm_eps,
            temb,
        };
        let attn_spec = |level: usize, layers: usize| TransformerSpec {
            heads: c.heads(level),
            cross_dim: c.cross_dim(level),
            only_cross: c.only_cross(level),
            layers,
            linear_projection: c.use_linear_projection,
            groups: c.groups(),
        };
        let specs = |level: usize, counts: Vec<usize>| {
            counts
                .into_iter()
                .map(|k| attn_spec(level, k))
                .collect::<Vec<_>>()
        };

        let down_blocks = (0..n)
            .map(|b| {
                let spec = DownBlockSpec {
                    c_in: if b == 0 { ch[0] } else { ch[b - 1] },
                    c_out: ch[b],
                    layers: c.layers(b),
                    attention: c.down_block_types[b]
                        .has_attention()
                        .then(|| specs(b, c.down_transformer_layers(b))),
                    downsample: (b + 1 < n).then_some(c.downsample_padding),
                };
                DownBlock2D::load(w, &format!("down_blocks.{b}"), &spec, resnet)
            })
            .collect::<Result<Vec<_>>>()?;

        let mid_block = match c.mid_block_type {
            Some(_) => Some(UNetMidBlock2DCrossAttn::load(
                w,
                "mid_block",
                ch[n - 1],
                resnet,
                // Upstream's mid block never passes `only_cross_attention` on: attn1 self-attends.
                TransformerSpec {
                    only_cross: false,
                    ..attn_spec(n - 1, c.mid_transformer_layers())
                },
                c.mid_block_scale_factor,
            )?),
            None => None,
        };

        let up_blocks = (0..n)
            .map(|u| {
                let level = n - 1 - u;
                let spec = UpBlockSpec {
                    c_in: ch[level.saturating_sub(1)],
                    c_prev: if u == 0 { ch[n - 1] } else { ch[level + 1] },
                    c_out: ch[level],
                    layers: c.layers(level) + 1,
                    attention: c.up_block_types[u]
                        .has_attention()
                        .then(|| specs(level, c.up_transformer_layers(u))),
                    upsample: u + 1 < n,
                };
                UpBlock2D::load(w, &format!("up_blocks.{u}"), &spec, resnet)
            })
            .collect::<Result<Vec<_>>>()?;

        let add_embedding = if c.is_text_time() {
            let p = c.projection_class_embeddings_input_dim.unwrap_or_default();
            Some(TimestepEmbedding::load(w, "add_embedding", p, temb)?)
        } else {
            None
        };

        Ok(Self {
            conv_in: Conv2d::load(
                w,
                "conv_in",
                c.in_channels,
                ch[0],
                c.conv_in_kernel,
                1,
                (c.conv_in_kernel - 1) / 2,
            )?,
            time_embedding: TimestepEmbedding::load(w, "time_embedding", ch[0], temb)?,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(w, "conv_norm_out", ch[0], c.groups(), c.norm_eps)?,
            conv_out: Conv2d::load(
                w,
                "conv_out",
                ch[0],
                c.out_channels,
                c.conv_out_kernel,
                1,
                (c.conv_out_kernel - 1) / 2,
            )?,
            config,
            names: ParamKeys::default(),
        })
    }

    /// The text width every attention expects (the first attention level's
    /// `cross_attention_dim`), or `None` for a UNet without attention.
    fn context_width(&self) -> Option<usize> {
        let c = &self.config;
        let n = c.levels();
        (0..n)
            .find(|&i| {
                c.down_block_types[i].has_attention()
                    || c.up_block_types[n - 1 - i].has_attention()
                    || (i + 1 == n && c.mid_block_type.is_some())
            })
            .map(|i| c.cross_dim(i))
    }

    /// The noise (or v) prediction for one denoising step. `timesteps` are DDPM timesteps
    /// (fractional allowed), one per batch row or a single one for the whole batch. Any spatial
    /// size works (sizes not divisible by the total downscale upsample to the skips' sizes, as
    /// upstream forwards `upsample_size`).
    ///
    /// # Shapes
    /// `sample: [B, in_channels, H, W]`, `timesteps: [B]` or `[1]`,
    /// `encoder_hidden_states: [B, T, cross_attention_dim]`, SDXL `added`:
    /// `text_embeds [B, P]`, `time_ids [B, 6]` → `[B, out_channels, H, W]`
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        encoder_hidden_states: Tensor<3>,
        added: Option<AddedCondition>,
    ) -> Result<Tensor<4>> {
        let c = &self.config;
        let [b, c_in, _, _] = sample.dims();
        let [bc, _, width] = encoder_hidden_states.dims();
        if c_in != c.in_channels {
            return Err(Error::InvalidInput(format!(
                "UNet sample has {c_in} channels, the model takes {}",
                c.in_channels
            )));
        }
        if bc != b {
            return Err(Error::InvalidInput(format!(
                "UNet encoder_hidden_states batch {bc} differs from the sample batch {b}"
            )));
        }
        if let Some(expected) = self.context_width()
            && width != expected
        {
            return Err(Error::InvalidInput(format!(
                "UNet encoder_hidden_states are {width} wide, the model's cross-attention takes {expected}"
            )));
        }
        let device = sample.device();
        // The sinusoids are computed in f32 (as diffusers does) and cast to the compute dtype
        // the sample arrives in (mixed-precision training casts weights and inputs together).
        let dtype: burn::tensor::FloatDType = sample.dtype().into();

        // 0. center input if necessary
        let sample = if c.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };

        // 1. time (+ SDXL text/size embedding)
        let t: Vec<f32> = match timesteps.len() {
            1 => vec![timesteps[0]; b],
            l if l == b => timesteps.to_vec(),
            l => {
                return Err(Error::InvalidInput(format!(
                    "{l} UNet timesteps for batch {b} (give one, or one per row)"
                )));
            }
        };
        let t_emb = timestep_embedding(
            &t,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift as f32,
            &device,
        )
        .cast(dtype);
        let mut emb = self.time_embedding.forward(t_emb);
        if let Some(add) = &self.add_embedding {
            let Some(added) = added else {
                return Err(Error::InvalidInput(
                    "this UNet (addition_embed_type \"text_time\", SDXL) needs text_embeds and time_ids".into(),
                ));
            };
            let features = text_time_features(
                added.text_embeds,
                added.time_ids,
                c.addition_time_embed_dim.unwrap_or_default(),
                c.flip_sin_to_cos,
                c.freq_shift as f32,
                add.linear_1.weight.dims()[0],
            )?;
            emb = emb + add.forward(features);
        }
        // Every resnet applies SiLU to the embedding before its projection: do it once.
        let temb_act = silu(emb);

        // 2. pre-process
        let mut x = self.conv_in.forward(sample);

        // 3. down
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb_act, &encoder_hidden_states, &mut skips);
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &temb_act, &encoder_hidden_states);
        }

        // 5. up
        for block in &self.up_blocks {
            x = block.forward(x, &temb_act, &encoder_hidden_states, &mut skips);
        }

        // 6. post-process
        Ok(self.conv_out.forward(silu(self.conv_norm_out.forward(x))))
    }
}
