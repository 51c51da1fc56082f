//! Google Postmaster Tools, read through its API with a service account: per
//! sending domain and day, the reputation of the IPs that sent it and the
//! spam rate users reported.
//!
//! Reading answers and verdicts are pure ([`stats`]); [`PostmasterPoller`]
//! gets a token with the key from a Secret, fetches each domain, retries what
//! may pass, and never turns a failure into a Blocked verdict. See
//! docs/PROBES.md.

mod account;
mod poller;
mod stats;

pub use account::{signing_input, AccountKeyError, ServiceAccount, POSTMASTER_SCOPE};
pub use poller::{
    PostmasterError, PostmasterFeed, PostmasterPoll, PostmasterPoller, PostmasterTokenCache,
    DEFAULT_API_URL, GOOGLE_TOKEN_URL, LOOKBACK_DAYS, MAX_PAGES, TOKEN_RENEW_MARGIN_SECONDS,
};
pub use stats::{
    latest_day, parse_stats_page, postmaster_verdicts, DayStats, IpReputation, PostmasterVerdicts,
    ReputationBucket, StatsFormatError, StatsPage, POSTMASTER_FEED, POSTMASTER_PROVIDER,
};
