//! The token-replacement hook of the FLUX transformer (Personalize Anything,
//! `fenghora/personalize-anything:src/attn_processor.py`, `PersonalizeAnythingAttnProcessor` and
//! its multi-subject variant): in every double and single block, the attention *input* of one
//! batch row (the post-AdaLN image tokens) has its tokens at chosen positions replaced by
//! another row's tokens, before Q / K / V. The residual stream and the single blocks' MLP branch
//! keep the unmodified tokens, as in the reference. The destination positions keep their own
//! RoPE (the receiving row's position ids), which is how a shift moves a subject.
//!
//! This is the one hook point the transformer has; the context is passed per call
//! ([`super::FluxTransformer::forward_personalized`]), never stored in the model.

use std::sync::{Arc, Mutex};

use burn::tensor::{Int, Tensor, TensorData};
use dreamforge_core::{HostTensor, to_host};

use super::rope::Rope;
use crate::layers::sdpa_merge_heads;

/// Every `(input, output)` of [`TokenReplace::apply`] in call order (image tokens only), for
/// tests that look inside the transformer.
pub type ReplaceProbe = Arc<Mutex<Vec<(HostTensor, HostTensor)>>>;

/// One source row's contribution.
#[derive(Debug, Clone)]
pub struct ReplaceSource {
    /// The batch row the tokens come from.
    pub row: usize,
    /// For every image token of the receiving row, the source token index (any value where
    /// `mask` is 0), `[L]`.
    pub index: Tensor<1, Int>,
    /// 1 at the receiving row's replaced positions, else 0, `[1, L, 1]`.
    pub mask: Tensor<3>,
    /// The pairs' source and destination image-token indices, `[n]` each.
    pub src: Tensor<1, Int>,
    pub dst: Tensor<1, Int>,
}

/// Which row receives which tokens from where.
#[derive(Debug, Clone)]
pub struct TokenReplace {
    /// The receiving batch row (the generation).
    pub target: usize,
    pub sources: Vec<ReplaceSource>,
    /// 1 − Σ masks, `[1, L, 1]`.
    keep: Tensor<3>,
    probe: Option<ReplaceProbe>,
}

impl TokenReplace {
    /// `pairs[i]` lists `(source token, destination token)` pairs taken from row
    /// `rows[i]`; destinations of different sources must not overlap (checked by the caller
    /// that builds layouts; an overlap would add two tokens).
    pub fn new(
        target: usize,
        rows: &[usize],
        pairs: &[Vec<(usize, usize)>],
        tokens: usize,
        device: &burn::tensor::Device,
    ) -> Self {
        let mut keep = vec![1f32; tokens];
        let sources = rows
            .iter()
            .zip(pairs)
            .map(|(&row, pairs)| {
                let mut index = vec![0i64; tokens];
                let mut mask = vec![0f32; tokens];
                for &(src, dst) in pairs {
                    index[dst] = src as i64;
                    mask[dst] = 1.0;
                    keep[dst] = 0.0;
                }
                let list = |f: fn(&(usize, usize)) -> usize| {
                    let v: Vec<i64> = pairs.iter().map(|p| f(p) as i64).collect();
                    let n = v.len();
                    Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
                };
                ReplaceSource {
                    row,
                    index: Tensor::from_data(TensorData::new(index, [tokens]), device),
                    mask: Tensor::from_data(TensorData::new(mask, [1, tokens, 1]), device),
                    src: list(|p| p.0),
                    dst: list(|p| p.1),
                }
            })
            .collect();
        Self {
            target,
            sources,
            keep: Tensor::from_data(TensorData::new(keep, [1, tokens, 1]), device),
            probe: None,
        }
    }

