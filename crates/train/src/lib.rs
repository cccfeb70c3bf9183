//! dreamforge-train: the trainer shared by nano pretraining and subject fine-tuning. This first
//! part holds its pure pieces — learning-rate schedules and training-timestep sampling — as
//! serde-configurable values (they are part of a run config and of every checkpoint).

pub mod schedule;
pub mod timesteps;

pub use schedule::{LrSchedule, ScheduleKind};
pub use timesteps::TimestepSampling;
