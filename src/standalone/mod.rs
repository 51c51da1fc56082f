//! Standalone mode: the operator's engine without Kubernetes, for fleets on
//! plain VMs and for the lab (docs/STANDALONE.md).
//!
//! Manifests come from a folder (polled for changes; refused manifests leave
//! the last good ones in force and show on `/healthz`), agents report on the
//! same `POST /v1/feedback` as in the operator, the DNSBL and SNDS probes run
//! here, and everything that results is written into the output folder:
//! `state.yaml` (read back at start, so a restart keeps reputation),
//! `routes.json`, `senders/<ip slug>/` and `events.jsonl`.
//!
//! [`core`] decides without I/O; this module reads the clock, the files and
//! the network around it.

pub mod core;
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
use crate::probe::dnsbl::Nameserver;
use crate::probe::{ProbeOptions, SecretSource, SecretsDir, SignalProbes};
use crate::reputation::classifier::ClassifierConfig;
use crate::routing::postfix::PostfixOptions;
use crate::serve::{self, LogLevelHandle};

use self::core::Core;
use self::outputs::{OutputWriter, WriteError};
use self::service::{Receiver, Shared, TokenError, TokenFile};
use self::state::{StateError, STATE_FILE};
use self::watch::Fingerprint;

/// How often the probe task looks again when no probe is scheduled sooner
/// (a manifest change may have added one).
const PROBE_RECHECK: Duration = Duration::from_secs(5);

/// Everything `mailfleet standalone` is told.
#[derive(Clone, Debug)]
pub struct Options {
    pub manifests: PathBuf,
    pub out: PathBuf,
    pub http_addr: SocketAddr,
    /// Agents must send the token in this file; `None`: no authentication.
    pub token_file: Option<PathBuf>,
    /// Secrets as `DIR/<secret name>/<key>` (the SNDS key).
    pub secrets_dir: Option<PathBuf>,
    /// Ask DNSBL zones through this resolver instead of the pools' own.
    pub dnsbl_resolver: Option<Nameserver>,
    /// How often reputation timers advance and the outputs are checked.
    pub tick: Duration,
    pub postfix: PostfixOptions,
    /// The user's own classifier rules and providers.
    pub rules: Option<ClassifierConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
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
        fingerprint: Some(Fingerprint::of(&options.manifests)),
        ..EngineLoop::default()
    };
    let loaded = manifests::load_dir(&options.manifests)?;
    let state_path = options.out.join(STATE_FILE);
    let saved = match std::fs::read_to_string(&state_path) {
        Ok(text) => Some(state::parse(&text, &state_path)?),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(StandaloneError::ReadState {
                path: state_path,
                source,
            })
        }
    };
    let restored = saved.is_some();
    let (core, gone) = Core::start(
        loaded,
        saved,
        options.rules.clone(),
        options.postfix.clone(),
        Timestamp::now(),
    )?;
    for object in gone {
        tracing::warn!(
            "{object} is in {} but no longer in the manifests; its state is dropped",
            state_path.display()
        );
    }
    let token = options
        .token_file
        .as_deref()
        .map(TokenFile::open)
        .transpose()?;
    if token.is_none() {
        tracing::warn!("no --token-file: feedback is accepted from anyone who reaches the port");
    }
    let listener = tokio::net::TcpListener::bind(options.http_addr)
        .await
        .map_err(|source| StandaloneError::Bind {
            addr: options.http_addr,
            source,
        })?;
    let address = listener.local_addr().map_err(StandaloneError::Serve)?;

    let shared = Arc::new(Shared::new(core, token));
    let mut writer = OutputWriter::new(&options.out)?;
    engine.write(&shared, &mut writer)?;
    shared.ready.store(true, Ordering::Release);
    tracing::info!(
        manifests = %options.manifests.display(),
        out = %options.out.display(),
        restored_state = restored,
        "standalone mode serving http://{address}/v1/feedback"
    );

    let (stop, stopping) = channel::channel(false);
    let receiver = Arc::new(Receiver(Arc::clone(&shared)));
    let server = tokio::spawn(serve::serve(
        listener,
        Arc::clone(&receiver),
        receiver,
        log_level,
        stopped(stopping.clone()),
    ));
    let probe_options = ProbeOptions {
        resolver: options.dnsbl_resolver.clone(),
        ..ProbeOptions::default()
    };
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
    engine.step(&shared, &mut writer, &options.manifests);
    tracing::info!("stopped");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(StandaloneError::Serve(err)),
        Err(join) => Err(StandaloneError::Serve(std::io::Error::other(join))),
    }
}

async fn stopped(mut stopping: channel::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
}

/// The engine side of the loop: notices manifest changes, advances the
/// fleet, writes what changed. Remembers the last failures so each is
/// logged once, not at every tick.
#[derive(Default)]
struct EngineLoop {
    fingerprint: Option<Fingerprint>,
    last_tick_error: Option<String>,
    last_write_error: Option<String>,
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
                core.reload(loaded, now);
                match core.problems().first() {
                    Some(problem) if problem.starts_with("manifests refused") => {
                        tracing::error!("{problem}");
                    }
                    _ => tracing::info!(
                        pools = core.fleet().pools.len(),
                        routes = core.fleet().routes.len(),
                        "manifests reloaded"
                    ),
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

    fn write(&mut self, shared: &Shared, writer: &mut OutputWriter) -> Result<(), WriteError> {
        let (outputs, events) = {
            let mut core = shared.core();
            (core.outputs(), core.take_events())
        };
        for line in &events {
            tracing::info!(target: "mailfleet::events", "{line}");
        }
        let result = writer
            .append_events(&events)
            .and_then(|()| writer.write(&outputs));
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

/// The Secret folder, when one is given.
struct Secrets(Option<SecretsDir>);

impl SecretSource for Secrets {
    async fn secret(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
        match &self.0 {
            Some(dir) => dir.secret(namespace, name, key).await,
            None => Err(format!(
                "no --secrets-dir given; start standalone mode with --secrets-dir DIR holding {name}/{key}"
            )),
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
        *shared
            .probe_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = probes.metrics();
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
