//! transformers `CLIPTextModel` / `CLIPTextModelWithProjection` (`modeling_clip.py`):
//! embeddings → causal encoder layers → `final_layer_norm`, eos pooling, and the bias-free
//! `text_projection` when the checkpoint has one. One struct serves both variants.
//!
//! Key layouts: hub checkpoints (transformers 4) prefix the tower with `text_model.`;
//! transformers 5 saves `CLIPTextModel` without it. Both are accepted, as is an extra
//! `text_model.embeddings.position_ids` buffer. Every other key must be consumed.

use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

use dreamforge_core::export::ParamKeys;
use dreamforge_core::init::{InitKind, Initializer};
use dreamforge_core::{Error, Result, WeightLoader, WeightSet};

use super::config::ClipTextConfig;
use super::embeddings::ClipTextEmbeddings;
use super::encoder_layer::{ClipEncoderLayer, ClipLayerNorm, LayerDims};

/// The tower prefix of hub checkpoints.
pub const TEXT_MODEL_PREFIX: &str = "text_model.";

#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub embeddings: ClipTextEmbeddings,
    pub layers: Vec<ClipEncoderLayer>,
    pub final_layer_norm: ClipLayerNorm,
    /// `text_projection` (`[hidden] → [projection_dim]`, no bias) of the with-projection variant.
    pub text_projection: Option<Linear>,
    #[module(skip)]
    pub config: ClipTextConfig,
    /// Every parameter's transformers name (`text_model.encoder.layers.0.self_attn.q_proj.weight`,
    /// whatever the file's layout or prefix) by module path, with its storage orientation: for
    /// matching adapters and exporting in transformers layout.
    #[module(skip)]
    pub names: ParamKeys,
}

