//! From a manifest to the list of images to exist: defaults layered, paths resolved against
//! the manifest's folder, values checked, each job given its identity and each image its output
//! path and shard key.
//!
//! A job's key is the SHA-256 of a canonical JSON of what changes its pixels: prompt, negative
//! prompt, size, steps, guidance, true CFG, sampler, clip skip, the model's and components'
//! content fingerprints and each adapter's fingerprint with its strength. Not paths (two boxes
//! mounting a model at different places agree), not the name or output folder (placement only).
//! An image is `<output>/<name->KEY16-SEED.png`; its key is SHA-256(`job key:seed`). Unset
//! values stay unset in the key: they mean "the model's default", and the model's own configs
//! are inside its fingerprint.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fingerprint::{fingerprint, hex};
use crate::manifest::{JobFields, Manifest};

/// Where the results logs and temporary files live, inside the output folder.
pub const STATE_DIR: &str = "_render";
/// The most images one job may ask for.
pub const MAX_COUNT: usize = 1_000_000;

/// What shards are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardUnit {
    /// Each image on its own (even spread; a shard loads every model some of its images use).
    #[default]
    Image,
    /// All images of a job together (fewer model loads per shard when jobs use many models).
    Job,
}

/// How a manifest is resolved.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// The model of jobs that name none (the built-in nano model).
    pub default_model: Option<PathBuf>,
    /// Defaults from the command line (over the manifest's header).
    pub flags: JobFields,
    /// Defaults from `--defaults FILE` (under the manifest's header).
    pub defaults_file: JobFields,
    pub unit: ShardUnit,
}

/// A resolved, checked job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where it is in the manifest (`line 12`, `job 3`).
    pub label: String,
    /// The job's fields after layering (paths as written).
    pub fields: JobFields,
    pub prompt: String,
    pub model: PathBuf,
    pub components: Option<PathBuf>,
    /// Fingerprint of the model and its components.
    pub model_fp: String,
    /// (path, strength, fingerprint) per adapter.
    pub adapters: Vec<(PathBuf, f64, String)>,
    /// Token-replacement references, resolved.
    pub references: Vec<ResolvedReference>,
    pub key: String,
    pub seeds: Vec<u64>,
    /// The output sub-folder (relative).
    pub output: PathBuf,
}

impl Job {
    /// What loads the model: jobs with equal keys share one loaded pipeline.
    pub fn model_key(&self) -> String {
        self.model_fp.clone()
    }

