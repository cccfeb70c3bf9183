//! Patch perturbation: the paper's aid against copying the reference's texture verbatim —
//! random local shuffling of the reference tokens inside the subject. Each destination takes
//! its source from a random masked token at most `radius` tokens away (a seeded permutation
//! inside each `(2·radius+1)²` window, so every source is used once). Mask erosion / dilation
//! is [`crate::TokenMask::morphed`]. The released code has neither; radius and seed are ours.

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// `pairs` with their sources shuffled among masked tokens of the same window of
/// `2·radius + 1` tokens (grid `width` wide). `radius` 0 returns them unchanged.
pub fn shuffle_local(
    pairs: &[(usize, usize)],
    width: usize,
    radius: usize,
    seed: u64,
) -> Vec<(usize, usize)> {
    if radius == 0 {
        return pairs.to_vec();
    }
    let win = 2 * radius + 1;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut groups: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for (i, &(src, _)) in pairs.iter().enumerate() {
        groups
            .entry(((src % width) / win, (src / width) / win))
            .or_default()
            .push(i);
    }
    let mut out = pairs.to_vec();
    for members in groups.values() {
        let mut srcs: Vec<usize> = members.iter().map(|&i| pairs[i].0).collect();
        srcs.shuffle(&mut rng);
        for (&i, s) in members.iter().zip(srcs) {
            out[i].0 = s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_permutation() {
        let pairs: Vec<(usize, usize)> = (0..64).map(|i| (i, i)).collect();
        let s = shuffle_local(&pairs, 8, 1, 3);
        assert_ne!(s, pairs);
        assert_eq!(s, shuffle_local(&pairs, 8, 1, 3));
        let mut srcs: Vec<usize> = s.iter().map(|p| p.0).collect();
        srcs.sort_unstable();
        assert_eq!(srcs, (0..64).collect::<Vec<_>>());
        for (src, dst) in s {
            let (dx, dy) = (
                (src % 8) as isize - (dst % 8) as isize,
                (src / 8) as isize - (dst / 8) as isize,
            );
            assert!(dx.abs() <= 2 && dy.abs() <= 2, "{src} → {dst}");
        }
        assert_eq!(shuffle_local(&pairs, 8, 0, 3), pairs);
    }
}