/// What one forward pass yields (transformers output field names).
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[B, T, hidden]` after `final_layer_norm`.
    pub last_hidden_state: Tensor<3>,
    /// `[B, hidden]` `last_hidden_state` at the eos position of each row.
    pub pooler_output: Tensor<2>,
    /// `[B, T, hidden]` `hidden_states[-2]`: the input of the last layer, not normed (what SD
    /// "clip skip 2" and SDXL use).
    pub penultimate_hidden_state: Tensor<3>,
    /// `[B, projection_dim]` `text_projection(pooler_output)`, when the model has a projection.
    pub text_embeds: Option<Tensor<2>>,
}

impl ClipTextModel {
    /// Loads a transformers folder (`config.json` + `model.safetensors` or an index).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.is_dir() {
            return Err(Error::config(
                path,
                "a CLIP text encoder file needs its config: pass the folder holding config.json, or use ClipTextModel::load_file",
            ));
        }
        let cfg_path = path.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::io(
                &cfg_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no config.json in the CLIP text encoder folder",
                ),
            ));
        }
        let config = ClipTextConfig::from_file(&cfg_path)?;
        let set = WeightSet::open(path)?;
        Self::from_weights(&set, "", config, device)
    }

    /// Loads a weights file (or folder, or index) with an explicit config.
    pub fn load_file(path: &Path, config: ClipTextConfig, device: &Device) -> Result<Self> {
        let set = WeightSet::open(path)?;
        Self::from_weights(&set, "", config, device)
    }

    /// A fresh encoder for training from scratch, in transformers layout (`text_model.*`), with
    /// the checkpoint keys to export it: linear weights `U(±1/√fan_in)`, biases 0, LayerNorms
    /// 1 / 0, token embeddings `N(0, 0.02²)` and position embeddings `N(0, 0.01²)` (as
    /// `CLIPPreTrainedModel._init_weights`).
    pub fn init(config: ClipTextConfig, seed: u64, device: &Device) -> Result<(Self, ParamKeys)> {
        let set = WeightSet::empty("<fresh CLIP text encoder>");
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let projection_dim = config
            .projection_dim
            .filter(|_| config.declares_projection());
        let w = WeightLoader::initializing(
            &set,
            Initializer::new(seed).with_rule(|k, _| {
                if k.ends_with("token_embedding.weight") {
                    Some(InitKind::Normal(0.02))
                } else if k.ends_with("position_embedding.weight") {
                    Some(InitKind::Normal(0.01))
                } else {
                    None
                }
            }),
            device,
        );
        let model = Self::from_loader(&w, TEXT_MODEL_PREFIX, config, projection_dim)?
            .with_names(&w, TEXT_MODEL_PREFIX);
        let keys = ParamKeys::of(&model, &w.records());
        Ok((model, keys))
    }

    /// Builds the model from `set`, where every key of the model sits under `root` (e.g.
    /// `cond_stage_model.transformer.` in an SD1 single file, `""` for a component file); the
    /// `text_model.` tower prefix under `root` is detected. Keys under `root` that the model
    /// does not use are an error (except the `position_ids` buffer).
    pub fn from_weights(
        set: &WeightSet,
        root: &str,
        config: ClipTextConfig,
        device: &Device,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let w = WeightLoader::new(set, device).with_prefix(root);
        let tower = if w.has(&format!(
            "{TEXT_MODEL_PREFIX}embeddings.token_embedding.weight"
        )) {
            TEXT_MODEL_PREFIX
        } else if w.has("embeddings.token_embedding.weight") {
            ""
        } else {
            return Err(Error::MissingKey {
                path: set.origin().to_path_buf(),
                key: format!("{root}{TEXT_MODEL_PREFIX}embeddings.token_embedding.weight"),
                hint: Some(
                    "not a CLIP text encoder checkpoint (also tried without `text_model.`)".into(),
                ),
            });
        };
        let has_projection = w.has("text_projection.weight") || config.declares_projection();
        let projection_dim = if has_projection {
            match (
                config.projection_dim,
                set.shape(&format!("{root}text_projection.weight")),
            ) {
                (Some(p), _) => Some(p),
                (None, Some(s)) if s.len() == 2 => Some(s[0]),
                _ => {
                    return Err(Error::config(
                        set.origin(),
                        "the model has a text projection but the config has no projection_dim",
                    ));
                }
            }
        } else {
            None
        };
        let model = Self::from_loader(&w, tower, config, projection_dim)?.with_names(&w, tower);
        let unused: Vec<String> = w
            .unused()
            .into_iter()
            .filter(|k| !k.ends_with("embeddings.position_ids"))
            .collect();
        if !unused.is_empty() {
            return Err(Error::UnusedKeys {
                path: set.origin().to_path_buf(),
                count: unused.len(),
                examples: unused.into_iter().take(5).collect(),
            });
        }
        Ok(model)
    }

    /// Builds the model from a prepared loader whose parameter names (after its prefix and key
    /// map) are transformers names under `tower` (`"text_model."` or `""`), with a bias-free
    /// `text_projection` to `projection_dim` when given. Consumed keys are recorded in `w`; the
    /// caller decides which leftovers are errors (see [`Self::from_weights`] and
    /// [`Self::from_open_clip`]).
    pub fn from_loader(
        w: &WeightLoader,
        tower: &str,
        config: ClipTextConfig,
        projection_dim: Option<usize>,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|r| Error::config(w.set().origin(), r))?;
        let c = &config;
        let dim = c.hidden_size;
        let dims = LayerDims {
            dim,
            heads: c.num_attention_heads,
            inner: c.intermediate_size,
            eps: c.layer_norm_eps,
            act: c.activation(),
        };
        let text_projection = match projection_dim {
            Some(p) => Some(w.linear("text_projection", dim, p, false)?),
            None => None,
        };
        Ok(Self {
            embeddings: ClipTextEmbeddings::load(
                w,
                &format!("{tower}embeddings"),
                c.vocab_size,
                c.max_position_embeddings,
                dim,
            )?,
            layers: (0..c.num_hidden_layers)
                .map(|i| ClipEncoderLayer::load(w, &format!("{tower}encoder.layers.{i}"), dims))
                .collect::<Result<_>>()?,
            final_layer_norm: ClipLayerNorm::load(
                w,
                &format!("{tower}final_layer_norm"),
                dim,
                c.layer_norm_eps,
            )?,
            text_projection,
            config,
            names: ParamKeys::default(),
        })
    }

    /// Records the canonical parameter names from the loader that built `self` with `tower`
    /// (`""` gets the `text_model.` prefix transformers uses).
    pub fn with_names(mut self, w: &WeightLoader, tower: &str) -> Self {
        let names: Vec<_> = w
            .canonical_keys()
            .into_iter()
            .map(|(id, mut k)| {
                if tower.is_empty() && !k.key.starts_with("text_projection") {
                    k.key = format!("{TEXT_MODEL_PREFIX}{}", k.key);
                }
                (id, k)
            })
            .collect();
        self.names = ParamKeys::of(&self, &names);
        self
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The full forward pass. Errors (instead of panicking) on an empty batch, a sequence
    /// longer than `max_position_embeddings`, or ids outside the vocabulary.
    ///
    /// # Shapes
    /// `input_ids: [B, T]` → see [`ClipTextOutput`]
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Result<ClipTextOutput> {
        let [b, t] = input_ids.dims();
        let c = &self.config;
        if b == 0 || t == 0 {
            return Err(Error::InvalidInput(format!(
                "CLIP text encoder: empty input_ids of shape [{b}, {t}]"
            )));
        }
        if t > c.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "CLIP text encoder: sequence length {t} exceeds max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let ids: Vec<i64> = input_ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| {
                Error::InvalidInput(format!("CLIP text encoder: cannot read input_ids: {e:?}"))
            })?;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= c.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "CLIP text encoder: token id {bad} is outside the vocabulary (vocab_size {})",
                c.vocab_size
            )));
        }
        let pool_at = pool_positions(&ids, b, t, c.eos_token_id, c.legacy_pooling());

        let mut h = self.embeddings.forward(input_ids);
        let mut penultimate = h.clone();
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == n {
                penultimate = h.clone();
            }
            h = layer.forward(h);
        }
        let last = self.final_layer_norm.forward(h);
        let dim = c.hidden_size;
        let device = last.device();
        let idx: Vec<i64> = pool_at.iter().map(|&p| p as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [b]), &device)
            .reshape([b, 1, 1])
            .expand([b, 1, dim]);
        let pooled = last.clone().gather(1, idx).reshape([b, dim]);
        let text_embeds = self
            .text_projection
            .as_ref()
            .map(|p| p.forward(pooled.clone()));
        Ok(ClipTextOutput {
            last_hidden_state: last,
            pooler_output: pooled,
            penultimate_hidden_state: penultimate,
            text_embeds,
        })
    }
}

/// Per row: `argmax(ids)` (first maximum) for legacy configs, else the first position holding
/// `eos` (position 0 when there is none, as `argmax` of an all-false row gives).
pub fn pool_positions(ids: &[i64], b: usize, t: usize, eos: i64, legacy: bool) -> Vec<usize> {
    (0..b)
        .map(|r| {
            let row = &ids[r * t..(r + 1) * t];
            if legacy {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                best
            } else {
                row.iter().position(|&v| v == eos).unwrap_or(0)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_rules() {
        // legacy: first maximum; new: first eos even when padding repeats it.
        let ids = [49406, 320, 49407, 49407, 49406, 5, 49407, 0];
        assert_eq!(pool_positions(&ids, 2, 4, 2, true), vec![2, 2]);
        assert_eq!(pool_positions(&ids, 2, 4, 49407, false), vec![2, 2]);
        assert_eq!(pool_positions(&[1, 9, 3, 9], 1, 4, 3, false), vec![2]);
        assert_eq!(pool_positions(&[1, 9, 3, 9], 1, 4, 3, true), vec![1]);
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity")
            .join(name)
    }

    #[test]
    fn strict_keys_and_bad_input() {
        let dir = fixture("clip_text_model_tiny");
        let device = Default::default();
        let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
        // One layer fewer than the file holds: the second layer's keys are unused.
        let short = ClipTextConfig {
            num_hidden_layers: 1,
            ..cfg.clone()
        };
        let err = ClipTextModel::load_file(&dir, short, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unused") && err.contains("text_model.encoder.layers.1."),
            "{err}"
        );
        // A wider model than the file: a shape mismatch naming the key.
        let wide = ClipTextConfig {
            intermediate_size: 50,
            ..cfg
        };
        let err = ClipTextModel::load_file(&dir, wide, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fc1.weight"), "{err}");

        let m = ClipTextModel::load(&dir, &device).unwrap();
        assert!(!m.has_projection());
        let ids = |v: Vec<i64>, t: usize| {
            Tensor::<2, Int>::from_data(TensorData::new(v, [1, t]), &device)
        };
        let err = m.forward(ids(vec![0, 5000], 2)).unwrap_err().to_string();
        assert!(err.contains("5000"), "{err}");
        let err = m.forward(ids(vec![1; 78], 78)).unwrap_err().to_string();
        assert!(err.contains("max_position_embeddings"), "{err}");
        let out = m.forward(ids(vec![998, 5, 999, 999], 4)).unwrap();
        assert_eq!(out.pooler_output.dims(), [1, 32]);
        assert!(out.text_embeds.is_none());
    }

    #[test]
    fn folder_without_config_is_a_clear_error() {
        let dir =
            std::env::temp_dir().join(format!("dreamforge-clip-noconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = ClipTextModel::load(&dir, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
