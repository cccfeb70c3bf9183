//! `dreamforge lora inspect | convert | merge`: what an adapter file holds (naming format,
//! method, layers, ranks, alphas, metadata); rewriting a FLUX adapter in PEFT / diffusers or
//! kohya naming; merging a plain LoRA into a FLUX transformer's weights (a T-LoRA cannot be
//! merged into one weight — its update changes with the step — so it is merged at one chosen
//! rank, or used at sampling time).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::bail;
use burn::module::Module;
use clap::{Subcommand, ValueEnum};
use dreamforge_adapters::file::META_KEY;
use dreamforge_adapters::{AdapterFile, FileAdapter, Format, attach_files};
use dreamforge_core::Error;
use dreamforge_models::dit::flux::{
    FluxConfig, FluxKeyFormat, FluxTransformer, infer_config as infer_flux_config,
};
use dreamforge_models::unet::ldm_key_map;
use dreamforge_pipeline::flux_lora::{infer_config, to_diffusers_layout, to_kohya_bfl};
use dreamforge_pipeline::sd::lora::to_peft_layout;
use dreamforge_pipeline::{
    ModelFamily, SdComponents, SdFamily, SdPipeline, SdSource, detect_family,
};

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Show what an adapter file holds (format, method, layers, ranks, alphas, metadata).
    Inspect {
        /// A LoRA / T-LoRA .safetensors file.
        path: PathBuf,
        /// List every layer, not a summary.
        #[arg(long)]
        layers: bool,
    },
    /// Rewrite an adapter in another naming (any readable input: PEFT / diffusers, kohya, BFL,
    /// XLabs). SD / SDXL adapters need --model.
    Convert {
        /// The adapter file.
        path: PathBuf,
        /// Target naming.
        #[arg(long, value_enum)]
        to: Target,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// The model the adapter is for: FLUX (its transformer config sizes the fused
        /// projections) [default: inferred from the file], or the SD / SDXL model (required
        /// for those: kohya names are resolved against it).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Merge a LoRA into a FLUX transformer's weights and write them as a diffusers transformer
    /// folder (config.json + weights), to use with `sample --model MERGED --components BASE`.
    Merge {
        /// The base model: a FLUX diffusers folder or single-file transformer.
        #[arg(long)]
        model: PathBuf,
        /// The adapter, optionally at a strength (PATH[:SCALE]).
        #[arg(long)]
        lora: String,
        /// Output folder (created): config.json and diffusion_pytorch_model.safetensors.
        #[arg(long)]
        out: PathBuf,
        /// T-LoRA only: merge with this many rank components active (the adapter at one point
        /// of its schedule; the full rank is its behaviour at the clean end).
        #[arg(long)]
        tlora_rank: Option<usize>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// diffusers / PEFT: `transformer.<module>.lora_A/B.weight` (+ `.alpha` where ≠ rank).
    Peft,
    /// kohya sd-scripts on BFL modules: `lora_unet_double_blocks_0_img_attn_qkv.lora_down…`.
    Kohya,
}

pub fn run(cmd: LoraCommand) -> anyhow::Result<()> {
    match cmd {
        LoraCommand::Inspect { path, layers } => {
            print!("{}", inspect(&AdapterFile::read(&path)?, layers));
            Ok(())
        }
        LoraCommand::Convert {
            path,
            to,
            out,
            model,
        } => convert(&path, to, &out, model.as_deref()),
        LoraCommand::Merge {
            model,
            lora,
            out,
            tlora_rank,
        } => merge(&model, &lora, &out, tlora_rank),
    }
}

/// The transformer config of a FLUX model path (folder or single file).
fn model_config(model: &Path) -> anyhow::Result<FluxConfig> {
    let cfg = model.join("transformer/config.json");
    if cfg.exists() {
        return Ok(FluxConfig::from_file(&cfg)?);
    }
    let set = dreamforge_core::WeightSet::open(model)?;
    let format = FluxKeyFormat::detect(&set)
        .ok_or_else(|| Error::format(model, "not a FLUX transformer checkpoint"))?;
    Ok(infer_flux_config(&set, &format, None)?)
}

/// SD / SDXL files: names resolved against the model (`--model`), written in PEFT naming with
/// component prefixes, or kohya naming (`lora_unet_` on diffusers module names for SD 1.x/2.x,
/// on the original SGM names for SDXL — as sd-scripts writes each —, `lora_te_` / `lora_te1_`
/// / `lora_te2_` for the text encoders). A T-LoRA keeps its schedule (no layer is fused).
fn convert_sd(
    path: &Path,
    f: &AdapterFile,
    to: Target,
    out: &Path,
    source: SdSource,
) -> anyhow::Result<()> {
    let device = dreamforge_core::select_device(dreamforge_core::DeviceSpec::Cpu)?;
    let pipe = SdPipeline::load(&SdComponents::new(source, Default::default()), &device)?;
    let p = to_peft_layout(
        f,
        &pipe.unet,
        Some(&pipe.text_encoder),
        pipe.text_encoder_2.as_ref(),
    );
    let known = |k: &str| {
        ["unet.", "text_encoder.", "text_encoder_2."]
            .iter()
            .any(|c| k.starts_with(c))
    };
    if let Some(k) = p.layers.keys().find(|k| !known(k)) {
        bail!(Error::InvalidInput(format!(
            "{}: layer `{}` is not a module of this model's UNet or text encoders",
            path.display(),
            p.source_name(k)
        )));
    }
    let sdxl = pipe.family == SdFamily::Sdxl;
    match to {
        Target::Peft => AdapterFile::write_peft(out, "", &p.layers, &f.metadata)?,
        Target::Kohya => {
            // diffusers UNet module → SGM module (SDXL files use the original names).
            let sgm: HashMap<String, String> = ldm_key_map(&pipe.unet.config)
                .into_iter()
                .filter_map(|(ours, src)| {
                    Some((
                        ours.strip_suffix(".weight")?.to_string(),
                        src.key.strip_suffix(".weight")?.to_string(),
                    ))
                })
                .collect();
            let layers: BTreeMap<String, _> = p
                .layers
                .iter()
                .map(|(k, l)| {
                    let (component, module) = k.split_once('.').expect("prefixed above");
                    let name = match component {
                        "unet" if sdxl => format!(
                            "lora_unet_{}",
                            sgm.get(module)
                                .map_or(module, String::as_str)
                                .replace('.', "_")
                        ),
                        "unet" => format!("lora_unet_{}", module.replace('.', "_")),
                        "text_encoder" if sdxl => format!("lora_te1_{}", module.replace('.', "_")),
                        "text_encoder" => format!("lora_te_{}", module.replace('.', "_")),
                        _ => format!("lora_te2_{}", module.replace('.', "_")),
                    };
                    (name, l.clone())
                })
                .collect();
            let mut meta = f.metadata.clone();
            meta.remove("lora_adapter_metadata");
            AdapterFile::write_kohya(out, &layers, &meta)?;
        }
    }
    eprintln!("wrote {} layers to {}", p.layers.len(), out.display());
    Ok(())
}

fn convert(path: &Path, to: Target, out: &Path, model: Option<&Path>) -> anyhow::Result<()> {
    let f = AdapterFile::read(path)?;
    if let Some(m) = model
        && let ModelFamily::Sd(source) = detect_family(m)?
    {
        return convert_sd(path, &f, to, out, source);
    }
    let cfg = match model {
        Some(m) => model_config(m)?,
        None => infer_config(&f).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{}: cannot tell the model from the file (FLUX block width, or an SD / SDXL adapter); pass --model",
                path.display()
            ))
        })?,
    };
    let mut meta = f.metadata.clone();
    let schedule = f.schedule();
    if to == Target::Kohya && schedule.is_some() {
        // Fused kohya layers interleave the splits' rank components, so the T-LoRA mask
        // cannot follow them; other tools apply a T-LoRA at full rank anyway.
        eprintln!(
            "warning: {} is a T-LoRA; the kohya file is its full-rank adapter (what other tools apply at every step) without the rank schedule",
            path.display()
        );
        meta.remove(META_KEY);
    }
    let layers = match to {
        Target::Kohya => {
            meta.remove("lora_adapter_metadata");
            let layers = to_kohya_bfl(&f, &cfg)
                .map_err(|r| Error::InvalidInput(format!("{}: {r}", path.display())))?;
            AdapterFile::write_kohya(out, &layers, &meta)?;
            layers.len()
        }
        Target::Peft => {
            let d = to_diffusers_layout(&f, &cfg);
            let layers: BTreeMap<String, _> = d
                .layers
                .into_iter()
                .map(|(k, v)| {
                    let k = match d.format {
                        Format::Peft => k.strip_prefix("transformer.").unwrap_or(&k).to_string(),
                        _ => k,
                    };
                    (k, v)
                })
                .collect();
            if d.format != Format::Peft {
                bail!(Error::InvalidInput(format!(
                    "{}: only FLUX transformer layers convert (this {:?} file names other modules, e.g. `{}`)",
                    path.display(),
                    d.format,
                    layers.keys().next().map(String::as_str).unwrap_or("")
                )));
            }
            AdapterFile::write_peft(out, "transformer", &layers, &meta)?;
            layers.len()
        }
    };
    eprintln!("wrote {layers} layers to {}", out.display());
    Ok(())
}

