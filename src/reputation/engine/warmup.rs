//! Where a warming IP stands in its warm-up schedule.

use jiff::Timestamp;

use super::clock::{add_seconds, seconds_between};

/// Length of one warm-up day.
pub(crate) const DAY_SECONDS: i64 = 86_400;

/// One day of a warm-up schedule, as seen at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WarmupDay {
    /// 0 for the first day.
    pub day: usize,
    /// Days in the schedule.
    pub days: usize,
    /// Messages per hour per provider on this day.
    pub cap: i64,
    /// When this day began.
    pub day_start: Timestamp,
    /// When the cap next changes, or the schedule ends (days with an equal cap are skipped).
    pub next_change: Timestamp,
}

/// The warm-up day at `t` for an IP that started warming at `start`, or `None`
/// once the schedule is over. A start in the future counts as the first day: the
/// IP is declared new, so it gets the smallest cap until its schedule really runs.
pub(crate) fn warmup_day(start: Timestamp, caps: &[i64], t: Timestamp) -> Option<WarmupDay> {
    let elapsed = seconds_between(start, t);
    let day = if elapsed < 0 {
        0
    } else {
        elapsed / DAY_SECONDS
    };
    let day = usize::try_from(day).ok().filter(|d| *d < caps.len())?;
    let cap = *caps.get(day)?;
    let next = (day + 1..caps.len())
        .find(|k| caps.get(*k) != Some(&cap))
        .unwrap_or(caps.len());
    Some(WarmupDay {
        day,
        days: caps.len(),
        cap,
        day_start: add_seconds(start, day_offset(day)),
        next_change: add_seconds(start, day_offset(next)),
    })
}

/// When the schedule that began at `start` is over.
pub(crate) fn schedule_end(start: Timestamp, caps: &[i64]) -> Timestamp {
    add_seconds(start, day_offset(caps.len()))
}

/// Allowance (percent of the normal hourly limit) that a warm-up cap amounts to:
/// at least 1 so a warming IP keeps sending, at most 100.
pub(crate) fn warm_allowance(cap: i64, rate_limit: i64) -> i32 {
    let percent = i128::from(cap) * 100 / i128::from(rate_limit.max(1));
    i32::try_from(percent.clamp(1, 100)).unwrap_or(100)
}

fn day_offset(days: usize) -> i64 {
    i64::try_from(days)
        .unwrap_or(i64::MAX)
        .saturating_mul(DAY_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn days_follow_the_schedule_and_end() {
        let start = ts("2021-11-01T00:00:00Z");
        let caps = [20, 28, 28, 39];
        let first = warmup_day(start, &caps, ts("2021-11-01T23:59:59Z")).unwrap();
        assert_eq!((first.day, first.cap), (0, 20));
        assert_eq!(first.next_change, ts("2021-11-02T00:00:00Z"));
        let second = warmup_day(start, &caps, ts("2021-11-02T00:00:00Z")).unwrap();
        assert_eq!((second.day, second.cap), (1, 28));
        assert_eq!(
            second.next_change,
            ts("2021-11-04T00:00:00Z"),
            "day 3 has the same cap"
        );
        let last = warmup_day(start, &caps, ts("2021-11-04T12:00:00Z")).unwrap();
        assert_eq!((last.day, last.cap, last.days), (3, 39, 4));
        assert_eq!(last.next_change, schedule_end(start, &caps));
        assert_eq!(warmup_day(start, &caps, ts("2021-11-05T00:00:00Z")), None);
        assert_eq!(warmup_day(start, &[], start), None);
    }

    #[test]
    fn a_future_start_is_the_first_day() {
        let start = ts("2021-11-10T00:00:00Z");
        let day = warmup_day(start, &[20, 28], ts("2021-11-05T00:00:00Z")).unwrap();
        assert_eq!((day.day, day.cap), (0, 20));
        assert_eq!(day.next_change, ts("2021-11-11T00:00:00Z"));
    }

    #[test]
    fn allowance_is_the_cap_share_of_the_limit_within_1_and_100() {
        assert_eq!(warm_allowance(20, 10_000), 1);
        assert_eq!(warm_allowance(1000, 10_000), 10);
        assert_eq!(warm_allowance(1587, 1000), 100);
        assert_eq!(warm_allowance(i64::MAX, 1), 100);
        assert_eq!(warm_allowance(5, 0), 100);
    }
}
