//! The probes of a whole fleet, as the operator and standalone mode run them:
//! per pool, DNSBL rounds on the pool's interval (with the answer cache and the
//! `DnsblHealthy` verdict) and SNDS polls on the feed's interval, with the key
//! read from a Secret at each poll. The caller owns the clock (`now` is a
//! parameter) and feeds what comes back to the engine and the pool status;
//! only the probes themselves do I/O. See docs/PROBES.md.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use prometheus_client::encoding::DescriptorEncoder;

use super::dnsbl::{
    dnsbl_health, plan_from_settings, DnsblHealth, DnsblPlan, DnsblProbe, Nameserver,
    ProbeInterval, RecentResults, Resolver, ResultCache, ZoneErrorCounters, DEFAULT_MIN_RESULTS,
};
use super::postmaster::{
    AccountKeyError, PostmasterError, PostmasterFeed, PostmasterPoller, PostmasterTokenCache,
    ServiceAccount, DEFAULT_API_URL,
};
use super::snds::{
    FeedClient, FeedCounters, RetryPolicy, SndsCounters, SndsError, SndsFeed, SndsKey, SndsPoller,
    TrustRoots,
};
use crate::api::{
    DnsblSettings, PostmasterFeedSettings, SecretKeySelector, SenderPool, SndsFeedSettings,
};
use crate::http_client::TlsSetupError;
use crate::metrics::{family, Families, Kind};
use crate::reputation::engine::Signal;

/// The shortest SNDS poll interval accepted: SNDS updates about once a day.
pub const SNDS_MIN_INTERVAL_SECONDS: i64 = 300;
/// How soon a failed SNDS poll (Secret missing, feed down) is tried again,
/// when the feed's interval is longer.
pub const SNDS_RETRY_AFTER_FAILURE_SECONDS: i64 = 300;

/// Where Secret values come from: the API server in the operator, a folder
/// in standalone mode ([`SecretsDir`]).
pub trait SecretSource: Send + Sync {
    /// The value of `key` in Secret `namespace/name`; `Err` says why not.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<u8>, SecretError>> + Send;
}

/// Why a Secret's key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what} `{part}` cannot name a file under {root}")]
    NotAFileName {
        what: &'static str,
        part: String,
        root: String,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} is not labelled {label}=true; label it to let mailfleet read it for a feed")]
    NotLabelled {
        namespace: String,
        name: String,
        label: &'static str,
    },
    #[error("Secret {namespace}/{name} has no key `{key}`")]
    NoKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "no --secrets-dir given; start standalone mode with --secrets-dir DIR holding {name}/{key}"
    )]
    NoSecretsDir { name: String, key: String },
}

/// Secrets as files `DIR/<secret name>/<key>`: the layout of Secret volumes
/// mounted under one folder. The namespace is not part of the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretsDir {
    pub root: PathBuf,
}

impl SecretsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SecretsDir { root: root.into() }
    }

    fn path_of(&self, name: &str, key: &str) -> Result<PathBuf, SecretError> {
        for (what, part) in [("Secret name", name), ("key", key)] {
            if part.is_empty() || part == "." || part == ".." || part.contains(['/', '\\']) {
                return Err(SecretError::NotAFileName {
                    what,
                    part: part.to_string(),
                    root: self.root.display().to_string(),
                });
            }
        }
        Ok(self.root.join(name).join(key))
    }
}

impl SecretSource for SecretsDir {
    fn secret(
        &self,
        _namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<u8>, SecretError>> + Send {
        let path = self.path_of(name, key);
        async move {
            let path = path?;
            let shown = path.display().to_string();
            tokio::task::spawn_blocking(move || std::fs::read(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|source| SecretError::File {
                    path: shown,
                    source,
                })
        }
    }
}

/// How the probes run; the pools' specs say what to probe and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Ask every pool's DNSBL zones through this resolver instead of
    /// `spec.reputation.dnsbl.resolver` (labs, standalone `--dnsbl-resolver`).
    pub resolver: Option<Nameserver>,
    /// DNS questions in flight at once in one round.
    pub concurrency: usize,
    /// Wait for each DNS attempt.
    pub dns_timeout: Duration,
    /// DNS attempts before a question is a timeout.
    pub dns_attempts: u32,
    /// Deadline of one feed request (connect, TLS, whole response).
    pub http_timeout: Duration,
    /// Attempts and back-off of a failing feed fetch.
    pub feed_retry: RetryPolicy,
    /// Results a zone needs before `DnsblHealthy` judges it.
    pub min_results: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            resolver: None,
            concurrency: 64,
            dns_timeout: Duration::from_secs(2),
            dns_attempts: 2,
            http_timeout: Duration::from_secs(30),
            feed_retry: RetryPolicy::default(),
            min_results: DEFAULT_MIN_RESULTS,
        }
    }
}

/// What one [`SignalProbes::run_due`] call found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeRound {
    /// (IP as written in the pool's spec, signal): feed each to `Fleet::observe`.
    pub signals: Vec<(String, Signal)>,
    /// (`namespace/pool`, verdict) for every pool whose DNSBL round ran:
    /// `Some` → `health.set_on(status.conditions, ..)`; `None` → the pool no
    /// longer has zones, remove its `DnsblHealthy` condition.
    pub dnsbl_health: Vec<(String, Option<DnsblHealth>)>,
    /// What kept a probe from running or a poll from succeeding, each starting
    /// with `namespace/pool:` and naming the field to fix: for logs and events.
    /// A configuration problem is reported once per spec change; a failing
    /// Secret or feed at each failed attempt.
    pub problems: Vec<String>,
}

/// The probes of every pool, with their schedules, caches and counters.
#[derive(Debug)]
pub struct SignalProbes {
    options: ProbeOptions,
    pools: BTreeMap<String, PoolProbes>,
    zone_counters: ZoneErrorCounters,
    snds_counters: SndsCounters,
    postmaster_counters: FeedCounters,
    /// (pool, domain) → the domain reputation of its newest Postmaster day.
    postmaster_domains: BTreeMap<(String, String), String>,
    system_roots: Option<TrustRoots>,
    /// One client per extra CA bundle (empty key: none).
    feed_clients: HashMap<Vec<u8>, FeedClient>,
}

