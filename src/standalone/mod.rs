//! Standalone mode: the operator's engine without Kubernetes, for fleets on
//! plain VMs and for the lab (docs/STANDALONE.md).
//!
//! Manifests come from a folder (polled for changes; refused manifests leave
//! the last good ones in force and show on `/healthz`), agents report on the
//! same `POST /v1/feedback` as in the operator, the DNSBL and SNDS probes run
//! here, and everything that results is written into the output folder:
//! `state.json` (read back at start, so a restart keeps reputation),
//! `routes.json`, `senders/<ip slug>/` and `events.jsonl`. A report is
//! stored in `feedback.wal` before it is counted and answered ([`journal`]).
//!
//! [`core`] decides without I/O; this module reads the clock, the files and
//! the network around it.

pub mod core;
pub mod haproxy;
pub mod journal;
pub mod last_good;
pub mod outputs;
pub mod service;
pub mod state;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch as channel;

use crate::fleet::FleetError;
use crate::manifests::{self, ManifestError};
use crate::probe::claim_check::{ClaimCheckLimits, ClaimChecks};
use crate::probe::dnsbl::Nameserver;
use crate::probe::reverse_dns_checks::ReverseDnsChecks;
use crate::probe::{ProbeOptions, SecretSource, SecretsDir, SignalProbes};
use crate::reputation::classifier::ClassifierConfig;
use crate::routing::haproxy::HaproxyOptions;
use crate::routing::postfix::PostfixOptions;
pub use crate::serve::TlsFiles;
use crate::serve::{self, LogLevelHandle, TlsError};

use self::core::Core;
use self::haproxy::{Applied, HaproxyApplier};
use self::journal::{Journal, JournalError};
use self::outputs::{OutputWriter, WriteError};
use self::service::{Auth, Receiver, Shared, TokenDir, TokenError, TokenFile};
use self::state::{SavedState, StateError, LEGACY_STATE_FILE, STATE_FILE};
use self::watch::Fingerprint;

/// How often the probe task looks again when no probe is scheduled sooner
/// (a manifest change may have added one).
const PROBE_RECHECK: Duration = Duration::from_secs(5);

/// How often the reverse DNS task looks for IPs that are due (each IP is
/// checked hourly; a manifest change may have added one).
const REVERSE_DNS_RECHECK: Duration = Duration::from_secs(5);

/// Everything `mailfleet standalone` is told.
#[derive(Clone, Debug)]
pub struct Options {
    pub manifests: PathBuf,
    pub out: PathBuf,
    pub http_addr: SocketAddr,
    /// Agents must send the token in this file; it covers every IP.
    pub token_file: Option<PathBuf>,
    /// A token per sender: files named after an IP or `<namespace>_<pool>`.
    pub token_dir: Option<PathBuf>,
    /// The token `PUT /log-level` needs.
    pub admin_token_file: Option<PathBuf>,
    /// Secrets as `DIR/<secret name>/<key>` (the SNDS key).
    pub secrets_dir: Option<PathBuf>,
    /// Ask DNSBL zones through this resolver instead of the pools' own.
    pub dnsbl_resolver: Option<Nameserver>,
    /// How often reputation timers advance and the outputs are checked.
    pub tick: Duration,
    pub postfix: PostfixOptions,
    /// The user's own classifier rules and providers.
    pub rules: Option<ClassifierConfig>,
    /// Serve the port over TLS with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Hand routes off through HAProxy, whose configuration standalone writes.
    pub haproxy: Option<HaproxyHandoff>,
}

/// `--haproxy-config` and what goes with it.
#[derive(Clone, Debug)]
pub struct HaproxyHandoff {
    pub options: HaproxyOptions,
    /// The `haproxy.cfg` standalone writes.
    pub config: PathBuf,
    /// The shell command that makes HAProxy read it again.
    pub reload_command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Manifests(#[from] ManifestError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot read {path}: {source}")]
    ReadState {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot listen on --http-addr {addr}: {source}; pick a free address")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot move the unreadable {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the HTTP port failed: {0}")]
    Serve(std::io::Error),
}

