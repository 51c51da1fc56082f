//! The two SNDS CSV files, read row by row. A row that cannot be read is
//! skipped and reported with its line number and problem; a body that is not
//! CSV at all (an HTML login or error page, binary data) is an error.

use std::net::Ipv4Addr;

use super::csv::{records, RecordError};

/// One `firstIP,lastIP,Yes,"Blocked due to ..."` row of the ip-status file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// The feed's own words ("Blocked due to user complaints or other evidence of spamming").
    pub reason: String,
    pub line: usize,
}

impl BlockedRange {
    pub fn covers(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

/// A row that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRow {
    pub line: usize,
    pub problem: RowProblem,
}

/// Why one row of an SNDS file was skipped. The feed is written by SNDS, not
/// by the operator, so these name the column and what it held rather than a fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowProblem {
    #[error(transparent)]
    Record(#[from] RecordError),

    #[error("expected firstIP,lastIP,Yes|No,reason; found {found} column(s)")]
    StatusColumns { found: usize },

    #[error("expected {DATA_COLUMNS} columns (IP, activity start, end, RCPT, DATA, recipients, filter result, complaint rate, trap start, end, trap hits, HELO, MAIL FROM, comments); found {found}")]
    DataColumns { found: usize },

    #[error("the range {first}-{last} ends before it starts")]
    BackwardRange { first: Ipv4Addr, last: Ipv4Addr },

    #[error("blocked column is `{value}`; expected Yes or No")]
    BlockedFlag { value: String },

    #[error("filter result is `{value}`; expected GREEN, YELLOW or RED")]
    FilterResult { value: String },

    #[error("{column} `{value}` is not an IPv4 address")]
    NotIpv4 { column: &'static str, value: String },

    #[error("{column} `{value}` is not a whole number")]
    NotCount { column: &'static str, value: String },
}

/// The ip-status file: the blocked ranges it lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpStatusReport {
    pub ranges: Vec<BlockedRange>,
    pub skipped: Vec<SkippedRow>,
}

/// The SNDS spam filter verdict for an IP's mail on one day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FilterResult {
    /// Spam filter verdict for up to 10 % of the mail.
    Green,
    /// Between 10 % and 90 %.
    Yellow,
    /// More than 90 %.
    Red,
}

impl FilterResult {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterResult::Green => "GREEN",
            FilterResult::Yellow => "YELLOW",
            FilterResult::Red => "RED",
        }
    }
}

/// One row of the data file (14 columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRow {
    pub ip: Ipv4Addr,
    pub activity_start: String,
    pub activity_end: String,
    pub rcpt_commands: u64,
    pub data_commands: u64,
    pub recipients: u64,
    pub filter: FilterResult,
    /// As SNDS writes it, such as `< 0.1%` or `2.3%`.
    pub complaint_rate: String,
    pub trap_message_start: String,
    pub trap_message_end: String,
    pub trap_hits: u64,
    pub sample_helo: String,
    pub sample_mail_from: String,
    pub comments: String,
    pub line: usize,
}

/// The data file: one row per IP and activity period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataReport {
    pub rows: Vec<DataRow>,
    pub skipped: Vec<SkippedRow>,
}

/// A body that is not the CSV file asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedFormatError {
    #[error("the {file} response is HTML, not CSV (a login or error page: is the SNDS key valid and automated access enabled?): {start}")]
    Html { file: &'static str, start: String },

    #[error("the {file} response holds no readable row ({skipped} rows skipped; line {line}: {problem})")]
    NoValidRows {
        file: &'static str,
        skipped: usize,
        line: usize,
        problem: RowProblem,
    },
}

const DATA_COLUMNS: usize = 14;

/// Reads the ip-status file. An empty file is valid: nothing is blocked.
pub fn parse_ip_status(text: &str) -> Result<IpStatusReport, FeedFormatError> {
    const FILE: &str = "ip-status";
    reject_html(FILE, text)?;
    let mut report = IpStatusReport::default();
    let mut readable = 0usize;
    for (index, (line, fields)) in records(text).enumerate() {
        let fields = match fields {
            Ok(fields) => fields,
            Err(problem) => {
                report.skipped.push(SkippedRow {
                    line,
                    problem: problem.into(),
                });
                continue;
            }
        };
        if index == 0 && is_header(&fields, 3) {
            continue;
        }
        match read_status_row(line, &fields) {
            Ok(range) => {
                readable += 1;
                report.ranges.extend(range);
            }
            Err(problem) => report.skipped.push(SkippedRow { line, problem }),
        }
    }
    nothing_readable(FILE, readable, &report.skipped)?;
    Ok(report)
}

