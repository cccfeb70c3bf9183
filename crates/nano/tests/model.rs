//! The nano bundle is an ordinary FLUX pipeline folder: a tiny config trained a few steps is
//! exported, loaded by the FLUX pipeline (PixelSpace autoencoder, CLIP-only text path) and
//! sampled; the nano tokenizer covers every caption of the world; the judge round-trips.

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use dreamforge_core::export::module_tensors;
use dreamforge_models::dit::flux::FluxInputs;
use dreamforge_models::text::tokenizer::TextTokenizer;
use dreamforge_nano::judge::Judge;
use dreamforge_nano::judge_train::{load_judge, save_judge};
use dreamforge_nano::model::{NanoConfig, init, tokens, write_bundle};
use dreamforge_nano::pretrain::{PretrainConfig, Pretrainer, write_tokenizer};
use dreamforge_nano::{caption, sample_scene};
use dreamforge_pipeline::{ComponentOverrides, FluxComponents, FluxPipeline, FluxRequest};
use dreamforge_train::run::rngs;
use dreamforge_train::{OptimizerConfig, train_step};

#[test]
fn every_caption_fits_the_nano_tokenizer_without_unknown_words() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NanoConfig::default();
    write_tokenizer(dir.path(), &cfg).unwrap();
    let tok = TextTokenizer::load(dir.path()).unwrap();
    let max = cfg.max_tokens();
    let mut longest = 0;
    for seed in 0..3000 {
        let c = caption(&sample_scene(seed, None));
        assert!(tok.unknown_words(&c).is_empty(), "{c}");
        let e = tok.encode_batch(&[&c], max).unwrap();
        assert!(!e.truncated[0], "{c} is longer than {max} tokens");
        let n = e.attention_mask[0].iter().sum::<i64>() as usize;
        longest = longest.max(n);
        // <|startoftext|> words... <|endoftext|>, padded with <|endoftext|> (id 1)
        assert_eq!(e.ids[0][0], 0);
        assert_eq!(e.ids[0][n - 1], 1);
        assert!(e.ids[0][n..].iter().all(|&i| i == 1));
        assert!(
            e.ids[0][1..n - 1]
                .iter()
                .all(|&i| i > 2 && (i as usize) < tokens().len())
        );
    }
    assert!(longest >= 14, "captions reach {longest} tokens");
    assert_eq!(tok.unknown_words("a red dog, top left"), vec!["dog"]);
}

#[test]
fn a_trained_tiny_nano_model_exports_as_a_flux_pipeline_that_samples() {
    let d = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PretrainConfig::new(3);
    cfg.model = NanoConfig::tiny();
    cfg.batch_size = 4;
    write_tokenizer(&dir.path().join("tok"), &cfg.model).unwrap();
    let (mut model, keys) = init(&cfg.model, 0, &d).unwrap();
    let p = Pretrainer::new(cfg.clone(), &dir.path().join("tok"), &model, &d).unwrap();
    // The loss is a pure function of the streams.
    let a = p.loss(&model, &mut rngs(5, 6), &d).into_scalar::<f32>();
    let b = p.loss(&model, &mut rngs(5, 6), &d).into_scalar::<f32>();
    assert_eq!(a, b);
    assert!(a.is_finite() && a > 0.1, "{a}");
    let mut optim = OptimizerConfig::default().build();
    let mut r = rngs(1, 2);
    for _ in 0..3 {
        let (m, l) = train_step(model, &mut optim, 1e-3, |m| p.loss(m, &mut r, &d));
        model = m;
        assert!(l.unwrap().is_finite());
    }
    let bundle = dir.path().join("nano");
    write_bundle(&bundle, &cfg.model, &model, &keys, &HashMap::new()).unwrap();
    let comps = FluxComponents::resolve(&bundle, &ComponentOverrides::default()).unwrap();
    assert!(comps.text_encoder_2.is_none() && comps.tokenizer_2.is_none());
    let pipe = FluxPipeline::load(&comps, &Device::flex()).unwrap();
    assert_eq!(pipe.vae_scale_factor(), 2);
    assert_eq!(pipe.vae.native_size(), Some(16));
    // The loaded pipeline computes what the trained model computes.
    let trained = keys.transformer.export(&model.transformer).unwrap();
    assert_eq!(keys.transformer.export(&pipe.transformer).unwrap(), trained);
    let m = model.valid();
    let cpu = Device::flex();
    let ids = p
        .token_ids(
            &["a small red circle on a blue background, top left", ""],
            &cpu,
        )
        .unwrap();
    let (t_ref, t_got) = (
        m.text_encoder.forward(ids.clone()).unwrap(),
        pipe.text_encoder.forward(ids).unwrap(),
    );
    let close = |a: Tensor<3>, b: Tensor<3>| {
        let d = (a - b).abs().max().into_scalar::<f32>();
        assert!(d < 1e-5, "outputs differ by {d}");
    };
    close(t_ref.last_hidden_state.clone(), t_got.last_hidden_state);
    let x = Tensor::<3>::random(
        [2, 4, 48],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &cpu,
    );
    let inputs = |tr: &dreamforge_models::text::clip::ClipTextOutput| FluxInputs {
        hidden_states: x.clone(),
        encoder_hidden_states: tr.last_hidden_state.clone(),
        pooled_projections: tr.pooler_output.clone(),
        timestep: vec![0.3, 0.9],
        guidance: None,
    };
    let rope = pipe.transformer.rope(
        &[0.0; 48],
        &dreamforge_pipeline::latents::image_ids(2, 2),
        &cpu,
    );
    close(
        m.transformer.forward(inputs(&t_ref), &rope).unwrap(),
        pipe.transformer.forward(inputs(&t_ref), &rope).unwrap(),
    );
    let req = FluxRequest {
        prompt: "a small red circle on a blue background, top left".into(),
        negative_prompt: Some(String::new()),
        true_cfg_scale: 3.0,
        guidance: 0.0,
        steps: 3,
        width: 16,
        height: 16,
        num_images: 2,
        seed: 7,
        image_seeds: Vec::new(),
        max_sequence_length: 16,
        noise: None,
        init: None,
    };
    let out = pipe.generate(&req, |_| true).unwrap().unwrap();
    assert_eq!(out.images.shape, vec![2, 3, 16, 16]);
    assert!(out.images.data.iter().all(|v| v.is_finite()));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    // An unknown word is named in a warning.
    let out = pipe
        .generate(
            &FluxRequest {
                prompt: "a red dog".into(),
                num_images: 1,
                ..req
            },
            |_| true,
        )
        .unwrap()
        .unwrap();
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("dog") && w.contains("circle")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn the_judge_round_trips_through_safetensors_and_bad_files_are_named() {
    let d = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let j = Judge::new(&d);
    let p = dir.path().join("judge.safetensors");
    save_judge(&p, &j, &HashMap::new()).unwrap();
    let back = load_judge(&p, &d).unwrap();
    assert_eq!(module_tensors(&back), module_tensors(&j));
    std::fs::write(&p, b"not safetensors").unwrap();
    let e = load_judge(&p, &d).unwrap_err().to_string();
    assert!(e.contains("judge.safetensors"), "{e}");
    let e = load_judge(&dir.path().join("missing.safetensors"), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
}
