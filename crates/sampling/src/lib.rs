//! dreamforge-sampling: sigma schedules and samplers as pure functions of
//! (denoiser, x, sigmas, rng), shared by the pipeline and the trainer.

pub mod ddpm;
pub mod euler;
pub mod flow_match;
pub mod parameterization;
pub mod sd_sampler;
pub mod sd_schedule;

pub use ddpm::{DdpmConfig, SdScheduleError, rescale_zero_terminal_snr};
pub use euler::{StepInfo, euler_step, sample_euler};
pub use flow_match::{
    FlowMatchConfig, Schedule, ScheduleError, calculate_shift, flow_match_schedule,
    flux_pipeline_sigmas,
};
pub use parameterization::Parameterization;
pub use sd_sampler::sample_sd;
pub use sd_schedule::{SamplerKind, SdSchedule, add_noise, img2img_start, sd_schedule};
