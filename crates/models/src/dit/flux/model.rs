//! `FluxTransformer2DModel` (diffusers `transformer_flux.py`; BFL `flux/model.py`): embedders,
//! double-stream blocks, single-stream blocks, continuous AdaLN output.

use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use dreamforge_core::{Error, Result, WeightLoader, WeightSet};

use super::config::{FluxConfig, FluxKeyFormat, infer_config};
use super::double_block::{DoubleBlock, modulate};
use super::embeddings::TimeTextEmbed;
use super::keys::bfl_key_map;
use super::rope::{Rope, flux_rope};
use super::single_block::SingleBlock;

const ROPE_THETA: f64 = 10000.0;

#[derive(Module, Debug)]
pub struct FluxTransformer {
    pub x_embedder: Linear,
    pub context_embedder: Linear,
    pub time_text_embed: TimeTextEmbed,
    pub transformer_blocks: Vec<DoubleBlock>,
    pub single_transformer_blocks: Vec<SingleBlock>,
    pub norm_out: Linear,
    pub proj_out: Linear,
    #[module(skip)]
    pub config: FluxConfig,
}

/// What one forward call takes, named as the diffusers forward names its arguments.
#[derive(Debug, Clone)]
pub struct FluxInputs {
    /// `[B, L, in_channels]` packed latents.
    pub hidden_states: Tensor<3>,
    /// `[B, T, joint_attention_dim]` T5 states.
    pub encoder_hidden_states: Tensor<3>,
    /// `[B, pooled_projection_dim]` CLIP pooled output.
    pub pooled_projections: Tensor<2>,
    /// `[B]` σ in 0..1 (the model multiplies by 1000).
    pub timestep: Vec<f32>,
    /// `[B]` guidance scale (the model multiplies by 1000); required when `guidance_embeds`.
    pub guidance: Option<Vec<f32>>,
}

impl FluxTransformer {
    /// Loads from a diffusers folder (`config.json` + weights), a diffusers file, or a BFL
    /// single file. `config` overrides / supplies the config (required where weights cannot tell).
    pub fn load(path: &Path, config: Option<FluxConfig>, device: &Device) -> Result<Self> {
        let set = WeightSet::open(path)?;
        let format = FluxKeyFormat::detect(&set).ok_or_else(|| {
            Error::format(
                path,
                "not a FLUX transformer checkpoint (neither diffusers nor BFL keys found)",
            )
        })?;
        let config = match config {
            Some(c) => c,
            None => {
                let cfg_path = path.join("config.json");
                if path.is_dir() && cfg_path.exists() {
                    FluxConfig::from_file(&cfg_path)?
                } else {
                    infer_config(&set, &format, None)?
                }
            }
        };
        Self::from_weights(&set, &format, config, device)
    }

    pub fn from_weights(
        set: &WeightSet,
        format: &FluxKeyFormat,
        config: FluxConfig,
        device: &Device,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let mut w = WeightLoader::new(set, device).with_prefix(format.prefix());
        if matches!(format, FluxKeyFormat::Bfl { .. }) {
            w = w.with_key_map(bfl_key_map(&config));
        }
        let c = &config;
        let dim = c.inner_dim();
        let heads = c.num_attention_heads;
        let mlp = c.mlp_hidden_dim();
        let model = Self {
            x_embedder: w.linear("x_embedder", c.in_channels, dim, true)?,
            context_embedder: w.linear("context_embedder", c.joint_attention_dim, dim, true)?,
            time_text_embed: TimeTextEmbed::load(
                &w,
                dim,
                c.pooled_projection_dim,
                c.guidance_embeds,
            )?,
            transformer_blocks: (0..c.num_layers)
                .map(|i| DoubleBlock::load(&w, &format!("transformer_blocks.{i}"), dim, heads, mlp))
                .collect::<Result<_>>()?,
            single_transformer_blocks: (0..c.num_single_layers)
                .map(|i| {
                    SingleBlock::load(
                        &w,
                        &format!("single_transformer_blocks.{i}"),
                        dim,
                        heads,
                        mlp,
                    )
                })
                .collect::<Result<_>>()?,
            norm_out: w.linear("norm_out.linear", dim, 2 * dim, true)?,
            proj_out: w.linear(
                "proj_out",
                dim,
                c.patch_size * c.patch_size * c.out_channels(),
                true,
            )?,
            config,
        };
        w.finish()?;
        Ok(model)
    }

    /// RoPE tables for `cat(txt_ids, img_ids)` (`[T, 3]` and `[L, 3]`, row-major).
    pub fn rope(&self, txt_ids: &[f32], img_ids: &[f32], device: &Device) -> Rope {
        let n = self.config.axes_dims_rope.len();
        let ids: Vec<f32> = txt_ids.iter().chain(img_ids).copied().collect();
        flux_rope(&ids, n, &self.config.axes_dims_rope, ROPE_THETA, device)
    }

    /// The denoiser forward: the velocity prediction for packed latents.
    ///
    /// # Shapes
    /// see [`FluxInputs`]; rope over `T + L` → `[B, L, out_channels]`
    pub fn forward(&self, inputs: FluxInputs, rope: &Rope) -> Result<Tensor<3>> {
        let FluxInputs {
            hidden_states,
            encoder_hidden_states,
            pooled_projections,
            timestep,
            guidance,
        } = inputs;
        let [b, l, _] = hidden_states.dims();
        let t_len = encoder_hidden_states.dims()[1];
        if timestep.len() != b {
            return Err(Error::InvalidInput(format!(
                "{} timesteps for batch {b}",
                timestep.len()
            )));
        }
        let t: Vec<f32> = timestep.iter().map(|t| t * 1000.0).collect();
        let g: Option<Vec<f32>> = match (&guidance, self.config.guidance_embeds) {
            (Some(g), true) if g.len() == b => Some(g.iter().map(|g| g * 1000.0).collect()),
            (None, true) => {
                return Err(Error::InvalidInput(
                    "this FLUX model is guidance-distilled: a guidance value is required".into(),
                ));
            }
            (Some(g), true) => {
                return Err(Error::InvalidInput(format!(
                    "{} guidance values for batch {b}",
                    g.len()
                )));
            }
            (_, false) => None,
        };
        let temb = self
            .time_text_embed
            .forward(&t, g.as_deref(), pooled_projections);
        let mut img = self.x_embedder.forward(hidden_states);
        let mut txt = self.context_embedder.forward(encoder_hidden_states);
        for block in &self.transformer_blocks {
            (img, txt) = block.forward(img, txt, temb.clone(), rope);
        }
        let mut x = Tensor::cat(vec![txt, img], 1);
        for block in &self.single_transformer_blocks {
            x = block.forward(x, temb.clone(), rope);
        }
        let dim = self.config.inner_dim();
        let img = x.slice([0..b, t_len..t_len + l, 0..dim]);
        let m = self.norm_out.forward(silu(temb));
        let [b_, d2] = m.dims();
        let parts = m.reshape([b_, 1, d2]).chunk(2, 2); // scale, shift
        let img = modulate(img, parts[1].clone(), parts[0].clone());
        Ok(self.proj_out.forward(img))
    }
}
