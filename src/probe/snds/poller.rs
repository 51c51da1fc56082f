//! Polls SNDS: fetches the ip-status file (and the data file) with the key,
//! retries what may pass, counts and logs every skip and failure. A failed
//! poll yields no verdict at all, so a failure can never block an IP.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;

use super::report::{
    parse_data, parse_ip_status, DataReport, FeedFormatError, IpStatusReport, SkippedRow,
};
use super::verdict::{snds_verdicts, SndsVerdicts};
use crate::http_client::{FetchError, HttpClient, HttpResponse};

/// Microsoft's ip-status endpoint (HTTPS only).
pub const DEFAULT_IP_STATUS_URL: &str =
    "https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx";
/// Microsoft's data endpoint.
pub const DEFAULT_DATA_URL: &str =
    "https://sendersupport.olc.protection.outlook.com/snds/data.aspx";

/// Skipped rows logged one by one per poll; the rest are only counted.
const LOGGED_SKIPS: usize = 5;

/// Something that GETs a URL: the project's [`HttpClient`], or a fake.
pub trait FeedFetch {
    fn get(&self, url: &str) -> impl Future<Output = Result<HttpResponse, FetchError>> + Send;
}

impl FeedFetch for HttpClient {
    fn get(&self, url: &str) -> impl Future<Output = Result<HttpResponse, FetchError>> + Send {
        HttpClient::get(self, url)
    }
}

/// The SNDS automated-access key, read from a Secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SndsKey(String);

impl SndsKey {
    /// The key as stored in the Secret; surrounding whitespace (a trailing
    /// newline from `echo` or a file) is dropped.
    pub fn new(text: &str) -> Result<Self, SndsError> {
        let key = text.trim();
        if key.is_empty() {
            return Err(SndsError::Key {
                problem: "the key is empty; put the key from the SNDS automated access page in the Secret".into(),
            });
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SndsError::Key {
                problem: "the key holds spaces or control characters; store only the key itself in the Secret".into(),
            });
        }
        Ok(SndsKey(key.to_string()))
    }

    /// The key from a Secret's data bytes.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, SndsError> {
        let text = std::str::from_utf8(bytes).map_err(|_| SndsError::Key {
            problem: "the Secret's value is not UTF-8 text".into(),
        })?;
        Self::new(text)
    }
}

impl std::fmt::Debug for SndsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SndsKey(<redacted>)")
    }
}

/// Where the two files are read from (without the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SndsFeed {
    pub ip_status_url: String,
    /// `None`: the filter results are not read.
    pub data_url: Option<String>,
}

impl Default for SndsFeed {
    fn default() -> Self {
        SndsFeed {
            ip_status_url: DEFAULT_IP_STATUS_URL.to_string(),
            data_url: Some(DEFAULT_DATA_URL.to_string()),
        }
    }
}

/// How often and how patiently a failing fetch is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per file per poll (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles for each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_secs(2),
        }
    }
}

/// Why a poll gave no verdicts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SndsError {
    #[error("SNDS key: {problem}")]
    Key { problem: String },

    #[error("the SNDS URL {url} already carries a key; give the URL without `key=` and put the key in the Secret")]
    KeyInUrl { url: String },

    #[error("SNDS {file}: {source} (after {attempts} attempt(s))")]
    Fetch {
        file: &'static str,
        attempts: u32,
        source: FetchError,
    },

    #[error("SNDS {file}: {url} answered HTTP {status} (after {attempts} attempt(s)){hint}")]
    Status {
        file: &'static str,
        url: String,
        status: u16,
        attempts: u32,
        hint: &'static str,
    },

    #[error("SNDS: {0}")]
    Format(#[from] FeedFormatError),
}

impl SndsError {
    /// The `kind` label of the feed error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            SndsError::Key { .. } | SndsError::KeyInUrl { .. } => "key",
            SndsError::Fetch { source, .. } => source.kind(),
            SndsError::Status { status, .. } if *status >= 500 => "http_5xx",
            SndsError::Status { .. } => "http_status",
            SndsError::Format(FeedFormatError::Html { .. }) => "html",
            SndsError::Format(FeedFormatError::NoValidRows { .. }) => "no_valid_rows",
        }
    }
}

/// SNDS's counters are the feed counters every feed keeps.
pub type SndsCounters = FeedCounters;

