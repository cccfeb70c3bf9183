//! The orthogonal T-LoRA initialisation (ControlGenAI/T-LoRA `OrthogonalLoRALinearLayer`,
//! `sig_type="last"`; methods.md §1.3), drawn from the same distribution without a dense SVD.
//!
//! The reference draws `M ~ N(0, 1/R²)^{in×out}`, takes its full SVD `M = U·diag(s)·Vh` and sets
//! `Q = U[-R:]` (R rows of `U`, `[R, in]`), `P = Vh[:, -R:]` (R columns of `Vh`, `[out, R]`),
//! `λ = s[-R:]` (the R smallest singular values, in descending order). For a Gaussian matrix,
//! `U`, `s` and `Vh` are independent and `U`, `Vh` are Haar-distributed orthogonal matrices
//! (orthogonal invariance), so:
//! - `Q` is a uniformly random set of R orthonormal rows in `R^in` — here the Gram–Schmidt
//!   orthonormalisation of a Gaussian `[R, in]` (the QR construction of Haar frames);
//! - `P` likewise R orthonormal columns in `R^out`;
//! - `λ` are the R smallest singular values of an `n×m` Gaussian matrix (`n ≥ m`), which have
//!   the law of those of the bidiagonal matrix with diagonal `χ_n, χ_{n−1}, …, χ_{n−m+1}` and
//!   superdiagonal `χ_{m−1}, …, χ_1` (Golub–Kahan bidiagonalisation of a Gaussian matrix;
//!   Silverstein 1985, Dumitriu & Edelman 2002). They are found by bisection with Sturm counts
//!   on the `2m × 2m` Golub–Kahan tridiagonal (zero diagonal, eigenvalues `±s`), in f64.
//!
//! Cost: `O(m·R·60)` for `λ` and `O((in + out)·R²)` for the frames, instead of the
//! reference's `O(in·out·min(in, out))` SVD per layer (seconds per 3072-wide FLUX layer).
//! Torch's generator cannot be reproduced, so the target is the distribution, not the numbers.

use rand::Rng;
use rand_distr::{ChiSquared, Distribution, StandardNormal};

/// The initial orthogonal factors of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct OrthoFactors {
    /// `Q` `[r, d_in]`, orthonormal rows (row-major).
    pub q: Vec<f32>,
    /// `P` `[d_out, r]`, orthonormal columns (row-major).
    pub p: Vec<f32>,
    /// `λ` `[r]`, descending.
    pub lambda: Vec<f32>,
}

/// Draws the factors of a rank-`r` orthogonal T-LoRA on a `d_in → d_out` weight whose
/// reference matrix has entries of standard deviation `std` (`1/R` in the reference).
pub fn ortho_factors(
    d_in: usize,
    d_out: usize,
    r: usize,
    std: f64,
    rng: &mut impl Rng,
) -> OrthoFactors {
    assert!(
        r >= 1 && r <= d_in.min(d_out),
        "rank {r} for {d_in}×{d_out}"
    );
    let q = orthonormal_columns(d_in, r, rng); // [d_in, r] → transposed below
    let p = orthonormal_columns(d_out, r, rng);
    let s = smallest_singular_values(d_in.max(d_out), d_in.min(d_out), r, rng);
    let mut q_rows = vec![0f32; r * d_in];
    for i in 0..d_in {
        for j in 0..r {
            q_rows[j * d_in + i] = q[i * r + j] as f32;
        }
    }
    OrthoFactors {
        q: q_rows,
        p: p.into_iter().map(|v| v as f32).collect(),
        lambda: s.into_iter().map(|v| (v * std) as f32).collect(),
    }
}

/// `[n, k]` (row-major) with orthonormal columns: modified Gram–Schmidt (twice, for accuracy)
/// on a Gaussian matrix, signs fixed so the result is Haar-distributed.
fn orthonormal_columns(n: usize, k: usize, rng: &mut impl Rng) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..n).map(|_| StandardNormal.sample(rng)).collect())
        .collect();
    for j in 0..k {
        let (done, rest) = cols.split_at_mut(j);
        let c = &mut rest[0];
        for _ in 0..2 {
            for prev in done.iter() {
                let d: f64 = prev.iter().zip(c.iter()).map(|(a, b)| a * b).sum();
                c.iter_mut().zip(prev).for_each(|(v, p)| *v -= d * p);
            }
        }
        let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        c.iter_mut().for_each(|v| *v /= norm);
    }
    let mut out = vec![0f64; n * k];
    for (j, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            out[i * k + j] = *v;
        }
    }
    out
}

fn chi(k: usize, rng: &mut impl Rng) -> f64 {
    ChiSquared::new(k as f64)
        .expect("positive degrees of freedom")
        .sample(rng)
        .sqrt()
}

