//! End-to-end tests of `dreamforge sample` on the Stable Diffusion family and of img2img /
//! inpainting on both families: diffusers' images reproduced through the CLI (auto-detected
//! family, given noise, init PNGs), every sampler, PNG metadata, and the bad-input paths (one
//! `error:` line naming the file and the problem, exit 1, nothing written).

mod common;

use std::path::Path;

use common::{
    assert_fails, fixtures, golden_tensor, max_level_diff, png_files, read_png, run, stderr,
    write_golden_tensor,
};

fn fx(name: &str) -> String {
    fixtures().join(name).to_string_lossy().into_owned()
}

fn sample(model: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut v = vec![
        "sample",
        "--model",
        model,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    v.extend_from_slice(extra);
    run(&v)
}

/// Runs a golden case of a pipeline fixture through the CLI and compares the PNG with
/// diffusers' image (within one 8-bit level).
fn reproduce(fixture: &str, case: usize, noise_key: &str, args: &[&str]) {
    reproduce_from(&fx(fixture), fixture, case, noise_key, args)
}

/// As [`reproduce`] with another `--model` (e.g. the fixture's single-file checkpoint).
fn reproduce_from(model: &str, fixture: &str, case: usize, noise_key: &str, args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.safetensors");
    write_golden_tensor(fixture, &format!("case{case}.{noise_key}"), &noise);
    let out = dir.path().join("o");
    let mut extra = vec!["--noise", noise.to_str().unwrap(), "--seed", "0"];
    extra.extend_from_slice(args);
    let o = sample(model, &out, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let files = png_files(&out);
    assert_eq!(files.len(), 1);
    let (w, h, px, text) = read_png(&files[0]);
    let (shape, golden) = golden_tensor(fixture, &format!("case{case}.image"));
    assert_eq!(shape, vec![1, 3, h, w]);
    let worst = max_level_diff(&px, &golden, 0, h, w);
    assert!(
        worst <= 1,
        "{fixture} case {case}: max pixel difference {worst}"
    );
    assert!(text.iter().any(|(k, _)| k == "parameters"));
}

#[test]
fn sd_text_to_image_img2img_and_inpainting_reproduce_diffusers() {
    let sd = "sd_pipeline_tiny";
    let init = fixtures().join(sd).join("init.png");
    let mask = fixtures().join(sd).join("mask.png");
    let (init, mask) = (init.to_str().unwrap(), mask.to_str().unwrap());
    // Text-to-image with a negative prompt, the folder's scheduler (DPM++ 2M).
    reproduce(
        sd,
        0,
        "latents",
        &[
            "--prompt",
            "a photo of a cat",
            "--negative-prompt",
            "blurry",
            "--guidance",
            "7.5",
            "--steps",
            "3",
            "--width",
            "32",
            "--height",
            "32",
        ],
    );
    // img2img, Euler, strength 0.7; the size comes from the init image.
    reproduce(
        sd,
        4,
        "noise",
        &[
            "--prompt",
            "oil painting of mountains at sunset",
            "--guidance",
            "7",
            "--steps",
            "3",
            "--sampler",
            "euler",
            "--init-image",
            init,
            "--strength",
            "0.7",
        ],
    );
    // Inpainting with a plain UNet (latent blending), full strength.
    reproduce(
        sd,
        6,
        "noise",
        &[
            "--prompt",
            "a small yellow star and a green square",
            "--guidance",
            "7.5",
            "--steps",
            "3",
            "--sampler",
            "euler",
            "--init-image",
            init,
            "--mask",
            mask,
        ],
    );
    // A 9-channel inpainting UNet.
    reproduce(
        "sd_inpaint_pipeline_tiny",
        0,
        "noise",
        &[
            "--prompt",
            "a small yellow star and a green square",
            "--guidance",
            "7.5",
            "--steps",
            "3",
            "--init-image",
            init,
            "--mask",
            mask,
        ],
    );
}

#[test]
fn single_file_checkpoints_reproduce_the_diffusers_folder_images() {
    // The fixture folders hold the same weights as one original-layout file each; with the
    // folder as --components (configs, tokenizers, scheduler) the images are diffusers'.
    let sd = fixtures().join("sd_pipeline_tiny/sd_tiny_ldm.safetensors");
    reproduce_from(
        sd.to_str().unwrap(),
        "sd_pipeline_tiny",
        0,
        "latents",
        &[
            "--components",
            &fx("sd_pipeline_tiny"),
            "--prompt",
            "a photo of a cat",
            "--negative-prompt",
            "blurry",
            "--guidance",
            "7.5",
            "--steps",
            "3",
            "--width",
            "32",
            "--height",
            "32",
        ],
    );
    let xl = fixtures().join("sdxl_pipeline_tiny/sdxl_tiny_sgm.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.safetensors");
    write_golden_tensor("sdxl_pipeline_tiny", "case1.latents", &noise);
    let out = dir.path().join("o");
    let o = sample(
        xl.to_str().unwrap(),
        &out,
        &[
            "--components",
            &fx("sdxl_pipeline_tiny"),
            "--prompt",
            "portrait of an astronaut, studio light",
            "--negative-prompt",
            "blurry",
            "--guidance",
            "6",
            "--clip-skip",
            "1",
            "--sampler",
            "dpmpp-2m-karras",
            "--num-images",
            "2",
            "--width",
            "32",
            "--height",
            "24",
            "--steps",
            "3",
            "--noise",
            noise.to_str().unwrap(),
            "--seed",
            "0",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, golden) = golden_tensor("sdxl_pipeline_tiny", "case1.image");
    let files = png_files(&out);
    assert_eq!(files.len(), 2);
    for (i, f) in files.iter().enumerate() {
        let (w, h, px, _) = read_png(f);
        assert_eq!((w, h), (32, 24));
        let worst = max_level_diff(&px, &golden, i, h, w);
        assert!(worst <= 1, "SDXL single file image {i}: {worst}");
    }
}

#[test]
fn flux_img2img_and_inpainting_reproduce_diffusers() {
    let f = "flux_pipeline_tiny";
    let init = fixtures().join(f).join("init.png");
    let mask = fixtures().join(f).join("mask.png");
    let (init, mask) = (init.to_str().unwrap(), mask.to_str().unwrap());
    reproduce(
        f,
        2,
        "noise",
        &[
            "--prompt",
            "oil painting of mountains at sunset",
            "--guidance",
            "3.5",
            "--steps",
            "4",
            "--max-sequence-length",
            "16",
            "--init-image",
            init,
            "--strength",
            "0.6",
        ],
    );
    reproduce(
        f,
        3,
        "noise",
        &[
            "--prompt",
            "a small yellow star and a green square",
            "--guidance",
            "2",
            "--steps",
            "3",
            "--max-sequence-length",
            "16",
            "--init-image",
            init,
            "--mask",
            mask,
            "--strength",
            "0.8",
        ],
    );
}

#[test]
fn every_sampler_runs_on_sd_and_sdxl_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let names = [
        ("ddim", "DDIM"),
        ("euler", "Euler"),
        ("euler-a", "Euler a"),
        ("dpmpp-2m", "DPM++ 2M"),
        ("dpmpp-2m-karras", "DPM++ 2M Karras"),
    ];
    for (i, (name, a1111)) in names.iter().enumerate() {
        let seed = format!("{}", 100 + i);
        let o = sample(
            &fx("sd_pipeline_tiny"),
            &out,
            &[
                "--prompt",
                "a cat",
                "--sampler",
                name,
                "--steps",
                "3",
                "--width",
                "24",
                "--height",
                "16",
                "--seed",
                &seed,
                "--clip-skip",
                "1",
                "--guidance-rescale",
                "0.5",
            ],
        );
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let f = out.join(format!("{i:05}-{seed}.png"));
        let (w, h, px, text) = read_png(&f);
        assert_eq!((w, h), (24, 16));
        assert!(px.iter().any(|&v| v != px[0]), "{name}: flat image");
        let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
        assert!(
            params.contains(&format!("Sampler: {a1111},")) && params.contains("Clip skip: 2"),
            "{params}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&text.iter().find(|(k, _)| k == "dreamforge").unwrap().1).unwrap();
        assert_eq!(json["sampler"], *name);
        assert_eq!(json["family"], "sd");
    }
    // Euler ancestral draws fresh noise per step from the seed: reproducible.
    let again = dir.path().join("again");
    let o = sample(
        &fx("sd_pipeline_tiny"),
        &again,
        &[
            "--prompt",
            "a cat",
            "--sampler",
            "euler-a",
            "--steps",
            "3",
            "--width",
            "24",
            "--height",
            "16",
            "--seed",
            "102",
            "--clip-skip",
            "1",
            "--guidance-rescale",
            "0.5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_png(&png_files(&again)[0]).2,
        read_png(&out.join("00002-102.png")).2
    );
    // SDXL with its scheduler's default sampler and the UNet's native size (sample_size × 2).
    let o = sample(
        &fx("sdxl_pipeline_tiny"),
        &out,
        &["--prompt", "a cat", "--steps", "2", "--seed", "9"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (w, h, _, text) = read_png(&out.join("00005-9.png"));
    assert_eq!((w, h), (32, 32));
    let json: serde_json::Value =
        serde_json::from_str(&text.iter().find(|(k, _)| k == "dreamforge").unwrap().1).unwrap();
    assert_eq!(
        (json["family"].as_str(), json["sampler"].as_str()),
        (Some("sdxl"), Some("euler"))
    );
}

#[test]
fn bad_sampler_strength_and_flag_combinations_are_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let sd = fx("sd_pipeline_tiny");
    let init = fixtures().join("sd_pipeline_tiny/init.png");
    let init = init.to_str().unwrap();
    let o = sample(&sd, &out, &["--prompt", "a cat", "--sampler", "lms"]);
    assert_fails(
        &o,
        1,
        &[
            "unknown sampler `lms`",
            "ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras",
        ],
    );
    for bad in ["0", "1.5", "-0.2", "nan"] {
        let flag = format!("--strength={bad}");
        let o = sample(
            &sd,
            &out,
            &["--prompt", "a cat", "--init-image", init, &flag],
        );
        assert_fails(&o, 1, &["--strength must be in (0, 1]"]);
    }
    let o = sample(&sd, &out, &["--prompt", "a cat", "--strength", "0.5"]);
    assert_fails(&o, 1, &["--strength needs an --init-image"]);
    let o = sample(&sd, &out, &["--prompt", "a cat", "--mask", init]);
    assert_fails(&o, 1, &["--mask needs an --init-image"]);
    // Flags of the other family say which family the model is.
    let o = sample(&sd, &out, &["--prompt", "a cat", "--true-cfg", "3"]);
    assert_fails(
        &o,
        1,
        &["--true-cfg", "Stable Diffusion", "sd_pipeline_tiny"],
    );
    let o = sample(
        &fx("flux_pipeline_tiny"),
        &out,
        &["--prompt", "a cat", "--sampler", "ddim"],
    );
    assert_fails(&o, 1, &["--sampler", "FLUX.1", "flux_pipeline_tiny"]);
    // Too few steps for the strength: no denoising step would run.
    let o = sample(
        &sd,
        &out,
        &[
            "--prompt",
            "a cat",
            "--init-image",
            init,
            "--strength",
            "0.2",
            "--steps",
            "3",
        ],
    );
    assert_fails(
        &o,
        1,
        &["--strength 0.2 with 3 steps runs no denoising step"],
    );
    assert!(png_files(&out).is_empty());
}

#[test]
fn bad_init_images_and_masks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let sd = fx("sd_pipeline_tiny");
    // Unreadable / truncated init image.
    let garbage = dir.path().join("photo.png");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let o = sample(
        &sd,
        &out,
        &[
            "--prompt",
            "a cat",
            "--init-image",
            garbage.to_str().unwrap(),
        ],
    );
    assert_fails(&o, 1, &["photo.png", "not a readable image"]);
    let missing = dir.path().join("missing.jpg");
    let o = sample(
        &sd,
        &out,
        &[
            "--prompt",
            "a cat",
            "--init-image",
            missing.to_str().unwrap(),
        ],
    );
    assert_fails(&o, 1, &["missing.jpg", "No such file"]);
    // A mask whose size differs from the init image.
    let init = fixtures().join("sd_pipeline_tiny/init.png");
    let small = dir.path().join("small_mask.png");
    image::GrayImage::from_pixel(16, 8, image::Luma([255]))
        .save(&small)
        .unwrap();
    let o = sample(
        &sd,
        &out,
        &[
            "--prompt",
            "a cat",
            "--init-image",
            init.to_str().unwrap(),
            "--mask",
            small.to_str().unwrap(),
        ],
    );
    assert_fails(&o, 1, &["small_mask.png", "16x8", "32x32", "same size"]);
    assert!(png_files(&out).is_empty());
    // An init image of another size is resized to the requested size, with a notice.
    let o = run(&[
        "sample",
        "--model",
        &sd,
        "--out",
        out.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--init-image",
        init.to_str().unwrap(),
        "--width",
        "48",
        "--height",
        "40",
        "--steps",
        "2",
        "--strength",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("init.png: resized from 32x32 to 48x40"),
        "{}",
        stderr(&o)
    );
    let (w, h, _, _) = read_png(&png_files(&out)[0]);
    assert_eq!((w, h), (48, 40));
}

#[test]
fn wrong_family_components_and_incomplete_single_files_say_what_was_found() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    // A FLUX transformer with an SD pipeline as components.
    let bfl = fixtures().join("flux_transformer_schnell_bfl/flux1-tiny-schnell.safetensors");
    let o = sample(
        bfl.to_str().unwrap(),
        &out,
        &["--prompt", "a cat", "--components", &fx("sd_pipeline_tiny")],
    );
    assert_fails(
        &o,
        1,
        &[
            "sd_pipeline_tiny",
            "StableDiffusionPipeline",
            "FLUX.1 transformer",
        ],
    );
    // An SDXL UNet single file (LDM layout) with a FLUX pipeline as components.
    let ldm = fixtures().join("unet_sdxl_ldm_tiny/sdxl_tiny.safetensors");
    let o = sample(
        ldm.to_str().unwrap(),
        &out,
        &[
            "--prompt",
            "a cat",
            "--components",
            &fx("flux_pipeline_tiny"),
        ],
    );
    assert_fails(
        &o,
        1,
        &[
            "flux_pipeline_tiny",
            "FluxPipeline",
            "Stable Diffusion checkpoint",
        ],
    );
    // The same single file alone: it carries no VAE, and says so.
    let cfg = fixtures().join("unet_sdxl_ldm_tiny/config.json");
    let o = sample(
        ldm.to_str().unwrap(),
        &out,
        &["--prompt", "a cat", "--config", cfg.to_str().unwrap()],
    );
    assert_fails(&o, 1, &["sdxl_tiny.safetensors", "no VAE", "--vae"]);
    // A file that is neither family.
    let golden = fixtures().join("sd_pipeline_tiny/golden.safetensors");
    let o = sample(golden.to_str().unwrap(), &out, &["--prompt", "a cat"]);
    assert_fails(&o, 1, &["golden.safetensors", "found"]);
    assert!(png_files(&out).is_empty());
}

/// A kohya-named LoRA (`lora_unet_…` on diffusers module names, `lora_te_…`) with one layer per
/// `(name, d_in, d_out)`, rank 2, alpha 4.
fn kohya_lora(path: &Path, layers: &[(&str, usize, usize)]) {
    use dreamforge_adapters::{AdapterFile, LayerWeights};
    use dreamforge_core::HostTensor;
    let vals = |n: usize, s: u32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 + 1).wrapping_mul(2_654_435_761) ^ s;
                ((h % 2000) as f32 / 1000.0 - 1.0) * 0.5
            })
            .collect()
    };
    let map = layers
        .iter()
        .enumerate()
        .map(|(k, (name, d_in, d_out))| {
            (
                name.to_string(),
                LayerWeights {
                    down: HostTensor::new(vec![2, *d_in], vals(2 * d_in, 1 + k as u32)),
                    up: HostTensor::new(vec![*d_out, 2], vals(2 * d_out, 7 + k as u32)),
                    alpha: Some(4.0),
                },
            )
        })
        .collect();
    AdapterFile::write_kohya(path, &map, &Default::default()).unwrap();
}

