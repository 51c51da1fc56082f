//! Time arithmetic at the one-second resolution that status timestamps keep.
//!
//! Kubernetes `Time` serialises whole seconds only. The engine therefore works in
//! whole seconds throughout, so that a status that went through JSON or YAML (an
//! operator restart) continues exactly like one that stayed in memory.

use jiff::Timestamp;

/// `t` without its fraction of a second.
pub(crate) fn whole_second(t: Timestamp) -> Timestamp {
    at_second(t.as_second())
}

/// The instant `seconds` after the Unix epoch, clamped to the range a timestamp can hold.
pub(crate) fn at_second(seconds: i64) -> Timestamp {
    let lowest = Timestamp::MIN.as_second().saturating_add(1);
    let highest = Timestamp::MAX.as_second().saturating_sub(1);
    Timestamp::from_second(seconds.clamp(lowest, highest)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `t` moved by `seconds` (negative moves back), clamped instead of overflowing.
pub(crate) fn add_seconds(t: Timestamp, seconds: i64) -> Timestamp {
    at_second(t.as_second().saturating_add(seconds))
}

/// Whole seconds from `earlier` to `later` (negative when `later` is before `earlier`).
pub(crate) fn seconds_between(earlier: Timestamp, later: Timestamp) -> i64 {
    later.as_second().saturating_sub(earlier.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_dropped_and_extremes_clamp() {
        let t: Timestamp = "2021-11-05T08:10:00.75Z".parse().unwrap();
        assert_eq!(
            whole_second(t),
            "2021-11-05T08:10:00Z".parse::<Timestamp>().unwrap()
        );
        let far = add_seconds(t, i64::MAX);
        assert!(far > t);
        assert_eq!(far.subsec_nanosecond(), 0);
        assert!(add_seconds(t, i64::MIN) < t);
        assert_eq!(seconds_between(t, add_seconds(t, 90)), 90);
    }
}
