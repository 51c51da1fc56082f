//! Standalone mode behind the HTTP port: who may report for which IP (a
//! shared token, or a token per sender), storing each report before it is
//! counted and answered, and what `/metrics`, `/healthz` and `/readyz` say.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::{oneshot, Notify};

use crate::agent::report::{FeedbackReport, FeedbackResponse};
use crate::metrics::catalogue::{FEEDBACK_LOG_REPORTS, FEEDBACK_LOG_SYNCS};
use crate::metrics::{Families, ProcessRegistry, Published};
use crate::probe::claim_check::ClaimCounts;
use crate::probe::runner::ProbeCounters;
use crate::serve::{
    FeedbackReceiver, FeedbackRefusal, Observability, ProbeFailure, ProbeProblem, ProbeReport,
    ProblemCategory, RequestHead,
};

use super::core::Core;
use super::haproxy::HaproxyCounts;
use super::journal::{Entry, Journal};

/// The shared secret agents present as `Authorization: Bearer <token>`. The
/// file is read at every request, so replacing it rotates the token; while
/// it cannot be read, the last token read stays in force.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    last_good: Mutex<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read --token-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--token-file {path} is empty; put the shared token agents send in it")]
    Empty { path: PathBuf },
    #[error("--token-dir {path} holds no token file; add one per sender, named after its IP (203.0.113.10) or its pool (<namespace>_<pool>)")]
    EmptyDir { path: PathBuf },
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let token = read_token(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            last_good: Mutex::new(token),
        })
    }

    fn current(&self) -> Vec<u8> {
        let mut last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        match read_token(&self.path) {
            Ok(token) => *last = token,
            Err(err) => tracing::warn!(error = %err, "keeping the token read before"),
        }
        last.clone()
    }

    /// Accepts exactly the token in the file.
    pub fn check(&self, bearer: Option<&str>) -> Result<(), FeedbackRefusal> {
        let Some(bearer) = bearer else {
            return Err(FeedbackRefusal::Unauthorized(
                "no `Authorization: Bearer <token>` header; give the agent the shared token (--token-file)".into(),
            ));
        };
        if constant_time_eq(bearer.as_bytes(), &self.current()) {
            Ok(())
        } else {
            Err(FeedbackRefusal::Unauthorized(
                "the bearer token is not the shared token of this receiver".into(),
            ))
        }
    }
}

fn read_token(path: &Path) -> Result<Vec<u8>, TokenError> {
    let text = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// Compares in a time that depends only on the lengths, never on where the
/// first difference is, so the token cannot be guessed byte by byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// The sender a token belongs to: what it may report for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The shared `--token-file` token, or no authentication at all: any IP.
    AnySender,
    /// A token of `--token-dir` named after one IP.
    Ip(IpAddr),
    /// A token of `--token-dir` named `<namespace>_<pool>`: the IPs of that pool.
    Pool { namespace: String, name: String },
}

impl Scope {
    /// Refuses a report for an IP or pool the token does not cover.
    pub fn allows(&self, report: &FeedbackReport) -> Result<(), FeedbackRefusal> {
        match self {
            Scope::AnySender => Ok(()),
            Scope::Ip(ip) if *ip == report.source_ip => Ok(()),
            Scope::Ip(ip) => Err(FeedbackRefusal::Forbidden(format!(
                "this token is the one of {ip}; it may not report for {}",
                report.source_ip
            ))),
            Scope::Pool { namespace, name }
                if *namespace == report.pool.namespace && *name == report.pool.name =>
            {
                Ok(())
            }
            Scope::Pool { namespace, name } => Err(FeedbackRefusal::Forbidden(format!(
                "this token is the one of pool {namespace}/{name}; it may not report for pool {}/{}",
                report.pool.namespace, report.pool.name
            ))),
        }
    }
}