#[derive(Debug, Default)]
struct PoolProbes {
    dnsbl: Option<DnsblState>,
    snds: Option<FeedSchedule<SndsFeedSettings>>,
    postmaster: Option<FeedSchedule<PostmasterFeedSettings>>,
    /// The Postmaster access token, kept between polls until shortly before it expires.
    postmaster_token: PostmasterTokenCache,
}

#[derive(Debug)]
struct DnsblState {
    /// What `plan` was built from: a spec change starts over.
    settings: DnsblSettings,
    /// `None`: the settings cannot be used (reported once).
    plan: Option<DnsblPlan>,
    resolver: Option<Nameserver>,
    interval: ProbeInterval,
    cache: ResultCache,
    recent: RecentResults,
}

/// A feed polled on its own interval (SNDS, Postmaster): its settings as
/// last seen, whether they can be used, and when it is due.
#[derive(Debug)]
struct FeedSchedule<T> {
    settings: T,
    usable: bool,
    /// `None`: due now.
    next_at: Option<Timestamp>,
}

impl<T: Clone + PartialEq> FeedSchedule<T> {
    /// The schedule for `settings`, started over when they changed (their
    /// `problem`, if any, reported once); `Some` when the feed is due now.
    fn due(
        slot: &mut Option<FeedSchedule<T>>,
        settings: &T,
        problem: impl FnOnce(&T) -> Option<String>,
        key: &str,
        now: Timestamp,
        round: &mut ProbeRound,
    ) -> bool {
        if slot.as_ref().is_none_or(|s| &s.settings != settings) {
            let problem = problem(settings);
            if let Some(problem) = &problem {
                round.problems.push(format!("{key}: {problem}"));
            }
            *slot = Some(FeedSchedule {
                settings: settings.clone(),
                usable: problem.is_none(),
                next_at: None,
            });
        }
        slot.as_ref()
            .is_some_and(|s| s.usable && s.next_at.is_none_or(|at| now >= at))
    }

    /// Due again after the interval, or sooner after a failed poll.
    fn polled(slot: Option<&mut FeedSchedule<T>>, now: Timestamp, interval: i64, ok: bool) {
        let wait = if ok {
            interval
        } else {
            interval.min(SNDS_RETRY_AFTER_FAILURE_SECONDS)
        };
        if let Some(state) = slot {
            state.next_at = Some(
                now.checked_add(SignedDuration::from_secs(wait))
                    .unwrap_or(Timestamp::MAX),
            );
        }
    }
}

impl SignalProbes {
    pub fn new(options: ProbeOptions) -> Self {
        SignalProbes {
            options,
            pools: BTreeMap::new(),
            zone_counters: ZoneErrorCounters::default(),
            snds_counters: SndsCounters::default(),
            postmaster_counters: FeedCounters::default(),
            postmaster_domains: BTreeMap::new(),
            system_roots: None,
            feed_clients: HashMap::new(),
        }
    }

