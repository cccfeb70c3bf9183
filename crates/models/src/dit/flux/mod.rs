//! The FLUX.1 family (MMDiT): `FluxTransformer2DModel` with diffusers and BFL key layouts.

pub mod attention;
pub mod config;
pub mod double_block;
pub mod embeddings;
pub mod keys;
pub mod model;
pub mod replace;
pub mod rope;
pub mod single_block;

pub use config::{FluxConfig, FluxKeyFormat, infer_config};
pub use model::{FluxInputs, FluxTransformer};
pub use replace::TokenReplace;
pub use rope::Rope;
