//! FLUX attention (diffusers `FluxAttention` + `FluxAttnProcessor`): per-head RMSNorm on q and
//! k, text tokens first in the joint sequence, RoPE on q and k, SDPA.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

use dreamforge_core::{Result, WeightLoader};

use super::replace::TokenReplace;
use super::rope::Rope;
use crate::layers::{RmsNorm, linear_rows, sdpa_merge_heads, split_heads};

const QK_NORM_EPS: f64 = 1e-6;

/// q/k/v projections of one stream with their q/k norms.
#[derive(Module, Debug)]
pub struct QkvProj {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub norm_q: RmsNorm,
    pub norm_k: RmsNorm,
    pub heads: usize,
}

impl QkvProj {
    /// `names` = (q, k, v, norm_q, norm_k) under `prefix`.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        names: [&str; 5],
        dim: usize,
        heads: usize,
    ) -> Result<Self> {
        let head_dim = dim / heads;
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            q: w.linear(&p(names[0]), dim, dim, true)?,
            k: w.linear(&p(names[1]), dim, dim, true)?,
            v: w.linear(&p(names[2]), dim, dim, true)?,
            norm_q: RmsNorm::load(w, &p(names[3]), head_dim, QK_NORM_EPS)?,
            norm_k: RmsNorm::load(w, &p(names[4]), head_dim, QK_NORM_EPS)?,
            heads,
        })
    }

    /// # Shapes
    /// `x: [B, S, dim]` → q, k, v each `[B, H, S, D]` (q and k normed)
    pub fn forward(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let q = self
            .norm_q
            .forward(split_heads(linear_rows(&self.q, x.clone()), self.heads));
        let k = self
            .norm_k
            .forward(split_heads(linear_rows(&self.k, x.clone()), self.heads));
        let v = split_heads(linear_rows(&self.v, x), self.heads);
        (q, k, v)
    }
}

/// Joint attention of the double block: text (`add_*`) and image (`to_*`) streams.
#[derive(Module, Debug)]
pub struct JointAttention {
    pub img: QkvProj,
    pub txt: QkvProj,
    pub to_out: Linear,
    pub to_add_out: Linear,
}

impl JointAttention {
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            img: QkvProj::load(
                w,
                prefix,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                dim,
                heads,
            )?,
            txt: QkvProj::load(
                w,
                prefix,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
                dim,
                heads,
            )?,
            to_out: w.linear(&format!("{prefix}.to_out.0"), dim, dim, true)?,
            to_add_out: w.linear(&format!("{prefix}.to_add_out"), dim, dim, true)?,
        })
    }

    /// # Shapes
    /// `img: [B, L, dim]`, `txt: [B, T, dim]`, rope over `T + L` → (`[B, L, dim]`, `[B, T, dim]`)
    pub fn forward(&self, img: Tensor<3>, txt: Tensor<3>, rope: &Rope) -> (Tensor<3>, Tensor<3>) {
        self.forward_shared(img, txt, rope, None)
    }

    /// [`Self::forward`] with optional attention sharing (see
    /// [`TokenReplace::shared_attention`]).
    pub fn forward_shared(
        &self,
        img: Tensor<3>,
        txt: Tensor<3>,
        rope: &Rope,
        share: Option<&TokenReplace>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [b, t, dim] = txt.dims();
        let l = img.dims()[1];
        let (qi, ki, vi) = self.img.forward(img);
        let (qt, kt, vt) = self.txt.forward(txt);
        let q = Tensor::cat(vec![qt, qi], 2);
        let k = Tensor::cat(vec![kt, ki], 2);
        let v = Tensor::cat(vec![vt, vi], 2);
        let o = match share {
            Some(r) => r.shared_attention(q, k, v, rope, t),
            None => sdpa_merge_heads(rope.apply(q), rope.apply(k), v),
        };
        let txt_o = o.clone().slice([0..b, 0..t, 0..dim]);
        let img_o = o.slice([0..b, t..t + l, 0..dim]);
        (
            linear_rows(&self.to_out, img_o),
            linear_rows(&self.to_add_out, txt_o),
        )
    }
}
