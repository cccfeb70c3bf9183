//! The training loop every dreamforge run shares (nano pretraining, subject fine-tuning):
//! learning-rate schedule, one optimizer step per iteration through [`train_step`], separate
//! resumable data / noise streams, the JSONL loss log, periodic atomic checkpoints holding the
//! run config, exact `--resume` (the config must match the checkpoint's), a stop flag
//! (Ctrl-C) that saves a checkpoint before returning, and a non-finite loss that stops the run
//! without an update and without overwriting the last good checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::checkpoint::{self, CheckpointError};
use crate::log::{LogLine, LossLog};
use crate::{
    LossScale, LrSchedule, OptimizerConfig, Precision, RngState, train_step_mixed,
    train_step_sharded,
};

/// The loop's position, saved in every checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: u64,
    pub data_rng: RngState,
    pub noise_rng: RngState,
    /// Training seconds so far, over all sessions of the run.
    pub seconds: f64,
    /// The dynamic loss scale of an f16 run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

#[derive(Serialize, Deserialize)]
struct Saved<C> {
    run: RunState,
    config: C,
}

/// The random streams handed to the loss each step: data order / content, and noise /
/// timesteps.
pub struct Rngs {
    pub data: ChaCha8Rng,
    pub noise: ChaCha8Rng,
}

/// What the loop reports after each step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f32,
    pub lr: f64,
    /// Training seconds so far (all sessions).
    pub seconds: f64,
    /// Steps done in this session (for a rate).
    pub session_steps: u64,
    pub session_seconds: f64,
    /// A checkpoint was written after this step.
    pub checkpointed: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Finished,
    /// The stop flag was raised; a checkpoint at `step` was written.
    Stopped {
        step: u64,
    },
    /// The loss at step `step` (1-based) was not finite; nothing was applied or written.
    NonFinite {
        step: u64,
        loss: f32,
    },
}

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no checkpoint to resume from (start without --resume)")]
    NoCheckpoint { path: PathBuf },
    #[error(
        "{path}: the run config differs from the checkpoint's ({}); resume with the same settings or start a new run in another folder",
        .differences.join("; ")
    )]
    ConfigMismatch {
        path: PathBuf,
        differences: Vec<String>,
    },
    #[error(
        "{path}: a run is already here (checkpoint at step {step}); pass --resume to continue it, or choose another --out"
    )]
    Exists { path: PathBuf, step: u64 },
    #[error(
        "--precision {precision}: the device {device} cannot compute in {precision} (wgpu's shading language has no bf16); use f16 or f32 there, or bf16 on cuda"
    )]
    UnsupportedPrecision { precision: String, device: String },
}

/// Refuses a compute precision the model's device cannot run: Burn documents that computing
/// in an unsupported float type gives backend-dependent garbage (on wgpu, bf16 kernels fail to
/// compile on a device thread and the run logs losses of 0).
pub fn check_precision<M: Module>(model: &M, precision: Precision) -> Result<(), RunError> {
    if precision == Precision::F32 {
        return Ok(());
    }
    match model.devices().first() {
        Some(device) if !device.supports_dtype(precision.dtype()) => {
            Err(RunError::UnsupportedPrecision {
                precision: precision.name().into(),
                device: format!("{device:?}"),
            })
        }
        _ => Ok(()),
    }
}

/// A run's fixed settings.
pub struct Trainer<'a> {
    pub out_dir: &'a Path,
    pub total_steps: u64,
    pub checkpoint_every: u64,
    pub base_lr: f64,
    pub schedule: LrSchedule,
    pub optimizer: OptimizerConfig,
    pub data_seed: u64,
    pub noise_seed: u64,
    /// Raised (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: &'a AtomicBool,
    /// Keep an exponential moving average of the parameters with this decay (see
    /// [`crate::ema`]); saved in every checkpoint as `ema.bpk`.
    pub ema_decay: Option<f64>,
    /// Compute precision of the forward / backward passes (master weights stay f32).
    pub precision: Precision,
}

