//! `dreamforge render` end to end on the built-in nano model: every image of a manifest made
//! exactly once at its planned path (and equal to `sample` with the same settings), shards
//! from the flag / Slurm / Kubernetes variables partitioning the work, `--status`, a `kill -9`
//! in the middle of a render followed by a rerun, malformed lines and failing jobs isolated,
//! output paths that try to leave the output folder refused, exit codes per failure kind.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{max_byte_diff, png_files, read_png, run, stderr};
use dreamforge_render::{Manifest, Plan, PlanOptions};

fn nano() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/nano")
}

/// The images `manifest` plans, relative to the output folder.
fn planned(manifest: &Path) -> BTreeSet<PathBuf> {
    let plan = Plan::build(
        &Manifest::read(manifest).unwrap(),
        &PlanOptions {
            default_model: Some(nano()),
            ..Default::default()
        },
    );
    plan.images.into_iter().map(|i| i.path).collect()
}

/// Every file under `dir` (relative), `_render` excluded.
fn images_under(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "_render") {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn render(manifest: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut v = vec![
        "render",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    v.extend_from_slice(extra);
    run(&v)
}

const JOBS: &str = concat!(
    "{\"defaults\": {\"steps\": 4}}\n",
    "{\"prompt\": \"a red circle on a blue background\", \"seeds\": [3, 11, 7], \"output\": \"circles\"}\n",
    "{\"prompt\": \"a small green square in the top left on a white background\", \"seed\": 40, \"count\": 2, \"name\": \"squares\"}\n",
);

#[test]
fn renders_each_image_once_as_sample_would() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("jobs.jsonl");
    std::fs::write(&m, JOBS).unwrap();
    let out = dir.path().join("out");
    let o = render(&m, &out, &["--batch", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = planned(&m);
    assert_eq!(want.len(), 5);
    assert_eq!(images_under(&out), want);
    assert!(
        stderr(&o).contains("5 rendered, 0 already done"),
        "{}",
        stderr(&o)
    );
    // A batch of seeds [3, 11] gives what `sample --seed 11` alone gives (batching changes
    // nothing but float summation order: at most 1 level).
    let rendered = want
        .iter()
        .find(|p| p.to_string_lossy().ends_with("-11.png"))
        .unwrap();
    let s_out = dir.path().join("sample");
    let o = run(&[
        "sample",
        "--prompt",
        "a red circle on a blue background",
        "--seed",
        "11",
        "--steps",
        "4",
        "--out",
        s_out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, _, a, meta) = read_png(&out.join(rendered));
    let (_, _, b, _) = read_png(&png_files(&s_out)[0]);
    assert!(
        max_byte_diff(&a, &b) <= 1,
        "render vs sample: {}",
        max_byte_diff(&a, &b)
    );
    let json = &meta.iter().find(|(k, _)| k == "dreamforge").unwrap().1;
    assert!(
        json.contains("\"seed\":11") && json.contains("\"job\":\"line 2\""),
        "{json}"
    );
    // A rerun makes nothing new and leaves the images as they were.
    let before = std::fs::read(out.join(rendered)).unwrap();
    let o = render(&m, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 rendered, 5 already done"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(out.join(rendered)).unwrap(), before);
    assert_eq!(images_under(&out), want);
    // The log holds one `done` record per image.
    let log = std::fs::read_to_string(out.join("_render/results-0000-of-0001.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"status\":\"done\""))
            .count(),
        5
    );
}

#[test]
fn shards_partition_the_work_whatever_tells_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("jobs.jsonl");
    std::fs::write(&m, JOBS).unwrap();
    let out = dir.path().join("out");
    let bin = env!("CARGO_BIN_EXE_dreamforge");
    let base = |c: &mut Command| {
        c.args([
            "render",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
    };
    // Nothing done yet: --status says so with exit code 3.
    let o = render(&m, &out, &["--status", "--shard", "0/3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let mut c = Command::new(bin);
        base(&mut c);
        match i {
            0 => {
                c.args(["--shard", "0/3"]);
            }
            1 => {
                c.env("SLURM_ARRAY_TASK_ID", "6")
                    .env("SLURM_ARRAY_TASK_MIN", "5")
                    .env("SLURM_ARRAY_TASK_COUNT", "3");
            }
            _ => {
                c.env("JOB_COMPLETION_INDEX", "2")
                    .args(["--shard-count", "3"]);
            }
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "shard {i}: {}", stderr(&o));
        let now = images_under(&out);
        let new: BTreeSet<_> = now.difference(&seen).cloned().collect();
        // The shard's log names exactly the images it added.
        let log =
            std::fs::read_to_string(out.join(format!("_render/results-{i:04}-of-0003.jsonl")))
                .unwrap_or_default();
        let logged: BTreeSet<PathBuf> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| PathBuf::from(v["image"].as_str().unwrap()))
            .collect();
        assert_eq!(logged, new, "shard {i}");
        seen = now;
    }
    assert_eq!(seen, planned(&m));
    let o = render(&m, &out, &["--status", "--shard", "1/3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("all") && l.split_whitespace().nth(2) == Some("5")),
        "{table}"
    );
    // An index out of range, or a Kubernetes index without a count, is refused.
    let o = render(&m, &out, &["--shard", "3/3"]);
    assert_eq!(o.status.code(), Some(1));
    let mut c = Command::new(bin);
    base(&mut c);
    let o = c.env("JOB_COMPLETION_INDEX", "1").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--shard-count"), "{}", stderr(&o));
}

#[test]
fn killed_render_finishes_on_rerun_with_each_image_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("jobs.jsonl");
    let mut text = String::from("{\"defaults\": {\"steps\": 12}}\n");
    for j in 0..4 {
        text.push_str(&format!(
            "{{\"prompt\": \"a large blue circle on a red background\", \"seed\": {}, \"count\": 4, \"output\": \"j{j}\"}}\n",
            100 * j
        ));
    }
    std::fs::write(&m, text).unwrap();
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dreamforge"))
        .args([
            "render",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--batch",
            "1",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no handler runs) once some but not all images exist.
    let t = Instant::now();
    while images_under(&out).len() < 2 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = images_under(&out);
    let want = planned(&m);
    assert_eq!(want.len(), 16);
    assert!(
        partial.is_subset(&want),
        "only planned, whole names: {partial:?}"
    );
    assert!(
        partial.len() < want.len(),
        "the kill came too late to test anything"
    );
    for p in &partial {
        image::open(out.join(p)).expect("every image present is whole");
    }
    let o = render(&m, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{} already done", partial.len())),
        "{}",
        stderr(&o)
    );
    assert_eq!(images_under(&out), want);
    for p in &want {
        image::open(out.join(p)).unwrap();
    }
    // No temporary file anywhere.
    let leftovers: Vec<_> = walkdir(&out)
        .into_iter()
        .map(|p| p.strip_prefix(&out).unwrap().to_path_buf())
        .filter(|p| p.to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let o = render(&m, &out, &["--status"]);
    assert!(o.status.success());
}

fn walkdir(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        v.push(p.clone());
        if p.is_dir() {
            v.extend(walkdir(&p));
        }
    }
    v
}

#[test]
fn bad_lines_and_failing_jobs_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let m = dir.path().join("jobs.jsonl");
    std::fs::write(
        &m,
        concat!(
            "{\"prompt\": \"a red circle on a blue background\", \"seed\": 1, \"steps\": 2}\n",
            "{\"prompt\": \"typo\", \"stepz\": 3}\n",
            "this is not json\n",
            "{\"prompt\": \"up\", \"output\": \"../escaped\"}\n",
            "{\"prompt\": \"abs\", \"output\": \"/tmp/escaped\"}\n",
            "{\"prompt\": \"no model\", \"model\": \"missing-model\"}\n",
            "{\"prompt\": \"bad adapter\", \"adapters\": [\"broken.safetensors\"], \"steps\": 2}\n",
            "{\"prompt\": \"FLUX has no sampler choice\", \"seed\": 9, \"steps\": 2, \"sampler\": \"ddim\"}\n",
            "{\"prompt\": \"a green square on a white background\", \"seed\": 2, \"steps\": 2, \"width\": 33}\n",
            "{\"prompt\": \"a blue circle on a red background\", \"seed\": 3, \"steps\": 2, \"output\": \"ok\"}\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    // The dry run lists every problem and renders nothing.
    let o = render(&m, &out, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(1));
    let report = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "line 2",
        "stepz",
        "line 3",
        "line 4",
        "leaves the output",
        "line 5",
        "absolute",
        "line 6",
        "missing-model",
        "line 7",
        "broken.safetensors",
    ] {
        assert!(report.contains(needle), "`{needle}` not in {report}");
    }
    assert!(images_under(&out).is_empty());
    let o = render(&m, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // The good jobs rendered; the others are in the log with their reasons.
    let made = images_under(&out);
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made.iter().any(|p| p.starts_with("ok")));
    let log = std::fs::read_to_string(out.join("_render/results-0000-of-0001.jsonl")).unwrap();
    let failed = log
        .lines()
        .filter(|l| l.contains("\"status\":\"failed\""))
        .count();
    assert_eq!(failed, 8, "{log}");
    assert!(
        log.contains("--sampler applies to Stable Diffusion"),
        "{log}"
    );
    assert!(
        log.contains("width and height must be positive multiples"),
        "{log}"
    );
    // Nothing escaped the output folder.
    assert!(!dir.path().join("escaped").exists());
    assert!(!Path::new("/tmp/escaped").exists());
}

#[test]
fn toml_manifest_defaults_file_and_retryable_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("jobs.toml");
    std::fs::write(
        &m,
        "[defaults]\nsteps = 2\n\n[[job]]\nprompt = \"a red circle on a blue background\"\nseed = 5\noutput = \"blocked/x\"\n\n[[job]]\nprompt = \"a green square on a white background\"\nseed = 6\n",
    )
    .unwrap();
    let defaults = dir.path().join("defaults.json");
    std::fs::write(&defaults, "{\"width\": 32, \"height\": 32, \"steps\": 9}").unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A file where a folder must go: an output error, which a rerun (after the operator
    // fixes the disk) may not meet — exit 2 (as every runtime / I/O failure).
    std::fs::write(out.join("blocked"), b"").unwrap();
    let o = render(&m, &out, &["--defaults", defaults.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let made: Vec<_> = images_under(&out)
        .into_iter()
        .filter(|p| p.extension().is_some())
        .collect();
    assert_eq!(made.len(), 1);
    let (w, h, _, meta) = read_png(&out.join(&made[0]));
    assert_eq!((w, h), (32, 32));
    // The manifest's header (steps 2) wins over the defaults file (steps 9).
    let json = &meta.iter().find(|(k, _)| k == "dreamforge").unwrap().1;
    assert!(json.contains("\"steps\":2"), "{json}");
    std::fs::remove_file(out.join("blocked")).unwrap();
    let o = render(&m, &out, &["--defaults", defaults.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 rendered, 1 already done"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn references_render_as_sample_ref_does() {
    let dir = tempfile::tempdir().unwrap();
    let subj = dir.path().join("subject");
    let o = run(&[
        "nano",
        "subject",
        "--seed",
        "2",
        "--out",
        subj.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let prompt = "a large sks hexagon on a blue background, top right";
    let m = dir.path().join("jobs.jsonl");
    std::fs::write(
        &m,
        format!(
            "{{\"prompt\": \"{prompt}\", \"seed\": 4, \"tau\": 0.2, \"references\": [{{\"image\": \"subject/subject.png\", \"mask\": \"auto\", \"shift\": [-8, 8]}}]}}\n{{\"prompt\": \"{prompt}\", \"seed\": 4, \"tau\": 0.2, \"references\": [{{\"image\": \"subject/subject.png\", \"mask\": \"auto\", \"shift\": [-16, 8]}}]}}\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = render(&m, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another shift is another image.
    let made: Vec<_> = images_under(&out).into_iter().collect();
    assert_eq!(made.len(), 2, "{made:?}");
    let s_out = dir.path().join("sample");
    let o = run(&[
        "sample",
        "--prompt",
        prompt,
        "--seed",
        "4",
        "--ref",
        subj.join("subject.png").to_str().unwrap(),
        "--ref-mask",
        "auto",
        "--shift=-8,8",
        "--tau",
        "0.2",
        "--out",
        s_out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, _, b, _) = read_png(&png_files(&s_out)[0]);
    let diffs: Vec<u8> = made
        .iter()
        .map(|p| max_byte_diff(&read_png(&out.join(p)).2, &b))
        .collect();
    assert!(diffs.contains(&0) || diffs.contains(&1), "{diffs:?}");
}