/// `--token-dir`: one token per sender. A file named after an IP
/// (`203.0.113.10`; IPv6 with `-` for `:`, `2001-db8--10`) is that IP's
/// token; a file named `<namespace>_<pool>` covers every IP of that pool.
/// Re-read at most every few seconds, so adding a file adds a sender.
#[derive(Debug)]
pub struct TokenDir {
    path: PathBuf,
    loaded: Mutex<(Option<Instant>, Tokens)>,
}

/// Tokens and the sender each belongs to.
type Tokens = Vec<(Vec<u8>, Scope)>;

/// How long a read of the token folder is used before it is read again.
const TOKEN_DIR_REFRESH: Duration = Duration::from_secs(2);
/// Longest token file read; a token is a line, not a file of megabytes.
const MAX_TOKEN_BYTES: u64 = 4096;

impl TokenDir {
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let tokens = read_token_dir(path)?;
        if tokens.is_empty() {
            return Err(TokenError::EmptyDir {
                path: path.to_path_buf(),
            });
        }
        Ok(TokenDir {
            path: path.to_path_buf(),
            loaded: Mutex::new((Some(Instant::now()), tokens)),
        })
    }

    fn scope_of(&self, bearer: &[u8]) -> Option<Scope> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0.is_none_or(|at| at.elapsed() >= TOKEN_DIR_REFRESH) {
            match read_token_dir(&self.path) {
                Ok(tokens) if !tokens.is_empty() => *loaded = (Some(Instant::now()), tokens),
                Ok(_) => tracing::warn!("--token-dir is empty; keeping the tokens read before"),
                Err(err) => tracing::warn!(error = %err, "keeping the tokens read before"),
            }
        }
        // Every token is compared, so the time taken says nothing of which matched.
        let mut found = None;
        for (token, scope) in &loaded.1 {
            if constant_time_eq(bearer, token) && found.is_none() {
                found = Some(scope.clone());
            }
        }
        found
    }
}

fn read_token_dir(path: &Path) -> Result<Tokens, TokenError> {
    let err = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut tokens = Vec::new();
    for entry in std::fs::read_dir(path).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden names are kubelet's `..data` layout and editors' files.
        if name.starts_with('.') {
            continue;
        }
        let file = entry.path();
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_TOKEN_BYTES {
            tracing::warn!(file = %file.display(), "not a token file (a regular file of at most 4 KiB); skipped");
            continue;
        }
        let Some(scope) = scope_of_name(&name) else {
            tracing::warn!(file = %file.display(), "a token file is named after an IP (203.0.113.10, 2001-db8--10) or a pool (<namespace>_<pool>); skipped");
            continue;
        };
        match read_token(&file) {
            Ok(token) => tokens.push((token, scope)),
            Err(err) => tracing::warn!(error = %err, "token file skipped"),
        }
    }
    Ok(tokens)
}

fn scope_of_name(name: &str) -> Option<Scope> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(Scope::Ip(ip));
    }
    if let Ok(ip) = name.replace('-', ":").parse::<std::net::Ipv6Addr>() {
        return Some(Scope::Ip(IpAddr::V6(ip)));
    }
    let (namespace, pool) = name.split_once('_')?;
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (label(namespace) && label(pool)).then(|| Scope::Pool {
        namespace: namespace.to_string(),
        name: pool.to_string(),
    })
}

/// Who may report, and who may change the log level.
#[derive(Debug, Default)]
pub struct Auth {
    /// `--token-file`: one token for every sender.
    pub shared: Option<TokenFile>,
    /// `--token-dir`: a token per IP or pool.
    pub per_sender: Option<TokenDir>,
    /// `--admin-token-file`: the token `PUT /log-level` needs.
    pub admin: Option<TokenFile>,
}

impl Auth {
    fn checks_tokens(&self) -> bool {
        self.shared.is_some() || self.per_sender.is_some()
    }