/// What a run hands back.
#[derive(Debug)]
pub struct RunOutput<M> {
    pub model: M,
    /// The parameter average, when the run keeps one (off the autodiff graph).
    pub ema: Option<M>,
    pub outcome: Outcome,
}

impl Trainer<'_> {
    /// Where the checkpoint folder lives.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.out_dir.join("checkpoint")
    }

    pub fn log_path(&self) -> PathBuf {
        self.out_dir.join("loss.jsonl")
    }

    /// Runs (or, with `resume`, continues) training `model` (on an autodiff device) with the
    /// per-step scalar `loss(model, rngs, step)`; `config` is the full run config, stored in
    /// every checkpoint and compared on resume. `progress` sees every step (after its
    /// checkpoint, if one was written) with the model and its average, if kept. Returns the model and how the run ended.
    pub fn run<M, C>(
        &self,
        config: &C,
        model: M,
        resume: bool,
        mut loss: impl FnMut(&M, &mut Rngs, u64) -> Tensor<1>,
        progress: impl FnMut(&Progress, &M, Option<&M>),
    ) -> Result<RunOutput<M>, RunError>
    where
        M: Module + Clone,
        C: Serialize + DeserializeOwned,
    {
        let precision = self.precision;
        self.run_steps(
            config,
            model,
            resume,
            |model, optim, lr, clip, scale, rngs, step| {
                train_step_mixed(model, optim, lr, clip, precision, scale, |m| {
                    loss(m, rngs, step)
                })
            },
            progress,
        )
    }

    /// [`Trainer::run`] with each step's batch split into shards computed concurrently (see
    /// [`train_step_sharded`]): `batch(rngs, step)` draws the step's batch from the streams,
    /// as `(weight, shard)` pairs whose weights sum to 1, and `loss(model, shard)` is a
    /// shard's mean loss. The update is the unsharded one up to float summation order, so the
    /// shard count is not part of the run config (a run may resume with another).
    pub fn run_sharded<M, C, S>(
        &self,
        config: &C,
        model: M,
        resume: bool,
        mut batch: impl FnMut(&mut Rngs, u64) -> Vec<(f32, S)>,
        loss: impl Fn(&M, S) -> Tensor<1> + Sync,
        progress: impl FnMut(&Progress, &M, Option<&M>),
    ) -> Result<RunOutput<M>, RunError>
    where
        M: Module + Clone,
        C: Serialize + DeserializeOwned,
        S: Send,
    {
        let precision = self.precision;
        self.run_steps(
            config,
            model,
            resume,
            |model, optim, lr, clip, scale, rngs, step| {
                let shards = batch(rngs, step);
                train_step_sharded(model, optim, lr, clip, precision, scale, shards, &loss)
            },
            progress,
        )
    }

    #[allow(clippy::type_complexity)]
    fn run_steps<M, C>(
        &self,
        config: &C,
        model: M,
        resume: bool,
        mut step_fn: impl FnMut(
            M,
            &mut crate::optim::Optimizer,
            f64,
            Option<f32>,
            &mut LossScale,
            &mut Rngs,
            u64,
        ) -> (M, Result<f32, crate::NonFiniteLoss>),
        mut progress: impl FnMut(&Progress, &M, Option<&M>),
    ) -> Result<RunOutput<M>, RunError>
    where
        M: Module + Clone,
        C: Serialize + DeserializeOwned,
    {
        check_precision(&model, self.precision)?;
        let ck = self.checkpoint_dir();
        let fresh_state = RunState {
            step: 0,
            data_rng: RngState {
                seed: self.data_seed,
                word_pos: 0,
            },
            noise_rng: RngState {
                seed: self.noise_seed,
                word_pos: 0,
            },
            seconds: 0.0,
            loss_scale: self.precision.scales_loss().then(LossScale::default),
        };
        let (mut model, mut optim, state) = if resume {
            if !ck.join("state.json").exists() {
                return Err(RunError::NoCheckpoint { path: ck });
            }
            // The config first: another optimizer's state would fail to load less clearly.
            let saved: Saved<serde_json::Value> = checkpoint::read_state(&ck)?;
            // Through text, as the checkpoint's copy went (f32 fields print shortest).
            let now: serde_json::Value = serde_json::from_str(
                &serde_json::to_string(config).expect("run configs serialize"),
            )
            .expect("own JSON parses");
            let mut differences = Vec::new();
            diff("", &saved.config, &now, &mut differences);
            if !differences.is_empty() {
                return Err(RunError::ConfigMismatch {
                    path: ck,
                    differences,
                });
            }
            let (m, o, _): (M, _, serde_json::Value) =
                checkpoint::load(&ck, model, self.optimizer.build())?;
            (m, o, saved.run)
        } else {
            if let Ok(text) = std::fs::read_to_string(ck.join("state.json"))
                && let Ok(saved) = serde_json::from_str::<Saved<serde_json::Value>>(&text)
            {
                return Err(RunError::Exists {
                    path: self.out_dir.to_path_buf(),
                    step: saved.run.step,
                });
            }
            (model, self.optimizer.build(), fresh_state)
        };
        std::fs::create_dir_all(self.out_dir).map_err(|source| RunError::Io {
            path: self.out_dir.to_path_buf(),
            source,
        })?;
        let log_path = self.log_path();
        // Lines are numbered by steps done (1-based): keep those up to the checkpoint's step.
        let keep_below = if resume { state.step + 1 } else { 0 };
        let mut log = LossLog::open(&log_path, keep_below).map_err(|source| RunError::Io {
            path: log_path.clone(),
            source,
        })?;
        let mut rngs = Rngs {
            data: state.data_rng.restore(),
            noise: state.noise_rng.restore(),
        };
        let mut ema = match self.ema_decay {
            None => None,
            Some(_) if resume => Some(checkpoint::load_extra(&ck, "ema", model.valid())?),
            Some(_) => Some(model.valid()),
        };
        let t0 = Instant::now();
        let start = state.step;
        let mut loss_scale = state.loss_scale.unwrap_or_default();
        let save = |model: &M,
                    ema: &Option<M>,
                    optim: &crate::optim::Optimizer,
                    rngs: &Rngs,
                    step: u64,
                    loss_scale: LossScale| {
            let run = RunState {
                step,
                data_rng: RngState::of(self.data_seed, &rngs.data),
                noise_rng: RngState::of(self.noise_seed, &rngs.noise),
                seconds: state.seconds + t0.elapsed().as_secs_f64(),
                loss_scale: self.precision.scales_loss().then_some(loss_scale),
            };
            let extra = ema.as_ref().map(|e| ("ema", e));
            checkpoint::save_with(&ck, model, extra, optim, &Saved { run, config })
        };
        let devices = model.devices();
        for step in start..self.total_steps {
            if self.stop.load(Ordering::SeqCst) {
                save(&model, &ema, &optim, &rngs, step, loss_scale)?;
                return Ok(RunOutput {
                    model,
                    ema,
                    outcome: Outcome::Stopped { step },
                });
            }
            let lr = self.schedule.lr(self.base_lr, step);
            let clip = self.optimizer.global_clip();
            let (m, r) = step_fn(
                model,
                &mut optim,
                lr,
                clip,
                &mut loss_scale,
                &mut rngs,
                step,
            );
            model = m;
            // Hand the step's freed buffers back to the device allocator. Without this, Burn
            // 0.22.1's CubeCL pools on wgpu keep every step's pages: a nano pretraining run on
            // an H100 reserved 1.46 GB more per step (58 GB at step 40, out of memory at 46)
            // while its live bytes stayed at 153 MB; with it the reservation holds at 1.5 GB.
            // A no-op on the CPU backend.
            for d in &devices {
                d.memory_cleanup();
            }
            let value = match r {
                Ok(v) => v,
                Err(e) => {
                    return Ok(RunOutput {
                        model,
                        ema,
                        outcome: Outcome::NonFinite {
                            step: step + 1,
                            loss: e.0,
                        },
                    });
                }
            };
            if let (Some(d), Some(e)) = (self.ema_decay, ema.take()) {
                ema = Some(crate::ema::update(
                    e,
                    &model,
                    crate::ema::decay_at(d, step + 1),
                ));
            }
            let seconds = state.seconds + t0.elapsed().as_secs_f64();
            log.write(&LogLine {
                step: step + 1,
                loss: value as f64,
                lr,
                seconds,
            })
            .map_err(|source| RunError::Io {
                path: log_path.clone(),
                source,
            })?;
            let done = step + 1 == self.total_steps;
            let checkpointed =
                done || (self.checkpoint_every > 0 && (step + 1) % self.checkpoint_every == 0);
            if checkpointed {
                save(&model, &ema, &optim, &rngs, step + 1, loss_scale)?;
            }
            progress(
                &Progress {
                    step: step + 1,
                    total_steps: self.total_steps,
                    loss: value,
                    lr,
                    seconds,
                    session_steps: step + 1 - start,
                    session_seconds: t0.elapsed().as_secs_f64(),
                    checkpointed,
                },
                &model,
                ema.as_ref(),
            );
        }
        Ok(RunOutput {
            model,
            ema,
            outcome: Outcome::Finished,
        })
    }
}

