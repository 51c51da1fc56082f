//! How much mail the applications submit, slice by slice: a daily rhythm in the
//! senders' local time, quieter weekends, and press-release bursts on top.

use super::rng::Rng;

/// The shape of the submitted volume over time.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficShape {
    /// Relative volume of each local hour of the day (0 = midnight).
    pub hourly_profile: [f64; 24],
    /// Offset of the senders' local time from UTC, in seconds (Japan: +9 h).
    pub utc_offset_seconds: i64,
    /// Volume of a Saturday or Sunday relative to a weekday.
    pub weekend_factor: f64,
    /// Mean number of press-release bursts on a weekday (weekends: scaled by `weekend_factor`).
    pub bursts_per_weekday: f64,
    /// Share of the whole volume that bursts carry.
    pub burst_share: f64,
    /// Local hours in which bursts start, `[from, to)`.
    pub burst_hours: (u32, u32),
    /// Shortest and longest burst, in minutes.
    pub burst_minutes: (u32, u32),
}

impl TrafficShape {
    /// A press-release distributor in Japan: quiet nights, a morning peak,
    /// bursts during business hours.
    pub fn press_releases_japan() -> Self {
        TrafficShape {
            hourly_profile: [
                0.40, 0.34, 0.30, 0.30, 0.30, 0.36, 0.55, 0.85, 1.45, 1.90, 1.85, 1.65, //
                1.35, 1.60, 1.70, 1.60, 1.45, 1.25, 1.05, 0.90, 0.80, 0.70, 0.55, 0.45,
            ],
            utc_offset_seconds: 9 * 3600,
            weekend_factor: 0.6,
            bursts_per_weekday: 6.0,
            burst_share: 0.2,
            burst_hours: (8, 19),
            burst_minutes: (5, 20),
        }
    }

    /// Volume without bursts and without a weekly rhythm: for scenarios where the
    /// question is not the traffic's shape.
    pub fn steady() -> Self {
        TrafficShape {
            hourly_profile: [1.0; 24],
            utc_offset_seconds: 0,
            weekend_factor: 1.0,
            bursts_per_weekday: 0.0,
            burst_share: 0.0,
            burst_hours: (0, 24),
            burst_minutes: (1, 1),
        }
    }
}

