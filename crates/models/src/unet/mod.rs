//! The Stable Diffusion UNet family (diffusers `UNet2DConditionModel`): SD1.x, SD2.x and SDXL,
//! from diffusers folders or original LDM single files, one file per block.

pub mod attention;
pub mod config;
pub mod down_blocks;
pub mod embeddings;
pub mod keys;
pub mod mid_block;
pub mod model;
pub mod resnet;
pub mod transformer;
pub mod up_blocks;

pub use config::{DownBlockType, MidBlockType, OneOrMany, UNet2DConditionConfig, UpBlockType};
pub use keys::{infer_ldm_config, infer_ldm_structure, is_ldm_unet, ldm_key_map};
pub use model::{AddedCondition, UNet2DConditionModel};

#[cfg(test)]
mod tests;
