//! dreamforge-core: what every other crate stands on — run-time device selection, typed
//! errors, safetensors weights I/O with strict key accounting, deterministic noise, and image
//! output with embedded generation settings.

pub mod device;
pub mod error;
pub mod export;
pub mod image_io;
pub mod init;
pub mod noise;
pub mod weights;

pub use device::{DeviceSpec, select as select_device, test_device};
pub use error::{Error, Result};
pub use weights::{HostTensor, KeyMap, KeySource, SafetensorsFile, WeightLoader, WeightSet};

/// Reads a tensor back to the host as f32 (any float dtype on any device).
pub fn to_host<const D: usize>(t: burn::tensor::Tensor<D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after convert");
    HostTensor::new(shape, data)
}
