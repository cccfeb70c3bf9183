//! End-to-end tests of the `dreamforge` binary on the committed tiny FLUX pipeline fixture:
//! reproducing diffusers' image from given latents, PNG metadata, and every bad-input path
//! (one-line error naming the file and problem, non-zero exit, nothing partial written).

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_fails, fixtures, png_files, run, stderr};

fn pipeline() -> std::path::PathBuf {
    fixtures().join("flux_pipeline_tiny")
}

/// Writes golden case 0's packed latents as a one-tensor safetensors file.
fn write_case0_latents(path: &Path) {
    let bytes = std::fs::read(pipeline().join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("case0.latents").unwrap();
    safetensors::serialize_to_file([("latents", t)], None, path).unwrap();
}

#[test]
fn sample_reproduces_diffusers_image_from_given_noise() {
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.safetensors");
    write_case0_latents(&noise);
    let out = dir.path().join("out");
    let o = run(&[
        "sample",
        "--model",
        pipeline().to_str().unwrap(),
        "--prompt",
        "a photo of a cat",
        "--steps",
        "3",
        "--guidance",
        "3.5",
        "--width",
        "32",
        "--height",
        "32",
        "--max-sequence-length",
        "16",
        "--noise",
        noise.to_str().unwrap(),
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let files = png_files(&out);
    assert_eq!(files.len(), 1);

    // Pixels equal diffusers' output_type="pt" image rounded to 8 bits (within one level).
    let bytes = std::fs::read(pipeline().join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let g = st.tensor("case0.image").unwrap();
    assert_eq!(g.shape(), &[1, 3, 32, 32]);
    let golden: Vec<f32> = g
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&files[0]).unwrap(),
    ));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    let plane = 32 * 32;
    let mut worst = 0i32;
    for c in 0..3 {
        for i in 0..plane {
            let want = (golden[c * plane + i] * 255.0).round() as i32;
            worst = worst.max((buf[i * 3 + c] as i32 - want).abs());
        }
    }
    assert!(worst <= 1, "max pixel difference {worst}");

    // Settings are embedded: A1111 parameters and the JSON chunk.
    let info = reader.info();
    let text: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    let params = &text
        .iter()
        .find(|(k, _)| k == "parameters")
        .expect("parameters chunk")
        .1;
    assert!(
        params.starts_with("a photo of a cat\nSteps: 3, Sampler: Euler (flow match)"),
        "{params}"
    );
    assert!(
        params.contains("Seed: 5")
            && params.contains("Size: 32x32")
            && params.contains("Distilled CFG Scale: 3.5")
    );
    let json: serde_json::Value = serde_json::from_str(
        &text
            .iter()
            .find(|(k, _)| k == "dreamforge")
            .expect("json chunk")
            .1,
    )
    .unwrap();
    assert_eq!(json["steps"], 3);
    assert_eq!(json["seed"], 5);
    assert_eq!(json["prompt"], "a photo of a cat");
}

#[test]
fn seeds_are_reproducible_and_images_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let args = |seed: &'static str| {
        vec![
            "sample".to_string(),
            "--model".into(),
            pipeline().to_string_lossy().into_owned(),
            "--prompt".into(),
            "a cat".into(),
            "--steps".into(),
            "2".into(),
            "--width".into(),
            "16".into(),
            "--height".into(),
            "16".into(),
            "--max-sequence-length".into(),
            "8".into(),
            "--seed".into(),
            seed.into(),
            "--num-images".into(),
            "2".into(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
            "--quiet".into(),
        ]
    };
    let a: Vec<String> = args("7");
    let o1 = Command::new(env!("CARGO_BIN_EXE_dreamforge"))
        .args(&a)
        .output()
        .unwrap();
    assert!(o1.status.success(), "{}", stderr(&o1));
    let o2 = Command::new(env!("CARGO_BIN_EXE_dreamforge"))
        .args(&a)
        .output()
        .unwrap();
    assert!(o2.status.success(), "{}", stderr(&o2));
    let files = png_files(&out);
    assert_eq!(files.len(), 4, "{files:?}");
    let read = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    // Run 1 image i and run 2 image i come from the same seed: identical pixels.
    assert_eq!(read(&files[0]), read(&files[2]));
    assert_eq!(read(&files[1]), read(&files[3]));
    assert_ne!(read(&files[0]), read(&files[1]), "image 2 uses seed + 1");
}

/// Common sample arguments; flags given in `extra` replace the defaults.
fn sample_args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let defaults = [
        ("--prompt", "a cat"),
        ("--steps", "1"),
        ("--width", "16"),
        ("--height", "16"),
        ("--max-sequence-length", "8"),
        ("--seed", "1"),
    ];
    let mut v = vec!["sample", "--model", model, "--out", out, "--quiet"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            v.extend([flag, value]);
        }
    }
    v.extend_from_slice(extra);
    v
}

#[test]
fn size_not_a_multiple_of_the_patch_grid_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let p = pipeline();
    let o = run(&sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--width", "30"],
    ));
    // This tiny VAE downsamples by 2, so the grid is 4 pixels (16 for real FLUX).
    assert_fails(&o, 1, &["multiples of 4", "30x16"]);
    assert!(png_files(&out).is_empty());
}

#[test]
fn size_too_large_for_memory_is_refused_with_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let p = pipeline();
    let o = run(&sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--width", "262144", "--height", "262144"],
    ));
    assert_fails(&o, 1, &["GiB of working memory", "available"]);
}

#[test]
fn over_long_prompt_is_truncated_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let p = pipeline();
    let long = "a photo of a cat ".repeat(60);
    let o = run(&sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--prompt", &long],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning:")
            && err.contains("CLIP limit of 77 tokens")
            && err.contains("T5 limit of 8"),
        "{err}"
    );
    assert_eq!(png_files(&out).len(), 1);
}

