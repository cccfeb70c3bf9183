//! `T5EncoderModel` (transformers `modeling_t5.py`: `T5EncoderModel` → `T5Stack`), as FLUX and
//! SD3 use it: token embedding (`shared`), blocks sharing the relative position bias computed
//! by block 0, additive padding mask, final `T5LayerNorm`; returns `last_hidden_state`.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor};

use dreamforge_core::{Error, Result, WeightLoader, WeightSet};

use super::block::T5Block;
use super::config::T5Config;
use crate::layers::RmsNorm;

/// Key transformers saves the (tied) embedding under.
pub const SHARED_KEY: &str = "shared.weight";
/// Key some checkpoints use instead of, or as well as, [`SHARED_KEY`].
pub const EMBED_TOKENS_KEY: &str = "encoder.embed_tokens.weight";

/// The additive bias a padded key gets, as the reference (`torch.finfo(float32).min`).
const MASK_VALUE: f32 = f32::MIN;

#[derive(Module, Debug)]
pub struct T5Encoder {
    /// Token embedding `[vocab_size, d_model]`.
    pub shared: Param<Tensor<2>>,
    /// `encoder.block.N`
    pub block: Vec<T5Block>,
    /// `encoder.final_layer_norm`
    pub final_layer_norm: RmsNorm,
    #[module(skip)]
    pub config: T5Config,
}

impl T5Encoder {
    /// Loads from a transformers folder (`config.json` + `model.safetensors` or a sharded
    /// `model.safetensors.index.json`), or from a weights file / index with `config.json` beside it.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let cfg_path = if path.is_dir() {
            path.join("config.json")
        } else {
            path.parent().unwrap_or(Path::new(".")).join("config.json")
        };
        if !cfg_path.exists() {
            return Err(Error::config(
                &cfg_path,
                "missing: a T5 encoder needs its transformers config.json (T5Config)",
            ));
        }
        let config = T5Config::from_file(&cfg_path)?;
        let set = WeightSet::open(path)?;
        Self::from_weights(&set, config, device)
    }

    /// Builds the model from an opened weight set. Every key must be consumed, except
    /// `decoder.*` keys of a full T5 checkpoint, which `T5EncoderModel` ignores too.
    pub fn from_weights(set: &WeightSet, config: T5Config, device: &Device) -> Result<Self> {
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let w = WeightLoader::new(set, device);
        let c = &config;
        let shared = load_embedding(&w, c.vocab_size, c.d_model)?;
        let block = (0..c.num_layers)
            .map(|i| T5Block::load(&w, &format!("encoder.block.{i}"), c, i == 0))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = RmsNorm::load(
            &w,
            "encoder.final_layer_norm",
            c.d_model,
            c.layer_norm_epsilon,
        )?;
        let unused: Vec<String> = w
            .unused()
            .into_iter()
            .filter(|k| !k.starts_with("decoder."))
            .collect();
        if !unused.is_empty() {
            return Err(Error::UnusedKeys {
                path: set.origin().to_path_buf(),
                count: unused.len(),
                examples: unused.into_iter().take(5).collect(),
            });
        }
        Ok(Self {
            shared,
            block,
            final_layer_norm,
            config,
        })
    }

    /// The encoder's `last_hidden_state`. `attention_mask` is 1 for tokens to keep and 0 for
    /// padding (any non-zero keeps, as upstream's `.bool()`); padded keys get a large negative
    /// additive bias. Ids must lie in `0..vocab_size` (see [`Self::try_forward`] for a checked call).
    ///
    /// # Shapes
    /// `input_ids: [B, T]`, `attention_mask: [B, T]` → `[B, T, d_model]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let device = input_ids.device();
        let d = self.config.d_model;
        let h = self.config.num_heads;
        let mut x = self
            .shared
            .val()
            .select(0, input_ids.reshape([b * t]))
            .reshape([b, t, d]);
        // Block 0 owns the relative position bias; all blocks share it.
        let position_bias = self
            .block
            .first()
            .and_then(|blk| {
                blk.self_attention
                    .self_attention
                    .compute_bias(t, t, &device)
            })
            .unwrap_or_else(|| Tensor::zeros([1, h, t, t], &device));
        let mut bias = position_bias.expand([b, h, t, t]);
        if let Some(mask) = attention_mask {
            let padded = mask
                .equal_elem(0)
                .reshape([b, 1, 1, t])
                .expand([b, h, t, t]);
            bias = bias.mask_fill(padded, MASK_VALUE);
        }
        for blk in &self.block {
            x = blk.forward(x, bias.clone());
        }
        self.final_layer_norm.forward(x)
    }

    /// [`Self::forward`] after checking the inputs: non-empty, mask shaped like the ids, ids in
    /// `0..vocab_size` (an out-of-range id is an error here, not a device fault).
    pub fn try_forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Result<Tensor<3>> {
        let [b, t] = input_ids.dims();
        if b == 0 || t == 0 {
            return Err(Error::InvalidInput(format!(
                "T5 input_ids has an empty shape [{b}, {t}]"
            )));
        }
        if let Some(m) = &attention_mask
            && m.dims() != [b, t]
        {
            return Err(Error::InvalidInput(format!(
                "T5 attention_mask has shape {:?}, input_ids has [{b}, {t}]",
                m.dims()
            )));
        }
        let ids = input_ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| Error::InvalidInput(format!("T5 input_ids: {e:?}")))?;
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::InvalidInput(format!(
                "T5 token id {bad} is outside the vocabulary (0..{vocab})"
            )));
        }
        Ok(self.forward(input_ids, attention_mask))
    }
}

/// The token embedding under `shared.weight` or `encoder.embed_tokens.weight`. When both are
/// present they are tied upstream (`shared` wins, as transformers ties `embed_tokens` to it);
/// the other is checked for shape and consumed.
fn load_embedding(w: &WeightLoader, vocab: usize, d_model: usize) -> Result<Param<Tensor<2>>> {
    match (w.has(SHARED_KEY), w.has(EMBED_TOKENS_KEY)) {
        (true, also) => {
            let p = w.param(SHARED_KEY, [vocab, d_model])?;
            if also {
                w.host(EMBED_TOKENS_KEY, &[vocab, d_model])?;
            }
            Ok(p)
        }
        (false, true) => w.param(EMBED_TOKENS_KEY, [vocab, d_model]),
        (false, false) => Err(Error::MissingKey {
            path: w.set().origin().to_path_buf(),
            key: SHARED_KEY.into(),
            hint: Some(format!("nor `{EMBED_TOKENS_KEY}`: the T5 token embedding")),
        }),
    }
}