/// Monotonic counts of one feed for metrics (`mailfleet_feed_*{feed}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedCounters {
    pub polls: u64,
    pub successful_polls: u64,
    pub failed_polls: u64,
    /// Fetches tried again after a transient failure.
    pub retries: u64,
    /// Failures by kind (see [`SndsError::kind`]), the data file's included.
    pub errors: BTreeMap<&'static str, u64>,
    /// Rows of either file that could not be read.
    pub malformed_rows: u64,
    /// "Not blocked" verdicts not given because ip-status rows were skipped.
    pub withheld_clears: u64,
    pub blocked_verdicts: u64,
    /// Polls that gave verdicts although a part of the feed failed (SNDS's
    /// data file, a Postmaster domain).
    pub data_failures: u64,
}

impl FeedCounters {
    /// A poll that gave verdicts, `blocked` of them Blocked, with `withheld`
    /// "not blocked" verdicts held back for want of data.
    pub fn count_success(&mut self, blocked: usize, withheld: usize) {
        self.withheld_clears += withheld as u64;
        self.blocked_verdicts += blocked as u64;
        self.successful_polls += 1;
    }

    /// Adds another poller's counts (the runner keeps one total per feed).
    pub fn add(&mut self, other: &FeedCounters) {
        self.polls += other.polls;
        self.successful_polls += other.successful_polls;
        self.failed_polls += other.failed_polls;
        self.retries += other.retries;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.malformed_rows += other.malformed_rows;
        self.withheld_clears += other.withheld_clears;
        self.blocked_verdicts += other.blocked_verdicts;
        self.data_failures += other.data_failures;
    }
}

/// What one successful poll found.
#[derive(Clone, Debug, PartialEq)]
pub struct SndsPoll {
    pub verdicts: SndsVerdicts,
    pub status: IpStatusReport,
    pub data: Option<DataReport>,
    /// Why the data file could not be used, if it could not.
    pub data_error: Option<SndsError>,
}

/// Polls one SNDS account.
#[derive(Debug)]
pub struct SndsPoller<F = HttpClient> {
    feed: SndsFeed,
    key: SndsKey,
    retry: RetryPolicy,
    fetch: F,
    counters: SndsCounters,
}

impl<F: FeedFetch> SndsPoller<F> {
    pub fn new(feed: SndsFeed, key: SndsKey, retry: RetryPolicy, fetch: F) -> Self {
        SndsPoller {
            feed,
            key,
            retry,
            fetch,
            counters: SndsCounters::default(),
        }
    }

    pub fn counters(&self) -> &SndsCounters {
        &self.counters
    }

    /// One poll: verdicts for `pool_ips`, stamped `now`. On error nothing is
    /// decided (the engine keeps the feed's last verdicts).
    pub async fn poll(
        &mut self,
        pool_ips: &[IpAddr],
        now: Timestamp,
    ) -> Result<SndsPoll, SndsError> {
        self.counters.polls += 1;
        let status = match self.read_status().await {
            Ok(status) => status,
            Err(error) => {
                self.counters.failed_polls += 1;
                *self.counters.errors.entry(error.kind()).or_default() += 1;
                tracing::warn!(
                    feed = "snds",
                    kind = error.kind(),
                    "poll failed, no verdicts: {error}"
                );
                return Err(error);
            }
        };
        let (data, data_error) = match self.feed.data_url.clone() {
            None => (None, None),
            Some(url) => match self.read_data(&url).await {
                Ok(data) => (Some(data), None),
                Err(error) => {
                    self.counters.data_failures += 1;
                    *self.counters.errors.entry(error.kind()).or_default() += 1;
                    tracing::warn!(
                        feed = "snds",
                        kind = error.kind(),
                        "data file unusable, filter results left out: {error}"
                    );
                    (None, Some(error))
                }
            },
        };
        let verdicts = snds_verdicts(pool_ips, &status, data.as_ref(), now);
        if verdicts.withheld_clears > 0 {
            tracing::warn!(
                feed = "snds",
                "{} ip-status row(s) skipped: {} pool IP(s) not cleared this poll",
                status.skipped.len(),
                verdicts.withheld_clears
            );
        }
        let blocked = verdicts
            .verdicts
            .iter()
            .filter(|v| v.verdict.blocked)
            .count();
        self.counters
            .count_success(blocked, verdicts.withheld_clears);
        Ok(SndsPoll {
            verdicts,
            status,
            data,
            data_error,
        })
    }

    async fn read_status(&mut self) -> Result<IpStatusReport, SndsError> {
        let url = self.feed.ip_status_url.clone();
        let body = self.fetch_csv("ip-status", &url).await?;
        let report = parse_ip_status(&body)?;
        self.note_skips("ip-status", &report.skipped);
        Ok(report)
    }

    async fn read_data(&mut self, url: &str) -> Result<DataReport, SndsError> {
        let body = self.fetch_csv("data", url).await?;
        let report = parse_data(&body)?;
        self.note_skips("data", &report.skipped);
        Ok(report)
    }

