//! `sample` for the Stable Diffusion family (SD1.x / SD2.x / SDXL): load from a diffusers
//! folder or a single-file checkpoint, then text-to-image / img2img / inpainting with the
//! chosen sampler and classifier-free guidance.

use std::time::Instant;

use dreamforge_core::Error;
use dreamforge_pipeline::family::check_components_family;
use dreamforge_pipeline::{SdComponents, SdFamily, SdPipeline, SdRequest, SdSource};
use dreamforge_sampling::{Parameterization, SamplerKind};

use super::{Ctx, Rendered, SampleArgs, init_image, model_name, output_size};

/// A1111's names for the samplers.
fn a1111_sampler(k: SamplerKind) -> &'static str {
    match k {
        SamplerKind::Ddim => "DDIM",
        SamplerKind::Euler => "Euler",
        SamplerKind::EulerAncestral => "Euler a",
        SamplerKind::DpmPp2m => "DPM++ 2M",
        SamplerKind::DpmPp2mKarras => "DPM++ 2M Karras",
    }
}

/// Refuses flags that only mean something for FLUX.
pub(crate) fn check_flags(a: &SampleArgs) -> anyhow::Result<()> {
    if !a.refs.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--ref (token replacement) needs a DiT: a FLUX-family model; {} is a UNet (Stable Diffusion) model",
            a.model.display()
        ))
        .into());
    }
    for (flag, given) in [
        ("--true-cfg", a.true_cfg.is_some()),
        ("--max-sequence-length", a.max_sequence_length.is_some()),
    ] {
        if given {
            return Err(Error::InvalidInput(format!(
                "{flag} applies to FLUX.1 models; {} is a Stable Diffusion model (use --guidance)",
                a.model.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// The sampler and prediction-type overrides, parsed.
fn parse_names(a: &SampleArgs) -> anyhow::Result<(Option<SamplerKind>, Option<Parameterization>)> {
    let sampler = a
        .sampler
        .as_deref()
        .map(SamplerKind::parse)
        .transpose()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let prediction_type = a
        .prediction_type
        .as_deref()
        .map(Parameterization::parse)
        .transpose()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    Ok((sampler, prediction_type))
}

/// Loads the pipeline (names and flags checked first, before anything heavy).
pub(crate) fn load(a: &SampleArgs, ctx: &Ctx, source: SdSource) -> anyhow::Result<SdPipeline> {
    check_flags(a)?;
    parse_names(a)?;
    if let Some(c) = &ctx.overrides.components {
        check_components_family(c, false)?;
    }
    Ok(SdPipeline::load(
        &SdComponents::new(source, ctx.overrides.clone()),
        &ctx.device,
    )?)
}

/// One request with the loaded pipeline (adapters already set; `lora_meta` describes them).
pub(crate) fn generate(
    pipe: &SdPipeline,
    a: &SampleArgs,
    ctx: &Ctx,
    lora_meta: Vec<serde_json::Value>,
    init_size: Option<(usize, usize)>,
    t0: Instant,
) -> anyhow::Result<Option<Rendered>> {
    check_flags(a)?;
    let (sampler, prediction_type) = parse_names(a)?;
    let sdxl = pipe.family == SdFamily::Sdxl;
    let default_size = pipe.default_size();
    let (width, height) = output_size(a, init_size, pipe.size_multiple(), default_size);
    let mut notices = pipe.notices.clone();
    let init = init_image(a, width, height, &mut notices)?;
    let req = SdRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        guidance_scale: a.guidance.unwrap_or(if sdxl { 5.0 } else { 7.5 }),
        guidance_rescale: a.guidance_rescale,
        clip_skip: a.clip_skip,
        sampler,
        prediction_type,
        eta: a.eta,
        steps: a.steps.unwrap_or(30),
        width,
        height,
        num_images: if a.seeds.is_empty() {
            a.num_images
        } else {
            a.seeds.len()
        },
        seed: ctx.seed,
        image_seeds: a.seeds.clone(),
        noise: ctx.noise.clone(),
        init,
    };
    pipe.validate(&req)?;
    let kind = req.sampler.unwrap_or(pipe.default_sampler);
    if !a.quiet {
        eprintln!(
            "loaded {} ({}) on {} in {:.1}s; sampler {}",
            a.model.display(),
            if sdxl { "SDXL" } else { "Stable Diffusion" },
            ctx.spec,
            t0.elapsed().as_secs_f32(),
            kind.name()
        );
        for n in &notices {
            eprintln!("notice: {n}");
        }
    }
    let bar = ctx.bar(a.quiet, req.steps);
    let out = pipe.generate(&req, ctx.on_step(&bar))?;
    ctx.finish(&bar);
    let Some(out) = out else {
        return Ok(None);
    };
    let model = model_name(&a.model);
    let common = ctx.metadata(a);
    let r2 = req.clone();
    let steps = req.steps;
    Ok(Some(Rendered {
        images: out.images,
        warnings: out.warnings,
        parameters: Box::new(move |seed| a1111_parameters(&req, kind, seed, &model)),
        json: Box::new(move |seed| {
            let init = r2.init.as_ref();
            let mut v = serde_json::json!({
                "family": if sdxl { "sdxl" } else { "sd" },
                "prompt": r2.prompt,
                "negative_prompt": r2.negative_prompt,
                "guidance_scale": r2.guidance_scale,
                "guidance_rescale": r2.guidance_rescale,
                "clip_skip": r2.clip_skip,
                "sampler": kind.name(),
                "eta": r2.eta,
                "steps": r2.steps,
                "seed": seed,
                "width": r2.width,
                "height": r2.height,
                "init_image": init.map(|i| i.image_path.display().to_string()),
                "mask": init.and_then(|i| i.mask_path.as_ref().map(|m| m.display().to_string())),
                "strength": init.map(|i| i.strength),
                "adapters": lora_meta.clone(),
            });
            if let Some(o) = v.as_object_mut() {
                o.extend(common.clone());
            }
            v
        }),
        steps,
    }))
}

fn a1111_parameters(r: &SdRequest, kind: SamplerKind, seed: u64, model: &str) -> String {
    let mut s = r.prompt.clone();
    if let Some(n) = &r.negative_prompt {
        s.push_str(&format!("\nNegative prompt: {n}"));
    }
    s.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {model}",
        r.steps,
        a1111_sampler(kind),
        r.guidance_scale,
        r.width,
        r.height
    ));
    if let Some(i) = &r.init {
        s.push_str(&format!(", Denoising strength: {}", i.strength));
    }
    if let Some(k) = r.clip_skip {
        s.push_str(&format!(", Clip skip: {}", k + 1));
    }
    if r.guidance_rescale > 0.0 {
        s.push_str(&format!(", CFG Rescale phi: {}", r.guidance_rescale));
    }
    s.push_str(&format!(
        ", Version: dreamforge {}",
        env!("CARGO_PKG_VERSION")
    ));
    s
}