    /// Records every application in `probe` (tests).
    pub fn with_probe(mut self, probe: ReplaceProbe) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Image tokens `x` with the target row's masked tokens replaced: exactly the source
    /// tokens there (`0·x + 1·s + Σ 0·others`), exactly `x` elsewhere.
    ///
    /// # Shapes
    /// `x`: `[B, L, D]` → `[B, L, D]`
    pub fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let row = |r: usize| x.clone().slice([r..r + 1, 0..l, 0..d]);
        let mut out = row(self.target) * self.keep.clone();
        for s in &self.sources {
            out = out + row(s.row).select(1, s.index.clone()) * s.mask.clone();
        }
        let mut rows = Vec::with_capacity(b);
        for r in 0..b {
            rows.push(if r == self.target {
                out.clone()
            } else {
                row(r)
            });
        }
        let y = Tensor::cat(rows, 0);
        if let Some(p) = &self.probe {
            p.lock()
                .expect("probe lock")
                .push((to_host(x), to_host(y.clone())));
        }
        y
    }

    /// Attention of the whole batch in which the target row also attends to every source's
    /// paired tokens: their keys and values from the source row at the source positions, the
    /// keys rotated with the RoPE of the destination positions (attention sharing: the paper's
    /// late-stage "multi-modal attention" with the reference, the released code's
    /// `concept_process`). `offset` = text tokens before the image tokens in the sequence.
    ///
    /// # Shapes
    /// `q, k, v: [B, H, S, Dh]` before RoPE → `[B, S, H·Dh]`
    pub fn shared_attention(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        rope: &Rope,
        offset: usize,
    ) -> Tensor<3> {
        let [b, h, s, dh] = q.dims();
        let row = |t: &Tensor<4>, r: usize| t.clone().slice([r..r + 1, 0..h, 0..s, 0..dh]);
        let (qg, kg, vg) = (
            row(&q, self.target),
            row(&k, self.target),
            row(&v, self.target),
        );
        let all = sdpa_merge_heads(rope.apply(q), rope.apply(k.clone()), v.clone());
        let mut ks = vec![rope.apply(kg)];
        let mut vs = vec![vg];
        for src in self.sources.iter().filter(|x| x.src.dims()[0] > 0) {
            let at = |i: &Tensor<1, Int>| i.clone() + offset as i64;
            ks.push(
                rope.select(at(&src.dst))
                    .apply(row(&k, src.row).select(2, at(&src.src))),
            );
            vs.push(row(&v, src.row).select(2, at(&src.src)));
        }
        let target = sdpa_merge_heads(rope.apply(qg), Tensor::cat(ks, 2), Tensor::cat(vs, 2));
        let d = h * dh;
        let mut rows = Vec::with_capacity(b);
        for r in 0..b {
            rows.push(if r == self.target {
                target.clone()
            } else {
                all.clone().slice([r..r + 1, 0..s, 0..d])
            });
        }
        Tensor::cat(rows, 0)
    }

    /// As [`Self::apply`] on the image part of a `[text; image]` sequence: the image tokens
    /// start at `offset` (the actual text length, never an assumed 512).
    ///
    /// # Shapes
    /// `x`: `[B, offset + L, D]` → same
    pub fn apply_offset(&self, x: Tensor<3>, offset: usize) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let txt = x.clone().slice([0..b, 0..offset, 0..d]);
        let img = x.slice([0..b, offset..s, 0..d]);
        Tensor::cat(vec![txt, self.apply(img)], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamforge_core::test_device;

    #[test]
    fn replaced_tokens_are_exactly_the_source_tokens() {
        let dev = test_device();
        let (b, l, d) = (3, 12, 5);
        let data: Vec<f32> = (0..b * l * d)
            .map(|i| ((i * 37 % 101) as f32).sin() * 3.0)
            .collect();
        let x = Tensor::<3>::from_data(TensorData::new(data.clone(), [b, l, d]), &dev);
        // Row 2 receives from rows 0 (tokens 1, 2 → 5, 6) and 1 (token 0 → 11).
        let r = TokenReplace::new(2, &[0, 1], &[vec![(1, 5), (2, 6)], vec![(0, 11)]], l, &dev);
        let y: Vec<f32> = r.apply(x).into_data().try_to_vec::<f32>().unwrap();
        let at = |v: &[f32], row: usize, tok: usize| {
            v[(row * l + tok) * d..(row * l + tok + 1) * d].to_vec()
        };
        for tok in 0..l {
            let want = match tok {
                5 => at(&data, 0, 1),
                6 => at(&data, 0, 2),
                11 => at(&data, 1, 0),
                _ => at(&data, 2, tok),
            };
            let got = at(&y, 2, tok);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "token {tok}: {got:?} vs {want:?}"
            );
        }
        // Other rows untouched, bit for bit.
        assert!(
            y[..2 * l * d]
                .iter()
                .zip(&data)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // With a text prefix: text untouched, image part as above.
        let t = 4;
        let xt: Vec<f32> = (0..b * (t + l) * d)
            .map(|i| (i as f32 * 0.37).cos())
            .collect();
        let xs = Tensor::<3>::from_data(TensorData::new(xt.clone(), [b, t + l, d]), &dev);
        let ys: Vec<f32> = r
            .apply_offset(xs, t)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let s = |v: &[f32], row: usize, tok: usize| {
            v[(row * (t + l) + tok) * d..(row * (t + l) + tok + 1) * d].to_vec()
        };
        assert_eq!(s(&ys, 2, 2), s(&xt, 2, 2));
        assert_eq!(s(&ys, 2, t + 5), s(&xt, 0, t + 1));
        assert_eq!(s(&ys, 2, t + 11), s(&xt, 1, t));
        assert_eq!(s(&ys, 2, t + 3), s(&xt, 2, t + 3));
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;
    use crate::dit::flux::rope::flux_rope;
    use dreamforge_core::test_device;

    /// Sharing changes the target row only; without pairs it is plain attention.
    #[test]
    fn shared_attention_touches_the_target_row_only() {
        let dev = test_device();
        let (b, h, t, l, dh) = (2, 2, 3, 4, 8);
        let s = t + l;
        let qkv = |k: f32| {
            let v: Vec<f32> = (0..b * h * s * dh).map(|i| (i as f32 * k).sin()).collect();
            Tensor::<4>::from_data(TensorData::new(v, [b, h, s, dh]), &dev)
        };
        let (q, k, v) = (qkv(0.31), qkv(0.17), qkv(0.53));
        let mut ids = vec![0.0; t * 3];
        for i in 0..2 {
            for j in 0..2 {
                ids.extend([0.0, i as f32, j as f32]);
            }
        }
        let rope = flux_rope(&ids, 3, &[2, 2, 4], 10000.0, &dev);
        let plain: Vec<f32> =
            sdpa_merge_heads(rope.apply(q.clone()), rope.apply(k.clone()), v.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
        let run = |pairs: Vec<(usize, usize)>| -> Vec<f32> {
            TokenReplace::new(1, &[0], &[pairs], l, &dev)
                .shared_attention(q.clone(), k.clone(), v.clone(), &rope, t)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6);
        let half = s * h * dh;
        assert!(close(&run(vec![]), &plain));
        let shared = run(vec![(0, 3), (1, 2)]);
        assert!(
            close(&shared[..half], &plain[..half]),
            "the reference row changed"
        );
        assert!(
            !close(&shared[half..], &plain[half..]),
            "the target row did not change"
        );
    }
}