    /// What attaches adapters: equal keys share one adapted model.
    pub fn adapter_key(&self) -> String {
        self.adapters
            .iter()
            .map(|(_, s, fp)| format!("{fp}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A token-replacement reference with its paths resolved.
#[derive(Debug, Clone)]
pub struct ResolvedReference {
    pub image: PathBuf,
    pub image_fp: String,
    /// A mask file; `None` with `mask_key` "all" (the whole reference) or "auto".
    pub mask: Option<PathBuf>,
    /// The mask file's fingerprint, or "all" / "auto".
    pub mask_key: String,
    /// Pixels.
    pub shift: [i64; 2],
    pub prompt: String,
}

/// One image to exist.
#[derive(Debug, Clone)]
pub struct Image {
    /// Index into [`Plan::jobs`].
    pub job: usize,
    pub seed: u64,
    /// SHA-256 of `job key:seed`.
    pub key: String,
    /// What decides the shard (the image key, or the job key with [`ShardUnit::Job`]).
    pub shard_key: String,
    /// Path relative to the output folder.
    pub path: PathBuf,
}

/// A job line that could not become images, and why.
#[derive(Debug, Clone)]
pub struct BadJob {
    pub label: String,
    pub error: String,
    /// Decides which single shard reports it.
    pub shard_key: String,
}

/// Everything a manifest asks for.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub jobs: Vec<Job>,
    pub images: Vec<Image>,
    pub bad: Vec<BadJob>,
    /// Notes: images asked for twice (rendered once).
    pub notes: Vec<String>,
}

impl Plan {
    /// Resolves every job of `m`. Bad jobs are collected, never fatal.
    pub fn build(m: &Manifest, opt: &PlanOptions) -> Plan {
        let base = m.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let defaults = opt.flags.over(&m.defaults.over(&opt.defaults_file));
        let mut fps: HashMap<PathBuf, Result<String, String>> = HashMap::new();
        let mut plan = Plan::default();
        let mut seen: HashMap<PathBuf, String> = HashMap::new();
        for line in &m.jobs {
            let shard_key = hex(&Sha256::digest(format!("{}:{:?}", line.label, line.fields)));
            let job = line
                .fields
                .clone()
                .and_then(|f| resolve(&line.label, f.over(&defaults), &base, opt, &mut fps));
            let job = match job {
                Ok(j) => j,
                Err(error) => {
                    plan.bad.push(BadJob {
                        label: line.label.clone(),
                        error,
                        shard_key,
                    });
                    continue;
                }
            };
            let idx = plan.jobs.len();
            for &seed in &job.seeds {
                let key = hex(&Sha256::digest(format!("{}:{seed}", job.key)));
                let prefix = job
                    .fields
                    .name
                    .as_ref()
                    .map(|n| format!("{n}-"))
                    .unwrap_or_default();
                let path = job
                    .output
                    .join(format!("{prefix}{}-{seed}.png", &job.key[..16]));
                if let Some(first) = seen.get(&path) {
                    plan.notes.push(format!(
                        "{}: seed {seed} renders the same image as {first}; it is made once",
                        job.label
                    ));
                    continue;
                }
                seen.insert(path.clone(), job.label.clone());
                let shard_key = match opt.unit {
                    ShardUnit::Image => key.clone(),
                    ShardUnit::Job => job.key.clone(),
                };
                plan.images.push(Image {
                    job: idx,
                    seed,
                    key,
                    shard_key,
                    path,
                });
            }
            plan.jobs.push(job);
        }
        plan
    }
}

fn resolve(
    label: &str,
    f: JobFields,
    base: &Path,
    opt: &PlanOptions,
    fps: &mut HashMap<PathBuf, Result<String, String>>,
) -> Result<Job, String> {
    let prompt = f.prompt.clone().ok_or("no `prompt`")?.trim().to_string();
    if prompt.is_empty() {
        return Err("`prompt` is empty".into());
    }
    if let Some(n) = &f.name {
        let ok = !n.is_empty()
            && n.len() <= 64
            && !n.starts_with('.')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(format!(
                "`name` \"{n}\" must be 1-64 characters of A-Z a-z 0-9 . _ - (not starting with .)"
            ));
        }
    }
    for (k, v, lo, hi) in [
        ("width", f.width, 16, 8192),
        ("height", f.height, 16, 8192),
        ("steps", f.steps, 1, 1000),
    ] {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            return Err(format!("`{k}` {v} is outside {lo}..={hi}"));
        }
    }
    if let Some(t) = f.tau
        && !(0.0..=1.0).contains(&t)
    {
        return Err(format!("`tau` {t} is outside 0..=1"));
    }
    for (k, v) in [("guidance", f.guidance), ("true_cfg", f.true_cfg)] {
        if let Some(v) = v
            && !(v.is_finite() && (0.0..=100.0).contains(&v))
        {
            return Err(format!("`{k}` {v} is outside 0..=100"));
        }
    }
    let seeds = seeds(&f)?;
    let output = safe_subfolder(f.output.as_deref().unwrap_or(""))?;
    let model = match &f.model {
        Some(m) => base.join(m),
        None => opt
            .default_model
            .clone()
            .ok_or("no `model` and no default model")?,
    };
    let components = f.components.as_ref().map(|c| base.join(c));
    let mut fp = |p: &Path| -> Result<String, String> {
        fps.entry(p.to_path_buf())
            .or_insert_with(|| fingerprint(p).map_err(|e| e.to_string()))
            .clone()
    };
    let mut model_fp = fp(&model)?;
    if let Some(c) = &components {
        model_fp = hex(&Sha256::digest(format!("{model_fp}+{}", fp(c)?)));
    }
    let mut adapters = Vec::new();
    for a in f.adapters.iter().flatten() {
        if !a.scale.is_finite() {
            return Err(format!(
                "adapter {}: scale {} is not finite",
                a.path, a.scale
            ));
        }
        let p = base.join(&a.path);
        let afp = fp(&p)?;
        adapters.push((p, a.scale, afp));
    }
    let mut references = Vec::new();
    for r in f.references.iter().flatten() {
        let image = base.join(&r.image);
        let image_fp = fp(&image)?;
        let mask = match r.mask.as_deref() {
            None | Some("all") => (None, "all".to_string()),
            Some("auto") => (None, "auto".to_string()),
            Some(m) => {
                let p = base.join(m);
                let mfp = fp(&p)?;
                (Some(p), mfp)
            }
        };
        references.push(ResolvedReference {
            image,
            image_fp,
            mask: mask.0,
            mask_key: mask.1,
            shift: r.shift.unwrap_or([0, 0]),
            prompt: r.prompt.clone().unwrap_or_default(),
        });
    }
    let mut canonical = serde_json::json!({
        "v": 1,
        "prompt": prompt,
        "negative_prompt": f.negative_prompt,
        "width": f.width,
        "height": f.height,
        "steps": f.steps,
        "guidance": f.guidance,
        "true_cfg": f.true_cfg,
        "sampler": f.sampler,
        "clip_skip": f.clip_skip,
        "model": model_fp,
        "adapters": adapters.iter().map(|(_, s, fp)| serde_json::json!([fp, s])).collect::<Vec<_>>(),
        "references": references.iter().map(|r| serde_json::json!([r.image_fp, r.mask_key, r.shift, r.prompt])).collect::<Vec<_>>(),
        "tau": f.tau,
        "share_attention": f.share_attention.unwrap_or(false),
    });
    // Only when on, so that the keys of jobs written before the field existed stay the same.
    if f.ref_blend == Some(true) {
        canonical["ref_blend"] = serde_json::Value::Bool(true);
    }
    let key = hex(&Sha256::digest(canonical.to_string()));
    let seeds = match seeds {
        Some(s) => s,
        None => {
            // No seed given: one derived from the job, so a rerun makes the same images.
            let first = u64::from_str_radix(&key[..8], 16).unwrap_or(0);
            (first..first + f.count.unwrap_or(1) as u64).collect()
        }
    };
    Ok(Job {
        label: label.into(),
        fields: f,
        prompt,
        model,
        components,
        model_fp,
        adapters,
        references,
        key,
        seeds,
        output,
    })
}

/// The explicit seeds, or `None` when only a count (or nothing) is given.
fn seeds(f: &JobFields) -> Result<Option<Vec<u64>>, String> {
    if let Some(c) = f.count
        && !(1..=MAX_COUNT).contains(&c)
    {
        return Err(format!("`count` {c} is outside 1..={MAX_COUNT}"));
    }
    match (&f.seeds, f.seed, f.count) {
        (Some(_), Some(_), _) => Err("give `seed` (with `count`) or `seeds`, not both".into()),
        (Some(_), None, Some(_)) => {
            Err("`count` with `seeds`: the seed list already says how many".into())
        }
        (Some(s), None, None) => {
            if s.is_empty() {
                return Err("`seeds` is empty".into());
            }
            let mut set = HashSet::new();
            if let Some(d) = s.iter().find(|x| !set.insert(**x)) {
                return Err(format!("seed {d} is listed twice in `seeds`"));
            }
            Ok(Some(s.clone()))
        }
        (None, Some(s), c) => {
            let c = c.unwrap_or(1) as u64;
            s.checked_add(c)
                .ok_or_else(|| format!("`seed` {s} + `count` {c} overflows"))?;
            Ok(Some((s..s + c).collect()))
        }
        (None, None, _) => Ok(None),
    }
}

/// `sub` as a relative folder that cannot leave the output folder (no `..`, no absolute path,
/// not the state folder).
pub fn safe_subfolder(sub: &str) -> Result<PathBuf, String> {
    let p = Path::new(sub);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "`output` \"{sub}\" leaves the output folder (`..`)"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "`output` \"{sub}\" is an absolute path; it must be a sub-folder of --out"
                ));
            }
        }
    }
    if out
        .components()
        .next()
        .is_some_and(|c| c.as_os_str() == STATE_DIR)
    {
        return Err(format!(
            "`output` \"{sub}\" is dreamforge's own state folder"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shard;
    use rand::{Rng, SeedableRng};

    fn setup() -> (tempfile::TempDir, PlanOptions) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("m")).unwrap();
        std::fs::write(d.path().join("m/model_index.json"), b"{}").unwrap();
        std::fs::write(d.path().join("a.safetensors"), b"adapter").unwrap();
        let opt = PlanOptions {
            default_model: Some(d.path().join("m")),
            ..Default::default()
        };
        (d, opt)
    }

    fn plan(dir: &Path, text: &str, opt: &PlanOptions) -> Plan {
        let p = dir.join("jobs.jsonl");
        std::fs::write(&p, text).unwrap();
        Plan::build(&Manifest::read(&p).unwrap(), opt)
    }

    #[test]
    fn escapes_rejected() {
        for bad in ["../x", "a/../../b", "/etc", "_render", "./_render/x"] {
            assert!(safe_subfolder(bad).is_err(), "{bad}");
        }
        assert_eq!(safe_subfolder("./a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_subfolder("").unwrap(), PathBuf::new());
    }

    #[test]
    fn bad_values_fail_their_job() {
        let (d, opt) = setup();
        let p = plan(
            d.path(),
            concat!(
                "{\"prompt\": \"ok\", \"seed\": 1, \"count\": 2}\n",
                "{\"prompt\": \" \"}\n",
                "{\"prompt\": \"a\", \"seed\": 1, \"seeds\": [2]}\n",
                "{\"prompt\": \"a\", \"seeds\": [2, 2]}\n",
                "{\"prompt\": \"a\", \"count\": 0}\n",
                "{\"prompt\": \"a\", \"steps\": 0}\n",
                "{\"prompt\": \"a\", \"guidance\": -1}\n",
                "{\"prompt\": \"a\", \"output\": \"../up\"}\n",
                "{\"prompt\": \"a\", \"model\": \"missing\"}\n",
                "{\"prompt\": \"a\", \"adapters\": [\"nope.safetensors\"]}\n",
                "{\"prompt\": \"a\", \"name\": \"a b\"}\n",
                "{\"prompt\": \"a\", \"references\": [{\"image\": \"r.png\"}]}\n",
                "{\"prompt\": \"a\", \"tau\": 2}\n",
                "{\"prompt\": \"a\", \"seed\": 18446744073709551615, \"count\": 2}\n",
            ),
            &opt,
        );
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.images.len(), 2);
        assert_eq!(p.bad.len(), 13, "{:#?}", p.bad);
        assert!(p.bad.iter().any(|b| b.error.contains("missing")));
        assert!(p.bad.iter().any(|b| b.error.contains("leaves the output")));
    }

    #[test]
    fn identity_is_content_not_place() {
        let (d, opt) = setup();
        let p1 = plan(
            d.path(),
            "{\"prompt\": \"a\", \"seed\": 5, \"adapters\": [\"a.safetensors:0.5\"], \"output\": \"x\"}\n",
            &opt,
        );
        // The same files elsewhere, another output folder: same key.
        let d2 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d2.path().join("other")).unwrap();
        std::fs::write(d2.path().join("other/model_index.json"), b"{}").unwrap();
        std::fs::write(d2.path().join("b.safetensors"), b"adapter").unwrap();
        let p2 = plan(
            d2.path(),
            "{\"prompt\": \"a\", \"seed\": 5, \"model\": \"other\", \"adapters\": [\"b.safetensors:0.5\"]}\n",
            &opt,
        );
        assert_eq!(p1.jobs[0].key, p2.jobs[0].key);
        assert_eq!(p1.images[0].key, p2.images[0].key);
        assert_eq!(
            p1.images[0].path,
            PathBuf::from(format!("x/{}-5.png", &p1.jobs[0].key[..16]))
        );
        // A different strength, prompt or adapter content: a different key.
        for line in [
            "{\"prompt\": \"a\", \"seed\": 5, \"adapters\": [\"a.safetensors:0.6\"]}\n",
            "{\"prompt\": \"b\", \"seed\": 5, \"adapters\": [\"a.safetensors:0.5\"]}\n",
            "{\"prompt\": \"a\", \"seed\": 5, \"steps\": 3, \"adapters\": [\"a.safetensors:0.5\"]}\n",
        ] {
            assert_ne!(
                plan(d.path(), line, &opt).jobs[0].key,
                p1.jobs[0].key,
                "{line}"
            );
        }
        std::fs::write(d.path().join("a.safetensors"), b"retrained").unwrap();
        let line = "{\"prompt\": \"a\", \"seed\": 5, \"adapters\": [\"a.safetensors:0.5\"]}\n";
        assert_ne!(plan(d.path(), line, &opt).jobs[0].key, p1.jobs[0].key);
    }

    #[test]
    fn unseeded_jobs_are_reproducible_and_duplicates_made_once() {
        let (d, opt) = setup();
        let text = "{\"prompt\": \"a\", \"count\": 3}\n{\"prompt\": \"a\", \"count\": 2}\n";
        let p = plan(d.path(), text, &opt);
        let q = plan(d.path(), text, &opt);
        let paths = |p: &Plan| p.images.iter().map(|i| i.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&p), paths(&q));
        assert_eq!(p.images.len(), 3);
        assert_eq!(p.notes.len(), 2);
    }

    #[test]
    fn layering_of_flags_header_and_file() {
        let (d, mut opt) = setup();
        opt.flags.steps = Some(7);
        opt.defaults_file.steps = Some(3);
        opt.defaults_file.width = Some(64);
        let p = plan(
            d.path(),
            "{\"defaults\": {\"width\": 32, \"steps\": 5}}\n{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"steps\": 2}\n",
            &opt,
        );
        assert_eq!(p.jobs[0].fields.steps, Some(7));
        assert_eq!(p.jobs[0].fields.width, Some(32));
        assert_eq!(p.jobs[1].fields.steps, Some(2));
    }

    /// Over random manifests: every image is owned by exactly one shard, for several shard
    /// counts; ownership is the same whatever the order of the lines and whether other lines
    /// exist.
    #[test]
    fn shard_partition_property() {
        let (d, opt) = setup();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..20 {
            let n_jobs = rng.random_range(1..30);
            let mut lines: Vec<String> = (0..n_jobs)
                .map(|j| {
                    format!(
                        "{{\"prompt\": \"p{round}-{j}-{}\", \"seed\": {}, \"count\": {}, \"steps\": {}}}",
                        rng.random_range(0..5),
                        rng.random_range(0..1000),
                        rng.random_range(1..6),
                        rng.random_range(1..9)
                    )
                })
                .collect();
            let p = plan(d.path(), &lines.join("\n"), &opt);
            for count in [1usize, 2, 3, 7, 64] {
                let mut owners = vec![0usize; p.images.len()];
                for index in 0..count {
                    let s = Shard::new(index, count).unwrap();
                    for (o, img) in owners.iter_mut().zip(&p.images) {
                        *o += s.owns(&img.shard_key) as usize;
                    }
                }
                assert!(
                    owners.iter().all(|&o| o == 1),
                    "round {round}, {count} shards"
                );
            }
            // Reorder and drop lines: the surviving images keep their shard and path.
            let count = 5;
            let before: HashMap<PathBuf, usize> = p
                .images
                .iter()
                .map(|i| (i.path.clone(), Shard::of_key(&i.shard_key, count)))
                .collect();
            lines.reverse();
            lines.truncate(lines.len().div_ceil(2));
            let q = plan(d.path(), &lines.join("\n"), &opt);
            for i in &q.images {
                assert_eq!(before[&i.path], Shard::of_key(&i.shard_key, count));
            }
        }
    }
}
