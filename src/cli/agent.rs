//! `mailfleet agent`: `run` is the sidecar of a sender pod, `replay` the same
//! classification over a finished delivery log (docs/AGENT.md).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::common::FleetArgs;
use super::logs::{LogArgs, LogFormat as OwnLogFormat};
use super::output::{table, Format};
use crate::agent::apply::PostfixTarget;
use crate::agent::backoff::Backoff;
use crate::agent::follow::FollowOptions;
use crate::agent::http::Endpoint;
use crate::agent::line::LogFormat;
use crate::agent::replay::{replay_file, ReplayOptions, ReplaySummary};
use crate::agent::report::PoolRef;
use crate::agent::reporter::ReporterConfig;
use crate::agent::run::{run as run_agent, AgentOptions};
use crate::reputation::classifier::Classifier;

/// The pod's ServiceAccount token, mounted by Kubernetes.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Follow the MTA's delivery log, report counts to the feedback endpoint,
    /// serve /metrics, and apply the sender configuration when it changes.
    Run(Box<RunArgs>),
    /// Classify every delivery attempt of a finished log: counts per provider,
    /// outcome and category, and the conclusive replies.
    Replay(ReplayArgs),
    /// Sum the sender's queue (`postqueue -j`) per route of its transport map:
    /// messages waiting and the oldest's age, as the sidecar reports them.
    Queue(QueueArgs),
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Read a saved `postqueue -j` listing (`-`: standard input) instead of
    /// running postqueue.
    #[arg(long, value_name = "FILE")]
    pub listing: Option<PathBuf>,

    /// The transport map the routes are read from (default: the
    /// mailfleet_transport of --postfix-config-dir).
    #[arg(long, value_name = "FILE")]
    pub transport_map: Option<PathBuf>,

    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    pub postfix_config_dir: PathBuf,

    #[arg(long, value_name = "DIR", default_value = "/usr/sbin")]
    pub postfix_bin_dir: PathBuf,

    /// Stop reading after this many seconds (the figures are then partial).
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub timeout: Duration,

    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// The log's format: Postfix's delivery log, or one JSON object per line
/// (`time`, `recipient`, `relay_host`, `status`, `reply`, `dsn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    #[default]
    Postfix,
    JsonLines,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Postfix => LogFormat::Postfix,
            LogFormatArg::JsonLines => LogFormat::JsonLines,
        }
    }
}

/// Learn declared providers (e.g. yahoo-japan) from manifests or a rules file.
#[derive(Debug, Args, Clone)]
pub struct ClassifierArgs {
    /// SenderPool and DomainRoute manifests; their DomainRoutes declare providers.
    #[arg(long = "manifests", value_name = "DIR")]
    pub manifests: Vec<PathBuf>,

