//! dreamforge-train: the trainer shared by nano pretraining and subject fine-tuning. This first
//! part holds its pure pieces — learning-rate schedules and training-timestep sampling — as
//! serde-configurable values (they are part of a run config and of every checkpoint).

pub mod checkpoint;
pub mod schedule;
pub mod step;
pub mod timesteps;

pub use checkpoint::CheckpointError;
pub use schedule::{LrSchedule, ScheduleKind};
pub use step::train_step;
pub use timesteps::TimestepSampling;
