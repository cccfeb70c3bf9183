//! Small building blocks shared by the model families, each matching its PyTorch / diffusers
//! counterpart numerically: affine-free LayerNorm, RMSNorm, sinusoidal timestep embeddings,
//! multi-head SDPA on `[B, S, H·D]` tensors, the tanh-approximated GELU.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};

use dreamforge_core::{Result, WeightLoader};

/// `linear.forward(x)` with the leading dims folded into rows, so the product is ONE
/// `[rows, d_in] @ [d_in, d_out]` GEMM. Burn's linear keeps a batch whose row count is a
/// multiple of 32 (e.g. 64 image tokens) as a batched matmul that runs one small GEMM per
/// batch element against the shared weight; folded, the backward's `dx` is one GEMM too.
///
/// # Shapes
/// `[..., d_in]` → `[..., d_out]`
pub fn linear_rows<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    if D <= 2 {
        return linear.forward(x);
    }
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = linear.forward(x.reshape([rows, d_in]));
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// `nn.LayerNorm(d, elementwise_affine=False, eps)` over the last dim.
///
/// # Shapes
/// `[..., d]` → `[..., d]`
pub fn layer_norm_plain<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let mean = x.clone().mean_dim(D - 1);
    let xc = x - mean;
    let var = xc.clone().square().mean_dim(D - 1);
    xc / (var + eps).sqrt()
}

/// `F.gelu(x, approximate="tanh")` = `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, computed
/// through the identity `0.5·(1 + tanh(u)) = sigmoid(2u)` as `x · sigmoid(x·(a + b·x²))` with
/// `a = 2√(2/π)`, `b = 0.044715·a`. Same function (differences at f32 rounding level), but
/// one fused sigmoid (forward and backward) instead of `powf` + `tanh`, which CPU backends
/// evaluate per element through libm: measured on the nano training step, Burn's
/// `gelu_approximate` took about 20% of the time.
///
/// # Shapes
/// any → same
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const A: f64 = 2.0 * core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
    const B: f64 = 0.044715 * A;
    let u = x.clone() * (x.clone().square() * B + A);
    x * burn::tensor::activation::sigmoid(u)
}

/// diffusers / T5 `RMSNorm` with a learned scale: `x · rsqrt(mean(x²) + eps) · weight`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(w: &WeightLoader, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.param(&format!("{prefix}.weight"), [dim])?,
            eps,
        })
    }

    /// # Shapes
    /// `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let var = x.clone().square().mean_dim(D - 1);
        let dim = self.weight.dims()[0];
        let mut shape = [1usize; D];
        shape[D - 1] = dim;
        x * (var + self.eps).sqrt().recip() * self.weight.val().reshape(shape)
    }
}

/// diffusers `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift, scale=1,
/// max_period=10000)`: computed on the host in f32 exactly as PyTorch orders the operations.
///
/// # Shapes
/// `t: [B]` → `[B, dim]`
pub fn timestep_embedding(
    t: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = -(10000f32.ln()) * i as f32 / (half as f32 - downscale_freq_shift);
            exponent.exp()
        })
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &tv in t {
        let args: Vec<f32> = freqs.iter().map(|f| tv * f).collect();
        let (first, second): (Vec<f32>, Vec<f32>) = if flip_sin_to_cos {
            (
                args.iter().map(|a| a.cos()).collect(),
                args.iter().map(|a| a.sin()).collect(),
            )
        } else {
            (
                args.iter().map(|a| a.sin()).collect(),
                args.iter().map(|a| a.cos()).collect(),
            )
        };
        out.extend(first);
        out.extend(second);
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(out, [t.len(), dim]), device)
}

/// Scaled dot-product attention over heads.
///
/// # Shapes
/// `q, k, v: [B, H, S, D]` → `[B, S, H·D]`
pub fn sdpa_merge_heads(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
    let [b, h, s, d] = q.dims();
    let o = attention(q, k, v, None, None, AttentionModuleOptions::default());
    o.swap_dims(1, 2).reshape([b, s, h * d])
}

/// Splits the last dim into heads.
///
/// # Shapes
/// `[B, S, H·D]` → `[B, H, S, D]`
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, s, hd] = x.dims();
    x.reshape([b, s, heads, hd / heads]).swap_dims(1, 2)
}

/// PyTorch `F.interpolate(x, size, mode="nearest")`: source index `floor(dst · in / out)`
/// (computed in f32, as PyTorch does). Integer up-scales go through Burn's nearest kernel; other
/// ratios (a UNet meeting a skip of odd size) gather rows and columns explicitly, because
/// backends differ in how they round non-integer nearest scales.
///
/// # Shapes
/// `[B, C, H, W]` → `[B, C, size[0], size[1]]`
pub fn nearest_resize(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    let [_, _, h, w] = x.dims();
    let [oh, ow] = size;
    if (oh, ow) == (h, w) {
        return x;
    }
    if oh.is_multiple_of(h) && ow.is_multiple_of(w) {
        return interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
    }
    let device = x.device();
    let index = |n_in: usize, n_out: usize| -> Tensor<1, burn::tensor::Int> {
        let scale = n_in as f32 / n_out as f32;
        let idx: Vec<i64> = (0..n_out)
            .map(|d| ((d as f32 * scale).floor() as i64).min(n_in as i64 - 1))
            .collect();
        Tensor::from_data(TensorData::new(idx, [n_out]), &device)
    };
    x.select(2, index(h, oh)).select(3, index(w, ow))
}

#[cfg(test)]
mod nearest_tests {
    use super::*;

    #[test]
    fn nearest_resize_matches_pytorch_indexing() {
        let device = Device::default();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..6).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 2, 3]),
            &device,
        );
        // torch.nn.functional.interpolate(x, size=(3, 5)): rows [0, 0, 1], cols [0, 0, 1, 1, 2]
        let y: Vec<f32> = nearest_resize(x.clone(), [3, 5])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(
            y,
            vec![
                0.0, 0.0, 1.0, 1.0, 2.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0
            ]
        );
        let y2: Vec<f32> = nearest_resize(x, [4, 6])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(&y2[..6], &[0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
    }
}

#[cfg(test)]
mod gelu_tests {
    use super::*;

    /// The sigmoid form against the tanh definition (f64), values and gradients, over the
    /// range where GELU bends and into both tails.
    #[test]
    fn gelu_tanh_matches_the_tanh_definition() {
        let xs: Vec<f64> = (-120..=120).map(|i| i as f64 * 0.1).collect();
        let reference = |x: f64| {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
        };
        let device = Device::flex().autodiff();
        let x = Tensor::<1>::from_data(
            TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [xs.len()]),
            &device,
        )
        .require_grad();
        let y = gelu_tanh(x.clone());
        let grads = y.clone().sum().backward();
        let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
        for (i, &v) in xs.iter().enumerate() {
            let want = reference(v);
            assert!(
                (y[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({v}) = {} vs {want}",
                y[i]
            );
            let h = 1e-5;
            let dwant = (reference(v + h) - reference(v - h)) / (2.0 * h);
            assert!(
                (gx[i] as f64 - dwant).abs() <= 1e-5,
                "gelu'({v}) = {} vs {dwant}",
                gx[i]
            );
        }
    }
}