    /// Your own classifier rules and providers (YAML, see docs/CLASSIFIER.md).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

impl ClassifierArgs {
    fn classifier(&self) -> Result<Classifier, Box<dyn std::error::Error>> {
        let fleet = FleetArgs {
            manifests: self.manifests.clone(),
            example: false,
            rules: self.rules.clone(),
        };
        if !self.manifests.is_empty() {
            return Ok(fleet.load()?.classifier);
        }
        Ok(match fleet.classifier_config()? {
            Some(config) => Classifier::with_config(config)?,
            None => Classifier::builtin(),
        })
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The source IP the log's mail left from.
    #[arg(long, value_name = "IP")]
    pub source_ip: IpAddr,

    /// The delivery log (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,

    /// table for a person, or json: {"source_ip", "lines", "attempts", "skipped", "totals", "conclusive"}.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,

    /// The delivery log's format.
    #[arg(long, value_enum, default_value_t)]
    pub maillog_format: LogFormatArg,

    /// Year of syslog timestamps (`Nov  5 08:10:01`), read as UTC; without it
    /// they are printed as logged.
    #[arg(long)]
    pub year: Option<i16>,

    /// Parts of the file read in parallel (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    #[command(flatten)]
    pub classifier: ClassifierArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ApplyTo {
    /// Write the files into the Postfix config folder, postmap, reload, flush the queue.
    #[default]
    Postfix,
    /// Only report the configuration version (the MTA reads the folder itself).
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum StartAt {
    /// Read the existing log from its first line.
    #[default]
    Beginning,
    /// Skip what the log already holds (first start only; a saved position always wins).
    End,
}

/// An agent argument that does not read as what it names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentArgError {
    #[error("`{text}` is not a number of seconds such as 5 or 0.5")]
    NotSeconds { text: String },
    #[error("`{text}` must be more than 0 and at most 86400 seconds")]
    SecondsOutOfRange { text: String },
    #[error("`{text}` is not NAMESPACE/NAME of a SenderPool, such as mail/bulk")]
    NotPoolRef { text: String },
    #[error("{flag} is for an https:// --endpoint; this one is http://")]
    CaForPlainHttp { flag: &'static str },
    #[error("--ca-env {name}: the environment variable is not set")]
    CaEnvUnset { name: String },
}

fn parse_seconds(text: &str) -> Result<Duration, AgentArgError> {
    let value: f64 = text.parse().map_err(|_| AgentArgError::NotSeconds {
        text: text.to_string(),
    })?;
    if !(value > 0.0 && value <= 86_400.0) {
        return Err(AgentArgError::SecondsOutOfRange {
            text: text.to_string(),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

fn parse_pool(text: &str) -> Result<PoolRef, AgentArgError> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(PoolRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(AgentArgError::NotPoolRef {
            text: text.to_string(),
        }),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The source IP this pod sends from.
    #[arg(long, value_name = "IP")]
    pub source_ip: IpAddr,

    /// The SenderPool of that IP, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pool)]
    pub pool: PoolRef,

    /// The name reports carry (in a pod, HOSTNAME is the pod's name)
    /// [default: mailfleet-agent].
    #[arg(long, value_name = "NAME", env = "HOSTNAME")]
    pub agent_name: Option<String>,

    /// The MTA's delivery log (Postfix: its maillog_file).
    #[arg(long, value_name = "FILE", default_value = "/var/log/postfix/maillog")]
    pub log: PathBuf,

    /// The delivery log's format.
    #[arg(long, value_enum, default_value_t)]
    pub maillog_format: LogFormatArg,

    /// Where the position, the unacknowledged reports and the applied config
    /// version are kept (a volume that survives container restarts).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/mailfleet-agent/state.json"
    )]
    pub state_file: PathBuf,

    /// The feedback endpoint, e.g. http://mailfleet-operator.mailfleet-system.svc:8080/v1/feedback,
    /// or https://... (TLS; the public and system roots unless --ca-file).
    #[arg(long, value_name = "URL", value_parser = |s: &str| s.parse::<Endpoint>())]
    pub endpoint: Endpoint,

    /// With an https:// --endpoint: trust only the PEM certificates of this file
    /// (the endpoint's own certificate, or the CA that signed it).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Like --ca-file, with the PEM certificates in this environment
    /// variable: the operator hands its CA to sender pods this way (a pod
    /// cannot mount a Secret of the operator's namespace).
    #[arg(long, value_name = "NAME", conflicts_with = "ca_file")]
    pub ca_env: Option<String>,

    /// Bearer token file, read before every report.
    #[arg(long, value_name = "FILE", default_value = SERVICE_ACCOUNT_TOKEN)]
    pub token_file: PathBuf,

    /// Send reports without a token (an endpoint that does not check).
    #[arg(long)]
    pub no_token: bool,

    /// Seconds between reports.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub interval: Duration,

    /// Deadline of one report request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Reports kept while the endpoint is unreachable; beyond, new counts are
    /// merged into the newest waiting report.
    #[arg(long, value_name = "N", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_buffered_reports: u32,

    /// Address of /metrics and /healthz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9465")]
    pub listen: SocketAddr,

    /// Serve no /metrics.
    #[arg(long)]
    pub no_metrics: bool,

    /// The mounted ConfigMap with the rendered sender configuration.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// What to do with a new configuration.
    #[arg(long, value_enum, default_value_t)]
    pub apply: ApplyTo,

    /// Postfix's configuration folder (`postfix -c`).
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    pub postfix_config_dir: PathBuf,

    /// The folder of postfix, postmap and postqueue.
    #[arg(long, value_name = "DIR", default_value = "/usr/sbin")]
    pub postfix_bin_dir: PathBuf,

    #[arg(long, value_enum, default_value_t)]
    pub start_at: StartAt,

    /// Seconds a rotated log must stay unchanged before it is closed.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub drain_grace: Duration,

    /// Seconds between reads of the log.
    #[arg(long, value_name = "SECONDS", default_value = "0.25", value_parser = parse_seconds)]
    pub poll: Duration,

    /// Seconds between reads of the config folder.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_seconds)]
    pub config_poll: Duration,

    /// On SIGTERM, seconds left to deliver the last reports.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_timeout: Duration,

    /// Seconds of one pacing window: each direct transport sends its share of
    /// the route's hourly cap per window, held with defer_transports once spent.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub pace_window: Duration,

    /// Do not pace deliveries (Postfix's whole-second rate delays only).
    #[arg(long)]
    pub no_pace: bool,

    /// Seconds between reads of the queue (`postqueue -j`): messages waiting
    /// per route and the oldest's age go into the reports and the metrics.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub queue_interval: Duration,

    /// Do not read the queue.
    #[arg(long)]
    pub no_queue: bool,

    /// Check that the address the configuration binds to
    /// (`spec.ipBinding.mode: Bind`) is on an interface of this network
    /// namespace, after each configuration and every minute, and report it
    /// (the IP's `IpBound` condition). For an agent beside its MTA in the same
    /// pod or host; `sender run` always checks.
    #[arg(long)]
    pub check_bind: bool,

    /// A Maildir folder (with `new/` and `cur/`) that a feedback loop's abuse
    /// reports (ARF, RFC 5965: Yahoo CFL, Microsoft JMRP ...) are delivered
    /// to. Reports about this IP are counted per provider into the next
    /// report and then moved to `cur/`; the others stay (docs/AGENT.md,
    /// "Complaints").
    #[arg(long, value_name = "DIR")]
    pub complaints_dir: Option<PathBuf>,

    #[command(flatten)]
    pub classifier: ClassifierArgs,

    #[command(flatten)]
    pub logs: LogArgs,
}

pub fn run(args: AgentArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match args.command {
        AgentCommand::Replay(args) => replay(args),
        AgentCommand::Run(args) => run_sidecar(*args),
        AgentCommand::Queue(args) => queue(args),
    }
}

fn queue(args: QueueArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use crate::agent::queue::{queue_report, read_postfix_queue, tally_listing, RouteLookup};
    let map_path = args.transport_map.clone().unwrap_or_else(|| {
        args.postfix_config_dir
            .join(crate::routing::postfix::TRANSPORT_FILE)
    });
    let map = std::fs::read_to_string(&map_path).map_err(|e| {
        format!(
            "cannot read the transport map {}: {e}; name it with --transport-map",
            map_path.display()
        )
    })?;
    let lookup = RouteLookup::from_transport_map(&map);
    let deadline = std::time::Instant::now() + args.timeout;
    let tally = match &args.listing {
        Some(path) if path.as_os_str() == "-" => {
            tally_listing(&mut std::io::stdin().lock(), &lookup, Some(deadline))?
        }
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| format!("cannot read the listing {}: {e}", path.display()))?;
            tally_listing(
                &mut std::io::BufReader::with_capacity(64 * 1024, file),
                &lookup,
                Some(deadline),
            )?
        }
        None => read_postfix_queue(
            &PostfixTarget {
                config_dir: args.postfix_config_dir.clone(),
                bin_dir: args.postfix_bin_dir.clone(),
                relay_secrets_dir: None,
            },
            &lookup,
            args.timeout,
        )?,
    };
    let now = jiff::Timestamp::now();
    let report = queue_report(&tally, &lookup, now, None);
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            serde_json::to_writer(&mut out, &report)?;
            out.write_all(b"\n")?;
        }
        Format::Table => {
            let age = |t: jiff::Timestamp| format!("{}s", now.as_second() - t.as_second());
            let mut rows: Vec<Vec<String>> = report
                .routes
                .iter()
                .map(|r| {
                    vec![
                        format!("{}/{}", r.namespace, r.route),
                        r.provider.clone(),
                        r.messages.to_string(),
                        age(r.oldest_arrival),
                    ]
                })
                .collect();
            if tally.unrouted.messages > 0 {
                rows.push(vec![
                    "(no route)".into(),
                    "-".into(),
                    tally.unrouted.messages.to_string(),
                    tally
                        .unrouted
                        .oldest_arrival
                        .map_or("-".into(), |s| format!("{}s", now.as_second() - s)),
                ]);
            }
            out.write_all(table(&["ROUTE", "PROVIDER", "MESSAGES", "OLDEST"], &rows).as_bytes())?;
            writeln!(
                out,
                "{} message(s) queued, {} on hold, {} unreadable line(s){}",
                tally.messages,
                tally.held,
                tally.unreadable,
                if tally.partial {
                    "; stopped at the deadline: partial"
                } else {
                    ""
                }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(args: ReplayArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let classifier = args.classifier.classifier()?;
    let options = ReplayOptions {
        format: args.maillog_format.into(),
        year: args.year,
        threads: args.threads,
    };
    let summary = if args.log.as_os_str() == "-" {
        let bytes = super::common::read_input_bytes(&args.log, "--log")?;
        crate::agent::replay::replay_bytes(&classifier, args.source_ip, &bytes, &options)
    } else {
        replay_file(&classifier, args.source_ip, &args.log, &options)?
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            serde_json::to_writer(&mut out, &summary)?;
            out.write_all(b"\n")?;
        }
        Format::Table => out.write_all(format_replay(&summary).as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Conclusive replies listed in the table; JSON lists them all.
const TABLE_CONCLUSIVE: usize = 20;

fn format_replay(s: &ReplaySummary) -> String {
    let reasons: Vec<String> = s
        .skipped_by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let mut out = format!(
        "source IP {}: {} lines, {} delivery attempts, {} skipped{}\n\n",
        s.source_ip,
        s.lines,
        s.attempts,
        s.skipped,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    );
    let rows: Vec<Vec<String>> = s
        .totals
        .iter()
        .map(|t| {
            vec![
                t.provider.clone(),
                t.outcome.to_string(),
                t.category.to_string(),
                t.count.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["PROVIDER", "OUTCOME", "CATEGORY", "COUNT"], &rows));
    if !s.conclusive.is_empty() {
        out.push_str(&format!("\nconclusive replies ({}):\n", s.conclusive.len()));
        let rows: Vec<Vec<String>> = s
            .conclusive
            .iter()
            .take(TABLE_CONCLUSIVE)
            .map(|c| vec![c.at.clone(), c.provider.clone(), c.reply.clone()])
            .collect();
        out.push_str(&table(&["AT", "PROVIDER", "REPLY"], &rows));
        if s.conclusive.len() > TABLE_CONCLUSIVE {
            out.push_str(&format!(
                "... and {} more (--format json lists them all)\n",
                s.conclusive.len() - TABLE_CONCLUSIVE
            ));
        }
    }
    out
}

fn run_sidecar(args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    args.logs.init(OwnLogFormat::Text)?;
    let (options, classifier) = agent_options(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop))?;
    run_agent(options, classifier, stop)?;
    Ok(ExitCode::SUCCESS)
}

/// The agent's options and classifier from its arguments (shared with `sender run`).
pub(super) fn agent_options(
    args: RunArgs,
) -> Result<(AgentOptions, Classifier), Box<dyn std::error::Error>> {
    let classifier = args.classifier.classifier()?;
    let agent_name = args
        .agent_name
        .clone()
        .unwrap_or_else(|| "mailfleet-agent".to_string());
    let options = AgentOptions {
        log: args.log,
        format: args.maillog_format.into(),
        state_file: args.state_file,
        endpoint: match (&args.ca_file, &args.ca_env) {
            (None, None) => args.endpoint,
            (file, _) if !args.endpoint.is_https() => {
                let flag = if file.is_some() {
                    "--ca-file"
                } else {
                    "--ca-env"
                };
                return Err(AgentArgError::CaForPlainHttp { flag }.into());
            }
            (Some(file), _) => args
                .endpoint
                .trusting(crate::agent::http::TlsTrust::from_pem_file(file)?)?,
            (None, Some(name)) => {
                let what = format!("--ca-env {name}");
                let pem = std::env::var(name)
                    .map_err(|_| AgentArgError::CaEnvUnset { name: name.clone() })?;
                args.endpoint
                    .trusting(crate::agent::http::TlsTrust::from_pem(
                        pem.as_bytes(),
                        &what,
                        format!("${name}"),
                    )?)?
            }
        },
        token_file: (!args.no_token).then_some(args.token_file),
        reporter: ReporterConfig {
            agent_name,
            source_ip: args.source_ip,
            pool: args.pool,
            max_buffered_reports: args.max_buffered_reports as usize,
        },
        interval: args.interval,
        timeout: args.timeout,
        backoff: Backoff::default(),
        poll: args.poll,
        follow: FollowOptions {
            drain_grace: args.drain_grace,
            start_at_end: args.start_at == StartAt::End,
            ..FollowOptions::default()
        },
        listen: (!args.no_metrics).then_some(args.listen),
        config_dir: args.config_dir,
        config_poll: args.config_poll,
        postfix: (args.apply == ApplyTo::Postfix).then_some(PostfixTarget {
            config_dir: args.postfix_config_dir,
            bin_dir: args.postfix_bin_dir,
            relay_secrets_dir: None,
        }),
        zone: jiff::tz::TimeZone::system(),
        shutdown_timeout: args.shutdown_timeout,
        pace_window: (!args.no_pace).then_some(args.pace_window),
        queue_interval: (!args.no_queue).then_some(args.queue_interval),
        hold_config: Arc::new(AtomicBool::new(false)),
        drained: Arc::default(),
        bind_check: args.check_bind.then_some(crate::sender::bind::CHECK_EVERY),
        complaints_dir: args.complaints_dir.clone(),
    };
    Ok((options, classifier))
}

/// SIGTERM (pod deletion) and SIGINT ask the agent to stop cleanly.
pub(super) fn watch_signals(stop: Arc<AtomicBool>) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("agent-signals".into())
        .spawn(move || {
            runtime.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    tracing::warn!("cannot watch SIGTERM; the agent stops without a final report");
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("stopping: reading what is left and sending the last reports");
                stop.store(true, Ordering::SeqCst);
            });
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: AgentCommand,
    }

    #[test]
    fn arguments_are_checked_with_the_fix_in_the_message() {
        let err = Cli::try_parse_from([
            "agent",
            "run",
            "--source-ip",
            "203.0.113.10",
            "--pool",
            "bulk",
            "--log",
            "x",
            "--endpoint",
            "http://op/v1/feedback",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("NAMESPACE/NAME"), "{err}");
        let err = Cli::try_parse_from([
            "agent",
            "run",
            "--source-ip",
            "203.0.113.10",
            "--pool",
            "mail/bulk",
            "--log",
            "x",
            "--endpoint",
            "http://op/v1/feedback",
            "--ca-file",
            "/nonexistent/ca.pem",
        ])
        .map(|cli| match cli.command {
            AgentCommand::Run(run) => agent_options(*run).map(|_| ()).unwrap_err().to_string(),
            AgentCommand::Replay(_) | AgentCommand::Queue(_) => unreachable!(),
        })
        .unwrap();
        assert!(err.contains("--ca-file is for an https://"), "{err}");
        let ok = Cli::try_parse_from([
            "agent",
            "run",
            "--source-ip",
            "203.0.113.10",
            "--pool",
            "mail/bulk",
            "--log",
            "x",
            "--endpoint",
            "http://op:8080/v1/feedback",
            "--interval",
            "0.5",
        ])
        .unwrap();
        let AgentCommand::Run(run) = ok.command else {
            panic!("run")
        };
        assert_eq!(run.interval, Duration::from_millis(500));
        assert_eq!(run.token_file, PathBuf::from(SERVICE_ACCOUNT_TOKEN));
        assert!(parse_seconds("0").is_err() && parse_seconds("x").is_err());
    }

    #[test]
    fn the_table_names_skips_and_lists_conclusive_replies() {
        let log = "Nov  5 08:10:01 mx1 postfix/smtp[7]: 4HmB2x0Z7Qz9vD: to=<taro@hotmail.co.jp>, relay=hotmail-com.olc.protection.outlook.com[104.47.22.161]:25, delay=0.5, delays=0/0/0.3/0.2, dsn=5.7.606, status=bounced (host hotmail-com.olc.protection.outlook.com[104.47.22.161] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]. (in reply to MAIL FROM command))\ngarbage\n";
        let s = crate::agent::replay::replay_bytes(
            &Classifier::builtin(),
            "203.0.113.10".parse().unwrap(),
            log.as_bytes(),
            &ReplayOptions::default(),
        );
        let text = format_replay(&s);
        assert!(text.starts_with("source IP 203.0.113.10: 2 lines, 1 delivery attempts, 1 skipped (not_delivery 1)\n"), "{text}");
        assert!(
            text.contains("microsoft  bounced  ip_blocklisted  1"),
            "{text}"
        );
        assert!(text.contains("conclusive replies (1):\nAT               PROVIDER   REPLY\nNov  5 08:10:01  microsoft  host hotmail-com"), "{text}");
    }
}
