//! `lora` fixtures: an adapter file (any readable format, detected from its keys) on a base
//! fixture's model (`"base"`, `"base_kind"`), each case at its user `"scale"`; a T-LoRA file
//! applies its rank mask at the case's timestep (FLUX: σ, `p = 1 − σ`; UNet: DDPM `t`,
//! `p = (1000 − t)/1000`). FLUX transformer and UNet bases.

use burn::tensor::Device;

use dreamforge_adapters::rank::{progress_from_sigma, progress_from_timestep};
use dreamforge_adapters::{AdapterFile, FileAdapter, at_step, attach_files};
use dreamforge_models::dit::flux::{FluxConfig, FluxTransformer};
use dreamforge_pipeline::flux_lora::to_diffusers_layout;
use dreamforge_pipeline::sd::lora::to_peft_layout;

use super::golden::{Fixture, Outcome};

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let field = |k: &str| {
        fx.json
            .get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("golden.json: `{k}` missing"))
    };
    let base_kind = field("base_kind")?;
    let base_dir = fx.dir.join(field("base")?);
    let base = Fixture::open(&base_dir)?;
    let file = AdapterFile::read(&fx.dir.join(field("adapter")?)).map_err(|e| e.to_string())?;
    let scale_of = |case: &super::golden::Case| {
        case.extra
            .get("scale")
            .and_then(|v| v.as_f64())
            .ok_or_else(|| "case: `scale` missing".to_string())
    };
    match base_kind {
        "flux_transformer" => {}
        "unet_2d_condition" => {
            let unet = super::unet::load(&base, device)?;
            let file = to_peft_layout(&file, &unet, None, None);
            let schedule = file.schedule();
            return super::unet::run_cases(fx, device, |case| {
                let (m, unmatched) = attach_files(
                    unet.clone(),
                    "unet",
                    |p| unet.names.key_of(p),
                    &[FileAdapter {
                        file: &file,
                        strength: scale_of(case)?,
                    }],
                )
                .map_err(|e| e.to_string())?;
                if !unmatched[0].is_empty() {
                    return Err(format!("layers matched no weight: {:?}", unmatched[0]));
                }
                Ok(match schedule {
                    Some(s) => {
                        let t = fx.input(case, "timestep")?;
                        at_step(
                            m,
                            &[Some(s)],
                            progress_from_timestep(t.data[0] as f64, 1000.0),
                        )
                    }
                    None => m,
                })
            });
        }
        other => return Err(format!("lora on a `{other}` base is not supported yet")),
    }
    let cfg_path = base_dir.join("config.json");
    let config = if cfg_path.exists() {
        Some(FluxConfig::from_file(&cfg_path).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let (model, names) = FluxTransformer::load_named(&base.weights_path(), config, device)
        .map_err(|e| e.to_string())?;
    let file = to_diffusers_layout(&file, &model.config);
    let schedule = file.schedule();
    super::flux::run_cases(fx, device, |case| {
        let scale = scale_of(case)?;
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
