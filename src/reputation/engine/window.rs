//! The sliding window of delivery counts that ambiguous signals are judged on.
//!
//! The window is cut into at most 16 buckets of `window / 15` seconds (rounded
//! up), each aligned to a multiple of its size since the Unix epoch, so that two
//! engines fed the same counts at the same instants build identical buckets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::clock::at_second;
use crate::api::WindowBucket;
use jiff::Timestamp;

/// Delivery counts of some span of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub attempts: i64,
    pub delivered: i64,
    pub ip_blocklisted: i64,
    pub ip_rate_limited: i64,
    pub complaints: i64,
}

impl Counts {
    fn plus(self, other: Counts) -> Counts {
        Counts {
            attempts: self.attempts.saturating_add(other.attempts),
            delivered: self.delivered.saturating_add(other.delivered),
            ip_blocklisted: self.ip_blocklisted.saturating_add(other.ip_blocklisted),
            ip_rate_limited: self.ip_rate_limited.saturating_add(other.ip_rate_limited),
            complaints: self.complaints.saturating_add(other.complaints),
        }
    }

    fn of(bucket: &WindowBucket) -> Counts {
        Counts {
            attempts: bucket.attempts,
            delivered: bucket.delivered,
            ip_blocklisted: bucket.ip_blocklisted,
            ip_rate_limited: bucket.ip_rate_limited,
            complaints: bucket.complaints,
        }
    }
}

/// Bucket length for a window: 15 buckets cover the window, a 16th the part
/// of the oldest bucket that is still inside it.
pub(crate) fn bucket_seconds(window_seconds: i64) -> i64 {
    (window_seconds.max(1).saturating_add(14) / 15).max(1)
}

/// Adds `counts` to the bucket holding `now`.
pub(crate) fn record(window: &mut Vec<WindowBucket>, counts: Counts, now: Timestamp, bucket: i64) {
    if counts == Counts::default() {
        return;
    }
    let start = at_second(now.as_second().div_euclid(bucket).saturating_mul(bucket));
    match window.binary_search_by(|b| b.start.0.cmp(&start)) {
        Ok(i) => {
            let slot = &mut window[i];
            let sum = Counts::of(slot).plus(counts);
            slot.attempts = sum.attempts;
            slot.delivered = sum.delivered;
            slot.ip_blocklisted = sum.ip_blocklisted;
            slot.ip_rate_limited = sum.ip_rate_limited;
            slot.complaints = sum.complaints;
        }
        Err(i) => window.insert(
            i,
            WindowBucket {
                start: Time(start),
                attempts: counts.attempts,
                delivered: counts.delivered,
                ip_blocklisted: counts.ip_blocklisted,
                ip_rate_limited: counts.ip_rate_limited,
                complaints: counts.complaints,
            },
        ),
    }
}

/// Drops the buckets that end at or before `now - window_seconds`.
pub(crate) fn prune(
    window: &mut Vec<WindowBucket>,
    now: Timestamp,
    window_seconds: i64,
    bucket: i64,
) {
    let horizon = now.as_second().saturating_sub(window_seconds);
    window.retain(|b| b.start.0.as_second().saturating_add(bucket) > horizon);
}

/// The counts of every bucket still in the window.
pub(crate) fn totals(window: &[WindowBucket]) -> Counts {
    window
        .iter()
        .map(Counts::of)
        .fold(Counts::default(), Counts::plus)
}

/// Whether `part` is at least `percent` % of `whole` (exact integer arithmetic).
pub(crate) fn share_at_least(part: i64, whole: i64, percent: i32) -> bool {
    i128::from(part) * 100 >= i128::from(percent) * i128::from(whole)
}

/// Whether `part` is at least `basis_points` hundredths of a percent of `whole`.
pub(crate) fn share_at_least_basis_points(part: i64, whole: i64, basis_points: i32) -> bool {
    i128::from(part) * 10_000 >= i128::from(basis_points) * i128::from(whole)
}

