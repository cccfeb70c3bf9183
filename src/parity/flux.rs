//! `flux_transformer` fixtures: load (config.json if present, else inferred from keys), run
//! each case, compare `sample`.

use std::collections::BTreeMap;

use burn::tensor::Device;

use dreamforge_core::to_host;
use dreamforge_models::dit::flux::{FluxConfig, FluxInputs, FluxTransformer};

use super::golden::{Fixture, Outcome};

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let cfg_path = fx.dir.join("config.json");
    let config = if cfg_path.exists() {
        Some(FluxConfig::from_file(&cfg_path).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let model =
        FluxTransformer::load(&fx.weights_path(), config, device).map_err(|e| e.to_string())?;
    run_cases(fx, device, |_| Ok(model.clone()))
}

/// Runs every case through the model `model_for(case)` gives and compares `sample`.
pub fn run_cases(
    fx: &Fixture,
    device: &Device,
    mut model_for: impl FnMut(&super::golden::Case) -> Result<FluxTransformer, String>,
) -> Result<Vec<Outcome>, String> {
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = (|| -> Result<BTreeMap<String, _>, String> {
            let model = &model_for(case)?;
            let hs = fx.input(case, "hidden_states")?;
            let ehs = fx.input(case, "encoder_hidden_states")?;
            let pooled = fx.input(case, "pooled_projections")?;
            let t = fx.input(case, "timestep")?;
            let img_ids = fx.input(case, "img_ids")?;
            let txt_ids = fx.input(case, "txt_ids")?;
            let guidance = fx.input_opt(case, "guidance")?;
            let rope = model.rope(&txt_ids.data, &img_ids.data, device);
            let y = model
                .forward(
                    FluxInputs {
                        hidden_states: hs.to_device(device),
                        encoder_hidden_states: ehs.to_device(device),
                        pooled_projections: pooled.to_device(device),
                        timestep: t.data,
                        guidance: guidance.map(|g| g.data),
                    },
                    &rope,
                )
                .map_err(|e| e.to_string())?;
            Ok(BTreeMap::from([("sample".to_string(), to_host(y))]))
        })();
        out.push(match r {
            Ok(computed) => fx.check(i, case, &computed),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
