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
