//! The run config of a subject fine-tune (stored in every checkpoint and in the adapter's
//! metadata), with the per-family defaults taken from the references:
//! - T-LoRA FLUX (`flux/run.py`): rank 32, min rank 1, α 1, vanilla layers (no orthogonal
//!   variant in the FLUX code), Prodigy (lr 1, β (0.9, 0.999), wd 1e-4), constant lr, global
//!   gradient clipping at 1, σ uniform, guidance 1, batch 1, 1000 steps.
//! - T-LoRA SDXL (`train.py` README): rank 64, min rank 32, orthogonal, AdamW lr 1e-4,
//!   800 steps — the UNet half, used once UNet adapters land.
//! - Plain LoRA on FLUX: diffusers `train_dreambooth_lora_flux.py` (rank 4, α = rank, AdamW
//!   lr 1e-4 … the README's example uses rank 4 / lr 1e-4 / 500 steps); here rank 16 / α 16 by
//!   default so LoRA and T-LoRA runs compare at a like budget, overridable.

use serde::{Deserialize, Serialize};

use dreamforge_adapters::{AdapterInit, AdapterKind, RankSchedule};
use dreamforge_train::{LrSchedule, OptimizerConfig, Precision, ScheduleKind, TimestepSampling};

/// LoRA or T-LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Lora,
    Tlora,
}

/// The adapter being trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub method: Method,
    pub rank: usize,
    /// LoRA: `alpha` (scale `alpha / rank`, or `/ √rank` with `rslora`).
    pub alpha: f64,
    #[serde(default)]
    pub rslora: bool,
    /// T-LoRA: the rank kept at pure noise.
    pub min_rank: usize,
    /// T-LoRA: the rank schedule's exponent α.
    pub rank_exponent: f64,
    /// T-LoRA: orthogonal parametrization (`ortho_lora`) instead of vanilla `lora` layers.
    pub orthogonal: bool,
    /// Checkpoint module names (regex) that get adapters.
    pub target_modules: String,
    pub seed: u64,
}

impl AdapterConfig {
    /// The rank schedule (T-LoRA), `None` for LoRA.
    pub fn schedule(&self) -> Option<RankSchedule> {
        (self.method == Method::Tlora).then_some(RankSchedule {
            min_rank: self.min_rank,
            exponent: self.rank_exponent,
            paired: false,
        })
    }

    pub fn init(&self) -> AdapterInit {
        AdapterInit {
            kind: match self.method {
                Method::Lora => AdapterKind::Lora {
                    alpha: self.alpha,
                    rslora: self.rslora,
                },
                Method::Tlora => AdapterKind::TLora {
                    schedule: self.schedule().expect("T-LoRA has a schedule"),
                    orthogonal: self.orthogonal,
                },
            },
            rank: self.rank,
            seed: self.seed,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("rank must be at least 1".into());
        }
        if self.method == Method::Tlora && (self.min_rank == 0 || self.min_rank > self.rank) {
            return Err(format!(
                "min rank must be in 1..={} (the rank), got {}",
                self.rank, self.min_rank
            ));
        }
        if !(self.rank_exponent > 0.0 && self.rank_exponent.is_finite()) {
            return Err(format!(
                "rank exponent must be positive, got {}",
                self.rank_exponent
            ));
        }
        regex::Regex::new(&self.target_modules)
            .map_err(|e| format!("target modules `{}`: {e}", self.target_modules))?;
        Ok(())
    }
}

/// FLUX attention projections (diffusers names): the image and text streams' q/k/v/out in
/// the double blocks and q/k/v in the single blocks — the modules the T-LoRA FLUX processor
/// and diffusers' DreamBooth LoRA script adapt (`to_k, to_q, to_v, to_out.0` plus the
/// `add_*` text-stream projections).
pub const FLUX_ATTENTION: &str = r"^(transformer_blocks|single_transformer_blocks)\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$";

/// [`FLUX_ATTENTION`] plus the MLPs and single-block projections (ai-toolkit / kohya "all
/// linear layers" style).
pub const FLUX_ALL_LINEAR: &str = r"^(transformer_blocks|single_transformer_blocks)\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)$";

/// UNet attention projections (diffusers names): self- and cross-attention q/k/v/out of every
/// transformer block — the T-LoRA SDXL processor's targets.
pub const UNET_ATTENTION: &str =
    r"^(down_blocks|mid_block|up_blocks)\..*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$";

/// [`UNET_ATTENTION`] plus the feed-forwards and the transformers' proj_in / proj_out.
pub const UNET_ALL_LINEAR: &str = r"^(down_blocks|mid_block|up_blocks)\..*\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out)$";

/// Prior preservation: class images the base model draws once (cached under the run folder)
/// and trained on beside the subject with this weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorConfig {
    pub class_prompt: String,
    pub num_images: usize,
    pub weight: f64,
    pub seed: u64,
}

/// Validation renders during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    pub prompts: Vec<String>,
    /// Every N steps (and at the end); 0 = only at the end.
    pub every: u64,
    pub steps: usize,
    pub seed: u64,
    /// Guidance: FLUX true-CFG scale (applies with a negative prompt; the nano model's default
    /// 4), SD classifier-free guidance scale.
    pub cfg_scale: f32,
    pub negative_prompt: Option<String>,
}