    /// The scope of the request's token.
    pub fn scope(&self, bearer: Option<&str>) -> Result<Scope, FeedbackRefusal> {
        if !self.checks_tokens() {
            return Ok(Scope::AnySender);
        }
        let Some(bearer) = bearer else {
            return Err(FeedbackRefusal::Unauthorized(
                "no `Authorization: Bearer <token>` header; give the agent its token (--token-file)".into(),
            ));
        };
        if let Some(scope) = self
            .per_sender
            .as_ref()
            .and_then(|dir| dir.scope_of(bearer.as_bytes()))
        {
            return Ok(scope);
        }
        match &self.shared {
            Some(shared) if shared.check(Some(bearer)).is_ok() => Ok(Scope::AnySender),
            _ => Err(FeedbackRefusal::Unauthorized(
                "the bearer token is not one this receiver accepts".into(),
            )),
        }
    }

    /// `PUT /log-level`: the admin token when one is set; with feedback
    /// tokens but no admin token, nobody; with no tokens at all, this machine.
    pub fn administer(&self, head: &RequestHead) -> Result<(), FeedbackRefusal> {
        match &self.admin {
            Some(admin) => admin.check(head.bearer.as_deref()),
            None if self.checks_tokens() => Err(FeedbackRefusal::Forbidden(
                "start standalone mode with --admin-token-file to change the log level over HTTP"
                    .into(),
            )),
            None if head.is_local() => Ok(()),
            None => Err(FeedbackRefusal::Forbidden(
                "the log level is changed from this machine only".into(),
            )),
        }
    }
}

/// What the engine loop, the probes and the HTTP port share.
pub struct Shared {
    core: Mutex<Core>,
    journal: Mutex<Journal>,
    /// Wakes the engine loop to write what a report changed.
    pub wake: Notify,
    /// Wakes the claim checker: a counted report quoted block lists.
    pub claims: Notify,
    auth: Auth,
    /// The process's metrics registry (see [`Shared::register_metrics`]).
    pub registry: ProcessRegistry,
    /// The probes' counters, replaced after every round.
    pub probe_metrics: Published<ProbeCounters>,
    /// The claim checker's counters, replaced after every pass.
    pub claim_metrics: Published<ClaimCounts>,
    /// The last reverse DNS verdict per IP (`mailfleet_reverse_dns_confirmed`).
    pub reverse_dns: crate::probe::reverse_dns_checks::ReverseDnsGauges,
    /// Why the last write of the outputs failed, while it fails.
    pub write_error: Mutex<Option<String>>,
    /// Why the last report could not be stored, while it cannot.
    pub journal_error: Mutex<Option<String>>,
    /// Why HAProxy did not take the last hand-off configuration, until it does.
    pub haproxy_error: Mutex<Option<String>>,
    /// `mailfleet_haproxy_reloads_total`, replaced after every reload.
    pub haproxy_metrics: Published<HaproxyCounts>,
    /// Set once the outputs were written the first time.
    pub ready: AtomicBool,
    /// Syncs of `feedback.wal` that stored reports, and the reports they
    /// stored: reports per sync is what group commit buys.
    log: Arc<FeedbackLogCounts>,
}

/// Syncs of `feedback.wal` that stored reports, and the reports they stored.
#[derive(Default)]
struct FeedbackLogCounts {
    syncs: AtomicU64,
    reports: AtomicU64,
}

impl Families for FeedbackLogCounts {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        FEEDBACK_LOG_SYNCS.write(out, [([], self.syncs.load(Ordering::Relaxed))])?;
        FEEDBACK_LOG_REPORTS.write(out, [([], self.reports.load(Ordering::Relaxed))])
    }
}

/// The engine's families, read from the shared core at each scrape.
struct CoreFamilies(Weak<Shared>);

impl Families for CoreFamilies {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        match self.0.upgrade() {
            Some(shared) => {
                let snapshot = shared.core().metric_snapshot();
                snapshot.encode(out)
            }
            None => Ok(()),
        }
    }
}

impl Shared {
    pub fn new(core: Core, journal: Journal, auth: Auth) -> Self {
        Shared {
            core: Mutex::new(core),
            journal: Mutex::new(journal),
            wake: Notify::new(),
            claims: Notify::new(),
            auth,
            registry: ProcessRegistry::new(),
            probe_metrics: Published::default(),
            claim_metrics: Published::default(),
            reverse_dns: Default::default(),
            write_error: Mutex::new(None),
            journal_error: Mutex::new(None),
            haproxy_error: Mutex::new(None),
            haproxy_metrics: Published::default(),
            ready: AtomicBool::new(false),
            log: Arc::default(),
        }
    }