/// Runs until `shutdown` completes, then writes the outputs one last time.
pub async fn run(
    options: Options,
    log_level: Option<LogLevelHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StandaloneError> {
    // Taken before loading: a change made while loading shows at the first tick.
    let mut engine = EngineLoop {
        out: options.out.clone(),
        fingerprint: Some(Fingerprint::of(&options.manifests)),
        haproxy: options
            .haproxy
            .as_ref()
            .map(|h| HaproxyApplier::new(&h.config, &h.reload_command)),
        ..EngineLoop::default()
    };
    let loaded = manifests::load_dir(&options.manifests);
    std::fs::create_dir_all(&options.out).map_err(|source| WriteError {
        path: options.out.clone(),
        source,
    })?;
    let state_path = options.out.join(STATE_FILE);
    let (saved, discarded) = read_state(&options.out)?;
    let restored = saved.is_some();
    let (journal, replay) = Journal::open(&options.out)?;
    let (mut core, gone) = start_core(&options, loaded, saved)?;
    if let Some(handoff) = &options.haproxy {
        core.set_haproxy(handoff.options.clone(), Timestamp::now());
    }
    for object in gone {
        tracing::warn!(
            "{object} is in {} but no longer in the manifests; its state is dropped",
            state_path.display()
        );
    }
    if let Some(discarded) = discarded {
        core.note_discarded_state(&discarded.file, &discarded.moved_to, &discarded.blocked);
    }
    if replay.skipped > 0 {
        tracing::warn!(
            lines = replay.skipped,
            "feedback.wal ends in a line cut short (a crash while storing); that report was never acknowledged"
        );
    }
    if !replay.entries.is_empty() {
        let counted = core.replay(replay.entries.iter().map(|e| (&e.report, e.at)));
        tracing::info!(
            stored = replay.entries.len(),
            counted,
            "reports stored before the restart replayed from feedback.wal"
        );
    }
    let auth = Auth {
        shared: options
            .token_file
            .as_deref()
            .map(TokenFile::open)
            .transpose()?,
        per_sender: options
            .token_dir
            .as_deref()
            .map(TokenDir::open)
            .transpose()?,
        admin: options
            .admin_token_file
            .as_deref()
            .map(TokenFile::open)
            .transpose()?,
    };
    match (&auth.shared, &auth.per_sender) {
        (None, None) => tracing::warn!(
            "no --token-dir or --token-file: feedback is accepted from anyone who reaches the port"
        ),
        (Some(_), _) => tracing::warn!(
            "--token-file is one token for every sender: any holder may report for any IP; --token-dir gives each sender its own"
        ),
        _ => {}
    }
    // Refused before the port opens: a typo in a key path is not a plain-HTTP port.
    let tls = options.tls.as_ref().map(TlsFiles::acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(options.http_addr)
        .await
        .map_err(|source| StandaloneError::Bind {
            addr: options.http_addr,
            source,
        })?;
    let address = listener.local_addr().map_err(StandaloneError::Serve)?;

    let shared = Arc::new(Shared::new(core, journal, auth));
    Shared::register_metrics(&shared);
    let mut writer = OutputWriter::new(&options.out)?;
    engine.write(&shared, &mut writer)?;
    shared.ready.store(true, Ordering::Release);
    tracing::info!(
        manifests = %options.manifests.display(),
        out = %options.out.display(),
        restored_state = restored,
        "standalone mode serving {}://{address}/v1/feedback",
        if tls.is_some() { "https" } else { "http" }
    );

    let (stop, stopping) = channel::channel(false);
    let (commits, committer) = service::start_committer(Arc::clone(&shared));
    let receiver = Arc::new(Receiver::new(Arc::clone(&shared), commits));
    let server = tokio::spawn(serve::serve_on(
        listener,
        tls,
        Arc::clone(&receiver),
        receiver,
        log_level,
        serve::ServeLimits::default(),
        stopped(stopping.clone()),
    ));
    let probe_options = ProbeOptions {
        resolver: options.dnsbl_resolver.clone(),
        ..ProbeOptions::default()
    };
    let claims = tokio::spawn(claim_loop(
        Arc::clone(&shared),
        ClaimChecks::new(probe_options.clone(), ClaimCheckLimits::default()),
        stopping.clone(),
    ));
    let reverse_dns = tokio::spawn(reverse_dns_loop(
        Arc::clone(&shared),
        ReverseDnsChecks::new(options.dnsbl_resolver.clone()),
        stopping.clone(),
    ));
    let probes = tokio::spawn(probe_loop(
        Arc::clone(&shared),
        SignalProbes::new(probe_options),
        Secrets(options.secrets_dir.clone().map(SecretsDir::new)),
        stopping,
    ));

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(options.tick) => {}
            () = shared.wake.notified() => {}
        }
        engine.step(&shared, &mut writer, &options.manifests);
    }
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let served = server.await;
    let _ = probes.await;
    let _ = claims.await;
    let _ = reverse_dns.await;
    // The port is closed and its receiver dropped: the committer ends.
    let _ = tokio::task::spawn_blocking(move || committer.join()).await;
    engine.step(&shared, &mut writer, &options.manifests);
    tracing::info!("stopped");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(StandaloneError::Serve(err)),
        Err(join) => Err(StandaloneError::Serve(std::io::Error::other(join))),
    }
}