/// Fresh streams for a loss evaluated outside a run (tests, evaluation).
pub fn rngs(data_seed: u64, noise_seed: u64) -> Rngs {
    Rngs {
        data: ChaCha8Rng::seed_from_u64(data_seed),
        noise: ChaCha8Rng::seed_from_u64(noise_seed),
    }
}

/// Differences between two JSON values as `path: old → new` lines.
fn diff(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(&p, x, y, out),
                    (Some(x), None) => out.push(format!("{p}: {x} in the checkpoint, absent now")),
                    (None, Some(y)) => out.push(format!("{p}: absent in the checkpoint, {y} now")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} in the checkpoint, {b} now")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::tensor::{Device, TensorData};
    use rand::Rng;

    use crate::ScheduleKind;

    fn host(seed: u64, n: usize) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
    }

    fn model(d: &Device) -> Linear {
        Linear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(host(1, 12), [4, 3]), d)),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(host(2, 3), [3]),
                d,
            ))),
        }
    }

    /// Regress a fixed linear map from data-stream inputs plus noise-stream jitter.
    fn loss(m: &Linear, r: &mut Rngs, d: &Device, poison: bool) -> Tensor<1> {
        let x: Vec<f32> = (0..32).map(|_| r.data.random_range(-1.0..1.0)).collect();
        let j: Vec<f32> = (0..24).map(|_| r.noise.random_range(-0.01..0.01)).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [8, 4]), d);
        let target = x.clone().sum_dim(1).repeat_dim(1, 3)
            + Tensor::<2>::from_data(TensorData::new(j, [8, 3]), d);
        let l = (m.forward(x) - target).square().mean();
        if poison { l / 0.0 } else { l }
    }

    fn trainer<'a>(dir: &'a Path, stop: &'a AtomicBool) -> Trainer<'a> {
        Trainer {
            out_dir: dir,
            total_steps: 6,
            checkpoint_every: 2,
            base_lr: 0.2,
            schedule: LrSchedule {
                kind: ScheduleKind::Cosine,
                warmup_steps: 1,
                stable_steps: 0,
                total_steps: 6,
                min_lr_ratio: 0.1,
            },
            optimizer: OptimizerConfig::default(),
            data_seed: 3,
            noise_seed: 4,
            stop,
            ema_decay: Some(0.5),
            precision: Precision::F32,
        }
    }

    fn losses(dir: &Path) -> Vec<f64> {
        crate::log::read(&dir.join("loss.jsonl"))
            .unwrap()
            .iter()
            .map(|l| l.loss)
            .collect()
    }

    #[test]
    fn a_stopped_and_resumed_run_equals_the_uninterrupted_one() {
        let d = Device::flex().autodiff();
        let tmp = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({"lr": 0.05, "what": "test"});
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let never = AtomicBool::new(false);
        // A plain run (no stop) of the test model in `dir`.
        let go = |dir: &Path, cfg: &serde_json::Value, resume: bool| {
            trainer(dir, &never).run(
                cfg,
                model(&d),
                resume,
                |m, r, _| loss(m, r, &d, false),
                |_, _, _| {},
            )
        };
        let ra = go(&a, &cfg, false).unwrap();
        assert_eq!(ra.outcome, Outcome::Finished);
        let ma = ra.model;
        let full = losses(&a);
        assert_eq!(full.len(), 6);
        let eval = |m: &Linear| loss(m, &mut rngs(99, 98), &d, false).into_scalar::<f32>();
        assert!(
            eval(&ma) < 0.5 * eval(&model(&d)),
            "the run learned nothing: {full:?}"
        );

        // Ctrl-C after step 3 (the flag is seen before step 4): a checkpoint at 3, exit.
        let stop = AtomicBool::new(false);
        let out = trainer(&b, &stop)
            .run(
                &cfg,
                model(&d),
                false,
                |m, r, _| loss(m, r, &d, false),
                |p, _, _| {
                    if p.step == 3 {
                        stop.store(true, Ordering::SeqCst);
                    }
                },
            )
            .unwrap();
        assert_eq!(out.outcome, Outcome::Stopped { step: 3 });
        // Not resuming onto an existing run, resuming with other settings, and resuming
        // where nothing was saved are refused with what to do.
        let e = go(&b, &cfg, false).unwrap_err().to_string();
        assert!(e.contains("--resume") && e.contains("step 3"), "{e}");
        let other = serde_json::json!({"lr": 0.1, "what": "test"});
        let e = go(&b, &other, true).unwrap_err().to_string();
        assert!(e.contains("lr: 0.05 in the checkpoint, 0.1 now"), "{e}");
        let e = go(&tmp.path().join("none"), &cfg, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no checkpoint"), "{e}");

        // Resume from a fresh model: the rest of the curve and the weights match.
        let rb = go(&b, &cfg, true).unwrap();
        assert_eq!(rb.outcome, Outcome::Finished);
        let mb = rb.model;
        let resumed = losses(&b);
        assert_eq!(resumed.len(), 6);
        for (x, y) in full.iter().zip(&resumed) {
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                "{full:?} vs {resumed:?}"
            );
        }
        let w = |m: &Linear| m.weight.val().into_data().try_to_vec::<f32>().unwrap();
        for (x, y) in w(&ma).iter().zip(w(&mb)) {
            assert!((x - y).abs() < 1e-6);
        }
        // The parameter average continues exactly too (saved as ema.bpk), and is not the
        // model itself.
        let (ea, eb) = (ra.ema.unwrap(), rb.ema.unwrap());
        for (x, y) in w(&ea).iter().zip(w(&eb)) {
            assert!((x - y).abs() < 1e-6);
        }
        assert!(w(&ea).iter().zip(w(&ma)).any(|(x, y)| (x - y).abs() > 1e-4));
    }

    /// [`loss`]'s batch drawn the same way, split into `k` row runs with their weights.
    fn shards(r: &mut Rngs, d: &Device, k: usize) -> Vec<(f32, (Tensor<2>, Tensor<2>))> {
        let x: Vec<f32> = (0..32).map(|_| r.data.random_range(-1.0..1.0)).collect();
        let j: Vec<f32> = (0..24).map(|_| r.noise.random_range(-0.01..0.01)).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [8, 4]), d);
        let target = x.clone().sum_dim(1).repeat_dim(1, 3)
            + Tensor::<2>::from_data(TensorData::new(j, [8, 3]), d);
        let bounds: Vec<usize> = (0..=k).map(|i| i * 8 / k).collect();
        bounds
            .windows(2)
            .map(|w| {
                let n = w[1] - w[0];
                let xs = x.clone().slice([w[0]..w[1], 0..4]);
                let ts = target.clone().slice([w[0]..w[1], 0..3]);
                (n as f32 / 8.0, (xs, ts))
            })
            .collect()
    }

    #[test]
    fn a_sharded_run_follows_the_unsharded_one_and_resumes_with_another_shard_count() {
        let d = Device::flex().autodiff();
        let tmp = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({});
        let never = AtomicBool::new(false);
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let shard_loss =
            |m: &Linear, (x, t): (Tensor<2>, Tensor<2>)| (m.forward(x) - t).square().mean();
        let plain = trainer(&a, &never)
            .run(
                &cfg,
                model(&d),
                false,
                |m, r, _| loss(m, r, &d, false),
                |_, _, _| {},
            )
            .unwrap();
        // Two shards, stopped after step 3; resumed with three (4 + 4 rows, then 2 + 3 + 3).
        let stop = AtomicBool::new(false);
        let out = trainer(&b, &stop)
            .run_sharded(
                &cfg,
                model(&d),
                false,
                |r, _| shards(r, &d, 2),
                shard_loss,
                |p, _, _| stop.store(p.step == 3, Ordering::SeqCst),
            )
            .unwrap();
        assert_eq!(out.outcome, Outcome::Stopped { step: 3 });
        let resumed = trainer(&b, &never)
            .run_sharded(
                &cfg,
                model(&d),
                true,
                |r, _| shards(r, &d, 3),
                shard_loss,
                |_, _, _| {},
            )
            .unwrap();
        assert_eq!(resumed.outcome, Outcome::Finished);
        let (la, lb) = (losses(&a), losses(&b));
        assert_eq!(lb.len(), 6);
        for (x, y) in la.iter().zip(&lb) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{la:?} vs {lb:?}");
        }
        let w = |m: &Linear| m.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_ne!(w(&plain.model), w(&model(&d)));
        for (x, y) in w(&plain.model).iter().zip(w(&resumed.model)) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn a_non_finite_loss_stops_without_touching_the_last_checkpoint() {
        let d = Device::flex().autodiff();
        let tmp = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        let cfg = serde_json::json!({});
        let t = trainer(tmp.path(), &never);
        let out = t
            .run(
                &cfg,
                model(&d),
                false,
                |m, r, step| loss(m, r, &d, step == 4),
                |_, _, _| {},
            )
            .unwrap();
        assert!(matches!(out.outcome, Outcome::NonFinite { step: 5, loss } if !loss.is_finite()));
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(t.checkpoint_dir().join("state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["run"]["step"], 4);
        assert_eq!(losses(tmp.path()).len(), 4);
    }

    #[test]
    fn a_prodigy_run_resumes_exactly() {
        let d = Device::flex().autodiff();
        let tmp = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({});
        let never = AtomicBool::new(false);
        let prodigy = |dir, stop| Trainer {
            base_lr: 1.0,
            optimizer: serde_json::from_str(r#"{"algorithm": {"prodigy": {"d0": 1e-3}}}"#).unwrap(),
            ema_decay: None,
            precision: Precision::F32,
            ..trainer(dir, stop)
        };
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let straight = prodigy(&a, &never)
            .run(
                &cfg,
                model(&d),
                false,
                |m, r, _| loss(m, r, &d, false),
                |_, _, _| {},
            )
            .unwrap();
        let stop = AtomicBool::new(false);
        let out = prodigy(&b, &stop)
            .run(
                &cfg,
                model(&d),
                false,
                |m, r, _| loss(m, r, &d, false),
                |p, _, _| stop.store(p.step == 3, Ordering::SeqCst),
            )
            .unwrap();
        assert_eq!(out.outcome, Outcome::Stopped { step: 3 });
        assert!(b.join("checkpoint/optim.safetensors").exists());
        let resumed = prodigy(&b, &never)
            .run(
                &cfg,
                model(&d),
                true,
                |m, r, _| loss(m, r, &d, false),
                |_, _, _| {},
            )
            .unwrap();
        let w = |m: &Linear| m.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_ne!(w(&straight.model), w(&model(&d)));
        assert_eq!(w(&straight.model), w(&resumed.model));
        assert_eq!(losses(&a), losses(&b));
    }

    /// The CPU backend computes every precision; a device without the compute type would be
    /// refused before any step (on wgpu, bf16: see `check_precision`).
    #[test]
    fn precision_check_follows_the_device() {
        let d = Device::flex().autodiff();
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert!(check_precision(&model(&d), p).is_ok(), "{p:?} on flex");
        }
    }
}