    /// Puts every source of standalone's metrics in the registry: the
    /// engine's, the probes', the claim checks', the reverse DNS gauges and
    /// the feedback log's (the HTTP port adds its own when it starts).
    pub fn register_metrics(shared: &Arc<Shared>) {
        let registry = &shared.registry;
        registry.register(CoreFamilies(Arc::downgrade(shared)));
        registry.register(shared.probe_metrics.clone());
        registry.register(shared.claim_metrics.clone());
        registry.register(shared.reverse_dns.clone());
        registry.register(Arc::clone(&shared.log));
        registry.register(shared.haproxy_metrics.clone());
    }

    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before [`core`](Self::core) by whoever takes both: the
    /// committer (store, then count) and the snapshot (render, write, then
    /// empty the log).
    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A report waiting to be stored, and where its answer goes.
pub struct Pending {
    entry: Entry,
    answer: oneshot::Sender<Result<FeedbackResponse, FeedbackRefusal>>,
}

/// Most reports stored with one sync.
const MAX_BATCH: usize = 512;

/// Starts the thread that stores reports: it takes every report waiting,
/// appends them all to the log with one sync (group commit), and only then
/// counts them and answers. A failed write answers each 503 and counts none.
pub fn start_committer(
    shared: Arc<Shared>,
) -> (mpsc::Sender<Pending>, std::thread::JoinHandle<()>) {
    let (send, receive) = mpsc::channel::<Pending>();
    let thread = std::thread::Builder::new()
        .name("feedback-wal".into())
        .spawn(move || {
            while let Ok(first) = receive.recv() {
                commit(&shared, take_waiting(first, &receive, MAX_BATCH));
            }
        })
        .expect("a thread starts");
    (send, thread)
}

/// `first` and whatever else is already waiting, up to `most`: the group
/// that shares one sync.
fn take_waiting<T>(first: T, receive: &mpsc::Receiver<T>, most: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < most {
        match receive.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch
}

fn commit(shared: &Shared, batch: Vec<Pending>) {
    let mut journal = shared.journal();
    let stored = journal.append(batch.iter().map(|p| &p.entry));
    let mut failure = shared
        .journal_error
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match stored {
        Err(err) => {
            let text = err.to_string();
            if failure.as_ref() != Some(&text) {
                tracing::error!("{text}; reports are answered 503 until it can be written");
            }
            *failure = Some(text.clone());
            drop(failure);
            for pending in batch {
                let _ = pending
                    .answer
                    .send(Err(FeedbackRefusal::Unavailable(format!(
                        "{text}; the report was not counted, send it again"
                    ))));
            }
        }
        Ok(()) => {
            *failure = None;
            drop(failure);
            shared.log.syncs.fetch_add(1, Ordering::Relaxed);
            shared
                .log
                .reports
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let mut core = shared.core();
            for pending in batch {
                let answer = core.receive(&pending.entry.report, pending.entry.at);
                let _ = pending.answer.send(answer);
            }
        }
    }
}

/// The receiver the HTTP port calls.
pub struct Receiver {
    pub shared: Arc<Shared>,
    commits: mpsc::Sender<Pending>,
}

impl Receiver {
    pub fn new(shared: Arc<Shared>, commits: mpsc::Sender<Pending>) -> Self {
        Receiver { shared, commits }
    }

    async fn count(&self, report: FeedbackReport) -> Result<FeedbackResponse, FeedbackRefusal> {
        let now = Timestamp::now();
        if let Some(answer) = self.shared.core().check(&report, now)? {
            return Ok(answer);
        }
        let conclusive = !report.conclusive.is_empty();
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            entry: Entry { at: now, report },
            answer,
        };
        let closed = || FeedbackRefusal::Unavailable("standalone mode is stopping; retry".into());
        self.commits.send(pending).map_err(|_| closed())?;
        let answer = answered.await.map_err(|_| closed())?;
        if matches!(&answer, Ok(response) if !response.duplicate) {
            self.shared.wake.notify_one();
            if conclusive {
                self.shared.claims.notify_one();
            }
        }
        answer
    }
}

impl FeedbackReceiver for Receiver {
    type Caller = Scope;