    fn note_skips(&mut self, file: &'static str, skipped: &[SkippedRow]) {
        self.counters.malformed_rows += skipped.len() as u64;
        for row in skipped.iter().take(LOGGED_SKIPS) {
            tracing::warn!(
                feed = "snds",
                file,
                line = row.line,
                "skipped row: {}",
                row.problem
            );
        }
        if skipped.len() > LOGGED_SKIPS {
            tracing::warn!(
                feed = "snds",
                file,
                "{} more skipped row(s)",
                skipped.len() - LOGGED_SKIPS
            );
        }
    }

    /// The body of a 2xx response, trying again on timeouts, connection
    /// failures, 5xx and 429.
    async fn fetch_csv(&mut self, file: &'static str, base: &str) -> Result<String, SndsError> {
        let url = url_with_key(base, &self.key)?;
        let shown = base.split('?').next().unwrap_or_default().to_string();
        let attempts = self.retry.attempts.max(1);
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        loop {
            let failure = match self.fetch.get(&url).await {
                Ok(response) if (200..300).contains(&response.status) => {
                    return csv_body(file, response);
                }
                Ok(response) => {
                    let error = SndsError::Status {
                        file,
                        url: shown.clone(),
                        status: response.status,
                        attempts: attempt,
                        hint: status_hint(response.status),
                    };
                    if !(response.status >= 500 || response.status == 429) {
                        return Err(error);
                    }
                    error
                }
                Err(source) => {
                    let transient = source.is_transient();
                    let error = SndsError::Fetch {
                        file,
                        attempts: attempt,
                        source,
                    };
                    if !transient {
                        return Err(error);
                    }
                    error
                }
            };
            if attempt >= attempts {
                return Err(failure);
            }
            self.counters.retries += 1;
            tracing::warn!(
                feed = "snds",
                file,
                attempt,
                "will retry in {backoff:?}: {failure}"
            );
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }
}

fn csv_body(file: &'static str, response: HttpResponse) -> Result<String, SndsError> {
    let body = String::from_utf8_lossy(&response.body).into_owned();
    let html_type = response
        .content_type
        .as_deref()
        .is_some_and(|t| t.to_ascii_lowercase().contains("html"));
    if html_type {
        return Err(FeedFormatError::Html {
            file,
            start: body
                .chars()
                .take(80)
                .collect::<String>()
                .replace(['\r', '\n'], " "),
        }
        .into());
    }
    Ok(body)
}

fn status_hint(status: u16) -> &'static str {
    match status {
        300..=399 => ": a redirect, most likely to a sign-in page; check the key",
        401 | 403 => ": the key was refused; check it and that automated access is enabled in SNDS",
        404 => ": check the URL",
        429 => ": rate limited",
        500..=599 => ": the feed's server failed",
        _ => "",
    }
}

fn url_with_key(base: &str, key: &SndsKey) -> Result<String, SndsError> {
    let shown = base.split('?').next().unwrap_or_default().to_string();
    let query = base.split_once('?').map(|(_, q)| q).unwrap_or_default();
    if query
        .split('&')
        .any(|pair| pair.to_ascii_lowercase().starts_with("key="))
    {
        return Err(SndsError::KeyInUrl { url: shown });
    }
    let separator = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{separator}key={}", percent_encode(&key.0)))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_trimmed_checked_and_never_shown() {
        let key = SndsKey::new(" 1a2b-3c\n").unwrap();
        assert_eq!(format!("{key:?}"), "SndsKey(<redacted>)");
        assert!(SndsKey::new("\n").is_err());
        assert!(SndsKey::new("a b").is_err());
        assert!(SndsKey::from_secret_bytes(&[0xff, 0xfe]).is_err());
        assert_eq!(
            url_with_key("http://h/snds/data.aspx", &key).unwrap(),
            "http://h/snds/data.aspx?key=1a2b-3c"
        );
        assert_eq!(
            url_with_key(
                "http://h/snds/data.aspx?date=110521",
                &SndsKey::new("k+/=").unwrap()
            )
            .unwrap(),
            "http://h/snds/data.aspx?date=110521&key=k%2B%2F%3D"
        );
        let err = url_with_key("http://h/ipStatus.aspx?key=LEAKED", &key).unwrap_err();
        assert!(!err.to_string().contains("LEAKED"), "{err}");
    }

    #[test]
    fn html_content_type_is_refused() {
        let err = csv_body(
            "ip-status",
            HttpResponse {
                status: 200,
                content_type: Some("text/html; charset=utf-8".into()),
                retry_after: None,
                body: b"1.2.3.4,1.2.3.4,Yes,x".to_vec(),
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), "html");
    }
}
