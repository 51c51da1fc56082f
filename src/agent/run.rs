//! `agent run`: the sidecar's loop. Three threads:
//! - the main loop follows the log, classifies and counts each line, seals a
//!   report every interval (at once when a conclusive reply is read), saves
//!   the state, and applies a new sender configuration when one arrives;
//! - the sender posts the oldest waiting report until it is acknowledged,
//!   backing off while the endpoint fails or hangs;
//! - the metrics listener serves `/metrics` and `/healthz`.
//!
//! The main loop and the sender share the [`Reporter`] under one lock; the
//! state file is written under that lock so it always matches the outbox.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::agent::apply::PostfixTarget;
use crate::agent::backoff::{seed_of, Backoff};
use crate::agent::complaint_inbox::ComplaintInbox;
use crate::agent::config::{read_config_dir, ConfigError, ConfigSnapshot};
use crate::agent::follow::{FollowOptions, Follower, Input, Notice};
use crate::agent::http::{self, Endpoint};
use crate::agent::line::{classify_line, LineSkip, LogFormat};
use crate::agent::metrics::{self, Metrics};
use crate::agent::pacer::{paced_line, PacedLine, Pacer, PostfixHolds, MAX_TRACKED_MESSAGES};
use crate::agent::queue::{queue_report, read_hold_queue, read_postfix_queue, RouteLookup};
use crate::agent::report::{ConfigHint, FeedbackResponse};
use crate::agent::reporter::{Reporter, ReporterConfig, Sealed};
use crate::agent::state::{AgentState, StateError, MAX_SAVED_COMPLAINT_IDS, STATE_FORMAT};
use crate::agent::time::logged_time;
use crate::reputation::classifier::Classifier;
use crate::reputation::postfix_log::Skip;
use crate::routing::sender_config::{parse_document, SENDER_JSON_KEY};
use crate::sender::bind::BindWatch;

/// Everything `agent run` is told.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub log: PathBuf,
    pub format: LogFormat,
    pub state_file: PathBuf,
    pub endpoint: Endpoint,
    /// Bearer token file, read before every request (tokens are rotated); `None` sends no token.
    pub token_file: Option<PathBuf>,
    pub reporter: ReporterConfig,
    /// How often the counts are reported.
    pub interval: Duration,
    /// Deadline of one request.
    pub timeout: Duration,
    pub backoff: Backoff,
    /// How often the log is read.
    pub poll: Duration,
    pub follow: FollowOptions,
    /// `/metrics` listener; `None` serves none.
    pub listen: Option<SocketAddr>,
    /// The mounted ConfigMap with the sender configuration.
    pub config_dir: Option<PathBuf>,
    /// How often the config folder is read.
    pub config_poll: Duration,
    /// Where to apply the configuration; `None` only records its version.
    pub postfix: Option<PostfixTarget>,
    /// Zone of syslog timestamps.
    pub zone: TimeZone,
    /// On stop, how long the sender may keep trying to deliver the last reports.
    pub shutdown_timeout: Duration,
    /// The pacer's window (`None`: no pacing; needs `postfix`).
    pub pace_window: Option<Duration>,
    /// How often the queue is read with `postqueue -j` (`None`: never; needs `postfix`).
    pub queue_interval: Option<Duration>,
    /// Set while the sender drains its queue: no configuration is applied and
    /// the pacer holds nothing, so the hand-off settings stay.
    pub hold_config: Arc<AtomicBool>,
    /// Set by the sender when its drain has ended; the reports from then on carry it.
    pub drained: Arc<Mutex<Option<crate::agent::report::DrainReport>>>,
    /// How often the bind address of the applied configuration is checked
    /// and reported (`None`: never; [`crate::sender::bind`]).
    pub bind_check: Option<Duration>,
    /// A Maildir folder a feedback loop's abuse reports (ARF) land in; the
    /// reports about this agent's IP are counted into its reports
    /// ([`crate::agent::complaint_inbox`]). `None`: no complaints are read.
    pub complaints_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot listen for /metrics on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

struct Core {
    reporter: Reporter,
    applied_config: Option<String>,
    /// Complaint reports counted, saved with the report that counts them.
    complaint_ids: Vec<String>,
}

