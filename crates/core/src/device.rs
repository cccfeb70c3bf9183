//! Run-time device selection among the backends compiled in (`flex` CPU always; `wgpu` and
//! `cuda` behind cargo features). Always construct devices here: Burn's `Device::default()`
//! prefers any GPU-ish backend that happens to be compiled in.

use burn::tensor::Device;

use crate::{Error, Result};

/// A device request as the user writes it: `cpu`, `wgpu[:N]`, `cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Wgpu(usize),
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let index = i.parse::<usize>().map_err(|_| {
                    Error::InvalidInput(format!("device `{s}`: index `{i}` is not a number"))
                })?;
                (n, Some(index))
            }
            None => (s, None),
        };
        match (name.to_ascii_lowercase().as_str(), index) {
            ("cpu" | "flex", None | Some(0)) => Ok(Self::Cpu),
            ("wgpu", i) => Ok(Self::Wgpu(i.unwrap_or(0))),
            ("cuda", i) => Ok(Self::Cuda(i.unwrap_or(0))),
            _ => Err(Error::InvalidInput(format!(
                "device `{s}`: expected cpu, wgpu[:N] or cuda[:N]"
            ))),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Wgpu(i) => write!(f, "wgpu:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The backends this binary was built with, for messages and `--help`.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Resolves a request to a Burn device, or explains why it is unavailable.
pub fn select(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::flex()),
        DeviceSpec::Wgpu(index) => wgpu_device(index),
        DeviceSpec::Cuda(index) => cuda_device(index),
    }
}

/// The device tests use: `DREAMFORGE_TEST_DEVICE` (same syntax as `--device`), default CPU.
pub fn test_device() -> Device {
    let spec = std::env::var("DREAMFORGE_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let spec: DeviceSpec = spec
        .parse()
        .unwrap_or_else(|e| panic!("DREAMFORGE_TEST_DEVICE: {e}"));
    select(spec).unwrap_or_else(|e| panic!("DREAMFORGE_TEST_DEVICE: {e}"))
}

#[cfg(feature = "wgpu")]
fn wgpu_device(index: usize) -> Result<Device> {
    let devices = Device::enumerate(burn::tensor::DeviceType::Wgpu);
    let n = devices.len();
    devices.into_iter().nth(index).ok_or_else(|| {
        Error::Device(format!(
            "wgpu:{index} requested but {n} wgpu adapter(s) found (is a Vulkan/Metal driver installed?)"
        ))
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_index: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "wgpu is not compiled into this binary (built with: {}); rebuild with `--features wgpu`",
        compiled_backends().join(", ")
    )))
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device> {
    let devices = Device::enumerate(burn::tensor::DeviceType::Cuda);
    let n = devices.len();
    devices.into_iter().nth(index).ok_or_else(|| {
        Error::Device(format!(
            "cuda:{index} requested but {n} CUDA device(s) found (is the NVIDIA driver loaded?)"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "cuda is not compiled into this binary (built with: {}); rebuild with `--features cuda` on a host with network access (see README)",
        compiled_backends().join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("wgpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu(0));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn uncompiled_backend_is_an_error_not_a_panic() {
        let err = select(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("not compiled"), "{err}");
    }
}
