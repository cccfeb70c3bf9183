//! `dreamforge render MANIFEST --out DIR [--shard i/N]`: batch rendering for fleets.
//!
//! Every job is `dreamforge sample` with the job's fields as flags (the same defaults, checks
//! and PNG metadata). The manifest, identities, shards, logs and status live in
//! `dreamforge-render`; this file loads models and writes pixels: this shard's missing images
//! grouped by model (loaded once), then by adapter set (attached to the loaded base, never a
//! reload), then by job, in batches of `--batch` seeds per forward pass. Each image is written
//! to `OUT/_render/tmp-SHARD/` and renamed into place, then logged; a killed worker leaves no
//! partial image, and its rerun skips what exists and clears its own temporary folder.
//! Exit codes: 0 everything done, 1 something failed on its input (a rerun fails the same way),
//! 2 something failed in a way a rerun may not meet (I/O, device, out of memory; worth a
//! retry — takes precedence over 1), 130 interrupted; `--status`: 0 complete, 3 not yet.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Args, Parser, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use dreamforge_core::image_io::{RgbImage, encode_png};
use dreamforge_core::{DeviceSpec, Error};
use dreamforge_pipeline::{ComponentOverrides, ModelFamily, detect_family};
use dreamforge_render::log::{self, Record, Status};
use dreamforge_render::plan::{STATE_DIR, ShardUnit};
use dreamforge_render::{Image, JobFields, Manifest, Plan, PlanOptions, Shard, status};

use crate::sample::{Ctx, Loaded, LoraFiles, SampleArgs};

#[derive(Args)]
pub struct RenderArgs {
    /// The manifest: JSONL, one job per line (optional first line `{"defaults": {...}}`), or
    /// TOML (`[defaults]`, `[[job]]`). Fields: prompt, negative_prompt, seed, seeds, count,
    /// width, height, steps, guidance, true_cfg, sampler, clip_skip, model, components,
    /// adapters, references ([{image, mask, shift, prompt}]), tau, output, name. Relative
    /// paths are relative to the manifest.
    pub manifest: PathBuf,
    /// Output folder (shared by all shards; images go to OUT/<output>/, logs to OUT/_render/).
    #[arg(long)]
    pub out: PathBuf,
    /// This worker's part: INDEX/COUNT, 0-based [default: from SLURM_ARRAY_TASK_ID /
    /// SLURM_ARRAY_TASK_COUNT / SLURM_ARRAY_TASK_MIN, or JOB_COMPLETION_INDEX with
    /// --shard-count, else everything].
    #[arg(long)]
    pub shard: Option<String>,
    /// The number of shards, for a Kubernetes Indexed Job (its `completions`).
    #[arg(long)]
    pub shard_count: Option<usize>,
    /// What shards are made of: single images (even spread) or whole jobs (fewer model loads
    /// per shard when the manifest uses many models). Every shard must use the same.
    #[arg(long, value_enum, default_value = "image")]
    pub shard_by: ShardBy,
    /// Print done / failed / missing per shard and exit (0 complete, 3 not yet).
    #[arg(long)]
    pub status: bool,
    /// Check the whole manifest (every model, adapter and value) without rendering.
    #[arg(long)]
    pub dry_run: bool,
    /// A file of default job fields (TOML or JSON), under the manifest's own header.
    #[arg(long)]
    pub defaults: Option<PathBuf>,
    /// Images per forward pass (seeds of the same job).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Device: cpu, wgpu[:N] or cuda[:N] (among those compiled in).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Default model for jobs naming none [default: the built-in nano model].
    #[arg(long)]
    pub model: Option<String>,
    /// Default `steps` (a job's own value wins; this wins over the manifest's header).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Hide the progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ShardBy {
    Image,
    Job,
}

/// An exit code chosen by the command itself, with the message main prints.
#[derive(Debug)]
pub struct ExitWith(pub u8, pub String);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ExitWith {}

