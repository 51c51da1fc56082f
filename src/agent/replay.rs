//! `agent replay`: the agent's classification over a finished log, as fast as
//! the disk allows. The file is read in large blocks at explicit offsets (no
//! line is copied or allocated), split in byte ranges read in parallel (a line
//! belongs to the range it starts in), and the ranges' counts are added in file
//! order so the conclusive replies keep their order.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::agent::counts::AttemptCounts;
use crate::agent::line::{classify_line, LineSkip, LogFormat};
use crate::agent::pacer::is_hold_deferral;
use crate::agent::report::TotalCount;
use crate::agent::time::{iso_time, syslog_time};
use crate::reputation::classifier::Classifier;

/// Bytes read at once per range.
const BLOCK: usize = 4 * 1024 * 1024;
/// Files smaller than this are read by one thread.
const PARALLEL_FROM: u64 = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    pub format: LogFormat,
    /// The year of syslog timestamps (read as UTC); without it they are kept as logged.
    pub year: Option<i16>,
    /// Ranges read in parallel; 0 means one per available core.
    pub threads: usize,
}

/// The replay's result; serialises to the documented JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    pub source_ip: IpAddr,
    pub lines: u64,
    pub attempts: u64,
    pub skipped: u64,
    pub totals: Vec<TotalCount>,
    pub conclusive: Vec<ReplayConclusive>,
    /// Skipped lines per reason word (only the table shows them).
    #[serde(skip)]
    pub skipped_by_reason: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayConclusive {
    pub provider: String,
    pub reply: String,
    /// RFC 3339 when the line's time can be read (ISO, or syslog with a
    /// year), otherwise the time as logged.
    pub at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read --log {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Counts of one byte range.
#[derive(Debug, Default)]
struct RangeCounts {
    lines: u64,
    skipped: [u64; LineSkip::WORDS.len()],
    counts: AttemptCounts<String>,
}

/// What Postfix logs for mail of a transport in `defer_transports`.
const HELD_REMARK: &[u8] = b"(deferred transport)";

impl RangeCounts {
    fn line(&mut self, classifier: &Classifier, options: &ReplayOptions, line: &[u8]) {
        self.lines += 1;
        // The pacer's holds are not answers from a provider (the running
        // agent skips them too).
        if options.format == LogFormat::Postfix
            && memchr::memmem::find(line, HELD_REMARK).is_some()
            && is_hold_deferral(line)
        {
            return;
        }
        match classify_line(classifier, options.format, line) {
            Ok(classified) => {
                let time = classified.time.as_deref();
                self.counts.add(&classified.verdict, &classified.reply, || {
                    render_time(time, options.year)
                });
            }
            Err(skip) => self.skipped[skip.index()] += 1,
        }
    }

    fn merge(&mut self, other: RangeCounts) {
        self.lines += other.lines;
        for (mine, theirs) in self.skipped.iter_mut().zip(other.skipped) {
            *mine += theirs;
        }
        self.counts.merge(other.counts);
    }

    fn summary(self, source_ip: IpAddr) -> ReplaySummary {
        let skipped_by_reason: BTreeMap<&'static str, u64> = LineSkip::WORDS
            .iter()
            .zip(self.skipped)
            .filter(|(_, n)| *n > 0)
            .map(|(w, n)| (*w, n))
            .collect();
        ReplaySummary {
            source_ip,
            lines: self.lines,
            attempts: self.counts.attempts(),
            skipped: self.skipped.iter().sum(),
            totals: self.counts.totals(),
            conclusive: self
                .counts
                .into_conclusive()
                .into_iter()
                .map(|c| ReplayConclusive {
                    provider: c.provider.to_string(),
                    reply: c.reply,
                    at: c.at,
                })
                .collect(),
            skipped_by_reason,
        }
    }
}

fn render_time(text: Option<&str>, year: Option<i16>) -> String {
    let Some(text) = text else {
        return String::new();
    };
    if let Some(t) = iso_time(text) {
        return t.to_string();
    }
    match year.and_then(|y| syslog_time(text, y, &jiff::tz::TimeZone::UTC)) {
        Some(t) => t.to_string(),
        None => text.to_string(),
    }
}

/// Replays a log held in memory (every line, the last one with or without a newline).
pub fn replay_bytes(
    classifier: &Classifier,
    source_ip: IpAddr,
    bytes: &[u8],
    options: &ReplayOptions,
) -> ReplaySummary {
    let mut range = RangeCounts::default();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if !bytes.is_empty() {
        for line in body.split(|b| *b == b'\n') {
            range.line(classifier, options, line);
        }
    }
    range.summary(source_ip)
}

/// Replays a log file.
pub fn replay_file(
    classifier: &Classifier,
    source_ip: IpAddr,
    path: &Path,
    options: &ReplayOptions,
) -> Result<ReplaySummary, ReplayError> {
    let read_error = |source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let ranges = if len < PARALLEL_FROM {
        1
    } else {
        threads.clamp(1, 16) as u64
    };
    let bounds: Vec<(u64, u64)> = (0..ranges)
        .map(|i| (len * i / ranges, len * (i + 1) / ranges))
        .collect();
    let results: Vec<std::io::Result<RangeCounts>> = if ranges == 1 {
        vec![read_range(classifier, options, &file, 0, len)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = bounds
                .iter()
                .map(|&(start, end)| {
                    let file = &file;
                    scope.spawn(move || read_range(classifier, options, file, start, end))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("a replay thread failed")))
                })
                .collect()
        })
    };
    let mut total = RangeCounts::default();
    for result in results {
        total.merge(result.map_err(read_error)?);
    }
    Ok(total.summary(source_ip))
}