struct Shared {
    core: Mutex<Core>,
    /// Signalled when a report is sealed or the agent stops.
    wake: Condvar,
    metrics: Arc<Metrics>,
    /// The newest configuration the endpoint announced, for the main loop.
    hint: Mutex<Option<ConfigHint>>,
    stopping: AtomicBool,
    /// When the sender must give up on stop.
    give_up_at: Mutex<Option<Instant>>,
    state_file: PathBuf,
    log: PathBuf,
    state_error_logged: Mutex<Option<Instant>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn state(&self, core: &Core) -> AgentState {
        AgentState {
            format: STATE_FORMAT,
            log: self.log.clone(),
            reporter: core.reporter.state(),
            applied_config: core.applied_config.clone(),
            complaint_ids: core.complaint_ids.clone(),
        }
    }

    /// Saves the state; called with the core locked so it matches the outbox.
    /// Returns whether it was saved.
    fn persist(&self, core: &Core) -> bool {
        let saved = self.state(core).save(&self.state_file);
        if let Err(e) = &saved {
            self.metrics.log_event("state_write_error");
            let mut last = self
                .state_error_logged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::error!("{e}; the position is kept in memory and saved at the next report (said once a minute)");
                *last = Some(Instant::now());
            }
        }
        self.metrics.set_buffered(core.reporter.buffered());
        saved.is_ok()
    }
}

/// A name unique to this run of this agent.
fn new_instance() -> String {
    format!(
        "{:x}-{:x}",
        Timestamp::now().as_nanosecond(),
        std::process::id()
    )
}

/// At most one warning per skip reason per minute, with the count since the last.
#[derive(Default)]
struct SkipWarnings {
    last: [Option<Instant>; LineSkip::WORDS.len()],
    since: [u64; LineSkip::WORDS.len()],
}

impl SkipWarnings {
    fn note(&mut self, skip: LineSkip, line: &[u8], now: Instant) {
        // Other programs' lines are normal in a mail log.
        if matches!(
            skip,
            LineSkip::Log(Skip::NotDelivery | Skip::ReplyReplacement | Skip::Empty)
        ) {
            return;
        }
        let i = skip.index();
        self.since[i] += 1;
        if self.last[i].is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        let shown: String = String::from_utf8_lossy(&line[..line.len().min(120)])
            .escape_debug()
            .collect();
        tracing::warn!(
            reason = skip.as_str(),
            "skipped {} log line(s): {skip}; e.g. \"{shown}\"",
            self.since[i]
        );
        self.last[i] = Some(now);
        self.since[i] = 0;
    }
}

