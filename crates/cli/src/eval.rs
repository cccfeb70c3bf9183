//! `dreamforge eval --images DIR`: the nano metrics for a folder of images — prompt fidelity
//! (prompts from the `dreamforge` PNG metadata `sample` writes, or a prompts file) and, with
//! `--reference`, subject similarity — always next to the judge's own accuracy on fresh
//! ground truth (a judge below 98% there is not to be trusted, and the output says so).

use std::path::{Path, PathBuf};

use anyhow::bail;
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;

use dreamforge_core::Error;
use dreamforge_core::image_io::{RgbImage, read_png_text};
use dreamforge_nano::judge::SIDE;
use dreamforge_nano::judge_train::{ground_truth_accuracy, load_judge};
use dreamforge_nano::metrics::{judge_prompts, prompt_fidelity, subject_similarity};

#[derive(Args)]
pub struct EvalArgs {
    /// Folder of PNG / JPEG images (any size; read at the judge's 64×64).
    #[arg(long)]
    pub images: PathBuf,
    /// Prompts file: one `FILE<TAB>PROMPT` line per image (default: each PNG's metadata).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Subject reference image(s) or folder(s): adds subject similarity.
    #[arg(long)]
    pub reference: Vec<PathBuf>,
    /// Judge weights [default: the built-in models/nano-judge].
    #[arg(long)]
    pub judge: Option<PathBuf>,
    /// Fresh ground-truth scenes for the judge's own accuracy.
    #[arg(long, default_value_t = 1000)]
    pub ground_truth: usize,
    /// Trigger word(s) of subject adapters, left out of the prompts before they are judged
    /// (also read from each PNG's adapter metadata).
    #[arg(long)]
    pub trigger: Vec<String>,
    /// Also write per-image results and the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn image_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(Error::InvalidInput(format!(
            "{}: no PNG or JPEG images found",
            dir.display()
        )));
    }
    Ok(files)
}

/// `[n, 3, 64, 64]` in [-1, 1].
fn load_images(files: &[PathBuf], device: &Device) -> anyhow::Result<Tensor<4>> {
    let mut data = Vec::with_capacity(files.len() * 3 * SIDE * SIDE);
    for f in files {
        let img = RgbImage::read(f)?.resized(SIDE as u32, SIDE as u32);
        data.extend(img.to_chw_signed());
    }
    Ok(Tensor::from_data(
        TensorData::new(data, [files.len(), 3, SIDE, SIDE]),
        device,
    ))
}

fn prompt_of(file: &Path, table: &Option<Vec<(String, String)>>) -> anyhow::Result<String> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(t) = table {
        return t
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{}: no prompt for it in the prompts file",
                    file.display()
                ))
                .into()
            });
    }
    let text = read_png_text(file)?;
    let meta = text
        .iter()
        .find(|(k, _)| k == "dreamforge")
        .and_then(|(_, v)| serde_json::from_str::<serde_json::Value>(v).ok());
    let prompt = meta.as_ref().and_then(|v| {
        let p = v["prompt"].as_str()?;
        let triggers: Vec<&str> = v["adapters"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["trigger"].as_str()).collect())
            .unwrap_or_default();
        Some(without_words(p, &triggers))
    });
    prompt.ok_or_else(|| {
        Error::InvalidInput(format!(
            "{}: no prompt in its metadata (not written by `dreamforge sample`); pass --prompts",
            file.display()
        ))
        .into()
    })
}

/// `prompt` without the words in `drop` (case-insensitive, whole words).
fn without_words(prompt: &str, drop: &[impl AsRef<str>]) -> String {
    prompt
        .split_whitespace()
        .filter(|w| {
            let bare = w.trim_matches(|c: char| !c.is_alphanumeric());
            !drop.iter().any(|d| d.as_ref().eq_ignore_ascii_case(bare))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_prompts(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, prompt)) = line.split_once('\t') else {
            bail!(Error::InvalidInput(format!(
                "{}:{}: expected `FILE<TAB>PROMPT`",
                path.display(),
                i + 1
            )));
        };
        out.push((name.trim().to_string(), prompt.trim().to_string()));
    }
    Ok(out)
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let device = Device::flex();
    let judge_path = match &a.judge {
        Some(p) => p.clone(),
        None => crate::builtin::nano_judge()?,
    };
    let judge = load_judge(&judge_path, &device)?;
    let files = image_files(&a.images)?;
    let table = a.prompts.as_deref().map(read_prompts).transpose()?;
    let prompts = files
        .iter()
        .map(|f| prompt_of(f, &table).map(|p| without_words(&p, &a.trigger)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut judged = Vec::with_capacity(files.len());
    for (fs, ps) in files.chunks(100).zip(prompts.chunks(100)) {
        let x = load_images(fs, &device)?;
        let j = judge_prompts(&judge, x, ps).map_err(|(i, e)| {
            Error::InvalidInput(format!("{}: prompt {:?}: {e}", fs[i].display(), ps[i]))
        })?;
        judged.extend(j);
    }
    let fidelity = prompt_fidelity(&judged);
    let similarity = if a.reference.is_empty() {
        None
    } else {
        let mut refs = Vec::new();
        for r in &a.reference {
            refs.extend(image_files(r)?);
        }
        let r = load_images(&refs, &device)?;
        let mut sims = Vec::new();
        for fs in files.chunks(100) {
            sims.extend(subject_similarity(
                &judge,
                load_images(fs, &device)?,
                r.clone(),
            ));
        }
        Some(sims)
    };
    let (gt, _) = ground_truth_accuracy(&judge, a.ground_truth, &device);
    let n = judged.len();
    println!(
        "prompt fidelity: {:.1}% ({} of {n} images follow their prompt)",
        100.0 * fidelity,
        judged.iter().filter(|j| j.follows_prompt).count()
    );
    let sim_summary = similarity.as_ref().map(|s| {
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / s.len() as f64;
        println!(
            "subject similarity: {mean:.3} ± {:.3} (mean cosine of judge features to {} reference image(s))",
            var.sqrt(),
            a.reference.len()
        );
        (mean, var.sqrt())
    });
    println!(
        "judge accuracy on {} fresh ground-truth scenes: {:.1}%{}",
        a.ground_truth,
        100.0 * gt,
        if gt < 0.98 {
            " — below 98%: do not trust these metrics"
        } else {
            ""
        }
    );
    if let Some(out) = &a.json {
        let per: Vec<serde_json::Value> = judged
            .iter()
            .zip(&files)
            .enumerate()
            .map(|(i, (j, f))| {
                serde_json::json!({
                    "image": f.display().to_string(),
                    "prompt": j.prompt,
                    "follows_prompt": j.follows_prompt,
                    "judged_scene": dreamforge_nano::caption(&j.reading.scene()),
                    "subject_similarity": similarity.as_ref().map(|s| s[i]),
                })
            })
            .collect();
        let v = serde_json::json!({
            "images": n,
            "prompt_fidelity": fidelity,
            "subject_similarity": sim_summary.map(|(m, s)| serde_json::json!({"mean": m, "std": s})),
            "judge_ground_truth_accuracy": gt,
            "judge": judge_path.display().to_string(),
            "per_image": per,
        });
        dreamforge_core::image_io::write_atomic(
            out,
            serde_json::to_string_pretty(&v).expect("json").as_bytes(),
        )?;
    }
    Ok(())
}