/// Messages submitted in each slice of `slice_seconds` from `start` (Unix
/// seconds), adding up to exactly `total`.
pub fn submissions(
    total: u64,
    start: i64,
    slices: usize,
    slice_seconds: i64,
    shape: &TrafficShape,
    rng: &mut Rng,
) -> Vec<u64> {
    let mut base = vec![0.0f64; slices];
    for (i, w) in base.iter_mut().enumerate() {
        let local = start + i as i64 * slice_seconds + shape.utc_offset_seconds;
        *w = shape.hourly_profile[local_hour(local)] * day_factor(local, shape);
    }
    let mut bursts = vec![0.0f64; slices];
    if shape.burst_share > 0.0 && shape.bursts_per_weekday > 0.0 {
        let days = (slices as i64 * slice_seconds + 86_399) / 86_400;
        for day in 0..days {
            let day_start_local =
                (start + shape.utc_offset_seconds).div_euclid(86_400) * 86_400 + day * 86_400;
            let mean = shape.bursts_per_weekday * day_factor(day_start_local, shape);
            let count = poisson(mean, rng);
            for _ in 0..count {
                let (from, to) = shape.burst_hours;
                let span = i64::from(to.saturating_sub(from).max(1)) * 3600;
                let begin_local =
                    day_start_local + i64::from(from) * 3600 + rng.below(span as u64) as i64;
                let (short, long) = shape.burst_minutes;
                let minutes =
                    i64::from(short) + rng.below(u64::from(long.saturating_sub(short)) + 1) as i64;
                let size = rng.exponential(1.0);
                let first =
                    (begin_local - shape.utc_offset_seconds - start).div_euclid(slice_seconds);
                let length = (minutes * 60 / slice_seconds).max(1);
                for k in first..first + length {
                    if let Ok(index) = usize::try_from(k) {
                        if index < slices {
                            bursts[index] += size / length as f64;
                        }
                    }
                }
            }
        }
    }
    let base_sum: f64 = base.iter().sum();
    let burst_sum: f64 = bursts.iter().sum();
    let burst_share = if burst_sum > 0.0 {
        shape.burst_share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let weights: Vec<f64> = base
        .iter()
        .zip(&bursts)
        .map(|(b, u)| {
            let steady = if base_sum > 0.0 {
                b / base_sum * (1.0 - burst_share)
            } else {
                0.0
            };
            let burst = if burst_sum > 0.0 {
                u / burst_sum * burst_share
            } else {
                0.0
            };
            steady + burst
        })
        .collect();
    cumulative_round(total, &weights)
}

/// Whole counts proportional to `weights` that add up to `total`, each rounded
/// against the running sum so no slice drifts by more than one message.
pub fn cumulative_round(total: u64, weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().map(|w| w.max(0.0)).sum();
    if sum.is_nan() || sum <= 0.0 {
        return vec![0; weights.len()];
    }
    let mut running = 0.0f64;
    let mut given = 0u64;
    weights
        .iter()
        .map(|w| {
            running += w.max(0.0);
            let target = ((running / sum) * total as f64).round().min(total as f64) as u64;
            let count = target.saturating_sub(given);
            given += count;
            count
        })
        .collect()
}

fn local_hour(local_seconds: i64) -> usize {
    usize::try_from(local_seconds.rem_euclid(86_400) / 3600).unwrap_or(0)
}

/// 1 on weekdays, `weekend_factor` on Saturdays and Sundays (local time).
fn day_factor(local_seconds: i64, shape: &TrafficShape) -> f64 {
    // 1970-01-01 was a Thursday: day 0 → weekday index 3 (Monday = 0).
    let weekday = (local_seconds.div_euclid(86_400) + 3).rem_euclid(7);
    if weekday >= 5 {
        shape.weekend_factor
    } else {
        1.0
    }
}

fn poisson(mean: f64, rng: &mut Rng) -> u64 {
    if mean.is_nan() || mean <= 0.0 {
        return 0;
    }
    let limit = (-mean).exp();
    let mut product = rng.unit();
    let mut count = 0;
    while product > limit && count < 1000 {
        product *= rng.unit();
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_636_038_000; // 2021-11-05T00:00:00+09:00, a Friday

    #[test]
    fn the_volume_adds_up_and_follows_day_and_week() {
        let shape = TrafficShape::press_releases_japan();
        let slices = 7 * 24 * 60;
        let counts = submissions(1_000_000, START, slices, 60, &shape, &mut Rng::new(1));
        assert_eq!(counts.iter().sum::<u64>(), 1_000_000);
        let hour = |day: usize, h: usize| -> u64 {
            counts[(day * 24 + h) * 60..(day * 24 + h + 1) * 60]
                .iter()
                .sum()
        };
        assert!(
            hour(0, 9) > 3 * hour(0, 3),
            "mornings are busier than nights"
        );
        let friday: u64 = counts[..1440].iter().sum();
        let saturday: u64 = counts[1440..2880].iter().sum();
        assert!(
            saturday < friday,
            "weekends are quieter: {saturday} vs {friday}"
        );
    }

    #[test]
    fn bursts_stand_out_and_the_seed_decides_them() {
        let shape = TrafficShape::press_releases_japan();
        let a = submissions(500_000, START, 1440, 60, &shape, &mut Rng::new(5));
        let b = submissions(500_000, START, 1440, 60, &shape, &mut Rng::new(5));
        let c = submissions(500_000, START, 1440, 60, &shape, &mut Rng::new(6));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let steady = submissions(
            500_000,
            START,
            1440,
            60,
            &TrafficShape::steady(),
            &mut Rng::new(5),
        );
        let peak = |v: &[u64]| *v.iter().max().unwrap() as f64 / (500_000.0 / 1440.0);
        assert!(
            peak(&a) > 3.0 && peak(&steady) < 1.01,
            "{} {}",
            peak(&a),
            peak(&steady)
        );
    }

    #[test]
    fn cumulative_rounding_is_exact() {
        assert_eq!(cumulative_round(10, &[1.0, 1.0, 1.0]), vec![3, 4, 3]);
        assert_eq!(cumulative_round(5, &[0.0, 0.0]), vec![0, 0]);
        assert_eq!(cumulative_round(7, &[0.0, 2.0]).iter().sum::<u64>(), 7);
    }
}
