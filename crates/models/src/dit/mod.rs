//! Diffusion transformers (DiT family).

pub mod flux;