/// Runs until `stop` is set; then reads what is left, reports it (for at most
/// `shutdown_timeout`) and saves the state.
pub fn run(
    options: AgentOptions,
    classifier: Classifier,
    stop: Arc<AtomicBool>,
) -> Result<(), AgentError> {
    let saved = AgentState::load(&options.state_file)?;
    let now = Timestamp::now();
    let complaint_ids = saved
        .as_ref()
        .map(|s| s.complaint_ids.clone())
        .unwrap_or_default();
    let (reporter_state, follow_state, applied_config) = match saved {
        Some(state) if state.log == options.log => {
            let follow = state.reporter.committed.clone();
            (Some(state.reporter), Some(follow), state.applied_config)
        }
        Some(state) => {
            tracing::warn!(
                "the state file {} belongs to the log {}, not {}: following the new log from its start",
                options.state_file.display(),
                state.log.display(),
                options.log.display()
            );
            (Some(state.reporter), None, state.applied_config)
        }
        None => (None, None, None),
    };
    let resumed = follow_state.is_some();
    let mut reporter = Reporter::new(options.reporter.clone(), reporter_state, new_instance, now);
    reporter.set_config_version(applied_config.clone());
    tracing::info!(
        instance = reporter.instance(),
        "mailfleet agent for {} (pool {}/{}): following {} ({}), reporting to {} every {:?}",
        options.reporter.source_ip,
        options.reporter.pool.namespace,
        options.reporter.pool.name,
        options.log.display(),
        if resumed {
            "resuming at the saved position"
        } else {
            "from the start"
        },
        options.endpoint.url(),
        options.interval
    );
    let metrics = Arc::new(Metrics::default());
    let registry = crate::metrics::ProcessRegistry::new();
    registry.register(Arc::clone(&metrics));
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            reporter,
            applied_config,
            complaint_ids,
        }),
        wake: Condvar::new(),
        metrics: Arc::clone(&metrics),
        hint: Mutex::new(None),
        stopping: AtomicBool::new(false),
        give_up_at: Mutex::new(None),
        state_file: options.state_file.clone(),
        log: options.log.clone(),
        state_error_logged: Mutex::new(None),
    });
    // A state file that cannot be written would make every restart count again: say so now.
    if let Some(dir) = options
        .state_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let _ = std::fs::create_dir_all(dir);
    }
    {
        let core = shared.lock();
        shared.state(&core).save(&options.state_file)?;
    }

    let metrics_server = match options.listen {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .map_err(|source| AgentError::Listen { address, source })?;
            let bound = listener.local_addr().unwrap_or(address);
            tracing::info!("metrics on http://{bound}/metrics");
            Some(
                metrics::MetricsServer::start(listener, registry.clone())
                    .map_err(|source| AgentError::Listen { address, source })?,
            )
        }
        None => None,
    };
    let sender = {
        let shared = Arc::clone(&shared);
        let options = options.clone();
        std::thread::Builder::new()
            .name("agent-sender".into())
            .spawn(move || send_loop(&shared, &options))
            .map_err(AgentError::Thread)?
    };

    let queue_thread = match (&options.postfix, options.queue_interval) {
        (Some(target), Some(every)) => {
            let (shared, target, stop) = (Arc::clone(&shared), target.clone(), Arc::clone(&stop));
            Some(
                std::thread::Builder::new()
                    .name("agent-queue".into())
                    .spawn(move || queue_loop(&shared, &target, every, &stop))
                    .map_err(AgentError::Thread)?,
            )
        }
        _ => None,
    };

    main_loop(&options, classifier, &shared, follow_state, &stop);
    if let Some(t) = queue_thread {
        let _ = t.join();
    }

    shared
        .give_up_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(Instant::now() + options.shutdown_timeout);
    shared.stopping.store(true, Ordering::SeqCst);
    shared.wake.notify_all();
    if sender.join().is_err() {
        tracing::error!("the report sender stopped with a panic");
    }
    if let Some(server) = metrics_server {
        server.stop();
    }
    let core = shared.lock();
    shared.persist(&core);
    let waiting = core.reporter.buffered();
    if waiting > 0 {
        tracing::warn!("stopped with {waiting} report(s) not yet acknowledged; they are in {} and sent at the next start", options.state_file.display());
    } else {
        tracing::info!("stopped; every report was acknowledged");
    }
    Ok(())
}

