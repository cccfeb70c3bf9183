//! dreamforge-subject: subject fine-tuning — `dreamforge train --subject DIR` turns a few
//! photos into a LoRA or T-LoRA adapter for a FLUX-family model (the nano model included).
//!
//! - [`dataset`]: the subject folder (images, sidecar captions, EXIF / alpha / bit depth).
//! - [`config`]: the run config with per-family defaults from the references.
//! - [`adapter_set`]: the trained adapters and how they attach to a frozen base.
//! - [`flux`], [`sd`]: the cached training tasks of the two families.
//! - [`export`]: the adapter file (PEFT naming + metadata).
//!
//! The loop itself is the shared `dreamforge_train::Trainer` (checkpoints, exact resume,
//! Ctrl-C, NaN guard, loss log).

pub mod adapter_set;
pub mod config;
pub mod dataset;
pub mod export;
pub mod flux;
pub mod sd;

pub use adapter_set::{AdapterLayout, AdapterSet, init_adapters};
pub use config::{AdapterConfig, Method, PriorConfig, SubjectConfig, ValidationConfig};
pub use dataset::{SubjectImage, SubjectSet, load_subject};
pub use flux::{FluxSubjectTask, use_adapters};
pub use sd::{SdSubjectTask, use_sd_adapters};

/// One step's loss: a random subject example (data stream), plus, with prior preservation,
/// `weight ×` the loss of a random class example (DreamBooth's `loss + w·prior_loss`).
pub(crate) fn with_prior<E>(
    instances: &[E],
    class: &[E],
    prior: Option<&PriorConfig>,
    rngs: &mut dreamforge_train::Rngs,
    mut loss: impl FnMut(&E, &mut dreamforge_train::Rngs) -> burn::tensor::Tensor<1>,
) -> burn::tensor::Tensor<1> {
    use rand::Rng;
    let i = rngs.data.random_range(0..instances.len());
    let mut total = loss(&instances[i], rngs);
    if let (Some(p), false) = (prior, class.is_empty()) {
        let j = rngs.data.random_range(0..class.len());
        total = total + loss(&class[j], rngs) * p.weight;
    }
    total
}
