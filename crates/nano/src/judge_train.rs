//! Training, saving and loading the judge: `dreamforge nano train-judge` runs the shared
//! trainer on fresh scenes (light Gaussian pixel noise as augmentation, so renders that are
//! almost but not exactly clean — a generator's — are read the same), then measures its
//! accuracy on fresh ground truth (a seed range training never draws from) and writes
//! `judge.safetensors` (module-path keys) with that accuracy in its metadata.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use dreamforge_core::export::{load_module_tensors, module_tensors, save_safetensors};
use dreamforge_core::{Result, WeightSet};
use dreamforge_train::{LrSchedule, OptimizerConfig, Rngs, ScheduleKind};

use crate::judge::{Judge, accuracy, batch, loss};
use crate::render::images;
use crate::scene::{Scene, sample_scene};

/// The first scene seed of the evaluation range (training draws seeds below it).
pub const EVAL_SEED: u64 = 1 << 40;

/// A judge training run's settings (stored in its checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeTrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub optimizer: OptimizerConfig,
    /// Per-image noise std is drawn from U(0, max_noise_std) (pixels in [-1, 1]).
    pub max_noise_std: f32,
    pub init_seed: u64,
    pub data_seed: u64,
    pub noise_seed: u64,
}

impl JudgeTrainConfig {
    pub fn new(steps: u64, batch_size: usize) -> Self {
        Self {
            steps,
            batch_size,
            lr: 2e-3,
            schedule: LrSchedule {
                kind: ScheduleKind::Cosine,
                warmup_steps: steps / 20,
                stable_steps: 0,
                total_steps: steps,
                min_lr_ratio: 0.05,
            },
            optimizer: OptimizerConfig::default(),
            max_noise_std: 0.08,
            init_seed: 0,
            data_seed: 11,
            noise_seed: 12,
        }
    }

    /// One step's loss: a fresh batch (seeds below [`EVAL_SEED`]), noised.
    pub fn loss(&self, judge: &Judge, rngs: &mut Rngs, device: &Device) -> Tensor<1> {
        let scenes: Vec<Scene> = (0..self.batch_size)
            .map(|_| sample_scene(rngs.data.random_range(0..EVAL_SEED), None))
            .collect();
        let x = images(&scenes, crate::judge::SIDE, device);
        let dims = x.dims();
        let per: usize = dims[1..].iter().product();
        let mut noise = Vec::with_capacity(dims[0] * per);
        for _ in 0..dims[0] {
            let std = rngs.noise.random::<f32>() * self.max_noise_std;
            noise.extend((0..per).map(|_| {
                let z: f32 = StandardNormal.sample(&mut rngs.noise);
                z * std
            }));
        }
        let x = x + Tensor::<4>::from_data(TensorData::new(noise, dims), device);
        loss(judge, x, &scenes)
    }
}

/// Accuracy on `n` fresh ground-truth scenes (seeds from [`EVAL_SEED`]): (all attributes
/// right, per head).
pub fn ground_truth_accuracy(judge: &Judge, n: usize, device: &Device) -> (f64, [f64; 7]) {
    let mut right = 0.0;
    let mut per = [0.0; 7];
    let chunk = 100;
    let mut done = 0;
    while done < n {
        let k = chunk.min(n - done);
        let (x, scenes) = batch(EVAL_SEED + done as u64, k, device);
        let (a, p) = accuracy(judge, x, &scenes);
        right += a * k as f64;
        for (t, v) in per.iter_mut().zip(p) {
            *t += v * k as f64;
        }
        done += k;
    }
    (right / n as f64, per.map(|v| v / n as f64))
}

/// Writes the judge's parameters (and `metadata`) as safetensors.
pub fn save_judge(path: &Path, judge: &Judge, metadata: &HashMap<String, String>) -> Result<()> {
    save_safetensors(path, &module_tensors(judge), metadata)
}

/// Reads a judge written by [`save_judge`].
pub fn load_judge(path: &Path, device: &Device) -> Result<Judge> {
    let set = WeightSet::open(path)?;
    load_module_tensors(Judge::new(device), &set)
}
