//! The UNet's conditioning embeddings (diffusers `models/embeddings.py`): the sinusoidal
//! `Timesteps` projection, `TimestepEmbedding` (`linear_1 → SiLU → linear_2`), and SDXL's
//! `text_time` additional embedding (`add_time_proj` of the six size/crop ids, concatenated with
//! the pooled text embedding, through `add_embedding`).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorData};

use dreamforge_core::{Error, Result, WeightLoader};

/// diffusers `TimestepEmbedding(in, out, act_fn="silu")`: `linear_1 → SiLU → linear_2`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// Loads `{prefix}.linear_1` `[d_out, d_in]` and `{prefix}.linear_2` `[d_out, d_out]`.
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

/// The frequencies of diffusers `get_timestep_embedding`, in f32 as PyTorch computes them:
/// `exp(-ln(10000) · i / (half − shift))` for `i < dim / 2`.
fn frequencies(dim: usize, downscale_freq_shift: f32) -> Vec<f32> {
    let half = dim / 2;
    (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / (half as f32 - downscale_freq_shift)).exp())
        .collect()
}

/// diffusers `get_timestep_embedding` of a device tensor (no host round trip): `t · freq`, then
/// `[cos, sin]` (`flip_sin_to_cos`) or `[sin, cos]`, zero-padded to an odd `dim`. Numerically the
/// same as `crate::layers::timestep_embedding` on the host.
///
/// # Shapes
/// `t: [N]` → `[N, dim]`
pub fn timestep_embedding_tensor(
    t: Tensor<1>,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
) -> Tensor<2> {
    let [n] = t.dims();
    let device = t.device();
    let freqs = frequencies(dim, downscale_freq_shift);
    let half = freqs.len();
    let freqs: Tensor<2> = Tensor::from_data(TensorData::new(freqs, [1, half]), &device);
    let args = t.reshape([n, 1]) * freqs;
    let (sin, cos) = (args.clone().sin(), args.cos());
    let mut parts = if flip_sin_to_cos {
        vec![cos, sin]
    } else {
        vec![sin, cos]
    };
    if dim % 2 == 1 {
        parts.push(Tensor::zeros([n, 1], &device));
    }
    Tensor::cat(parts, 1)
}

/// SDXL's `text_time` additional-embedding input (diffusers `UNet2DConditionModel.get_aug_embed`):
/// `cat(text_embeds, flatten(sinusoid(time_ids)))`, which `add_embedding` then projects. Fails
/// (instead of panicking inside a matmul) when the widths do not add up to `expected`, the
/// `projection_class_embeddings_input_dim` the weights were trained with.
///
/// # Shapes
/// `text_embeds: [B, P]`, `time_ids: [B, N]` (N = 6 for the SDXL base, 5 for the refiner) →
/// `[B, P + N · time_dim]`
pub fn text_time_features(
    text_embeds: Tensor<2>,
    time_ids: Tensor<2>,
    time_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    expected: usize,
) -> Result<Tensor<2>> {
    let [b, p] = text_embeds.dims();
    let [bt, n] = time_ids.dims();
    if bt != b || p + n * time_dim != expected {
        return Err(Error::InvalidInput(format!(
            "SDXL added conditioning: text_embeds [{b}, {p}] and time_ids [{bt}, {n}] give {} features for batch {b} (time_ids batch {bt}); the UNet expects {expected} (pooled width + time ids × {time_dim})",
            p + n * time_dim
        )));
    }
    // Sinusoids in f32 whatever the compute dtype (a half-precision `1024 · freq` loses the
    // phase), then cast to the text embeddings' dtype, as diffusers' `get_aug_embed` does.
    let dtype: burn::tensor::FloatDType = text_embeds.dtype().into();
    let time = timestep_embedding_tensor(
        time_ids
            .cast(burn::tensor::FloatDType::F32)
            .reshape([b * n]),
        time_dim,
        flip_sin_to_cos,
        freq_shift,
    )
    .reshape([b, n * time_dim])
    .cast(dtype);
    Ok(Tensor::cat(vec![text_embeds, time], 1))
}
