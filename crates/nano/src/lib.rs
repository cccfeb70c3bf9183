//! dreamforge-nano: the nano world (shared/design/NANO.md) — procedurally rendered scenes of
//! simple shapes with exact captions, deterministic from a seed so data never needs storing;
//! the caption grammar, its vocabulary and parser (prompts → attributes for the judge and for
//! warning about words outside the world); and the held-out split of attribute combinations
//! used to measure prompt fidelity on prompts the model never saw; the judge; the nano model
//! (FLUX-architecture transformer + CLIP-architecture text encoder on folded pixels) and its
//! pretraining.

pub mod caption;
pub mod judge;
pub mod judge_train;
pub mod metrics;
pub mod model;
pub mod pretrain;
pub mod render;
pub mod scene;
pub mod subject;

pub use caption::{ParseError, caption, complete_prompt, parse, vocabulary};
pub use render::render;
pub use scene::{Colour, Obj, Position, Scene, Shape, Size, held_out, sample_scene};
