//! `tokenizer` fixtures: load the tokenizer named by `"tokenizer"` (a `tokenizer.json`, or a
//! folder; relative to the fixture folder), apply the fixture folder's own
//! `tokenizer_config.json` / `special_tokens_map.json` when the vocabulary lives elsewhere (SDXL
//! `tokenizer_2` style), check the resolved pad id against `"pad_id"`, encode `"texts"` to
//! `"max_length"` and compare `input_ids` (and `attention_mask` when the golden has it) exactly.

use std::collections::BTreeMap;

use burn::tensor::Device;

use dreamforge_core::HostTensor;
use dreamforge_models::text::tokenizer::TextTokenizer;

use super::golden::{Fixture, Outcome};

fn to_host(rows: &[Vec<i64>]) -> HostTensor {
    let n = rows.len();
    let m = rows.first().map_or(0, Vec::len);
    HostTensor::new(
        vec![n, m],
        rows.iter().flatten().map(|&v| v as f32).collect(),
    )
}

pub fn run(fx: &Fixture, _device: &Device) -> Result<Vec<Outcome>, String> {
    let j = &fx.json;
    let rel = j["tokenizer"]
        .as_str()
        .ok_or("golden.json has no `tokenizer` path")?;
    let texts: Vec<String> =
        serde_json::from_value(j["texts"].clone()).map_err(|e| format!("bad `texts`: {e}"))?;
    let max_length = j["max_length"]
        .as_u64()
        .ok_or("golden.json has no `max_length`")? as usize;
    let pad_id = j["pad_id"].as_i64().ok_or("golden.json has no `pad_id`")?;
    match j.get("padding").and_then(|p| p.as_str()) {
        Some("max_length") | None => {}
        Some(other) => {
            return Err(format!(
                "padding `{other}` is not supported (only \"max_length\")"
            ));
        }
    }
    if j.get("truncation").and_then(|t| t.as_bool()) == Some(false) {
        return Err("truncation false is not supported".into());
    }

    let path = fx.dir.join(rel);
    let mut tok = TextTokenizer::load(&path).map_err(|e| e.to_string())?;
    let same_dir = match (path.canonicalize(), fx.dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b || a.parent() == Some(b.as_path()),
        _ => false,
    };
    if !same_dir
        && (fx.dir.join("tokenizer_config.json").exists()
            || fx.dir.join("special_tokens_map.json").exists())
    {
        tok = tok
            .with_special_tokens_from(&fx.dir)
            .map_err(|e| e.to_string())?;
    }
    if tok.pad_id() as i64 != pad_id {
        return Err(format!(
            "resolved pad id {} (token {:?}), golden pad_id {pad_id}",
            tok.pad_id(),
            tok.pad_token()
        ));
    }

    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = tok
            .encode_batch(&refs, max_length)
            .map_err(|e| e.to_string())
            .map(|enc| {
                BTreeMap::from([
                    ("input_ids".to_string(), to_host(&enc.ids)),
                    ("attention_mask".to_string(), to_host(&enc.attention_mask)),
                ])
            });
        out.push(match r {
            Ok(computed) => fx.check(i, case, &computed),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
