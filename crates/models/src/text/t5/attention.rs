//! T5 self-attention (transformers `T5Attention`, encoder side): bias-free q/k/v/o projections,
//! NO `1/sqrt(d)` scaling of the scores, and a learned relative position bias (bidirectional
//! buckets, `_relative_position_bucket` / `compute_bias`) that only the first layer owns; the
//! stack computes it once and every layer adds it (plus the padding mask) to its scores.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use dreamforge_core::{Result, WeightLoader};

use crate::layers::split_heads;

/// transformers `T5Attention._relative_position_bucket` for one relative position
/// (`memory_position - query_position`), with the logarithmic bins computed in f32 in the same
/// order as the reference so the bin edges agree exactly.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let rp = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        -relative_position.min(0)
    };
    let max_exact = num_buckets / 2;
    if rp < max_exact {
        return (bucket + rp) as usize;
    }
    // torch: log(rp.float() / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact),
    // in f32 with the Python scalars rounded to f32, truncated toward zero.
    let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large =
        ((rp as f32 / max_exact as f32).ln() / log_ratio * (num_buckets - max_exact) as f32) as i64;
    let large = (max_exact + large).min(num_buckets - 1);
    (bucket + large) as usize
}

/// `SelfAttention` of one T5 block.
#[derive(Module, Debug)]
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// `relative_attention_bias.weight` `[num_buckets, heads]`, first block only.
    pub relative_attention_bias: Option<Param<Tensor<2>>>,
    pub heads: usize,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl T5Attention {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        d_model: usize,
        heads: usize,
        d_kv: usize,
        has_relative_attention_bias: bool,
        num_buckets: usize,
        max_distance: usize,
    ) -> Result<Self> {
        let inner = heads * d_kv;
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            q: w.linear(&p("q"), d_model, inner, false)?,
            k: w.linear(&p("k"), d_model, inner, false)?,
            v: w.linear(&p("v"), d_model, inner, false)?,
            o: w.linear(&p("o"), inner, d_model, false)?,
            relative_attention_bias: if has_relative_attention_bias {
                Some(w.param(&p("relative_attention_bias.weight"), [num_buckets, heads])?)
            } else {
                None
            },
            heads,
            num_buckets,
            max_distance,
        })
    }

    /// `compute_bias(q_len, k_len)` of the encoder (bidirectional); `None` when this layer has
    /// no relative attention bias (upstream then uses zeros, which only happens for a stack
    /// whose first layer lacks it).
    ///
    /// # Shapes
    /// → `[1, H, q_len, k_len]`
    pub fn compute_bias(&self, q_len: usize, k_len: usize, device: &Device) -> Option<Tensor<4>> {
        let table = self.relative_attention_bias.as_ref()?.val();
        let buckets: Vec<i64> = (0..q_len)
            .flat_map(|i| {
                (0..k_len).map(move |j| {
                    relative_position_bucket(
                        j as i64 - i as i64,
                        true,
                        self.num_buckets,
                        self.max_distance,
                    ) as i64
                })
            })
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(buckets, [q_len * k_len]), device);
        let values = table.select(0, idx).reshape([q_len, k_len, self.heads]);
        Some(values.permute([2, 0, 1]).unsqueeze_dim::<4>(0))
    }

    /// Attention with the additive `bias` (relative positions + padding mask) on the raw,
    /// unscaled scores `q·kᵀ`.
    ///
    /// # Shapes
    /// `x: [B, T, d_model]`, `bias: [B, H, T, T]` → `[B, T, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let q = split_heads(self.q.forward(x.clone()), self.heads);
        let k = split_heads(self.k.forward(x.clone()), self.heads);
        let v = split_heads(self.v.forward(x), self.heads);
        let scores = q.matmul(k.swap_dims(2, 3)) + bias;
        let o = softmax(scores, 3).matmul(v);
        let [_, h, _, d] = o.dims();
        self.o.forward(o.swap_dims(1, 2).reshape([b, t, h * d]))
    }
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    /// Bucket change points from transformers' `_relative_position_bucket` over -400..=400
    /// (first position of each new bucket, walking upward).
    fn check(num_buckets: usize, max_distance: usize, edges: &[(i64, usize)]) {
        let mut e = 0;
        for rp in -400i64..=400 {
            if e + 1 < edges.len() && rp == edges[e + 1].0 {
                e += 1;
            }
            assert_eq!(
                relative_position_bucket(rp, true, num_buckets, max_distance),
                edges[e].1,
                "rp {rp} (buckets {num_buckets}, max distance {max_distance})"
            );
        }
    }

    #[test]
    fn t5_buckets_match_transformers_32_128() {
        check(
            32,
            128,
            &[
                (-400, 15),
                (-90, 14),
                (-63, 13),
                (-45, 12),
                (-31, 11),
                (-22, 10),
                (-15, 9),
                (-11, 8),
                (-7, 7),
                (-6, 6),
                (-5, 5),
                (-4, 4),
                (-3, 3),
                (-2, 2),
                (-1, 1),
                (0, 0),
                (1, 17),
                (2, 18),
                (3, 19),
                (4, 20),
                (5, 21),
                (6, 22),
                (7, 23),
                (8, 24),
                (12, 25),
                (16, 26),
                (23, 27),
                (32, 28),
                (46, 29),
                (64, 30),
                (91, 31),
            ],
        );
    }

    #[test]
    fn t5_buckets_match_transformers_16_20() {
        check(
            16,
            20,
            &[
                (-400, 7),
                (-13, 6),
                (-8, 5),
                (-5, 4),
                (-3, 3),
                (-2, 2),
                (-1, 1),
                (0, 0),
                (1, 9),
                (2, 10),
                (3, 11),
                (4, 12),
                (6, 13),
                (9, 14),
                (14, 15),
            ],
        );
    }
}
