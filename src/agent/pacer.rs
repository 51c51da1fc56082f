//! The delivery pacer: keeps each direct transport of this sender within its
//! replica's share of the route's hourly cap, window by window
//! ([`crate::routing::caps`]; docs/ROUTE-TABLE.md, "Exact caps at any volume").
//!
//! Postfix rate delays are whole seconds (and counted from the end of a
//! delivery), so only counting can hold a cap exactly. Every paced transport
//! stays in `defer_transports`: Postfix delivers none of its mail on its own.
//! A message the queue manager defers for that reason ("deferred transport")
//! is parked in the hold queue (`postsuper -h`), where neither Postfix's
//! retries nor a queue flush touch it. Each window the pacer releases, oldest
//! first, as many recipients as the window's budget has left (`postsuper -H`,
//! then the flush service's `send_file`, what `postqueue -i` asks, which
//! delivers the message although its transport is deferred; [`crate::agent::flush`]). Deliveries that reached a server are counted from
//! the log; recipients released and not yet delivered count against the
//! budget, so a window's releases are exactly its allowance.
//!
//! The decisions are pure ([`Pacer`], fed with milliseconds); [`PostfixHolds`]
//! only applies them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::agent::apply::{run_ok, write_atomically, ApplyError, PostfixTarget};
use crate::agent::flush::FlushService;
use crate::agent::queue::RouteLookup;
use crate::reputation::postfix_log::parse_line_bytes;
use crate::routing::caps::{ReplicaShare, WindowCredit};
use crate::routing::sender_config::SenderDocument;

/// The window the pacer counts in when none is given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// The reason Postfix logs for mail of a transport in `defer_transports`.
const HELD_REMARK: &str = "deferred transport";

/// Opens the pacer's lines in main.cf (`defer_transports` and the paced
/// transports' rate delays); they end at [`PACER_END`].
pub const PACER_BEGIN: &str =
    "# BEGIN mailfleet pacer: paced transports (rewritten by `mailfleet agent`)";
pub const PACER_END: &str = "# END mailfleet pacer";
/// Starts a rendered line the pacer set aside while it paces the transport
/// (a paced transport's own rate delay): Postfix warns on every command about
/// a parameter set twice, so the rendered line is commented out, not
/// overridden, and put back with the last hold.
const SET_ASIDE: &str = "#mailfleet-pacer-set-aside: ";
/// The one-line marker of earlier agents (the line after it was theirs).
const OLD_HOLD_MARKER: &str =
    "# mailfleet pacer: transports over their window's budget (the next line is rewritten)";

/// The most messages the pacer keeps track of; a message deferred past it
/// stays in the deferred queue until Postfix retries it, and is parked then.
pub const MAX_TRACKED_MESSAGES: usize = 200_000;

/// The most messages released in one step for transports no longer paced.
const MAX_UNPACED_RELEASES: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pace {
    share: ReplicaShare,
    credit: WindowCredit,
    /// Recipients released and not yet seen delivered.
    in_flight: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Deferred by the hold; to be parked.
    Deferred,
    /// In the hold queue, waiting for budget.
    Parked,
    /// Released at this time; its deliveries are expected.
    Released { at_ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Waiting {
    /// The paced transport of its recipients (`None`: none is paced).
    transport: Option<String>,
    /// Recipients the hold deferred (one log line each), or still to deliver
    /// once released.
    recipients: u64,
    stage: Stage,
}

/// The pacing state of one sender's direct transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pacer {
    window_ms: u64,
    paces: BTreeMap<String, Pace>,
    lookup: RouteLookup,
    /// The transport of each route of `lookup` (same order), when paced.
    route_transports: Vec<Option<String>>,
    messages: BTreeMap<String, Waiting>,
    /// Queue ids waiting per transport (`None`: not paced), oldest first.
    order: BTreeMap<Option<String>, VecDeque<String>>,
    /// Deferred messages not parked yet.
    to_park: Vec<String>,
    /// Releases in the order made, to find those that never delivered.
    releases: VecDeque<(u64, String)>,
    /// The transports main.cf defers, as last written.
    held: BTreeSet<String>,
    /// Whether main.cf is known to say exactly `held`.
    synced: bool,
    /// When to look for mail an earlier agent parked (`None`: done).
    adopt_at_ms: Option<u64>,
}

/// What the driver must do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaceActions {
    /// The paced transports main.cf must defer, when that changed.
    pub holds: Option<BTreeSet<String>>,
    /// Messages to move into the hold queue.
    pub park: Vec<String>,
    /// Messages to take out of the hold queue and deliver now.
    pub release: Vec<String>,
}

impl PaceActions {
    pub fn is_empty(&self) -> bool {
        self.holds.is_none() && self.park.is_empty() && self.release.is_empty()
    }
}