/// The `r` smallest singular values (descending) of an `n × m` (`n ≥ m`) standard Gaussian
/// matrix, via its bidiagonal model.
pub fn smallest_singular_values(n: usize, m: usize, r: usize, rng: &mut impl Rng) -> Vec<f64> {
    assert!(n >= m && r <= m && m >= 1);
    // Golub–Kahan tridiagonal off-diagonal: d1, e1, d2, e2, …, dm.
    let mut off = Vec::with_capacity(2 * m - 1);
    for i in 0..m {
        off.push(chi(n - i, rng));
        if i + 1 < m {
            off.push(chi(m - 1 - i, rng));
        }
    }
    let bound = off.iter().fold(0f64, |a, &b| a.max(b)) * 2.0 + 1.0;
    // Eigenvalues of the 2m tridiagonal are ±s; the k-th smallest singular value is the
    // (m + k)-th smallest eigenvalue (1-based k).
    let mut s: Vec<f64> = (1..=r)
        .map(|k| kth_eigenvalue(&off, m + k, bound))
        .collect();
    s.reverse();
    s
}

/// Number of eigenvalues below `x` of the symmetric tridiagonal with zero diagonal and
/// off-diagonal `off` (Sturm sequence / LDLᵀ pivots).
fn count_below(off: &[f64], x: f64) -> usize {
    let mut count = 0;
    let mut d = -x;
    if d < 0.0 {
        count += 1;
    }
    for &e in off {
        let prev = if d == 0.0 { f64::MIN_POSITIVE } else { d };
        d = -x - e * e / prev;
        if d < 0.0 {
            count += 1;
        }
    }
    count
}

/// The `k`-th smallest (1-based) eigenvalue, by bisection on `[-bound, bound]`.
fn kth_eigenvalue(off: &[f64], k: usize, bound: f64) -> f64 {
    let (mut lo, mut hi) = (-bound, bound);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if count_below(off, mid) >= k {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo <= 1e-15 * hi.abs().max(1e-300) {
            break;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn frames_are_orthonormal_and_lambda_is_sorted() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (d_in, d_out, r) = (24, 10, 6);
        let f = ortho_factors(d_in, d_out, r, 1.0 / r as f64, &mut rng);
        for a in 0..r {
            for b in 0..r {
                let qq: f32 = (0..d_in)
                    .map(|i| f.q[a * d_in + i] * f.q[b * d_in + i])
                    .sum();
                let pp: f32 = (0..d_out).map(|i| f.p[i * r + a] * f.p[i * r + b]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((qq - want).abs() < 1e-5, "QQᵀ[{a},{b}] = {qq}");
                assert!((pp - want).abs() < 1e-5, "PᵀP[{a},{b}] = {pp}");
            }
        }
        assert!(f.lambda.windows(2).all(|w| w[0] >= w[1]), "{:?}", f.lambda);
        assert!(f.lambda.iter().all(|&l| l > 0.0));
    }

    /// The bidiagonal model against dense matrices whose singular values have a closed form:
    /// for an `n×2` Gaussian `M`, `s²` are the eigenvalues of the 2×2 `MᵀM`.
    #[test]
    fn singular_values_have_the_law_of_a_dense_gaussian_matrix() {
        let n = 5;
        let trials = 20_000;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (mut model_min, mut model_max, mut dense_min, mut dense_max) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..trials {
            let s = smallest_singular_values(n, 2, 2, &mut rng);
            model_max += s[0];
            model_min += s[1];
            let m: Vec<[f64; 2]> = (0..n)
                .map(|_| {
                    [
                        StandardNormal.sample(&mut rng),
                        StandardNormal.sample(&mut rng),
                    ]
                })
                .collect();
            let a: f64 = m.iter().map(|r| r[0] * r[0]).sum();
            let c: f64 = m.iter().map(|r| r[1] * r[1]).sum();
            let b: f64 = m.iter().map(|r| r[0] * r[1]).sum();
            let h = ((a - c).powi(2) / 4.0 + b * b).sqrt();
            dense_max += ((a + c) / 2.0 + h).sqrt();
            dense_min += ((a + c) / 2.0 - h).max(0.0).sqrt();
        }
        let t = trials as f64;
        let (mm, dm, mx, dx) = (model_min / t, dense_min / t, model_max / t, dense_max / t);
        assert!(
            (mm - dm).abs() < 0.02 * dm,
            "E[s_min]: model {mm}, dense {dm}"
        );
        assert!(
            (mx - dx).abs() < 0.02 * dx,
            "E[s_max]: model {mx}, dense {dx}"
        );
        // Σ s² = ‖M‖_F², whose mean is n·m: all singular values of a square 40×40 model.
        let mut sum = 0.0;
        for _ in 0..200 {
            sum += smallest_singular_values(40, 40, 40, &mut rng)
                .iter()
                .map(|s| s * s)
                .sum::<f64>();
        }
        let mean = sum / 200.0;
        assert!((mean - 1600.0).abs() < 0.02 * 1600.0, "E‖M‖² = {mean}");
    }

    #[test]
    fn square_layers_match_the_quarter_circle_edge() {
        // For a square n×n Gaussian, the k-th smallest singular value ≈ π·k/(2√n) (density
        // 2/π near 0 of s/√n); the mean of the 8 smallest at n = 640 is ≈ π·4.5/(2√640).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 640;
        let mut mean = 0.0;
        for _ in 0..20 {
            mean += smallest_singular_values(n, n, 8, &mut rng)
                .iter()
                .sum::<f64>()
                / 8.0;
        }
        mean /= 20.0;
        let want = std::f64::consts::PI * 4.5 / (2.0 * (n as f64).sqrt());
        assert!((mean - want).abs() < 0.15 * want, "mean {mean}, ≈ {want}");
    }
}
