//! `dreamforge nano pretrain`: trains the built-in nano model from scratch on the procedural
//! world (shared/design/NANO.md) and writes it as a diffusers pipeline folder under
//! `--out/model`, beside `run_config.json`, the loss log `loss.jsonl` and the resumable
//! `checkpoint/`. Ctrl-C saves a checkpoint and exits 130; `--resume` continues exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use burn::module::Module;
use dreamforge_core::{DeviceSpec, Error};
use dreamforge_models::dit::flux::FluxTransformer;
use dreamforge_models::text::clip::ClipTextModel;
use dreamforge_nano::judge::Judge;
use dreamforge_nano::judge_train::{JudgeTrainConfig, ground_truth_accuracy, save_judge};
use dreamforge_nano::model::{NanoKeys, NanoModel, init, write_bundle};
use dreamforge_nano::pretrain::{PretrainConfig, Pretrainer, write_tokenizer};
use dreamforge_train::{Outcome, RunError, RunOutput, Trainer};

#[derive(Subcommand)]
pub enum NanoCommand {
    /// Train the nano model from scratch (the shipped weights in models/nano come from this).
    Pretrain(PretrainArgs),
    /// Train the judge (the attribute classifier behind `dreamforge eval`; shipped in
    /// models/nano-judge).
    TrainJudge(TrainJudgeArgs),
    /// Write a one-image subject set the nano model never saw (a textured object of a known
    /// shape class) for `dreamforge train`, with evaluation prompts for new contexts.
    Subject {
        /// Subject seed (each seed is a different subject and scene).
        #[arg(long)]
        seed: u64,
        /// Output folder: subject.png, subject.txt (its caption), eval_prompts.txt.
        #[arg(long)]
        out: PathBuf,
        /// The trigger word in the captions.
        #[arg(long, default_value = "sks")]
        token: String,
        /// How many evaluation prompts to write.
        #[arg(long, default_value_t = 8)]
        eval_prompts: usize,
    },
    /// Print captions of fresh scenes, one per line (held-out combinations with --held-out):
    /// prompts for measuring prompt fidelity.
    Prompts {
        #[arg(long, default_value_t = 200)]
        count: u64,
        /// Only scenes whose first object is a (shape, colour) combination never captioned in
        /// pretraining.
        #[arg(long, conflicts_with = "seen")]
        held_out: bool,
        /// Only scenes made of combinations pretraining captions (for tuning sampling settings
        /// without touching the held-out prompts).
        #[arg(long)]
        seen: bool,
        /// First scene seed (scene i uses seed + i).
        #[arg(long, default_value_t = 1 << 41)]
        seed: u64,
    },
}

