//! The delivery pacer: keeps each direct transport of this sender within its
//! replica's share of the route's hourly cap, window by window
//! ([`crate::routing::caps`]; docs/ROUTE-TABLE.md, "Exact caps at any volume").
//!
//! Postfix rate delays are whole seconds, so above 3,600/h only counting can
//! hold a cap. The pacer counts every delivery a transport logs that reached a
//! server (sent, or answered with a deferral or a bounce; a connection that
//! failed used none of the provider's patience); when a transport has used its
//! window's budget it goes into `defer_transports` (Postfix keeps its mail
//! queued), and at the first window with budget it comes out again and the mail
//! it deferred meanwhile is scheduled at once.
//!
//! The decisions are pure ([`Pacer`], fed with milliseconds); [`PostfixHolds`]
//! writes them into main.cf and reloads Postfix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::apply::{run_ok, write_atomically, ApplyError, PostfixTarget};
use crate::reputation::postfix_log::parse_line_bytes;
use crate::routing::caps::{ReplicaShare, WindowCredit};
use crate::routing::sender_config::SenderDocument;

/// The window the pacer counts in when none is given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// The reason Postfix logs for mail of a transport in `defer_transports`.
const HELD_REMARK: &str = "deferred transport";

/// Marks the pacer's line in main.cf; the line after it is `defer_transports`.
pub const HOLD_MARKER: &str =
    "# mailfleet pacer: transports over their window's budget (the next line is rewritten)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pace {
    share: ReplicaShare,
    credit: WindowCredit,
    /// Deliveries counted since the transport was last held: those already
    /// under way when the hold took effect.
    since_hold: u64,
    /// What the last holds let through, smoothed: the transport is held that
    /// many messages before its budget is spent, so what is in flight lands
    /// inside the budget instead of becoming the next window's debt.
    lead: u64,
}

impl Pace {
    fn new(share: ReplicaShare, credit: WindowCredit) -> Pace {
        Pace {
            share,
            credit,
            since_hold: 0,
            lead: 0,
        }
    }

    /// Whether to hold now: the budget is spent, or what is left is what the
    /// last holds let through (at most half a window's budget, so a slow
    /// window still sends).
    fn must_hold(&self, window_ms: u64) -> bool {
        let allowance = self.share.window_allowance(window_ms, self.credit.window());
        self.credit.spent() || self.credit.left() <= self.lead.min(allowance / 2)
    }
}

/// The pacing state of one sender's direct transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pacer {
    window_ms: u64,
    paces: BTreeMap<String, Pace>,
    held: BTreeSet<String>,
    /// Queue ids the holds deferred (Postfix's queue manager logs them
    /// without the transport): scheduled again at the next release.
    deferred: BTreeSet<String>,
    /// More were deferred than [`MAX_REMEMBERED_IDS`].
    overflowed: bool,
    /// Whether main.cf is known to hold exactly `held` (not at start: a hold
    /// left by a stopped agent must not outlive it).
    synced: bool,
}

/// What the holds should become.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoldChange {
    /// Every transport to hold from now on.
    pub held: BTreeSet<String>,
    /// Queue ids of the mail the released transports deferred while held.
    pub release_queue_ids: BTreeSet<String>,
    /// Transports released.
    pub released: BTreeSet<String>,
    /// Too many held messages to name: flush the whole deferred queue.
    pub flush_all: bool,
}

/// Above this many held messages a release flushes the deferred queue once
/// (`postqueue -f`) instead of naming each (`postqueue -i`, one process each).
pub const MAX_NAMED_RELEASES: usize = 32;

/// The most queue ids remembered while transports are held; past it a
/// release flushes the whole deferred queue instead.
pub const MAX_REMEMBERED_IDS: usize = 2000;

impl Pacer {
    pub fn new(window: Duration) -> Pacer {
        Pacer {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            paces: BTreeMap::new(),
            held: BTreeSet::new(),
            deferred: BTreeSet::new(),
            overflowed: false,
            synced: false,
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn index(&self, now_ms: u64) -> u64 {
        now_ms / self.window_ms
    }

    /// Takes the caps of `document` (its direct routes and ready replicas).
    /// A transport whose share did not change keeps its window's count.
    pub fn configure(&mut self, document: &SenderDocument, now_ms: u64) {
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
                _ => Pace::new(share, WindowCredit::new(&share, self.window_ms, index)),
            };
            paces.insert(transport.clone(), pace);
        }
        self.paces = paces;
    }

    /// The transports paced, with their share.
    pub fn shares(&self) -> impl Iterator<Item = (&str, &ReplicaShare)> {
        self.paces.iter().map(|(t, p)| (t.as_str(), &p.share))
    }

