//! `sample --ref`: the references of training-free token replacement read, brought to the
//! canvas and placed (Personalize Anything; layouts in `dreamforge-personalize`).
//!
//! A reference of the output size is used as is; a smaller one (both sides) is pasted at the
//! centre of a grey canvas of the output size — outpainting — with the pasted rectangle as its
//! default mask; any other size is resized to the output (a notice when the aspect changes).
//! A mask (white = the subject, or for inpainting what to keep) must have the reference's
//! aspect and goes through the same paste / resize; `auto` estimates the foreground from the
//! border colour; none = the whole reference (or the pasted rectangle).

use std::path::Path;

use dreamforge_core::image_io::{GrayImage, RgbImage};
use dreamforge_core::{Error, HostTensor};
use dreamforge_personalize::{Shift, TokenMask, perturb::shuffle_local, place_all};
use dreamforge_pipeline::{FluxPipeline, Personalization, Reference};

use super::SampleArgs;

/// The default τ: the reference notebooks' single-subject value (0.60), unless the model
/// folder declares its own (`_dreamforge_sample.tau` in `model_index.json`).
pub const DEFAULT_TAU: f32 = 0.6;

/// True when `a` asks for token replacement.
pub fn wanted(a: &SampleArgs) -> bool {
    !a.refs.is_empty()
}

/// Checks the flags that only mean something with `--ref`.
pub fn check_flags(a: &SampleArgs) -> Result<(), Error> {
    if a.refs.is_empty() {
        for (flag, given) in [
            ("--ref-mask", !a.ref_masks.is_empty()),
            ("--shift", !a.shifts.is_empty()),
            ("--ref-prompt", !a.ref_prompts.is_empty()),
            ("--tau", a.tau.is_some()),
            ("--mask-grow", a.mask_grow != 0),
            ("--shuffle-radius", a.shuffle_radius != 0),
            ("--share-attention", a.share_attention),
            ("--ref-blend", a.ref_blend),
        ] {
            if given {
                return Err(Error::InvalidInput(format!("{flag} needs a --ref image")));
            }
        }
        return Ok(());
    }
    for (flag, n) in [
        ("--ref-mask", a.ref_masks.len()),
        ("--shift", a.shifts.len()),
        ("--ref-prompt", a.ref_prompts.len()),
    ] {
        if n > a.refs.len() {
            return Err(Error::InvalidInput(format!(
                "{n} {flag} values for {} --ref image(s); give at most one per reference, in the same order",
                a.refs.len()
            )));
        }
    }
    if a.init_image.is_some() {
        return Err(Error::InvalidInput(
            "--ref replaces --init-image: to inpaint, pass the image as --ref with a mask of what to keep".into(),
        ));
    }
    if let Some(t) = a.tau
        && !(0.0..=1.0).contains(&t)
    {
        return Err(Error::InvalidInput(format!(
            "--tau must be in [0, 1] (got {t})"
        )));
    }
    Ok(())
}

fn paste_rgb(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let mut out = RgbImage {
        width: w,
        height: h,
        pixels: vec![128; (w * h * 3) as usize],
    };
    let (x0, y0) = ((w - img.width) / 2, (h - img.height) / 2);
    for y in 0..img.height {
        let src = (y * img.width * 3) as usize;
        let dst = (((y + y0) * w + x0) * 3) as usize;
        let n = (img.width * 3) as usize;
        out.pixels[dst..dst + n].copy_from_slice(&img.pixels[src..src + n]);
    }
    out
}

fn paste_gray(m: &GrayImage, w: u32, h: u32) -> GrayImage {
    let mut out = GrayImage {
        width: w,
        height: h,
        pixels: vec![0; (w * h) as usize],
    };
    let (x0, y0) = ((w - m.width) / 2, (h - m.height) / 2);
    for y in 0..m.height {
        let src = (y * m.width) as usize;
        let dst = ((y + y0) * w + x0) as usize;
        out.pixels[dst..dst + m.width as usize]
            .copy_from_slice(&m.pixels[src..src + m.width as usize]);
    }
    out
}

