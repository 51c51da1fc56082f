//! Reading the time a log line was written.
//!
//! ISO forms carry everything (`2021-11-05T08:10:01.123456+09:00`, also with a
//! space instead of `T` or a `+0900` offset). The syslog form (`Nov  5
//! 08:10:01`) has no year and no zone: the caller says which zone, and the year
//! is either given or the one that puts the time at most a day after `now`
//! (a log read on January 1st still holds December's lines).

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// An ISO timestamp with an offset, or `None`.
pub fn iso_time(text: &str) -> Option<Timestamp> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Some(t);
    }
    // `2021-11-05 08:10:01+0900`: the shapes rsyslog templates write.
    let mut fixed = text.trim().to_string();
    if fixed.len() > 10 && fixed.as_bytes()[10] == b' ' {
        fixed.replace_range(10..11, "T");
    }
    let len = fixed.len();
    let b = fixed.as_bytes();
    if len > 5 && matches!(b[len - 5], b'+' | b'-') && b[len - 4..].iter().all(u8::is_ascii_digit) {
        fixed.insert(len - 2, ':');
    }
    fixed.parse::<Timestamp>().ok()
}

/// A syslog `Mon DD HH:MM:SS[.fraction]` time in `year`, read in `zone`.
pub fn syslog_time(text: &str, year: i16, zone: &TimeZone) -> Option<Timestamp> {
    let text = text.trim();
    let whole = text.split_once('.').map_or(text, |(w, _)| w);
    let words: Vec<&str> = whole.split_whitespace().collect();
    let [month, day, clock] = words.as_slice() else {
        return None;
    };
    let with_year = format!("{year} {month} {day} {clock}");
    let civil = DateTime::strptime("%Y %b %d %H:%M:%S", &with_year).ok()?;
    civil.to_zoned(zone.clone()).ok().map(|z| z.timestamp())
}

/// A logged time of either form; syslog times take the year that puts them
/// at most one day after `now`.
pub fn logged_time(text: &str, now: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
    if let Some(t) = iso_time(text) {
        return Some(t);
    }
    let year = now.to_zoned(zone.clone()).year();
    let this_year = syslog_time(text, year, zone)?;
    if this_year.as_second() > now.as_second().saturating_add(86_400) {
        return syslog_time(text, year - 1, zone);
    }
    Some(this_year)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_shapes_are_read() {
        let want: Timestamp = "2021-11-04T23:10:01Z".parse().unwrap();
        for text in [
            "2021-11-05T08:10:01+09:00",
            "2021-11-05 08:10:01+0900",
            "2021-11-05T08:10:01+0900",
            "2021-11-04T23:10:01Z",
        ] {
            assert_eq!(iso_time(text), Some(want), "{text}");
        }
        assert_eq!(
            iso_time("2021-11-05T08:10:01.5+09:00")
                .unwrap()
                .subsec_millisecond(),
            500
        );
        assert_eq!(iso_time("Nov  5 08:10:01"), None);
        assert_eq!(iso_time(""), None);
    }

    #[test]
    fn syslog_times_get_a_year_not_in_the_future() {
        let utc = TimeZone::UTC;
        let now: Timestamp = "2022-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(
            logged_time("Dec 31 23:59:58", now, &utc),
            Some("2021-12-31T23:59:58Z".parse().unwrap())
        );
        assert_eq!(
            logged_time("Jan  1 00:04:00.123", now, &utc),
            Some("2022-01-01T00:04:00Z".parse().unwrap())
        );
        let tokyo = TimeZone::fixed(jiff::tz::offset(9));
        assert_eq!(
            syslog_time("Nov  5 08:10:01", 2021, &tokyo),
            Some("2021-11-04T23:10:01Z".parse().unwrap())
        );
        assert_eq!(syslog_time("Nov 5", 2021, &utc), None);
        assert_eq!(logged_time("yesterday", now, &utc), None);
    }
}