impl Pacer {
    pub fn new(window: Duration) -> Pacer {
        Pacer {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            paces: BTreeMap::new(),
            lookup: RouteLookup::default(),
            route_transports: Vec::new(),
            messages: BTreeMap::new(),
            order: BTreeMap::new(),
            to_park: Vec::new(),
            releases: VecDeque::new(),
            held: BTreeSet::new(),
            synced: false,
            adopt_at_ms: Some(0),
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn index(&self, now_ms: u64) -> u64 {
        now_ms / self.window_ms
    }

    /// How long a release may go without a delivery before it is made again
    /// (a release that reached the message while the queue manager still
    /// had it does nothing).
    fn release_timeout_ms(&self) -> u64 {
        self.window_ms.saturating_mul(2).max(20_000)
    }

    /// Takes the caps of `document` (its direct routes and ready replicas)
    /// and the transport map's domains (`lookup`). A transport whose share
    /// did not change keeps its window's count; mail of a transport no longer
    /// paced is released.
    pub fn configure(&mut self, document: &SenderDocument, lookup: RouteLookup, now_ms: u64) {
        let index = self.index(now_ms);
        let mut paces = BTreeMap::new();
        for route in &document.routes {
            let (Some(transport), Some(share)) = (
                route.transport.as_ref(),
                ReplicaShare::new(route.hourly_cap, document.ready_replicas),
            ) else {
                continue;
            };
            let pace = match self.paces.get(transport) {
                Some(old) if old.share == share => *old,
                old => Pace {
                    share,
                    credit: WindowCredit::new(&share, self.window_ms, index),
                    in_flight: old.map_or(0, |o| o.in_flight),
                },
            };
            paces.insert(transport.clone(), pace);
        }
        self.route_transports = lookup
            .routes()
            .iter()
            .map(|r| {
                document
                    .routes
                    .iter()
                    .find(|d| d.namespace == r.namespace && d.name == r.name)
                    .and_then(|d| d.transport.clone())
                    .filter(|t| paces.contains_key(t))
            })
            .collect();
        self.lookup = lookup;
        self.paces = paces;
        let unpaced: Vec<Option<String>> = self
            .order
            .keys()
            .filter(|t| t.as_ref().is_some_and(|t| !self.paces.contains_key(t)))
            .cloned()
            .collect();
        for transport in unpaced {
            let ids = self.order.remove(&transport).unwrap_or_default();
            for id in &ids {
                if let Some(waiting) = self.messages.get_mut(id) {
                    waiting.transport = None;
                }
            }
            self.order.entry(None).or_default().extend(ids);
        }
    }

    /// The transports paced, with their share.
    pub fn shares(&self) -> impl Iterator<Item = (&str, &ReplicaShare)> {
        self.paces.iter().map(|(t, p)| (t.as_str(), &p.share))
    }

    fn transport_of(&self, recipient: &str) -> Option<String> {
        self.lookup
            .route_of(recipient)
            .and_then(|i| self.route_transports.get(i).cloned().flatten())
    }

    /// Counts one delivery attempt of `transport` that reached a server
    /// (message `queue_id`).
    pub fn count(&mut self, transport: &str, queue_id: &str, now_ms: u64) {
        let index = self.index(now_ms);
        let window_ms = self.window_ms;
        if let Some(pace) = self.paces.get_mut(transport) {
            pace.credit.advance(&pace.share, window_ms, index);
            pace.credit.spend(1);
        }
        let Some(waiting) = self.messages.get_mut(queue_id) else {
            return;
        };
        if !matches!(waiting.stage, Stage::Released { .. }) {
            return;
        }
        waiting.recipients = waiting.recipients.saturating_sub(1);
        if let Some(pace) = waiting
            .transport
            .as_ref()
            .and_then(|t| self.paces.get_mut(t))
        {
            pace.in_flight = pace.in_flight.saturating_sub(1);
        }
        if waiting.recipients == 0 {
            self.messages.remove(queue_id);
        }
    }

    /// Forgets `queue_id`, which left the queue (the queue manager's
    /// `removed`). However it left, through an unpaced transport (a hand-off
    /// after a block), as a bounce or expired, it can be neither released nor
    /// counted any more: kept, it would be released again after every
    /// timeout, each time holding budget of its transport that no delivery
    /// gives back.
    pub fn forget(&mut self, queue_id: &str) {
        let Some(waiting) = self.messages.remove(queue_id) else {
            return;
        };
        if let (Stage::Released { .. }, Some(pace)) = (
            waiting.stage,
            waiting
                .transport
                .as_ref()
                .and_then(|t| self.paces.get_mut(t)),
        ) {
            pace.in_flight = pace.in_flight.saturating_sub(waiting.recipients);
        }
    }

    /// Notes one recipient of `queue_id` that the hold deferred
    /// (`status=deferred (deferred transport)`).
    pub fn note_held(&mut self, queue_id: &str, recipient: &str) {
        let transport = self.transport_of(recipient);
        let room = self.messages.len() < MAX_TRACKED_MESSAGES;
        match self.messages.get_mut(queue_id) {
            Some(waiting) => {
                match waiting.stage {
                    Stage::Deferred | Stage::Parked => waiting.recipients += 1,
                    Stage::Released { .. } => {
                        // Deferred again: what was released did not leave.
                        if let Some(pace) = waiting
                            .transport
                            .as_ref()
                            .and_then(|t| self.paces.get_mut(t))
                        {
                            pace.in_flight = pace.in_flight.saturating_sub(waiting.recipients);
                        }
                        waiting.recipients = 1;
                        self.order
                            .entry(waiting.transport.clone())
                            .or_default()
                            .push_front(queue_id.to_string());
                    }
                }
                waiting.stage = Stage::Deferred;
                self.to_park.push(queue_id.to_string());
            }
            None if room => {
                self.messages.insert(
                    queue_id.to_string(),
                    Waiting {
                        transport: transport.clone(),
                        recipients: 1,
                        stage: Stage::Deferred,
                    },
                );
                self.order
                    .entry(transport)
                    .or_default()
                    .push_back(queue_id.to_string());
                self.to_park.push(queue_id.to_string());
            }
            None => {}
        }
    }

    /// Takes in a message found in the hold queue (parked by an earlier
    /// agent), with its pending recipients.
    pub fn adopt(&mut self, queue_id: &str, recipients: &[String]) {
        if self.messages.contains_key(queue_id) || self.messages.len() >= MAX_TRACKED_MESSAGES {
            return;
        }
        let transports: Vec<Option<String>> =
            recipients.iter().map(|r| self.transport_of(r)).collect();
        let transport = transports.iter().flatten().next().cloned();
        let count = transports.iter().filter(|t| **t == transport).count();
        self.messages.insert(
            queue_id.to_string(),
            Waiting {
                transport: transport.clone(),
                recipients: u64::try_from(count.max(1)).unwrap_or(u64::MAX),
                stage: Stage::Parked,
            },
        );
        self.order
            .entry(transport)
            .or_default()
            .push_back(queue_id.to_string());
    }

    /// The transports main.cf defers, as last applied.
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// Whether to read the hold queue for mail an earlier agent parked.
    pub fn adoption_due(&self, now_ms: u64) -> bool {
        self.adopt_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// The hold queue was read (`ok`), or could not be (Postfix not running
    /// yet): then it is read again a window later.
    pub fn adoption_tried(&mut self, ok: bool, now_ms: u64) {
        self.adopt_at_ms = (!ok).then(|| now_ms.saturating_add(self.window_ms));
    }

    /// Messages the pacer waits to release.
    pub fn waiting(&self) -> usize {
        self.messages.len()
    }

    /// What to do at `now_ms`: the holds (when they change), the messages
    /// to park, and those the windows' budgets release now.
    pub fn plan(&mut self, now_ms: u64) -> PaceActions {
        let index = self.index(now_ms);
        let window_ms = self.window_ms;
        for pace in self.paces.values_mut() {
            pace.credit.advance(&pace.share, window_ms, index);
        }
        let wanted: BTreeSet<String> = self.paces.keys().cloned().collect();
        let mut actions = PaceActions {
            holds: (!self.synced || wanted != self.held).then_some(wanted),
            ..PaceActions::default()
        };
        for id in std::mem::take(&mut self.to_park) {
            if let Some(waiting) = self.messages.get_mut(&id) {
                if waiting.stage == Stage::Deferred {
                    waiting.stage = Stage::Parked;
                    actions.park.push(id);
                }
            }
        }
        let timeout = self.release_timeout_ms();
        while let Some((at_ms, id)) = self.releases.front().cloned() {
            if at_ms.saturating_add(timeout) > now_ms {
                break;
            }
            self.releases.pop_front();
            let Some(waiting) = self.messages.get_mut(&id) else {
                continue;
            };
            if waiting.stage != (Stage::Released { at_ms }) {
                continue;
            }
            waiting.stage = Stage::Parked;
            if let Some(pace) = waiting
                .transport
                .as_ref()
                .and_then(|t| self.paces.get_mut(t))
            {
                pace.in_flight = pace.in_flight.saturating_sub(waiting.recipients);
            }
            self.order
                .entry(waiting.transport.clone())
                .or_default()
                .push_front(id);
        }
        for (transport, queue) in &mut self.order {
            let mut pace = transport.as_ref().and_then(|t| self.paces.get_mut(t));
            let mut unpaced_left = MAX_UNPACED_RELEASES;
            loop {
                let budget_left = match pace.as_deref() {
                    Some(p) => p.credit.left() > p.in_flight,
                    None => unpaced_left > 0,
                };
                if !budget_left {
                    break;
                }
                let Some(id) = queue.pop_front() else {
                    break;
                };
                let Some(waiting) = self.messages.get_mut(&id) else {
                    continue;
                };
                if matches!(waiting.stage, Stage::Released { .. }) {
                    continue;
                }
                waiting.stage = Stage::Released { at_ms: now_ms };
                match pace.as_deref_mut() {
                    Some(p) => p.in_flight += waiting.recipients,
                    None => unpaced_left -= 1,
                }
                self.releases.push_back((now_ms, id.clone()));
                actions.release.push(id);
            }
        }
        self.order.retain(|_, queue| !queue.is_empty());
        actions
    }

    /// Records that `actions` were applied.
    pub fn applied(&mut self, actions: &PaceActions) {
        if let Some(holds) = &actions.holds {
            self.held = holds.clone();
            self.synced = true;
        }
    }

    /// When the next window starts.
    pub fn next_window_ms(&self, now_ms: u64) -> u64 {
        (self.index(now_ms) + 1) * self.window_ms
    }
}

/// What one log line means to the pacer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacedLine<'a> {
    /// A delivery attempt of `transport` that reached a server.
    Delivery {
        transport: &'a str,
        queue_id: &'a str,
    },
    /// A recipient a hold deferred: not a delivery, and not a signal about
    /// the provider either.
    Held {
        queue_id: &'a str,
        recipient: &'a str,
    },
    /// The message left the queue.
    Removed {
        queue_id: &'a str,
    },
    Other,
}

/// Reads a Postfix delivery line for the pacer. The transport is the middle of
/// the process name `postfix/<transport>/smtp` (the rendered `syslog_name`).
pub fn paced_line(line: &[u8]) -> PacedLine<'_> {
    if let Some(queue_id) = removed_queue_id(line) {
        return PacedLine::Removed { queue_id };
    }
    let Ok(attempt) = parse_line_bytes(line) else {
        return PacedLine::Other;
    };
    if attempt.relay_host.is_none() && attempt.text.trim_matches(['(', ')', ' ']) == HELD_REMARK {
        return PacedLine::Held {
            queue_id: attempt.queue_id,
            recipient: attempt.recipient,
        };
    }
    let Some(transport) = attempt
        .process
        .and_then(|p| p.split_once('/'))
        .and_then(|(_, rest)| rest.rsplit_once('/'))
        .map(|(transport, _)| transport)
    else {
        return PacedLine::Other;
    };
    if attempt.relay_host.is_none() {
        return PacedLine::Other;
    }
    PacedLine::Delivery {
        transport,
        queue_id: attempt.queue_id,
    }
}

/// The queue id of the queue manager's `<queue id>: removed`: the message
/// left the queue, however it was delivered.
fn removed_queue_id(line: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\n', '\r']);
    let (head, queue_id) = text.strip_suffix(": removed")?.rsplit_once(": ")?;
    let process = head.rsplit(' ').next()?;
    let name = process.split_once('[').map_or(process, |(name, _)| name);
    let from_qmgr = name == "qmgr" || name.ends_with("/qmgr");
    let id_ok = !queue_id.is_empty() && queue_id.bytes().all(|b| b.is_ascii_alphanumeric());
    (from_qmgr && id_ok).then_some(queue_id)
}

/// Whether a line is a hold's deferral, which the agent must not report as a
/// provider's answer.
pub fn is_hold_deferral(line: &[u8]) -> bool {
    matches!(paced_line(line), PacedLine::Held { .. })
}

/// `text` with the pacer's lines set for `held`: the transports deferred,
/// and their Postfix rate delays set to 0 (the pacer spaces them; a rate
/// delay counts from the end of each delivery and would slow a transport
/// below its share). No lines when nothing is paced.
pub fn with_holds(text: &str, held: &BTreeSet<String>) -> String {
    let rate_delays: BTreeSet<String> = held
        .iter()
        .map(|transport| format!("{transport}_transport_rate_delay"))
        .collect();
    let mut out = String::with_capacity(text.len() + 128);
    let mut lines = text.split_inclusive('\n');
    while let Some(line) = lines.next() {
        let trimmed = line.trim_end();
        if trimmed == OLD_HOLD_MARKER {
            lines.next();
            continue;
        }
        if trimmed == PACER_BEGIN {
            for inner in lines.by_ref() {
                if inner.trim_end() == PACER_END {
                    break;
                }
            }
            continue;
        }
        let line = line.strip_prefix(SET_ASIDE).unwrap_or(line);
        let parameter = line.split('=').next().unwrap_or_default().trim();
        if rate_delays.contains(parameter) {
            out.push_str(SET_ASIDE);
        }
        out.push_str(line);
    }
    if !held.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(PACER_BEGIN);
        out.push('\n');
        out.push_str("defer_transports = ");
        out.push_str(&held.iter().cloned().collect::<Vec<_>>().join(", "));
        out.push('\n');
        for rate_delay in &rate_delays {
            out.push_str(rate_delay);
            out.push_str(" = 0s\n");
        }
        out.push_str(PACER_END);
        out.push('\n');
    }
    out
}