    async fn authenticate(&self, head: &RequestHead) -> Result<Scope, FeedbackRefusal> {
        self.shared.auth.scope(head.bearer.as_deref())
    }

    async fn receive(
        &self,
        scope: Scope,
        report: FeedbackReport,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        let source_ip = report.source_ip;
        let agent = report.agent.name.clone();
        let answer = match scope.allows(&report) {
            Ok(()) => self.count(report).await,
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = &answer {
            tracing::warn!(%source_ip, %agent, "feedback refused: {refusal}");
        }
        answer
    }

    /// A posted abuse report: counted against the pool IP it names, as a
    /// report of that IP (the token must cover it), journalled before the answer.
    async fn receive_abuse_report(
        &self,
        scope: Scope,
        posted: crate::serve::abuse::PostedAbuseReport,
    ) -> Result<crate::serve::abuse::AbuseReportAnswer, FeedbackRefusal> {
        let report = {
            let core = self.shared.core();
            crate::serve::abuse::feedback_report(&posted, core.fleet(), None, Timestamp::now())
                .map_err(|e| e.refusal())?
        };
        scope.allows(&report)?;
        let answer = self.count(report.clone()).await?;
        Ok(crate::serve::abuse::AbuseReportAnswer::new(
            &report,
            answer.duplicate,
        ))
    }

    fn may_administer(&self, head: &RequestHead) -> Result<(), FeedbackRefusal> {
        self.shared.auth.administer(head)
    }
}

impl Observability for Receiver {
    fn registry(&self) -> &ProcessRegistry {
        &self.shared.registry
    }

    fn health(&self) -> Result<ProbeReport, ProbeFailure> {
        let mut problems: Vec<ProbeProblem> = self
            .shared
            .core()
            .problems()
            .into_iter()
            .map(|detail| ProbeProblem::new(ProblemCategory::Configuration, detail))
            .collect();
        for error in [
            &self.shared.write_error,
            &self.shared.journal_error,
            &self.shared.haproxy_error,
        ] {
            if let Some(err) = &*error.lock().unwrap_or_else(|p| p.into_inner()) {
                problems.push(ProbeProblem::new(ProblemCategory::Output, err.clone()));
            }
        }
        ProbeFailure::check(problems, ProbeReport::Healthy)
    }

