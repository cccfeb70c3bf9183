//! dreamforge-models: the model families, one folder each, one file per block, configs with
//! the upstream field names and weight-key maps beside the model they load.

pub mod checkpoint;
pub mod dit;
pub mod layers;
pub mod text;
pub mod unet;
pub mod vae;

#[cfg(test)]
mod test_util;