/// Counts the lines that start in `[start, end)`.
fn read_range(
    classifier: &Classifier,
    options: &ReplayOptions,
    file: &File,
    start: u64,
    end: u64,
) -> std::io::Result<RangeCounts> {
    let mut counts = RangeCounts::default();
    let mut buf = vec![0u8; BLOCK];
    let mut line_start = start;
    // A range that starts inside a line leaves that line to the range before.
    let mut discarding = false;
    if start > 0 {
        let mut byte = [0u8; 1];
        let n = file.read_at(&mut byte, start - 1)?;
        discarding = n == 1 && byte[0] != b'\n';
    }
    let mut filled = 0usize;
    loop {
        if line_start >= end && !discarding {
            return Ok(counts);
        }
        let n = read_full(file, &mut buf[filled..], line_start + filled as u64)?;
        let at_eof = filled + n < buf.len();
        filled += n;
        let mut i = 0usize;
        if discarding {
            match memchr::memchr(b'\n', &buf[..filled]) {
                Some(nl) => {
                    i = nl + 1;
                    discarding = false;
                }
                None if at_eof => return Ok(counts),
                None => {
                    line_start += filled as u64;
                    filled = 0;
                    continue;
                }
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', &buf[i..filled]) {
            if line_start + i as u64 >= end {
                return Ok(counts);
            }
            counts.line(classifier, options, &buf[i..i + nl]);
            i += nl + 1;
        }
        if line_start + i as u64 >= end {
            return Ok(counts);
        }
        if at_eof {
            if i < filled {
                counts.line(classifier, options, &buf[i..filled]);
            }
            return Ok(counts);
        }
        if i == 0 {
            // A line longer than a block: counted once, the rest skipped.
            counts.lines += 1;
            counts.skipped[LineSkip::TooLong.index()] += 1;
            discarding = true;
            line_start += filled as u64;
            filled = 0;
            continue;
        }
        buf.copy_within(i..filled, 0);
        filled -= i;
        line_start += i as u64;
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const BAN: &str = "2021-11-05T08:10:01+09:00 mx1 postfix/smtp[7]: 4HmB2x0Z7Qz9vD: to=<taro@hotmail.co.jp>, relay=hotmail-com.olc.protection.outlook.com[104.47.22.161]:25, delay=0.5, delays=0/0/0.3/0.2, dsn=5.7.606, status=bounced (host hotmail-com.olc.protection.outlook.com[104.47.22.161] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]. (in reply to MAIL FROM command))";
    const SENT: &str = "Nov  5 08:10:02 mx1 postfix/smtp[7]: 5JnC3y1A8Ra0wE: to=<hanako@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, delay=0.4, delays=0/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 OK 1636099802 x12si - gsmtp)";
    const QMGR: &str = "Nov  5 08:10:02 mx1 postfix/qmgr[9]: 5JnC3y1A8Ra0wE: removed";

    const HELD: &str = "Nov  5 08:10:02 mx1 postfix/qmgr[9]: 6KoD4z2B9Sb1xF: to=<jiro@gmail.com>, relay=none, delay=0.1, delays=0.1/0/0/0, dsn=4.3.2, status=deferred (deferred transport)";

    #[test]
    fn the_pacers_holds_are_neither_attempts_nor_skips() {
        let log = format!("{HELD}\n{SENT}");
        let s = replay_bytes(
            &Classifier::builtin(),
            ip(),
            log.as_bytes(),
            &ReplayOptions::default(),
        );
        assert_eq!((s.lines, s.attempts, s.skipped), (2, 1, 0));
    }

    fn ip() -> IpAddr {
        "203.0.113.10".parse().unwrap()
    }

    #[test]
    fn counts_lines_attempts_and_skips() {
        let log = format!("{BAN}\n{SENT}\n{QMGR}\n\u{0}\u{1}\u{2}\n{SENT}");
        let s = replay_bytes(
            &Classifier::builtin(),
            ip(),
            log.as_bytes(),
            &ReplayOptions::default(),
        );
        assert_eq!((s.lines, s.attempts, s.skipped), (5, 3, 2));
        assert_eq!(
            s.skipped_by_reason,
            BTreeMap::from([("binary", 1), ("not_delivery", 1)])
        );
        assert_eq!(s.totals.len(), 2);
        assert_eq!(
            (s.totals[0].provider.as_str(), s.totals[0].count),
            ("google", 2)
        );
        assert_eq!(s.conclusive.len(), 1);
        assert_eq!(s.conclusive[0].at, "2021-11-04T23:10:01Z");
        let json = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "attempts",
                "conclusive",
                "lines",
                "skipped",
                "source_ip",
                "totals"
            ]
        );
        assert_eq!(json["conclusive"][0].as_object().unwrap().len(), 3);
    }

    #[test]
    fn syslog_times_take_the_given_year() {
        let log = BAN.replace("2021-11-05T08:10:01+09:00", "Nov  5 08:10:01");
        let without = replay_bytes(
            &Classifier::builtin(),
            ip(),
            log.as_bytes(),
            &ReplayOptions::default(),
        );
        assert_eq!(without.conclusive[0].at, "Nov  5 08:10:01");
        let with = replay_bytes(
            &Classifier::builtin(),
            ip(),
            log.as_bytes(),
            &ReplayOptions {
                year: Some(2021),
                ..Default::default()
            },
        );
        assert_eq!(with.conclusive[0].at, "2021-11-05T08:10:01Z");
    }

    #[test]
    fn a_file_read_in_ranges_counts_like_one_pass() {
        let mut text = String::new();
        for i in 0..40_000 {
            match i % 4 {
                0 => text.push_str(BAN),
                1 | 2 => text.push_str(SENT),
                _ => text.push_str(QMGR),
            }
            text.push('\n');
        }
        text.push_str(&"x".repeat(BLOCK + 10));
        text.push('\n');
        text.push_str(SENT);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let c = Classifier::builtin();
        let whole = replay_bytes(&c, ip(), text.as_bytes(), &ReplayOptions::default());
        for threads in [1, 3, 7] {
            let mut from_file = replay_file(
                &c,
                ip(),
                file.path(),
                &ReplayOptions {
                    threads,
                    ..Default::default()
                },
            )
            .unwrap();
            // replay_bytes sees the long line whole; the file reader calls it too long.
            assert_eq!(from_file.skipped_by_reason.remove("too_long"), Some(1));
            let mut expected = whole.clone();
            expected.skipped_by_reason.remove("not_delivery");
            from_file.skipped_by_reason.remove("not_delivery");
            assert_eq!(from_file.lines, expected.lines, "{threads} threads");
            assert_eq!(from_file.totals, expected.totals);
            assert_eq!(from_file.conclusive, expected.conclusive);
            assert_eq!(from_file.skipped_by_reason, expected.skipped_by_reason);
        }
        assert_eq!(whole.lines, 40_002);
        assert_eq!(whole.attempts, 30_001);
    }

    #[test]
    fn ranges_split_lines_at_any_byte() {
        let text = format!("{BAN}\n{SENT}\n{QMGR}\n{SENT}\n");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let c = Classifier::builtin();
        let f = file.as_file();
        let len = text.len() as u64;
        for cut in 0..=len {
            let mut a = read_range(&c, &ReplayOptions::default(), f, 0, cut).unwrap();
            a.merge(read_range(&c, &ReplayOptions::default(), f, cut, len).unwrap());
            assert_eq!((a.lines, a.counts.attempts()), (4, 3), "cut at {cut}");
        }
        assert!(matches!(
            replay_file(
                &c,
                ip(),
                Path::new("/nonexistent/maillog"),
                &ReplayOptions::default()
            ),
            Err(ReplayError::Read { .. })
        ));
    }
}