fn main_loop(
    options: &AgentOptions,
    classifier: Classifier,
    shared: &Shared,
    follow_state: Option<crate::agent::follow::FollowState>,
    stop: &AtomicBool,
) {
    let metrics = &shared.metrics;
    let (mut follower, notices) =
        Follower::resume(&options.log, follow_state, options.follow, Instant::now());
    handle_notices(shared, notices);
    let mut warnings = SkipWarnings::default();
    let mut next_seal = Instant::now() + options.interval;
    let mut config = ConfigWatch {
        next_poll: Instant::now(),
        seen: None,
        last_error: None,
    };
    let mut classifier = ConfiguredClassifier::new(classifier);
    // Lines logged before this start are judged with the configuration's
    // classifier too, not only those read after its first apply.
    let mut bind = BindWatch::new(options.bind_check, options.reporter.source_ip);
    if let Some(Ok(snapshot)) = options.config_dir.as_deref().map(read_config_dir) {
        classifier.configure(&snapshot);
        bind.configure(&snapshot);
    }
    let mut inbox = options.complaints_dir.clone().map(|dir| {
        let mut inbox = ComplaintInbox::new(dir, options.reporter.source_ip);
        // Reports counted before a restart stay counted once.
        inbox.remember_reports(shared.lock().complaint_ids.clone());
        inbox
    });
    let mut inbox_error_logged: Option<Instant> = None;
    let mut pacer = match (&options.postfix, options.pace_window) {
        (Some(_), Some(window)) => Some(Pacer::new(window)),
        _ => None,
    };
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = Instant::now();
        let now_ts = Timestamp::now();
        let notices = {
            let mut core = shared.lock();
            let reporter = &mut core.reporter;
            let now_ms = unix_ms();
            let mut on_input = |input: Input<'_>| match input {
                // The pacer's own holds say nothing about the provider.
                Input::Line(bytes)
                    if options.format == LogFormat::Postfix
                        && is_paced(&mut pacer, bytes, now_ms) => {}
                Input::Line(bytes) => {
                    match classify_line(&classifier.current, options.format, bytes) {
                        Ok(line) => {
                            let v = &line.verdict;
                            metrics.attempt(v.provider.as_str(), v.outcome, v.category);
                            if v.conclusive {
                                tracing::info!(
                                    provider = v.provider.as_str(),
                                    "conclusive block reply: {}",
                                    line.reply
                                );
                            }
                            let time = line.time.as_deref();
                            reporter.record_attempt(v, &line.reply, || {
                                time.and_then(|t| logged_time(t, now_ts, &options.zone))
                                    .unwrap_or(now_ts)
                            });
                        }
                        Err(skip) => {
                            metrics.skipped(skip);
                            reporter.record_skip(skip.as_str());
                            warnings.note(skip, bytes, now);
                        }
                    }
                }
                Input::TooLong => {
                    metrics.skipped(LineSkip::TooLong);
                    reporter.record_skip(LineSkip::TooLong.as_str());
                    warnings.note(LineSkip::TooLong, b"", now);
                }
            };
            follower.poll(now, &mut on_input)
        };
        handle_notices(shared, notices);

        let drained = options
            .drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(drained) = drained {
            shared.lock().reporter.set_drain(drained);
        }
        if let Some(binding) = bind.poll(now) {
            shared.lock().reporter.set_ip_binding(Some(binding));
        }
        let conclusive_waiting = shared.lock().reporter.open_has_conclusive();
        if now >= next_seal || conclusive_waiting || stopping {
            let scan = inbox.as_mut().map(|inbox| inbox.scan(&classifier.current));
            let mut core = shared.lock();
            match scan {
                Some(Ok(scan)) => {
                    for (provider, n) in &scan.counted {
                        for _ in 0..*n {
                            core.reporter.record_complaint(provider);
                        }
                        metrics.complaint_reports("counted", *n);
                        tracing::info!(provider, complaints = n, "spam complaints read");
                    }
                    for (reason, n) in scan.skipped {
                        metrics.complaint_reports(reason, n);
                    }
                    if let Some(inbox) = inbox.as_ref().filter(|_| !scan.counted.is_empty()) {
                        core.complaint_ids = inbox.remembered_reports(MAX_SAVED_COMPLAINT_IDS);
                    }
                }
                Some(Err(e)) => {
                    metrics.complaint_reports("folder_unreadable", 1);
                    if inbox_error_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::error!(
                            "complaints folder {} not read: {e} (said once a minute)",
                            options
                                .complaints_dir
                                .as_deref()
                                .unwrap_or(Path::new(""))
                                .join("new")
                                .display()
                        );
                        inbox_error_logged = Some(now);
                    }
                }
                None => {}
            }
            let saved = match core.reporter.seal(now_ts, follower.state()) {
                Some(Sealed::Held) => {
                    tracing::debug!(
                        "the outbox is full and its report is in flight; counts stay open"
                    );
                    false
                }
                Some(_) => {
                    let saved = shared.persist(&core);
                    shared.wake.notify_all();
                    saved
                }
                None => shared.persist(&core),
            };
            // The complaints read are in a saved report (or in none, held
            // open): only a save lets their files leave `new/`.
            if let Some(inbox) = inbox.as_mut().filter(|i| saved && i.waiting() > 0) {
                inbox.file_away();
            }
            metrics.set_dropped(core.reporter.dropped_so_far());
            next_seal = now + options.interval;
        }

        let holding = options.hold_config.load(Ordering::SeqCst);
        if let Some(dir) = options.config_dir.as_ref().filter(|_| !holding) {
            if now >= config.next_poll {
                config.next_poll = now + options.config_poll;
                match read_config_dir(dir) {
                    Ok(snapshot) if config.seen.as_deref() != Some(snapshot.digest.as_str()) => {
                        config.seen = Some(snapshot.digest.clone());
                        if apply_config(options, shared, &snapshot, "the config folder") {
                            configure_pacer(&mut pacer, &snapshot);
                            classifier.configure(&snapshot);
                            bind.configure(&snapshot);
                        } else {
                            config.seen = None;
                            config.next_poll = now + Duration::from_secs(30);
                        }
                    }
                    Ok(_) | Err(ConfigError::Moving(_)) => {}
                    Err(e) => {
                        let text = e.to_string();
                        if config.last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!("{text}");
                            config.last_error = Some(text);
                        }
                    }
                }
            }
        }
        let hint = shared.hint.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(hint) = hint.filter(|_| !holding) {
            let applied = shared.lock().applied_config.clone();
            if applied.as_deref() != Some(hint.version.as_str()) {
                match ConfigSnapshot::from_hint(&hint) {
                    Some(Ok(snapshot)) => {
                        if apply_config(options, shared, &snapshot, "the feedback response") {
                            configure_pacer(&mut pacer, &snapshot);
                            classifier.configure(&snapshot);
                            bind.configure(&snapshot);
                        }
                    }
                    Some(Err(e)) => tracing::warn!("the feedback response carries an unusable configuration {}: {e}", hint.version),
                    None => tracing::debug!("the endpoint has configuration {} (applied: {applied:?}); waiting for the ConfigMap", hint.version),
                }
            }
        }

        if let (Some(pacer), Some(target), false) =
            (pacer.as_mut(), options.postfix.as_ref(), holding)
        {
            pace(pacer, target);
        }

        if stopping {
            return;
        }
        if !follower.behind() {
            std::thread::sleep(options.poll);
        }
    }
}

