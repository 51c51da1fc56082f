//! `mailfleet routes`: the effective routes that a set of manifests (and their
//! status) produce, without a cluster. A GitOps user runs it in a pull request to
//! see what a change does; `--replay-log` shows what a delivery log would do.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use jiff::Timestamp;

use super::common::{parse_time, read_input_bytes, FleetArgs};
use super::output::table;
use crate::fleet::{Fleet, FleetError};
use crate::manifests::ManifestError;
use crate::operator::build::validate::{validate_fleet, FleetValidation, ObjectProblem};
use crate::reputation::engine::{Signal, Transition};
use crate::reputation::postfix_log::{classify_attempt, parse_line};
use crate::reputation::tally::Tally;
use crate::routing::model::mode_name;
use crate::routing::postfix::{render_fleet, render_sender, PostfixOptions, Sender};
use crate::routing::{json, RouteTable};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RoutesFormat {
    #[default]
    Table,
    Json,
    Postfix,
}

#[derive(Debug, Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,

    /// table for a person, json (docs/ROUTE-TABLE.md), or postfix (the sender configuration).
    #[arg(long, value_enum, default_value_t)]
    pub format: RoutesFormat,

    /// Judge the fleet as of this time (RFC 3339). Default: the newest time in the
    /// status read, or the end of the replayed log, or now.
    #[arg(long, value_parser = parse_time)]
    pub at: Option<Timestamp>,

    /// A Postfix delivery log of one sender to replay through the reputation engine
    /// before compiling (ISO timestamps as written by `maillog_file`, or syslog ones
    /// with --year; `-`: standard input).
    #[arg(long, value_name = "FILE", requires = "source_ip")]
    pub replay_log: Option<PathBuf>,

    /// The source IP the replayed log was sent from.
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<IpAddr>,

    /// The year of syslog timestamps (they carry none).
    #[arg(long)]
    pub year: Option<i16>,

    /// With --format postfix: render only the files of the sender with this IP.
    #[arg(long, value_name = "IP")]
    pub sender: Option<IpAddr>,
}