/// Starts the engine from the manifests and keeps them as the last good set;
/// when they do not load or compile, from the last good set kept in `--out`
/// (a reboot after a broken push still has an engine), saying so in the log
/// and on `/healthz`. Without a kept set, a broken start is refused.
fn start_core(
    options: &Options,
    loaded: Result<manifests::Manifests, ManifestError>,
    saved: Option<SavedState>,
) -> Result<(Core, Vec<String>), StandaloneError> {
    let start = |manifests, saved| {
        Core::start(
            manifests,
            saved,
            options.rules.clone(),
            options.postfix.clone(),
            Timestamp::now(),
        )
    };
    let refused = match loaded {
        Ok(manifests) => match start(manifests.clone(), saved.clone()) {
            Ok(started) => {
                last_good::save(&options.out, &manifests)?;
                return Ok(started);
            }
            Err(err) => (err.category(), StandaloneError::from(err)),
        },
        Err(err) => (err.category(), StandaloneError::from(err)),
    };
    let (category, err) = refused;
    let kept = last_good::path(&options.out);
    let Some(Ok(manifests)) = last_good::load(&options.out) else {
        return Err(err);
    };
    let (mut core, gone) = start(manifests, saved)?;
    let message = format!(
        "{err}; started from the last good manifests, kept in {}",
        kept.display()
    );
    tracing::error!("manifests refused at start: {message}");
    core.refuse_manifests(category, message);
    Ok((core, gone))
}

async fn stopped(mut stopping: channel::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
}

/// The engine side of the loop: notices manifest changes, advances the
/// fleet, writes what changed. Remembers the last failures so each is
/// logged once, not at every tick.
#[derive(Default)]
struct EngineLoop {
    /// `--out`, where the last good manifests are kept.
    out: PathBuf,
    fingerprint: Option<Fingerprint>,
    /// Events taken from the core and not yet written.
    pending_events: Vec<String>,
    last_tick_error: Option<String>,
    last_write_error: Option<String>,
    /// Puts the hand-off configuration in force (`--haproxy-config`).
    haproxy: Option<HaproxyApplier>,
}

impl EngineLoop {
    fn step(&mut self, shared: &Shared, writer: &mut OutputWriter, manifests_dir: &Path) {
        let now = Timestamp::now();
        let current = Fingerprint::of(manifests_dir);
        let reload = match &self.fingerprint {
            None => {
                self.fingerprint = Some(current);
                None
            }
            Some(seen) if *seen == current => None,
            Some(_) => {
                self.fingerprint = Some(current);
                Some(manifests::load_dir(manifests_dir))
            }
        };
        {
            let mut core = shared.core();
            if let Some(loaded) = reload {
                let candidate = loaded.as_ref().ok().cloned();
                core.reload(loaded, now);
                match core.problems().first() {
                    Some(problem) if problem.starts_with("manifests refused") => {
                        tracing::error!("{problem}");
                    }
                    _ => {
                        tracing::info!(
                            pools = core.fleet().pools.len(),
                            routes = core.fleet().routes.len(),
                            "manifests reloaded"
                        );
                        if let Some(Err(err)) = candidate.map(|m| last_good::save(&self.out, &m)) {
                            tracing::error!(
                                "cannot keep the manifests as the last good set: {err}"
                            );
                        }
                    }
                }
            }
            match core.tick(now) {
                Ok(()) => self.last_tick_error = None,
                Err(err) => {
                    let text = err.to_string();
                    if self.last_tick_error.as_ref() != Some(&text) {
                        tracing::error!("cannot advance reputation: {text}");
                    }
                    self.last_tick_error = Some(text);
                }
            }
        }
        if let Err(err) = self.write(shared, writer) {
            let text = err.to_string();
            if self.last_write_error.as_ref() != Some(&text) {
                tracing::error!("{text}");
            }
            self.last_write_error = Some(text);
        } else {
            self.last_write_error = None;
        }
    }

