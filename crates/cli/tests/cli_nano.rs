//! End-to-end tests of the built-in nano model through the binary: `sample` without `--model`
//! (the shipped bundle), `--upscale`, completion of partial prompts, unknown-word warnings,
//! `eval` on the images it wrote (prompts read back from the PNGs, the judge's own accuracy
//! printed), and the pretraining command's bad-input paths (resume without a checkpoint, a
//! corrupt checkpoint, a run config that differs from the checkpoint's, an existing run without
//! --resume).

mod common;

use common::{assert_fails, png_files, run, stderr};

/// The `dreamforge` JSON metadata of a PNG `sample` wrote.
fn metadata(png: &std::path::Path) -> serde_json::Value {
    let (_, _, _, text) = common::read_png(png);
    let (_, json) = text.iter().find(|(k, _)| k == "dreamforge").unwrap();
    serde_json::from_str(json).unwrap()
}

#[test]
fn a_partial_prompt_is_completed_from_the_seed_and_judged_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "a red circle on a blue background";
    let sample = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--prompt",
            prompt,
            "--seed",
            "5",
            "--num-images",
            "4",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let out = dir.path().join("completed");
    let err = sample(&out, &[]);
    // The shipped bundle declares completion: the notice names the caption sampled, which
    // states a size and a position and keeps what the prompt says.
    let line = err
        .lines()
        .find(|l| l.contains("trained on full captions"))
        .unwrap_or_else(|| panic!("no completion notice: {err}"));
    let sampled = line.split('"').nth(1).unwrap();
    assert!(
        (sampled.starts_with("a small red circle") || sampled.starts_with("a large red circle"))
            && sampled.contains(" on a blue background, "),
        "{sampled}"
    );
    let files = png_files(&out);
    assert_eq!(files.len(), 4);
    let meta = metadata(&files[0]);
    assert_eq!(meta["prompt"], prompt, "the PNG keeps the user's prompt");
    assert_eq!(meta["sampled_prompt"], sampled);
    // Each image completes from its own seed: image 2 of the batch (seed 6) has the caption
    // seed 6 gets alone.
    let second = metadata(&files[1])["sampled_prompt"].clone();
    let alone = dir.path().join("alone");
    let o = run(&[
        "sample",
        "--prompt",
        prompt,
        "--seed",
        "6",
        "--steps",
        "2",
        "--out",
        alone.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metadata(&png_files(&alone)[0])["sampled_prompt"], second);
    // eval judges the prompt as written (its open attributes open).
    let o = run(&[
        "eval",
        "--images",
        out.to_str().unwrap(),
        "--ground-truth",
        "50",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("of 4 images"), "{text}");
    // --exact-prompt samples it as written: no notice, no sampled_prompt.
    let exact = dir.path().join("exact");
    let err = sample(&exact, &["--exact-prompt", "--steps", "2"]);
    assert!(!err.contains("trained on full captions"), "{err}");
    assert!(metadata(&png_files(&exact)[0])["sampled_prompt"].is_null());
    // A full caption is sampled as it is.
    let full = dir.path().join("full");
    let o = run(&[
        "sample",
        "--prompt",
        "a large red circle on a blue background, in the center",
        "--steps",
        "2",
        "--out",
        full.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("trained on full captions"));
}

/// The shipped model follows held-out prompts (first object a shape–colour combination never
/// captioned in pretraining) as the judge reads them: the first 24 prompts and seeds of
/// `tools/nano/fidelity.sh`, whose rate on all 200 is in docs/NANO.md. At least 16 of 24 must
/// be right (the shipped weights: 22; the margin is for float summation order on other CPUs;
/// the earlier two-run weights, 55.5 % on all 200, would expect 13).
#[test]
fn the_shipped_model_follows_held_out_prompts_as_the_judge_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["nano", "prompts", "--held-out", "--count", "24"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let prompts = String::from_utf8(o.stdout).unwrap();
    assert_eq!(prompts.lines().count(), 24, "{prompts}");
    let out = dir.path().join("held-out");
    for (i, prompt) in prompts.lines().enumerate() {
        let seed = (1000 + i).to_string();
        let o = run(&[
            "sample",
            "--prompt",
            prompt,
            "--seed",
            &seed,
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let json = dir.path().join("eval.json");
    let o = run(&[
        "eval",
        "--images",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let per_image = v["per_image"].as_array().unwrap();
    assert_eq!(per_image.len(), 24);
    let follows = per_image
        .iter()
        .filter(|r| r["follows_prompt"] == true)
        .count();
    assert!(
        follows >= 16,
        "{follows} of 24 follow their prompt: {per_image:#?}"
    );
}

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

/// `--shards` splits each batch over threads: the loss curve is the unsharded one up to float
/// summation order (4 samples as 2 + 1 + 1), and the shard count is not in the run config.
#[test]
fn sharded_pretraining_follows_the_unsharded_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let curve = |shards: &str| {
        let out = dir.path().join(format!("run{shards}"));
        let o = run(&[
            "nano",
            "pretrain",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--shards",
            shards,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let log = std::fs::read_to_string(out.join("loss.jsonl")).unwrap();
        let losses: Vec<f64> = log
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        (
            losses,
            std::fs::read_to_string(out.join("run_config.json")).unwrap(),
        )
    };
    let (one, cfg1) = curve("1");
    let (three, cfg3) = curve("3");
    assert_eq!(one.len(), 3);
    assert!(one[2] < one[0], "no learning: {one:?}");
    for (a, b) in one.iter().zip(&three) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{one:?} vs {three:?}"
        );
    }
    assert_eq!(cfg1, cfg3);
    let o = run(&[
        "nano",
        "pretrain",
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--shards",
        "0",
    ]);
    assert_fails(&o, 1, &["--shards must be at least 1"]);
    assert!(
        !dir.path().join("x").exists(),
        "refused before writing anything"
    );
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
