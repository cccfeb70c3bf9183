//! transformers `CLIPTextEmbeddings`: token embedding lookup plus learned absolute position
//! embeddings for positions `0..T`.

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor};

use dreamforge_core::{Result, WeightLoader};

#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    /// `[vocab_size, hidden]`
    pub token_embedding: Param<Tensor<2>>,
    /// `[max_position_embeddings, hidden]`
    pub position_embedding: Param<Tensor<2>>,
}

impl ClipTextEmbeddings {
    /// `prefix` is the `embeddings` module path (e.g. `text_model.embeddings`).
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        vocab: usize,
        max_pos: usize,
        dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            token_embedding: w.param(&format!("{prefix}.token_embedding.weight"), [vocab, dim])?,
            position_embedding: w.param(
                &format!("{prefix}.position_embedding.weight"),
                [max_pos, dim],
            )?,
        })
    }

    /// Ids must already be checked to lie in `0..vocab_size` and `T <= max_position_embeddings`.
    ///
    /// # Shapes
    /// `input_ids: [B, T]` → `[B, T, hidden]`
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let dim = self.token_embedding.dims()[1];
        let tok = self
            .token_embedding
            .val()
            .select(0, input_ids.reshape([b * t]))
            .reshape([b, t, dim]);
        let pos = self
            .position_embedding
            .val()
            .slice([0..t, 0..dim])
            .unsqueeze::<3>();
        tok + pos
    }
}