#[derive(Args)]
pub struct TrainJudgeArgs {
    /// Run folder: checkpoint/, loss.jsonl, run_config.json, judge.safetensors, report.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2500)]
    pub steps: u64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct PretrainArgs {
    /// Run folder: checkpoint/, loss.jsonl, run_config.json and the exported model/.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps. The defaults are the shipped model's recipe (docs/NANO.md): 2300 steps
    /// × 128 scenes, peak rate 6e-4 held for 70 % of the steps after the warm-up (≈ 2.2 h on
    /// a 2-core CPU with the default shards).
    #[arg(long, default_value_t = 2300)]
    pub steps: u64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Peak learning rate (linear warm-up over 2 % of the steps, then cosine to 5 %).
    #[arg(long, default_value_t = 6e-4)]
    pub lr: f64,
    /// Share of the steps after warm-up held at the peak rate before the cosine decay
    /// (warmup-stable-decay; 0 = the decay spans the whole run).
    #[arg(long, default_value_t = 0.7)]
    pub stable_fraction: f64,
    /// Steps between checkpoints (each also exports model/).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Compute precision: f32, or bf16 / f16 mixed precision (f32 master weights; for GPU
    /// backends — on the CPU half precision is emulated and slower).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: dreamforge_train::Precision,
    /// Probability of leaving out each object's size word and the position in a caption, so
    /// that shorter prompts are in the model's distribution.
    #[arg(long, default_value_t = 0.0)]
    pub attribute_dropout: f64,
    /// Start from the weights of this nano model folder (e.g. models/nano) instead of a fresh
    /// init: a continuation with other data settings.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// A run config JSON (as written to run_config.json) instead of the flags above.
    #[arg(long, conflicts_with_all = ["steps", "batch_size", "lr", "stable_fraction", "precision", "attribute_dropout", "init_from"])]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint (the settings must match).
    #[arg(long)]
    pub resume: bool,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Split each batch into this many shards whose forward and backward passes run on their
    /// own threads (the same update up to float summation order; not part of the run config).
    /// Default: two per CPU core (at least 16 samples each) on the cpu device, 1 on a GPU.
    #[arg(long)]
    pub shards: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(cmd: NanoCommand) -> anyhow::Result<()> {
    match cmd {
        NanoCommand::Pretrain(a) => pretrain(a),
        NanoCommand::TrainJudge(a) => train_judge(a),
        NanoCommand::Subject {
            seed,
            out,
            token,
            eval_prompts,
        } => write_subject(seed, &out, &token, eval_prompts),
        NanoCommand::Prompts {
            count,
            held_out,
            seen,
            seed,
        } => {
            let split = match (held_out, seen) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            for i in 0..count {
                let scene = dreamforge_nano::sample_scene(seed + i, split);
                println!("{}", dreamforge_nano::caption(&scene));
            }
            Ok(())
        }
    }
}

fn write_subject(seed: u64, out: &Path, token: &str, count: usize) -> anyhow::Result<()> {
    use dreamforge_nano::Size;
    use dreamforge_nano::subject::{SubjectSet, subject_caption};
    let set = SubjectSet::from_seed(seed);
    let side = 64;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let pixels = set
        .subject
        .render(Size::Large, set.position, set.background, side);
    let img = dreamforge_core::image_io::RgbImage {
        width: side as u32,
        height: side as u32,
        pixels,
    };
    let caption = subject_caption(
        token,
        set.subject.shape,
        Size::Large,
        set.position,
        set.background,
    );
    let meta =
        serde_json::json!({"subject": set.subject, "seed": seed, "caption": caption}).to_string();
    dreamforge_core::image_io::save_png(
        &out.join("subject.png"),
        &img,
        &[("dreamforge_subject", &meta)],
    )?;
    dreamforge_core::image_io::write_atomic(&out.join("subject.txt"), caption.as_bytes())?;
    let prompts = set.eval_prompts(token, count);
    dreamforge_core::image_io::write_atomic(
        &out.join("eval_prompts.txt"),
        format!("{}\n", prompts.join("\n")).as_bytes(),
    )?;
    println!("{caption}");
    Ok(())
}

/// Writes `run_config.json` into the run folder (created).
pub(crate) fn write_run_config(out: &Path, cfg: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    dreamforge_core::image_io::write_atomic(
        &out.join("run_config.json"),
        serde_json::to_string_pretty(cfg)
            .expect("serializes")
            .as_bytes(),
    )?;
    Ok(())
}

/// Ctrl-C raises the returned flag; a second Ctrl-C exits at once.
pub(crate) fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit without a checkpoint)");
    });
    stop
}

pub(crate) fn bar(quiet: bool, steps: u64) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} steps  {msg}  elapsed {elapsed}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Maps a run error to the CLI's error kinds (bad input → exit 1).
pub(crate) fn run_error(e: RunError) -> anyhow::Error {
    match e {
        RunError::Io { .. } => e.into(),
        other => Error::InvalidInput(other.to_string()).into(),
    }
}

/// The end of a run: stopped → exit 130 with the resume hint; a non-finite loss → an error.
pub(crate) fn ended(outcome: Outcome, out: &Path, ck: &Path) -> anyhow::Result<()> {
    match outcome {
        Outcome::Finished => Ok(()),
        Outcome::Stopped { step } => {
            eprintln!(
                "stopped at step {step}; checkpoint saved in {} (continue with --resume)",
                ck.display()
            );
            bail!(Error::Interrupted)
        }
        Outcome::NonFinite { step, loss } => bail!(
            "{}: the loss became {loss} at step {step}; training stopped, the last good checkpoint in {} is kept (lower the learning rate and resume)",
            out.display(),
            ck.display()
        ),
    }
}