    /// Runs the DNSBL rounds and feed polls that are due at `now` for these
    /// pools. `pools` is every pool to probe: a pool no longer given is
    /// forgotten (its schedule and cache go with it). Pools run one after the
    /// other; a feed that keeps failing holds the call for its retries.
    pub async fn run_due<S: SecretSource>(
        &mut self,
        pools: &[SenderPool],
        secrets: &S,
        now: Timestamp,
    ) -> ProbeRound {
        let mut round = ProbeRound::default();
        let mut seen = Vec::with_capacity(pools.len());
        for pool in pools {
            let Some(name) = pool.metadata.name.as_deref() else {
                round
                    .problems
                    .push("a SenderPool without metadata.name cannot be probed".to_string());
                continue;
            };
            let namespace = pool.metadata.namespace.as_deref().unwrap_or("default");
            let key = format!("{namespace}/{name}");
            seen.push(key.clone());
            let ips = PoolIps::of(&key, pool, &mut round.problems);
            self.run_dnsbl(&key, pool, &ips, now, &mut round).await;
            self.run_feed::<SndsFeedSettings, S>(
                &key, namespace, pool, &ips, secrets, now, &mut round,
            )
            .await;
            self.run_feed::<PostmasterFeedSettings, S>(
                &key, namespace, pool, &ips, secrets, now, &mut round,
            )
            .await;
        }
        self.pools.retain(|key, _| seen.contains(key));
        // Domains no longer polled for a pool leave the gauge.
        self.postmaster_domains.retain(|(key, domain), _| {
            pools.iter().any(|p| {
                let of = format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or_default()
                );
                of == *key
                    && p.spec
                        .reputation
                        .feeds
                        .postmaster
                        .as_ref()
                        .is_some_and(|f| f.domains.contains(domain))
            })
        });
        round
    }

    /// The earliest time a round or poll is due; `None` when nothing is scheduled.
    pub fn next_due(&self) -> Option<Timestamp> {
        let dnsbl = self
            .pools
            .values()
            .filter_map(|p| p.dnsbl.as_ref())
            .filter(|d| d.plan.is_some() && d.resolver.is_some())
            .filter_map(|d| d.interval.next_round_at());
        let snds = self
            .pools
            .values()
            .filter_map(|p| p.snds.as_ref())
            .filter(|s| s.usable)
            .filter_map(|s| s.next_at);
        let postmaster = self
            .pools
            .values()
            .filter_map(|p| p.postmaster.as_ref())
            .filter(|s| s.usable)
            .filter_map(|s| s.next_at);
        dnsbl.chain(snds).chain(postmaster).min()
    }

    /// Per-zone DNSBL counters (cached answers are not counted).
    pub fn zone_counters(&self) -> &ZoneErrorCounters {
        &self.zone_counters
    }

    /// SNDS counters summed over every pool.
    pub fn snds_counters(&self) -> &SndsCounters {
        &self.snds_counters
    }

    /// Postmaster Tools counters summed over every pool.
    pub fn postmaster_counters(&self) -> &FeedCounters {
        &self.postmaster_counters
    }

    /// A copy of the counts for the registry: `mailfleet_dnsbl_queries_total{zone}`,
    /// `mailfleet_dnsbl_listings_total{zone}`,
    /// `mailfleet_dnsbl_probe_errors_total{zone,kind}` and the
    /// `mailfleet_feed_*{feed}` counters of `snds` and `postmaster`.
    pub fn metrics(&self) -> ProbeCounters {
        ProbeCounters {
            zones: self.zone_counters.clone(),
            snds: self.snds_counters.clone(),
            postmaster: self.postmaster_counters.clone(),
            postmaster_domains: self.postmaster_domains.clone(),
        }
    }

    async fn run_dnsbl(
        &mut self,
        key: &str,
        pool: &SenderPool,
        ips: &PoolIps,
        now: Timestamp,
        round: &mut ProbeRound,
    ) {
        let settings = &pool.spec.reputation.dnsbl;
        let entry = self.pools.entry(key.to_string()).or_default();
        if settings.zones.is_empty() {
            if entry.dnsbl.take().is_some() {
                round.dnsbl_health.push((key.to_string(), None));
            }
            return;
        }
        if entry.dnsbl.as_ref().is_none_or(|d| &d.settings != settings) {
            entry.dnsbl = Some(DnsblState::new(
                key,
                settings,
                &self.options,
                &mut round.problems,
            ));
        }
        let Some(state) = entry.dnsbl.as_mut() else {
            return;
        };
        let (Some(plan), Some(nameserver)) = (state.plan.as_ref(), state.resolver.as_ref()) else {
            return;
        };
        if !state.interval.due(now) {
            return;
        }
        state.interval.started(now);
        let address = match nameserver.resolve().await {
            Ok(address) => address,
            Err(problem) => {
                round.problems.push(format!(
                    "{key}: spec.reputation.dnsbl.resolver: {problem}; no DNSBL round until the next interval"
                ));
                return;
            }
        };
        let probe = DnsblProbe::new(
            Resolver::new(address, self.options.dns_timeout, self.options.dns_attempts),
            self.options.concurrency,
        );
        state.cache.evict_stale(now);
        let clock = move || now;
        let outcomes = probe
            .round_cached(&ips.all, &plan.zones, &mut state.cache, &clock)
            .await;
        self.zone_counters.record_all(&outcomes);
        state.recent.record_all(&outcomes);
        for outcome in outcomes.iter().filter(|o| !o.cached) {
            if let Some(written) = ips.written(outcome.ip) {
                round.signals.push((written.to_string(), outcome.signal()));
            }
        }
        let health = dnsbl_health(
            plan.zones.iter().map(|z| z.zone()),
            &state.recent,
            self.options.min_results,
        );
        round.dnsbl_health.push((key.to_string(), health));
    }

    /// Polls one feed of the pool when it is due (SNDS, Postmaster: the
    /// same schedule, the same handling of the outcome); a feed no longer in
    /// the spec is forgotten.
    #[allow(clippy::too_many_arguments)]
    async fn run_feed<F: PolledFeed, S: SecretSource>(
        &mut self,
        key: &str,
        namespace: &str,
        pool: &SenderPool,
        ips: &PoolIps,
        secrets: &S,
        now: Timestamp,
        round: &mut ProbeRound,
    ) {
        let entry = self.pools.entry(key.to_string()).or_default();
        let Some(settings) = F::of(pool) else {
            F::forget(entry);
            return;
        };
        if !FeedSchedule::due(F::schedule(entry), settings, F::problem, key, now, round) {
            return;
        }
        let outcome = match settings.which() {
            FeedRef::Snds(settings) => self
                .poll_snds(namespace, settings, ips, secrets, now)
                .await
                .map(|signals| (signals, Vec::new()))
                .map_err(|e| e.to_string()),
            FeedRef::Postmaster(settings) => self
                .poll_postmaster(key, namespace, settings, ips, secrets, now)
                .await
                .map_err(|e| e.to_string()),
        };
        let ok = outcome.is_ok();
        match outcome {
            Ok((signals, feed_problems)) => {
                round.signals.extend(signals);
                round
                    .problems
                    .extend(feed_problems.into_iter().map(|p| format!("{key}: {p}")));
            }
            Err(problem) => round.problems.push(format!("{key}: {problem}")),
        }
        let slot = self
            .pools
            .get_mut(key)
            .and_then(|p| F::schedule(p).as_mut());
        FeedSchedule::polled(slot, now, settings.interval_seconds(), ok);
    }

    /// One poll: the key (and CA bundle) from their Secrets, then both files.
    async fn poll_snds<S: SecretSource>(
        &mut self,
        namespace: &str,
        settings: &SndsFeedSettings,
        ips: &PoolIps,
        secrets: &S,
        now: Timestamp,
    ) -> Result<Vec<(String, Signal)>, SndsPollError> {
        let key_ref = &settings.key_secret_ref;
        let ca_ref = settings.ca_bundle_secret_ref.as_ref();
        let (key, client) = self
            .feed_setup(
                secrets,
                namespace,
                key_ref,
                SndsKey::from_secret_bytes,
                ca_ref,
            )
            .await
            .map_err(|e| {
                self.count_snds_failure(e.kind());
                let shown_ca = || ca_ref.map(|r| shown_ref(namespace, r)).unwrap_or_default();
                match e {
                    FeedSetupError::CredentialSecret(source) => SndsPollError::KeySecret {
                        secret: shown_ref(namespace, key_ref),
                        source,
                    },
                    FeedSetupError::Credential(source) => SndsPollError::Key {
                        secret: shown_ref(namespace, key_ref),
                        source,
                    },
                    FeedSetupError::CaSecret(source) => SndsPollError::CaSecret {
                        secret: shown_ca(),
                        source,
                    },
                    FeedSetupError::TlsSetup(source) => SndsPollError::TlsSetup {
                        secret: shown_ca(),
                        source,
                    },
                }
            })?;
        let feed = SndsFeed {
            ip_status_url: settings.url.clone(),
            data_url: settings.data_url.clone(),
        };
        let mut poller = SndsPoller::new(feed, key, self.options.feed_retry, client);
        let result = poller.poll(&ips.all, now).await;
        self.snds_counters.add(poller.counters());
        let poll = result.map_err(|source| SndsPollError::Poll { source })?;
        Ok(poll
            .verdicts
            .verdicts
            .iter()
            .filter_map(|v| ips.written(v.ip).map(|ip| (ip.to_string(), v.signal())))
            .collect())
    }

    fn count_snds_failure(&mut self, kind: &'static str) {
        self.snds_counters.polls += 1;
        self.snds_counters.failed_polls += 1;
        *self.snds_counters.errors.entry(kind).or_default() += 1;
    }

    /// One poll: the service account's key (and CA bundle) from their
    /// Secrets, a token, then every domain. `Ok` carries the signals and the
    /// domains that could not be read.
    #[allow(clippy::type_complexity)]
    async fn poll_postmaster<S: SecretSource>(
        &mut self,
        key: &str,
        namespace: &str,
        settings: &PostmasterFeedSettings,
        ips: &PoolIps,
        secrets: &S,
        now: Timestamp,
    ) -> Result<(Vec<(String, Signal)>, Vec<String>), PostmasterPollError> {
        let reference = &settings.service_account_secret_ref;
        let (account, client) = self
            .feed_setup(
                secrets,
                namespace,
                reference,
                ServiceAccount::from_key_file,
                settings.ca_bundle_secret_ref.as_ref(),
            )
            .await
            .map_err(|e| {
                self.count_postmaster_failure(e.kind());
                match e {
                    FeedSetupError::CredentialSecret(source) => {
                        PostmasterPollError::AccountSecret { source }
                    }
                    FeedSetupError::Credential(source) => PostmasterPollError::Key {
                        secret: shown_ref(namespace, reference),
                        source,
                    },
                    FeedSetupError::CaSecret(source) => PostmasterPollError::CaSecret { source },
                    FeedSetupError::TlsSetup(source) => PostmasterPollError::TlsSetup { source },
                }
            })?;
        let feed = PostmasterFeed {
            api_url: settings
                .url
                .clone()
                .unwrap_or_else(|| DEFAULT_API_URL.to_string()),
            token_url: settings.token_url.clone(),
            domains: settings.domains.clone(),
        };
        let kept = self
            .pools
            .get_mut(key)
            .map(|p| std::mem::take(&mut p.postmaster_token))
            .unwrap_or_default();
        let mut poller = PostmasterPoller::new(feed, account, self.options.feed_retry, client)
            .with_token_cache(kept);
        let result = poller.poll(&ips.all, now).await;
        self.postmaster_counters.add(poller.counters());
        if let Some(p) = self.pools.get_mut(key) {
            p.postmaster_token = poller.into_token_cache();
        }
        let poll = result.map_err(|source| PostmasterPollError::Poll { source })?;
        let signals = poll
            .verdicts
            .verdicts
            .iter()
            .filter_map(|v| ips.written(v.ip).map(|ip| (ip.to_string(), v.signal())))
            .collect();
        let mut problems: Vec<String> = poll
            .domain_errors
            .iter()
            .map(|(domain, e)| {
                format!(
                    "spec.reputation.feeds.postmaster.domains `{domain}`: {e}; no pool IP cleared this poll"
                )
            })
            .collect();
        for day in &poll.days {
            let reputation = day
                .domain_reputation
                .clone()
                .unwrap_or_else(|| "UNKNOWN".to_string());
            if let Some(warning) = domain_reputation_warning(day) {
                problems.push(warning);
            }
            self.postmaster_domains
                .insert((key.to_string(), day.domain.clone()), reputation);
        }
        Ok((signals, problems))
    }

    fn count_postmaster_failure(&mut self, kind: &'static str) {
        self.postmaster_counters.polls += 1;
        self.postmaster_counters.failed_polls += 1;
        *self.postmaster_counters.errors.entry(kind).or_default() += 1;
    }

    /// A feed's credential, read from its Secret and parsed, then the client
    /// trusting the CA bundle of its Secret (none: the system roots). One
    /// order for every feed: a credential that cannot be used is reported
    /// before a bundle that cannot be read.
    async fn feed_setup<S: SecretSource, K, E>(
        &mut self,
        secrets: &S,
        namespace: &str,
        credential: &SecretKeySelector,
        parse: impl FnOnce(&[u8]) -> Result<K, E>,
        ca_bundle: Option<&SecretKeySelector>,
    ) -> Result<(K, FeedClient), FeedSetupError<E>> {
        let bytes = read_secret(secrets, namespace, credential)
            .await
            .map_err(FeedSetupError::CredentialSecret)?;
        let parsed = parse(&bytes).map_err(FeedSetupError::Credential)?;
        let bundle = match ca_bundle {
            None => Vec::new(),
            Some(reference) => read_secret(secrets, namespace, reference)
                .await
                .map_err(FeedSetupError::CaSecret)?,
        };
        let client = self.feed_client(bundle).map_err(FeedSetupError::TlsSetup)?;
        Ok((parsed, client))
    }

    fn feed_client(&mut self, bundle: Vec<u8>) -> Result<FeedClient, TlsSetupError> {
        if let Some(client) = self.feed_clients.get(&bundle) {
            return Ok(client.clone());
        }
        let system = self.system_roots.get_or_insert_with(TrustRoots::system);
        let roots = if bundle.is_empty() {
            system.clone()
        } else {
            system.with_pem(&bundle)?
        };
        let mut client = FeedClient::new(&roots)?;
        client.timeout = self.options.http_timeout;
        // Bundles are few (one per pool at most); forget old ones when specs change a lot.
        if self.feed_clients.len() >= 64 {
            self.feed_clients.clear();
        }
        self.feed_clients.insert(bundle, client.clone());
        Ok(client)
    }
}