pub fn run(a: RenderArgs) -> anyhow::Result<()> {
    if a.batch == 0 {
        return Err(Error::InvalidInput("--batch must be at least 1".into()).into());
    }
    let (shard, shard_from) =
        Shard::resolve(a.shard.as_deref(), a.shard_count, |k| std::env::var(k).ok())?;
    let manifest = Manifest::read(&a.manifest)?;
    let defaults_file = a
        .defaults
        .as_deref()
        .map(JobFields::read_defaults)
        .transpose()?
        .unwrap_or_default();
    let opt = PlanOptions {
        default_model: crate::builtin::nano_model().ok(),
        flags: JobFields {
            // A path on the command line is relative to the working folder.
            model: a
                .model
                .as_deref()
                .map(|m| std::path::absolute(m).map(|p| p.display().to_string()))
                .transpose()
                .map_err(|e| Error::io(a.model.as_deref().unwrap_or_default(), e))?,
            steps: a.steps,
            width: a.width,
            height: a.height,
            guidance: a.guidance,
            ..Default::default()
        },
        defaults_file,
        unit: match a.shard_by {
            ShardBy::Image => ShardUnit::Image,
            ShardBy::Job => ShardUnit::Job,
        },
    };
    let plan = Plan::build(&manifest, &opt);
    if a.status {
        return print_status(&plan, &a.out, shard.count);
    }
    if a.dry_run {
        return dry_run(&plan, &a, shard);
    }
    Worker::new(&a, shard, shard_from)?.run(&plan, &a)
}

/// `--status`.
fn print_status(plan: &Plan, out: &Path, count: usize) -> anyhow::Result<()> {
    let (shards, total) = status::summarize(plan, out, count);
    println!("shard       images    done  failed  retry  missing  bad-lines");
    for s in shards.iter().chain(std::iter::once(&total)) {
        let label = if s.shard == count {
            "all".to_string()
        } else {
            format!("{}/{count}", s.shard)
        };
        println!(
            "{label:<10} {:>7} {:>7} {:>7} {:>6} {:>8} {:>10}",
            s.images, s.done, s.failed, s.retryable, s.missing, s.bad_jobs
        );
    }
    for b in &plan.bad {
        println!("bad job {}: {}", b.label, b.error);
    }
    if total.complete() {
        Ok(())
    } else {
        let left = total.images - total.done;
        Err(ExitWith(
            3,
            if left > 0 {
                format!("{left} of {} images not done yet", total.images)
            } else {
                format!(
                    "all {} images done; {} bad job line(s) make none (fix them and rerun)",
                    total.images, total.bad_jobs
                )
            },
        )
        .into())
    }
}

/// A job's fields as `sample` flags, parsed by `sample`'s own parser.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct Argv {
    #[command(flatten)]
    s: SampleArgs,
}

/// The `sample` arguments of one job (a batch of `seeds`).
fn job_args(plan: &Plan, job: usize, seeds: &[u64]) -> anyhow::Result<SampleArgs> {
    let j = &plan.jobs[job];
    let f = &j.fields;
    let mut v: Vec<String> = vec![format!("--prompt={}", j.prompt), "--quiet".into()];
    let mut opt = |flag: &str, val: Option<String>| {
        if let Some(x) = val {
            v.push(format!("--{flag}={x}"));
        }
    };
    opt("negative-prompt", f.negative_prompt.clone());
    opt("steps", f.steps.map(|x| x.to_string()));
    opt("width", f.width.map(|x| x.to_string()));
    opt("height", f.height.map(|x| x.to_string()));
    opt("guidance", f.guidance.map(|x| x.to_string()));
    opt("true-cfg", f.true_cfg.map(|x| x.to_string()));
    opt("sampler", f.sampler.clone());
    opt("clip-skip", f.clip_skip.map(|x| x.to_string()));
    opt("seed", seeds.first().map(|x| x.to_string()));
    opt("tau", f.tau.map(|x| x.to_string()));
    if f.share_attention == Some(true) {
        v.push("--share-attention".into());
    }
    if f.ref_blend == Some(true) {
        v.push("--ref-blend".into());
    }
    for (p, s, _) in &j.adapters {
        v.push(format!("--lora={}:{s}", p.display()));
    }
    for r in &j.references {
        v.push(format!("--ref={}", r.image.display()));
        v.push(format!(
            "--ref-mask={}",
            r.mask
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or(r.mask_key.clone())
        ));
        v.push(format!("--shift={},{}", r.shift[0], r.shift[1]));
        v.push(format!("--ref-prompt={}", r.prompt));
    }
    let mut s = Argv::try_parse_from(v)
        .map_err(|e| Error::InvalidInput(format!("{}: {}", j.label, e.render())))?
        .s;
    s.model = j.model.clone();
    s.model_arg = Some(j.model.clone());
    s.components = j.components.clone();
    s.seeds = seeds.to_vec();
    Ok(s)
}