#[test]
fn sd_sampling_applies_unet_and_text_encoder_loras() {
    let dir = tempfile::tempdir().unwrap();
    let model = fx("sd_pipeline_tiny");
    let args = [
        "--prompt", "a cat", "--seed", "3", "--steps", "3", "--width", "32", "--height", "32",
    ];
    let render = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut v = args.to_vec();
        v.extend_from_slice(extra);
        let o = sample(&model, &out, &v);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        (read_png(&png_files(&out)[0]), stderr(&o))
    };
    let (base, _) = render("base", &[]);
    let unet = dir.path().join("unet.safetensors");
    kohya_lora(
        &unet,
        &[
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                8,
                8,
            ),
            ("lora_unet_down_blocks_0_attentions_0_proj_in", 8, 8),
            ("lora_unet_not_a_module", 8, 8),
        ],
    );
    let te = dir.path().join("te.safetensors");
    kohya_lora(
        &te,
        &[(
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            16,
            16,
        )],
    );
    let differs = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let (with_unet, err) = render("unet", &["--lora", unet.to_str().unwrap()]);
    assert!(
        differs(&base.2, &with_unet.2) > 0,
        "the UNet LoRA changes the image"
    );
    assert!(
        err.contains("1 of its 3 layers match no weight") && err.contains("lora_unet_not_a_module"),
        "{err}"
    );
    let (with_te, _) = render("te", &["--lora", &format!("{}:0.8", te.display())]);
    assert!(
        differs(&base.2, &with_te.2) > 0,
        "the text-encoder LoRA changes the image"
    );
    // Strength 0 is the base model.
    let (zero, _) = render("zero", &["--lora", &format!("{}:0", unet.display())]);
    assert_eq!(zero.2, base.2);
    // A layer whose shape does not fit names the layer and both shapes.
    let bad = dir.path().join("bad.safetensors");
    kohya_lora(
        &bad,
        &[(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            9,
            8,
        )],
    );
    let o = sample(
        &model,
        &dir.path().join("bad"),
        &[&args[..], &["--lora", bad.to_str().unwrap()]].concat(),
    );
    assert_fails(&o, 1, &["bad.safetensors", "attn1_to_q", "does not fit"]);
    // An adapter for another family (a FLUX LoRA) matches nothing here: refused, named.
    let flux_lora = fixtures().join("lora_flux_peft/pytorch_lora_weights.safetensors");
    let o = sample(
        &model,
        &dir.path().join("flux"),
        &[&args[..], &["--lora", flux_lora.to_str().unwrap()]].concat(),
    );
    assert_fails(
        &o,
        1,
        &["pytorch_lora_weights.safetensors", "none of its 28 layers"],
    );
}

