//! dreamforge-pipeline: text-to-image orchestration used by the CLI and the renderer —
//! resolve component paths, load, encode prompts, sample, decode.

pub mod components;
pub mod conditioning;
pub mod family;
pub mod flux;
pub mod flux_lora;
pub mod flux_personalize;
pub mod guidance;
pub mod inspect;
pub mod latents;
pub mod sd;

pub use components::{ComponentOverrides, FluxComponents};
pub use conditioning::InitImage;
pub use family::{ModelFamily, detect_family};
pub use flux::{FluxOutput, FluxPipeline, FluxRequest};
pub use flux_personalize::{Personalization, Reference};
pub use sd::{SdComponents, SdFamily, SdOutput, SdPipeline, SdRequest, SdSource};