fn merge(model: &Path, lora: &str, out: &Path, tlora_rank: Option<usize>) -> anyhow::Result<()> {
    let (path, strength) = crate::sample::parse_lora(lora);
    let f = AdapterFile::read(&path)?;
    let schedule = f.schedule();
    if schedule.is_some() && tlora_rank.is_none() {
        bail!(Error::InvalidInput(format!(
            "{}: a T-LoRA cannot be merged into one weight: its update changes with the step (rank r(t) from {} at pure noise to full at the clean end), so any merged weight is the adapter at a single rank. Use it at sampling time (sample --lora), or merge it at one rank with --tlora-rank N",
            path.display(),
            schedule.map_or(1, |s| s.min_rank)
        )));
    }
    if tlora_rank.is_some() && schedule.is_none() {
        bail!(Error::InvalidInput(format!(
            "{}: --tlora-rank applies to T-LoRA files; this is a plain LoRA",
            path.display()
        )));
    }
    let device = dreamforge_core::select_device(dreamforge_core::DeviceSpec::Cpu)?;
    if let ModelFamily::Sd(source) = detect_family(model)? {
        return merge_sd(model, source, &f, &path, strength, out, tlora_rank, &device);
    }
    let weights = if model.join("transformer").is_dir() {
        model.join("transformer")
    } else {
        model.to_path_buf()
    };
    let config = model_config(model).ok();
    let (base, names) = FluxTransformer::load_named(&weights, config, &device)?;
    let converted = to_diffusers_layout(&f, &base.config);
    let adapters = [FileAdapter {
        file: &converted,
        strength,
    }];
    let (adapted, unmatched) = attach_files(base, "transformer", |p| names.key_of(p), &adapters)?;
    if unmatched[0].len() == converted.layers.len() {
        bail!(Error::InvalidInput(format!(
            "{}: none of its layers matches a weight of {}",
            path.display(),
            model.display()
        )));
    }
    let adapted = match (schedule, tlora_rank) {
        (Some(s), Some(r)) => {
            let stored = converted
                .layers
                .values()
                .map(|l| l.rank())
                .max()
                .unwrap_or(1);
            dreamforge_adapters::at_step(adapted, &[Some(s)], progress_for_rank(s, stored, r)?)
        }
        _ => adapted,
    };
    let merged = adapted.materialize();
    let tensors = names.export(&merged)?;
    let mut meta = HashMap::new();
    meta.insert(
        "dreamforge_merged".to_string(),
        serde_json::json!({"base": model.display().to_string(), "adapter": path.display().to_string(),
            "strength": strength, "tlora_rank": tlora_rank})
        .to_string(),
    );
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut cfg = serde_json::to_value(&merged.config).expect("config serializes");
    cfg["_class_name"] = serde_json::json!("FluxTransformer2DModel");
    dreamforge_core::image_io::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&cfg).expect("json").as_bytes(),
    )?;
    dreamforge_core::export::save_safetensors(
        &out.join("diffusion_pytorch_model.safetensors"),
        &tensors,
        &meta,
    )?;
    if !unmatched[0].is_empty() {
        eprintln!(
            "warning: {} of the adapter's layers match no weight and were skipped, e.g. `{}`",
            unmatched[0].len(),
            unmatched[0][0]
        );
    }
    eprintln!(
        "merged {} into {} tensors, written to {}",
        path.display(),
        tensors.len(),
        out.display()
    );
    Ok(())
}