#[test]
fn sd_lora_convert_round_trips_give_the_same_images() {
    let dir = tempfile::tempdir().unwrap();
    let model = fx("sd_pipeline_tiny");
    let kohya = dir.path().join("kohya.safetensors");
    kohya_lora(
        &kohya,
        &[
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
                16,
                8,
            ),
            ("lora_unet_up_blocks_1_attentions_0_proj_out", 8, 8),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1", 16, 32),
        ],
    );
    let render = |name: &str, lora: &Path| {
        let out = dir.path().join(name);
        let args = [
            "--prompt",
            "a cat",
            "--seed",
            "3",
            "--steps",
            "3",
            "--width",
            "32",
            "--height",
            "32",
            "--lora",
            lora.to_str().unwrap(),
        ];
        let o = sample(&model, &out, &args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        read_png(&png_files(&out)[0]).2
    };
    let want = render("kohya", &kohya);
    let convert = |from: &Path, to: &str, out: &Path| {
        let o = run(&[
            "lora",
            "convert",
            from.to_str().unwrap(),
            "--to",
            to,
            "--out",
            out.to_str().unwrap(),
            "--model",
            &model,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let peft = dir.path().join("peft.safetensors");
    convert(&kohya, "peft", &peft);
    let f = dreamforge_adapters::AdapterFile::read(&peft).unwrap();
    assert!(
        f.layers
            .contains_key("unet.up_blocks.1.attentions.0.proj_out")
    );
    assert!(
        f.layers
            .contains_key("text_encoder.text_model.encoder.layers.0.mlp.fc1")
    );
    assert_eq!(render("peft", &peft), want);
    let back = dir.path().join("back.safetensors");
    convert(&peft, "kohya", &back);
    assert_eq!(render("back", &back), want);
    // Without the model, an SD file's names cannot be resolved: say so.
    let o = run(&[
        "lora",
        "convert",
        kohya.to_str().unwrap(),
        "--to",
        "peft",
        "--out",
        dir.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert_fails(&o, 1, &["kohya.safetensors", "--model"]);
}

#[test]
fn sd_lora_merge_writes_a_folder_that_renders_like_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = fx("sd_pipeline_tiny");
    let lora = dir.path().join("lora.safetensors");
    kohya_lora(
        &lora,
        &[
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                8,
                8,
            ),
            ("lora_unet_down_blocks_0_attentions_0_proj_in", 8, 8),
            (
                "lora_te_text_model_encoder_layers_0_self_attn_v_proj",
                16,
                16,
            ),
        ],
    );
    let args = [
        "--prompt", "a cat", "--seed", "3", "--steps", "3", "--width", "32", "--height", "32",
    ];
    let render = |name: &str, model: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let o = sample(model, &out, &[&args[..], extra].concat());
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        read_png(&png_files(&out)[0]).2
    };
    let want = render("lora", &model, &["--lora", lora.to_str().unwrap()]);
    let merged = dir.path().join("merged");
    let o = run(&[
        "lora",
        "merge",
        "--model",
        &model,
        "--lora",
        lora.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("unet, text_encoder"), "{}", stderr(&o));
    let got = render("merged", merged.to_str().unwrap(), &[]);
    let worst = common::max_byte_diff(&got, &want);
    assert!(
        worst <= 1,
        "the merged folder differs from the adapter by {worst} levels"
    );
    let base = render("base", &model, &[]);
    assert!(base.iter().zip(&want).any(|(a, b)| a != b));
}
