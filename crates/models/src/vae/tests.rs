//! Unit tests for bad input: inconsistent configs, wrong-shaped and missing weights, legacy
//! attention key names.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use dreamforge_core::{Error, HostTensor, WeightSet, test_device, to_host};

use super::attention::legacy_attention_key_map;
use super::{AutoencoderKL, AutoencoderKlConfig};
use crate::test_util::write_tensors;

/// Writes tensors of the given shapes filled with a ramp.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let tensors: Vec<(String, HostTensor)> = tensors
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = (0..n).map(|i| i as f32 * 0.01).collect();
            (name.to_string(), HostTensor::new(shape.clone(), data))
        })
        .collect();
    write_tensors(path, &tensors);
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dreamforge-vae-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TINY: &str = r#"{"_class_name": "AutoencoderKL", "block_out_channels": [8, 16],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "norm_num_groups": 4}"#;

#[test]
fn defaults_match_diffusers() {
    let c = AutoencoderKlConfig::default();
    assert_eq!(c.latent_channels, 4);
    assert_eq!(c.scaling_factor, 0.18215);
    assert_eq!(c.shift_factor, None);
    assert!(c.use_quant_conv && c.use_post_quant_conv && c.mid_block_add_attention);
    let c = AutoencoderKlConfig::from_json(TINY).unwrap();
    assert_eq!(c.block_out_channels, vec![8, 16]);
}

