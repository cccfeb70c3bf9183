//! `sd_pipeline` fixtures: the whole UNet-family path (tokenizers, CLIP encoders with clip
//! skip, SDXL pooled embeds and time ids, CFG with negative prompts and guidance rescale, every
//! sampler, img2img, inpainting with plain and 9-channel UNets, VAE scaling and decode) against
//! diffusers `StableDiffusion[XL|Img2Img|Inpaint]Pipeline` run from the same noise. A case
//! with `source` loads the pipeline from that single-file checkpoint in the folder (family and
//! variant detected from its keys) with the folder as `--components`.

use std::collections::BTreeMap;

use burn::tensor::Device;

use dreamforge_core::HostTensor;
use dreamforge_pipeline::{
    ComponentOverrides, InitImage, ModelFamily, SdComponents, SdPipeline, SdRequest, SdSource,
    detect_family,
};
use dreamforge_sampling::SamplerKind;

use super::golden::{Case, Fixture, Outcome};

fn field<T: serde::de::DeserializeOwned>(case: &Case, name: &str) -> Result<T, String> {
    let v = case
        .extra
        .get(name)
        .ok_or_else(|| format!("case has no `{name}`"))?;
    serde_json::from_value(v.clone()).map_err(|e| format!("case field `{name}`: {e}"))
}

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let comps = SdComponents::new(
        SdSource::Diffusers(fx.dir.clone()),
        ComponentOverrides::default(),
    );
    let folder_pipe = SdPipeline::load(&comps, device).map_err(|e| e.to_string())?;
    let mut single_files: BTreeMap<String, SdPipeline> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let source = case.extra.get("source").and_then(|s| s.as_str());
        if let Some(name) = source
            && !single_files.contains_key(name)
        {
            let loaded = (|| -> Result<SdPipeline, String> {
                let path = fx.dir.join(name);
                let ModelFamily::Sd(src) = detect_family(&path).map_err(|e| e.to_string())? else {
                    return Err(format!(
                        "{name}: not detected as a Stable Diffusion checkpoint"
                    ));
                };
                if !matches!(src, SdSource::SingleFile { .. }) {
                    return Err(format!("{name}: not detected as a single file"));
                }
                let o = ComponentOverrides {
                    components: Some(fx.dir.clone()),
                    ..Default::default()
                };
                SdPipeline::load(&SdComponents::new(src, o), device).map_err(|e| e.to_string())
            })();
            match loaded {
                Ok(p) => {
                    single_files.insert(name.to_string(), p);
                }
                Err(e) => {
                    out.push(Outcome::case_error(&fx.name, i, e));
                    continue;
                }
            }
        }
        let pipe = match source {
            Some(name) => &single_files[name],
            None => &folder_pipe,
        };
        let r = (|| -> Result<BTreeMap<String, HostTensor>, String> {
            let mode: String = field(case, "mode")?;
            let width: usize = field(case, "width")?;
            let height: usize = field(case, "height")?;
            let sampler: Option<String> = field(case, "sampler")?;
            let init = match mode.as_str() {
                "txt2img" => None,
                "img2img" | "inpaint" => {
                    let image: String = field(case, "init_image")?;
                    let mask: Option<String> = field(case, "mask_image")?;
                    let strength: f32 = field(case, "strength")?;
                    let mut notes = Vec::new();
                    Some(
                        InitImage::load(
                            &fx.dir.join(image),
                            mask.map(|m| fx.dir.join(m)).as_deref(),
                            strength,
                            width,
                            height,
                            &mut notes,
                        )
                        .map_err(|e| e.to_string())?,
                    )
                }
                other => return Err(format!("unknown mode `{other}`")),
            };
            let noise = match fx.input_opt(case, "latents")? {
                Some(t) => t,
                None => fx.input(case, "noise")?,
            };
            let req = SdRequest {
                prompt: field(case, "prompt")?,
                negative_prompt: field(case, "negative_prompt")?,
                guidance_scale: field(case, "guidance_scale")?,
                guidance_rescale: field(case, "guidance_rescale")?,
                clip_skip: field(case, "clip_skip")?,
                sampler: sampler
                    .as_deref()
                    .map(SamplerKind::parse)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                prediction_type: None,
                eta: 0.0,
                steps: field(case, "num_inference_steps")?,
                width,
                height,
                num_images: field(case, "num_images")?,
                seed: 0,
                image_seeds: Vec::new(),
                noise: Some(noise),
                init,
            };
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
            Ok(BTreeMap::from([("image".to_string(), img01)]))
        })();
        out.push(match r {
            Ok(c) => fx.check(i, case, &c),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
