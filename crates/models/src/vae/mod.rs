//! AutoencoderKL (diffusers `AutoencoderKL`): the SD/SDXL 4-channel and FLUX 16-channel image
//! autoencoders, one file per block.

pub mod attention;
pub mod autoencoder;
pub mod config;
pub mod conv;
pub mod decoder;
pub mod encoder;
pub mod keys;
pub mod mid_block;
pub mod model;
pub mod pixel;
pub mod resnet;
pub mod sampling;

pub use autoencoder::Autoencoder;
pub use config::AutoencoderKlConfig;
pub use model::AutoencoderKL;
pub use pixel::PixelSpaceConfig;

#[cfg(test)]
mod tests;