fn train_judge(a: TrainJudgeArgs) -> anyhow::Result<()> {
    if a.steps == 0 || a.batch_size == 0 {
        bail!(Error::InvalidInput(
            "steps and batch size must be at least 1".into()
        ));
    }
    let cfg = JudgeTrainConfig::new(a.steps, a.batch_size);
    let spec: DeviceSpec = a.device.parse()?;
    let base = dreamforge_core::select_device(spec)?;
    base.seed(cfg.init_seed);
    let device = base.clone().autodiff();
    let judge = Judge::new(&device);
    let stop = stop_flag();
    let trainer = Trainer {
        out_dir: &a.out,
        total_steps: cfg.steps,
        checkpoint_every: a.checkpoint_every,
        base_lr: cfg.lr,
        schedule: cfg.schedule,
        optimizer: cfg.optimizer,
        data_seed: cfg.data_seed,
        noise_seed: cfg.noise_seed,
        stop: &stop,
        ema_decay: None,
        precision: dreamforge_train::Precision::F32,
    };
    write_run_config(&a.out, &cfg)?;
    let bar = bar(a.quiet, cfg.steps);
    let result = trainer.run(
        &cfg,
        judge,
        a.resume,
        |m, rngs, _| cfg.loss(m, rngs, &device),
        |p, _, _| {
            bar.set_position(p.step);
            bar.set_message(format!("loss {:.4}  lr {:.2e}", p.loss, p.lr));
            if a.quiet && p.checkpointed {
                eprintln!(
                    "step {}/{} loss {:.4} ({:.0} s)",
                    p.step, p.total_steps, p.loss, p.seconds
                );
            }
        },
    );
    bar.finish_and_clear();
    let RunOutput {
        model: judge,
        outcome,
        ..
    } = result.map_err(run_error)?;
    ended(outcome, &a.out, &trainer.checkpoint_dir())?;
    let judge = judge.valid();
    let n = 2000;
    let (all, per) = ground_truth_accuracy(&judge, n, &base);
    let report = serde_json::json!({
        "fresh_ground_truth_scenes": n,
        "accuracy_all_attributes": all,
        "accuracy_per_head": {
            "layout": per[0], "background": per[1], "shape0": per[2], "colour0": per[3],
            "size0": per[4], "shape1": per[5], "colour1": per[6]
        },
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
    });
    let mut meta = HashMap::new();
    meta.insert("dreamforge.judge.report".to_string(), report.to_string());
    meta.insert(
        "dreamforge.judge.run_config".to_string(),
        serde_json::to_string(&cfg).expect("serializes"),
    );
    save_judge(&a.out.join("judge.safetensors"), &judge, &meta)?;
    dreamforge_core::image_io::write_atomic(
        &a.out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .expect("serializes")
            .as_bytes(),
    )?;
    println!(
        "judge accuracy on {n} fresh ground-truth scenes: {:.2}% (all attributes right); written to {}",
        100.0 * all,
        a.out.join("judge.safetensors").display()
    );
    Ok(())
}

pub(crate) fn parse_precision(s: &str) -> Result<dreamforge_train::Precision, String> {
    dreamforge_train::Precision::parse(s)
        .ok_or_else(|| format!("unknown precision {s:?}: use f32, bf16 or f16"))
}

fn run_config(a: &PretrainArgs) -> anyhow::Result<PretrainConfig> {
    let cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::config(p, format!("not a nano pretraining config: {e}")))?
        }
        None => {
            let mut c = PretrainConfig::new(a.steps);
            c.batch_size = a.batch_size;
            c.lr = a.lr;
            c.attribute_dropout = a.attribute_dropout;
            c.precision = a.precision;
            if !(0.0..1.0).contains(&a.stable_fraction) {
                bail!(Error::InvalidInput(
                    "--stable-fraction must be in [0, 1)".into()
                ));
            }
            let after_warmup = c.steps - c.schedule.warmup_steps.min(c.steps);
            c.schedule.stable_steps = (after_warmup as f64 * a.stable_fraction).round() as u64;
            c.init_from = a.init_from.as_ref().map(|p| p.display().to_string());
            c
        }
    };
    if !(0.0..=1.0).contains(&cfg.attribute_dropout) {
        bail!(Error::InvalidInput(
            "--attribute-dropout must be in [0, 1]".into()
        ));
    }
    if cfg.steps == 0 || cfg.batch_size == 0 {
        bail!(Error::InvalidInput(
            "steps and batch size must be at least 1".into()
        ));
    }
    cfg.model
        .validate()
        .map_err(|r| Error::InvalidInput(format!("nano model config: {r}")))?;
    Ok(cfg)
}

