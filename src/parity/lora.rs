//! `lora` fixtures: an adapter file (any readable format, detected from its keys) on a base
//! fixture's model (`"base"`, `"base_kind"`), each case at its user `"scale"`; a T-LoRA file
//! applies its rank mask at the case's timestep (σ, `p = 1 − σ`). Only FLUX bases so far.

use burn::tensor::Device;

use dreamforge_adapters::rank::progress_from_sigma;
use dreamforge_adapters::{AdapterFile, FileAdapter, at_step, attach_files};
use dreamforge_models::dit::flux::{FluxConfig, FluxTransformer};
use dreamforge_pipeline::flux_lora::to_diffusers_layout;

use super::golden::{Fixture, Outcome};

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let field = |k: &str| {
        fx.json
            .get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("golden.json: `{k}` missing"))
    };
    let base_kind = field("base_kind")?;
    if base_kind != "flux_transformer" {
        return Err(format!("lora on a `{base_kind}` base is not supported yet"));
    }
    let base_dir = fx.dir.join(field("base")?);
    let base = Fixture::open(&base_dir)?;
    let cfg_path = base_dir.join("config.json");
    let config = if cfg_path.exists() {
        Some(FluxConfig::from_file(&cfg_path).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let (model, names) = FluxTransformer::load_named(&base.weights_path(), config, device)
        .map_err(|e| e.to_string())?;
    let file = AdapterFile::read(&fx.dir.join(field("adapter")?)).map_err(|e| e.to_string())?;
    let file = to_diffusers_layout(&file, &model.config);
    let schedule = file.schedule();
    super::flux::run_cases(fx, device, |case| {
        let scale = case
            .extra
            .get("scale")
            .and_then(|v| v.as_f64())
            .ok_or("case: `scale` missing")?;
        let (m, unmatched) = attach_files(
            model.clone(),
            "transformer",
            |p| names.key_of(p),
            &[FileAdapter {
                file: &file,
                strength: scale,
            }],
        )
        .map_err(|e| e.to_string())?;
        if !unmatched[0].is_empty() {
            return Err(format!("layers matched no weight: {:?}", unmatched[0]));
        }
        let m = match schedule {
            Some(s) => {
                let t = fx.input(case, "timestep")?;
                at_step(m, &[Some(s)], progress_from_sigma(t.data[0] as f64))
            }
            None => m,
        };
        Ok(m)
    })
}
