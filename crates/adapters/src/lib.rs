//! dreamforge-adapters: low-rank adapters — LoRA (PEFT semantics) and T-LoRA
//! (ControlGenAI/T-LoRA, arXiv 2507.05964: a timestep-dependent rank mask, optionally over an
//! orthogonal parametrization) — attached to any model as **passes over parameter paths**,
//! never edits of model code (shared/design/ARCHITECTURE.md, principle 4).
//!
//! Mechanism: Burn's parameter reparameterization. An adapted 2-D weight keeps its frozen base
//! and gains an [`Adapters`] reparameterization holding one [`Branch`] per attached adapter;
//! every read of the weight (`Param::val`, which `Linear::forward` uses) materializes
//! `W + Σ ΔW_i`. The per-step state — the T-LoRA rank mask — travels explicitly: a sampler or
//! trainer calls [`at_step`] with the step's timestep before the forward, a pass that rewrites
//! the masks only. Stacking several adapters is several branches on one weight; the base model
//! stays untouched (attach to a clone to swap adapters without reloading).
//!
//! Layouts follow PEFT: `down` is `lora_A.weight` `[r, d_in]`, `up` is `lora_B.weight`
//! `[d_out, r]`; Burn's `Linear` stores `W` as `[d_in, d_out]`, so `ΔW_burn = ΔWᵀ`.

pub mod attach;
pub mod branch;
pub mod file;
pub mod ortho;
pub mod rank;
pub mod step;

pub use attach::{AdapterInit, AdapterKind, attach};
pub use branch::{Adapters, Branch, Frozen};
pub use file::{
    AdapterFile, FileAdapter, Format, LayerWeights, META_KEY, attach_files, branch_weights, collect,
};
pub use rank::RankSchedule;
pub use step::at_step;

#[cfg(test)]
mod tests;