fn export(
    out: &Path,
    cfg: &PretrainConfig,
    model: &NanoModel,
    keys: &NanoKeys,
    step: u64,
) -> anyhow::Result<()> {
    let mut meta = HashMap::new();
    meta.insert("dreamforge.nano.step".to_string(), step.to_string());
    meta.insert(
        "dreamforge.nano.run_config".to_string(),
        serde_json::to_string(cfg).expect("serializes"),
    );
    write_bundle(&out.join("model"), &cfg.model, model, keys, &meta)
        .with_context(|| format!("exporting the model at step {step}"))?;
    Ok(())
}

fn pretrain(a: PretrainArgs) -> anyhow::Result<()> {
    let cfg = run_config(&a)?;
    let spec: DeviceSpec = a.device.parse()?;
    let shards = match (a.shards, spec) {
        (Some(0), _) => bail!(Error::InvalidInput("--shards must be at least 1".into())),
        (Some(n), _) => n,
        // Measured on 2 cores, batch 128 (docs/NANO.md): 1 shard 5.2 s/step, 2 → 4.2,
        // 4 → 3.6, 8 → 3.8. Two per core, but no shard under 16 samples.
        (None, DeviceSpec::Cpu) => {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            (2 * cores).min(cfg.batch_size / 16).max(1)
        }
        (None, _) => 1,
    };
    let device = dreamforge_core::select_device(spec)?.autodiff();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let tok_dir = a.out.join("tokenizer");
    write_tokenizer(&tok_dir, &cfg.model)?;
    let (mut model, keys) = init(&cfg.model, cfg.init_seed, &device)?;
    if let Some(from) = &cfg.init_from {
        // Same architecture, same module paths: the fresh model's export keys still apply.
        let dir = Path::new(from);
        model.transformer = FluxTransformer::load(
            &dir.join("transformer"),
            Some(cfg.model.transformer.clone()),
            &device,
        )
        .with_context(|| format!("--init-from {from}"))?;
        model.text_encoder = ClipTextModel::load(&dir.join("text_encoder"), &device)
            .with_context(|| format!("--init-from {from}"))?;
    }
    let task = Pretrainer::new(cfg.clone(), &tok_dir, &model, &device)?;
    let stop = stop_flag();
    let trainer = Trainer {
        out_dir: &a.out,
        total_steps: cfg.steps,
        checkpoint_every: a.checkpoint_every,
        base_lr: cfg.lr,
        schedule: cfg.schedule,
        optimizer: cfg.optimizer,
        data_seed: cfg.data_seed,
        noise_seed: cfg.noise_seed,
        stop: &stop,
        ema_decay: cfg.ema_decay,
        precision: cfg.precision,
    };
    write_run_config(&a.out, &cfg)?;
    let bar = bar(a.quiet, cfg.steps);
    let mut smooth: Option<f32> = None;
    let mut export_err = None;
    let result = trainer.run_sharded(
        &cfg,
        model,
        a.resume,
        |rngs, _step| task.sharded_batch(rngs, &device, shards),
        |m, batch| task.batch_loss(m, batch),
        |p, m, ema| {
            let s = smooth.map_or(p.loss, |v| 0.95 * v + 0.05 * p.loss);
            smooth = Some(s);
            let rate = p.session_steps as f64 / p.session_seconds.max(1e-9);
            bar.set_position(p.step);
            bar.set_message(format!("loss {s:.4}  lr {:.2e}  {rate:.2} it/s", p.lr));
            if a.quiet && p.checkpointed {
                eprintln!(
                    "step {}/{} loss {s:.4} ({:.0} s)",
                    p.step, p.total_steps, p.seconds
                );
            }
            if p.checkpointed && export_err.is_none() {
                export_err = export(&a.out, &cfg, ema.unwrap_or(m), &keys, p.step).err();
            }
        },
    );
    bar.finish_and_clear();
    if let Some(e) = export_err {
        return Err(e);
    }
    let RunOutput {
        model,
        ema,
        outcome,
    } = result.map_err(run_error)?;
    ended(outcome, &a.out, &trainer.checkpoint_dir())?;
    export(
        &a.out,
        &cfg,
        ema.as_ref().unwrap_or(&model),
        &keys,
        cfg.steps,
    )?;
    eprintln!(
        "trained {} steps; model written to {}",
        cfg.steps,
        a.out.join("model").display()
    );
    Ok(())
}
