//! Reading the sender's queue: `postqueue -j` (one JSON object per queued
//! message, Postfix ≥ 3.1), summed per route of the sender's transport map —
//! how many messages wait and since when — so a route in Defer or a long
//! hold-down shows its queue long before `maximal_queue_lifetime` turns it
//! into bounces.
//!
//! The listing is read as a stream: memory is one line (at most
//! [`MAX_LINE_BYTES`]) plus one figure per route, whatever the queue's size;
//! the read stops at a deadline and says the figures are partial.

use std::collections::HashMap;
use std::io::{self, BufRead, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::agent::apply::PostfixTarget;
use crate::agent::report::{QueueReport, RouteQueueReport, MAX_QUEUE_ROUTES};

/// A listing line longer than this (a message with thousands of pending
/// recipients) is not parsed; it is counted in [`QueueTally::unreadable`].
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// A route of the sender's transport map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueRoute {
    pub namespace: String,
    pub name: String,
    pub provider: String,
}

/// Which route a recipient domain takes, read from the rendered transport map
/// (`mailfleet_transport`): its `# route <ns>/<name> (provider <p>, mode <m>)`
/// headers and the keys under each, looked up as Postfix's transport(5) does
/// (the domain, then `.parent` domains, then `*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteLookup {
    routes: Vec<QueueRoute>,
    keys: HashMap<String, usize>,
}

impl RouteLookup {
    pub fn from_transport_map(text: &str) -> RouteLookup {
        let mut lookup = RouteLookup::default();
        let mut current: Option<usize> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(header) = line.strip_prefix("# route ") {
                current = parse_header(header).map(|route| {
                    lookup.routes.push(route);
                    lookup.routes.len() - 1
                });
                continue;
            }
            if line.starts_with('#') {
                // "# entries left out" and the like end the last route's keys.
                if !line.starts_with("# mailfleet") {
                    current = None;
                }
                continue;
            }
            let (Some(route), Some(key)) = (current, line.split_whitespace().next()) else {
                continue;
            };
            lookup.keys.entry(key.to_ascii_lowercase()).or_insert(route);
        }
        lookup
    }

    pub fn routes(&self) -> &[QueueRoute] {
        &self.routes
    }

    /// The route index of a recipient address, `None` when no key matches.
    pub fn route_of(&self, address: &str) -> Option<usize> {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !domain.is_empty() {
            if let Some(&i) = self.keys.get(&domain) {
                return Some(i);
            }
            let mut rest = domain.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if let Some(&i) = self.keys.get(&format!(".{parent}")) {
                    return Some(i);
                }
                rest = parent;
            }
        }
        self.keys.get("*").copied()
    }
}

/// `<ns>/<name> (provider <p>, mode <m>): ...`
fn parse_header(header: &str) -> Option<QueueRoute> {
    let (key, rest) = header.split_once(" (provider ")?;
    let (namespace, name) = key.split_once('/')?;
    let provider = rest.split([',', ')']).next()?.trim();
    Some(QueueRoute {
        namespace: namespace.to_string(),
        name: name.to_string(),
        provider: provider.to_string(),
    })
}

/// What waits for one route (or for no route: `route` is `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteFigure {
    /// Messages with at least one pending recipient on the route.
    pub messages: u64,
    /// Pending recipients on the route.
    pub recipients: u64,
    /// Unix seconds of the oldest such message's arrival.
    pub oldest_arrival: Option<i64>,
}

impl RouteFigure {
    fn add(&mut self, arrival: i64, recipients: u64) {
        self.messages += 1;
        self.recipients += recipients;
        self.oldest_arrival = Some(self.oldest_arrival.map_or(arrival, |o| o.min(arrival)));
    }
}

/// The summed listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueTally {
    /// Messages in the listing, in every queue (incoming, active, deferred, hold).
    pub messages: u64,
    /// Of those, in the `hold` queue (kept until an administrator releases them).
    pub held: u64,
    /// Unix seconds of the oldest message's arrival.
    pub oldest_arrival: Option<i64>,
    /// Per route of the lookup, same order as [`RouteLookup::routes`].
    pub per_route: Vec<RouteFigure>,
    /// Recipients no route matches (the image's own default transport).
    pub unrouted: RouteFigure,
    /// Lines that were too long or not a message object.
    pub unreadable: u64,
    /// The read stopped at its deadline: the figures count part of the queue.
    pub partial: bool,
}

