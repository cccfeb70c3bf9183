//! Bad-input tests for the T5 encoder loader and forward (numerics are pinned by the
//! `t5_encoder` parity fixtures).

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};

use dreamforge_core::{Error, test_device};

use super::{T5Config, T5Encoder};

/// Writes an F32 safetensors file by hand (no extra dev-dependency).
fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let start = data.len();
        for j in 0..n {
            data.extend_from_slice(&(((i * 31 + j * 7) % 13) as f32 * 0.01 + 0.5).to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

fn tiny_config() -> T5Config {
    T5Config {
        vocab_size: 10,
        d_model: 8,
        d_kv: 4,
        d_ff: 12,
        num_layers: 2,
        num_heads: 2,
        relative_attention_num_buckets: 8,
        relative_attention_max_distance: 16,
        feed_forward_proj: "gated-gelu".into(),
        ..T5Config::default()
    }
}

/// Key → shape for a checkpoint of `cfg` (PyTorch layouts), with the embedding under `embed`.
fn keys(cfg: &T5Config, embed: &[&str]) -> Vec<(String, Vec<usize>)> {
    let (d, inner, ff) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff);
    let mut k: Vec<(String, Vec<usize>)> = embed
        .iter()
        .map(|e| (e.to_string(), vec![cfg.vocab_size, d]))
        .collect();
    for i in 0..cfg.num_layers {
        let p = format!("encoder.block.{i}.layer");
        for n in ["q", "k", "v"] {
            k.push((format!("{p}.0.SelfAttention.{n}.weight"), vec![inner, d]));
        }
        k.push((format!("{p}.0.SelfAttention.o.weight"), vec![d, inner]));
        if i == 0 {
            k.push((
                format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                vec![cfg.relative_attention_num_buckets, cfg.num_heads],
            ));
        }
        k.push((format!("{p}.0.layer_norm.weight"), vec![d]));
        k.push((format!("{p}.1.DenseReluDense.wi_0.weight"), vec![ff, d]));
        k.push((format!("{p}.1.DenseReluDense.wi_1.weight"), vec![ff, d]));
        k.push((format!("{p}.1.DenseReluDense.wo.weight"), vec![d, ff]));
        k.push((format!("{p}.1.layer_norm.weight"), vec![d]));
    }
    k.push(("encoder.final_layer_norm.weight".into(), vec![d]));
    k
}

/// A fresh folder with `config.json` (from `cfg`) and `model.safetensors` (from `tensors`).
fn folder(name: &str, cfg: &T5Config, tensors: &[(String, Vec<usize>)]) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("dreamforge_t5_test_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
    write_safetensors(&dir.join("model.safetensors"), tensors);
    dir
}

fn ids(v: Vec<i64>, shape: [usize; 2]) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v, shape), &test_device())
}

