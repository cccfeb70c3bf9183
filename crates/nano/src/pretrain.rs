//! Pretraining the nano model from scratch on the procedural world: every step draws fresh
//! scenes (training (shape, colour) combinations only — the held-out ones stay unseen), their
//! exact captions (dropped to "" with `caption_dropout`, which classifier-free guidance needs),
//! pixels folded into packed tokens, flow-matching σ from the timestep sampler and Gaussian
//! noise from the noise stream; the loss is the MSE of the predicted velocity `ε − x0`. Text
//! encoder and transformer train jointly. The run config ([`PretrainConfig`]) is stored in
//! every checkpoint; the loop is the shared [`dreamforge_train::Trainer`].

use std::path::Path;

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use dreamforge_core::Result;
use dreamforge_models::dit::flux::{FluxInputs, Rope};
use dreamforge_models::text::tokenizer::TextTokenizer;
use dreamforge_models::vae::pixel::pixel_unshuffle;
use dreamforge_pipeline::latents::{image_ids, pack};
use dreamforge_train::objective::{flow_matching, mse};
use dreamforge_train::{
    LrSchedule, OptimizerConfig, Precision, Rngs, ScheduleKind, TimestepSampling,
};

use crate::caption::{caption, caption_with};
use crate::model::{NanoConfig, NanoModel};
use crate::render::images;
use crate::scene::{Scene, sample_scene};

/// Everything that defines a pretraining run (stored in its checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub model: NanoConfig,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub optimizer: OptimizerConfig,
    pub timesteps: TimestepSampling,
    /// Resolution shift applied to the drawn σ (`shift·σ / (1 + (shift − 1)·σ)`): pixel tokens
    /// are 192 values wide, so noise destroys little at mid σ and the decisions (layout,
    /// colours) happen near σ = 1, as at high resolution in SD3 / FLUX; the sampler uses the
    /// same shift (the bundle's scheduler config).
    pub timestep_shift: f64,
    /// Probability of training a sample with the empty caption.
    pub caption_dropout: f64,
    /// Probability of leaving out each optional phrase of a caption — every object's size
    /// word, and the position — so that prompts stating less ("a red circle on a blue
    /// background") are in the model's distribution (0 in the first shipped runs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attribute_dropout: f64,
    /// A nano model folder whose weights start the run instead of the seeded init (a
    /// continuation with other data settings); `None` = from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    pub init_seed: u64,
    pub data_seed: u64,
    pub noise_seed: u64,
    /// Keep an EMA of the weights with this decay and export it instead of the raw weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// Compute precision of the forward / backward passes (f32 master weights either way);
    /// bf16 / f16 pay off on GPU backends only.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