/// The `sample` arguments that load `job`'s model and nothing of the job itself.
fn neutral_args(job: &dreamforge_render::Job) -> anyhow::Result<SampleArgs> {
    let mut s = Argv::try_parse_from(["--prompt=-", "--quiet"])?.s;
    s.model = job.model.clone();
    s.model_arg = Some(job.model.clone());
    s.components = job.components.clone();
    Ok(s)
}

/// `--dry-run`: everything a render would check before its first pixel.
fn dry_run(plan: &Plan, a: &RenderArgs, shard: Shard) -> anyhow::Result<()> {
    let mut problems: Vec<String> = plan
        .bad
        .iter()
        .map(|b| format!("{}: {}", b.label, b.error))
        .collect();
    let mut families: HashMap<PathBuf, Result<bool, String>> = HashMap::new();
    let mut adapters: HashMap<PathBuf, Result<(), String>> = HashMap::new();
    for (i, j) in plan.jobs.iter().enumerate() {
        let fam = families
            .entry(j.model.clone())
            .or_insert_with(|| {
                detect_family(&j.model)
                    .map(|f| matches!(f, ModelFamily::Flux))
                    .map_err(|e| e.to_string())
            })
            .clone();
        let check = (|| -> anyhow::Result<()> {
            let is_flux = fam.map_err(|e| anyhow::anyhow!(e))?;
            let s = job_args(plan, i, &j.seeds[..1])?;
            if is_flux {
                crate::sample::flux::check_flags(&s)?;
            } else {
                crate::sample::sd::check_flags(&s)?;
            }
            for (p, _, _) in &j.adapters {
                adapters
                    .entry(p.clone())
                    .or_insert_with(|| {
                        dreamforge_adapters::AdapterFile::read(p)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                    .clone()
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
            if let Some(c) = &j.components
                && !c.is_dir()
            {
                anyhow::bail!("components {}: not a folder", c.display());
            }
            Ok(())
        })();
        if let Err(e) = check {
            problems.push(format!("{}: {}", j.label, crate::one_line(&e)));
        }
    }
    let mut per_shard = vec![0usize; shard.count];
    for img in &plan.images {
        per_shard[Shard::of_key(&img.shard_key, shard.count)] += 1;
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
    println!(
        "{} job(s), {} image(s), {} model(s); {} shard(s): {}..{} images each (this shard {}: {})",
        plan.jobs.len(),
        plan.images.len(),
        families.len(),
        shard.count,
        per_shard.iter().min().unwrap_or(&0),
        per_shard.iter().max().unwrap_or(&0),
        shard,
        per_shard[shard.index]
    );
    if problems.is_empty() {
        println!("manifest OK");
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    Err(ExitWith(
        1,
        format!("{} problem(s) in {}", problems.len(), a.manifest.display()),
    )
    .into())
}

/// What happened in this run, for the summary and the exit code.
#[derive(Default)]
struct Tally {
    rendered: usize,
    skipped: usize,
    failed: usize,
    retryable: usize,
    bad_lines: usize,
    loads: usize,
    render_seconds: f64,
}

struct Worker {
    shard: Shard,
    out: PathBuf,
    log: PathBuf,
    tmp: PathBuf,
    host: Option<String>,
    device: burn::tensor::Device,
    spec: DeviceSpec,
    stop: Arc<AtomicBool>,
    multi: MultiProgress,
    quiet: bool,
    tally: Tally,
}

impl Worker {
    fn new(a: &RenderArgs, shard: Shard, shard_from: &str) -> anyhow::Result<Self> {
        let spec: DeviceSpec = a.device.parse()?;
        let device = dreamforge_core::select_device(spec)?;
        let state = a.out.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(|e| Error::Output {
            path: state.clone(),
            reason: e.to_string(),
        })?;
        let log = log::path(&a.out, shard);
        log::repair(&log)?;
        // This shard's temporary files from a killed run: never someone else's.
        let tmp = state.join(format!("tmp-{}", shard.tag()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let _ = ctrlc::set_handler(move || {
                if stop.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            });
        }
        let multi = MultiProgress::new();
        if a.quiet {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        if !a.quiet {
            eprintln!("render: shard {shard} (from {shard_from}) on {spec}");
        }
        Ok(Self {
            shard,
            out: a.out.clone(),
            log,
            tmp,
            host: log::host(),
            device,
            spec,
            stop,
            multi,
            quiet: a.quiet,
            tally: Tally::default(),
        })
    }

    fn say(&self, s: &str) {
        if self.quiet {
            eprintln!("{s}");
        } else {
            let _ = self.multi.println(s);
        }
    }

    fn record(
        &mut self,
        job: &str,
        img: Option<&Image>,
        status: Status,
        secs: Option<f64>,
        error: Option<String>,
    ) {
        let r = Record {
            time: log::now(),
            shard: self.shard.to_string(),
            status,
            job: job.into(),
            image: img.map(|i| i.path.to_string_lossy().into_owned()),
            seed: img.map(|i| i.seed),
            seconds: secs,
            error: error.clone(),
            host: self.host.clone(),
        };
        match status {
            Status::Done => self.tally.rendered += 1,
            Status::Failed => self.tally.failed += 1,
            Status::Retryable => self.tally.retryable += 1,
        }
        if let Some(e) = error {
            let what = img
                .map(|i| format!(" {}", i.path.display()))
                .unwrap_or_default();
            self.say(&format!("failed: {job}{what}: {e}"));
        }
        if let Err(e) = log::append(&self.log, &r) {
            self.say(&format!("warning: {e}"));
        }
    }

    /// Records the same failure for every image of `imgs`.
    fn fail_all(&mut self, job: &str, imgs: &[&Image], why: &(Status, String), bar: &ProgressBar) {
        for img in imgs {
            self.record(job, Some(img), why.0, None, Some(why.1.clone()));
            bar.inc(1);
        }
    }

    fn run(mut self, plan: &Plan, a: &RenderArgs) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let shard = self.shard;
        for b in plan.bad.iter().filter(|b| shard.owns(&b.shard_key)) {
            self.tally.bad_lines += 1;
            self.record(&b.label, None, Status::Failed, None, Some(b.error.clone()));
        }
        // This shard's images not made yet, grouped by model, adapter set, job.
        let mut mine: Vec<&Image> = Vec::new();
        for img in plan.images.iter().filter(|i| shard.owns(&i.shard_key)) {
            if self.out.join(&img.path).is_file() {
                self.tally.skipped += 1;
            } else {
                mine.push(img);
            }
        }
        // Model, then adapter set, then resolution (equal shapes back to back), then job.
        mine.sort_by_cached_key(|x| {
            let j = &plan.jobs[x.job];
            let size = (j.fields.width, j.fields.height);
            (j.model_key(), j.adapter_key(), size, x.job)
        });
        let overall = self.multi.add(ProgressBar::new(mine.len() as u64));
        overall.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let step_bar = self.multi.add(ProgressBar::new(1));
        step_bar.set_style(
            ProgressStyle::with_template("  [{bar:30}] {pos}/{len} steps  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        let mut loaded: Option<(String, Loaded)> = None;
        let mut model_failure: Option<(String, (Status, String))> = None;
        let mut adapters: Option<(String, LoraFiles, Vec<String>)> = None;
        let mut i = 0;
        while i < mine.len() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let job_idx = mine[i].job;
            let job = &plan.jobs[job_idx];
            let mut end = i;
            while end < mine.len() && mine[end].job == job_idx {
                end += 1;
            }
            let imgs = &mine[i..end];
            i = end;
            overall.set_message(format!("{} ({})", job.label, short(&job.prompt)));
            // The model: loaded once for every job that shares it.
            let model_failed = model_failure
                .as_ref()
                .is_some_and(|(k, _)| *k == job.model_key());
            if !model_failed && loaded.as_ref().map(|(k, _)| k) != Some(&job.model_key()) {
                model_failure = None;
                loaded = None;
                adapters = None;
                // Loaded with the model alone: a job's own flags are checked per job.
                let args = neutral_args(job);
                let r = args.and_then(|s| {
                    let ctx = self.ctx(&s, job.components.clone(), None);
                    guarded(|| Loaded::load(&s, &ctx))
                });
                match r {
                    Ok(l) => {
                        self.tally.loads += 1;
                        loaded = Some((job.model_key(), l));
                    }
                    Err(e) => {
                        // Every image of this model fails the same way: load it once.
                        model_failure = Some((job.model_key(), classify(&e)));
                    }
                }
            }
            if let Some((k, why)) = &model_failure
                && *k == job.model_key()
            {
                self.fail_all(&job.label, imgs, why, &overall);
                continue;
            }
            let Some((_, pipe)) = loaded.as_mut() else {
                continue;
            };
            // The adapters: attached to the loaded base when the set changes.
            if adapters.as_ref().map(|(k, _, _)| k) != Some(&job.adapter_key()) {
                adapters = None;
                let r = job_args(plan, job_idx, &[imgs[0].seed]).and_then(|s| {
                    let files = LoraFiles::read(&s)?;
                    let warnings = guarded(|| pipe.set_adapters(&files))?;
                    Ok((files, warnings))
                });
                match r {
                    Ok((files, warnings)) => {
                        for w in &warnings {
                            self.say(&format!("warning: {w}"));
                        }
                        adapters = Some((job.adapter_key(), files, warnings));
                    }
                    Err(e) => {
                        self.fail_all(&job.label, imgs, &classify(&e), &overall);
                        continue;
                    }
                }
            }
            let lora_meta = adapters
                .as_ref()
                .map(|(_, f, _)| f.metadata())
                .unwrap_or_default();
            for chunk in imgs.chunks(a.batch) {
                if self.stop.load(Ordering::SeqCst) {
                    break;
                }
                let seeds: Vec<u64> = chunk.iter().map(|x| x.seed).collect();
                let t = Instant::now();
                let r = job_args(plan, job_idx, &seeds).and_then(|s| {
                    let ctx = self.ctx(&s, job.components.clone(), Some(step_bar.clone()));
                    let Some((_, pipe)) = loaded.as_ref() else {
                        unreachable!("a model is loaded here")
                    };
                    guarded(|| pipe.generate(&s, &ctx, lora_meta.clone(), None, t))
                });
                match r {
                    Ok(Some(rendered)) => {
                        let secs = t.elapsed().as_secs_f64();
                        self.tally.render_seconds += secs;
                        for w in &rendered.warnings {
                            self.say(&format!("warning: {}: {w}", job.label));
                        }
                        for (k, img) in chunk.iter().enumerate() {
                            match self.write(&rendered, k, img, job, &a.manifest) {
                                Ok(()) => self.record(
                                    &job.label,
                                    Some(img),
                                    Status::Done,
                                    Some(secs / chunk.len() as f64),
                                    None,
                                ),
                                Err(e) => {
                                    let (status, msg) = classify(&e);
                                    self.record(&job.label, Some(img), status, None, Some(msg));
                                }
                            }
                            overall.inc(1);
                        }
                    }
                    Ok(None) => break, // Ctrl-C
                    Err(e) => self.fail_all(&job.label, chunk, &classify(&e), &overall),
                }
            }
        }
        step_bar.finish_and_clear();
        overall.finish_and_clear();
        let _ = std::fs::remove_dir(&self.tmp);
        let t = &self.tally;
        let secs = t0.elapsed().as_secs_f64();
        let interrupted = self.stop.load(Ordering::SeqCst);
        eprintln!(
            "shard {}: {} rendered, {} already done, {} failed on their input, {} may succeed on retry, {} bad job line(s); {} model load(s); {:.1}s ({:.2} images/s rendering){}",
            self.shard,
            t.rendered,
            t.skipped,
            t.failed - t.bad_lines,
            t.retryable,
            t.bad_lines,
            t.loads,
            secs,
            if t.render_seconds > 0.0 {
                t.rendered as f64 / t.render_seconds
            } else {
                0.0
            },
            if interrupted { "; interrupted" } else { "" }
        );
        if interrupted {
            return Err(Error::Interrupted.into());
        }
        if t.retryable > 0 {
            return Err(ExitWith(
                2,
                format!(
                    "{} image(s) failed in a way a rerun may fix; rerun the same command",
                    t.retryable
                ),
            )
            .into());
        }
        if t.failed > 0 {
            return Err(ExitWith(
                1,
                format!(
                    "{} image(s) or job line(s) failed on their input; see {}",
                    t.failed,
                    self.log.display()
                ),
            )
            .into());
        }
        Ok(())
    }

    fn ctx(&self, s: &SampleArgs, components: Option<PathBuf>, bar: Option<ProgressBar>) -> Ctx {
        Ctx {
            device: self.device.clone(),
            spec: self.spec,
            seed: s.seeds.first().copied().unwrap_or(0),
            noise: None,
            stop: self.stop.clone(),
            overrides: ComponentOverrides {
                components,
                ..Default::default()
            },
            step_bar: bar,
        }
    }

    /// Image `k` of `r` to its place: a temporary file in this shard's folder, synced, then
    /// renamed (an image exists whole or not at all).
    fn write(
        &self,
        r: &crate::sample::Rendered,
        k: usize,
        img: &Image,
        job: &dreamforge_render::Job,
        manifest: &Path,
    ) -> anyhow::Result<()> {
        let [_, _, h, w] = [
            r.images.shape[0],
            r.images.shape[1],
            r.images.shape[2],
            r.images.shape[3],
        ];
        let plane = 3 * h * w;
        let pixels = RgbImage::from_chw_signed(&r.images.data[k * plane..(k + 1) * plane], h, w);
        let mut json = (r.json)(img.seed);
        if let Some(o) = json.as_object_mut() {
            o.insert(
                "render".into(),
                serde_json::json!({
                    "manifest": manifest.display().to_string(),
                    "job": job.label,
                    "name": job.fields.name,
                    "job_key": job.key,
                    "image_key": img.key,
                    "shard": self.shard.to_string(),
                }),
            );
        }
        let bytes = encode_png(
            &pixels,
            &[
                ("parameters", &(r.parameters)(img.seed)),
                ("dreamforge", &json.to_string()),
            ],
        )?;
        let dest = self.out.join(&img.path);
        let out_err = |p: &Path, e: std::io::Error| Error::Output {
            path: p.to_path_buf(),
            reason: e.to_string(),
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| out_err(parent, e))?;
        }
        let tmp = self.tmp.join(format!("{}.png", img.key));
        (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dest)
        })()
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            out_err(&dest, e)
        })?;
        Ok(())
    }
}

/// Runs `f`, turning a panic (a device out of memory, a backend assertion) into an error.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Panicked(msg).into())
        }
    }
}

#[derive(Debug)]
struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "the backend panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

/// Whether a rerun could succeed, and the one-line message.
fn classify(e: &anyhow::Error) -> (Status, String) {
    let status = if let Some(err) = e.downcast_ref::<Error>() {
        if err.is_input_error() {
            Status::Failed
        } else {
            Status::Retryable
        }
    } else if e.downcast_ref::<std::io::Error>().is_some() || e.downcast_ref::<Panicked>().is_some()
    {
        Status::Retryable
    } else {
        Status::Failed
    };
    (status, crate::one_line(e))
}

fn short(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(39).collect::<String>())
    }
}
