//! FLUX axial rotary position embedding: diffusers `FluxPosEmbed` (θ = 10000; per axis
//! `get_1d_rotary_pos_embed(..., repeat_interleave_real=True, use_real=True)` in f64, cast to
//! f32) and `apply_rotary_emb(use_real_unbind_dim=-1)`, which rotates adjacent element pairs.

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

/// cos / sin tables for a sequence of position ids.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[1, 1, S, D]`
    pub cos: Tensor<4>,
    /// `[1, 1, S, D]`
    pub sin: Tensor<4>,
    /// `sin` per adjacent pair, signed for the swapped pair: `(−sin, +sin)`, `[1, 1, S, D/2, 2]`.
    sin_pairs: Tensor<5>,
}

/// Builds the tables from `ids` (`[S, n_axes]`, row-major, as floats) and the axis dims.
pub fn flux_rope(
    ids: &[f32],
    n_axes: usize,
    axes_dim: &[usize],
    theta: f64,
    device: &Device,
) -> Rope {
    assert_eq!(axes_dim.len(), n_axes, "one RoPE dim per id axis");
    let s = ids.len() / n_axes;
    let d: usize = axes_dim.iter().sum();
    let mut cos = vec![0f32; s * d];
    let mut sin = vec![0f32; s * d];
    for row in 0..s {
        let mut off = 0;
        for (axis, &ad) in axes_dim.iter().enumerate() {
            let pos = ids[row * n_axes + axis] as f64;
            for j in 0..ad / 2 {
                let freq = 1.0 / theta.powf((2 * j) as f64 / ad as f64);
                let a = pos * freq;
                let (c, sn) = (a.cos() as f32, a.sin() as f32);
                cos[row * d + off + 2 * j] = c;
                cos[row * d + off + 2 * j + 1] = c;
                sin[row * d + off + 2 * j] = sn;
                sin[row * d + off + 2 * j + 1] = sn;
            }
            off += ad;
        }
    }
    let signed: Vec<f32> = sin
        .iter()
        .enumerate()
        .map(|(i, &v)| if i % 2 == 0 { -v } else { v })
        .collect();
    Rope {
        cos: Tensor::from_data(TensorData::new(cos, [1, 1, s, d]), device),
        sin: Tensor::from_data(TensorData::new(sin, [1, 1, s, d]), device),
        sin_pairs: Tensor::from_data(TensorData::new(signed, [1, 1, s, d / 2, 2]), device),
    }
}

impl Rope {
    /// The tables in `dtype` (a no-op when they already are): a model computing in half
    /// precision rotates its queries and keys with tables of the same dtype.
    pub fn cast(&self, dtype: FloatDType) -> Rope {
        Rope {
            cos: self.cos.clone().cast(dtype),
            sin: self.sin.clone().cast(dtype),
            sin_pairs: self.sin_pairs.clone().cast(dtype),
        }
    }

    /// The tables of the sequence positions `positions` only (the attention-sharing hook gives
    /// reference tokens the RoPE of their destination positions).
    ///
    /// # Shapes
    /// `positions: [n]` → tables over `n` positions
    pub fn select(&self, positions: Tensor<1, Int>) -> Rope {
        Rope {
            cos: self.cos.clone().select(2, positions.clone()),
            sin: self.sin.clone().select(2, positions.clone()),
            sin_pairs: self.sin_pairs.clone().select(2, positions),
        }
    }

    /// `x·cos + rot(x)·sin` with `rot` pairing adjacent elements as `(−x_odd, x_even)`.
    ///
    /// # Shapes
    /// `x: [B, H, S, D]` → `[B, H, S, D]`
    ///
    /// The pair swap is a flip of the last axis of `[.., D/2, 2]` (a stride change, no copy)
    /// and its sign lives in `sin_pairs`: two multiplies and an add, no slicing or concatenation
    /// (whose backward passes cost ~4% of a nano training step).
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let swapped = x.clone().reshape([b, h, s, d / 2, 2]).flip([4]);
        let rotated = (swapped * self.sin_pairs.clone()).reshape([b, h, s, d]);
        x * self.cos.clone() + rotated
    }
}