/// Reads and places every reference for a `width × height` generation.
pub fn load(
    a: &SampleArgs,
    pipe: &FluxPipeline,
    width: usize,
    height: usize,
    default_tau: Option<f32>,
    notices: &mut Vec<String>,
) -> Result<Personalization, Error> {
    let (rows, cols) = pipe.token_grid(width, height);
    let token_px = pipe.vae_scale_factor() * 2;
    let (w, h) = (width as u32, height as u32);
    let mut images = Vec::new();
    let mut items = Vec::new();
    for (i, path) in a.refs.iter().enumerate() {
        let what = format!("--ref {}", path.display());
        let img = RgbImage::read(path)?;
        // `all` = no mask (lets a later reference have one while this one has none).
        let mask_arg = a
            .ref_masks
            .get(i)
            .map(|p| p.as_path())
            .filter(|p| *p != Path::new("all"));
        let auto = mask_arg.is_some_and(|p| p == Path::new("auto"));
        let mask_img = match mask_arg {
            Some(p) if !auto => {
                let m = GrayImage::read(p)?;
                let (ra, ma) = (
                    img.width as f64 / img.height as f64,
                    m.width as f64 / m.height as f64,
                );
                if (ra / ma - 1.0).abs() > 0.01 {
                    return Err(Error::InvalidInput(format!(
                        "{}: the mask is {}x{}, its reference {} is {}x{}: a mask must have its reference's aspect",
                        p.display(),
                        m.width,
                        m.height,
                        path.display(),
                        img.width,
                        img.height
                    )));
                }
                Some(m.resized(img.width, img.height))
            }
            _ => None,
        };
        let paste = (img.width, img.height) != (w, h) && img.width <= w && img.height <= h;
        let (canvas, canvas_mask) = if paste {
            notices.push(format!(
                "{what}: {}x{} pasted at the centre of the {w}x{h} canvas (outpainting)",
                img.width, img.height
            ));
            let full = GrayImage {
                width: img.width,
                height: img.height,
                pixels: vec![255; (img.width * img.height) as usize],
            };
            let m = mask_img.unwrap_or(full);
            (paste_rgb(&img, w, h), Some(paste_gray(&m, w, h)))
        } else {
            if (img.width, img.height) != (w, h) {
                let (ra, oa) = (img.width as f64 / img.height as f64, w as f64 / h as f64);
                if (ra / oa - 1.0).abs() > 0.01 {
                    notices.push(format!(
                        "{what}: {}x{} resized to {w}x{h}, which changes its aspect",
                        img.width, img.height
                    ));
                }
            }
            (img.resized(w, h), mask_img.map(|m| m.resized(w, h)))
        };
        let mask = if auto {
            let m = TokenMask::foreground(&canvas, cols, rows);
            if m.count() == 0 {
                return Err(Error::InvalidInput(format!(
                    "{what}: --ref-mask auto found no foreground (a subject on a plain backdrop is needed; pass a mask)"
                )));
            }
            m
        } else {
            match &canvas_mask {
                Some(m) => TokenMask::from_image(
                    m,
                    cols,
                    rows,
                    &a.ref_masks
                        .get(i)
                        .map(|p| p.display().to_string())
                        .unwrap_or(what.clone()),
                )?,
                None => TokenMask::full(cols, rows),
            }
        };
        let mask = mask.morphed(a.mask_grow);
        if mask.count() == 0 {
            return Err(Error::InvalidInput(format!(
                "{what}: --mask-grow {} erodes the mask to nothing",
                a.mask_grow
            )));
        }
        let shift = match a.shifts.get(i) {
            Some(s) => {
                let (s, note) = Shift::parse_pixels(s, token_px)?;
                notices.extend(note);
                s
            }
            None => Shift::default(),
        };
        images.push(canvas);
        items.push((mask, shift, what));
    }
    let placed = place_all(&items)?;
    let seed = a.perturb_seed;
    Ok(Personalization {
        tau: a.tau.or(default_tau).unwrap_or(DEFAULT_TAU),
        share_attention: a.share_attention,
        blend: a.ref_blend,
        references: images
            .into_iter()
            .zip(placed)
            .enumerate()
            .map(|(i, (img, pl))| Reference {
                image: HostTensor::new(vec![1, 3, height, width], img.to_chw_signed()),
                prompt: a.ref_prompts.get(i).cloned().unwrap_or_default(),
                pairs: shuffle_local(
                    &pl.pairs,
                    cols,
                    a.shuffle_radius,
                    seed.wrapping_add(i as u64),
                ),
            })
            .collect(),
    })
}

/// The metadata entries describing the references.
pub fn metadata(a: &SampleArgs, p: &Personalization) -> serde_json::Value {
    serde_json::json!({
        "tau": p.tau,
        "mask_grow": a.mask_grow,
        "shuffle_radius": a.shuffle_radius,
        "perturb_seed": a.perturb_seed,
        "share_attention": p.share_attention,
        "blend": p.blend,
        "references": a.refs.iter().enumerate().map(|(i, r)| serde_json::json!({
            "image": r.display().to_string(),
            "mask": a.ref_masks.get(i).map(|m| m.display().to_string()),
            "shift": a.shifts.get(i),
            "prompt": a.ref_prompts.get(i),
            "tokens": p.references[i].pairs.len(),
        })).collect::<Vec<_>>(),
    })
}