    fn ready(&self) -> Result<ProbeReport, ProbeFailure> {
        if self.shared.ready.load(Ordering::Acquire) {
            Ok(ProbeReport::Ready)
        } else {
            Err(ProbeFailure::single(
                ProblemCategory::Starting,
                "the outputs have not been written yet",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_waiting_together_form_one_group_up_to_the_most() {
        let (send, receive) = mpsc::channel();
        for n in 1..=600 {
            send.send(n).unwrap();
        }
        let first = receive.recv().unwrap();
        let group = take_waiting(first, &receive, MAX_BATCH);
        assert_eq!(group, (1..=512).collect::<Vec<_>>());
        let first = receive.recv().unwrap();
        assert_eq!(take_waiting(first, &receive, MAX_BATCH).len(), 88);
        send.send(601).unwrap();
        let first = receive.recv().unwrap();
        assert_eq!(
            take_waiting(first, &receive, MAX_BATCH),
            [601],
            "nothing waiting: a group of one"
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        for other in [&b"secreT"[..], b"secret2", b"secre", b"", b"Secret"] {
            assert!(!constant_time_eq(b"secret", other), "{other:?}");
        }
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_token_file_is_read_at_each_check_and_a_lost_file_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = TokenFile::open(&path).unwrap();
        assert!(token.check(Some("first")).is_ok());
        assert!(matches!(
            token.check(None),
            Err(FeedbackRefusal::Unauthorized(_))
        ));
        assert!(matches!(
            token.check(Some("wrong")),
            Err(FeedbackRefusal::Unauthorized(_))
        ));
        std::fs::write(&path, "second").unwrap();
        assert!(token.check(Some("first")).is_err());
        assert!(token.check(Some("second")).is_ok());
        std::fs::remove_file(&path).unwrap();
        assert!(token.check(Some("second")).is_ok());
        std::fs::write(&path, "  \n").unwrap();
        assert!(
            token.check(Some("second")).is_ok(),
            "an emptied file keeps the last token"
        );
        let err = TokenFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        let err = TokenFile::open(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read --token-file"), "{err}");
    }

    #[test]
    fn a_token_per_sender_reports_for_its_own_ip_or_pool_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("203.0.113.10"), "token-10\n").unwrap();
        std::fs::write(dir.path().join("2001-db8--10"), "token-v6").unwrap();
        std::fs::write(dir.path().join("mail_reserve"), "token-reserve").unwrap();
        std::fs::write(dir.path().join("not a sender"), "ignored").unwrap();
        std::fs::create_dir(dir.path().join("..2026_01_01")).unwrap();
        let auth = Auth {
            per_sender: Some(TokenDir::open(dir.path()).unwrap()),
            ..Auth::default()
        };
        assert_eq!(
            auth.scope(Some("token-10")).unwrap(),
            Scope::Ip("203.0.113.10".parse().unwrap())
        );
        assert_eq!(
            auth.scope(Some("token-v6")).unwrap(),
            Scope::Ip("2001:db8::10".parse().unwrap())
        );
        assert!(matches!(
            auth.scope(Some("ignored")),
            Err(FeedbackRefusal::Unauthorized(_))
        ));
        assert!(matches!(
            auth.scope(None),
            Err(FeedbackRefusal::Unauthorized(_))
        ));
        let mut report: FeedbackReport = serde_json::from_value(serde_json::json!({
            "api_version": crate::agent::report::FEEDBACK_API_VERSION,
            "agent": {"name": "bulk-0", "instance": "i"},
            "sequence": 1,
            "source_ip": "203.0.113.11",
            "pool": {"namespace": "mail", "name": "bulk"},
            "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"}
        }))
        .unwrap();
        let ten = auth.scope(Some("token-10")).unwrap();
        let err = ten.allows(&report).unwrap_err();
        assert!(matches!(err, FeedbackRefusal::Forbidden(_)), "{err}");
        report.source_ip = "203.0.113.10".parse().unwrap();
        assert!(ten.allows(&report).is_ok());
        let reserve = auth.scope(Some("token-reserve")).unwrap();
        assert!(reserve.allows(&report).is_err());
        report.pool.name = "reserve".into();
        assert!(reserve.allows(&report).is_ok());
        let head = RequestHead {
            bearer: Some("token-10".into()),
            peer: Some("127.0.0.1:5000".parse().unwrap()),
        };
        assert!(
            auth.administer(&head).is_err(),
            "a sender token never changes the log level"
        );
    }

    #[test]
    fn the_admin_token_guards_the_log_level() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin"), "root-token").unwrap();
        let auth = Auth {
            admin: Some(TokenFile::open(&dir.path().join("admin")).unwrap()),
            ..Auth::default()
        };
        let head = |bearer: Option<&str>| RequestHead {
            bearer: bearer.map(str::to_string),
            peer: Some("198.51.100.1:5000".parse().unwrap()),
        };
        assert!(auth.administer(&head(Some("root-token"))).is_ok());
        assert!(auth.administer(&head(Some("nope"))).is_err());
        assert!(auth.administer(&head(None)).is_err());
        let open = Auth::default();
        assert!(
            open.administer(&head(None)).is_err(),
            "not from the network"
        );
        assert!(open
            .administer(&RequestHead {
                bearer: None,
                peer: Some("127.0.0.1:1".parse().unwrap()),
            })
            .is_ok());
    }
}