/// Reads the queue every `every` until `stop`, and hands the figures to the
/// reporter (the next report carries them) and the metrics.
fn queue_loop(shared: &Shared, target: &PostfixTarget, every: Duration, stop: &AtomicBool) {
    let mut last_error: Option<String> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        next = Instant::now() + every;
        let started = Instant::now();
        match read_queue_report(target, every.min(Duration::from_secs(60))) {
            Ok(report) => {
                if !report.complete {
                    tracing::warn!(messages = report.messages, "the queue listing took longer than its deadline; the figures count part of the queue");
                }
                shared
                    .metrics
                    .set_queue(&report, started.elapsed().as_secs_f64());
                shared.lock().reporter.set_queue(Some(report));
                last_error = None;
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("cannot read the queue: {text}");
                    last_error = Some(text);
                }
            }
        }
    }
}

/// The queue summed per route of the applied transport map.
fn read_queue_report(
    target: &PostfixTarget,
    timeout: Duration,
) -> Result<crate::agent::report::QueueReport, crate::agent::queue::QueueReadError> {
    let dir = &target.config_dir;
    let map = std::fs::read_to_string(dir.join(crate::routing::postfix::TRANSPORT_FILE))
        .unwrap_or_default();
    let lookup = RouteLookup::from_transport_map(&map);
    let lifetime = std::fs::read_to_string(dir.join(SENDER_JSON_KEY))
        .ok()
        .and_then(|text| parse_document(&text).ok())
        .and_then(|d| d.queue)
        .map(|q| q.maximal_lifetime_seconds);
    let tally = read_postfix_queue(target, &lookup, timeout)?;
    Ok(queue_report(&tally, &lookup, Timestamp::now(), lifetime))
}

/// Milliseconds since the Unix epoch: the pacer's windows start at the same
/// instants on every replica.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Feeds one log line to the pacer; true when the line is a hold's deferral
/// (not to be classified).
fn is_paced(pacer: &mut Option<Pacer>, line: &[u8], now_ms: u64) -> bool {
    match paced_line(line) {
        PacedLine::Held {
            queue_id,
            recipient,
        } => {
            if let Some(pacer) = pacer.as_mut() {
                pacer.note_held(queue_id, recipient);
            }
            true
        }
        PacedLine::Delivery {
            transport,
            queue_id,
        } => {
            if let Some(pacer) = pacer.as_mut() {
                pacer.count(transport, queue_id, now_ms);
            }
            false
        }
        PacedLine::Removed { queue_id } => {
            if let Some(pacer) = pacer.as_mut() {
                pacer.forget(queue_id);
            }
            false
        }
        PacedLine::Other => false,
    }
}

