//! `sample` for the FLUX.1 family: resolve components, load, text-to-image / img2img /
//! inpainting with flow-match Euler.

use std::time::Instant;

use dreamforge_core::{Error, HostTensor};
use dreamforge_pipeline::family::check_components_family;
use dreamforge_pipeline::{FluxComponents, FluxPipeline, FluxRequest};

use super::{Ctx, Rendered, SampleArgs, init_image, model_name, output_size};

/// Refuses flags that only mean something for Stable Diffusion.
pub(crate) fn check_flags(a: &SampleArgs) -> anyhow::Result<()> {
    super::reference::check_flags(a)?;
    for (flag, given) in [
        ("--sampler", a.sampler.is_some()),
        ("--clip-skip", a.clip_skip.is_some()),
        ("--prediction-type", a.prediction_type.is_some()),
        ("--guidance-rescale", a.guidance_rescale != 0.0),
        ("--eta", a.eta != 0.0),
    ] {
        if given {
            return Err(Error::InvalidInput(format!(
                "{flag} applies to Stable Diffusion models; {} is a FLUX.1 model (flow-match Euler)",
                a.model.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Resolves the components of `a.model` and loads the pipeline.
pub(crate) fn load(a: &SampleArgs, ctx: &Ctx) -> anyhow::Result<FluxPipeline> {
    check_flags(a)?;
    if let Some(c) = &ctx.overrides.components {
        check_components_family(c, true)?;
    }
    let comps = FluxComponents::resolve(&a.model, &ctx.overrides)?;
    Ok(FluxPipeline::load(&comps, &ctx.device)?)
}

/// One request with the loaded pipeline (adapters already set; `lora_meta` describes them).
pub(crate) fn generate(
    pipe: &FluxPipeline,
    a: &SampleArgs,
    ctx: &Ctx,
    lora_meta: Vec<serde_json::Value>,
    init_size: Option<(usize, usize)>,
    t0: Instant,
) -> anyhow::Result<Option<Rendered>> {
    check_flags(a)?;
    let distilled = pipe.transformer.config.guidance_embeds;
    // A single-file or component-folder model takes the sampling defaults of its
    // --components pipeline.
    let defaults = match (sample_defaults(&a.model), &ctx.overrides.components) {
        (d, Some(c)) if d.steps.is_none() && d.true_cfg_scale.is_none() => sample_defaults(c),
        (d, _) => d,
    };
    let (width, height) = output_size(
        a,
        init_size,
        pipe.vae_scale_factor() * 2,
        pipe.vae.native_size().unwrap_or(1024),
    );
    let mut notices = Vec::new();
    let init = init_image(a, width, height, &mut notices)?;
    let num_images = if a.seeds.is_empty() {
        a.num_images
    } else {
        a.seeds.len()
    };
    // Completion is per image, from the image's own seed: the same seed gives the same caption
    // whether the image is sampled alone, in a batch, or by `render`.
    let complete = matches!(defaults.complete_prompt.as_deref(), Some("nano")) && !a.exact_prompt;
    let user_prompt = a.prompt.clone();
    let completion = move |seed: u64| {
        complete
            .then(|| dreamforge_nano::complete_prompt(&user_prompt, seed))
            .flatten()
    };
    let req = FluxRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a
            .negative_prompt
            .clone()
            .or(defaults.negative_prompt.clone()),
        true_cfg_scale: a.true_cfg.or(defaults.true_cfg_scale).unwrap_or(1.0),
        guidance: a.guidance.unwrap_or(3.5),
        steps: a
            .steps
            .or(defaults.steps)
            .unwrap_or(if distilled { 28 } else { 4 }),
        width,
        height,
        num_images,
        seed: ctx.seed,
        image_seeds: a.seeds.clone(),
        max_sequence_length: a
            .max_sequence_length
            .unwrap_or(if distilled { 512 } else { 256 }),
        noise: ctx.noise.clone(),
        init,
    };
    pipe.validate(&req)?;
    let completed: Vec<Option<String>> = (0..num_images)
        .map(|i| completion(req.image_seed(i)))
        .collect();
    if completed.iter().any(Option::is_some) {
        let shown: Vec<String> = completed
            .iter()
            .flatten()
            .take(4)
            .map(|c| format!("\"{c}\""))
            .collect();
        let more = if num_images > shown.len() {
            ", …"
        } else {
            ""
        };
        notices.push(format!(
            "this model was trained on full captions: sampling {}{more} (what the prompt leaves open is drawn from each image's seed; --exact-prompt samples it as written)",
            shown.join(", ")
        ));
    }
    let personalization = super::reference::wanted(a)
        .then(|| super::reference::load(a, pipe, width, height, defaults.tau, &mut notices))
        .transpose()?;
    if !a.quiet {
        eprintln!(
            "loaded {} (FLUX.1) on {} in {:.1}s",
            a.model.display(),
            ctx.spec,
            t0.elapsed().as_secs_f32()
        );
        for n in &notices {
            eprintln!("notice: {n}");
        }
    }
    let bar = ctx.bar(a.quiet, req.steps);
    // Consecutive images with the same prompt share a forward pass.
    let mut images: Option<HostTensor> = None;
    let mut warnings: Vec<String> = Vec::new();
    let mut start = 0;
    while start < num_images {
        let len = completed[start..]
            .iter()
            .take_while(|c| **c == completed[start])
            .count();
        let part = FluxRequest {
            prompt: completed[start]
                .clone()
                .unwrap_or_else(|| req.prompt.clone()),
            num_images: len,
            image_seeds: (start..start + len).map(|i| req.image_seed(i)).collect(),
            noise: req.noise.as_ref().map(|n| rows(n, start, len, num_images)),
            ..req.clone()
        };
        let out = match &personalization {
            Some(p) => pipe.generate_personalized(&part, p, ctx.on_step(&bar))?,
            None => pipe.generate(&part, ctx.on_step(&bar))?,
        };
        let Some(out) = out else {
            ctx.finish(&bar);
            return Ok(None);
        };
        for w in out.warnings {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        images = Some(match images {
            None => out.images,
            Some(mut all) => {
                all.shape[0] += out.images.shape[0];
                all.data.extend_from_slice(&out.images.data);
                all
            }
        });
        start += len;
    }
    let out = images.map(|images| dreamforge_pipeline::FluxOutput { images, warnings });
    let ref_meta = personalization
        .as_ref()
        .map(|p| super::reference::metadata(a, p));
    ctx.finish(&bar);
    let Some(out) = out else {
        return Ok(None);
    };
    let model = model_name(&a.model);
    let common = ctx.metadata(a);
    let r2 = req.clone();
    let completion_p = completion.clone();
    let user_prompt = a.prompt.clone();
    let steps = req.steps;
    Ok(Some(Rendered {
        images: out.images,
        warnings: out.warnings,
        parameters: Box::new(move |seed| {
            let r = FluxRequest {
                prompt: completion_p(seed).unwrap_or_else(|| req.prompt.clone()),
                ..req.clone()
            };
            a1111_parameters(&r, seed, &model, distilled)
        }),
        json: Box::new(move |seed| {
            let init = r2.init.as_ref();
            let mut v = serde_json::json!({
                "family": "flux",
                "prompt": user_prompt,
                "sampled_prompt": completion(seed),
                "negative_prompt": r2.negative_prompt,
                "true_cfg_scale": r2.true_cfg_scale,
                "guidance": if distilled { Some(r2.guidance) } else { None },
                "steps": r2.steps,
                "sampler": "flow_match_euler",
                "seed": seed,
                "width": r2.width,
                "height": r2.height,
                "max_sequence_length": r2.max_sequence_length,
                "init_image": init.map(|i| i.image_path.display().to_string()),
                "mask": init.and_then(|i| i.mask_path.as_ref().map(|m| m.display().to_string())),
                "strength": init.map(|i| i.strength),
                "adapters": lora_meta.clone(),
                "token_replacement": ref_meta.clone(),
            });
            if let Some(o) = v.as_object_mut() {
                o.extend(common.clone());
            }
            v
        }),
        steps,
    }))
}

/// Sampling defaults a pipeline folder may declare in `model_index.json` under
/// `_dreamforge_sample` (the nano model does: it needs CFG and more than 4 steps).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct SampleDefaults {
    pub steps: Option<usize>,
    /// Token replacement's τ for this model (the nano model measures best at 0).
    pub tau: Option<f32>,
    pub true_cfg_scale: Option<f32>,
    pub negative_prompt: Option<String>,
    /// `"nano"`: complete prompts that leave attributes open (`dreamforge_nano::complete_prompt`).
    pub complete_prompt: Option<String>,
}

pub(crate) fn sample_defaults(model: &std::path::Path) -> SampleDefaults {
    std::fs::read_to_string(model.join("model_index.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v.get("_dreamforge_sample")?.clone()).ok())
        .unwrap_or_default()
}

/// Rows `start..start + len` of `t`, whose first dimension is `n` (or 1: shared by all).
fn rows(t: &HostTensor, start: usize, len: usize, n: usize) -> HostTensor {
    if t.shape[0] != n {
        return t.clone();
    }
    let row = t.data.len() / n.max(1);
    let mut shape = t.shape.clone();
    shape[0] = len;
    HostTensor::new(shape, t.data[start * row..(start + len) * row].to_vec())
}

fn a1111_parameters(r: &FluxRequest, seed: u64, model: &str, distilled: bool) -> String {
    let mut s = r.prompt.clone();
    if let Some(n) = &r.negative_prompt {
        s.push_str(&format!("\nNegative prompt: {n}"));
    }
    s.push_str(&format!(
        "\nSteps: {}, Sampler: Euler (flow match), CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {model}",
        r.steps, r.true_cfg_scale, r.width, r.height
    ));
    if distilled {
        s.push_str(&format!(", Distilled CFG Scale: {}", r.guidance));
    }
    if let Some(i) = &r.init {
        s.push_str(&format!(", Denoising strength: {}", i.strength));
    }
    s.push_str(&format!(
        ", Version: dreamforge {}",
        env!("CARGO_PKG_VERSION")
    ));
    s
}
