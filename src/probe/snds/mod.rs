//! Microsoft SNDS (Smart Network Data Services) automated data access: the
//! ip-status CSV (blocked ranges) and the data CSV (per-IP filter result).
//!
//! Parsing and verdicts are pure; [`SndsPoller`] fetches both with the key
//! from a Secret, retries what may pass, and never turns a failure into a
//! Blocked verdict. See docs/PROBES.md.

mod csv;
mod poller;
mod report;
mod verdict;

pub use crate::http_client::{
    FetchError, HttpClient as FeedClient, HttpResponse, TlsSetupError, TrustRoots,
};
pub use csv::RecordError;
pub use poller::{
    FeedCounters, FeedFetch, RetryPolicy, SndsCounters, SndsError, SndsFeed, SndsKey, SndsPoll,
    SndsPoller, DEFAULT_DATA_URL, DEFAULT_IP_STATUS_URL,
};
pub use report::{
    parse_data, parse_ip_status, BlockedRange, DataReport, DataRow, FeedFormatError, FilterResult,
    IpStatusReport, RowProblem, SkippedRow,
};
pub use verdict::{snds_verdicts, IpVerdict, SndsVerdicts, SNDS_FEED, SNDS_PROVIDER};