fn inspect(f: &AdapterFile, all: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let bfl = f
        .layers
        .keys()
        .any(|k| k.contains("double_blocks") || k.contains("single_blocks"));
    let format = match (f.format, bfl) {
        (Format::Peft, false) => "PEFT / diffusers (lora_A / lora_B)",
        (Format::Peft, true) => "PEFT naming on BFL FLUX modules (lora_A / lora_B)",
        (Format::Kohya, false) => "kohya (lora_down / lora_up / alpha)",
        (Format::Kohya, true) => "kohya on BFL FLUX modules (lora_down / lora_up / alpha)",
        (Format::XLabs, _) => "XLabs x-flux (processor qkv_lora / proj_lora, no alpha)",
    };
    let _ = writeln!(s, "file:    {}", f.path.display());
    let _ = writeln!(s, "format:  {format}");
    let method = match f.schedule() {
        Some(r) => format!(
            "T-LoRA (rank mask per step: min rank {}, exponent {}{})",
            r.min_rank,
            r.exponent,
            if r.paired {
                "; orthogonal, stored as exact [current; frozen] pairs of twice the rank"
            } else {
                ""
            }
        ),
        None => "LoRA".to_string(),
    };
    let _ = writeln!(s, "method:  {method}");
    let mut ranks: BTreeMap<usize, usize> = BTreeMap::new();
    let mut scales: BTreeMap<String, usize> = BTreeMap::new();
    let mut params = 0usize;
    let mut components: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, l) in &f.layers {
        *ranks.entry(l.rank()).or_default() += 1;
        *scales.entry(format!("{:.4}", l.scale())).or_default() += 1;
        params += l.down.data.len() + l.up.data.len();
        let c = match f.format {
            Format::Peft => name.split('.').next().unwrap_or(""),
            Format::Kohya if bfl => "transformer",
            Format::Kohya => name.split('_').take(2).last().unwrap_or(""),
            Format::XLabs => "transformer",
        };
        *components.entry(c).or_default() += 1;
    }
    let list = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "layers:  {} in {}; {params} parameters",
        f.layers.len(),
        components
            .iter()
            .map(|(c, n)| format!("{c} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "ranks:   {}",
        list(&ranks.iter().map(|(r, n)| (r.to_string(), *n)).collect())
    );
    let _ = writeln!(
        s,
        "scale (alpha / rank; 1 without alpha):  {}",
        list(&scales)
    );
    if all {
        for (name, l) in &f.layers {
            let _ = writeln!(
                s,
                "  {name}  down {:?}  up {:?}  alpha {}",
                l.down.shape,
                l.up.shape,
                l.alpha.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            );
        }
    } else if let Some((name, _)) = f.layers.iter().next() {
        let _ = writeln!(s, "  e.g. {name}  (--layers lists all)");
    }
    if !f.ignored.is_empty() {
        let _ = writeln!(
            s,
            "ignored: {} tensor(s) that are not low-rank factors or alphas (not applied), e.g. {}",
            f.ignored.len(),
            f.ignored[0]
        );
    }
    let mut keys: Vec<&String> = f.metadata.keys().collect();
    keys.sort();
    for k in keys {
        let v = &f.metadata[k];
        let shown = if v.len() > 200 && k != META_KEY {
            format!("{}… ({} chars)", &v[..v.floor_char_boundary(200)], v.len())
        } else {
            v.clone()
        };
        let _ = writeln!(s, "metadata {k}: {shown}");
    }
    s
}

