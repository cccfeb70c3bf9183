//! Batch rendering for fleets (`dreamforge render`): everything but the pixels.
//!
//! A manifest (JSONL, one job per line, or TOML with `[defaults]` and `[[job]]`) is parsed with
//! unknown fields refused ([`manifest`]); each job is resolved against the defaults, its paths
//! against the manifest's folder, and given an identity: a SHA-256 over everything that changes
//! its pixels, with models and adapters named by content fingerprints rather than paths
//! ([`fingerprint`], [`plan`]), so boxes that mount the same files at different places agree.
//! Every image (job identity + seed) has a fixed output path and a fixed shard
//! ([`shard`]): shards are disjoint, cover everything, and an image's shard depends only on its
//! own content. Finished images are files that exist; per-shard results logs ([`log`]) record
//! what happened, appended one whole line at a time; [`status`] summarizes done / failed /
//! missing per shard. The design follows what Slurm job arrays and Kubernetes Indexed Jobs
//! give a worker: an index, a count, and a command that may be rerun at any moment.

pub mod fingerprint;
pub mod log;
pub mod manifest;
pub mod plan;
pub mod shard;
pub mod status;

pub use manifest::{AdapterSpec, JobFields, Manifest, ManifestLine, ReferenceSpec};
pub use plan::{Image, Job, Plan, PlanOptions};
pub use shard::Shard;