fn configure_pacer(pacer: &mut Option<Pacer>, snapshot: &ConfigSnapshot) {
    let Some(pacer) = pacer.as_mut() else {
        return;
    };
    let Some(text) = snapshot.files.get(SENDER_JSON_KEY) else {
        return;
    };
    match parse_document(&String::from_utf8_lossy(text)) {
        Ok(document) => {
            let map = snapshot
                .files
                .get(crate::routing::postfix::TRANSPORT_FILE)
                .map(|text| String::from_utf8_lossy(text).into_owned())
                .unwrap_or_default();
            pacer.configure(&document, RouteLookup::from_transport_map(&map), unix_ms());
            for (transport, share) in pacer.shares() {
                tracing::debug!(
                    transport,
                    "pacing to {} per hour over {} replica(s), {} ms windows",
                    share.per_hour,
                    share.replicas,
                    pacer.window_ms()
                );
            }
        }
        Err(e) => tracing::warn!("cannot pace: {e}"),
    }
}

/// Applies what the pacer decides now: the holds, parking, releases.
fn pace(pacer: &mut Pacer, target: &PostfixTarget) {
    if pacer.adoption_due(unix_ms()) {
        // Mail an earlier agent parked waits in the hold queue.
        match read_hold_queue(target, MAX_TRACKED_MESSAGES, Duration::from_secs(30)) {
            Ok(held) => {
                for (queue_id, recipients) in &held {
                    pacer.adopt(queue_id, recipients);
                }
                if !held.is_empty() {
                    tracing::info!(
                        messages = held.len(),
                        "pacing the mail parked in the hold queue"
                    );
                }
                pacer.adoption_tried(true, unix_ms());
            }
            Err(e) => {
                tracing::debug!("cannot read the hold queue yet: {e}");
                pacer.adoption_tried(false, unix_ms());
            }
        }
    }
    let actions = pacer.plan(unix_ms());
    if actions.is_empty() {
        return;
    }
    match (PostfixHolds { target }).apply(&actions) {
        Ok(()) => {
            tracing::debug!(
                holds = ?actions.holds,
                parked = actions.park.len(),
                released = actions.release.len(),
                "pacer applied"
            );
            pacer.applied(&actions);
        }
        Err(e) => tracing::warn!("cannot apply the pacer's decisions: {e}"),
    }
}

/// The classifier the agent judges lines with: the one its flags gave, or
/// the one the sender configuration carries (declared providers and the
/// user's rules, [`crate::routing::classifier_files`]), rebuilt whenever those
/// files change. Files that do not build a classifier leave the last good one
/// in use.
struct ConfiguredClassifier {
    current: Classifier,
    from_flags: Classifier,
    /// The classifier files last seen (`None`: none, the flags' classifier).
    seen: Option<Vec<(String, Vec<u8>)>>,
}

impl ConfiguredClassifier {
    fn new(from_flags: Classifier) -> Self {
        ConfiguredClassifier {
            current: from_flags.clone(),
            from_flags,
            seen: None,
        }
    }