/// The progress at which `schedule` gives a layer of stored rank `stored` exactly `r` active
/// components (r(p) is monotone in p), or an error when `r` is outside its range.
fn progress_for_rank(
    schedule: dreamforge_adapters::RankSchedule,
    stored: usize,
    r: usize,
) -> anyhow::Result<f64> {
    let full = if schedule.paired { stored / 2 } else { stored };
    let lo = schedule.min_rank.min(full);
    if r < lo || r > full {
        bail!(Error::InvalidInput(format!(
            "--tlora-rank {r} is outside the schedule's range {lo}..={full}"
        )));
    }
    Ok((0..=1000)
        .map(|i| i as f64 / 1000.0)
        .find(|&p| schedule.rank_at(full, p) >= r)
        .unwrap_or(1.0))
}

/// Tensors of `model` under `names`, each reshaped to the base file's shape for that key when
/// the element counts agree (SD1's 1×1 convolutions are kept as linear maps), and keyed as the
/// base file keys them (a text encoder file without the `text_model.` prefix).
fn export_like_base<M: Module>(
    model: &M,
    names: &dreamforge_core::export::ParamKeys,
    base: &dreamforge_core::WeightSet,
) -> anyhow::Result<Vec<(String, dreamforge_core::HostTensor)>> {
    let mut out = Vec::new();
    for (key, mut t) in names.export(model)? {
        let key = if base.shape(&key).is_none() {
            key.strip_prefix("text_model.")
                .filter(|k| base.shape(k).is_some())
                .map(str::to_string)
                .unwrap_or(key)
        } else {
            key
        };
        if let Some(shape) = base.shape(&key)
            && shape != t.shape.as_slice()
            && shape.iter().product::<usize>() == t.data.len()
        {
            t.shape = shape.to_vec();
        }
        out.push((key, t));
    }
    Ok(out)
}

