//! Prompt encoding for the UNet family, as diffusers `StableDiffusionPipeline.encode_prompt`
//! (SD1.x / SD2.x: one CLIP, `last_hidden_state`, or with clip skip `k` the final-normed
//! `hidden_states[-(k+1)]`) and `StableDiffusionXLPipeline.encode_prompt` (two CLIPs, each
//! `hidden_states[-(2+k)]` un-normed, concatenated on the channel dim; pooled = the second
//! encoder's projected `text_embeds`; zeros for an absent negative prompt when the pipeline
//! sets `force_zeros_for_empty_prompt`).

use burn::tensor::{Device, Int, Tensor, TensorData};

use dreamforge_core::{Error, Result};
use dreamforge_models::text::clip::ClipTextModel;
use dreamforge_models::text::tokenizer::TextTokenizer;

/// CLIP's context length when a tokenizer config does not say.
pub const CLIP_MAX_LENGTH: usize = 77;

/// Token ids `[n, max_len]` (padded to the tokenizer's `model_max_length`, truncated).
pub fn tokenize(
    tok: &TextTokenizer,
    texts: &[&str],
    device: &Device,
    warnings: &mut Vec<String>,
) -> Result<Tensor<2, Int>> {
    let max_len = tok.model_max_length().unwrap_or(CLIP_MAX_LENGTH);
    let enc = tok.encode_batch(texts, max_len)?;
    if enc.truncated.iter().any(|&t| t) {
        let w = format!(
            "a prompt is longer than CLIP's limit of {max_len} tokens and was truncated (as diffusers does)"
        );
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    let n = enc.ids.len();
    let flat: Vec<i64> = enc.ids.into_iter().flatten().collect();
    Ok(Tensor::from_data(
        TensorData::new(flat, [n, max_len]),
        device,
    ))
}

/// `hidden_states[-from_end]` of a CLIP text encoder (1 = the last layer's output before the
/// final LayerNorm). The ids are validated by a full forward first.
///
/// # Shapes
/// `ids: [B, T]` → `[B, T, hidden]`
pub fn clip_hidden(
    model: &ClipTextModel,
    ids: Tensor<2, Int>,
    from_end: usize,
) -> Result<Tensor<3>> {
    let n = model.layers.len();
    if from_end == 0 || from_end > n + 1 {
        return Err(Error::InvalidInput(format!(
            "clip skip reaches past the text encoder's {n} layers"
        )));
    }
    let mut h = model.embeddings.forward(ids);
    for layer in &model.layers[..n + 1 - from_end] {
        h = layer.forward(h);
    }
    Ok(h)
}

/// SD1.x / SD2.x: `[n, 77, D]` states for `texts`.
pub fn encode_sd(
    tok: &TextTokenizer,
    enc: &ClipTextModel,
    texts: &[&str],
    clip_skip: Option<usize>,
    device: &Device,
    warnings: &mut Vec<String>,
) -> Result<Tensor<3>> {
    let ids = tokenize(tok, texts, device, warnings)?;
    let out = enc.forward(ids.clone())?;
    match clip_skip {
        None | Some(0) => Ok(out.last_hidden_state),
        Some(k) => {
            let h = clip_hidden(enc, ids, k + 1)?;
            Ok(enc.final_layer_norm.forward(h))
        }
    }
}

/// SDXL: (`[n, 77, D1 + D2]` states, `[n, P]` pooled) for `texts`.
pub fn encode_sdxl(
    toks: [&TextTokenizer; 2],
    encs: [&ClipTextModel; 2],
    texts: &[&str],
    clip_skip: Option<usize>,
    device: &Device,
    warnings: &mut Vec<String>,
) -> Result<(Tensor<3>, Tensor<2>)> {
    let from_end = 2 + clip_skip.unwrap_or(0);
    let mut states = Vec::with_capacity(2);
    let mut pooled = None;
    for (tok, enc) in toks.into_iter().zip(encs) {
        let ids = tokenize(tok, texts, device, warnings)?;
        let out = enc.forward(ids.clone())?;
        if let Some(te) = out.text_embeds {
            pooled = Some(te);
        }
        states.push(if from_end == 2 {
            out.penultimate_hidden_state
        } else {
            clip_hidden(enc, ids, from_end)?
        });
    }
    let pooled = pooled.ok_or_else(|| {
        Error::InvalidInput(
            "SDXL needs a text encoder with a projection (CLIPTextModelWithProjection) as text_encoder_2".into(),
        )
    })?;
    Ok((Tensor::cat(states, 2), pooled))
}