/// Applies the pacer's decisions to a running Postfix.
pub struct PostfixHolds<'a> {
    pub target: &'a PostfixTarget,
}

impl PostfixHolds<'_> {
    fn main_cf(&self) -> PathBuf {
        self.target.config_dir.join("main.cf")
    }

    /// Writes the holds into main.cf (and reloads Postfix when they
    /// changed), parks the deferred messages in the hold queue, and releases
    /// the ones the budgets allow.
    pub fn apply(&self, actions: &PaceActions) -> Result<(), ApplyError> {
        let config = self.target.config_dir.to_string_lossy().into_owned();
        let bin = |name: &str| self.target.bin_dir.join(name);
        if let Some(holds) = &actions.holds {
            let path = self.main_cf();
            let current = read_or_empty(&path)?;
            let updated = with_holds(&current, holds);
            if updated != current {
                write_atomically(&path, updated.as_bytes())?;
                if self.target.is_running()? {
                    run_ok(&bin("postfix"), &["-c", &config, "reload"])?;
                }
            }
        }
        if !actions.park.is_empty() {
            // Only from the deferred queue: a message the queue manager still
            // has in the active queue must not be moved under it (it would
            // be removed when its delivery agent finds no file); one not yet
            // deferred stays there and its release flushes it by id.
            postsuper_each(&bin("postsuper"), &config, "-h", &actions.park, "deferred")?;
        }
        if !actions.release.is_empty() {
            postsuper_each(&bin("postsuper"), &config, "-H", &actions.release, "hold")?;
            let mut flush = self.flush_service();
            for id in &actions.release {
                // A message delivered or removed meanwhile is not an error
                // worth stopping for; one still with the queue manager is
                // released again after the pacer's timeout.
                if let Some(service) = &flush {
                    match service.send_file(id) {
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::debug!("releasing with postqueue -i instead: {e}");
                            flush = None;
                        }
                    }
                }
                let _ = run_ok(&bin("postqueue"), &["-c", &config, "-i", id]);
            }
        }
        Ok(())
    }

    /// The instance's flush service (what `postqueue -i` asks), when its
    /// queue directory can be read from the configuration.
    fn flush_service(&self) -> Option<FlushService> {
        let config = self.target.config_dir.to_string_lossy().into_owned();
        let output = Command::new(self.target.bin_dir.join("postconf"))
            .args(["-c", &config, "-h", "queue_directory"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let directory = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (!directory.is_empty()).then(|| FlushService::in_queue_directory(Path::new(&directory)))
    }
}

/// `postsuper <flag> - <queue>`: one process for many queue ids (read from
/// its input), touching only those in `queue`. Ids not there are only warned
/// about by postsuper.
fn postsuper_each(
    program: &Path,
    config: &str,
    flag: &str,
    ids: &[String],
    queue: &str,
) -> Result<(), ApplyError> {
    let command = format!("{} -c {config} {flag} - {queue}", program.display());
    let mut child = Command::new(program)
        .args(["-c", config, flag, "-", queue])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut list = ids.join("\n");
        list.push('\n');
        stdin
            .write_all(list.as_bytes())
            .map_err(|source| ApplyError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ApplyError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn read_or_empty(path: &Path) -> Result<String, ApplyError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ApplyError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::sender_config::SenderRouteDocument;
    use proptest::prelude::*;

    const T: &str = "mf-127-0-0-31-google";

    fn document(cap: i64, replicas: u32) -> SenderDocument {
        SenderDocument {
            schema: crate::routing::sender_config::SCHEMA.to_string(),
            namespace: "mail".into(),
            pool: "bulk".into(),
            ip: "127.0.0.31".into(),
            routes: vec![SenderRouteDocument {
                namespace: "mail".into(),
                name: "google".into(),
                provider: "google".into(),
                pool: "bulk".into(),
                mode: "Primary".into(),
                action: "direct".into(),
                transport: Some(T.into()),
                hourly_cap: Some(cap),
                rate_delay_seconds: Some(0),
                max_connections: Some(20),
                max_messages_per_connection: Some(100),
                max_recipients_per_message: Some(100),
                host: None,
                port: None,
                credentials_secret: None,
            }],
            ready_replicas: replicas,
            queue: None,
        }
    }

    fn lookup() -> RouteLookup {
        RouteLookup::from_transport_map(&format!(
            "# route mail/google (provider google, mode Primary): direct\ngmail.com {T}:\n"
        ))
    }

    fn pacer(cap: i64, replicas: u32, now_ms: u64) -> Pacer {
        let mut pacer = Pacer::new(Duration::from_secs(10));
        pacer.configure(&document(cap, replicas), lookup(), now_ms);
        let first = pacer.plan(now_ms);
        assert_eq!(first.holds, Some(BTreeSet::from([T.to_string()])));
        pacer.applied(&first);
        pacer
    }

    fn id(i: usize) -> String {
        format!("4Q{i:05}")
    }

    /// A window boundary.
    const START: u64 = 1_000_000_000_000;

    #[test]
    fn a_window_releases_its_budget_oldest_first_and_what_is_in_flight_counts() {
        // 36,000/h over 3 replicas: 12,000/h each, 33 or 34 per 10 s window.
        let mut pacer = pacer(36_000, 3, START);
        let share = ReplicaShare::new(Some(36_000), 3).unwrap();
        let allowance = share.window_allowance(10_000, START / 10_000);
        for i in 0..100 {
            pacer.note_held(&id(i), &format!("r{i}@gmail.com"));
        }
        let actions = pacer.plan(START + 5);
        assert_eq!(actions.holds, None, "the holds stay as they are");
        assert_eq!(actions.park.len(), 100);
        let expected: Vec<String> = (0..allowance as usize).map(id).collect();
        assert_eq!(actions.release, expected);
        // Ten delivered, the rest still on their way: nothing more this window.
        for i in 0..10 {
            pacer.count(T, &id(i), START + 500);
        }
        assert!(pacer.plan(START + 9_999).release.is_empty());
        // The next window: its allowance less what is still in flight.
        let next = share.window_allowance(10_000, START / 10_000 + 1);
        let in_flight = allowance - 10;
        let actions = pacer.plan(START + 10_000);
        assert_eq!(actions.release.len() as u64, next - in_flight);
        assert_eq!(actions.release[0], id(allowance as usize));
    }

    #[test]
    fn a_release_that_delivers_nothing_is_made_again_after_the_timeout() {
        let mut pacer = pacer(600, 1, START);
        pacer.note_held("4QA", "a@gmail.com");
        assert_eq!(pacer.plan(START).release, vec!["4QA".to_string()]);
        assert!(pacer.plan(START + 19_999).release.is_empty());
        // The release reached the message while the queue manager still had
        // it; the budget it took is given back and the message released again.
        assert_eq!(pacer.plan(START + 20_000).release, vec!["4QA".to_string()]);
        pacer.count(T, "4QA", START + 20_100);
        assert_eq!(pacer.waiting(), 0);
    }

    #[test]
    fn a_message_is_released_with_all_its_recipients_and_deferred_again_is_parked_again() {
        let mut pacer = pacer(36_000, 1, START); // 100 per window
        for r in 0..80 {
            pacer.note_held("4QBIG", &format!("r{r}@gmail.com"));
        }
        pacer.note_held("4QNEXT", "n@gmail.com");
        pacer.note_held("4QLAST", "l@gmail.com");
        let actions = pacer.plan(START);
        assert_eq!(actions.park.len(), 3);
        assert_eq!(actions.release, vec!["4QBIG", "4QNEXT", "4QLAST"]);
        // The big one comes back deferred (the release was early): parked
        // again, first in line, with the budget it held given back.
        pacer.note_held("4QBIG", "r0@gmail.com");
        let actions = pacer.plan(START + 10);
        assert_eq!(actions.park, vec!["4QBIG".to_string()]);
        assert_eq!(actions.release, vec!["4QBIG".to_string()]);
    }

    #[test]
    fn mail_of_a_transport_no_longer_capped_is_released_and_the_hold_lifted() {
        let mut pacer = pacer(1, 1, START);
        pacer.note_held("4QA", "a@gmail.com");
        pacer.note_held("4QB", "b@gmail.com");
        let actions = pacer.plan(START);
        assert!(actions.release.len() <= 1);
        let mut uncapped = document(1, 1);
        uncapped.routes[0].hourly_cap = None;
        pacer.configure(&uncapped, lookup(), START + 1);
        let actions = pacer.plan(START + 2);
        assert_eq!(actions.holds, Some(BTreeSet::new()));
        assert!(actions.release.contains(&"4QB".to_string()));
    }

    #[test]
    fn parked_mail_an_earlier_agent_left_is_taken_in() {
        let mut pacer = pacer(3600, 1, START); // 10 per window
        for i in 0..15 {
            pacer.adopt(&id(i), &[format!("r{i}@gmail.com")]);
        }
        let actions = pacer.plan(START);
        assert!(actions.park.is_empty());
        assert_eq!(actions.release.len(), 10);
    }

    #[test]
    fn a_new_replica_count_restarts_the_share_and_an_unchanged_one_keeps_the_count() {
        let mut pacer = Pacer::new(Duration::from_secs(60));
        pacer.configure(&document(600, 1), lookup(), 0);
        pacer.count(T, "4QA", 1);
        let kept = pacer.clone();
        pacer.configure(&document(600, 1), lookup(), 2);
        assert_eq!(pacer, kept);
        pacer.configure(&document(600, 3), lookup(), 3);
        let (_, share) = pacer.shares().next().unwrap();
        assert_eq!(share.replicas, 3);
    }

    #[test]
    fn log_lines_name_their_transport_and_holds_are_not_deliveries() {
        let sent = b"Dec  7 03:00:00 host postfix/mf-127-0-0-31-google/smtp[42]: 4XyZ1: to=<a@gmail.com>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 OK)";
        assert_eq!(
            paced_line(sent),
            PacedLine::Delivery {
                transport: T,
                queue_id: "4XyZ1"
            }
        );
        let held = b"Dec  7 03:00:00 host postfix/qmgr[40]: 4XyZ2: to=<b@gmail.com>, relay=none, delay=3, delays=3/0/0/0, dsn=4.3.2, status=deferred (deferred transport)";
        // The queue manager logs the hold without the transport: the
        // recipient's domain says which it is.
        assert_eq!(
            paced_line(held),
            PacedLine::Held {
                queue_id: "4XyZ2",
                recipient: "b@gmail.com"
            }
        );
        assert!(is_hold_deferral(held));
        assert!(!is_hold_deferral(sent));
        let refused = b"Dec  7 03:00:00 host postfix/mf-127-0-0-31-google/smtp[42]: 4XyZ3: to=<c@gmail.com>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:2525: Connection refused)";
        assert_eq!(paced_line(refused), PacedLine::Other);
    }

    #[test]
    fn a_released_message_that_left_another_way_is_forgotten_and_its_budget_given_back() {
        // 360/h: one release per 10 s window.
        let mut pacer = pacer(360, 1, START);
        pacer.note_held("4QA", "a@gmail.com");
        pacer.note_held("4QB", "b@gmail.com");
        assert_eq!(pacer.plan(START).release, vec!["4QA".to_string()]);
        // It leaves through a transport the pacer does not follow (a
        // hand-off after a block): no delivery of T is logged, only its
        // removal from the queue.
        let handed_off = b"Dec  8 04:32:01 s4 postfix/smtp[4926]: 4QA: to=<a@gmail.com>, relay=127.0.0.10[127.0.0.10]:10027, delay=19, delays=18/0.19/0/0, dsn=2.0.0, status=sent (250 OK)";
        assert_eq!(paced_line(handed_off), PacedLine::Other);
        let removed = b"Dec  8 04:32:01 s4 postfix/qmgr[4788]: 4QA: removed";
        assert_eq!(paced_line(removed), PacedLine::Removed { queue_id: "4QA" });
        pacer.forget("4QA");
        assert_eq!(pacer.waiting(), 1);
        // The next window releases the next message, and the gone one is
        // never released again.
        assert_eq!(pacer.plan(START + 10_000).release, vec!["4QB".to_string()]);
        pacer.count(T, "4QB", START + 10_100);
        assert!(pacer.plan(START + 40_000).release.is_empty());
        assert_eq!(pacer.waiting(), 0);
    }

    #[test]
    fn only_the_queue_managers_removal_is_a_removal() {
        for line in [
            &b"Dec  8 04:32:01 s4 postfix/cleanup[42]: 4QA: removed"[..],
            b"Dec  8 04:32:01 s4 postfix/qmgr[4788]: 4QA: from=<>, size=519, nrcpt=1 (queue active)",
            b"Dec  8 04:32:01 s4 postfix/qmgr[4788]: : removed",
        ] {
            assert_eq!(paced_line(line), PacedLine::Other, "{}", String::from_utf8_lossy(line));
        }
        let custom = b"2026-12-08T04:32:01.000000+00:00 s4 postfix-mf/qmgr[4788]: 4QA: removed";
        assert_eq!(paced_line(custom), PacedLine::Removed { queue_id: "4QA" });
    }

    #[test]
    fn the_pacer_lines_are_replaced_and_removed_with_the_last_hold() {
        let base = "myhostname = a\n";
        let one = with_holds(base, &BTreeSet::from([T.to_string()]));
        assert_eq!(
            one,
            format!("{base}{PACER_BEGIN}\ndefer_transports = {T}\n{T}_transport_rate_delay = 0s\n{PACER_END}\n")
        );
        let two = with_holds(&one, &BTreeSet::from([T.to_string(), "x".to_string()]));
        assert!(two.contains(&format!("defer_transports = {T}, x\n")));
        assert_eq!(two.matches("defer_transports").count(), 1);
        assert_eq!(with_holds(&two, &BTreeSet::new()), base);
        let old = format!("{base}{OLD_HOLD_MARKER}\ndefer_transports = {T}\n");
        assert_eq!(with_holds(&old, &BTreeSet::new()), base);
    }

    #[test]
    fn a_paced_transports_rendered_rate_delay_is_set_aside_not_set_twice() {
        let base = format!(
            "myhostname = a\n{T}_transport_rate_delay = 18s\nx_transport_rate_delay = 5s\n"
        );
        let paced = with_holds(&base, &BTreeSet::from([T.to_string()]));
        let set = |key: &str| {
            paced
                .lines()
                .filter(|l| l.split('=').next().unwrap().trim() == key)
                .count()
        };
        assert_eq!(set(&format!("{T}_transport_rate_delay")), 1, "{paced}");
        assert!(paced.contains(&format!("{SET_ASIDE}{T}_transport_rate_delay = 18s\n")));
        assert!(paced.contains(&format!("{T}_transport_rate_delay = 0s\n")));
        assert_eq!(set("x_transport_rate_delay"), 1);
        // Pacing again changes nothing; the last hold puts the line back.
        assert_eq!(with_holds(&paced, &BTreeSet::from([T.to_string()])), paced);
        assert_eq!(with_holds(&paced, &BTreeSet::new()), base);
    }

    /// Runs a pacer over `windows` windows with a backlog larger than the
    /// budget, delivering each released recipient `delay_ms` later; returns
    /// the deliveries made inside the span.
    fn delivered_over(cap: i64, replicas: u32, windows: u64, delays: &[u64]) -> u64 {
        let mut pacer = pacer(cap, replicas, START);
        let share = ReplicaShare::new(Some(cap), replicas).unwrap();
        let first = START / 10_000;
        let span: u64 = (first..first + windows)
            .map(|w| share.window_allowance(10_000, w))
            .sum();
        let backlog = span as usize * 2 + 10;
        for i in 0..backlog {
            pacer.note_held(&id(i), &format!("r{i}@gmail.com"));
        }
        let end = START + windows * 10_000;
        let mut pending: Vec<(u64, String)> = Vec::new();
        let mut delivered = 0;
        let mut k = 0usize;
        let mut now = START;
        while now < end {
            pending.sort();
            let due: Vec<(u64, String)> = pending
                .iter()
                .filter(|(at, _)| *at <= now)
                .cloned()
                .collect();
            pending.retain(|(at, _)| *at > now);
            for (_, queue_id) in due {
                pacer.count(T, &queue_id, now);
                delivered += 1;
            }
            for queue_id in pacer.plan(now).release {
                let delay = delays[k % delays.len()];
                k += 1;
                pending.push((now + delay, queue_id));
            }
            now += 50;
        }
        delivered
    }

    #[test]
    fn low_caps_come_out_exact_on_three_replicas_and_on_one() {
        // 600/h: 30 in 3 minutes from the IP, 10 per replica of three.
        assert_eq!(delivered_over(600, 3, 18, &[200]), 10);
        assert_eq!(delivered_over(600, 1, 18, &[200]), 30);
        assert_eq!(delivered_over(3600, 3, 18, &[200]), 60);
        assert_eq!(delivered_over(36_000, 3, 18, &[200]), 600);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn deliveries_keep_to_the_windows_whatever_they_take(
            cap in 1i64..=100_000,
            replicas in 1u32..=4,
            windows in 1u64..30,
            delays in prop::collection::vec(0u64..5_000, 1..20),
        ) {
            let share = ReplicaShare::new(Some(cap), replicas).unwrap();
            let first = START / 10_000;
            let allowed: u64 = (first..first + windows).map(|w| share.window_allowance(10_000, w)).sum();
            let most = (0..=windows).map(|w| share.window_allowance(10_000, START / 10_000 + w)).max().unwrap_or(0);
            let got = delivered_over(cap, replicas, windows, &delays);
            // Never more than the span allows; short of it by at most what
            // was still on its way when the span ended (one window's budget).
            prop_assert!(got <= allowed, "{got} > {allowed}");
            prop_assert!(got + most + 1 >= allowed, "{got} far below {allowed}");
        }
    }
}