    /// Counts one delivery attempt of `transport` that reached a server.
    pub fn count(&mut self, transport: &str, now_ms: u64) {
        let index = self.index(now_ms);
        let window_ms = self.window_ms;
        let held = self.held.contains(transport);
        if let Some(pace) = self.paces.get_mut(transport) {
            pace.credit.advance(&pace.share, window_ms, index);
            pace.credit.spend(1);
            if held {
                pace.since_hold += 1;
            }
        }
    }

    /// Notes a message a hold deferred (`status=deferred (deferred transport)`).
    pub fn note_held(&mut self, queue_id: &str) {
        if self.deferred.len() < MAX_REMEMBERED_IDS {
            self.deferred.insert(queue_id.to_string());
        } else {
            self.overflowed = true;
        }
    }

    /// The transports currently held.
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// What the holds must be at `now_ms`; `None` when they stay as they are.
    pub fn plan(&mut self, now_ms: u64) -> Option<HoldChange> {
        let index = self.index(now_ms);
        let window_ms = self.window_ms;
        let mut held = BTreeSet::new();
        for (transport, pace) in &mut self.paces {
            pace.credit.advance(&pace.share, window_ms, index);
            if pace.must_hold(window_ms) {
                held.insert(transport.clone());
            }
        }
        if held == self.held && self.synced {
            return None;
        }
        let released: BTreeSet<String> = self.held.difference(&held).cloned().collect();
        let mut change = HoldChange {
            held,
            release_queue_ids: BTreeSet::new(),
            released,
            flush_all: false,
        };
        if !change.released.is_empty() {
            // Mail of a transport still held is deferred again at once, cheaply.
            change.release_queue_ids = std::mem::take(&mut self.deferred);
            change.flush_all = std::mem::take(&mut self.overflowed);
        }
        if !self.synced {
            // Mail an earlier agent's hold deferred is not known by id.
            change.flush_all = true;
        }
        Some(change)
    }

    /// Records that `change` was applied.
    pub fn applied(&mut self, change: &HoldChange) {
        for transport in &change.released {
            if let Some(pace) = self.paces.get_mut(transport) {
                pace.lead = (pace.lead + pace.since_hold).div_ceil(2);
                pace.since_hold = 0;
            }
        }
        for transport in change.held.difference(&self.held) {
            if let Some(pace) = self.paces.get_mut(transport) {
                pace.since_hold = 0;
            }
        }
        self.held = change.held.clone();
        self.synced = true;
    }

    /// When the next window starts (the earliest a hold can be released).
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
    },
    /// Mail a hold deferred: not a delivery, and not a signal about the
    /// provider either.
    Held {
        queue_id: &'a str,
    },
    Other,
}

/// Reads a Postfix delivery line for the pacer. The transport is the middle of
/// the process name `postfix/<transport>/smtp` (the rendered `syslog_name`).
pub fn paced_line(line: &[u8]) -> PacedLine<'_> {
    let Ok(attempt) = parse_line_bytes(line) else {
        return PacedLine::Other;
    };
    if attempt.relay_host.is_none() && attempt.text.trim_matches(['(', ')', ' ']) == HELD_REMARK {
        return PacedLine::Held {
            queue_id: attempt.queue_id,
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
    PacedLine::Delivery { transport }
}

/// Whether a line is a hold's deferral, which the agent must not report as a
/// provider's answer.
pub fn is_hold_deferral(line: &[u8]) -> bool {
    matches!(paced_line(line), PacedLine::Held { .. })
}

/// `text` with the pacer's `defer_transports` line set to `held` (removed when empty).
pub fn with_holds(text: &str, held: &BTreeSet<String>) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut lines = text.split_inclusive('\n');
    while let Some(line) = lines.next() {
        if line.trim_end() == HOLD_MARKER {
            lines.next();
            continue;
        }
        out.push_str(line);
    }
    if !held.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(HOLD_MARKER);
        out.push('\n');
        out.push_str("defer_transports = ");
        out.push_str(&held.iter().cloned().collect::<Vec<_>>().join(", "));
        out.push('\n');
    }
    out
}

/// Applies holds to a running Postfix.
pub struct PostfixHolds<'a> {
    pub target: &'a PostfixTarget,
}

