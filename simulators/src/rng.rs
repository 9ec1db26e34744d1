//! Deterministic random numbers for the simulators: xoshiro256++ seeded through SplitMix64,
//! and a Poisson sampler that is fast for the small means of counting detectors.
//!
//! Our own generator rather than `rand`: the simulators promise bit-identical output for a
//! given seed across dependency upgrades, and the hot loop wants a generator that inlines.

/// One SplitMix64 step: advances `state` and returns a well-mixed 64-bit value.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Combines two values into one seed (e.g. a run seed and a frame index), so that every
/// frame has its own independent noise stream.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut s = a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93).rotate_left(17);
    splitmix64(&mut s)
}

/// xoshiro256++ (Blackman & Vigna), 2^256 − 1 period; not cryptographic.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole state is derived from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let mut sm = seed;
        Self {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.s;
        let result = s0.wrapping_add(s3).rotate_left(23).wrapping_add(s0);
        let t = s1 << 17;
        let mut s = [s0, s1, s2 ^ s0, s3 ^ s1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        self.s = s;
        result
    }

    /// Uniform in [0, 1), 53 random bits.
    #[inline]
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Poisson-distributed count with mean `lambda` (0 for a non-positive or non-finite mean).
    pub(crate) fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda.is_nan() || lambda <= 0.0 || !lambda.is_finite() {
            0
        } else if lambda < SMALL_LAMBDA {
            self.poisson_small(lambda, (-lambda).exp())
        } else {
            self.poisson_ptrs(lambda)
        }
    }

    /// Poisson by inversion for `lambda < SMALL_LAMBDA`, given `exp_neg = exp(-lambda)`
    /// (precomputed by callers that draw many samples with the same mean). Costs about
    /// `lambda + 1` multiply-adds and one uniform.
    #[inline]
    pub(crate) fn poisson_small(&mut self, lambda: f64, exp_neg: f64) -> u64 {
        let u = self.uniform();
        let mut k = 0u64;
        let mut p = exp_neg;
        let mut cdf = p;
        // The cap only matters for u within rounding of 1; it keeps the loop bounded.
        while u > cdf && k < 200 {
            k += 1;
            p *= lambda / k as f64;
            cdf += p;
        }
        k
    }

    /// Hörmann's transformed rejection with squeeze (PTRS, 1993) for `lambda >= 10`:
    /// about 1.1 iterations on average whatever the mean.
    fn poisson_ptrs(&mut self, lambda: f64) -> u64 {
        let slam = lambda.sqrt();
        let loglam = lambda.ln();
        let b = 0.931 + 2.53 * slam;
        let a = -0.059 + 0.02483 * b;
        let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
        let v_r = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.uniform() - 0.5;
            let v = self.uniform();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + lambda + 0.43).floor();
            if us >= 0.07 && v <= v_r {
                return k as u64;
            }
            if k < 0.0 || (us < 0.013 && v > us) {
                continue;
            }
            let lhs = v.ln() + inv_alpha.ln() - (a / (us * us) + b).ln();
            let rhs = -lambda + k * loglam - ln_factorial(k as u64);
            if lhs <= rhs {
                return k as u64;
            }
        }
    }
}

/// Means below this use inversion; at and above, PTRS.
pub(crate) const SMALL_LAMBDA: f64 = 10.0;

/// ln(k!) — exact table below 16, Stirling's series (error < 1e-10) above.
fn ln_factorial(k: u64) -> f64 {
    const TABLE: [f64; 16] = [
        0.0,
        0.0,
        std::f64::consts::LN_2,
        1.791_759_469_228_055,
        3.178_053_830_347_945_6,
        4.787_491_742_782_046,
        6.579_251_212_010_101,
        8.525_161_361_065_415,
        10.604_602_902_745_25,
        12.801_827_480_081_469,
        15.104_412_573_075_516,
        17.502_307_845_873_887,
        19.987_214_495_661_885,
        22.552_163_853_123_42,
        25.191_221_182_738_683,
        27.899_271_383_840_894,
    ];
    if k < 16 {
        return TABLE[k as usize];
    }
    let x = k as f64 + 1.0;
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    (x - 0.5) * x.ln() - x
        + 0.5 * (2.0 * std::f64::consts::PI).ln()
        + inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(lambda: f64, n: usize) -> (f64, f64) {
        let mut rng = Rng::new(42);
        let xs: Vec<f64> = (0..n).map(|_| rng.poisson(lambda) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (mean, var)
    }

    #[test]
    fn poisson_mean_and_variance_match_lambda_in_both_regimes() {
        for &lambda in &[0.05, 0.7, 3.0, 9.9, 10.0, 57.0, 2500.0] {
            let n = 200_000;
            let (mean, var) = moments(lambda, n);
            // 6 standard errors of the mean; variance within 3 %.
            let se = (lambda / n as f64).sqrt();
            assert!(
                (mean - lambda).abs() < 6.0 * se + 1e-9,
                "lambda {lambda}: mean {mean}"
            );
            assert!(
                (var / lambda - 1.0).abs() < 0.03,
                "lambda {lambda}: var {var}"
            );
        }
        assert_eq!(Rng::new(1).poisson(0.0), 0);
        assert_eq!(Rng::new(1).poisson(f64::NAN), 0);
    }

    #[test]
    fn ln_factorial_matches_direct_sum() {
        let mut direct = 0.0;
        for k in 1..200u64 {
            direct += (k as f64).ln();
            assert!(
                (ln_factorial(k) - direct).abs() < 1e-9 * direct.max(1.0),
                "k {k}"
            );
        }
    }

    #[test]
    fn generator_is_deterministic_and_uniform_in_unit_interval() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let x = a.uniform();
            assert_eq!(x, b.uniform());
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
        assert_ne!(mix(1, 2), mix(2, 1));
    }
}
