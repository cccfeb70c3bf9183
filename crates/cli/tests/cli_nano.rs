//! End-to-end tests of the built-in nano model through the binary: `sample` without `--model`
//! (the shipped bundle), `--upscale`, unknown-word warnings, `eval` on the images it wrote
//! (prompts read back from the PNGs, the judge's own accuracy printed), and the pretraining
//! command's bad-input paths (resume without a checkpoint, a corrupt checkpoint, a run config
//! that differs from the checkpoint's, an existing run without --resume).

mod common;

use common::{assert_fails, png_files, run, stderr};

#[test]
fn sample_uses_the_built_in_nano_model_and_eval_reads_its_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = run(&[
        "sample",
        "--prompt",
        "a large red circle on a blue background, in the center",
        "--seed",
        "3",
        "--num-images",
        "2",
        "--upscale",
        "4",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let files = png_files(&out);
    assert_eq!(files.len(), 2);
    let img = image::open(&files[0]).unwrap();
    assert_eq!((img.width(), img.height()), (256, 256), "64×64 upscaled 4×");
    // Nearest upscaling: every 4×4 block is one colour.
    let rgb = img.to_rgb8();
    for (x, y) in [(0, 0), (100, 36), (252, 252)] {
        let p = rgb.get_pixel(x, y);
        for dy in 0..4 {
            for dx in 0..4 {
                assert_eq!(rgb.get_pixel(x - x % 4 + dx, y - y % 4 + dy), p);
            }
        }
    }
    let o = run(&[
        "eval",
        "--images",
        out.to_str().unwrap(),
        "--ground-truth",
        "200",
    ]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        text.contains("prompt fidelity:") && text.contains("of 2 images"),
        "{text}"
    );
    assert!(
        text.contains("judge accuracy on 200 fresh ground-truth scenes"),
        "{text}"
    );

    // Words outside the world are named, with the model's vocabulary.
    let o = run(&[
        "sample",
        "--prompt",
        "a red dog on a blue background",
        "--steps",
        "2",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("dog") && err.contains("hexagon"), "{err}");
    // eval refuses a prompt outside the world, naming the image.
    let o = run(&["eval", "--images", out.to_str().unwrap()]);
    assert_fails(&o, 1, &["dog"]);
    let o = run(&[
        "eval",
        "--images",
        dir.path().join("none").to_str().unwrap(),
    ]);
    assert_fails(&o, 1, &["none"]);
}

#[test]
fn pretraining_refuses_bad_resumes_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let runp = dir.path().join("run");
    let r = runp.to_str().unwrap();
    let pre = |extra: &[&str]| {
        let mut args = vec![
            "nano",
            "pretrain",
            "--out",
            r,
            "--batch-size",
            "2",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = pre(&["--steps", "1", "--resume"]);
    assert_fails(&o, 1, &["no checkpoint", "without --resume"]);
    let o = pre(&["--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "loss.jsonl",
        "run_config.json",
        "checkpoint/state.json",
        "checkpoint/ema.bpk",
        "model/model_index.json",
    ] {
        assert!(runp.join(f).exists(), "{f} missing");
    }
    let o = pre(&["--steps", "1"]);
    assert_fails(&o, 1, &["a run is already here", "--resume"]);
    let o = pre(&["--steps", "2", "--resume"]);
    assert_fails(
        &o,
        1,
        &[
            "differs from the checkpoint",
            "steps: 1 in the checkpoint, 2 now",
        ],
    );
    std::fs::write(runp.join("checkpoint/model.bpk"), b"garbage").unwrap();
    let o = pre(&["--steps", "1", "--resume"]);
    assert_fails(&o, 1, &["model.bpk", "cannot load the model"]);
    std::fs::remove_file(runp.join("checkpoint/optim.bpk")).unwrap();
    let o = pre(&["--steps", "1", "--resume"]);
    assert_fails(&o, 1, &["optim.bpk", "missing"]);
}

/// A LoRA for the nano transformer (PEFT naming): `to_q` of the first double block.
fn write_lora(path: &std::path::Path, d_in: usize, module: &str, metadata: Option<(&str, &str)>) {
    let r = 2;
    let vals = |n: usize, s: u32| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let h = (i as u32 + 1).wrapping_mul(2_654_435_761) ^ s;
                (((h % 2000) as f32 / 1000.0 - 1.0) * 0.2).to_le_bytes()
            })
            .collect()
    };
    let down = vals(r * d_in, 1);
    let up = vals(256 * r, 2);
    fn t(b: &[u8], shape: Vec<usize>) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, b).unwrap()
    }
    let tensors = vec![
        (
            format!("transformer.{module}.lora_A.weight"),
            t(&down, vec![r, d_in]),
        ),
        (
            format!("transformer.{module}.lora_B.weight"),
            t(&up, vec![256, r]),
        ),
    ];
    let meta =
        metadata.map(|(k, v)| std::collections::HashMap::from([(k.to_string(), v.to_string())]));
    safetensors::serialize_to_file(tensors, meta, path).unwrap();
}