#[derive(Deserialize)]
struct ListedMessage {
    #[serde(default)]
    queue_name: String,
    arrival_time: i64,
    #[serde(default)]
    recipients: Vec<ListedRecipient>,
}

#[derive(Deserialize)]
struct ListedRecipient {
    address: String,
}

impl QueueTally {
    fn new(lookup: &RouteLookup) -> QueueTally {
        QueueTally {
            per_route: vec![RouteFigure::default(); lookup.routes().len()],
            ..QueueTally::default()
        }
    }

    fn add_line(&mut self, lookup: &RouteLookup, line: &[u8], seen: &mut Vec<u64>) {
        let Ok(message) = serde_json::from_slice::<ListedMessage>(line) else {
            self.unreadable += 1;
            return;
        };
        self.messages += 1;
        if message.queue_name == "hold" {
            self.held += 1;
        }
        let arrival = message.arrival_time;
        self.oldest_arrival = Some(self.oldest_arrival.map_or(arrival, |o| o.min(arrival)));
        // Recipients per route of this one message (routes are few).
        seen.clear();
        seen.resize(self.per_route.len() + 1, 0);
        for recipient in &message.recipients {
            let slot = lookup
                .route_of(&recipient.address)
                .unwrap_or(self.per_route.len());
            seen[slot] += 1;
        }
        for (slot, &n) in seen.iter().enumerate().filter(|(_, n)| **n > 0) {
            match self.per_route.get_mut(slot) {
                Some(figure) => figure.add(arrival, n),
                None => self.unrouted.add(arrival, n),
            }
        }
    }
}

/// Sums a `postqueue -j` listing read from `input`, line by line, until its
/// end or `deadline`.
pub fn tally_listing<R: BufRead>(
    input: &mut R,
    lookup: &RouteLookup,
    deadline: Option<Instant>,
) -> io::Result<QueueTally> {
    let mut tally = QueueTally::new(lookup);
    let mut line = Vec::with_capacity(4096);
    let mut seen = Vec::new();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tally.partial = true;
            return Ok(tally);
        }
        line.clear();
        let read = input
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(tally);
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE_BYTES {
            skip_rest_of_line(input)?;
            tally.unreadable += 1;
            continue;
        }
        let trimmed = line.trim_ascii();
        if !trimmed.is_empty() {
            tally.add_line(lookup, trimmed, &mut seen);
        }
    }
}

fn skip_rest_of_line<R: BufRead>(input: &mut R) -> io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    }
}

