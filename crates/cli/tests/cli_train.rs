//! `dreamforge train` end to end on the built-in nano model: a subject folder → an adapter
//! file (with its metadata), checkpoints, validation renders; the adapter applied by
//! `sample --lora`; bad input refused with one clear line.

mod common;

use std::path::Path;

use common::{assert_fails, png_files, run, stderr};
use dreamforge_adapters::AdapterFile;

/// A subject folder: one 64×64 glyph (a yellow H on blue) with a caption file.
fn subject(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    image::RgbImage::from_fn(64, 64, |x, y| {
        let bar = (18..27).contains(&x) || (38..47).contains(&x);
        let h = (bar && (16..49).contains(&y)) || ((18..47).contains(&x) && (28..37).contains(&y));
        image::Rgb(if h { [250, 210, 20] } else { [30, 60, 200] })
    })
    .save(dir.join("glyph.png"))
    .unwrap();
    std::fs::write(
        dir.join("glyph.txt"),
        "a large yellow sks cross on a blue background",
    )
    .unwrap();
}

fn pixels(p: &Path) -> Vec<u8> {
    image::open(p).unwrap().to_rgb8().into_raw()
}

#[test]
fn train_writes_an_adapter_that_sample_applies() {
    let dir = tempfile::tempdir().unwrap();
    let subj = dir.path().join("subject");
    subject(&subj);
    let out = dir.path().join("run");
    let go = |extra: &[&str]| {
        let mut v = vec![
            "train",
            "--subject",
            subj.to_str().unwrap(),
            "--token",
            "sks",
            "--class",
            "cross",
            "--method",
            "tlora",
            "--orthogonal",
            "--steps",
            "30",
            "--checkpoint-every",
            "15",
            "--validate-every",
            "15",
            "--validation-prompt",
            "a large yellow {token} {class} on a red background",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        v.extend_from_slice(extra);
        run(&v)
    };
    let o = go(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("T-LoRA (orthogonal) rank 32 min rank 1") && err.contains("on 28 layers"),
        "the settings are printed: {err}"
    );
    assert!(!err.contains("does not know the word"), "{err}");
    for f in [
        "adapter.safetensors",
        "adapters/step-000015.safetensors",
        "adapters/step-000030.safetensors",
        "checkpoint/state.json",
        "run_config.json",
        "samples/step-000015/00.png",
        "samples/final/00.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let lines = std::fs::read_to_string(out.join("loss.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 30);

    // The file: PEFT naming, the orthogonal pairs at rank 2·32, dreamforge metadata.
    let f = AdapterFile::read(&out.join("adapter.safetensors")).unwrap();
    assert_eq!(f.layers.len(), 28);
    assert!(
        f.layers
            .values()
            .all(|l| l.rank() == 64 && l.scale() == 1.0)
    );
    let s = f.schedule().expect("a T-LoRA schedule");
    assert!(s.paired && s.min_rank == 1);
    assert_eq!(f.trigger().as_deref(), Some("sks"));
    let meta: serde_json::Value = serde_json::from_str(&f.metadata["dreamforge_adapter"]).unwrap();
    assert_eq!(meta["parametrization"], "orthogonal");
    assert_eq!(meta["run_config"]["steps"], 30);
    assert_eq!(
        meta["base_model"]["fingerprint"].as_str().unwrap().len(),
        64
    );
    let peft: serde_json::Value =
        serde_json::from_str(&f.metadata["lora_adapter_metadata"]).unwrap();
    assert_eq!(peft["transformer.r"], 64);
    assert!(
        peft["transformer.target_modules"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("attn.to_out.0"))
    );

    // Sampling with the adapter: the trigger word is not reported as unknown, and the
    // image differs from the base model's at the same seed.
    let prompt = "a large yellow sks cross on a blue background";
    let base_dir = dir.path().join("base");
    let o = run(&[
        "sample",
        "--prompt",
        prompt,
        "--seed",
        "5",
        "--out",
        base_dir.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let with_dir = dir.path().join("with");
    let adapter = out.join("adapter.safetensors");
    let o = run(&[
        "sample",
        "--prompt",
        prompt,
        "--seed",
        "5",
        "--lora",
        adapter.to_str().unwrap(),
        "--out",
        with_dir.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("sks"), "{}", stderr(&o));
    let (b, w) = (
        pixels(&png_files(&base_dir)[0]),
        pixels(&png_files(&with_dir)[0]),
    );
    let changed = b
        .iter()
        .zip(&w)
        .filter(|(x, y)| x.abs_diff(**y) > 8)
        .count();
    assert!(
        changed > b.len() / 20,
        "only {changed} of {} values changed",
        b.len()
    );

    // A second run into the same folder is refused without touching it; --resume of the
    // finished run keeps its settings and rewrites the adapter.
    let before = std::fs::read_to_string(out.join("run_config.json")).unwrap();
    let o = go(&["--rank", "8"]);
    assert_fails(&o, 1, &["a run is already here", "--resume"]);
    assert_eq!(
        std::fs::read_to_string(out.join("run_config.json")).unwrap(),
        before
    );
    std::fs::remove_file(out.join("adapter.safetensors")).unwrap();
    let o = go(&["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("adapter.safetensors").exists());
    // Resuming onto another base model is refused.
    let other = common::fixtures().join("flux_pipeline_tiny");
    let o = go(&["--resume", "--model", other.to_str().unwrap()]);
    assert_fails(&o, 1, &["another base model", "flux_pipeline_tiny"]);
}

#[test]
fn train_refuses_bad_subjects_and_settings_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.gif"), "GIF89a").unwrap();
    let subj = dir.path().join("subject");
    subject(&subj);
    let out = dir.path().join("run");
    let go = |subject: &Path, extra: &[&str]| {
        let mut v = vec![
            "train",
            "--subject",
            subject.to_str().unwrap(),
            "--token",
            "sks",
            "--class",
            "cross",
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        v.extend_from_slice(extra);
        run(&v)
    };
    assert_fails(
        &go(&empty, &[]),
        1,
        &["empty", "no subject images", "notes.gif"],
    );
    assert_fails(
        &go(&dir.path().join("missing"), &[]),
        1,
        &["missing", "No such file"],
    );
    std::fs::write(subj.join("broken.png"), b"\x89PNG\r\n\x1a\nxx").unwrap();
    assert_fails(&go(&subj, &[]), 1, &["broken.png", "not a readable image"]);
    std::fs::remove_file(subj.join("broken.png")).unwrap();
    assert_fails(
        &go(&subj, &["--targets", "(unclosed"]),
        1,
        &["target modules", "(unclosed"],
    );
    assert_fails(
        &go(&subj, &["--targets", "^nothing$"]),
        1,
        &["no weight", "^nothing$"],
    );
    assert_fails(
        &go(&subj, &["--method", "lora", "--orthogonal"]),
        1,
        &["--orthogonal", "tlora"],
    );
    assert_fails(&go(&subj, &["--min-rank", "64"]), 1, &["min rank"]);
    let o = run(&[
        "train",
        "--subject",
        subj.to_str().unwrap(),
        "--token",
        "two words",
        "--class",
        "cross",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails(&o, 1, &["--token", "one word"]);
    assert_fails(
        &go(&subj, &["--resolution", "60"]),
        1,
        &["resolution 60", "multiple of 8"],
    );
    assert!(!out.join("adapter.safetensors").exists());
}

#[test]
fn nano_subjects_and_eval_without_the_trigger_word() {
    let dir = tempfile::tempdir().unwrap();
    let subj = dir.path().join("subj");
    let o = run(&[
        "nano",
        "subject",
        "--seed",
        "2",
        "--out",
        subj.to_str().unwrap(),
        "--eval-prompts",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let caption = std::fs::read_to_string(subj.join("subject.txt")).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), caption);
    assert!(
        caption.starts_with("a large sks ") && caption.contains(" background, "),
        "{caption}"
    );
    let prompts = std::fs::read_to_string(subj.join("eval_prompts.txt")).unwrap();
    assert_eq!(prompts.lines().count(), 3);
    let img = image::open(subj.join("subject.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    // eval judges the prompt without the trigger word (the nano world has no word `sks`);
    // without --trigger the prompt is outside the world and refused.
    let table = dir.path().join("prompts.tsv");
    std::fs::write(&table, format!("subject.png\t{caption}\n")).unwrap();
    let args = |extra: &[&str]| {
        let mut v = vec![
            "eval",
            "--images",
            subj.to_str().unwrap(),
            "--prompts",
            table.to_str().unwrap(),
            "--reference",
            subj.to_str().unwrap(),
            "--ground-truth",
            "50",
        ];
        v.extend_from_slice(extra);
        run(&v)
    };
    assert_fails(&args(&[]), 1, &["sks"]);
    let o = args(&["--trigger", "sks"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("subject similarity: 1.000"), "{out}");
}

#[test]
fn train_a_unet_adapter_on_a_stable_diffusion_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let subj = dir.path().join("subject");
    subject(&subj);
    let model = common::fixtures().join("sd_pipeline_tiny");
    let out = dir.path().join("run");
    let o = run(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--subject",
        subj.to_str().unwrap(),
        "--token",
        "sks",
        "--class",
        "cross",
        "--steps",
        "12",
        "--lr",
        "1e-2",
        "--validation-steps",
        "3",
        "--resolution",
        "32",
        "--prior-images",
        "2",
        "--flip",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(", random flips"), "{err}");
    // Prior preservation: class images drawn by the base model, cached in the run folder.
    assert!(
        err.contains("prior preservation: 2 class images of \"a photo of cross\""),
        "{err}"
    );
    for i in 0..2 {
        assert!(out.join(format!("class_images/class-{i:04}.png")).exists());
    }
    // The SDXL reference's T-LoRA defaults (orthogonal; SD1 rank 32 / min rank 16).
    assert!(
        err.contains("T-LoRA (orthogonal) rank 32 min rank 16"),
        "{err}"
    );
    assert!(out.join("samples/final/00.png").exists());
    let f = AdapterFile::read(&out.join("adapter.safetensors")).unwrap();
    assert!(
        f.layers
            .keys()
            .all(|k| k.starts_with("unet.") && k.contains(".attn"))
    );
    // Layers narrower than the rank keep their own (smaller) rank, and every layer applies at
    // scale 1 through the PEFT metadata's rank / alpha patterns.
    let ranks: std::collections::BTreeSet<usize> = f.layers.values().map(|l| l.rank()).collect();
    assert!(ranks.len() > 1, "{ranks:?}");
    assert!(f.layers.values().all(|l| (l.scale() - 1.0).abs() < 1e-9));
    let render = |name: &str, lora: Option<&Path>| {
        let o_dir = dir.path().join(name);
        let mut v = vec![
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a sks cross",
            "--seed",
            "4",
            "--steps",
            "3",
            "--width",
            "32",
            "--height",
            "32",
            "--out",
            o_dir.to_str().unwrap(),
            "--quiet",
        ];
        let l;
        if let Some(p) = lora {
            l = p.display().to_string();
            v.extend(["--lora", l.as_str()]);
        }
        let o = run(&v);
        assert!(o.status.success(), "{}", stderr(&o));
        pixels(&png_files(&o_dir)[0])
    };
    let base = render("base", None);
    let with = render("with", Some(&out.join("adapter.safetensors")));
    assert!(
        base.iter().zip(&with).any(|(a, b)| a != b),
        "the trained UNet adapter changes the image"
    );
}

/// Ctrl-C during `train` saves a checkpoint and exits 130; `--resume` then finishes the run
/// with the same loss curve and the same adapter as an uninterrupted run, wherever the
/// interruption landed.
#[test]
fn an_interrupted_and_resumed_run_equals_the_uninterrupted_one() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let subj = dir.path().join("subject");
    subject(&subj);
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--subject",
            subj.to_str().unwrap(),
            "--token",
            "sks",
            "--class",
            "cross",
            "--method",
            "tlora",
            "--steps",
            "60",
            "--checkpoint-every",
            "10",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let straight = dir.path().join("straight");
    let o = run(&args(&straight)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));

    let cut = dir.path().join("cut");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dreamforge"))
        .args(args(&cut))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Interrupt once the first checkpoint is written.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("step 10/") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    if status.code() == Some(130) {
        assert!(
            rest.iter().any(|l| l.contains("continue with --resume")),
            "{rest:?}"
        );
        assert!(!cut.join("adapter.safetensors").exists());
    } else {
        // The run finished before the signal arrived: nothing to resume, still a valid test
        // of equality below.
        assert!(status.success(), "{rest:?}");
    }
    let mut resume = args(&cut);
    resume.push("--resume".into());
    let o = run(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let losses = |d: &Path| std::fs::read_to_string(d.join("loss.jsonl")).unwrap();
    let values = |s: String| -> Vec<f64> {
        s.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (a, b) = (values(losses(&straight)), values(losses(&cut)));
    assert_eq!((a.len(), b.len()), (60, 60));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
    let fa = AdapterFile::read(&straight.join("adapter.safetensors")).unwrap();
    let fb = AdapterFile::read(&cut.join("adapter.safetensors")).unwrap();
    for (k, la) in &fa.layers {
        let lb = &fb.layers[k];
        for (x, y) in la
            .down
            .data
            .iter()
            .chain(&la.up.data)
            .zip(lb.down.data.iter().chain(&lb.up.data))
        {
            assert!((x - y).abs() < 1e-6, "{k}: {x} vs {y}");
        }
    }
}

/// `lora convert` round trips (PEFT → kohya on BFL modules → PEFT) and `lora merge` give the
/// images `sample --lora` gives; a T-LoRA merges only at a stated rank.
#[test]
fn lora_convert_and_merge_reproduce_sampling_with_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let subj = dir.path().join("subject");
    subject(&subj);
    let train = |name: &str, method: &str| {
        let out = dir.path().join(name);
        let o = run(&[
            "train",
            "--subject",
            subj.to_str().unwrap(),
            "--token",
            "sks",
            "--class",
            "cross",
            "--method",
            method,
            "--steps",
            "20",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        out.join("adapter.safetensors")
    };
    let lora = train("lora", "lora");
    let render = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut v = vec![
            "sample",
            "--prompt",
            "a large yellow sks cross on a blue background",
            "--seed",
            "9",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        v.extend_from_slice(extra);
        let o = run(&v);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        pixels(&png_files(&out)[0])
    };
    let want = render("peft", &["--lora", lora.to_str().unwrap()]);
    let convert = |from: &Path, to: &str, out: &Path| {
        let (from, out) = (from.to_str().unwrap(), out.to_str().unwrap());
        let o = run(&["lora", "convert", from, "--to", to, "--out", out]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let kohya = dir.path().join("kohya.safetensors");
    convert(&lora, "kohya", &kohya);
    let k = AdapterFile::read(&kohya).unwrap();
    assert!(
        k.layers
            .contains_key("lora_unet_double_blocks_0_img_attn_qkv")
    );
    assert_eq!(render("kohya", &["--lora", kohya.to_str().unwrap()]), want);
    let back = dir.path().join("back.safetensors");
    convert(&kohya, "peft", &back);
    assert_eq!(render("back", &["--lora", back.to_str().unwrap()]), want);

    // Merged weights: the same image within float rounding (1 level of 8 bits).
    let nano = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/nano");
    let merged = dir.path().join("merged");
    let o = run(&[
        "lora",
        "merge",
        "--model",
        nano.to_str().unwrap(),
        "--lora",
        lora.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = render(
        "merged",
        &[
            "--model",
            merged.to_str().unwrap(),
            "--components",
            nano.to_str().unwrap(),
        ],
    );
    let worst = common::max_byte_diff(&got, &want);
    assert!(
        worst <= 1,
        "merged weights differ from the adapter by {worst} levels"
    );

    // A T-LoRA: refused without a rank, merged at full rank on request.
    let tlora = train("tlora", "tlora");
    let tmerged = dir.path().join("tmerged");
    let m = |extra: &[&str]| {
        let mut v = vec![
            "lora",
            "merge",
            "--model",
            nano.to_str().unwrap(),
            "--lora",
            tlora.to_str().unwrap(),
            "--out",
            tmerged.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        run(&v)
    };
    assert_fails(
        &m(&[]),
        1,
        &["cannot be merged into one weight", "--tlora-rank"],
    );
    assert!(!tmerged.exists());
    assert_fails(
        &m(&["--tlora-rank", "99"]),
        1,
        &["--tlora-rank 99", "outside"],
    );
    let o = m(&["--tlora-rank", "32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmerged.exists());
}

/// `train --precision bf16|f16` (mixed precision: the frozen base and the forward / backward in
/// half precision, f32 adapter weights) follows the f32 run's loss curve and writes an adapter,
/// on the nano FLUX model and on the tiny SD 1.x and SDXL UNet pipelines (SDXL: its size
/// conditioning embedded in f32, then cast).
#[test]
fn mixed_precision_training_follows_the_f32_run() {
    let dir = tempfile::tempdir().unwrap();
    let subj = dir.path().join("subject");
    subject(&subj);
    let losses = |model: Option<&str>, precision: &str| {
        let out = dir
            .path()
            .join(format!("{}-{precision}", model.unwrap_or("nano")));
        let fixture = model.map(|m| common::fixtures().join(m));
        let mut args = vec![
            "train",
            "--subject",
            subj.to_str().unwrap(),
            "--token",
            "sks",
            "--class",
            "cross",
            "--steps",
            "10",
            "--precision",
            precision,
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        if let Some(f) = &fixture {
            args.extend(["--model", f.to_str().unwrap(), "--resolution", "32"]);
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(out.join("adapter.safetensors").exists());
        let cfg = std::fs::read_to_string(out.join("run_config.json")).unwrap();
        assert_eq!(
            cfg.contains(&format!("\"precision\": \"{precision}\"")),
            precision != "f32",
            "{cfg}"
        );
        std::fs::read_to_string(out.join("loss.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect::<Vec<f64>>()
    };
    for model in [None, Some("sd_pipeline_tiny"), Some("sdxl_pipeline_tiny")] {
        let reference = losses(model, "f32");
        assert_eq!(reference.len(), 10);
        for precision in ["bf16", "f16"] {
            let got = losses(model, precision);
            assert_eq!(got.len(), 10);
            assert_ne!(got, reference, "{model:?} {precision} computed in f32?");
            let worst = got
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs() / b)
                .fold(0.0, f64::max);
            eprintln!("{model:?} {precision}: largest loss deviation from f32 {worst:.4}");
            for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
                assert!(
                    (a - b).abs() < 0.03 * b,
                    "{model:?} {precision} step {i}: loss {a} vs f32 {b}"
                );
            }
        }
    }
}
