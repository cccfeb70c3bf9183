//! Training-free personalization on the FLUX pipeline by token replacement (Personalize
//! Anything, `fenghora/personalize-anything:src/pipeline.py` `RFInversionParallelFluxPipeline`
//! and `src/attn_processor.py`; methods.md §2).
//!
//! The batch holds one row per reference and the generation last. Each reference row is its
//! clean latent `y0` (VAE posterior mean, scaled, packed) linearly re-noised to the current σ,
//! `x_ref(σ) = (1 − σ)·y0 + σ·y1` with a fixed Gaussian `y1`: what the released code's
//! model-free RF inversion (γ = 1) followed by its η = 1 reference steps computes, without
//! the wasted transformer calls. Every row has its own prompt (a reference's defaults to "").
//! While σ > τ, every double and single block replaces the generation row's attention-input
//! tokens at each reference's destination positions by that reference's tokens
//! ([`TokenReplace`]); below τ the attention is plain, or shared with the references
//! (`share_attention`). Only the generation row is stepped
//! (flow-match Euler, the pipeline's schedule) and decoded. Adapters (LoRA / T-LoRA) and true
//! CFG apply as in [`FluxPipeline::generate`]; with CFG the negative pass replaces too.
//! Inpainting (the reference is the image itself, its mask what to keep) and outpainting (the
//! subject pasted onto a larger canvas) are the same call with other references.
//!
//! Optional latent blending (`blend`, not in the released code): after every step the
//! generation's tokens at each reference's destinations are set to that reference's latent
//! re-noised to the new σ — diffusers' `FluxInpaintPipeline` mask blending
//! (`latents = (1 − mask)·init_latents_proper + mask·latents`) on the token grid — so what an
//! inpainting mask keeps (or an outpainting canvas pastes) comes back exactly, while the
//! replaced attention inputs keep the rest of the image in harmony with it.

use burn::tensor::Tensor;

use dreamforge_core::{Error, HostTensor, Result, noise::randn, to_host};
use dreamforge_models::dit::flux::{FluxInputs, TokenReplace};
use dreamforge_sampling::{StepInfo, sample_euler};

use crate::flux::{FluxOutput, FluxPipeline, FluxRequest};
use crate::guidance::cfg_combine;
use crate::latents::{pack, unpack};

/// One reference subject.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The reference image at the generation size, `[1, 3, H, W]` in [-1, 1].
    pub image: HostTensor,
    /// Its prompt (the released demo uses "").
    pub prompt: String,
    /// `(source token, destination token)` pairs on the `H/16 × W/16` grid (row-major),
    /// destinations disjoint from other references'.
    pub pairs: Vec<(usize, usize)>,
}

/// What token replacement adds to a request.
#[derive(Debug, Clone)]
pub struct Personalization {
    pub references: Vec<Reference>,
    /// Replacement runs while σ > τ (0 = at every step, 1 = never).
    pub tau: f32,
    /// Attention sharing while σ ≤ τ: the generation row also attends to the references'
    /// tokens (their K/V, with the RoPE of where they land) — the paper's late-stage
    /// "multi-modal attention"; the released code's `concept_process` (off by default there).
    pub share_attention: bool,
    /// Latent blending: after every step, each reference's destination tokens are set to its
    /// source tokens re-noised to the new σ (the final image keeps them exactly).
    pub blend: bool,
}

/// The seed of reference `i`'s re-noising Gaussian for the image with `seed`.
fn reference_seed(seed: u64, i: usize) -> u64 {
    seed ^ 0x005E_ED0F_2EF5_u64.wrapping_mul(i as u64 + 1)
}

impl FluxPipeline {
    /// The image-token grid (`(rows, cols)`) of a `width × height` generation.
    pub fn token_grid(&self, width: usize, height: usize) -> (usize, usize) {
        let t = self.vae_scale_factor() * 2;
        (height / t, width / t)
    }

