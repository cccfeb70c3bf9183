//! T-LoRA's timestep-dependent rank (methods.md §1.1): with `p = (T − t)/T` the fraction of the
//! way from pure noise (`t = T`) to the clean image (`t = 0`),
//! `r(t) = ⌊p^α · (R − r_min)⌋ + r_min`; the mask keeps the first `r(t)` rank components.
//! FLUX code uses `t = 1000·σ`, `T = 1000` (so `p = 1 − σ`); the SDXL code uses DDPM timesteps
//! with `T = 1000`.

use serde::{Deserialize, Serialize};

/// The rank schedule of a T-LoRA adapter; `None` on a plain LoRA (all ranks always on).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankSchedule {
    /// `r_min`: the rank kept at the noisiest step.
    pub min_rank: usize,
    /// `α` (`--alpha_rank_scale`, default 1: linear in `t`).
    pub exponent: f64,
    /// The layers hold an orthogonal T-LoRA as a plain rank-`2r` pair `[current; −frozen]`
    /// (how dreamforge writes them, see [`crate::file`]): rank component `j` and `r + j` share
    /// mask entry `j`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paired: bool,
}

impl RankSchedule {
    /// Active rank of a layer of rank `rank` at `progress = (T − t)/T` ∈ [0, 1] (clamped).
    pub fn rank_at(&self, rank: usize, progress: f64) -> usize {
        let p = progress.clamp(0.0, 1.0);
        let span = rank.saturating_sub(self.min_rank) as f64;
        ((p.powf(self.exponent) * span).floor() as usize + self.min_rank).min(rank)
    }
}

/// `(T − t)/T` for a flow-matching σ (`t = 1000·σ`, `T = 1000`, as the FLUX T-LoRA code).
pub fn progress_from_sigma(sigma: f64) -> f64 {
    (1000.0 - 1000.0 * sigma) / 1000.0
}

/// `(T − t)/T` for a DDPM timestep `t` of `T` training steps (the SDXL T-LoRA code).
pub fn progress_from_timestep(t: f64, num_train_timesteps: f64) -> f64 {
    (num_train_timesteps - t) / num_train_timesteps
}

impl RankSchedule {
    /// The 0/1 mask of a layer of (stored) rank `rank` at `progress`.
    pub fn mask_at(&self, rank: usize, progress: f64) -> Vec<f32> {
        if self.paired && rank.is_multiple_of(2) {
            let half = mask(rank / 2, self.rank_at(rank / 2, progress));
            [half.clone(), half].concat()
        } else {
            mask(rank, self.rank_at(rank, progress))
        }
    }
}

/// The 0/1 mask keeping the first `active` of `rank` components.
pub fn mask(rank: usize, active: usize) -> Vec<f32> {
    (0..rank)
        .map(|i| if i < active { 1.0 } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_runs_from_min_at_pure_noise_to_full_at_the_clean_end() {
        // README FLUX settings: R 32, r_min 1, α 1.
        let s = RankSchedule {
            min_rank: 1,
            exponent: 1.0,
            paired: false,
        };
        assert_eq!(s.rank_at(32, progress_from_sigma(1.0)), 1);
        assert_eq!(s.rank_at(32, progress_from_sigma(0.0)), 32);
        // int((1000 − 500)·31/1000) + 1 = int(15.5) + 1 = 16
        assert_eq!(s.rank_at(32, progress_from_sigma(0.5)), 16);
        // SDXL README: R 64, r_min 32, α 1, DDPM t = 999 → int(0.001·32) + 32 = 32; t = 0 → 64;
        // t = 250 → int(0.75·32) + 32 = 56.
        let x = RankSchedule {
            min_rank: 32,
            exponent: 1.0,
            paired: false,
        };
        assert_eq!(x.rank_at(64, progress_from_timestep(999.0, 1000.0)), 32);
        assert_eq!(x.rank_at(64, progress_from_timestep(0.0, 1000.0)), 64);
        assert_eq!(x.rank_at(64, progress_from_timestep(250.0, 1000.0)), 56);
        // α 2 at t = 250: int(0.5625·32) + 32 = 18 + 32 = 50.
        let q = RankSchedule {
            min_rank: 32,
            exponent: 2.0,
            paired: false,
        };
        assert_eq!(q.rank_at(64, progress_from_timestep(250.0, 1000.0)), 50);
        // A layer smaller than r_min keeps its own rank.
        assert_eq!(x.rank_at(16, 1.0), 16);
        assert_eq!(mask(4, 2), vec![1.0, 1.0, 0.0, 0.0]);
    }
}
