//! dreamforge-train: the trainer shared by nano pretraining and subject fine-tuning — the
//! functional train step over Burn autodiff, training objectives for every parameterization,
//! the optimizers (AdamW, Prodigy), learning-rate schedules and training-timestep sampling
//! (serde values: part of a run config and of every checkpoint), mixed precision (bf16 / f16
//! compute over f32 master weights), atomic checkpoints with exact
//! resume, and the JSONL loss log.

pub mod checkpoint;
pub mod ema;
pub mod freeze;
pub mod log;
pub mod objective;
pub mod optim;
pub mod precision;
pub mod prodigy;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod step;
pub mod timesteps;

pub use checkpoint::CheckpointError;
pub use freeze::train_only;
pub use optim::{Algorithm, ClipMode, ModelOptimizer, Optimizer, OptimizerConfig};
pub use precision::{LossScale, Precision};
pub use prodigy::{Prodigy, ProdigyConfig};
pub use rng::RngState;
pub use run::{Outcome, Progress, Rngs, RunError, RunOutput, RunState, Trainer};
pub use schedule::{LrSchedule, ScheduleKind};
pub use step::{
    NonFiniteLoss, clip_global_norm, train_step, train_step_accumulated, train_step_clipped,
    train_step_mixed, train_step_sharded,
};
pub use timesteps::TimestepSampling;