/// The figures as a report carries them: the routes with waiting mail (at
/// most [`MAX_QUEUE_ROUTES`], the oldest first).
pub fn queue_report(
    tally: &QueueTally,
    lookup: &RouteLookup,
    read_at: Timestamp,
    maximal_lifetime_seconds: Option<i64>,
) -> QueueReport {
    let at = |secs: i64| Timestamp::from_second(secs).unwrap_or(read_at);
    let mut routes: Vec<RouteQueueReport> = lookup
        .routes()
        .iter()
        .zip(&tally.per_route)
        .filter_map(|(route, figure)| {
            Some(RouteQueueReport {
                namespace: route.namespace.clone(),
                route: route.name.clone(),
                provider: route.provider.clone(),
                messages: figure.messages,
                oldest_arrival: at(figure.oldest_arrival?),
            })
        })
        .collect();
    routes.sort_by_key(|a| a.oldest_arrival);
    routes.truncate(MAX_QUEUE_ROUTES);
    QueueReport {
        read_at,
        messages: tally.messages,
        oldest_arrival: tally.oldest_arrival.map(at),
        maximal_lifetime_seconds,
        complete: !tally.partial,
        routes,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueReadError {
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("reading the output of {command}: {source}")]
    Read { command: String, source: io::Error },
    #[error("`{command}` failed ({status}); is Postfix running?")]
    Failed { command: String, status: String },
}

/// Starts `postqueue -j` on `target`, its listing on a pipe; the command line
/// comes back for the errors that name it.
fn start_listing(target: &PostfixTarget) -> Result<(Child, String), QueueReadError> {
    let program = target.bin_dir.join("postqueue");
    let config = target.config_dir.display().to_string();
    let command = format!("{} -c {config} -j", program.display());
    let child = Command::new(&program)
        .args(["-c", &config, "-j"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| QueueReadError::Spawn {
            command: command.clone(),
            source,
        })?;
    Ok((child, command))
}

/// Runs `postqueue -j` on `target` and sums its listing; the command is
/// killed at `timeout` and the figures are then marked partial.
pub fn read_postfix_queue(
    target: &PostfixTarget,
    lookup: &RouteLookup,
    timeout: Duration,
) -> Result<QueueTally, QueueReadError> {
    let (mut child, command) = start_listing(target)?;
    let deadline = Instant::now() + timeout;
    let result = match child.stdout.take() {
        Some(stdout) => tally_listing(
            &mut io::BufReader::with_capacity(64 * 1024, stdout),
            lookup,
            Some(deadline),
        ),
        None => Ok(QueueTally::new(lookup)),
    };
    let tally = match result {
        Ok(tally) => tally,
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(QueueReadError::Read { command, source });
        }
    };
    if tally.partial {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(tally);
    }
    let status = child.wait().map_err(|source| QueueReadError::Read {
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        return Err(QueueReadError::Failed {
            command,
            status: status.to_string(),
        });
    }
    Ok(tally)
}

/// A message of the hold queue: its id and pending recipients.
#[derive(Deserialize)]
struct ListedHeld {
    #[serde(default)]
    queue_name: String,
    #[serde(default)]
    queue_id: String,
    #[serde(default)]
    recipients: Vec<ListedRecipient>,
}

/// The messages of the hold queue in a `postqueue -j` listing (at most
/// `limit`, read until the listing's end or `deadline`): id and recipients.
pub fn held_in_listing<R: BufRead>(
    input: &mut R,
    limit: usize,
    deadline: Option<Instant>,
) -> io::Result<Vec<(String, Vec<String>)>> {
    let mut held = Vec::new();
    let mut line = Vec::with_capacity(4096);
    while held.len() < limit && deadline.is_none_or(|d| Instant::now() < d) {
        line.clear();
        let read = input
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE_BYTES {
            skip_rest_of_line(input)?;
            continue;
        }
        let Ok(message) = serde_json::from_slice::<ListedHeld>(line.trim_ascii()) else {
            continue;
        };
        if message.queue_name == "hold" && !message.queue_id.is_empty() {
            let recipients = message.recipients.into_iter().map(|r| r.address).collect();
            held.push((message.queue_id, recipients));
        }
    }
    Ok(held)
}

/// Runs `postqueue -j` on `target` and returns what its hold queue holds
/// ([`held_in_listing`]); the command is killed at `timeout`.
pub fn read_hold_queue(
    target: &PostfixTarget,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<(String, Vec<String>)>, QueueReadError> {
    let (mut child, command) = start_listing(target)?;
    let deadline = Instant::now() + timeout;
    let result = match child.stdout.take() {
        Some(stdout) => held_in_listing(
            &mut io::BufReader::with_capacity(64 * 1024, stdout),
            limit,
            Some(deadline),
        ),
        None => Ok(Vec::new()),
    };
    let _ = child.kill();
    let _ = child.wait();
    result.map_err(|source| QueueReadError::Read { command, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::compile;
    use crate::routing::example::{incident_fleet, match_domains, pool, route};
    use crate::routing::postfix::{render_sender, PostfixOptions, Sender};

    fn lookup() -> RouteLookup {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let (pools, routes) = incident_fleet(now);
        let table = compile(&pools, &routes, now);
        let sender = Sender {
            namespace: "mail".into(),
            pool: "bulk".into(),
            ip: pools[0].spec.ips[0].address.clone(),
            settings: Default::default(),
        };
        let files = render_sender(
            &table,
            &sender,
            &Default::default(),
            &PostfixOptions::default(),
        )
        .unwrap();
        RouteLookup::from_transport_map(&files.transport)
    }

    #[test]
    fn the_rendered_transport_map_names_each_route_and_its_domains() {
        let lookup = lookup();
        let names: Vec<String> = lookup.routes().iter().map(|r| r.name.clone()).collect();
        assert!(names.contains(&"microsoft".to_string()), "{names:?}");
        let hotmail = lookup.route_of("a@hotmail.com").expect("hotmail is routed");
        assert_eq!(lookup.routes()[hotmail].provider, "microsoft");
        let gmail = lookup.route_of("b@GMAIL.com.").expect("gmail is routed");
        assert_eq!(lookup.routes()[gmail].provider, "google");
    }

    #[test]
    fn subdomains_take_a_dotted_key_and_everything_else_the_star() {
        let now = "2021-11-05T08:10:00Z".parse().unwrap();
        let pools = vec![pool("mail", "bulk", &["203.0.113.10".to_string()])];
        let mut corp = route("mail", "corp", "other", match_domains(&[]), "bulk");
        corp.spec.match_.domain_suffixes = Some(vec!["corp.example".into()]);
        let mut rest = route("mail", "rest", "other", match_domains(&[]), "bulk");
        rest.spec.match_.default = Some(true);
        let table = compile(&pools, &[corp, rest], now);
        let sender = Sender {
            namespace: "mail".into(),
            pool: "bulk".into(),
            ip: "203.0.113.10".into(),
            settings: Default::default(),
        };
        let files = render_sender(
            &table,
            &sender,
            &Default::default(),
            &PostfixOptions::default(),
        )
        .unwrap();
        let lookup = RouteLookup::from_transport_map(&files.transport);
        let name = |a: &str| lookup.route_of(a).map(|i| lookup.routes()[i].name.as_str());
        assert_eq!(name("x@corp.example"), Some("corp"));
        assert_eq!(name("x@mx.eu.corp.example"), Some("corp"));
        assert_eq!(name("x@example.org"), Some("rest"));
        assert_eq!(RouteLookup::default().route_of("x@example.org"), None);
    }

    #[test]
    fn a_listing_is_summed_per_route_with_the_oldest_arrival() {
        let lookup = lookup();
        let listing = concat!(
            r#"{"queue_name": "deferred", "queue_id": "4A1", "arrival_time": 1700000100, "message_size": 900, "forced_expire": false, "sender": "news@example.net", "recipients": [{"address": "a@hotmail.com", "delay_reason": "host said 4.7.650"}, {"address": "b@outlook.com"}, {"address": "c@gmail.com"}]}"#,
            "\n",
            r#"{"queue_name": "active", "queue_id": "4A2", "arrival_time": 1700000050, "message_size": 900, "sender": "", "recipients": [{"address": "d@hotmail.com"}]}"#,
            "\n\nnot json\n",
            r#"{"queue_name": "hold", "queue_id": "4A3", "arrival_time": 1700000000, "recipients": [{"address": "e@nowhere.invalid"}]}"#,
        );
        let tally = tally_listing(&mut listing.as_bytes(), &lookup, None).unwrap();
        assert_eq!(tally.messages, 3);
        assert_eq!(tally.held, 1);
        let held = held_in_listing(&mut listing.as_bytes(), 10, None).unwrap();
        assert_eq!(
            held,
            vec![("4A3".to_string(), vec!["e@nowhere.invalid".to_string()])]
        );
        assert_eq!(tally.unreadable, 1);
        assert_eq!(tally.oldest_arrival, Some(1_700_000_000));
        let ms = lookup.route_of("a@hotmail.com").unwrap();
        assert_eq!(
            tally.per_route[ms],
            RouteFigure {
                messages: 2,
                recipients: 3,
                oldest_arrival: Some(1_700_000_050)
            }
        );
        let google = lookup.route_of("c@gmail.com").unwrap();
        assert_eq!(tally.per_route[google].messages, 1);
        assert!(!tally.partial);
        let report = queue_report(
            &tally,
            &lookup,
            Timestamp::from_second(1_700_000_200).unwrap(),
            Some(1_209_600),
        );
        assert_eq!(report.messages, 3);
        assert!(report.complete);
        // The held message's domain takes the fleet's default route.
        assert_eq!(report.routes.len(), 3);
        assert_eq!(report.routes[0].oldest_arrival.as_second(), 1_700_000_000);
        let ms = report
            .routes
            .iter()
            .find(|r| r.provider == "microsoft")
            .unwrap();
        assert_eq!(
            (ms.messages, ms.oldest_arrival.as_second()),
            (2, 1_700_000_050)
        );
    }

    #[test]
    fn an_endless_line_is_skipped_in_bounded_memory_and_a_deadline_cuts_the_read() {
        let lookup = RouteLookup::default();
        let mut listing = vec![b'x'; MAX_LINE_BYTES * 3];
        listing.extend_from_slice(b"\n{\"arrival_time\": 5, \"recipients\": []}\n");
        let tally = tally_listing(&mut listing.as_slice(), &lookup, None).unwrap();
        assert_eq!((tally.unreadable, tally.messages), (1, 1));
        let past = Instant::now() - Duration::from_secs(1);
        let cut = tally_listing(&mut listing.as_slice(), &lookup, Some(past)).unwrap();
        assert!(cut.partial);
        assert_eq!(cut.messages, 0);
    }
}
