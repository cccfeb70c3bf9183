//! Adapters at sampling time through the FLUX pipeline, on a tiny nano bundle: a LoRA file
//! changes the samples, strength 0 or no adapters give back the base model exactly, a T-LoRA
//! file applies its rank mask per step (with `min_rank = rank` it equals the plain LoRA, with a
//! lower `min_rank` it does not), and layers the model does not have are reported.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::Device;
use dreamforge_adapters::file::META_KEY;
use dreamforge_adapters::{AdapterFile, FileAdapter, LayerWeights};
use dreamforge_core::HostTensor;
use dreamforge_nano::model::{NanoConfig, init, write_bundle};
use dreamforge_pipeline::{ComponentOverrides, FluxComponents, FluxPipeline, FluxRequest};

fn values(seed: u32, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 + 1).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503);
            ((h % 2000) as f32 / 1000.0 - 1.0) * scale
        })
        .collect()
}

fn layers(rank: usize) -> BTreeMap<String, LayerWeights> {
    let mut m = BTreeMap::new();
    // A fresh nano transformer is adaLN-Zero (modulations and the output projection are zero,
    // so its output is 0 whatever the attention does): adapt those too.
    for (i, (name, d_out)) in [
        ("transformer_blocks.0.attn.to_q", 16),
        ("transformer_blocks.0.attn.to_k", 16),
        ("transformer_blocks.0.attn.add_v_proj", 16),
        ("transformer_blocks.0.norm1.linear", 96),
        ("single_transformer_blocks.0.attn.to_v", 16),
        ("single_transformer_blocks.0.proj_mlp", 64),
        ("single_transformer_blocks.0.norm.linear", 48),
        ("norm_out.linear", 32),
        ("proj_out", 48),
    ]
    .into_iter()
    .enumerate()
    {
        m.insert(
            name.to_string(),
            LayerWeights {
                down: HostTensor::new(vec![rank, 16], values(2 * i as u32, rank * 16, 0.5)),
                up: HostTensor::new(
                    vec![d_out, rank],
                    values(2 * i as u32 + 1, d_out * rank, 0.5),
                ),
                alpha: None,
            },
        );
    }
    m
}

fn tlora_meta(min_rank: usize) -> HashMap<String, String> {
    HashMap::from([(
        META_KEY.to_string(),
        format!(
            r#"{{"method": "tlora", "rank": 2, "min_rank": {min_rank}, "rank_exponent": 1.0}}"#
        ),
    )])
}

#[test]
fn adapter_files_apply_at_sampling_and_tlora_masks_follow_the_steps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NanoConfig::tiny();
    let (model, keys) = init(&cfg, 3, &Device::flex()).unwrap();
    let bundle = dir.path().join("nano");
    write_bundle(&bundle, &cfg, &model, &keys, &HashMap::new()).unwrap();
    let comps = FluxComponents::resolve(&bundle, &ComponentOverrides::default()).unwrap();
    let mut pipe = FluxPipeline::load(&comps, &Device::flex()).unwrap();
    let req = FluxRequest {
        prompt: "a small red circle on a blue background, top left".into(),
        negative_prompt: Some(String::new()),
        true_cfg_scale: 2.0,
        guidance: 0.0,
        steps: 4,
        width: 16,
        height: 16,
        num_images: 1,
        seed: 7,
        image_seeds: Vec::new(),
        max_sequence_length: 16,
        noise: None,
        init: None,
    };
    let sample = |pipe: &FluxPipeline| pipe.generate(&req, |_| true).unwrap().unwrap().images.data;
    let base = sample(&pipe);

    let write = |name: &str, meta: HashMap<String, String>, extra: bool| {
        let mut l = layers(2);
        if extra {
            // A layer this model does not have (a file for a bigger model).
            let x = l["transformer_blocks.0.attn.to_q"].clone();
            l.insert("transformer_blocks.7.attn.to_q".into(), x);
        }
        let p = dir.path().join(name);
        AdapterFile::write_peft(&p, "transformer", &l, &meta).unwrap();
        AdapterFile::read(&p).unwrap()
    };
    let lora = write("lora.safetensors", HashMap::new(), true);
    let full = write("tlora_full.safetensors", tlora_meta(2), false);
    let masked = write("tlora.safetensors", tlora_meta(1), false);
    assert!(lora.schedule().is_none() && masked.schedule().is_some());

    let unmatched = pipe
        .set_adapters(&[FileAdapter {
            file: &lora,
            strength: 1.0,
        }])
        .unwrap();
    assert_eq!(
        unmatched,
        vec![vec![
            "transformer.transformer_blocks.7.attn.to_q".to_string()
        ]]
    );
    let with_lora = sample(&pipe);
    let diff = base
        .iter()
        .zip(&with_lora)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-3, "the LoRA changed nothing ({diff})");

    pipe.set_adapters(&[FileAdapter {
        file: &lora,
        strength: 0.0,
    }])
    .unwrap();
    assert_eq!(sample(&pipe), base, "strength 0 must give the base model");
    pipe.set_adapters(&[]).unwrap();
    assert_eq!(sample(&pipe), base, "no adapters must give the base model");

    // T-LoRA with min_rank = rank: every step at full rank, the plain LoRA exactly.
    pipe.set_adapters(&[FileAdapter {
        file: &full,
        strength: 1.0,
    }])
    .unwrap();
    assert_eq!(sample(&pipe), with_lora);
    // min_rank 1: early (noisy) steps use one rank component, so the samples differ.
    pipe.set_adapters(&[FileAdapter {
        file: &masked,
        strength: 1.0,
    }])
    .unwrap();
    let with_mask = sample(&pipe);
    let diff = with_lora
        .iter()
        .zip(&with_mask)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-4, "the rank mask changed nothing ({diff})");
}