/// `part` in basis points of `whole`, rounded down (`None` for an empty whole).
pub(crate) fn basis_points_of(part: i64, whole: i64) -> Option<i64> {
    (whole > 0)
        .then(|| i64::try_from(i128::from(part) * 10_000 / i128::from(whole)).unwrap_or(i64::MAX))
}

/// Basis points as a percentage with two decimals: 30 is `0.30 %`.
pub(crate) fn basis_points_text(basis_points: i64) -> String {
    format!("{}.{:02} %", basis_points / 100, basis_points % 100)
}

/// `part` as a whole percentage of `whole`, rounded down (0 for an empty whole).
pub(crate) fn percent_of(part: i64, whole: i64) -> i128 {
    if whole <= 0 {
        0
    } else {
        i128::from(part) * 100 / i128::from(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn counts(attempts: i64, blocklisted: i64) -> Counts {
        Counts {
            attempts,
            ip_blocklisted: blocklisted,
            ..Counts::default()
        }
    }

    #[test]
    fn buckets_are_aligned_and_merged() {
        let mut window = Vec::new();
        let bucket = bucket_seconds(900);
        assert_eq!(bucket, 60);
        record(
            &mut window,
            counts(3, 1),
            ts("2021-11-05T08:10:05Z"),
            bucket,
        );
        record(
            &mut window,
            counts(2, 0),
            ts("2021-11-05T08:10:59Z"),
            bucket,
        );
        record(
            &mut window,
            counts(4, 4),
            ts("2021-11-05T08:09:30Z"),
            bucket,
        );
        assert_eq!(window.len(), 2);
        assert_eq!(window[0].start.0, ts("2021-11-05T08:09:00Z"));
        assert_eq!(window[1].start.0, ts("2021-11-05T08:10:00Z"));
        assert_eq!(window[1].attempts, 5);
        assert_eq!(totals(&window), counts(9, 5));
    }

    #[test]
    fn pruning_keeps_only_buckets_overlapping_the_window() {
        let mut window = Vec::new();
        let bucket = bucket_seconds(900);
        let start = ts("2021-11-05T08:00:00Z");
        for minute in 0..30 {
            record(
                &mut window,
                counts(1, 0),
                super::super::clock::add_seconds(start, minute * 60),
                bucket,
            );
        }
        prune(&mut window, ts("2021-11-05T08:30:00Z"), 900, bucket);
        // Buckets 08:15 .. 08:29 remain: 15 of them, never more than 16.
        assert_eq!(window.len(), 15);
        assert_eq!(window[0].start.0, ts("2021-11-05T08:15:00Z"));
        prune(&mut window, ts("2021-11-05T08:30:30Z"), 900, bucket);
        assert_eq!(
            window[0].start.0,
            ts("2021-11-05T08:15:00Z"),
            "08:15 bucket still overlaps"
        );
        prune(&mut window, ts("2021-11-05T08:31:00Z"), 900, bucket);
        assert_eq!(window[0].start.0, ts("2021-11-05T08:16:00Z"));
    }

    #[test]
    fn empty_counts_add_no_bucket_and_shares_are_exact() {
        let mut window = Vec::new();
        record(
            &mut window,
            Counts::default(),
            ts("2021-11-05T08:10:05Z"),
            60,
        );
        assert!(window.is_empty());
        assert!(share_at_least(10, 50, 20));
        assert!(!share_at_least(9, 50, 20));
        assert!(
            share_at_least(0, 0, 1),
            "an empty window is at any share: callers check min samples first"
        );
        assert_eq!(percent_of(1, 3), 33);
        assert_eq!(percent_of(1, 0), 0);
        assert_eq!(bucket_seconds(60), 4);
        assert_eq!(bucket_seconds(1), 1);
        assert_eq!(bucket_seconds(86_400), 5760);
    }
}
