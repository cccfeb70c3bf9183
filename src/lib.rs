//! The `dreamforge` workspace root: re-exports the crates and hosts the data-driven parity
//! harness (`parity`) used by `tests/parity.rs`, the benches and `dreamforge parity`.

pub mod parity;

pub use dreamforge_core as core;
pub use dreamforge_models as models;
pub use dreamforge_pipeline as pipeline;
pub use dreamforge_sampling as sampling;
