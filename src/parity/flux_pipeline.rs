//! `flux_pipeline` fixtures: the whole FLUX text-to-image path (tokenizers, CLIP, T5, packing,
//! ids, μ-shifted sigmas, guidance, true CFG, Euler, VAE scaling and decode) against diffusers
//! `FluxPipeline` run from the same packed latents; `mode` img2img / inpaint cases against
//! `FluxImg2ImgPipeline` / `FluxInpaintPipeline` from the same noise and init PNGs.

use std::collections::BTreeMap;

use burn::tensor::Device;

use dreamforge_core::{HostTensor, to_host};
use dreamforge_pipeline::{
    ComponentOverrides, FluxComponents, FluxPipeline, FluxRequest, InitImage,
};

use super::golden::{Case, Fixture, Outcome};

fn field<T: serde::de::DeserializeOwned>(case: &Case, name: &str) -> Result<T, String> {
    let v = case
        .extra
        .get(name)
        .ok_or_else(|| format!("case has no `{name}`"))?;
    serde_json::from_value(v.clone()).map_err(|e| format!("case field `{name}`: {e}"))
}

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let comps = FluxComponents::resolve(&fx.dir, &ComponentOverrides::default())
        .map_err(|e| e.to_string())?;
    let pipe = FluxPipeline::load(&comps, device).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = (|| -> Result<BTreeMap<String, HostTensor>, String> {
            let mode = case
                .extra
                .get("mode")
                .and_then(|m| m.as_str())
                .unwrap_or("txt2img");
            let (noise, init) = if mode == "txt2img" {
                (fx.input(case, "latents")?, None)
            } else {
                let image: String = field(case, "init_image")?;
                let mask: Option<String> = field(case, "mask_image")?;
                let mut notes = Vec::new();
                let init = InitImage::load(
                    &fx.dir.join(image),
                    mask.map(|m| fx.dir.join(m)).as_deref(),
                    field(case, "strength")?,
                    field(case, "width")?,
                    field(case, "height")?,
                    &mut notes,
                )
                .map_err(|e| e.to_string())?;
                (fx.input(case, "noise")?, Some(init))
            };
            let req = FluxRequest {
                prompt: field(case, "prompt")?,
                negative_prompt: field(case, "negative_prompt")?,
                true_cfg_scale: field(case, "true_cfg_scale")?,
                guidance: field(case, "guidance_scale")?,
                steps: field(case, "num_inference_steps")?,
                width: field(case, "width")?,
                height: field(case, "height")?,
                num_images: field(case, "num_images")?,
                seed: 0,
                image_seeds: Vec::new(),
                max_sequence_length: field(case, "max_sequence_length")?,
                noise: Some(noise),
                init,
            };
            let mut warnings = Vec::new();
            let (pe, ppe) = pipe
                .encode_prompt(&req.prompt, 1, req.max_sequence_length, &mut warnings)
                .map_err(|e| e.to_string())?;
            let img = pipe
                .generate(&req, |_| true)
                .map_err(|e| e.to_string())?
                .ok_or("cancelled")?
                .images;
            // output_type="pt": (x / 2 + 0.5).clamp(0, 1)
            let img01 = HostTensor::new(
                img.shape,
                img.data
                    .iter()
                    .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
                    .collect(),
            );
            Ok(BTreeMap::from([
                ("image".to_string(), img01),
                ("prompt_embeds".to_string(), to_host(pe)),
                ("pooled_prompt_embeds".to_string(), to_host(ppe)),
            ]))
        })();
        out.push(match r {
            Ok(c) => fx.check(i, case, &c),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
