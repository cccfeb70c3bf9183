//! FLUX conditioning embeddings: diffusers `CombinedTimestepGuidanceTextProjEmbeddings` /
//! `CombinedTimestepTextProjEmbeddings` (`embeddings.py`): sinusoid(256, cos first) of 1000·t
//! (and of 1000·guidance) through two-layer SiLU MLPs, plus the pooled-text projection.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use dreamforge_core::{Result, WeightLoader};

use crate::layers::timestep_embedding;

const TIME_PROJ_DIM: usize = 256;

/// `linear_1 → SiLU → linear_2` (diffusers `TimestepEmbedding` and `PixArtAlphaTextProjection`
/// with `act_fn="silu"` share this shape).
#[derive(Module, Debug)]
pub struct MlpEmbedder {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl MlpEmbedder {
    pub fn load(w: &WeightLoader, prefix: &str, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            linear_1: w.linear(&format!("{prefix}.linear_1"), d_in, d_out, true)?,
            linear_2: w.linear(&format!("{prefix}.linear_2"), d_out, d_out, true)?,
        })
    }

    /// # Shapes
    /// `[B, d_in]` → `[B, d_out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// `time_text_embed`: timestep (+ guidance) + pooled text → `temb`.
#[derive(Module, Debug)]
pub struct TimeTextEmbed {
    pub timestep_embedder: MlpEmbedder,
    pub guidance_embedder: Option<MlpEmbedder>,
    pub text_embedder: MlpEmbedder,
}

impl TimeTextEmbed {
    pub fn load(w: &WeightLoader, inner: usize, pooled_dim: usize, guidance: bool) -> Result<Self> {
        let p = "time_text_embed";
        Ok(Self {
            timestep_embedder: MlpEmbedder::load(
                w,
                &format!("{p}.timestep_embedder"),
                TIME_PROJ_DIM,
                inner,
            )?,
            guidance_embedder: if guidance {
                Some(MlpEmbedder::load(
                    w,
                    &format!("{p}.guidance_embedder"),
                    TIME_PROJ_DIM,
                    inner,
                )?)
            } else {
                None
            },
            text_embedder: MlpEmbedder::load(w, &format!("{p}.text_embedder"), pooled_dim, inner)?,
        })
    }

    /// `timestep` and `guidance` are already multiplied by 1000 (as the diffusers forward does).
    ///
    /// # Shapes
    /// `timestep: [B]`, `guidance: [B]`, `pooled: [B, P]` → `[B, inner]`
    pub fn forward(
        &self,
        timestep: &[f32],
        guidance: Option<&[f32]>,
        pooled: Tensor<2>,
    ) -> Tensor<2> {
        let device = pooled.device();
        let dtype: burn::tensor::FloatDType = pooled.dtype().into();
        let t = timestep_embedding(timestep, TIME_PROJ_DIM, true, 0.0, &device).cast(dtype);
        let mut emb = self.timestep_embedder.forward(t);
        if let (Some(g_emb), Some(g)) = (&self.guidance_embedder, guidance) {
            let g = timestep_embedding(g, TIME_PROJ_DIM, true, 0.0, &device).cast(dtype);
            emb = emb + g_emb.forward(g);
        }
        emb + self.text_embedder.forward(pooled)
    }
}