impl DnsblState {
    fn new(
        key: &str,
        settings: &DnsblSettings,
        options: &ProbeOptions,
        problems: &mut Vec<String>,
    ) -> Self {
        let plan = match plan_from_settings(settings) {
            Ok(plan) => Some(plan),
            Err(e) => {
                problems.push(format!("{key}: {e}; no DNSBL probing until it is fixed"));
                None
            }
        };
        let resolver = options
            .resolver
            .clone()
            .or_else(|| plan.as_ref().and_then(|p| p.resolver.clone()));
        if plan.is_some() && resolver.is_none() {
            problems.push(format!(
                "{key}: spec.reputation.dnsbl.resolver is not set, so the {} DNSBL zone(s) cannot be asked: set it to your own recursive resolver (HOST:PORT); big lists refuse public resolvers",
                settings.zones.len()
            ));
        }
        let interval = plan.as_ref().map(|p| p.interval).unwrap_or_else(|| {
            ProbeInterval::every_seconds(super::dnsbl::DEFAULT_INTERVAL_SECONDS)
        });
        DnsblState {
            settings: settings.clone(),
            plan,
            resolver,
            interval,
            cache: ResultCache::for_interval(&interval),
            recent: RecentResults::default(),
        }
    }
}

/// What is wrong with an SNDS spec that the CRD rules did not catch (a
/// manifest loaded without the API server), naming the field.
fn snds_settings_problem(settings: &SndsFeedSettings) -> Option<String> {
    let field = "spec.reputation.feeds.snds";
    if settings.interval_seconds < SNDS_MIN_INTERVAL_SECONDS {
        return Some(format!(
            "{field}.intervalSeconds is {}: poll SNDS at most every {SNDS_MIN_INTERVAL_SECONDS} seconds (it updates about once a day); SNDS not polled",
            settings.interval_seconds
        ));
    }
    let urls = std::iter::once(("url", &settings.url))
        .chain(settings.data_url.as_ref().map(|u| ("dataUrl", u)));
    for (name, url) in urls {
        let lower = url.trim().to_ascii_lowercase();
        let shown = url.split('?').next().unwrap_or_default();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Some(format!(
                "{field}.{name} `{shown}` must start with https:// (or http:// for an in-cluster proxy); SNDS not polled"
            ));
        }
        let query = lower.split_once('?').map(|(_, q)| q).unwrap_or_default();
        if query.split('&').any(|pair| pair.starts_with("key=")) {
            return Some(format!(
                "{field}.{name} `{shown}` carries the SNDS key in its query: remove `key=...` and put the key in the Secret named by {field}.keySecretRef; SNDS not polled"
            ));
        }
    }
    None
}