pub fn run(args: RoutesArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut fleet = match args.fleet.load() {
        Ok(fleet) => fleet,
        // A manifest the API server or the operator would refuse is a finding
        // of the gate (exit 1), like a route problem; 2 stays for "cannot run".
        Err(e) if e.is::<ManifestError>() || e.is::<FleetError>() => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    };
    let mut timeline = Vec::new();
    let mut now = args.at.or(fleet.snapshot_time());
    if let (Some(log), Some(ip)) = (&args.replay_log, args.source_ip) {
        let (events, end) = replay(&mut fleet, log, ip, args.year)?;
        timeline = events;
        now = args.at.or(Some(end));
    }
    let now = now.unwrap_or_else(Timestamp::now);
    timeline.extend(fleet.advance(now)?);
    let table = fleet.compile(now);

    let mut out = std::io::stdout().lock();
    // A pair's first entry (no previous state) is bookkeeping, not news.
    timeline.retain(|t| t.from.is_some());
    timeline.sort_by_key(|t| t.at);
    let shown_now = now.round(jiff::Unit::Second).unwrap_or(now);
    if !timeline.is_empty() {
        let text = format!(
            "Reputation changes up to {shown_now}:\n{}",
            format_timeline(&timeline)
        );
        // Machine formats keep stdout for the document alone.
        match args.format {
            RoutesFormat::Table => writeln!(out, "{text}")?,
            _ => eprintln!("{text}"),
        }
    }
    match args.format {
        RoutesFormat::Json => out.write_all(json::render(&table).as_bytes())?,
        RoutesFormat::Table => out.write_all(format_table(&table, shown_now).as_bytes())?,
        RoutesFormat::Postfix => {
            let known = fleet.known_domains();
            let options = PostfixOptions::default();
            match args.sender {
                None => {
                    out.write_all(render_fleet(&table, &fleet.pools, &known, &options)?.as_bytes())?
                }
                Some(ip) => {
                    let sender = sender_of(&fleet, ip)?;
                    let files = render_sender(&table, &sender, &known, &options)?;
                    for (name, body) in [
                        ("main.cf", &files.main_cf),
                        ("master.cf", &files.master_cf),
                        (crate::routing::postfix::TRANSPORT_FILE, &files.transport),
                        (
                            crate::routing::postfix::STATUS_FILTER_FILE,
                            &files.status_filter,
                        ),
                    ] {
                        writeln!(out, "# ==> {name} <==")?;
                        out.write_all(body.as_bytes())?;
                    }
                }
            }
        }
    }
    // What the operator would refuse (each object's Accepted condition): an IP
    // two pools claim, a template without a container, a name that cannot be a label.
    let refused = refusals(&validate_fleet(&fleet.pools, &fleet.routes));
    if !refused.is_empty() {
        let text = format!(
            "\nRefused by the operator (Accepted=False on a cluster):\n{}",
            refused.join("\n")
        );
        match args.format {
            RoutesFormat::Table => writeln!(out, "{text}")?,
            _ => eprintln!("{text}"),
        }
    }
    let route_problems = table.routes.iter().map(|r| r.problems.len()).sum::<usize>();
    let problems = table.problems.len() + route_problems + refused.len();
    if problems > 0 {
        eprintln!("mailfleet routes: {problems} problem(s) found; exit status 1");
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line per problem of [`validate_fleet`], pools first, as
/// `Kind namespace/name field: message`.
fn refusals(validation: &FleetValidation) -> Vec<String> {
    let lines = |kind: &str, map: &std::collections::BTreeMap<_, Vec<ObjectProblem>>| {
        map.iter()
            .flat_map(
                |(key, problems): (&crate::routing::ObjectKey, &Vec<ObjectProblem>)| {
                    problems.iter().map(move |p| {
                        format!(
                            "  {kind} {}/{} {}: {} ({})",
                            key.namespace, key.name, p.field, p.message, p.reason
                        )
                    })
                },
            )
            .collect::<Vec<_>>()
    };
    let mut out = lines("SenderPool", &validation.pool_problems);
    out.extend(lines("DomainRoute", &validation.route_problems));
    out
}

/// A `--sender` IP that no pool of the fleet sends from.
#[derive(Debug, thiserror::Error)]
#[error("--sender {ip}: no SenderPool lists this IP in spec.ips")]
struct UnknownSender {
    ip: IpAddr,
}

fn sender_of(fleet: &Fleet, ip: IpAddr) -> Result<Sender, UnknownSender> {
    for pool in &fleet.pools {
        if let Some(own) = pool
            .spec
            .ips
            .iter()
            .find(|i| i.address.parse().ok() == Some(ip))
        {
            return Ok(Sender {
                namespace: pool
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                pool: pool.metadata.name.clone().unwrap_or_default(),
                ip: own.address.clone(),
                settings: crate::routing::sender_settings::SenderSettings::of(pool, &own.address),
            });
        }
    }
    Err(UnknownSender { ip })
}

/// Feeds every delivery line of `log` to the engine at the line's own time.
/// Returns the transitions and the time of the last line.
fn replay(
    fleet: &mut Fleet,
    log: &Path,
    ip: IpAddr,
    year: Option<i16>,
) -> Result<(Vec<Transition>, Timestamp), Box<dyn std::error::Error>> {
    let bytes = read_input_bytes(log, "--replay-log")?;
    let ip_text = ip.to_string();
    let mut transitions = Vec::new();
    let mut last = None;
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(raw) else {
            continue;
        };
        let Ok(attempt) = parse_line(line) else {
            continue;
        };
        let at = line_time(attempt.timestamp.unwrap_or(""), year)
            .map_err(|e| format!("{}:{}: {e}", log.display(), index + 1))?;
        let verdict = classify_attempt(&fleet.classifier, &attempt);
        let mut tally = Tally::default();
        tally.add(&verdict, attempt.text, at);
        if let (Some(domain), Some(mx)) = (attempt.recipient_domain, attempt.relay_host) {
            fleet.learn_domain(domain, mx, at);
        }
        transitions.extend(fleet.advance(at)?);
        for feedback in tally.drain() {
            transitions.extend(fleet.observe(&ip_text, Signal::Feedback(feedback), at)?);
        }
        last = Some(at);
    }
    let end = last.ok_or_else(|| {
        format!(
            "--replay-log {}: no Postfix delivery line found",
            log.display()
        )
    })?;
    Ok((transitions, end))
}

/// The time of a log line: RFC 3339 (Postfix `maillog_file`), or the syslog
/// form `Nov  5 08:10:01` read as UTC in `year`.
/// A replayed log line whose time cannot be read.
#[derive(Debug, thiserror::Error)]
enum LineTimeError {
    #[error("timestamp `{text}` has no year; pass --year, or log with Postfix's maillog_file (ISO timestamps)")]
    NoYear { text: String },
    #[error("timestamp `{text}` is neither RFC 3339 nor syslog `Mon DD HH:MM:SS`")]
    Unreadable { text: String },
}

fn line_time(text: &str, year: Option<i16>) -> Result<Timestamp, LineTimeError> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let Some(year) = year else {
        return Err(LineTimeError::NoYear {
            text: text.to_string(),
        });
    };
    let with_year = format!(
        "{year} {}",
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    jiff::civil::DateTime::strptime("%Y %b %d %H:%M:%S", &with_year)
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| LineTimeError::Unreadable {
            text: text.to_string(),
        })
}

