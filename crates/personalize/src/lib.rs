//! Training-free personalization by token replacement (Personalize Anything,
//! `fenghora/personalize-anything`, arXiv 2503.12590), the part that is not tensors: which
//! reference tokens go to which generation tokens.
//!
//! A reference's mask is brought to the token grid ([`mask::TokenMask`]: nearest resize as the
//! reference's `create_mask`, or the whole image, or a simple foreground estimate), optionally
//! eroded or dilated, moved by a shift in tokens (the reference moves horizontally; here both
//! axes, validated to stay on the canvas), and turned into `(source, destination)` token pairs
//! ([`layout::Placement`]); several subjects must not overlap. Patch perturbation
//! ([`perturb`]) shuffles sources locally inside the mask, seeded (the paper's diversity aid;
//! absent from the released code, so its parameters are ours and exposed). The transformer hook
//! that applies the pairs is `dreamforge_models::dit::flux::TokenReplace`.

pub mod layout;
pub mod mask;
pub mod perturb;

pub use layout::{Placement, Shift, place_all};
pub use mask::TokenMask;