#[test]
fn t5_loads_with_either_or_both_embedding_keys() {
    let cfg = tiny_config();
    for (name, embed) in [
        ("shared", vec!["shared.weight"]),
        ("embed_tokens", vec!["encoder.embed_tokens.weight"]),
        ("both", vec!["shared.weight", "encoder.embed_tokens.weight"]),
    ] {
        let dir = folder(name, &cfg, &keys(&cfg, &embed));
        let m = T5Encoder::load(&dir, &test_device()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let y = m
            .try_forward(
                ids(vec![1, 2, 3, 0, 4, 5, 0, 0], [2, 4]),
                Some(ids(vec![1, 1, 1, 1, 1, 1, 0, 0], [2, 4])),
            )
            .unwrap();
        assert_eq!(y.dims(), [2, 4, 8]);
        let v = y
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite output");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn t5_d_model_mismatch_is_a_shape_error_naming_the_key() {
    let weights = tiny_config();
    let mut cfg = tiny_config();
    cfg.d_model = 16;
    let dir = folder("dmodel", &cfg, &keys(&weights, &["shared.weight"]));
    match T5Encoder::load(&dir, &test_device()) {
        Err(Error::ShapeMismatch {
            key,
            expected,
            found,
            ..
        }) => {
            assert_eq!(key, "shared.weight");
            assert_eq!(expected, vec![10, 16]);
            assert_eq!(found, vec![10, 8]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn t5_missing_embedding_is_a_missing_key() {
    let cfg = tiny_config();
    let dir = folder("noembed", &cfg, &keys(&cfg, &[]));
    match T5Encoder::load(&dir, &test_device()) {
        Err(Error::MissingKey { key, hint, .. }) => {
            assert_eq!(key, "shared.weight");
            assert!(hint.unwrap().contains("encoder.embed_tokens.weight"));
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn t5_unused_keys_fail_but_decoder_keys_are_ignored() {
    let cfg = tiny_config();
    let mut k = keys(&cfg, &["shared.weight"]);
    k.push(("decoder.final_layer_norm.weight".into(), vec![8]));
    let dir = folder("decoder", &cfg, &k);
    T5Encoder::load(&dir, &test_device()).expect("decoder keys are ignored like upstream");
    k.push((
        "encoder.block.0.layer.0.SelfAttention.q.bias".into(),
        vec![8],
    ));
    let dir2 = folder("unused", &cfg, &k);
    match T5Encoder::load(&dir2, &test_device()) {
        Err(Error::UnusedKeys { examples, .. }) => {
            assert_eq!(
                examples,
                vec!["encoder.block.0.layer.0.SelfAttention.q.bias".to_string()]
            );
        }
        other => panic!("expected UnusedKeys, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn t5_non_gated_config_wants_wi() {
    // Gated weights under a `relu` (non-gated) config: `wi` is missing.
    let weights = tiny_config();
    let mut cfg = tiny_config();
    cfg.feed_forward_proj = "relu".into();
    let dir = folder("relu", &cfg, &keys(&weights, &["shared.weight"]));
    match T5Encoder::load(&dir, &test_device()) {
        Err(Error::MissingKey { key, .. }) => {
            assert_eq!(key, "encoder.block.0.layer.1.DenseReluDense.wi.weight")
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn t5_bad_config_and_bad_inputs_are_errors() {
    let mut cfg = tiny_config();
    cfg.feed_forward_proj = "gated-gelu-x".into();
    assert!(cfg.validate().is_err());
    cfg.feed_forward_proj = "gated-mystery".into();
    assert!(cfg.validate().is_err());
    let mut cfg = tiny_config();
    cfg.relative_attention_num_buckets = 2;
    assert!(cfg.validate().is_err());
    let dir = folder("badcfg", &cfg, &keys(&tiny_config(), &["shared.weight"]));
    assert!(matches!(
        T5Encoder::load(&dir, &test_device()),
        Err(Error::Config { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);

    let cfg = tiny_config();
    let dir = folder("badids", &cfg, &keys(&cfg, &["shared.weight"]));
    let m = T5Encoder::load(&dir, &test_device()).unwrap();
    assert!(matches!(
        m.try_forward(ids(vec![1, 10], [1, 2]), None),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        m.try_forward(ids(vec![1, -1], [1, 2]), None),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        m.try_forward(ids(vec![1, 2], [1, 2]), Some(ids(vec![1, 1, 1], [1, 3]))),
        Err(Error::InvalidInput(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn t5_config_defaults_and_activation() {
    let c: T5Config =
        serde_json::from_str(r#"{"feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu"}"#)
            .unwrap();
    assert_eq!(c.d_model, 512);
    assert_eq!(c.relative_attention_num_buckets, 32);
    // `gated-gelu` is gated gelu_new (tanh) whatever `dense_act_fn` says, as upstream.
    assert_eq!(
        c.feed_forward().unwrap(),
        (true, super::T5Activation::GeluTanh)
    );
    let c: T5Config = serde_json::from_str("{}").unwrap();
    assert_eq!(
        c.feed_forward().unwrap(),
        (false, super::T5Activation::Relu)
    );
}