    /// Writes what changed. The log of stored reports is held while the
    /// state is rendered and written, and emptied once that state is on disk:
    /// every report in the log is then in the state.
    fn write(&mut self, shared: &Shared, writer: &mut OutputWriter) -> Result<(), WriteError> {
        let mut journal = shared.journal();
        let outputs = {
            let mut core = shared.core();
            self.pending_events.extend(core.take_events());
            core.outputs()
        };
        let events = std::mem::take(&mut self.pending_events);
        // The sender folders first: a block's rewrite must not wait for the
        // sync of the events that tell about it.
        let result = writer.write(&outputs);
        let appended = writer.append_events(&events);
        match &appended {
            Ok(()) => {
                for line in &events {
                    tracing::info!(target: "mailfleet::events", "{line}");
                }
            }
            // Kept for the next write: events are written whole or not at all.
            Err(_) => self.pending_events = events,
        }
        let result = result.and_then(|written| appended.map(|()| written));
        // After the senders' files: HAProxy follows the routes they were given.
        if let (Some(applier), Some(config), Ok(_)) = (&mut self.haproxy, &outputs.haproxy, &result)
        {
            let outcome = applier.apply(config);
            let mut error = shared
                .haproxy_error
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(Applied::Reloaded) => {
                    tracing::info!(
                        path = %applier.path().display(),
                        "HAProxy reloaded with the routes' hand-off configuration"
                    );
                    *error = None;
                }
                Ok(Applied::Unchanged) => {}
                Err(err) => {
                    tracing::error!("{err}");
                    *error = Some(err.to_string());
                }
            }
            shared.haproxy_metrics.publish(applier.counts());
        }
        let cleared = match &result {
            Ok(_) => journal.clear().map_err(|e| WriteError {
                path: e.path,
                source: e.source,
            }),
            Err(_) => Ok(()),
        };
        drop(journal);
        let result = result.and_then(|written| cleared.map(|()| written));
        let mut failure = shared.write_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(written) => {
                *failure = None;
                for path in written {
                    tracing::debug!(path = %path.display(), "written");
                }
                Ok(())
            }
            Err(err) => {
                *failure = Some(err.to_string());
                Err(err)
            }
        }
    }
}

/// A state file that could not be read, moved aside.
struct Discarded {
    file: PathBuf,
    moved_to: PathBuf,
    blocked: Vec<String>,
}

/// Reads `state.json` (or, before the first run of this version, the
/// `state.yaml` of earlier runs). A file that cannot be read is moved aside
/// and its Blocked pairs are reported: nothing is forgotten silently.
fn read_state(out: &Path) -> Result<(Option<SavedState>, Option<Discarded>), StandaloneError> {
    let current = out.join(STATE_FILE);
    let legacy = out.join(LEGACY_STATE_FILE);
    type Parse = fn(&str, &Path) -> Result<SavedState, StateError>;
    let (path, parse): (PathBuf, Parse) = if current.exists() || !legacy.exists() {
        (current, state::parse)
    } else {
        (legacy, state::parse_legacy)
    };
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
        Err(source) => return Err(StandaloneError::ReadState { path, source }),
    };
    let err = match parse(&text, &path) {
        Ok(saved) => return Ok((Some(saved), None)),
        Err(err) => err,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let moved_to = out.join(format!(
        "{name}.unreadable-{}",
        Timestamp::now().as_second()
    ));
    std::fs::rename(&path, &moved_to).map_err(|source| StandaloneError::MoveAside {
        path: path.clone(),
        source,
    })?;
    let blocked = state::blocked_pairs(&text);
    tracing::error!(
        blocked_pairs = blocked.len(),
        "{err}; moved it to {} and starting without it. Blocked pairs it held (pool ip provider): {}",
        moved_to.display(),
        if blocked.is_empty() {
            "none found".to_string()
        } else {
            blocked.join(", ")
        }
    );
    Ok((
        None,
        Some(Discarded {
            file: path,
            moved_to,
            blocked,
        }),
    ))
}

