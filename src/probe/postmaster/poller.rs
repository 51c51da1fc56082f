//! Polls Postmaster Tools: an access token (the signed assertion exchanged
//! at the token endpoint, kept until shortly before its `expires_in` runs
//! out, and dropped and fetched again once when the API refuses it with 401),
//! then each domain's recent traffic statistics, page by page. Retries what may pass, counts and logs every
//! skip and failure. A failed poll yields no verdict, so a failure can never
//! block an IP; a domain that fails keeps every IP from being cleared.

use std::net::IpAddr;
use std::time::Duration;

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde_json::Value;

use super::account::{AccountKeyError, ServiceAccount};
use super::stats::{
    latest_day, parse_stats_page, postmaster_verdicts, start_of, DayStats, PostmasterVerdicts,
    StatsFormatError,
};
use crate::http_client::{FetchError, HttpClient, HttpResponse, HttpUrl};
use crate::probe::snds::{FeedCounters, RetryPolicy};

/// The Postmaster Tools API (v1).
pub const DEFAULT_API_URL: &str = "https://gmailpostmastertools.googleapis.com";
/// Google's OAuth 2.0 token endpoint (the `token_uri` of Google's key files).
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Days of statistics asked for: Google publishes a day one or two days late;
/// the newest day found is the one judged.
pub const LOOKBACK_DAYS: i64 = 4;
/// Pages read per domain and poll (a few days fit in one page).
pub const MAX_PAGES: usize = 10;
const PAGE_SIZE: usize = 100;
/// Skips logged one by one per domain; the rest are only counted.
const LOGGED_SKIPS: usize = 5;
/// An access token is fetched again this long before Google says it expires,
/// so a poll never starts with a token that runs out half-way.
pub const TOKEN_RENEW_MARGIN_SECONDS: i64 = 300;
/// `expires_in` values past this are read as this (Google's are 3599).
const MAX_TOKEN_LIFETIME_SECONDS: i64 = 24 * 3600;

/// Where the feed is read, and for which domains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostmasterFeed {
    /// The API base, without `/v1`.
    pub api_url: String,
    /// `None`: the key file's `token_uri`.
    pub token_url: Option<String>,
    pub domains: Vec<String>,
}

/// Why a poll, a token or a domain gave nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostmasterError {
    #[error("{0}")]
    Account(#[from] AccountKeyError),

    #[error("Postmaster {what}: {source} (after {attempts} attempt(s))")]
    Fetch {
        what: String,
        attempts: u32,
        source: FetchError,
    },

    #[error("Postmaster {what}: {url} answered HTTP {status} (after {attempts} attempt(s)){hint}")]
    Status {
        what: String,
        url: String,
        status: u16,
        attempts: u32,
        hint: &'static str,
    },

    #[error("Postmaster {what}: {source}")]
    Format {
        what: String,
        source: StatsFormatError,
    },

    #[error("Postmaster access token: {problem}")]
    Token { problem: String },

    #[error("Postmaster {domain}: more than {pages} pages of statistics; the rest is not read")]
    TooManyPages { domain: String, pages: usize },

    #[error("Postmaster: none of the {domains} domain(s) could be read; the last failure: {last}")]
    NoDomainRead {
        domains: usize,
        last: Box<PostmasterError>,
    },
}

impl PostmasterError {
    /// The `kind` label of the feed error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            PostmasterError::Account(_) => "key",
            PostmasterError::Fetch { source, .. } => source.kind(),
            PostmasterError::Status { status, .. } => match status {
                401 | 403 => "unauthorized",
                429 => "rate_limited",
                500..=599 => "http_5xx",
                _ => "http_status",
            },
            PostmasterError::Format { source, .. } => source.kind(),
            PostmasterError::Token { .. } => "token",
            PostmasterError::TooManyPages { .. } => "too_many_pages",
            PostmasterError::NoDomainRead { last, .. } => last.kind(),
        }
    }
}

/// What one successful poll found.
#[derive(Clone, Debug, PartialEq)]
pub struct PostmasterPoll {
    pub verdicts: PostmasterVerdicts,
    /// The newest day of each domain that had one.
    pub days: Vec<DayStats>,
    /// The domains that could not be read, and why.
    pub domain_errors: Vec<(String, PostmasterError)>,
}

/// Polls Postmaster Tools for one service account.
#[derive(Debug)]
pub struct PostmasterPoller {
    feed: PostmasterFeed,
    account: ServiceAccount,
    retry: RetryPolicy,
    client: HttpClient,
    counters: FeedCounters,
    /// The last access token, until [`TOKEN_RENEW_MARGIN_SECONDS`] before it expires.
    token: PostmasterTokenCache,
}