/// Everything that defines a subject fine-tune (stored in checkpoints; `--resume` requires the
/// same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectConfig {
    pub token: String,
    pub class: String,
    pub instance_prompt: String,
    pub resolution: u32,
    /// Mirror images at random (each step sees an image or its mirror with probability ½;
    /// diffusers' `--random_flip`). Off by default, as in both T-LoRA references: text and
    /// asymmetric details of a subject flip too.
    #[serde(default)]
    pub flip: bool,
    pub adapter: AdapterConfig,
    pub steps: u64,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub optimizer: OptimizerConfig,
    pub timesteps: TimestepSampling,
    /// Shift applied to drawn σ (the model's static scheduler shift; 1 for dynamic shifting,
    /// as diffusers' DreamBooth FLUX script indexes the unshifted training schedule).
    pub timestep_shift: f64,
    /// FLUX.1-dev's distilled guidance value during training (T-LoRA: 1).
    pub guidance: f32,
    pub prior: Option<PriorConfig>,
    pub validation: ValidationConfig,
    pub data_seed: u64,
    pub noise_seed: u64,
    /// The base model's fingerprint (`export::base_fingerprint`): a run resumes only on the
    /// model it started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<String>,
    /// Compute precision of the forward / backward passes (`bf16` / `f16`: mixed precision
    /// over f32 adapter weights and a half-precision frozen base).
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

impl SubjectConfig {
    /// Defaults for a FLUX-family model (see the module docs), before user overrides.
    pub fn flux_defaults(method: Method, token: &str, class: &str, resolution: u32) -> Self {
        let (rank, lr, optimizer, steps) = match method {
            Method::Tlora => (
                32,
                1.0,
                serde_json::from_value::<OptimizerConfig>(serde_json::json!({
                    "weight_decay": 1e-4,
                    "grad_clip_norm": 1.0,
                    "grad_clip_mode": "global",
                    "algorithm": "prodigy"
                }))
                .expect("valid optimizer config"),
                1000,
            ),
            Method::Lora => (
                16,
                1e-4,
                OptimizerConfig {
                    weight_decay: 1e-4,
                    grad_clip_norm: Some(1.0),
                    grad_clip_mode: dreamforge_train::ClipMode::Global,
                    ..Default::default()
                },
                500,
            ),
        };
        let instance_prompt = format!("a photo of {token} {class}");
        Self {
            token: token.to_string(),
            class: class.to_string(),
            instance_prompt: instance_prompt.clone(),
            resolution,
            flip: false,
            adapter: AdapterConfig {
                method,
                rank,
                alpha: rank as f64,
                rslora: false,
                min_rank: 1,
                rank_exponent: 1.0,
                orthogonal: false,
                target_modules: FLUX_ATTENTION.to_string(),
                seed: 0,
            },
            steps,
            lr,
            schedule: LrSchedule {
                kind: ScheduleKind::Constant,
                warmup_steps: 0,
                stable_steps: 0,
                total_steps: steps,
                min_lr_ratio: 0.0,
            },
            optimizer,
            timesteps: TimestepSampling::Uniform,
            timestep_shift: 1.0,
            guidance: 1.0,
            prior: None,
            validation: ValidationConfig {
                prompts: vec![instance_prompt],
                every: 0,
                steps: 28,
                seed: 42,
                cfg_scale: 1.0,
                negative_prompt: None,
            },
            data_seed: 1,
            noise_seed: 2,
            base_fingerprint: None,
            precision: Precision::F32,
        }
    }

    /// Defaults for a Stable Diffusion UNet (see the module docs): T-LoRA as the SDXL
    /// reference (orthogonal, rank 64 / min rank 32, AdamW 1e-4, wd 1e-4, no clipping, 800
    /// steps; for SD 1.x/2.x rank 32 / min rank 16, which no reference pins), LoRA rank 16 /
    /// α 16 AdamW 1e-4 500 steps; adapters on the attention projections of every transformer
    /// block (`attn1` / `attn2` q, k, v, out).
    pub fn sd_defaults(
        method: Method,
        token: &str,
        class: &str,
        resolution: u32,
        sdxl: bool,
    ) -> Self {
        let mut c = Self::flux_defaults(method, token, class, resolution);
        let (rank, min_rank, steps) = match (method, sdxl) {
            (Method::Tlora, true) => (64, 32, 800),
            (Method::Tlora, false) => (32, 16, 800),
            (Method::Lora, _) => (16, 1, 500),
        };
        c.adapter.rank = rank;
        c.adapter.alpha = rank as f64;
        c.adapter.min_rank = min_rank;
        c.adapter.orthogonal = method == Method::Tlora;
        c.adapter.target_modules = UNET_ATTENTION.to_string();
        c.steps = steps;
        c.schedule.total_steps = steps;
        c.lr = 1e-4;
        c.optimizer = OptimizerConfig {
            weight_decay: 1e-4,
            grad_clip_norm: None,
            ..Default::default()
        };
        c.validation.steps = 30;
        c.validation.cfg_scale = if sdxl { 5.0 } else { 7.5 };
        c
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        if self.resolution == 0 {
            return Err("resolution must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("learning rate must be positive, got {}", self.lr));
        }
        if let Some(p) = &self.prior {
            if p.num_images == 0 {
                return Err("prior preservation needs at least 1 class image".into());
            }
            if !(p.weight >= 0.0 && p.weight.is_finite()) {
                return Err(format!("prior weight must be ≥ 0, got {}", p.weight));
            }
        }
        self.adapter.validate()
    }
}
