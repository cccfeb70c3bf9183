//! dreamforge-subject: subject fine-tuning — `dreamforge train --subject DIR` turns a few
//! photos into a LoRA or T-LoRA adapter for a FLUX-family model (the nano model included).
//!
//! - [`dataset`]: the subject folder (images, sidecar captions, EXIF / alpha / bit depth).
//! - [`config`]: the run config with per-family defaults from the references.
//! - [`flux`]: the trained [`flux::AdapterSet`] and the cached training task.
//! - [`export`]: the adapter file (PEFT naming + metadata).
//!
//! The loop itself is the shared `dreamforge_train::Trainer` (checkpoints, exact resume,
//! Ctrl-C, NaN guard, loss log).

pub mod config;
pub mod dataset;
pub mod export;
pub mod flux;

pub use config::{AdapterConfig, Method, PriorConfig, SubjectConfig, ValidationConfig};
pub use dataset::{SubjectImage, SubjectSet, load_subject};
pub use flux::{AdapterLayout, AdapterSet, FluxSubjectTask, init_adapters, use_adapters};