/// The access token of one service account and token endpoint, kept between
/// polls by whoever runs them ([`PostmasterPoller::with_token_cache`]).
#[derive(Debug, Default)]
pub struct PostmasterTokenCache {
    /// `client_email token_url`: another account or endpoint drops the token.
    owner: String,
    cached: Option<CachedToken>,
}

/// An access token and when to stop using it.
struct CachedToken {
    token: AccessToken,
    renew_at: Timestamp,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &"<redacted>")
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

impl PostmasterPoller {
    pub fn new(
        feed: PostmasterFeed,
        account: ServiceAccount,
        retry: RetryPolicy,
        client: HttpClient,
    ) -> Self {
        PostmasterPoller {
            feed,
            account,
            retry,
            client,
            counters: FeedCounters::default(),
            token: PostmasterTokenCache::default(),
        }
    }

    /// Uses the token kept from an earlier poller (dropped when it belongs
    /// to another account or token endpoint).
    pub fn with_token_cache(mut self, cache: PostmasterTokenCache) -> Self {
        if cache.owner == self.token_owner() {
            self.token = cache;
        }
        self
    }

    /// The token to keep for the next poll.
    pub fn into_token_cache(self) -> PostmasterTokenCache {
        self.token
    }

    fn token_owner(&self) -> String {
        format!("{} {}", self.account.client_email(), self.token_url())
    }

    fn token_url(&self) -> String {
        self.feed
            .token_url
            .clone()
            .unwrap_or_else(|| self.account.token_uri().to_string())
    }

    pub fn counters(&self) -> &FeedCounters {
        &self.counters
    }