#[test]
fn mismatched_block_lists_are_a_config_error() {
    let text = TINY.replace(
        r#""block_out_channels": [8, 16]"#,
        r#""block_out_channels": [8, 16, 16]"#,
    );
    let err = AutoencoderKlConfig::from_json(&text).unwrap_err();
    assert!(err.contains("same length"), "{err}");

    let d = temp_dir("mismatch");
    std::fs::write(d.join("config.json"), text).unwrap();
    write_safetensors(
        &d.join("diffusion_pytorch_model.safetensors"),
        &[("encoder.conv_in.weight", vec![8, 3, 3, 3])],
    );
    let err = AutoencoderKL::load(&d, &test_device()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn groups_must_divide_channels() {
    let text = TINY.replace(r#""norm_num_groups": 4"#, r#""norm_num_groups": 3"#);
    assert!(AutoencoderKlConfig::from_json(&text).is_err());
}

#[test]
fn wrong_shaped_weight_is_a_shape_mismatch() {
    let d = temp_dir("shape");
    std::fs::write(d.join("config.json"), TINY).unwrap();
    // conv_in must be [8, 3, 3, 3].
    write_safetensors(
        &d.join("diffusion_pytorch_model.safetensors"),
        &[
            ("encoder.conv_in.weight", vec![8, 4, 3, 3]),
            ("encoder.conv_in.bias", vec![8]),
        ],
    );
    match AutoencoderKL::load(&d, &test_device()) {
        Err(Error::ShapeMismatch {
            key,
            expected,
            found,
            ..
        }) => {
            assert_eq!(key, "encoder.conv_in.weight");
            assert_eq!(expected, vec![8, 3, 3, 3]);
            assert_eq!(found, vec![8, 4, 3, 3]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn missing_weight_is_named() {
    let d = temp_dir("missing");
    std::fs::write(d.join("config.json"), TINY).unwrap();
    write_safetensors(
        &d.join("diffusion_pytorch_model.safetensors"),
        &[
            ("encoder.conv_in.weight", vec![8, 3, 3, 3]),
            ("encoder.conv_in.bias", vec![8]),
        ],
    );
    match AutoencoderKL::load(&d, &test_device()) {
        Err(Error::MissingKey { key, .. }) => {
            assert_eq!(key, "encoder.down_blocks.0.resnets.0.norm1.weight")
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn legacy_attention_names_are_mapped() {
    let d = temp_dir("legacy");
    let f = d.join("w.safetensors");
    write_safetensors(
        &f,
        &[
            ("decoder.mid_block.attentions.0.query.weight", vec![4, 4]),
            ("decoder.mid_block.attentions.0.proj_attn.bias", vec![4]),
            ("decoder.mid_block.resnets.0.conv1.weight", vec![4, 4, 3, 3]),
        ],
    );
    let set = WeightSet::open(&f).unwrap();
    let map = legacy_attention_key_map(&set);
    assert_eq!(map.len(), 2);
    assert_eq!(
        map["decoder.mid_block.attentions.0.to_q.weight"].key,
        "decoder.mid_block.attentions.0.query.weight"
    );
    assert_eq!(
        map["decoder.mid_block.attentions.0.to_out.0.bias"].key,
        "decoder.mid_block.attentions.0.proj_attn.bias"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The committed SD-layout parity fixture (its weights are F16 on disk).
fn sd_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/autoencoder_kl_sd_tiny")
}

#[test]
fn legacy_checkpoint_decodes_like_current_one() {
    let device = test_device();
    let src = sd_fixture();
    let set = WeightSet::open(&src).unwrap();
    let legacy: Vec<(String, HostTensor)> = set
        .keys()
        .into_iter()
        .map(|k| {
            let t = set.read_f32(k).unwrap();
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, t)
        })
        .collect();
    assert!(
        legacy
            .iter()
            .any(|(k, _)| k.ends_with("attentions.0.proj_attn.weight"))
    );
    let d = temp_dir("legacy_e2e");
    std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    write_tensors(&d.join("diffusion_pytorch_model.safetensors"), &legacy);

    let current = AutoencoderKL::load(&src, &device).unwrap();
    let old = AutoencoderKL::load(&d, &device).unwrap();
    let z = Tensor::<4>::from_data(
        burn::tensor::TensorData::new(
            (0..4 * 3 * 5)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<f32>>(),
            [1, 4, 3, 5],
        ),
        &device,
    );
    let a = to_host(current.decode(z.clone()));
    let b = to_host(old.decode(z));
    assert_eq!(a.shape, vec![1, 3, 6, 10]);
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn unused_weight_is_an_error_and_latent_scaling_round_trips() {
    let device = test_device();
    let src = sd_fixture();
    let set = WeightSet::open(&src).unwrap();
    let mut tensors: Vec<(String, HostTensor)> = set
        .keys()
        .into_iter()
        .map(|k| (k.to_string(), set.read_f32(k).unwrap()))
        .collect();
    tensors.push((
        "encoder.extra.weight".into(),
        HostTensor::new(vec![2], vec![1.0, 2.0]),
    ));
    let d = temp_dir("unused");
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let cfg = cfg.replace(r#""shift_factor": null"#, r#""shift_factor": 0.25"#);
    std::fs::write(d.join("config.json"), &cfg).unwrap();
    write_tensors(&d.join("diffusion_pytorch_model.safetensors"), &tensors);
    match AutoencoderKL::load(&d, &device) {
        Err(Error::UnusedKeys { examples, .. }) => {
            assert_eq!(examples, vec!["encoder.extra.weight".to_string()])
        }
        other => panic!("expected UnusedKeys, got {other:?}"),
    }

    tensors.pop();
    write_tensors(&d.join("diffusion_pytorch_model.safetensors"), &tensors);
    let m = AutoencoderKL::load(&d, &device).unwrap();
    assert_eq!(m.config.shift_factor, Some(0.25));
    let z = Tensor::<4>::from_data(
        burn::tensor::TensorData::new(vec![1.0f32, -2.0], [1, 1, 1, 2]),
        &device,
    );
    let s = to_host(m.scale_latents(z.clone()));
    let k = m.config.scaling_factor as f32;
    assert!((s.data[0] - 0.75 * k).abs() < 1e-6 && (s.data[1] + 2.25 * k).abs() < 1e-6);
    let back = to_host(m.unscale_latents(m.scale_latents(z)));
    assert!((back.data[0] - 1.0).abs() < 1e-5 && (back.data[1] + 2.0).abs() < 1e-5);
    let _ = std::fs::remove_dir_all(&d);
}
