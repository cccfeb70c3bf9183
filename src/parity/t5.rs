//! `t5_encoder` fixtures: load the transformers folder (config.json + single or sharded
//! safetensors), run each case (`input_ids` i64, optional `attention_mask`), compare
//! `last_hidden_state`.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use dreamforge_core::to_host;
use dreamforge_models::text::t5::T5Encoder;

use super::golden::{Case, Fixture, Outcome};

fn ids_input(
    fx: &Fixture,
    case: &Case,
    name: &str,
    device: &Device,
) -> Result<Option<Tensor<2, Int>>, String> {
    let Some(key) = case.inputs.get(name) else {
        return Ok(None);
    };
    let (shape, ids) = fx.golden.read_i64(key).map_err(|e| e.to_string())?;
    if shape.len() != 2 {
        return Err(format!("`{name}` has shape {shape:?}, expected [B, T]"));
    }
    Ok(Some(Tensor::<2, Int>::from_data(
        TensorData::new(ids, shape),
        device,
    )))
}

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let model = T5Encoder::load(&fx.weights_path(), device).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = (|| -> Result<BTreeMap<String, _>, String> {
            let ids =
                ids_input(fx, case, "input_ids", device)?.ok_or("case has no input `input_ids`")?;
            let mask = ids_input(fx, case, "attention_mask", device)?;
            let y = model.try_forward(ids, mask).map_err(|e| e.to_string())?;
            Ok(BTreeMap::from([(
                "last_hidden_state".to_string(),
                to_host(y),
            )]))
        })();
        out.push(match r {
            Ok(computed) => fx.check(i, case, &computed),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