/// Reads the data file.
pub fn parse_data(text: &str) -> Result<DataReport, FeedFormatError> {
    const FILE: &str = "data";
    reject_html(FILE, text)?;
    let mut report = DataReport::default();
    for (index, (line, fields)) in records(text).enumerate() {
        let fields = match fields {
            Ok(fields) => fields,
            Err(problem) => {
                report.skipped.push(SkippedRow {
                    line,
                    problem: problem.into(),
                });
                continue;
            }
        };
        if index == 0 && is_header(&fields, DATA_COLUMNS) {
            continue;
        }
        match read_data_row(line, fields) {
            Ok(row) => report.rows.push(row),
            Err(problem) => report.skipped.push(SkippedRow { line, problem }),
        }
    }
    nothing_readable(FILE, report.rows.len(), &report.skipped)?;
    Ok(report)
}

/// `Ok(None)` for a valid row that blocks nothing (`No`).
fn read_status_row(line: usize, fields: &[String]) -> Result<Option<BlockedRange>, RowProblem> {
    if fields.len() < 3 {
        return Err(RowProblem::StatusColumns {
            found: fields.len(),
        });
    }
    let first = parse_ipv4("first IP", &fields[0])?;
    let last = parse_ipv4("last IP", &fields[1])?;
    if first > last {
        return Err(RowProblem::BackwardRange { first, last });
    }
    let blocked = match fields[2].to_ascii_lowercase().as_str() {
        "yes" => true,
        "no" => false,
        other => {
            return Err(RowProblem::BlockedFlag {
                value: other.to_string(),
            })
        }
    };
    if !blocked {
        return Ok(None);
    }
    let reason = fields
        .get(3)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "blocked (SNDS gave no reason)".to_string());
    Ok(Some(BlockedRange {
        first,
        last,
        reason,
        line,
    }))
}

fn read_data_row(line: usize, fields: Vec<String>) -> Result<DataRow, RowProblem> {
    if fields.len() != DATA_COLUMNS {
        return Err(RowProblem::DataColumns {
            found: fields.len(),
        });
    }
    let ip = parse_ipv4("IP", &fields[0])?;
    let filter = match fields[6].to_ascii_uppercase().as_str() {
        "GREEN" => FilterResult::Green,
        "YELLOW" => FilterResult::Yellow,
        "RED" => FilterResult::Red,
        _ => {
            return Err(RowProblem::FilterResult {
                value: fields[6].clone(),
            })
        }
    };
    let rcpt_commands = count("RCPT commands", &fields[3])?;
    let data_commands = count("DATA commands", &fields[4])?;
    let recipients = count("recipients", &fields[5])?;
    let trap_hits = count("trap hits", &fields[10])?;
    let mut text = fields.into_iter();
    let mut next = || text.next().unwrap_or_default();
    let _ip = next();
    let activity_start = next();
    let activity_end = next();
    let (_rcpt, _data, _recipients, _filter) = (next(), next(), next(), next());
    let complaint_rate = next();
    let trap_message_start = next();
    let trap_message_end = next();
    let _trap_hits = next();
    Ok(DataRow {
        ip,
        activity_start,
        activity_end,
        rcpt_commands,
        data_commands,
        recipients,
        filter,
        complaint_rate,
        trap_message_start,
        trap_message_end,
        trap_hits,
        sample_helo: next(),
        sample_mail_from: next(),
        comments: next(),
        line,
    })
}

fn parse_ipv4(column: &'static str, text: &str) -> Result<Ipv4Addr, RowProblem> {
    text.trim().parse().map_err(|_| RowProblem::NotIpv4 {
        column,
        value: text.to_string(),
    })
}

fn count(column: &'static str, text: &str) -> Result<u64, RowProblem> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse().map_err(|_| RowProblem::NotCount {
        column,
        value: text.to_string(),
    })
}

/// A first line is a column header when it has the file's columns and its
/// first one names the IP column instead of holding an address. Anything
/// looser would let a one-line error text pass as an empty (all clear) file.
fn is_header(fields: &[String], columns: usize) -> bool {
    fields.len() >= columns
        && fields.first().is_some_and(|f| {
            f.to_ascii_lowercase().contains("ip") && !f.chars().any(|c| c.is_ascii_digit())
        })
}

fn reject_html(file: &'static str, text: &str) -> Result<(), FeedFormatError> {
    let start = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    let head: String = start
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    if start.starts_with('<') || head.contains("<html") || head.contains("<!doctype") {
        return Err(FeedFormatError::Html {
            file,
            start: start
                .chars()
                .take(80)
                .collect::<String>()
                .replace(['\r', '\n'], " "),
        });
    }
    Ok(())
}