#[test]
fn sample_applies_lora_and_tlora_files_and_names_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("lora.safetensors");
    write_lora(&lora, 256, "transformer_blocks.0.attn.to_q", None);
    let tlora = dir.path().join("tlora.safetensors");
    write_lora(
        &tlora,
        256,
        "transformer_blocks.0.attn.to_q",
        Some((
            "dreamforge_adapter",
            r#"{"method": "tlora", "rank": 2, "min_rank": 1}"#,
        )),
    );
    let sample = |extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        let mut args = vec![
            "sample",
            "--prompt",
            "a small red circle on a blue background, top left",
            "--seed",
            "5",
            "--steps",
            "4",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        (o, out)
    };
    let (o, base) = sample(&[], "base");
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, with) = sample(
        &[
            "--lora",
            &format!("{}:0.8", lora.display()),
            "--lora",
            tlora.to_str().unwrap(),
        ],
        "lora",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, _, a, _) = common::read_png(&png_files(&base)[0]);
    let (_, _, b, text) = common::read_png(&png_files(&with)[0]);
    assert_ne!(a, b, "the adapters changed nothing");
    let meta = &text.iter().find(|(k, _)| k == "dreamforge").unwrap().1;
    assert!(meta.contains("\"tlora\"") && meta.contains("0.8"), "{meta}");

    // A missing file, a file for another model (wrong width), a file matching nothing.
    let missing = dir.path().join("nope.safetensors");
    let (o, _) = sample(&["--lora", missing.to_str().unwrap()], "x1");
    assert_fails(&o, 1, &["nope.safetensors"]);
    let wide = dir.path().join("wide.safetensors");
    write_lora(&wide, 3072, "transformer_blocks.0.attn.to_q", None);
    let (o, _) = sample(&["--lora", wide.to_str().unwrap()], "x2");
    assert_fails(
        &o,
        1,
        &["wide.safetensors", "transformer_blocks.0.attn.to_q", "3072"],
    );
    let other = dir.path().join("other.safetensors");
    write_lora(&other, 256, "down_blocks.0.attentions.0.proj_in", None);
    let (o, _) = sample(&["--lora", other.to_str().unwrap()], "x3");
    assert_fails(&o, 1, &["other.safetensors", "none of its 1 layers"]);
}

#[test]
fn lora_inspect_describes_adapter_files() {
    let dir = tempfile::tempdir().unwrap();
    let tlora = dir.path().join("t.safetensors");
    write_lora(
        &tlora,
        256,
        "transformer_blocks.0.attn.to_q",
        Some((
            "dreamforge_adapter",
            r#"{"method": "tlora", "rank": 2, "min_rank": 1}"#,
        )),
    );
    let o = run(&["lora", "inspect", tlora.to_str().unwrap(), "--layers"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "PEFT / diffusers",
        "T-LoRA (rank mask per step: min rank 1",
        "layers:  1 in transformer (1); 1024 parameters",
        "ranks:   2 (1)",
        "transformer.transformer_blocks.0.attn.to_q  down [2, 256]  up [256, 2]",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    // Not an adapter file: the shipped judge's weights.
    let judge = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/nano-judge/judge.safetensors");
    let o = run(&["lora", "inspect", judge.to_str().unwrap()]);
    assert_fails(&o, 1, &["judge.safetensors", "no LoRA layers found"]);
}
