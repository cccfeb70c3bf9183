//! dreamforge-sampling: sigma schedules and samplers as pure functions of
//! (denoiser, x, sigmas, rng), shared by the pipeline and the trainer.

pub mod euler;
pub mod flow_match;

pub use euler::{StepInfo, euler_step, sample_euler};
pub use flow_match::{
    FlowMatchConfig, Schedule, ScheduleError, calculate_shift, flow_match_schedule,
    flux_pipeline_sigmas,
};