    fn configure(&mut self, snapshot: &ConfigSnapshot) {
        let files: Vec<(String, Vec<u8>)> = snapshot
            .files
            .iter()
            .filter(|(k, _)| crate::routing::classifier_files::is_classifier_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let files = (!files.is_empty()).then_some(files);
        if files == self.seen {
            return;
        }
        match crate::routing::classifier_files::classifier_config_of(&snapshot.files) {
            None => {
                self.current = self.from_flags.clone();
                tracing::info!("the sender configuration carries no classifier files; classifying with the builtin rules and --rules/--manifests");
            }
            Some(Ok(config)) => match Classifier::with_config(config) {
                Ok(classifier) => {
                    tracing::info!(
                        version = snapshot.version.as_str(),
                        providers = classifier.providers().len(),
                        rules = classifier.rules().len(),
                        "classifier reloaded from the sender configuration"
                    );
                    self.current = classifier;
                }
                Err(e) => {
                    tracing::error!(version = snapshot.version.as_str(), "the classifier files of the sender configuration do not build a classifier ({e}); the last good classifier stays in use");
                    return;
                }
            },
            Some(Err(e)) => {
                tracing::error!(version = snapshot.version.as_str(), "the classifier files of the sender configuration do not parse ({e}); the last good classifier stays in use");
                return;
            }
        }
        self.seen = files;
    }
}

struct ConfigWatch {
    next_poll: Instant,
    /// Digest of the folder content last handled.
    seen: Option<String>,
    last_error: Option<String>,
}

/// Applies a configuration whose version differs from the applied one.
/// Returns false when applying failed (to be retried).
fn apply_config(
    options: &AgentOptions,
    shared: &Shared,
    snapshot: &ConfigSnapshot,
    source: &str,
) -> bool {
    let metrics = &shared.metrics;
    if shared.lock().applied_config.as_deref() == Some(snapshot.version.as_str()) {
        metrics.config_apply("unchanged", None);
        return true;
    }
    let result = match &options.postfix {
        Some(target) => target.apply(snapshot).map(Some),
        None => Ok(None),
    };
    match result {
        Ok(applied) => {
            match applied {
                Some(a) => tracing::info!(
                    version = snapshot.version.as_str(),
                    "applied the sender configuration from {source}: wrote {:?}, postmap {:?}, {}",
                    a.written,
                    a.postmapped,
                    if a.reloaded {
                        "reloaded Postfix and flushed its queue"
                    } else {
                        "Postfix is not running; it reads them when it starts"
                    }
                ),
                None => tracing::info!(
                    version = snapshot.version.as_str(),
                    "sender configuration from {source} recorded (no MTA to apply it to)"
                ),
            }
            let mut core = shared.lock();
            core.applied_config = Some(snapshot.version.clone());
            core.reporter
                .set_config_version(Some(snapshot.version.clone()));
            shared.persist(&core);
            metrics.config_apply("applied", Some(&snapshot.version));
            true
        }
        Err(e) => {
            tracing::error!(
                version = snapshot.version.as_str(),
                "cannot apply the sender configuration from {source}: {e}; retrying in 30 s"
            );
            metrics.config_apply("failed", None);
            false
        }
    }
}

fn handle_notices(shared: &Shared, notices: Vec<Notice>) {
    for notice in notices {
        shared.metrics.log_event(notice.kind());
        match &notice {
            Notice::Opened { path, offset } => tracing::info!("reading {} from byte {offset}", path.display()),
            Notice::Missing { path } => tracing::warn!("the log {} does not exist yet; waiting for it", path.display()),
            Notice::Rotated { old_inode, new_inode } => {
                tracing::info!("the log was rotated (inode {old_inode} -> {new_inode}); reading the rest of the old file, then the new one")
            }
            Notice::Truncated { offset, recovered_from } => tracing::warn!(
                "the log shrank below byte {offset} (truncated in place); reading it again from the start{}",
                recovered_from.as_ref().map_or(String::new(), |p| format!(", and the unread end from its copy {}", p.display()))
            ),
            Notice::Replaced { recovered_from } => tracing::warn!(
                "the log was rewritten in place; reading it again from the start{}",
                recovered_from.as_ref().map_or(String::new(), |p| format!(", and the unread end from its copy {}", p.display()))
            ),
            Notice::Drained { inode, partial_line } => tracing::info!(
                "finished the rotated log (inode {inode}){}",
                if *partial_line { ", whose last line had no newline" } else { "" }
            ),
            Notice::RotatedWhileStopped { found: Some(p) } => {
                tracing::info!("the log was rotated while the agent was stopped; reading the rest of {} first", p.display())
            }
            Notice::RotatedWhileStopped { found: None } => {}
            Notice::Lost { inode, offset } => {
                shared.lock().reporter.record_lost_log_file();
                tracing::error!(
                    "the log file read before the restart (inode {inode}, at byte {offset}) is gone: its unread lines are lost (counted as dropped.log_files)"
                )
            }
            Notice::ReadError { path, error } => tracing::error!("cannot read {}: {error}; retrying", path.display()),
        }
    }
}

/// Posts the oldest waiting report until acknowledged; stops when asked and
/// the outbox is empty or the shutdown deadline passed.
fn send_loop(shared: &Shared, options: &AgentOptions) {
    let metrics = &shared.metrics;
    let seed = seed_of(shared.lock().reporter.instance());
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    loop {
        let report = {
            let mut core = shared.lock();
            loop {
                let now = Instant::now();
                if shared.stopping.load(Ordering::SeqCst) {
                    let give_up = shared
                        .give_up_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_some_and(|t| now >= t);
                    if core.reporter.buffered() == 0 || give_up {
                        return;
                    }
                }
                let wait = match (retry_at, core.reporter.next_to_send()) {
                    (Some(at), _) if now < at => at - now,
                    (_, Some(report)) => break report,
                    (_, None) => Duration::from_secs(1),
                };
                core = shared
                    .wake
                    .wait_timeout(core, wait.min(Duration::from_millis(500)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let sequence = report.sequence;
        let body = match serde_json::to_vec(&report) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!("cannot encode report {sequence}: {e}");
                shared.lock().reporter.reject(sequence);
                continue;
            }
        };
        let outcome = post_report(options, &body, sequence);
        let now = Instant::now();
        match outcome {
            Ok(answer) => {
                failures = 0;
                retry_at = None;
                let mut core = shared.lock();
                match answer {
                    Answer::Accepted(response) => {
                        core.reporter.acknowledge(sequence);
                        let duplicate = response.as_ref().is_some_and(|r| r.duplicate);
                        metrics.report_sent(duplicate, Timestamp::now());
                        if let Some(hint) = response.and_then(|r| r.config) {
                            *shared.hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(hint);
                        }
                        tracing::debug!(sequence, duplicate, "report acknowledged");
                    }
                    Answer::Refused { status, body } => {
                        core.reporter.reject(sequence);
                        metrics.report_failed("rejected");
                        tracing::error!(
                            sequence,
                            "the endpoint refused report {sequence} as invalid (HTTP {status}): {body}; it is dropped and counted in the next report's `dropped`"
                        );
                    }
                }
                shared.persist(&core);
                metrics.set_dropped(core.reporter.dropped_so_far());
            }
            Err(failure) => {
                failures += 1;
                metrics.report_failed(failure.reason);
                let delay = options
                    .backoff
                    .delay(failures, seed)
                    .max(failure.retry_after.unwrap_or_default());
                retry_at = Some(now + delay);
                let waiting = shared.lock().reporter.buffered();
                tracing::warn!(
                    sequence,
                    "feedback endpoint {}: {}; retrying report {sequence} in {:.1} s ({waiting} report(s) waiting, counts kept)",
                    options.endpoint.url(),
                    failure.message,
                    delay.as_secs_f64()
                );
            }
        }
    }
}

enum Answer {
    Accepted(Option<FeedbackResponse>),
    Refused { status: u16, body: String },
}

struct Failure {
    reason: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

fn post_report(options: &AgentOptions, body: &[u8], sequence: u64) -> Result<Answer, Failure> {
    let token = match &options.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(token) => Some(token.trim().to_string()),
            Err(e) => {
                return Err(Failure {
                    reason: "token",
                    message: format!("cannot read the token file {}: {e} (mount the ServiceAccount token or pass --token-file)", path.display()),
                    retry_after: None,
                })
            }
        },
        None => None,
    };
    let authorization = token.map(|t| format!("Bearer {t}"));
    let idempotency = sequence.to_string();
    let mut headers = vec![
        ("Content-Type", "application/json"),
        (
            "User-Agent",
            concat!("mailfleet-agent/", env!("CARGO_PKG_VERSION")),
        ),
        ("X-Mailfleet-Sequence", idempotency.as_str()),
    ];
    if let Some(a) = &authorization {
        headers.push(("Authorization", a.as_str()));
    }
    let response =
        http::post(&options.endpoint, &headers, body, options.timeout).map_err(|e| Failure {
            reason: e.kind(),
            message: e.to_string(),
            retry_after: None,
        })?;
    let text = || {
        String::from_utf8_lossy(&response.body[..response.body.len().min(500)])
            .trim()
            .to_string()
    };
    match response.status {
        200..=299 => {
            let parsed = serde_json::from_slice::<FeedbackResponse>(&response.body);
            if let Err(e) = &parsed {
                tracing::warn!("report {sequence} acknowledged (HTTP {}) with a body that is not a feedback response ({e}): {}", response.status, text());
            }
            Ok(Answer::Accepted(parsed.ok()))
        }
        400 | 413 | 422 => Ok(Answer::Refused {
            status: response.status,
            body: text(),
        }),
        status => {
            let retry_after = response.retry_after.map(Duration::from_secs);
            let reason = match status {
                401 | 403 => "unauthorized",
                500..=599 => "http_5xx",
                _ => "http_4xx",
            };
            let hint = if reason == "unauthorized" {
                " (check the token and the endpoint's access rules)"
            } else {
                ""
            };
            Err(Failure {
                reason,
                message: format!("HTTP {status}{hint}: {}", text()),
                retry_after,
            })
        }
    }
}
