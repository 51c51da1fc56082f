//! Draining a sender before it stops (docs/OPERATING.md, "Scale-down and pod
//! deletion"): a sender pod's queue lives on an emptyDir, so mail still queued
//! when the pod is deleted would go with it. On SIGTERM, before Postfix stops:
//!
//! 1. intake stops: `master_service_disable = inet` and a reload (the pod has
//!    already left the Services' endpoints; a client that still connects is
//!    refused and retries elsewhere);
//! 2. every queued message is handed to the pool's other senders: the
//!    transport map and the pacer's holds are cleared, what the pacer parked
//!    in the hold queue is released, and the default transport points at the
//!    hand-off address (the pool's intake Service),
//!    then the whole queue is flushed, and again every few seconds, so a
//!    message whose hand-off failed once is tried again;
//! 3. it waits until the queue is empty or the drain's deadline passes; what
//!    is left is counted and said (log, termination message, the agent's
//!    last report), never dropped silently.
//!
//! The sibling that receives a message routes it with its own copy of the
//! route table (directly when its IP may send to the provider, otherwise on
//! to the route's Service, or keeping it queued when the route defers), so a
//! drained message takes the same route it would have taken here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::agent::apply::{run_ok, ApplyError, PostfixTarget};
use crate::agent::queue::{read_postfix_queue, RouteLookup};
use crate::agent::report::DrainReport;

/// Where and how long to drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainOptions {
    /// `host:port` of the hand-off (the pool's intake Service).
    pub to: String,
    /// The longest the drain may take (inside the pod's grace period).
    pub timeout: Duration,
    /// How often the queue is flushed again while draining.
    pub flush_every: Duration,
    /// Where to write the outcome for `kubectl describe pod`
    /// (`/dev/termination-log`); `None`: nowhere.
    pub termination_log: Option<PathBuf>,
}

/// What the drain did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Messages queued when the drain began.
    pub queued_at_start: u64,
    /// Messages still queued at the end (0: everything left).
    pub left: u64,
    pub took: Duration,
}

impl Drained {
    /// As the agent's reports carry it to the operator.
    pub fn report(&self, to: &str) -> DrainReport {
        DrainReport {
            to: to.to_string(),
            // Mail that reached the queue after the first count is counted too.
            queued_at_start: self.queued_at_start.max(self.left),
            left: self.left,
            took_ms: u64::try_from(self.took.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("the hand-off address `{0}` is not host:port (e.g. mf-pool-bulk.mail.svc:25)")]
    Address(String),
    #[error(transparent)]
    Postfix(#[from] ApplyError),
}

/// The main.cf settings that stop intake and send every queued message to
/// `to` (`host:port`). Pure: what [`drain`] writes with `postconf -e`.
pub fn drain_settings(to: &str) -> Result<Vec<(&'static str, String)>, DrainError> {
    let (host, port) = to
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        .ok_or_else(|| DrainError::Address(to.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == ',') {
        return Err(DrainError::Address(to.to_string()));
    }
    Ok(vec![
        ("master_service_disable", "inet".to_string()),
        // Every recipient now takes the default transport: the hand-off.
        ("transport_maps", String::new()),
        ("sender_dependent_default_transport_maps", String::new()),
        ("defer_transports", String::new()),
        ("default_transport", format!("smtp:[{host}]:{port}")),
        // A hand-off that fails is tried again at the next flush, not in minutes.
        ("minimal_backoff_time", "1s".to_string()),
        ("maximal_backoff_time", "5s".to_string()),
        ("queue_run_delay", "1s".to_string()),
    ])
}

/// Messages in the queue now.
fn queued(target: &PostfixTarget) -> Result<u64, DrainError> {
    read_postfix_queue(target, &RouteLookup::default(), Duration::from_secs(30))
        .map(|t| t.messages)
        .map_err(|e| {
            DrainError::Postfix(ApplyError::Command {
                command: "postqueue -j".into(),
                status: "failed".into(),
                stderr: e.to_string(),
            })
        })
}

/// Drains a running Postfix into `options.to`; see the module comment.
pub fn drain(target: &PostfixTarget, options: &DrainOptions) -> Result<Drained, DrainError> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let settings = drain_settings(&options.to)?;
    let config = target.config_dir.display().to_string();
    let bin = |name: &str| target.bin_dir.join(name);
    let queued_at_start = queued(target)?;
    let mut args: Vec<String> = vec!["-c".into(), config.clone(), "-e".into()];
    args.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&bin("postconf"), &args)?;
    run_ok(&bin("postfix"), &["-c", &config, "reload"])?;
    // What the pacer parked in the hold queue leaves with the rest.
    run_ok(&bin("postsuper"), &["-c", &config, "-H", "ALL", "hold"])?;
    tracing::info!(
        queued = queued_at_start,
        to = options.to.as_str(),
        "draining: intake stopped, handing the queue to the pool's other senders"
    );
    let mut left = queued_at_start;
    let mut next_flush = Instant::now();
    while left > 0 && Instant::now() < deadline {
        if Instant::now() >= next_flush {
            run_ok(&bin("postqueue"), &["-c", &config, "-f"])?;
            next_flush = Instant::now() + options.flush_every;
        }
        std::thread::sleep(Duration::from_millis(500));
        left = queued(target)?;
    }
    let drained = Drained {
        queued_at_start,
        left,
        took: started.elapsed(),
    };
    let message = if left == 0 {
        format!(
            "drained: {queued_at_start} queued message(s) handed to {} in {:.1}s",
            options.to,
            drained.took.as_secs_f64()
        )
    } else {
        format!(
            "drain incomplete: {left} of {queued_at_start} queued message(s) could not be handed to {} within {}s and stay in this pod's queue (lost if the pod is deleted)",
            options.to,
            options.timeout.as_secs()
        )
    };
    if left == 0 {
        tracing::info!(queued = queued_at_start, "{message}");
    } else {
        tracing::error!(left, queued = queued_at_start, "{message}");
    }
    if let Some(path) = &options.termination_log {
        let _ = std::fs::write(path, format!("{message}\n"));
    }
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_off_becomes_the_default_transport_and_intake_stops() {
        let settings = drain_settings("mf-pool-bulk.mail.svc:25").unwrap();
        assert!(settings.contains(&("master_service_disable", "inet".into())));
        assert!(settings.contains(&("transport_maps", String::new())));
        assert!(settings.contains(&("defer_transports", String::new())));
        assert!(settings.contains(&(
            "default_transport",
            "smtp:[mf-pool-bulk.mail.svc]:25".into()
        )));
        assert_eq!(
            drain_settings("[127.0.11.31]:2526").unwrap()[4].1,
            "smtp:[127.0.11.31]:2526"
        );
    }

    #[test]
    fn a_hand_off_without_a_port_is_refused_by_name() {
        for bad in ["mf-pool-bulk", ":25", "host:0", "host:x", "a b:25"] {
            let e = drain_settings(bad).unwrap_err().to_string();
            assert!(e.contains("host:port"), "{bad}: {e}");
        }
    }
}