#[test]
fn unwritable_output_dir_fails_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("sub");
    let p = pipeline();
    let o = run(&sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    assert_fails(&o, 2, &["a-file/sub", "cannot write output"]);
}

/// A copy of the pipeline folder (weights hard-copied, small) to damage.
fn copy_pipeline(dst: &Path) {
    fn copy(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let p = e.unwrap().path();
            let d = dst.join(p.file_name().unwrap());
            if p.is_dir() {
                copy(&p, &d);
            } else {
                std::fs::copy(&p, &d).unwrap();
            }
        }
    }
    copy(&pipeline(), dst);
}

#[test]
fn missing_component_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_pipeline(&m);
    std::fs::remove_dir_all(m.join("vae")).unwrap();
    let out = dir.path().join("o");
    let o = run(&sample_args(
        m.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    assert_fails(&o, 1, &["component `vae/` is missing"]);
}

#[test]
fn truncated_weights_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_pipeline(&m);
    let w = m.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("o");
    let o = run(&sample_args(
        m.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    assert_fails(&o, 1, &["diffusion_pytorch_model.safetensors", "truncated"]);
    assert!(png_files(&out).is_empty());
}

#[test]
fn pickle_checkpoint_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("flux1-dev.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 pretend torch zip").unwrap();
    let out = dir.path().join("o");
    let p = pipeline();
    let o = run(&sample_args(
        ckpt.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--components", p.to_str().unwrap()],
    ));
    assert_fails(
        &o,
        1,
        &["flux1-dev.ckpt", "pickle", "convert it to safetensors"],
    );
}

#[test]
fn single_file_transformer_needs_components_and_checks_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let bfl = fixtures().join("flux_transformer_schnell_bfl/flux1-tiny-schnell.safetensors");
    let out = dir.path().join("o");
    // Without components: a clear request for them.
    let o = run(&sample_args(
        bfl.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    assert_fails(&o, 1, &["flux1-tiny-schnell.safetensors", "--components"]);
    // With the tiny pipeline's components the BFL transformer's in_channels (16) does not fit
    // this VAE (16 latent channels, packed 64): refused at load, naming both.
    let p = pipeline();
    let o = run(&sample_args(
        bfl.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--components", p.to_str().unwrap()],
    ));
    assert_fails(
        &o,
        1,
        &[
            "flux1-tiny-schnell.safetensors",
            "in_channels 16",
            "vae",
            "64",
        ],
    );
    // A config that disagrees with the weights: the key and both shapes are named.
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 128,
            "num_attention_heads": 1, "joint_attention_dim": 48, "pooled_projection_dim": 24,
            "guidance_embeds": false, "axes_dims_rope": [16, 56, 56]}"#,
    )
    .unwrap();
    let o = run(&sample_args(
        bfl.to_str().unwrap(),
        out.to_str().unwrap(),
        &[
            "--components",
            p.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    ));
    assert_fails(&o, 1, &["txt_in.weight", "[128, 32]", "[128, 48]"]);
}

#[test]
fn noise_of_the_wrong_shape_and_unknown_devices_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.safetensors");
    write_case0_latents(&noise); // [1, 64, 64] = 32x32 image; ask for 16x16
    let out = dir.path().join("o");
    let p = pipeline();
    let o = run(&sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--noise", noise.to_str().unwrap()],
    ));
    assert_fails(
        &o,
        1,
        &["--noise tensor has shape [1, 64, 64]", "[1, 16, 64]"],
    );
    let o = run(&sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--device", "cuda:0"],
    ));
    assert_fails(&o, 2, &["cuda", "not compiled"]);
    let o = run(&sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--device", "tpu"],
    ));
    assert_fails(&o, 1, &["device `tpu`"]);
}

#[test]
fn models_inspect_reports_family_format_and_components() {
    let o = run(&["models", "inspect", pipeline().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("FluxPipeline")
            && s.contains("FLUX transformer, diffusers keys")
            && s.contains("T5 encoder"),
        "{s}"
    );
    let bfl = fixtures().join("flux_transformer_schnell_bfl/flux1-tiny-schnell.safetensors");
    let o = run(&["models", "inspect", bfl.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("BFL keys under `model.diffusion_model.`")
            && s.contains("schnell")
            && s.contains("1 double + 1 single"),
        "{s}"
    );
    let o = run(&["models", "inspect", "/nonexistent/model.safetensors"]);
    assert_fails(&o, 1, &["/nonexistent/model.safetensors"]);
}

#[test]
fn ctrl_c_stops_between_steps_without_writing_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let p = pipeline();
    let args = sample_args(
        p.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--steps", "100000", "--width", "64", "--height", "64"],
    );
    let args: Vec<&str> = args.into_iter().filter(|a| *a != "--quiet").collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dreamforge"))
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the model is loaded (the handler is installed before loading starts).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(first.starts_with("loaded "), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        rest.lines().any(|l| l.ends_with("error: interrupted")),
        "{rest}"
    );
    assert!(png_files(&out).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn model_too_large_for_memory_is_refused_before_loading() {
    // A sparse single file whose header declares 20B BF16 parameters (80 GB in f32).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-flux.safetensors");
    let n: u64 = 20_000_000_000;
    let header = format!(
        r#"{{"double_blocks.0.img_attn.qkv.weight":{{"dtype":"BF16","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        2 * n
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(bytes.len() as u64 + 2 * n)
        .unwrap();
    let out = dir.path().join("o");
    let p = pipeline();
    let o = run(&sample_args(
        path.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--components", p.to_str().unwrap()],
    ));
    assert_fails(
        &o,
        1,
        &["huge-flux.safetensors", "20.00B parameters", "GiB in f32"],
    );
}