impl PretrainConfig {
    /// The shipped run's settings for `steps` steps.
    pub fn new(steps: u64) -> Self {
        Self {
            model: NanoConfig::default(),
            steps,
            batch_size: 32,
            lr: 1e-3,
            schedule: LrSchedule {
                kind: ScheduleKind::Cosine,
                warmup_steps: (steps / 50).max(1),
                stable_steps: 0,
                total_steps: steps,
                min_lr_ratio: 0.05,
            },
            optimizer: OptimizerConfig {
                weight_decay: 0.0,
                grad_clip_norm: Some(1.0),
                ..Default::default()
            },
            timesteps: TimestepSampling::default(),
            timestep_shift: 3.0,
            caption_dropout: 0.1,
            attribute_dropout: 0.0,
            init_from: None,
            init_seed: 0,
            data_seed: 1,
            noise_seed: 2,
            ema_decay: Some(0.999),
            precision: Precision::F32,
        }
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// The per-step batch builder and loss.
pub struct Pretrainer {
    pub config: PretrainConfig,
    pub tokenizer: TextTokenizer,
    rope: Rope,
    txt_len: usize,
}

impl Pretrainer {
    /// `tokenizer`: the nano tokenizer folder (written by [`crate::model::write_bundle`] or
    /// [`write_tokenizer`]).
    pub fn new(
        config: PretrainConfig,
        tokenizer: &Path,
        model: &NanoModel,
        device: &Device,
    ) -> Result<Self> {
        let tokenizer = TextTokenizer::load(tokenizer)?;
        let l = config.model.latent_side() / 2;
        let txt_len = config.model.max_tokens();
        let rope = model
            .transformer
            .rope(&vec![0.0; txt_len * 3], &image_ids(l, l), device);
        Ok(Self {
            config,
            tokenizer,
            rope,
            txt_len,
        })
    }

    /// The next batch's scenes and captions (dropout applied) from the data stream.
    pub fn draw(&self, rng: &mut impl Rng) -> (Vec<Scene>, Vec<String>) {
        let mut scenes = Vec::with_capacity(self.config.batch_size);
        let mut captions = Vec::with_capacity(self.config.batch_size);
        for _ in 0..self.config.batch_size {
            let s = sample_scene(rng.random::<u64>(), Some(false));
            let drop = rng.random::<f64>() < self.config.caption_dropout;
            let text = if drop {
                String::new()
            } else if self.config.attribute_dropout > 0.0 {
                let p = self.config.attribute_dropout;
                let sizes: Vec<bool> = s.objects.iter().map(|_| rng.random::<f64>() >= p).collect();
                caption_with(&s, &sizes, rng.random::<f64>() >= p)
            } else {
                caption(&s)
            };
            captions.push(text);
            scenes.push(s);
        }
        (scenes, captions)
    }

    /// Token ids `[B, T]` of `texts`.
    pub fn token_ids(&self, texts: &[&str], device: &Device) -> Result<Tensor<2, Int>> {
        let enc = self.tokenizer.encode_batch(texts, self.txt_len)?;
        let n = enc.ids.len();
        let flat: Vec<i64> = enc.ids.into_iter().flatten().collect();
        Ok(Tensor::from_data(
            TensorData::new(flat, [n, self.txt_len]),
            device,
        ))
    }

    /// Clean packed tokens `[B, L, 4C]` of `scenes`.
    pub fn clean_latents(&self, scenes: &[Scene], device: &Device) -> Tensor<3> {
        let m = &self.config.model;
        let x = images(scenes, m.side, device);
        let z = pixel_unshuffle(x, m.vae.patch_size);
        pack((z - m.vae.shift_factor) * m.vae.scaling_factor)
    }

    /// The next batch on `device`: scenes and captions from the data stream, then σ and noise
    /// from the noise stream (the draw order every run and checkpoint relies on).
    pub fn batch(&self, rngs: &mut Rngs, device: &Device) -> Batch {
        let (_, batch) = self
            .sharded_batch(rngs, device, 1)
            .pop()
            .expect("one shard");
        batch
    }

    /// The next batch (drawn as [`Pretrainer::batch`] draws it) split into `shards` runs of
    /// consecutive samples (sizes differing by at most one), each with its share of the batch
    /// as weight: the input of [`dreamforge_train::Trainer::run_sharded`].
    pub fn sharded_batch(
        &self,
        rngs: &mut Rngs,
        device: &Device,
        shards: usize,
    ) -> Vec<(f32, Batch)> {
        let (scenes, captions) = self.draw(&mut rngs.data);
        let b = scenes.len();
        let x0 = self.clean_latents(&scenes, device);
        let [_, l, c] = x0.dims();
        let sigmas =
            self.config
                .timesteps
                .sample_sigmas(&mut rngs.noise, b, self.config.timestep_shift);
        let noise: Vec<f32> = (0..b * l * c)
            .map(|_| StandardNormal.sample(&mut rngs.noise))
            .collect();
        let k = shards.clamp(1, b.max(1));
        let mut out = Vec::with_capacity(k);
        let mut start = 0;
        for i in 0..k {
            let n = b / k + usize::from(i < b % k);
            let texts: Vec<&str> = captions[start..start + n]
                .iter()
                .map(String::as_str)
                .collect();
            let ids = self
                .token_ids(&texts, device)
                .expect("nano captions tokenize");
            let rows = noise[start * l * c..(start + n) * l * c].to_vec();
            out.push((
                n as f32 / b as f32,
                Batch {
                    x0: if k == 1 {
                        x0.clone()
                    } else {
                        x0.clone().narrow(0, start, n)
                    },
                    ids,
                    sigmas: sigmas[start..start + n].to_vec(),
                    noise: Tensor::<3>::from_data(TensorData::new(rows, [n, l, c]), device),
                },
            ));
            start += n;
        }
        out
    }

    /// The flow-matching loss (mean over the batch) of `model` on `batch`.
    pub fn batch_loss(&self, model: &NanoModel, batch: Batch) -> Tensor<1> {
        let Batch {
            x0,
            ids,
            sigmas,
            noise,
        } = batch;
        let device = x0.device();
        let text = model
            .text_encoder
            .forward(ids)
            .expect("ids within the vocabulary");
        let s = Tensor::<1>::from_data(TensorData::new(sigmas.clone(), [sigmas.len()]), &device);
        let (x_t, target) = flow_matching(x0, noise, s);
        let x_t = x_t.cast(self.config.precision.dtype());
        let pred = model
            .transformer
            .forward(
                FluxInputs {
                    hidden_states: x_t,
                    encoder_hidden_states: text.last_hidden_state,
                    pooled_projections: text.pooler_output,
                    timestep: sigmas,
                    guidance: None,
                },
                &self.rope,
            )
            .expect("shapes fixed by the config");
        mse(pred.cast(FloatDType::F32), target)
    }

    /// One step's loss on `device` (the model's).
    pub fn loss(&self, model: &NanoModel, rngs: &mut Rngs, device: &Device) -> Tensor<1> {
        self.batch_loss(model, self.batch(rngs, device))
    }
}

/// One training batch: clean packed tokens `x0: [B, L, C]`, token ids `[B, T]`, σ per sample,
/// noise `[B, L, C]`.
#[derive(Clone, Debug)]
pub struct Batch {
    pub x0: Tensor<3>,
    pub ids: Tensor<2, Int>,
    pub sigmas: Vec<f32>,
    pub noise: Tensor<3>,
}

/// Writes the nano tokenizer (`tokenizer.json`, `tokenizer_config.json`) into `dir`.
pub fn write_tokenizer(dir: &Path, cfg: &NanoConfig) -> Result<()> {
    use crate::model::{BOS, EOS, UNK, tokenizer_json};
    std::fs::create_dir_all(dir).map_err(|e| dreamforge_core::Error::io(dir, e))?;
    let write = |name: &str, v: serde_json::Value| {
        dreamforge_core::image_io::write_atomic(
            &dir.join(name),
            serde_json::to_string_pretty(&v).expect("json").as_bytes(),
        )
    };
    write("tokenizer.json", tokenizer_json())?;
    write(
        "tokenizer_config.json",
        serde_json::json!({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
                           "unk_token": UNK, "model_max_length": cfg.max_tokens()}),
    )
}