    /// One poll: verdicts for `pool_ips`, stamped `now`, from the days up to
    /// `now`'s (UTC). On error nothing is decided.
    pub async fn poll(
        &mut self,
        pool_ips: &[IpAddr],
        now: Timestamp,
    ) -> Result<PostmasterPoll, PostmasterError> {
        self.counters.polls += 1;
        let result = self.read_all(now).await;
        let (days, domain_errors) = match result {
            Ok(read) => read,
            Err(error) => {
                self.counters.failed_polls += 1;
                self.count_error(&error);
                tracing::warn!(
                    feed = "postmaster",
                    kind = error.kind(),
                    "poll failed, no verdicts: {error}"
                );
                return Err(error);
            }
        };
        if !domain_errors.is_empty() {
            self.counters.data_failures += 1;
        }
        let verdicts = postmaster_verdicts(pool_ips, &days, domain_errors.len(), now);
        if verdicts.withheld_clears > 0 {
            tracing::warn!(
                feed = "postmaster",
                "{} pool IP(s) not cleared this poll: a domain was not read or a BAD category shows only part of its IPs",
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
        Ok(PostmasterPoll {
            verdicts,
            days,
            domain_errors,
        })
    }

    fn count_error(&mut self, error: &PostmasterError) {
        *self.counters.errors.entry(error.kind()).or_default() += 1;
    }

    /// The newest day of every domain read, and the failures of the others.
    #[allow(clippy::type_complexity)]
    async fn read_all(
        &mut self,
        now: Timestamp,
    ) -> Result<(Vec<DayStats>, Vec<(String, PostmasterError)>), PostmasterError> {
        let mut token = self.access_token(now).await?;
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        let mut days = Vec::new();
        let mut failures = Vec::new();
        let mut renewed = false;
        for domain in self.feed.domains.clone() {
            let mut read = self.read_domain(&domain, &token, today).await;
            // A token revoked or expired early: dropped, fetched again and
            // the domain read again, once per poll.
            if !renewed && matches!(read, Err(PostmasterError::Status { status: 401, .. })) {
                renewed = true;
                self.token.cached = None;
                tracing::info!(
                    feed = "postmaster",
                    domain,
                    "the access token was refused (401); fetching a new one"
                );
                token = self.access_token(now).await?;
                read = self.read_domain(&domain, &token, today).await;
            }
            match read {
                Ok(Some(day)) => days.push(day),
                Ok(None) => tracing::info!(
                    feed = "postmaster",
                    domain,
                    "no statistics for the last {LOOKBACK_DAYS} days (too little mail to Gmail, or data not yet published)"
                ),
                Err(error) => {
                    self.count_error(&error);
                    tracing::warn!(
                        feed = "postmaster",
                        domain,
                        kind = error.kind(),
                        "domain not read: {error}"
                    );
                    failures.push((domain, error));
                }
            }
        }
        if days.is_empty() && !failures.is_empty() && failures.len() == self.feed.domains.len() {
            let (_, last) = failures.pop().expect("checked non-empty");
            // The domains' errors were counted one by one; the poll's error is the summary.
            *self.counters.errors.entry(last.kind()).or_default() -= 1;
            return Err(PostmasterError::NoDomainRead {
                domains: self.feed.domains.len(),
                last: Box::new(last),
            });
        }
        Ok((days, failures))
    }

    /// An access token for the poll: the one kept from an earlier poll while
    /// it has more than [`TOKEN_RENEW_MARGIN_SECONDS`] left, else a new one.
    async fn access_token(&mut self, now: Timestamp) -> Result<AccessToken, PostmasterError> {
        if let Some(cached) = self.token.cached.as_ref().filter(|c| now < c.renew_at) {
            return Ok(cached.token.clone());
        }
        self.token = PostmasterTokenCache {
            owner: self.token_owner(),
            cached: None,
        };
        let (token, expires_in) = self.fetch_access_token(now).await?;
        // Without `expires_in` the token is used for this poll only.
        if let Some(seconds) = expires_in {
            let keep = seconds.min(MAX_TOKEN_LIFETIME_SECONDS) - TOKEN_RENEW_MARGIN_SECONDS;
            if keep > 0 {
                if let Ok(renew_at) = now.checked_add(jiff::SignedDuration::from_secs(keep)) {
                    self.token.cached = Some(CachedToken {
                        token: token.clone(),
                        renew_at,
                    });
                }
            }
        }
        Ok(token)
    }

    /// The signed assertion exchanged at the token endpoint, and the token's
    /// `expires_in` when it has one. Google's answer: `{"access_token": ...,
    /// "expires_in": 3599, "token_type": "Bearer"}`.
    async fn fetch_access_token(
        &mut self,
        now: Timestamp,
    ) -> Result<(AccessToken, Option<i64>), PostmasterError> {
        let what = "access token".to_string();
        let token_url = self.token_url();
        let url = HttpUrl::parse(&token_url).map_err(|source| PostmasterError::Fetch {
            what: what.clone(),
            attempts: 0,
            source,
        })?;
        let assertion = self.account.assertion(&token_url, now)?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ];
        let (client, url_ref, headers_ref) = (&self.client, &url, &headers);
        let response = send_with_retry(
            self.retry,
            &mut self.counters.retries,
            &what,
            &url,
            move || client.post(url_ref, headers_ref, body.clone().into_bytes()),
        )
        .await?;
        let text = String::from_utf8_lossy(&response.body);
        if !(200..300).contains(&response.status) {
            // OAuth errors are `{"error": "invalid_grant", "error_description": "..."}`: no secret in them.
            let said = serde_json::from_str::<Value>(&text)
                .ok()
                .map(|v| {
                    let field =
                        |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    format!("{} {}", field("error"), field("error_description"))
                })
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| start_of(&text));
            return Err(PostmasterError::Token {
                problem: format!(
                    "{} answered HTTP {}: {}; check that the key file is current and the service account is enabled",
                    url.redacted(),
                    response.status,
                    said.trim()
                ),
            });
        }
        if is_html(&response, &text) {
            return Err(PostmasterError::Format {
                what,
                source: StatsFormatError::Html {
                    start: start_of(&text),
                },
            });
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| PostmasterError::Format {
            what: what.clone(),
            source: StatsFormatError::NotJson {
                detail: super::stats::json_problem(&e).to_string(),
                start: String::new(),
            },
        })?;
        match value.get("access_token").and_then(Value::as_str) {
            Some(token) if !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()) => {
                let expires_in = value
                    .get("expires_in")
                    .and_then(Value::as_i64)
                    .filter(|s| *s > 0);
                Ok((AccessToken(format!("Bearer {token}")), expires_in))
            }
            _ => Err(PostmasterError::Token {
                problem: format!(
                    "the answer of {} has no usable `access_token`",
                    url.redacted()
                ),
            }),
        }
    }

    /// The newest day of `domain` within the look-back, reading every page.
    async fn read_domain(
        &mut self,
        domain: &str,
        token: &AccessToken,
        today: Date,
    ) -> Result<Option<DayStats>, PostmasterError> {
        let what = format!("{domain} traffic statistics");
        let start = today
            .checked_sub((LOOKBACK_DAYS - 1).days())
            .unwrap_or(today);
        let end = today.checked_add(1.day()).unwrap_or(today);
        let base = format!(
            "{}/v1/domains/{domain}/trafficStats?startDate.year={}&startDate.month={}&startDate.day={}&endDate.year={}&endDate.month={}&endDate.day={}&pageSize={PAGE_SIZE}",
            self.feed.api_url.trim_end_matches('/'),
            start.year(),
            start.month(),
            start.day(),
            end.year(),
            end.month(),
            end.day()
        );
        let mut stats = Vec::new();
        let mut page_token: Option<String> = None;
        let mut skipped = 0usize;
        for _ in 0..MAX_PAGES {
            let text = match &page_token {
                None => base.clone(),
                Some(t) => format!("{base}&pageToken={}", percent_encode(t)),
            };
            let url = HttpUrl::parse(&text).map_err(|source| PostmasterError::Fetch {
                what: what.clone(),
                attempts: 0,
                source,
            })?;
            let headers = [
                ("accept", "application/json"),
                ("authorization", &token.0[..]),
            ];
            let (client, url_ref, headers_ref) = (&self.client, &url, &headers);
            let response = send_with_retry(
                self.retry,
                &mut self.counters.retries,
                &what,
                &url,
                move || client.get_with(url_ref, headers_ref),
            )
            .await?;
            if !(200..300).contains(&response.status) {
                return Err(PostmasterError::Status {
                    what,
                    url: url.redacted(),
                    status: response.status,
                    attempts: 1,
                    hint: status_hint(response.status),
                });
            }
            let body = String::from_utf8_lossy(&response.body).into_owned();
            if is_html(&response, &body) {
                return Err(PostmasterError::Format {
                    what,
                    source: StatsFormatError::Html {
                        start: start_of(&body),
                    },
                });
            }
            let page =
                parse_stats_page(domain, &body).map_err(|source| PostmasterError::Format {
                    what: what.clone(),
                    source,
                })?;
            for why in page
                .skipped
                .iter()
                .take(LOGGED_SKIPS.saturating_sub(skipped))
            {
                tracing::warn!(feed = "postmaster", domain, "skipped: {why}");
            }
            skipped += page.skipped_count;
            self.counters.malformed_rows += page.skipped_count as u64;
            stats.extend(page.stats);
            match page.next_page_token {
                None => {
                    if skipped > LOGGED_SKIPS {
                        tracing::warn!(
                            feed = "postmaster",
                            domain,
                            "{} more skipped part(s)",
                            skipped - LOGGED_SKIPS
                        );
                    }
                    return Ok(latest_day(stats));
                }
                Some(next) => page_token = Some(next),
            }
        }
        Err(PostmasterError::TooManyPages {
            domain: domain.to_string(),
            pages: MAX_PAGES,
        })
    }
}