fn nothing_readable(
    file: &'static str,
    readable: usize,
    skipped: &[SkippedRow],
) -> Result<(), FeedFormatError> {
    match skipped.first() {
        Some(first) if readable == 0 => Err(FeedFormatError::NoValidRows {
            file,
            skipped: skipped.len(),
            line: first.line,
            problem: first.problem.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
1.2.3.0,1.2.3.255,Yes,\"Blocked due to user complaints or other evidence of spamming\"\r
203.0.113.10,203.0.113.10,Yes,\"Blocked due to user complaints or other evidence of spamming\"\r
198.51.100.1,198.51.100.1,No,\"\"\r
";

    #[test]
    fn blocked_ranges_are_read() {
        let report = parse_ip_status(STATUS).unwrap();
        assert_eq!(report.ranges.len(), 2);
        assert!(report.skipped.is_empty());
        let range = &report.ranges[0];
        assert!(range.covers("1.2.3.77".parse().unwrap()));
        assert!(!range.covers("1.2.4.0".parse().unwrap()));
        assert!(range.reason.starts_with("Blocked due to user complaints"));
        assert_eq!(report.ranges[1].line, 2);
    }

    #[test]
    fn an_empty_status_blocks_nothing() {
        assert_eq!(parse_ip_status("").unwrap(), IpStatusReport::default());
        assert_eq!(parse_ip_status("\r\n").unwrap(), IpStatusReport::default());
    }

    #[test]
    fn malformed_rows_are_skipped_with_their_line() {
        let text = format!(
            "{STATUS}1.2.3.4,Yes\n9.9.9.9,1.1.1.1,Yes,x\nnot-an-ip,1.2.3.4,Yes,x\n5.5.5.5,5.5.5.5,Maybe,x\n6.6.6.6,6.6.6.6,Yes,\"open\n"
        );
        let report = parse_ip_status(&text).unwrap();
        assert_eq!(report.ranges.len(), 2);
        let lines: Vec<usize> = report.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 8]);
        assert!(report.skipped[0]
            .problem
            .to_string()
            .contains("2 column(s)"));
        assert!(report.skipped[1]
            .problem
            .to_string()
            .contains("ends before it starts"));
        assert!(report.skipped[2]
            .problem
            .to_string()
            .contains("`not-an-ip`"));
        assert!(report.skipped[3].problem.to_string().contains("`maybe`"));
        assert!(report.skipped[4].problem.to_string().contains("not closed"));
    }

    #[test]
    fn html_and_garbage_are_errors_not_reports() {
        let err = parse_ip_status("<!DOCTYPE html><html><body>Sign in</body></html>").unwrap_err();
        assert!(
            matches!(
                err,
                FeedFormatError::Html {
                    file: "ip-status",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("Sign in"));
        let err = parse_data("\n  <html>error</html>").unwrap_err();
        assert!(matches!(err, FeedFormatError::Html { file: "data", .. }));
        let err = parse_ip_status("\u{1}\u{2}\u{3}binary\n%PDF-1.4 garbage").unwrap_err();
        assert!(
            matches!(err, FeedFormatError::NoValidRows { skipped: 2, .. }),
            "{err}"
        );
        let err = parse_ip_status("Internal server error\n").unwrap_err();
        assert!(
            matches!(err, FeedFormatError::NoValidRows { skipped: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_header_line_is_not_a_skip() {
        let report =
            parse_ip_status(&format!("First IP,Last IP,Blocked,Details\n{STATUS}")).unwrap();
        assert!(report.skipped.is_empty());
        assert_eq!(report.ranges.len(), 2);
    }

    const DATA: &str = "\
203.0.113.10,11/5/2021 8:00 AM,11/6/2021 7:59 AM,1523,1498,1530,RED,4.1%,11/5/2021 9:12 AM,11/5/2021 6:40 PM,17,mx1.example.jp,bounce@example.jp,\r
203.0.113.11,11/5/2021 8:00 AM,11/6/2021 7:59 AM,2100,2080,2110,GREEN,< 0.1%,,,0,mx2.example.jp,bounce@example.jp,\"sample, with comma\"\r
";

    #[test]
    fn data_rows_carry_the_filter_result() {
        let report = parse_data(DATA).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.rows.len(), 2);
        let red = &report.rows[0];
        assert_eq!(red.ip, "203.0.113.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(red.filter, FilterResult::Red);
        assert_eq!(
            (
                red.rcpt_commands,
                red.data_commands,
                red.recipients,
                red.trap_hits
            ),
            (1523, 1498, 1530, 17)
        );
        assert_eq!(red.complaint_rate, "4.1%");
        assert_eq!(red.sample_helo, "mx1.example.jp");
        let green = &report.rows[1];
        assert_eq!(green.filter, FilterResult::Green);
        assert_eq!(green.comments, "sample, with comma");
        assert_eq!(green.trap_message_start, "");
    }

    #[test]
    fn bad_data_rows_are_skipped() {
        let text = format!(
            "{DATA}203.0.113.12,a,b,1,1,1,PURPLE,0%,,,0,h,m,c\n203.0.113.13,a,b,x,1,1,GREEN,0%,,,0,h,m,c\n203.0.113.14,a,b\n"
        );
        let report = parse_data(&text).unwrap();
        assert_eq!(report.rows.len(), 2);
        assert_eq!(report.skipped.len(), 3);
        assert!(report.skipped[0].problem.to_string().contains("PURPLE"));
        assert!(report.skipped[1]
            .problem
            .to_string()
            .contains("RCPT commands `x`"));
        assert!(report.skipped[2].problem.to_string().contains("found 3"));
    }
}
