//! How long to wait before retrying the feedback endpoint: doubling from
//! `initial` to `max`, spread by ±20 % so a fleet of agents that lost the
//! endpoint together does not come back in one burst. The spread comes from
//! the agent's instance and the attempt number, not from a random source, so
//! it is reproducible.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// A seed for [`Backoff::delay`] from the agent's instance name.
pub fn seed_of(instance: &str) -> u64 {
    crate::digest::fnv1a(instance.as_bytes())
}

impl Backoff {
    /// The wait after `failures` failures in a row (1 for the first).
    pub fn delay(&self, failures: u32, seed: u64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        // splitmix64 of (seed, failures): a fraction in [0, 1).
        let mut z = seed.wrapping_add(u64::from(failures).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.8 + 0.4 * fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_spread() {
        let b = Backoff::default();
        let seed = seed_of("agent-1");
        for (failures, base) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let d = b.delay(failures, seed).as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{failures}: {d}"
            );
        }
        assert_eq!(b.delay(3, seed), b.delay(3, seed));
        let spread: std::collections::BTreeSet<u128> = (0..20)
            .map(|i| b.delay(2, seed_of(&format!("agent-{i}"))).as_millis())
            .collect();
        assert!(spread.len() > 10, "agents spread their retries: {spread:?}");
    }
}
