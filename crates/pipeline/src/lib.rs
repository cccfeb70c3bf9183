//! dreamforge-pipeline: text-to-image orchestration used by the CLI and the renderer —
//! resolve component paths, load, encode prompts, sample, decode.

pub mod components;
pub mod flux;
pub mod inspect;
pub mod latents;

pub use components::{ComponentOverrides, FluxComponents};
pub use flux::{FluxOutput, FluxPipeline, FluxRequest};