/// What is wrong with a Postmaster spec that the CRD rules did not catch,
/// naming the field.
fn postmaster_settings_problem(settings: &PostmasterFeedSettings) -> Option<String> {
    let field = "spec.reputation.feeds.postmaster";
    if settings.interval_seconds < SNDS_MIN_INTERVAL_SECONDS {
        return Some(format!(
            "{field}.intervalSeconds is {}: poll Postmaster Tools at most every {SNDS_MIN_INTERVAL_SECONDS} seconds (it updates once a day); Postmaster not polled",
            settings.interval_seconds
        ));
    }
    if settings.domains.is_empty() {
        return Some(format!(
            "{field}.domains is empty: list the domains this pool sends for, as verified in Postmaster Tools; Postmaster not polled"
        ));
    }
    for (i, domain) in settings.domains.iter().enumerate() {
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.contains('.')
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Some(format!(
                "{field}.domains[{i}] `{domain}` is not a domain name (for example news.example.com); Postmaster not polled"
            ));
        }
    }
    let urls = settings
        .url
        .iter()
        .map(|u| ("url", u))
        .chain(settings.token_url.iter().map(|u| ("tokenUrl", u)));
    for (name, url) in urls {
        let lower = url.trim().to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Some(format!(
                "{field}.{name} `{}` must start with https:// (or http:// for an in-cluster proxy); Postmaster not polled",
                url.split('?').next().unwrap_or_default()
            ));
        }
    }
    None
}

async fn read_secret<S: SecretSource>(
    secrets: &S,
    namespace: &str,
    reference: &SecretKeySelector,
) -> Result<Vec<u8>, SecretError> {
    secrets
        .secret(namespace, &reference.name, &reference.key)
        .await
}

/// A warning for a domain that Postmaster Tools rates `LOW` or `BAD`. Gmail's
/// domain reputation judges the domain (its content, authentication and
/// complaints over every IP that sends it), not an IP: it marks no pair
/// Blocked and throttles none, since moving the mail to other IPs would not
/// change it (docs/PROBES.md, "Domain reputation").
fn domain_reputation_warning(day: &super::postmaster::DayStats) -> Option<String> {
    let reputation = day.domain_reputation.as_deref()?;
    if !matches!(reputation, "LOW" | "BAD") {
        return None;
    }
    Some(format!(
        "spec.reputation.feeds.postmaster.domains `{}`: Postmaster Tools rates the domain's reputation {reputation} on {}; this is the domain's, not an IP's: no IP is marked or throttled for it (check the domain's content, authentication and complaint rate)",
        day.domain, day.date
    ))
}

/// Why a feed's credential or CA bundle could not be set up; each feed
/// names its own fields.
enum FeedSetupError<E> {
    CredentialSecret(SecretError),
    Credential(E),
    CaSecret(SecretError),
    TlsSetup(TlsSetupError),
}