impl PostfixHolds<'_> {
    fn main_cf(&self) -> PathBuf {
        self.target.config_dir.join("main.cf")
    }

    /// Writes `change.held` into main.cf, reloads Postfix, and schedules the
    /// mail the holds deferred (by queue id, or the whole queue when there
    /// were too many to name).
    pub fn apply(&self, change: &HoldChange) -> Result<(), ApplyError> {
        let path = self.main_cf();
        let current = read_or_empty(&path)?;
        let updated = with_holds(&current, &change.held);
        if updated == current {
            return Ok(());
        }
        write_atomically(&path, updated.as_bytes())?;
        if !self.target.is_running()? {
            return Ok(());
        }
        let config = self.target.config_dir.to_string_lossy().into_owned();
        let bin = |name: &str| self.target.bin_dir.join(name);
        run_ok(&bin("postfix"), &["-c", &config, "reload"])?;
        if change.flush_all || change.release_queue_ids.len() > MAX_NAMED_RELEASES {
            return run_ok(&bin("postqueue"), &["-c", &config, "-f"]);
        }
        for id in &change.release_queue_ids {
            // A message delivered or removed meanwhile is not an error worth stopping for.
            let _ = run_ok(&bin("postqueue"), &["-c", &config, "-i", id]);
        }
        Ok(())
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
                transport: Some("mf-127-0-0-31-google".into()),
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

    const T: &str = "mf-127-0-0-31-google";

    #[test]
    fn a_transport_is_held_when_its_window_is_spent_and_released_at_the_next() {
        // 36,000/h over 3 replicas: 12,000/h each, 33 or 34 per 10 s window.
        let mut pacer = Pacer::new(Duration::from_secs(10));
        let start = 1_000_000_000_000u64; // a window boundary
        pacer.configure(&document(36_000, 3), start);
        // The first plan clears whatever an earlier agent left.
        let first = pacer.plan(start).expect("a first sync");
        assert!(first.held.is_empty() && first.flush_all);
        pacer.applied(&first);
        assert_eq!(pacer.plan(start), None);
        for i in 0..33 {
            pacer.count(T, start + i);
        }
        let change = pacer.plan(start + 100).expect("held");
        assert!(change.held.contains(T));
        pacer.applied(&change);
        pacer.note_held("4XyZ1");
        // Two in flight when the hold took effect: the next window pays them.
        pacer.count(T, start + 200);
        pacer.count(T, start + 300);
        assert_eq!(pacer.plan(start + 9_999), None);
        let change = pacer.plan(start + 10_000).expect("released");
        assert!(change.held.is_empty());
        assert_eq!(change.released, BTreeSet::from([T.to_string()]));
        assert_eq!(
            change.release_queue_ids,
            BTreeSet::from(["4XyZ1".to_string()])
        );
        pacer.applied(&change);
        // This window allows 34, of which 2 were owed; the last hold let 2
        // through, so the transport is held 1 early (the lead is smoothed).
        for i in 0..30 {
            pacer.count(T, start + 10_000 + i);
        }
        assert_eq!(pacer.plan(start + 10_050), None);
        pacer.count(T, start + 10_060);
        assert!(pacer.plan(start + 10_100).unwrap().held.contains(T));
    }

    #[test]
    fn a_new_replica_count_restarts_the_share_and_an_unchanged_one_keeps_the_count() {
        let mut pacer = Pacer::new(Duration::from_secs(60));
        pacer.configure(&document(600, 1), 0);
        pacer.count(T, 1);
        let kept = pacer.clone();
        pacer.configure(&document(600, 1), 2);
        assert_eq!(pacer, kept);
        pacer.configure(&document(600, 3), 3);
        let (_, share) = pacer.shares().next().unwrap();
        assert_eq!(share.replicas, 3);
    }

    #[test]
    fn log_lines_name_their_transport_and_holds_are_not_deliveries() {
        let sent = b"Dec  7 03:00:00 host postfix/mf-127-0-0-31-google/smtp[42]: 4XyZ1: to=<a@gmail.com>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 OK)";
        assert_eq!(paced_line(sent), PacedLine::Delivery { transport: T });
        let held = b"Dec  7 03:00:00 host postfix/qmgr[40]: 4XyZ2: to=<b@gmail.com>, relay=none, delay=3, delays=3/0/0/0, dsn=4.3.2, status=deferred (deferred transport)";
        // The queue manager logs the hold without the transport; the id is what matters.
        assert_eq!(paced_line(held), PacedLine::Held { queue_id: "4XyZ2" });
        assert!(is_hold_deferral(held));
        assert!(!is_hold_deferral(sent));
        let refused = b"Dec  7 03:00:00 host postfix/mf-127-0-0-31-google/smtp[42]: 4XyZ3: to=<c@gmail.com>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:2525: Connection refused)";
        assert_eq!(paced_line(refused), PacedLine::Other);
    }

    #[test]
    fn the_hold_line_is_replaced_and_removed_with_the_last_hold() {
        let base = "myhostname = a\n";
        let one = with_holds(base, &BTreeSet::from([T.to_string()]));
        assert_eq!(
            one,
            format!("{base}{HOLD_MARKER}\ndefer_transports = {T}\n")
        );
        let two = with_holds(&one, &BTreeSet::from([T.to_string(), "x".to_string()]));
        assert!(two.ends_with(&format!("defer_transports = {T}, x\n")));
        assert_eq!(two.matches("defer_transports").count(), 1);
        assert_eq!(with_holds(&two, &BTreeSet::new()), base);
    }
}
