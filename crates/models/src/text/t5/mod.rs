//! The T5 encoder (transformers `T5EncoderModel`) used by FLUX and SD3 as their long-prompt
//! text encoder: T5 v1.1 (gated-gelu) and original T5 (relu) feed-forwards, relative position
//! buckets, padding masks, `shared.weight` / `encoder.embed_tokens.weight` embeddings.

pub mod attention;
pub mod block;
pub mod config;
pub mod ff;
pub mod layer;
pub mod model;

#[cfg(test)]
mod tests;

pub use attention::{T5Attention, relative_position_bucket};
pub use block::T5Block;
pub use config::{T5Activation, T5Config};
pub use ff::T5DenseReluDense;
pub use layer::{T5LayerFF, T5LayerSelfAttention};
pub use model::{EMBED_TOKENS_KEY, SHARED_KEY, T5Encoder};