impl<E> FeedSetupError<E> {
    /// The `kind` label of the feed error counters.
    fn kind(&self) -> &'static str {
        match self {
            FeedSetupError::CredentialSecret(_) | FeedSetupError::CaSecret(_) => "secret",
            FeedSetupError::Credential(_) => "key",
            FeedSetupError::TlsSetup(_) => "tls_setup",
        }
    }
}

/// A feed polled on its own schedule: where a pool's spec and the runner's
/// memory keep it.
trait PolledFeed: Clone + PartialEq + Sized {
    /// The pool's settings of the feed, if it is configured.
    fn of(pool: &SenderPool) -> Option<&Self>;
    fn schedule(probes: &mut PoolProbes) -> &mut Option<FeedSchedule<Self>>;
    /// Forgets what was kept for the feed, once the spec no longer has it.
    fn forget(probes: &mut PoolProbes);
    /// What is wrong with the settings that the CRD rules did not catch.
    fn problem(&self) -> Option<String>;
    fn interval_seconds(&self) -> i64;
    fn which(&self) -> FeedRef<'_>;
}

/// The settings of one feed, to poll it.
enum FeedRef<'a> {
    Snds(&'a SndsFeedSettings),
    Postmaster(&'a PostmasterFeedSettings),
}

impl PolledFeed for SndsFeedSettings {
    fn of(pool: &SenderPool) -> Option<&Self> {
        pool.spec.reputation.feeds.snds.as_ref()
    }
    fn schedule(probes: &mut PoolProbes) -> &mut Option<FeedSchedule<Self>> {
        &mut probes.snds
    }
    fn forget(probes: &mut PoolProbes) {
        probes.snds = None;
    }
    fn problem(&self) -> Option<String> {
        snds_settings_problem(self)
    }
    fn interval_seconds(&self) -> i64 {
        self.interval_seconds
    }
    fn which(&self) -> FeedRef<'_> {
        FeedRef::Snds(self)
    }
}

impl PolledFeed for PostmasterFeedSettings {
    fn of(pool: &SenderPool) -> Option<&Self> {
        pool.spec.reputation.feeds.postmaster.as_ref()
    }
    fn schedule(probes: &mut PoolProbes) -> &mut Option<FeedSchedule<Self>> {
        &mut probes.postmaster
    }
    fn forget(probes: &mut PoolProbes) {
        probes.postmaster = None;
        probes.postmaster_token = PostmasterTokenCache::default();
    }
    fn problem(&self) -> Option<String> {
        postmaster_settings_problem(self)
    }
    fn interval_seconds(&self) -> i64 {
        self.interval_seconds
    }
    fn which(&self) -> FeedRef<'_> {
        FeedRef::Postmaster(self)
    }
}

/// Why one pool's SNDS poll gave no verdicts, naming the spec field to fix.
#[derive(Debug, thiserror::Error)]
enum SndsPollError {
    #[error(
        "spec.reputation.feeds.snds.keySecretRef: cannot read {secret}: {source}; SNDS not polled"
    )]
    KeySecret { secret: String, source: SecretError },
    #[error("spec.reputation.feeds.snds.keySecretRef ({secret}): {source}")]
    Key { secret: String, source: SndsError },
    #[error("spec.reputation.feeds.snds.caBundleSecretRef: cannot read {secret}: {source}; SNDS not polled")]
    CaSecret { secret: String, source: SecretError },
    #[error("spec.reputation.feeds.snds.caBundleSecretRef ({secret}): {source}")]
    TlsSetup {
        secret: String,
        source: TlsSetupError,
    },
    #[error("spec.reputation.feeds.snds: {source}")]
    Poll { source: SndsError },
}

/// Why a Postmaster poll did not run or did not finish (each names the field).
#[derive(Debug, thiserror::Error)]
enum PostmasterPollError {
    #[error(
        "spec.reputation.feeds.postmaster.serviceAccountSecretRef: {source}; Postmaster not polled"
    )]
    AccountSecret { source: SecretError },
    #[error("spec.reputation.feeds.postmaster.serviceAccountSecretRef ({secret}): {source}; Postmaster not polled")]
    Key {
        secret: String,
        source: AccountKeyError,
    },
    #[error("spec.reputation.feeds.postmaster.caBundleSecretRef: {source}; Postmaster not polled")]
    CaSecret { source: SecretError },
    #[error("spec.reputation.feeds.postmaster.caBundleSecretRef: {source}; Postmaster not polled")]
    TlsSetup { source: TlsSetupError },
    #[error("spec.reputation.feeds.postmaster: {source}")]
    Poll { source: PostmasterError },
}

fn shown_ref(namespace: &str, reference: &SecretKeySelector) -> String {
    format!(
        "key `{}` of Secret {namespace}/{}",
        reference.key, reference.name
    )
}

/// The pool's IPs, parsed, with the spelling of the spec for the engine.
struct PoolIps {
    all: Vec<IpAddr>,
    written: HashMap<IpAddr, String>,
}

impl PoolIps {
    fn of(key: &str, pool: &SenderPool, problems: &mut Vec<String>) -> Self {
        let mut all = Vec::with_capacity(pool.spec.ips.len());
        let mut written = HashMap::with_capacity(pool.spec.ips.len());
        for (i, ip) in pool.spec.ips.iter().enumerate() {
            match ip.address.trim().parse::<IpAddr>() {
                Ok(parsed) => {
                    if written.insert(parsed, ip.address.clone()).is_none() {
                        all.push(parsed);
                    }
                }
                Err(_) => problems.push(format!(
                    "{key}: spec.ips[{i}].address `{}` is not an IPv4 or IPv6 address; it is not probed",
                    ip.address
                )),
            }
        }
        PoolIps { all, written }
    }

    fn written(&self, ip: IpAddr) -> Option<&str> {
        self.written.get(&ip).map(String::as_str)
    }
}

/// The probes' counts, as a scrape writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    pub zones: ZoneErrorCounters,
    pub snds: SndsCounters,
    pub postmaster: FeedCounters,
    /// (pool, domain) → the domain reputation of its newest Postmaster day.
    pub postmaster_domains: BTreeMap<(String, String), String>,
}

