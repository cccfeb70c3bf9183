//! `clip_text_model` / `clip_text_model_with_projection` fixtures: load the folder's
//! `config.json` and weights, run each case's `input_ids`, compare `last_hidden_state`,
//! `pooler_output`, `penultimate_hidden_state` and (with projection) `text_embeds`.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use dreamforge_core::to_host;
use dreamforge_models::text::clip::{ClipTextConfig, ClipTextModel};

use super::golden::{Fixture, Outcome};

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let config =
        ClipTextConfig::from_file(&fx.dir.join("config.json")).map_err(|e| e.to_string())?;
    let model =
        ClipTextModel::load_file(&fx.weights_path(), config, device).map_err(|e| e.to_string())?;
    let want_projection = fx.kind == "clip_text_model_with_projection";
    if model.has_projection() != want_projection {
        return Err(format!(
            "kind `{}` but the loaded model {} a text projection",
            fx.kind,
            if model.has_projection() {
                "has"
            } else {
                "has no"
            }
        ));
    }
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = (|| -> Result<BTreeMap<String, _>, String> {
            let key = case
                .inputs
                .get("input_ids")
                .ok_or("case has no input `input_ids`")?;
            let (shape, ids) = fx.golden.read_i64(key).map_err(|e| e.to_string())?;
            let [b, t] = shape[..] else {
                return Err(format!("input_ids has shape {shape:?}, expected [B, T]"));
            };
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
            let y = model.forward(ids).map_err(|e| e.to_string())?;
            let mut m = BTreeMap::from([
                (
                    "last_hidden_state".to_string(),
                    to_host(y.last_hidden_state),
                ),
                ("pooler_output".to_string(), to_host(y.pooler_output)),
                (
                    "penultimate_hidden_state".to_string(),
                    to_host(y.penultimate_hidden_state),
                ),
            ]);
            if let Some(te) = y.text_embeds {
                m.insert("text_embeds".to_string(), to_host(te));
            }
            Ok(m)
        })();
        out.push(match r {
            Ok(computed) => fx.check(i, case, &computed),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
