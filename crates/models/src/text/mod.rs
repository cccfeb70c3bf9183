//! Text side: CLIP text encoders, the T5 encoder, and tokenizers.

pub mod clip;
pub mod t5;
pub mod tokenizer;