/// Sends until an answer that is final: 2xx, or a status that another try
/// would not change. Tries again on timeouts, connection failures, 5xx and
/// 429 (counted in `retries`), then gives up with the last failure.
async fn send_with_retry<F, Fut>(
    retry: RetryPolicy,
    retries: &mut u64,
    what: &str,
    url: &HttpUrl,
    request: F,
) -> Result<HttpResponse, PostmasterError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<HttpResponse, FetchError>>,
{
    let attempts = retry.attempts.max(1);
    let mut backoff: Duration = retry.backoff;
    let mut attempt = 1;
    loop {
        let failure = match request().await {
            Ok(response) if response.status >= 500 || response.status == 429 => {
                PostmasterError::Status {
                    what: what.to_string(),
                    url: url.redacted(),
                    status: response.status,
                    attempts: attempt,
                    hint: status_hint(response.status),
                }
            }
            Ok(response) => return Ok(response),
            Err(source) => {
                let transient = source.is_transient();
                let error = PostmasterError::Fetch {
                    what: what.to_string(),
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
        *retries += 1;
        tracing::warn!(
            feed = "postmaster",
            attempt,
            "will retry in {backoff:?}: {failure}"
        );
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
        attempt += 1;
    }
}

/// The `Authorization` value of a poll. Never printed.
#[derive(Clone)]
struct AccessToken(String);

fn is_html(response: &HttpResponse, body: &str) -> bool {
    response
        .content_type
        .as_deref()
        .is_some_and(|t| t.to_ascii_lowercase().contains("html"))
        || body.trim_start().starts_with('<')
}

fn status_hint(status: u16) -> &'static str {
    match status {
        300..=399 => ": a redirect; check the URL",
        401 => ": the access token was refused; check the service account's key",
        403 => ": the service account may not read this domain; add its client_email as a user of the domain in Postmaster Tools",
        404 => ": the domain is not in Postmaster Tools for this account, or the URL is wrong",
        429 => ": rate limited",
        500..=599 => ": the API's server failed",
        _ => "",
    }
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
