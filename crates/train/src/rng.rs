//! Resumable random streams. The trainer keeps separate ChaCha8 streams for data order and for
//! noise / timesteps, so changing one (e.g. the batch composition) does not shift the other;
//! each is saved in a checkpoint as (seed, word position) and restored exactly.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A ChaCha8 stream's restorable position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    /// Word position in the stream (u128 in ChaCha; stored as a decimal string in JSON).
    #[serde(with = "u128_string")]
    pub word_pos: u128,
}

impl RngState {
    pub fn of(seed: u64, rng: &ChaCha8Rng) -> Self {
        Self {
            seed,
            word_pos: rng.get_word_pos(),
        }
    }

    /// The stream at the saved position.
    pub fn restore(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn a_restored_stream_continues_where_it_was_saved() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let _: Vec<u32> = (0..1001).map(|_| rng.random()).collect();
        let saved = RngState::of(42, &rng);
        let json = serde_json::to_string(&saved).unwrap();
        let back: RngState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);
        let mut restored = back.restore();
        let a: Vec<u64> = (0..50).map(|_| rng.random()).collect();
        let b: Vec<u64> = (0..50).map(|_| restored.random()).collect();
        assert_eq!(a, b);
    }
}