    /// Runs `r` with token replacement from `p`'s references. `on_step` returning `false`
    /// cancels (then `Ok(None)`).
    pub fn generate_personalized(
        &self,
        r: &FluxRequest,
        p: &Personalization,
        mut on_step: impl FnMut(StepInfo) -> bool,
    ) -> Result<Option<FluxOutput>> {
        self.validate(r)?;
        if r.init.is_some() || r.noise.is_some() {
            return Err(Error::InvalidInput(
                "token replacement takes no --init-image / --noise: inpaint by passing the image as --ref with a mask of what to keep".into(),
            ));
        }
        if p.references.is_empty() {
            return Err(Error::InvalidInput(
                "token replacement needs at least one reference".into(),
            ));
        }
        if !(0.0..=1.0).contains(&p.tau) {
            return Err(Error::InvalidInput(format!(
                "--tau must be in [0, 1] (got {})",
                p.tau
            )));
        }
        let vsf = self.vae_scale_factor();
        let (h, w) = (2 * (r.height / (vsf * 2)), 2 * (r.width / (vsf * 2)));
        let c = self.transformer.config.in_channels / 4;
        let l = (h / 2) * (w / 2);
        let k = p.references.len();
        let rows = k + 1;
        for (i, rf) in p.references.iter().enumerate() {
            if rf.image.shape != [1, 3, r.height, r.width] {
                return Err(Error::InvalidInput(format!(
                    "reference {} is {:?}, the generation {}x{}",
                    i + 1,
                    rf.image.shape,
                    r.width,
                    r.height
                )));
            }
            if let Some(&(s, d)) = rf.pairs.iter().find(|(s, d)| *s >= l || *d >= l) {
                return Err(Error::InvalidInput(format!(
                    "reference {}: token pair ({s}, {d}) outside the {l}-token grid",
                    i + 1
                )));
            }
        }
        let mut warnings = Vec::new();
        let msl = r.max_sequence_length;
        // Text: one row per reference, the generation last.
        let mut ref_states = Vec::new();
        let mut ref_pooled = Vec::new();
        for rf in &p.references {
            let mut quiet = Vec::new();
            let (s, pl) = self.encode_prompt(&rf.prompt, 1, msl, &mut quiet)?;
            ref_states.push(s);
            ref_pooled.push(pl);
        }
        let with = |s: Tensor<3>, pl: Tensor<2>| {
            let mut st = ref_states.clone();
            st.push(s);
            let mut po = ref_pooled.clone();
            po.push(pl);
            (Tensor::cat(st, 0), Tensor::cat(po, 0))
        };
        let (gs, gp) = self.encode_prompt(&r.prompt, 1, msl, &mut warnings)?;
        let (states, pooled) = with(gs, gp);
        let cfg = match (&r.negative_prompt, r.true_cfg_scale > 1.0) {
            (Some(neg), true) => {
                let (ns, np) = self.encode_prompt(neg, 1, msl, &mut warnings)?;
                Some(with(ns, np))
            }
            _ => None,
        };
        // Reference latents: clean y0, and the Gaussian y1 they are re-noised toward.
        let y0: Vec<Tensor<3>> = p
            .references
            .iter()
            .map(|rf| {
                let mean = self
                    .vae
                    .encode_mean(rf.image.clone().to_device(&self.device));
                pack(self.vae.scale_latents(mean))
            })
            .collect();
        let t_len = states.dims()[1];
        let rope = self.rope(t_len, h, w);
        let schedule = self.schedule(r.steps, l)?;
        let replace = TokenReplace::new(
            k,
            &(0..k).collect::<Vec<_>>(),
            &p.references
                .iter()
                .map(|rf| rf.pairs.clone())
                .collect::<Vec<_>>(),
            l,
            &self.device,
        );
        let guidance = self
            .transformer
            .config
            .guidance_embeds
            .then(|| vec![r.guidance; rows]);
        // Latent blending: the references' clean latents moved to their destinations, and the
        // destination mask `[1, L, 1]`.
        let d = c * 4;
        let scatter = |lat: &[Tensor<3>]| -> Tensor<3> {
            let mut out = vec![0f32; l * d];
            for (rf, t) in p.references.iter().zip(lat) {
                let src = to_host(t.clone()).data;
                for &(s, dst) in &rf.pairs {
                    out[dst * d..(dst + 1) * d].copy_from_slice(&src[s * d..(s + 1) * d]);
                }
            }
            HostTensor::new(vec![1, l, d], out).to_device(&self.device)
        };
        let blend = p.blend.then(|| {
            let mut m = vec![0f32; l];
            for rf in &p.references {
                for &(_, dst) in &rf.pairs {
                    m[dst] = 1.0;
                }
            }
            (
                scatter(&y0),
                HostTensor::new(vec![1, l, 1], m).to_device(&self.device),
            )
        });
        let mut images = Vec::new();
        for n in 0..r.num_images {
            let seed = r.image_seed(n);
            let y1: Vec<Tensor<3>> = (0..k)
                .map(|i| {
                    let e = randn(reference_seed(seed, i), &[1, c, h, w]);
                    pack(e.to_device(&self.device))
                })
                .collect();
            let noise = pack(randn(seed, &[1, c, h, w]).to_device(&self.device));
            let denoise = |x: Tensor<3>, sigma: f32, i: usize| -> Result<Tensor<3>> {
                let t = vec![schedule.timesteps[i] / 1000.0; rows];
                let adapted = self.adapted_at(sigma);
                let model = adapted.as_ref().unwrap_or(&self.transformer);
                let mut batch: Vec<Tensor<3>> = y0
                    .iter()
                    .zip(&y1)
                    .map(|(a, b)| a.clone() * (1.0 - sigma) + b.clone() * sigma)
                    .collect();
                batch.push(x);
                let batch = Tensor::cat(batch, 0);
                let rep = (sigma > p.tau).then_some(&replace);
                let share = (p.share_attention && sigma <= p.tau).then_some(&replace);
                let run = |s: &Tensor<3>, pl: &Tensor<2>| -> Result<Tensor<3>> {
                    let v = model.forward_personalized(
                        FluxInputs {
                            hidden_states: batch.clone(),
                            encoder_hidden_states: s.clone(),
                            pooled_projections: pl.clone(),
                            timestep: t.clone(),
                            guidance: guidance.clone(),
                        },
                        &rope,
                        rep,
                        share,
                    )?;
                    let [_, l, d] = v.dims();
                    Ok(v.slice([k..k + 1, 0..l, 0..d]))
                };
                let v = run(&states, &pooled)?;
                match &cfg {
                    Some((ns, np)) => Ok(cfg_combine(run(ns, np)?, v, r.true_cfg_scale)),
                    None => Ok(v),
                }
            };
            let blend_to = blend.as_ref().map(|(y0d, m)| (y0d, scatter(&y1), m));
            let step = |info: StepInfo, x: Tensor<3>| {
                let sigma = info.sigma;
                on_step(info).then(|| match &blend_to {
                    Some((y0d, y1d, m)) => {
                        let kept = (*y0d).clone() * (1.0 - sigma) + y1d.clone() * sigma;
                        x * ((*m).clone().neg() + 1.0) + kept * (*m).clone()
                    }
                    None => x,
                })
            };
            let Some(latents) = sample_euler(noise, &schedule.sigmas, denoise, step)? else {
                return Ok(None);
            };
            let z = self.vae.unscale_latents(unpack(latents, h, w));
            images.push(self.vae.decode(z));
        }
        Ok(Some(FluxOutput {
            images: to_host(Tensor::cat(images, 0)),
            warnings,
        }))
    }
}
