//! `FluxTransformer2DModel` (diffusers `transformer_flux.py`; BFL `flux/model.py`): embedders,
//! double-stream blocks, single-stream blocks, continuous AdaLN output.

use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;

use crate::layers::linear_rows;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use dreamforge_core::export::ParamKeys;
use dreamforge_core::init::{InitKind, Initializer};
use dreamforge_core::{Error, Result, WeightLoader, WeightSet};

use super::config::{FluxConfig, FluxKeyFormat, infer_config};
use super::double_block::{DoubleBlock, modulate};
use super::embeddings::TimeTextEmbed;
use super::keys::bfl_key_map;
use super::replace::TokenReplace;
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
        Ok(Self::load_named(path, config, device)?.0)
    }

    /// [`Self::load`] with the diffusers names of the parameters (see
    /// [`Self::from_weights_named`]).
    pub fn load_named(
        path: &Path,
        config: Option<FluxConfig>,
        device: &Device,
    ) -> Result<(Self, ParamKeys)> {
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
        Self::from_weights_named(&set, &format, config, device)
    }

    pub fn from_weights(
        set: &WeightSet,
        format: &FluxKeyFormat,
        config: FluxConfig,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self::from_weights_named(set, format, config, device)?.0)
    }

    /// [`Self::from_weights`], also returning every parameter's diffusers name by module path
    /// (whatever the file's layout), for matching adapters and exporting in diffusers layout.
    pub fn from_weights_named(
        set: &WeightSet,
        format: &FluxKeyFormat,
        config: FluxConfig,
        device: &Device,
    ) -> Result<(Self, ParamKeys)> {
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let mut w = WeightLoader::new(set, device).with_prefix(format.prefix());
        if matches!(format, FluxKeyFormat::Bfl { .. }) {
            w = w.with_key_map(bfl_key_map(&config));
        }
        let model = Self::from_loader(&w, config)?;
        // Canonical (diffusers) names with storage orientation: usable for matching adapters
        // and for exporting in diffusers layout (`lora merge`), whatever the file's layout.
        let names = ParamKeys::of(&model, &w.canonical_keys());
        w.finish()?;
        Ok((model, names))
    }

    /// A fresh model for training from scratch, with the checkpoint keys to export it in
    /// diffusers layout. Linear weights start `U(±1/√fan_in)`, biases 0, and every modulation
    /// (`norm1*.linear`, single-block `norm.linear`, `norm_out.linear`) and `proj_out` start at
    /// zero — DiT's adaLN-Zero, so each block starts as the identity and the output as 0.
    pub fn init(config: FluxConfig, seed: u64, device: &Device) -> Result<(Self, ParamKeys)> {
        let set = WeightSet::empty("<fresh FLUX transformer>");
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let w =
            WeightLoader::initializing(&set, Initializer::new(seed).with_rule(adaln_zero), device);
        let model = Self::from_loader(&w, config)?;
        let keys = ParamKeys::of(&model, &w.records());
        Ok((model, keys))
    }

    fn from_loader(w: &WeightLoader, config: FluxConfig) -> Result<Self> {
        let c = &config;
        let dim = c.inner_dim();
        let heads = c.num_attention_heads;
        let mlp = c.mlp_hidden_dim();
        Ok(Self {
            x_embedder: w.linear("x_embedder", c.in_channels, dim, true)?,
            context_embedder: w.linear("context_embedder", c.joint_attention_dim, dim, true)?,
            time_text_embed: TimeTextEmbed::load(
                w,
                dim,
                c.pooled_projection_dim,
                c.guidance_embeds,
            )?,
            transformer_blocks: (0..c.num_layers)
                .map(|i| DoubleBlock::load(w, &format!("transformer_blocks.{i}"), dim, heads, mlp))
                .collect::<Result<_>>()?,
            single_transformer_blocks: (0..c.num_single_layers)
                .map(|i| {
                    SingleBlock::load(
                        w,
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
        })
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
        self.forward_personalized(inputs, rope, None, None)
    }

    /// [`Self::forward`] through the transformer's one hook point (Personalize Anything,
    /// [`super::replace`]): in every double and single block, `replace` swaps the target row's
    /// attention-input tokens for its sources' tokens, and `share` lets the target row also
    /// attend to its sources' paired tokens ([`TokenReplace::shared_attention`]). Their token
    /// count must be the image sequence length.
    ///
    /// # Shapes
    /// as [`Self::forward`]
    pub fn forward_personalized(
        &self,
        inputs: FluxInputs,
        rope: &Rope,
        replace: Option<&TokenReplace>,
        share: Option<&TokenReplace>,
    ) -> Result<Tensor<3>> {
        let FluxInputs {
            hidden_states,
            encoder_hidden_states,
            pooled_projections,
            timestep,
            guidance,
        } = inputs;
        let [b, l, _] = hidden_states.dims();
        let t_len = encoder_hidden_states.dims()[1];
        // Half-precision compute (mixed-precision training): tables follow the input dtype.
        let rope = &rope.cast(hidden_states.dtype().into());
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
        let mut img = linear_rows(&self.x_embedder, hidden_states);
        let mut txt = linear_rows(&self.context_embedder, encoder_hidden_states);
        for r in replace.iter().chain(share.iter()) {
            let bad_row = std::iter::once(r.target)
                .chain(r.sources.iter().map(|s| s.row))
                .find(|&row| row >= b);
            if let Some(row) = bad_row {
                return Err(Error::InvalidInput(format!(
                    "token replacement names batch row {row}, the batch has {b}"
                )));
            }
            if r.sources.iter().any(|s| s.index.dims()[0] != l) {
                return Err(Error::InvalidInput(format!(
                    "token replacement is laid out for another image size (the sequence has {l} image tokens)"
                )));
            }
        }
        for block in &self.transformer_blocks {
            (img, txt) = block.forward_replacing(img, txt, temb.clone(), rope, replace, share);
        }
        let mut x = Tensor::cat(vec![txt, img], 1);
        for block in &self.single_transformer_blocks {
            x = block.forward_replacing(
                x,
                temb.clone(),
                rope,
                replace.map(|r| (r, t_len)),
                share.map(|r| (r, t_len)),
            );
        }
        let dim = self.config.inner_dim();
        let img = x.slice([0..b, t_len..t_len + l, 0..dim]);
        let m = self.norm_out.forward(silu(temb));
        let [b_, d2] = m.dims();
        let parts = m.reshape([b_, 1, d2]).chunk(2, 2); // scale, shift
        let img = modulate(img, parts[1].clone(), parts[0].clone());
        Ok(linear_rows(&self.proj_out, img))
    }
}

/// adaLN-Zero: modulation projections and the output projection start at zero.
fn adaln_zero(key: &str, _shape: &[usize]) -> Option<InitKind> {
    let zero = key.starts_with("proj_out.")
        || key.starts_with("norm_out.linear.")
        || key.contains(".norm1.linear.")
        || key.contains(".norm1_context.linear.")
        || (key.starts_with("single_transformer_blocks.") && key.contains(".norm.linear."));
    zero.then_some(InitKind::Zeros)
}

#[cfg(test)]
mod init_tests {
    use super::*;
    use crate::test_util::write_tensors;
    use crate::text::clip::{ClipTextConfig, ClipTextModel};
    use burn::tensor::{Int, TensorData};
    use dreamforge_core::to_host;

    fn tiny() -> FluxConfig {
        serde_json::from_str(
            r#"{"in_channels": 12, "num_layers": 1, "num_single_layers": 2,
                "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 24,
                "pooled_projection_dim": 16, "axes_dims_rope": [2, 2, 4]}"#,
        )
        .unwrap()
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dreamforge-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Inside the transformer (every double and single block): the generation row's attention
    /// input holds exactly the reference row's tokens at the destinations and exactly its own
    /// elsewhere; the reference row is untouched; no replacement (or an empty one) is the
    /// plain forward, bit for bit.
    #[test]
    fn token_replacement_copies_reference_tokens_exactly_in_every_block() {
        use super::super::replace::{ReplaceProbe, TokenReplace};
        let d = Device::flex();
        let (m, _) = FluxTransformer::init(tiny(), 5, &d).unwrap();
        let (l, t) = (16, 3);
        let vals =
            |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
        let inputs = || FluxInputs {
            hidden_states: Tensor::from_data(
                TensorData::new(vals(2 * l * 12, 0.37), [2, l, 12]),
                &d,
            ),
            encoder_hidden_states: Tensor::from_data(
                TensorData::new(vals(2 * t * 24, 0.11), [2, t, 24]),
                &d,
            ),
            pooled_projections: Tensor::from_data(TensorData::new(vals(2 * 16, 0.7), [2, 16]), &d),
            timestep: vec![0.7, 0.7],
            guidance: None,
        };
        let mut ids = vec![0.0; t * 3];
        for i in 0..4 {
            for j in 0..4 {
                ids.extend([0.0, i as f32, j as f32]);
            }
        }
        let rope = flux_rope(&ids, 3, &[2, 2, 4], 10000.0, &d);
        let pairs = vec![(0, 5), (1, 6), (4, 9), (15, 0)];
        let probe: ReplaceProbe = Default::default();
        let r = TokenReplace::new(1, &[0], std::slice::from_ref(&pairs), l, &d)
            .with_probe(probe.clone());
        m.forward_personalized(inputs(), &rope, Some(&r), None)
            .unwrap();
        let recs = probe.lock().unwrap();
        assert_eq!(recs.len(), 1 + 2, "one call per double and single block");
        for (x, y) in recs.iter() {
            let dim = x.shape[2];
            let tok = |h: &dreamforge_core::HostTensor, row: usize, i: usize| {
                h.data[(row * l + i) * dim..(row * l + i + 1) * dim].to_vec()
            };
            let same = |a: Vec<f32>, b: Vec<f32>| {
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits())
            };
            for i in 0..l {
                assert!(
                    same(tok(y, 0, i), tok(x, 0, i)),
                    "reference row changed at {i}"
                );
                let want = match pairs.iter().find(|(_, dst)| *dst == i) {
                    Some(&(src, _)) => tok(x, 0, src),
                    None => tok(x, 1, i),
                };
                assert!(same(tok(y, 1, i), want), "generation token {i}");
            }
        }
        assert!(
            recs.iter().any(|(x, y)| x.data != y.data),
            "the generation row's attention input changed"
        );
        drop(recs);
        // An empty replacement leaves every attention input as it was, bit for bit.
        let probe: ReplaceProbe = Default::default();
        let empty = TokenReplace::new(1, &[0], &[vec![]], l, &d).with_probe(probe.clone());
        m.forward_personalized(inputs(), &rope, Some(&empty), None)
            .unwrap();
        for (x, y) in probe.lock().unwrap().iter() {
            assert!(
                x.data
                    .iter()
                    .zip(&y.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
    }

    #[test]
    fn a_fresh_flux_model_is_adaln_zero_and_round_trips_through_diffusers_layout() {
        let d = Device::flex();
        let (m, keys) = FluxTransformer::init(tiny(), 5, &d).unwrap();
        let mut t = keys.export(&m).unwrap();
        let get = |t: &[(String, dreamforge_core::HostTensor)], k: &str| {
            t.iter().find(|(n, _)| n == k).unwrap().1.clone()
        };
        // diffusers layout: nn.Linear weights are [out, in]
        assert_eq!(get(&t, "x_embedder.weight").shape, vec![16, 12]);
        let b = 1.0 / 12f32.sqrt();
        let xe = get(&t, "x_embedder.weight");
        assert!(xe.data.iter().all(|v| v.abs() <= b) && xe.data.iter().any(|v| v.abs() > b / 2.0));
        for k in [
            "proj_out.weight",
            "norm_out.linear.weight",
            "transformer_blocks.0.norm1.linear.weight",
            "transformer_blocks.0.norm1_context.linear.bias",
            "single_transformer_blocks.1.norm.linear.weight",
        ] {
            assert!(get(&t, k).data.iter().all(|&v| v == 0.0), "{k} not zero");
        }
        assert!(
            get(&t, "transformer_blocks.0.attn.norm_q.weight")
                .data
                .iter()
                .all(|&v| v == 1.0)
        );
        // A zero-init model predicts exactly 0.
        let x = Tensor::<3>::ones([1, 4, 12], &d);
        let inputs = |x: Tensor<3>| FluxInputs {
            hidden_states: x,
            encoder_hidden_states: Tensor::ones([1, 3, 24], &d),
            pooled_projections: Tensor::ones([1, 16], &d),
            timestep: vec![0.5],
            guidance: None,
        };
        let rope = m.rope(
            &[0.0; 9],
            &[0., 0., 0., 0., 0., 1., 0., 1., 0., 0., 1., 1.],
            &d,
        );
        let y = to_host(m.forward(inputs(x.clone()), &rope).unwrap());
        assert!(y.data.iter().all(|&v| v == 0.0));

        // Perturb every tensor, write, load through the ordinary loader, export again: the
        // same keys and values (paths, not parameter ids, carry the mapping).
        for (i, (_, v)) in t.iter_mut().enumerate() {
            for (j, e) in v.data.iter_mut().enumerate() {
                *e += ((i * 31 + j * 7) % 13) as f32 * 0.01 - 0.06;
            }
        }
        let p = dir("flux-init").join("t.safetensors");
        write_tensors(&p, &t);
        let loaded = FluxTransformer::load(&p, Some(tiny()), &d).unwrap();
        assert_eq!(keys.export(&loaded).unwrap(), t);
        let y = to_host(loaded.forward(inputs(x), &rope).unwrap());
        assert!(y.data.iter().any(|&v| v != 0.0));
        let other = keys
            .export(&FluxTransformer::init(tiny(), 6, &d).unwrap().0)
            .unwrap();
        assert_ne!(
            get(&other, "x_embedder.weight"),
            xe,
            "another seed, other values"
        );
    }

    #[test]
    fn a_fresh_clip_encoder_round_trips_through_transformers_layout() {
        let d = Device::flex();
        let cfg: ClipTextConfig = serde_json::from_str(
            r#"{"vocab_size": 40, "hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 12,
                "eos_token_id": 39, "hidden_act": "quick_gelu"}"#,
        )
        .unwrap();
        let (m, keys) = ClipTextModel::init(cfg.clone(), 1, &d).unwrap();
        let t = keys.export(&m).unwrap();
        let emb = &t
            .iter()
            .find(|(k, _)| k == "text_model.embeddings.token_embedding.weight")
            .unwrap()
            .1;
        assert_eq!(emb.shape, vec![40, 16]);
        let std = (emb.data.iter().map(|v| v * v).sum::<f32>() / 640.0).sqrt();
        assert!((std - 0.02).abs() < 0.005, "{std}");
        let p = dir("clip-init").join("c.safetensors");
        write_tensors(&p, &t);
        let loaded = ClipTextModel::load_file(&p, cfg, &d).unwrap();
        assert_eq!(keys.export(&loaded).unwrap(), t);
        let ids =
            || Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 5, 39, 39], [1, 4]), &d);
        let a = to_host(m.forward(ids()).unwrap().pooler_output);
        let b = to_host(loaded.forward(ids()).unwrap().pooler_output);
        assert_eq!(a, b);
    }
}
