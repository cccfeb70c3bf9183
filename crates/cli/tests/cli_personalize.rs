//! Training-free token replacement (`sample --ref`, Personalize Anything) end to end on the
//! built-in nano model, measured by its judge: with replacement through the whole schedule
//! (τ = 0) the subject is reconstructed; a shift moves it against the prompt's position; a new
//! prompt changes the background while the subject stays; two subjects land in their places;
//! with replacement never active (τ = 1) the references change nothing; inpainting keeps the
//! masked half (exactly with `--ref-blend`). Bad input refused with one clear line.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails, fixtures, max_byte_diff, png_files, read_png, run, stderr};

const DF_PROMPT: &str = "a large sks hexagon on a red background, top right";

/// A one-image nano subject (`nano subject --seed`): the image path and its caption.
fn subject(dir: &Path, seed: u32) -> (PathBuf, String) {
    let out = dir.join(format!("subject-{seed}"));
    let o = run(&[
        "nano",
        "subject",
        "--seed",
        &seed.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let caption = std::fs::read_to_string(out.join("subject.txt")).unwrap();
    (out.join("subject.png"), caption.trim().to_string())
}

/// Samples with `args` (+ seed 1) into `out` and returns the image path.
fn sample(out: &Path, args: &[&str]) -> PathBuf {
    let mut v = vec![
        "sample",
        "--seed",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    v.extend_from_slice(args);
    let o = run(&v);
    assert!(o.status.success(), "{}", stderr(&o));
    png_files(out).pop().unwrap()
}

/// (subject similarity to `reference`, the judged scene) of the one image in `dir`.
fn judge(dir: &Path, reference: &Path) -> (f64, String) {
    let json = dir.join("eval.json");
    let o = run(&[
        "eval",
        "--images",
        dir.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--trigger",
        "sks",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (
        v["subject_similarity"]["mean"].as_f64().unwrap(),
        v["per_image"][0]["judged_scene"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[test]
fn the_subject_is_reconstructed_moved_and_recontextualized() {
    let dir = tempfile::tempdir().unwrap();
    let (r, caption) = subject(dir.path(), 2);
    assert_eq!(
        caption,
        "a large sks hexagon on a black background, top right"
    );
    let rs = r.to_str().unwrap();
    let base = dir.path().join("base");
    sample(&base, &["--prompt", DF_PROMPT]);
    let (base_sim, _) = judge(&base, &r);
    // τ = 0: replacement at every step, whole image, no shift → the reference comes back.
    let recon = dir.path().join("recon");
    sample(&recon, &["--prompt", DF_PROMPT, "--ref", rs, "--tau", "0"]);
    let (sim, scene) = judge(&recon, &r);
    assert!(
        sim >= 0.85 && sim > base_sim + 0.2,
        "reconstruction {sim} vs base {base_sim}"
    );
    assert!(
        scene.contains("hexagon on a black background, top right"),
        "{scene}"
    );
    // The subject alone (foreground mask), moved 4 tokens left and 4 down, against a prompt
    // that says "top right": it lands bottom left.
    let moved = dir.path().join("moved");
    sample(
        &moved,
        &[
            "--prompt",
            DF_PROMPT,
            "--ref",
            rs,
            "--ref-mask",
            "auto",
            "--shift=-32,32",
            "--tau",
            "0",
        ],
    );
    let (_, scene) = judge(&moved, &r);
    assert!(scene.ends_with("bottom left"), "{scene}");
    // A new background from the prompt; the subject (a hexagon) stays. τ 0.3: the shipped
    // 2300-step model follows the prompt strongly enough that at τ 0.2 it repaints the subject
    // (seeds 1–3 judged "a green ring on a blue background"); at 0.3 and 0.4 the hexagon stays
    // for all three (docs/NANO.md).
    let blue = dir.path().join("blue");
    sample(
        &blue,
        &[
            "--prompt",
            "a large sks hexagon on a blue background, top right",
            "--ref",
            rs,
            "--ref-mask",
            "auto",
            "--tau",
            "0.3",
        ],
    );
    let (_, scene) = judge(&blue, &r);
    assert!(scene.contains("hexagon on a blue background"), "{scene}");
}

/// Mean absolute difference (levels) between two images inside the pixels where `reference`
/// differs from its own top-left pixel by more than 48 levels (its subject).
fn subject_error(image: &Path, reference: &Path) -> f64 {
    let (_, _, a, _) = read_png(image);
    let (_, _, b, _) = read_png(reference);
    let bg = [b[0] as i32, b[1] as i32, b[2] as i32];
    let (mut sum, mut n) = (0f64, 0usize);
    for (pa, pb) in a.chunks(3).zip(b.chunks(3)) {
        if (0..3).any(|c| (pb[c] as i32 - bg[c]).abs() > 48) {
            sum += (0..3)
                .map(|c| (pa[c] as f64 - pb[c] as f64).abs())
                .sum::<f64>()
                / 3.0;
            n += 1;
        }
    }
    assert!(n > 0);
    sum / n as f64
}

#[test]
fn two_subjects_land_in_their_places_and_tau_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = subject(dir.path(), 2); // hexagon, top right
    let (b, caption) = subject(dir.path(), 5);
    assert!(caption.ends_with("bottom left"), "{caption}");
    let prompt = "a large sks hexagon and a large sks star on a red background";
    let base = sample(&dir.path().join("base"), &["--prompt", prompt]);
    let both = sample(
        &dir.path().join("both"),
        &[
            "--prompt",
            prompt,
            "--ref",
            a.to_str().unwrap(),
            "--ref-mask",
            "auto",
            "--ref",
            b.to_str().unwrap(),
            "--ref-mask",
            "auto",
            "--tau",
            "0",
        ],
    );
    // Inside each subject's pixels the image is much closer to that reference than the base
    // image is (token masks include some backdrop, and the generation row keeps its own
    // residual stream, so it is no copy).
    let errs: Vec<(f64, f64)> = [&a, &b]
        .iter()
        .map(|r| (subject_error(&both, r), subject_error(&base, r)))
        .collect();
    for (with, without) in &errs {
        assert!(*with < 0.75 * without, "{errs:?}");
    }
    // Attention sharing below τ changes the result (the generation also attends to the
    // references' tokens); with τ = 1 and sharing off, nothing changes (below).
    let shared = sample(
        &dir.path().join("shared"),
        &[
            "--prompt",
            prompt,
            "--ref",
            a.to_str().unwrap(),
            "--ref-mask",
            "auto",
            "--tau",
            "0.5",
            "--share-attention",
        ],
    );
    let unshared = sample(
        &dir.path().join("unshared"),
        &[
            "--prompt",
            prompt,
            "--ref",
            a.to_str().unwrap(),
            "--ref-mask",
            "auto",
            "--tau",
            "0.5",
        ],
    );
    assert!(max_byte_diff(&read_png(&shared).2, &read_png(&unshared).2) > 8);
    // τ = 1: replacement never runs; the reference rows change nothing of the generation
    // (float noise of a larger batch only).
    let off = sample(
        &dir.path().join("off"),
        &[
            "--prompt",
            prompt,
            "--ref",
            a.to_str().unwrap(),
            "--tau",
            "1",
        ],
    );
    let (_, _, x, _) = read_png(&off);
    let (_, _, y, _) = read_png(&base);
    assert!(max_byte_diff(&x, &y) <= 2, "{}", max_byte_diff(&x, &y));
}

#[test]
fn bad_references_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = subject(dir.path(), 2);
    let rs = r.to_str().unwrap();
    let out = dir.path().join("out");
    let os = out.to_str().unwrap();
    let mask = |name: &str, w: u32, h: u32, on: bool| {
        let p = dir.path().join(name);
        image::GrayImage::from_pixel(w, h, image::Luma([if on { 255 } else { 0 }]))
            .save(&p)
            .unwrap();
        p
    };
    let wide = mask("wide.png", 128, 64, true);
    let empty = mask("empty.png", 64, 64, false);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--ref", rs, "--ref-mask", wide.to_str().unwrap()],
            "aspect",
        ),
        (
            vec!["--ref", rs, "--ref-mask", empty.to_str().unwrap()],
            "mask is empty",
        ),
        (
            vec!["--ref", rs, "--shift", "8,0"],
            "off the 8×8-token canvas",
        ),
        (vec!["--ref", rs, "--ref", rs], "overlap"),
        (vec!["--ref", rs, "--tau", "1.5"], "--tau must be in [0, 1]"),
        (
            vec!["--ref-mask", empty.to_str().unwrap()],
            "--ref-mask needs a --ref",
        ),
        (vec!["--ref", "missing.png"], "missing.png"),
        (
            vec!["--ref", rs, "--mask-grow=-9"],
            "erodes the mask to nothing",
        ),
    ];
    for (extra, needle) in cases {
        let mut v = vec!["sample", "--prompt", DF_PROMPT, "--out", os, "--quiet"];
        v.extend(extra);
        assert_fails(&run(&v), 1, &[needle]);
    }
    assert!(png_files(&out).is_empty());
    // A UNet model: token replacement needs a DiT.
    let sd = fixtures().join("sd_pipeline_tiny");
    let o = run(&[
        "sample",
        "--model",
        sd.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--ref",
        rs,
        "--out",
        os,
    ]);
    assert_fails(&o, 1, &["needs a DiT"]);
}

#[test]
fn inpainting_and_outpainting_keep_what_the_mask_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = subject(dir.path(), 2);
    let img = image::open(&r).unwrap().to_rgb8();
    // Inpainting: keep the right half (where the subject is), regenerate the left.
    let keep = dir.path().join("keep.png");
    image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x >= 32 { 255 } else { 0 }]))
        .save(&keep)
        .unwrap();
    let inpaint = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "--prompt",
            DF_PROMPT,
            "--ref",
            r.to_str().unwrap(),
            "--ref-mask",
            keep.to_str().unwrap(),
            "--tau",
            "0",
        ];
        args.extend_from_slice(extra);
        image::open(sample(&dir.path().join(name), &args))
            .unwrap()
            .to_rgb8()
    };
    let got = inpaint("inpaint", &[]);
    let half_error = |a: &image::RgbImage, xs: std::ops::Range<u32>| {
        let mut s = 0f64;
        for y in 0..64 {
            for x in xs.clone() {
                for c in 0..3 {
                    s += (a.get_pixel(x, y)[c] as f64 - img.get_pixel(x, y)[c] as f64).abs();
                }
            }
        }
        s / (64.0 * xs.len() as f64 * 3.0)
    };
    // Token replacement alone keeps the right half much closer to the original than the same
    // seed and prompt without the reference (measured 32 vs 80 levels with the shipped model;
    // the replaced attention inputs steer, they do not copy: the nano model blurs the dots).
    let plain = image::open(sample(&dir.path().join("plain"), &["--prompt", DF_PROMPT]))
        .unwrap()
        .to_rgb8();
    let (kept, without) = (half_error(&got, 32..64), half_error(&plain, 32..64));
    assert!(
        kept < 0.5 * without,
        "kept half {kept} levels, {without} without the reference"
    );
    // With latent blending the kept half comes back exactly (the pixel-space autoencoder is
    // lossless: only the final rounding is left), and the left half is still generated.
    let blended = inpaint("blend", &["--ref-blend"]);
    let (kept, regenerated) = (half_error(&blended, 32..64), half_error(&blended, 0..32));
    assert!(
        kept < 0.5,
        "blended kept half {kept} levels from the original"
    );
    assert!(
        regenerated > 10.0,
        "the regenerated half ({regenerated} levels) is not a copy of the original"
    );
    // Outpainting: the top-right 32×32 quarter, pasted at the centre of the 64×64 canvas.
    let crop = dir.path().join("crop.png");
    image::imageops::crop_imm(&img, 32, 0, 32, 32)
        .to_image()
        .save(&crop)
        .unwrap();
    let o = run(&[
        "sample",
        "--prompt",
        DF_PROMPT,
        "--ref",
        crop.to_str().unwrap(),
        "--tau",
        "0",
        "--seed",
        "1",
        "--out",
        dir.path().join("outpaint").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("pasted at the centre of the 64x64 canvas (outpainting)"),
        "{}",
        stderr(&o)
    );
    // The pasted region is much closer to the crop than the same region without the
    // reference (measured 58 vs 108 levels: the nano model blurs the dots).
    let region_error = |path: &Path| {
        let got = image::open(path).unwrap().to_rgb8();
        let mut s = 0f64;
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    s += (got.get_pixel(16 + x, 16 + y)[c] as f64
                        - img.get_pixel(32 + x, y)[c] as f64)
                        .abs();
                }
            }
        }
        s / (32.0 * 32.0 * 3.0)
    };
    let pasted = region_error(&png_files(&dir.path().join("outpaint")).pop().unwrap());
    let base = region_error(&sample(&dir.path().join("base"), &["--prompt", DF_PROMPT]));
    assert!(
        pasted < 0.7 * base,
        "pasted region {pasted} levels vs {base} without the reference"
    );
}