/// Copies `from` into `to` recursively (hard links where possible), skipping top-level
/// entries named in `skip`.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let e = e.map_err(|e| Error::io(from, e))?;
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if src.is_dir() {
            copy_tree(&src, &dst, &[])?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    Ok(())
}

/// SD / SDXL: merges into the UNet (and the text encoders the adapter touches) of a diffusers
/// folder and writes a complete diffusers folder at `out` (other components linked or copied).
#[allow(clippy::too_many_arguments)]
fn merge_sd(
    model: &Path,
    source: SdSource,
    f: &AdapterFile,
    path: &Path,
    strength: f64,
    out: &Path,
    tlora_rank: Option<usize>,
    device: &burn::tensor::Device,
) -> anyhow::Result<()> {
    let SdSource::Diffusers(root) = source.clone() else {
        bail!(Error::InvalidInput(format!(
            "{}: merging into a single-file SD checkpoint is not supported; merge into its diffusers folder",
            model.display()
        )));
    };
    let mut pipe = SdPipeline::load(&SdComponents::new(source, Default::default()), device)?;
    let unmatched = pipe.set_adapters(&[FileAdapter { file: f, strength }])?;
    if unmatched[0].len() == f.layers.len() {
        bail!(Error::InvalidInput(format!(
            "{}: none of its layers matches a weight of {}",
            path.display(),
            model.display()
        )));
    }
    let a = pipe.adapters.take().expect("adapters were just set");
    let unet = match (f.schedule(), tlora_rank) {
        (Some(s), Some(r)) => {
            let stored = f.layers.values().map(|l| l.rank()).max().unwrap_or(1);
            dreamforge_adapters::at_step(a.unet, &[Some(s)], progress_for_rank(s, stored, r)?)
        }
        _ => a.unet,
    };
    let touched = |component: &str| {
        let p = to_peft_layout(
            f,
            &pipe.unet,
            Some(&pipe.text_encoder),
            pipe.text_encoder_2.as_ref(),
        );
        p.layers
            .keys()
            .any(|k| k.starts_with(&format!("{component}.")))
    };
    let (te1, te2) = (touched("text_encoder"), touched("text_encoder_2"));
    let mut skip = vec!["unet"];
    if te1 {
        skip.push("text_encoder");
    }
    if te2 {
        skip.push("text_encoder_2");
    }
    copy_tree(&root, out, &skip)?;
    let write = |component: &str,
                 file: &str,
                 tensors: Vec<(String, dreamforge_core::HostTensor)>|
     -> anyhow::Result<()> {
        let dir = out.join(component);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let cfg = root.join(component).join("config.json");
        std::fs::copy(&cfg, dir.join("config.json")).map_err(|e| Error::io(&cfg, e))?;
        dreamforge_core::export::save_safetensors(&dir.join(file), &tensors, &HashMap::new())?;
        Ok(())
    };
    let base_unet = dreamforge_core::WeightSet::open(root.join("unet"))?;
    let names = unet.names.clone();
    write(
        "unet",
        "diffusion_pytorch_model.safetensors",
        export_like_base(&unet.materialize(), &names, &base_unet)?,
    )?;
    if te1 {
        let base = dreamforge_core::WeightSet::open(root.join("text_encoder"))?;
        let names = a.text_encoder.names.clone();
        write(
            "text_encoder",
            "model.safetensors",
            export_like_base(&a.text_encoder.materialize(), &names, &base)?,
        )?;
    }
    if let (true, Some(te)) = (te2, a.text_encoder_2) {
        let base = dreamforge_core::WeightSet::open(root.join("text_encoder_2"))?;
        let names = te.names.clone();
        write(
            "text_encoder_2",
            "model.safetensors",
            export_like_base(&te.materialize(), &names, &base)?,
        )?;
    }
    eprintln!(
        "merged {} into {} (a diffusers folder: unet{}{})",
        path.display(),
        out.display(),
        if te1 { ", text_encoder" } else { "" },
        if te2 { ", text_encoder_2" } else { "" }
    );
    Ok(())
}