/// The probes' families for these counters, as Prometheus text.
pub fn render_metrics(
    zones: &ZoneErrorCounters,
    snds: &SndsCounters,
    postmaster: &FeedCounters,
) -> String {
    crate::metrics::render(&ProbeCounters {
        zones: zones.clone(),
        snds: snds.clone(),
        postmaster: postmaster.clone(),
        postmaster_domains: BTreeMap::new(),
    })
}

impl Families for ProbeCounters {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let zones = &self.zones;
        let feeds = [("snds", &self.snds), ("postmaster", &self.postmaster)];
        let zone = |zone: &str| vec![("zone", zone.to_string())];
        family(
            out,
            "mailfleet_dnsbl_queries_total",
            "DNSBL questions asked (answers taken from the cache not counted), by zone.",
            Kind::Counter,
            zones.iter().map(|(z, c)| (zone(z), c.queries)),
        )?;
        family(
            out,
            "mailfleet_dnsbl_listings_total",
            "DNSBL answers that list a pool IP, by zone.",
            Kind::Counter,
            zones.iter().map(|(z, c)| (zone(z), c.listings)),
        )?;
        family(
            out,
            "mailfleet_dnsbl_probe_errors_total",
            "DNSBL questions that gave no usable answer (never read as listings), by zone and kind.",
            Kind::Counter,
            zones.iter().flat_map(|(z, c)| {
                c.errors.iter().map(move |(kind, n)| {
                    (
                        vec![("zone", z.to_string()), ("kind", kind.label().to_string())],
                        *n,
                    )
                })
            }),
        )?;
        let counter = |value: fn(&FeedCounters) -> u64| {
            feeds
                .iter()
                .map(move |(name, c)| (vec![("feed", name.to_string())], value(c)))
        };
        family(
            out,
            "mailfleet_feed_polls_total",
            "Provider feed polls tried.",
            Kind::Counter,
            counter(|c| c.polls),
        )?;
        family(
            out,
            "mailfleet_feed_poll_failures_total",
            "Provider feed polls that gave no verdict.",
            Kind::Counter,
            counter(|c| c.failed_polls),
        )?;
        family(
            out,
            "mailfleet_feed_errors_total",
            "Provider feed failures by kind (those of a data file or a domain included).",
            Kind::Counter,
            feeds.iter().flat_map(|(name, c)| {
                c.errors.iter().map(move |(kind, n)| {
                    (
                        vec![("feed", name.to_string()), ("kind", kind.to_string())],
                        *n,
                    )
                })
            }),
        )?;
        family(
            out,
            "mailfleet_feed_retries_total",
            "Provider feed fetches tried again after a transient failure.",
            Kind::Counter,
            counter(|c| c.retries),
        )?;
        family(
            out,
            "mailfleet_feed_malformed_rows_total",
            "Provider feed rows or entries skipped as unreadable.",
            Kind::Counter,
            counter(|c| c.malformed_rows),
        )?;
        family(
            out,
            "mailfleet_feed_withheld_clears_total",
            "Not-blocked verdicts withheld because part of the feed was skipped or unread.",
            Kind::Counter,
            counter(|c| c.withheld_clears),
        )?;
        family(
            out,
            "mailfleet_feed_blocked_verdicts_total",
            "Blocked verdicts given by provider feeds.",
            Kind::Counter,
            counter(|c| c.blocked_verdicts),
        )?;
        family(
            out,
            "mailfleet_postmaster_domain_reputation",
            "1 for the domain reputation Postmaster Tools gives each polled domain on its newest day (HIGH, MEDIUM, LOW, BAD, UNKNOWN), by pool and domain.",
            Kind::Gauge,
            self.postmaster_domains.iter().map(|((pool, domain), reputation)| {
                (
                    vec![
                        ("pool", pool.clone()),
                        ("domain", domain.clone()),
                        ("reputation", reputation.clone()),
                    ],
                    1u64,
                )
            }),
        )?;
        family(
            out,
            "mailfleet_feed_data_failures_total",
            "Polls that gave verdicts although part of the feed failed (SNDS's data file, a Postmaster domain).",
            Kind::Counter,
            counter(|c| c.data_failures),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SenderPoolSpec;
    use std::path::Path;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    struct MapSecrets(BTreeMap<(String, String, String), Vec<u8>>);

    impl SecretSource for MapSecrets {
        async fn secret(&self, ns: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
            self.0
                .get(&(ns.into(), name.into(), key.into()))
                .cloned()
                .ok_or_else(|| SecretError::NoKey {
                    namespace: ns.into(),
                    name: name.into(),
                    key: key.into(),
                })
        }
    }

    fn pool(name: &str, spec: serde_json::Value) -> SenderPool {
        let spec: SenderPoolSpec = serde_json::from_value(spec).unwrap();
        let mut pool = SenderPool::new(name, spec);
        pool.metadata.namespace = Some("mail".into());
        pool
    }

    fn base_spec() -> serde_json::Value {
        serde_json::json!({
            "ips": [{"address": "192.0.2.1"}],
            "template": {},
        })
    }

    fn snds(url: &str, interval: i64) -> SndsFeedSettings {
        SndsFeedSettings {
            url: url.into(),
            data_url: None,
            key_secret_ref: SecretKeySelector {
                name: "snds".into(),
                key: "key".into(),
            },
            interval_seconds: interval,
            ca_bundle_secret_ref: None,
        }
    }

    #[test]
    fn snds_settings_are_checked_naming_the_field() {
        assert_eq!(
            snds_settings_problem(&snds("https://h/ipStatus.aspx", 3600)),
            None
        );
        let p = snds_settings_problem(&snds("https://h/ipStatus.aspx", 60)).unwrap();
        assert!(
            p.starts_with("spec.reputation.feeds.snds.intervalSeconds is 60"),
            "{p}"
        );
        let p = snds_settings_problem(&snds("ftp://h/x", 3600)).unwrap();
        assert!(
            p.contains("feeds.snds.url `ftp://h/x` must start with https://"),
            "{p}"
        );
        let p = snds_settings_problem(&snds("https://h/x?a=1&KEY=LEAKED", 3600)).unwrap();
        assert!(p.contains("keySecretRef"), "{p}");
        assert!(!p.contains("LEAKED"), "{p}");
        let mut s = snds("https://h/x", 3600);
        s.data_url = Some("https://h/data.aspx?key=LEAKED".into());
        let p = snds_settings_problem(&s).unwrap();
        assert!(p.contains("feeds.snds.dataUrl"), "{p}");
        assert!(!p.contains("LEAKED"), "{p}");
    }

    #[tokio::test]
    async fn configuration_problems_are_reported_once_per_spec() {
        let mut spec = base_spec();
        spec["reputation"] = serde_json::json!({
            "dnsbl": {"zones": [{"zone": "zen.spamhaus.org"}]},
            "feeds": {"snds": {"url": "https://h/x?key=K", "keySecretRef": {"name": "s", "key": "k"}}},
        });
        let pools = [pool("p", spec)];
        let secrets = MapSecrets(BTreeMap::new());
        let mut probes = SignalProbes::new(ProbeOptions::default());
        let round = probes.run_due(&pools, &secrets, t(0)).await;
        assert_eq!(round.problems.len(), 2, "{:#?}", round.problems);
        assert!(round.problems[0].starts_with("mail/p: spec.reputation.dnsbl.resolver is not set"));
        assert!(round.problems[1].starts_with("mail/p: spec.reputation.feeds.snds.url"));
        assert!(round.signals.is_empty() && round.dnsbl_health.is_empty());
        assert_eq!(probes.next_due(), None, "nothing can run");
        let again = probes.run_due(&pools, &secrets, t(10)).await;
        assert_eq!(again, ProbeRound::default());
    }

    #[tokio::test]
    async fn a_missing_secret_is_retried_and_counted() {
        let mut spec = base_spec();
        spec["reputation"] = serde_json::json!({
            "feeds": {"snds": {"url": "http://127.0.0.1:9/ipStatus.aspx", "keySecretRef": {"name": "snds", "key": "key"}}},
        });
        let pools = [pool("p", spec)];
        let secrets = MapSecrets(BTreeMap::new());
        let mut probes = SignalProbes::new(ProbeOptions::default());
        let round = probes.run_due(&pools, &secrets, t(0)).await;
        assert_eq!(
            round.problems,
            vec!["mail/p: spec.reputation.feeds.snds.keySecretRef: cannot read key `key` of Secret mail/snds: Secret mail/snds has no key `key`; SNDS not polled"]
        );
        assert_eq!(probes.next_due(), Some(t(SNDS_RETRY_AFTER_FAILURE_SECONDS)));
        assert!(probes
            .run_due(&pools, &secrets, t(299))
            .await
            .problems
            .is_empty());
        assert_eq!(
            probes
                .run_due(&pools, &secrets, t(300))
                .await
                .problems
                .len(),
            1
        );
        assert_eq!(probes.snds_counters().failed_polls, 2);
        assert!(crate::metrics::render(&probes.metrics())
            .contains("mailfleet_feed_errors_total{feed=\"snds\",kind=\"secret\"} 2\n"));
        // A pool no longer given is forgotten.
        probes.run_due(&[], &secrets, t(301)).await;
        assert_eq!(probes.next_due(), None);
    }

    #[tokio::test]
    async fn zones_removed_clear_the_condition_once() {
        let mut spec = base_spec();
        spec["reputation"] = serde_json::json!({
            "dnsbl": {"zones": [{"zone": "zen.spamhaus.org", "listingCodes": ["x"]}]},
        });
        let mut probes = SignalProbes::new(ProbeOptions::default());
        let secrets = MapSecrets(BTreeMap::new());
        let round = probes.run_due(&[pool("p", spec)], &secrets, t(0)).await;
        assert_eq!(round.problems.len(), 1);
        assert!(
            round.problems[0].contains("spec.reputation.dnsbl.zones[0].listingCodes[0]"),
            "{:?}",
            round.problems
        );
        let round = probes
            .run_due(&[pool("p", base_spec())], &secrets, t(1))
            .await;
        assert_eq!(round.dnsbl_health, vec![("mail/p".to_string(), None)]);
        let round = probes
            .run_due(&[pool("p", base_spec())], &secrets, t(2))
            .await;
        assert!(round.dnsbl_health.is_empty());
    }

    #[test]
    fn secrets_dir_refuses_paths_outside_it() {
        let dir = SecretsDir::new("/run/secrets");
        assert_eq!(
            dir.path_of("snds-key", "key").unwrap(),
            Path::new("/run/secrets/snds-key/key")
        );
        for (name, key) in [("..", "key"), ("a/b", "key"), ("s", ""), ("s", "../x")] {
            assert!(dir.path_of(name, key).is_err(), "{name} {key}");
        }
    }

    #[test]
    fn metrics_name_every_family_even_before_a_probe() {
        let text = crate::metrics::render(&SignalProbes::new(ProbeOptions::default()).metrics());
        for family in [
            "mailfleet_dnsbl_queries_total",
            "mailfleet_dnsbl_listings_total",
            "mailfleet_dnsbl_probe_errors_total",
            "mailfleet_feed_polls_total",
            "mailfleet_feed_errors_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{family}"
            );
        }
        assert!(text.contains("mailfleet_feed_polls_total{feed=\"snds\"} 0\n"));
    }

    #[test]
    fn run_due_can_be_spawned() {
        fn is_send<T: Send>(_: T) {}
        let mut probes = SignalProbes::new(ProbeOptions::default());
        let secrets = MapSecrets(BTreeMap::new());
        is_send(probes.run_due(&[], &secrets, t(0)));
    }
}
