//! The nano metrics, computed by the judge: **prompt fidelity** (the fraction of images whose
//! judged attributes satisfy everything their prompt states — the nano analogue of CLIP-T)
//! and **subject similarity** (cosine similarity of judge features between an image and a
//! subject's reference images — the analogue of CLIP-I / DINO).

use burn::tensor::Tensor;

use crate::caption::{ParseError, PromptSpec, parse};
use crate::judge::{Judge, Reading};

/// One judged image.
#[derive(Debug, Clone)]
pub struct Judged {
    pub prompt: String,
    pub spec: PromptSpec,
    pub reading: Reading,
    /// The reading satisfies every attribute the prompt states.
    pub follows_prompt: bool,
}

/// Judges `images` (`[n, 3, 64, 64]` in [-1, 1]) against their prompts. A prompt outside the
/// nano world is an error naming it.
pub fn judge_prompts(
    judge: &Judge,
    images: Tensor<4>,
    prompts: &[String],
) -> Result<Vec<Judged>, (usize, ParseError)> {
    let specs = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| parse(p).map_err(|e| (i, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let readings = judge.read(images);
    Ok(readings
        .into_iter()
        .zip(specs)
        .zip(prompts)
        .map(|((reading, spec), prompt)| Judged {
            follows_prompt: spec.matches(&reading.scene()),
            prompt: prompt.clone(),
            spec,
            reading,
        })
        .collect())
}

/// The fraction of judged images that follow their prompt.
pub fn prompt_fidelity(judged: &[Judged]) -> f64 {
    if judged.is_empty() {
        return 0.0;
    }
    judged.iter().filter(|j| j.follows_prompt).count() as f64 / judged.len() as f64
}

/// Per image: the mean cosine similarity of its judge features to those of `references`.
///
/// # Shapes
/// `images: [n, 3, 64, 64]`, `references: [m, 3, 64, 64]` → n values
pub fn subject_similarity(judge: &Judge, images: Tensor<4>, references: Tensor<4>) -> Vec<f64> {
    let unit = |f: Tensor<2>| {
        let n = f.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
        f / n
    };
    let a = unit(judge.features(images));
    let b = unit(judge.features(references));
    let m = b.dims()[0] as f32;
    let sims = a.matmul(b.transpose()).sum_dim(1) / m;
    sims.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
        .into_iter()
        .map(f64::from)
        .collect()
}