pub fn format_timeline(transitions: &[Transition]) -> String {
    let rows: Vec<Vec<String>> = transitions
        .iter()
        .map(|t| {
            vec![
                t.at.to_string(),
                t.ip.clone(),
                t.provider.clone(),
                format!(
                    "{} -> {}",
                    t.from.map_or("-".to_string(), |f| f.to_string()),
                    t.to
                ),
                t.reason.to_string(),
                format!("{}%", t.allowance_percent),
            ]
        })
        .collect();
    table(
        &["TIME", "IP", "PROVIDER", "STATE", "REASON", "ALLOWANCE"],
        &rows,
    )
}

fn format_table(table_: &RouteTable, now: Timestamp) -> String {
    let mut out = format!("Routes as of {now}\n");
    for route in &table_.routes {
        out.push('\n');
        out.push_str(&format!(
            "{}/{}  provider={}  pool={}  mode={}{}\n",
            route.key.namespace,
            route.key.name,
            route.provider,
            route.pool,
            mode_name(route.mode),
            route
                .serving_pool
                .as_ref()
                .filter(|p| **p != route.pool)
                .map_or(String::new(), |p| format!(" (via {p})")),
        ));
        if let Some(relay) = &route.relay {
            out.push_str(&format!("  relay {}\n", relay.address()));
        }
        let rows: Vec<Vec<String>> = route
            .targets
            .iter()
            .map(|t| {
                vec![
                    format!("  {}", t.ip),
                    t.pool.clone(),
                    t.state.to_string(),
                    t.weight.to_string(),
                    t.hourly_cap.map_or("-".into(), |c| c.to_string()),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push_str(&table(
                &["  TARGET", "POOL", "STATE", "WEIGHT", "CAP/H"],
                &rows,
            ));
        }
        for e in &route.excluded {
            out.push_str(&format!(
                "  excluded {} ({}) {}: {}\n",
                e.ip, e.pool, e.state, e.reason
            ));
        }
        for p in &route.problems {
            out.push_str(&format!("  problem {p}\n"));
        }
    }
    for p in &table_.problems {
        out.push_str(&format!("\nproblem {p}\n"));
    }
    out
}
