//! CLIP text encoders (transformers `CLIPTextModel` and `CLIPTextModelWithProjection`, as used
//! by SD1.x / SDXL / FLUX): token + position embeddings, pre-norm causal transformer layers, a
//! final LayerNorm, eos pooling and the optional bias-free text projection.

pub mod attention;
pub mod config;
pub mod embeddings;
pub mod encoder_layer;
pub mod keys;
pub mod mlp;
pub mod model;

pub use config::{ClipActivation, ClipTextConfig};
pub use model::{ClipTextModel, ClipTextOutput};
