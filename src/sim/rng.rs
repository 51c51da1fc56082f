//! The simulator's only source of chance: a seeded SplitMix64 generator.
//!
//! Every draw comes from one stream per run, consumed in a fixed order, so the
//! same seed gives the same simulation, byte for byte.

/// A small, fast, seeded pseudo-random generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed ^ 0x6d61_696c_666c_6565,
        }
    }

    /// A generator for one purpose (`stream`), independent of the others drawn
    /// from the same seed, so adding draws in one place does not shift another.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut mixer = Rng::new(seed.wrapping_add(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        Rng::new(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `x` rounded down or up at random so that the mean is `x` (x >= 0).
    pub fn round(&mut self, x: f64) -> u64 {
        if x.is_nan() || x <= 0.0 {
            return 0;
        }
        let floor = x.floor();
        let extra = u64::from(self.unit() < x - floor);
        floor as u64 + extra
    }

    /// An index drawn with probability proportional to `weights`; `None` when all are 0.
    pub fn pick_weighted(&mut self, weights: &[f64]) -> Option<usize> {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total.is_nan() || total <= 0.0 {
            return None;
        }
        let mut target = self.unit() * total;
        let mut last = None;
        for (i, w) in weights.iter().enumerate() {
            if *w > 0.0 {
                last = Some(i);
                if target < *w {
                    return Some(i);
                }
                target -= *w;
            }
        }
        last
    }

    /// An exponentially distributed value with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Splits `total` into whole parts proportional to `weights` that add up to
/// `total` exactly; the remainder goes to parts drawn at random by weight, so
/// small totals do not always favour the first part.
pub fn apportion(total: u64, weights: &[f64], rng: &mut Rng) -> Vec<u64> {
    let sum: f64 = weights.iter().map(|w| w.max(0.0)).sum();
    let mut parts = vec![0u64; weights.len()];
    if total == 0 || sum.is_nan() || sum <= 0.0 {
        return parts;
    }
    let mut given = 0u64;
    let mut fractions = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = total as f64 * w.max(0.0) / sum;
        let whole = (exact.floor() as u64).min(total - given);
        parts[i] = whole;
        given += whole;
        fractions.push(exact - whole as f64);
    }
    while given < total {
        let i = rng
            .pick_weighted(&fractions)
            .or_else(|| rng.pick_weighted(weights))
            .unwrap_or(0);
        parts[i] += 1;
        given += 1;
        fractions[i] = 0.0;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_streams_differ() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(Rng::derive(7, 1).next_u64(), Rng::derive(7, 2).next_u64());
    }

    #[test]
    fn draws_stay_in_range_and_rounding_keeps_the_mean() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        let total: u64 = (0..10_000).map(|_| r.round(0.25)).sum();
        assert!((2_300..2_700).contains(&total), "{total}");
        assert_eq!(r.round(-1.0), 0);
        assert_eq!(r.pick_weighted(&[0.0, 0.0]), None);
        assert_eq!(r.pick_weighted(&[0.0, 3.0]), Some(1));
    }

    #[test]
    fn apportion_adds_up_and_follows_weights() {
        let mut r = Rng::new(3);
        let parts = apportion(1001, &[1.0, 1.0, 2.0], &mut r);
        assert_eq!(parts.iter().sum::<u64>(), 1001);
        assert!(parts[2] >= 500 && parts[0] >= 250);
        assert_eq!(apportion(5, &[0.0, 0.0], &mut r), vec![0, 0]);
        let mut firsts = 0;
        for _ in 0..100 {
            firsts += apportion(1, &[1.0; 7], &mut r)[0];
        }
        assert!(
            firsts < 40,
            "a single message must not always go to the first part: {firsts}"
        );
    }
}
