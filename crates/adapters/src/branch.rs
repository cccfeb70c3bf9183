//! One adapter on one weight ([`Branch`]) and the reparameterization that sums the branches
//! attached to a weight ([`Adapters`]).
//!
//! - LoRA (PEFT `LoraLayer`): `ΔW = scale · B·A` with `A = down [r, d_in]`, `B = up [d_out, r]`,
//!   `scale = lora_alpha / r` (or `/ √r` with rsLoRA).
//! - T-LoRA, vanilla (`LoRALinearLayer` with `sigma_mask`): `ΔW_t = B·diag(m_t)·A`.
//! - T-LoRA, orthogonal (`OrthogonalLoRALinearLayer`): `ΔW_t = P·diag(λ⊙m_t)·Q −
//!   P0·diag(λ0⊙m_t)·Q0` with `Q = down`, `P = up`, `λ` trainable and `P0, Q0, λ0` frozen
//!   copies of the initial values, so `ΔW_t = 0` at initialisation for every `t`.
//!
//! Masking in rank space between the two projections equals the reference's activation-space
//! `P((Q x) ⊙ λ ⊙ m_t)`; here it is composed into the weight (Burn reparameterization), which
//! is exact and lets sampling precompute nothing per layer beyond one `[d_in, d_out]` sum.

use burn::module::{Module, Param, Reparameterization};
use burn::tensor::Tensor;

/// Frozen copies of the initial orthogonal factors (never trained, never exported as weights).
#[derive(Module, Debug)]
pub struct Frozen {
    pub up: Param<Tensor<2>>,
    pub down: Param<Tensor<2>>,
    pub lambda: Param<Tensor<1>>,
}

/// One low-rank adapter on one 2-D weight.
#[derive(Module, Debug)]
pub struct Branch {
    /// `[r, d_in]` — PEFT `lora_A.weight`, T-LoRA `q_layer.weight`.
    pub down: Param<Tensor<2>>,
    /// `[d_out, r]` — PEFT `lora_B.weight`, T-LoRA `p_layer.weight`.
    pub up: Param<Tensor<2>>,
    /// Orthogonal T-LoRA: the trainable singular values `λ` `[r]`.
    pub lambda: Option<Param<Tensor<1>>>,
    /// Orthogonal T-LoRA: `P0, Q0, λ0`.
    pub frozen: Option<Frozen>,
    /// The rank mask `[r]` (all ones unless a T-LoRA step set it; see [`crate::at_step`]).
    /// Not trainable.
    pub mask: Param<Tensor<1>>,
    /// Output scale (`lora_alpha / r` for LoRA, 1 for T-LoRA, times the user's strength).
    pub scale: f64,
}

impl Branch {
    /// The adapter's rank `r`.
    pub fn rank(&self) -> usize {
        self.down.val().dims()[0]
    }

    /// `ΔWᵀ` in Burn's `[d_in, d_out]` weight layout at the current mask.
    ///
    /// # Shapes
    /// → `[d_in, d_out]`
    pub fn delta(&self) -> Tensor<2> {
        let m = self.mask.val();
        let w = match &self.lambda {
            Some(l) => l.val() * m.clone(),
            None => m.clone(),
        };
        let r = w.dims()[0];
        let mut d =
            (self.down.val().transpose() * w.reshape([1, r])).matmul(self.up.val().transpose());
        if let Some(f) = &self.frozen {
            let w0 = f.lambda.val() * m;
            d = d - (f.down.val().transpose() * w0.reshape([1, r])).matmul(f.up.val().transpose());
        }
        d * self.scale
    }
}

/// The adapters attached to one weight: `W_eff = W + Σ ΔW_i`. Slot `i` is adapter `i` of the
/// attach call (`None` where that adapter does not touch this weight), so per-adapter state
/// (a T-LoRA schedule) is addressed by the same index on every weight.
#[derive(Module, Debug)]
pub struct Adapters {
    pub branches: Vec<Option<Branch>>,
}

impl Reparameterization for Adapters {
    const NAME: &'static str = "adapters";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        if D != 2 {
            return base;
        }
        let mut active = self.branches.iter().flatten();
        let Some(first) = active.next() else {
            return base;
        };
        let shape = base.shape();
        let sum = active.fold(first.delta(), |acc, b| acc + b.delta());
        base + sum.reshape(shape)
    }
}