/// The Secret folder, when one is given.
struct Secrets(Option<SecretsDir>);

impl SecretSource for Secrets {
    async fn secret(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Vec<u8>, crate::probe::runner::SecretError> {
        match &self.0 {
            Some(dir) => dir.secret(namespace, name, key).await,
            None => Err(crate::probe::runner::SecretError::NoSecretsDir {
                name: name.into(),
                key: key.into(),
            }),
        }
    }
}

/// Asks the zones that receivers' replies name, as soon as a report quoting
/// one is counted (and at every probe recheck, for claims restored at start).
async fn claim_loop(
    shared: Arc<Shared>,
    mut checks: ClaimChecks,
    stopping: channel::Receiver<bool>,
) {
    loop {
        let (queries, problems) = {
            let core = shared.core();
            checks.due(&core.fleet().pools, Timestamp::now())
        };
        for problem in problems {
            tracing::warn!("claim check: {problem}");
        }
        if !queries.is_empty() {
            let clock = Timestamp::now;
            let asked = tokio::select! {
                signals = checks.ask(queries, &clock) => signals,
                () = stopped(stopping.clone()) => return,
            };
            let problems = shared.core().apply_probes(asked, &[], Timestamp::now());
            shared.wake.notify_one();
            for problem in problems {
                tracing::warn!("claim check: {problem}");
            }
        }
        shared.claim_metrics.publish(checks.metrics());
        tokio::select! {
            () = shared.claims.notified() => {}
            () = tokio::time::sleep(PROBE_RECHECK) => {}
            () = stopped(stopping.clone()) => return,
        }
    }
}

/// The forward-confirmed reverse DNS of every IP, as the operator's leader
/// checks it: through `--dnsbl-resolver`, else each pool's resolver.
async fn reverse_dns_loop(
    shared: Arc<Shared>,
    mut checks: ReverseDnsChecks,
    stopping: channel::Receiver<bool>,
) {
    loop {
        let pools = shared.core().fleet().pools.clone();
        let rounds = tokio::select! {
            rounds = checks.round(&pools, &shared.reverse_dns, std::time::Instant::now()) => rounds,
            () = stopped(stopping.clone()) => return,
        };
        if !rounds.is_empty() {
            shared.core().apply_reverse_dns(&rounds, Timestamp::now());
            shared.wake.notify_one();
        }
        tokio::select! {
            () = tokio::time::sleep(REVERSE_DNS_RECHECK) => {}
            () = stopped(stopping.clone()) => return,
        }
    }
}

async fn probe_loop(
    shared: Arc<Shared>,
    mut probes: SignalProbes,
    secrets: Secrets,
    mut stopping: channel::Receiver<bool>,
) {
    loop {
        let now = Timestamp::now();
        let pools = shared.core().fleet().pools.clone();
        // A round waiting on a slow resolver or feed must not hold up shutdown.
        let round = tokio::select! {
            round = probes.run_due(&pools, &secrets, now) => round,
            () = stopped(stopping.clone()) => return,
        };
        shared.probe_metrics.publish(probes.metrics());
        let mut problems = round.problems;
        if !round.signals.is_empty() || !round.dnsbl_health.is_empty() {
            problems.extend(shared.core().apply_probes(
                round.signals,
                &round.dnsbl_health,
                Timestamp::now(),
            ));
            shared.wake.notify_one();
        }
        for problem in problems {
            tracing::warn!("probe: {problem}");
        }
        let wait = probes
            .next_due()
            .and_then(|due| Duration::try_from(due.duration_since(Timestamp::now())).ok())
            .unwrap_or(PROBE_RECHECK)
            .clamp(Duration::from_millis(100), PROBE_RECHECK);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(stopping.clone()) => return,
        }
        if *stopping.borrow_and_update() {
            return;
        }
    }
}
