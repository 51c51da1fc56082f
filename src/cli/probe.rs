//! `mailfleet probe`: one round of reputation probes, by hand.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{table, Format};
use crate::probe::dnsbl::{
    parse_nameserver, DnsblProbe, Nameserver, NameserverSyntaxError, ProbeOutcome, Resolver,
    ZoneRules,
};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub command: ProbeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProbeCommand {
    /// Ask DNS block lists about IPs through one resolver (one round, no cache).
    Dnsbl(DnsblArgs),
}

#[derive(Debug, Args)]
pub struct DnsblArgs {
    /// The resolver to ask, as HOST or HOST:PORT (port 53 when left out): your own
    /// recursive resolver, or a list's server directly. The system resolver
    /// configuration is not read.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub nameserver: String,

    /// A zone to ask (repeat for several). zen.spamhaus.org uses the Spamhaus
    /// ZEN listing codes; other zones list on any 127.0.0.0/8 answer.
    /// 127.255.255.252/254/255 are errors everywhere.
    #[arg(long = "zone", value_name = "ZONE", required = true)]
    pub zones: Vec<String>,

    /// IPv4 or IPv6 addresses to check.
    #[arg(value_name = "IP", required = true)]
    pub ips: Vec<String>,

    #[arg(long, value_enum, default_value_t)]
    pub format: Format,

    /// Questions in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,

    /// How long to wait for each answer, in milliseconds.
    #[arg(long = "timeout-ms", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,

    /// Attempts per question before it is a timeout.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub attempts: u32,
}

pub fn run(args: ProbeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match args.command {
        ProbeCommand::Dnsbl(args) => run_dnsbl(args),
    }
}

fn run_dnsbl(args: DnsblArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let nameserver = resolve_nameserver(&args.nameserver)?;
    let ips = parse_ips(&args.ips)?;
    let zones = args
        .zones
        .iter()
        .map(|z| ZoneRules::with_defaults(z))
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = Resolver::new(
        nameserver,
        Duration::from_millis(args.timeout_ms),
        args.attempts,
    );
    let probe = DnsblProbe::new(resolver, usize::from(args.concurrency));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let started = Instant::now();
    let outcomes = runtime.block_on(probe.round(&ips, &zones, &jiff::Timestamp::now));
    let elapsed = started.elapsed();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json_report(&outcomes))?),
        Format::Table => {
            print!("{}", table_report(&outcomes));
            println!("{}", summary(&outcomes, elapsed));
        }
    }
    Ok(exit_code(&outcomes))
}

/// 0 when every question got an answer (listings included: finding them is the
/// job), 1 when any zone could not be asked, so a script never reads a dead
/// resolver as a clean bill.
fn exit_code(outcomes: &[ProbeOutcome]) -> ExitCode {
    let failed: std::collections::BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| o.result.error.is_some())
        .map(|o| o.result.zone.as_str())
        .collect();
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "mailfleet probe dnsbl: no answer from {} for some IPs (see the errors above); exit status 1",
        failed.into_iter().collect::<Vec<_>>().join(", ")
    );
    ExitCode::from(1)
}

/// `HOST[:PORT]` with an IP, or a host name looked up once (for example
/// `localhost:5353`); without a port, DNS's port 53.
fn resolve_nameserver(text: &str) -> Result<SocketAddr, ProbeArgError> {
    let trimmed = text.trim();
    let with_port = match trimmed.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:53"),
        Ok(IpAddr::V4(v4)) => format!("{v4}:53"),
        Err(_) if !trimmed.contains(':') => format!("{trimmed}:53"),
        Err(_) => trimmed.to_string(),
    };
    let nameserver = parse_nameserver(&with_port).map_err(|problem| ProbeArgError::Nameserver {
        text: text.to_string(),
        problem,
    })?;
    match nameserver {
        Nameserver::Addr(address) if address.port() == 0 => Err(ProbeArgError::PortZero {
            text: text.to_string(),
        }),
        Nameserver::Addr(address) => Ok(address),
        Nameserver::Host { host, port } => (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|source| ProbeArgError::Lookup {
                text: text.to_string(),
                host: host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ProbeArgError::NoAddress {
                text: text.to_string(),
                host,
            }),
    }
}

fn parse_ips(texts: &[String]) -> Result<Vec<IpAddr>, ProbeArgError> {
    texts
        .iter()
        .map(|text| {
            text.trim()
                .parse::<IpAddr>()
                .map_err(|_| ProbeArgError::NotIp { text: text.clone() })
        })
        .collect()
}

/// An argument of `mailfleet probe dnsbl` that names no resolver or IP.
#[derive(Debug, thiserror::Error)]
enum ProbeArgError {
    #[error("--nameserver `{text}`: {problem}")]
    Nameserver {
        text: String,
        problem: NameserverSyntaxError,
    },
    #[error("--nameserver `{text}`: port 0 reaches no resolver; leave the port out for DNS's 53")]
    PortZero { text: String },
    #[error("--nameserver `{text}`: cannot look up {host}: {source}")]
    Lookup {
        text: String,
        host: String,
        source: std::io::Error,
    },
    #[error("--nameserver `{text}`: {host} has no address")]
    NoAddress { text: String, host: String },
    #[error("IP argument `{text}` is not an IPv4 or IPv6 address (such as 203.0.113.10 or 2001:db8::10)")]
    NotIp { text: String },
}

/// One result of `--format json`; the field names are a contract (docs/PROBES.md).
#[derive(Debug, Serialize, PartialEq)]
struct JsonResult<'a> {
    ip: String,
    zone: &'a str,
    listed: bool,
    codes: &'a [String],
    reason: Option<&'a str>,
    error: Option<&'a str>,
}

#[derive(Debug, Serialize, PartialEq)]
struct JsonReport<'a> {
    results: Vec<JsonResult<'a>>,
}

fn json_report(outcomes: &[ProbeOutcome]) -> JsonReport<'_> {
    JsonReport {
        results: outcomes
            .iter()
            .map(|o| JsonResult {
                ip: o.ip.to_string(),
                zone: &o.result.zone,
                listed: o.result.listed,
                codes: &o.result.codes,
                reason: o.result.reason.as_deref(),
                error: o.result.error.as_deref(),
            })
            .collect(),
    }
}

fn table_report(outcomes: &[ProbeOutcome]) -> String {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let r = &o.result;
            let (result, detail) = match (&r.error, r.listed) {
                (Some(error), _) => ("ERROR", error.clone()),
                (None, true) => ("LISTED", r.reason.clone().unwrap_or_default()),
                (None, false) => ("clean", String::new()),
            };
            vec![
                o.ip.to_string(),
                r.zone.clone(),
                result.to_string(),
                r.codes.join(","),
                detail,
            ]
        })
        .collect();
    table(&["IP", "ZONE", "RESULT", "CODES", "REASON / ERROR"], &rows)
}

fn summary(outcomes: &[ProbeOutcome], elapsed: Duration) -> String {
    let listed = outcomes.iter().filter(|o| o.result.listed).count();
    let errors = outcomes.iter().filter(|o| o.result.error.is_some()).count();
    format!(
        "{} questions in {} ms: {listed} listed, {} clean, {errors} errors (errors are never listings)",
        outcomes.len(),
        elapsed.as_millis(),
        outcomes.len() - listed - errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DnsblResult;

    use clap::Parser;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_nameserver_without_a_port_means_port_53() {
        for (given, meant) in [
            ("127.0.0.1", "127.0.0.1:53"),
            ("::1", "[::1]:53"),
            ("127.0.0.1:5353", "127.0.0.1:5353"),
        ] {
            assert_eq!(resolve_nameserver(given).unwrap().to_string(), meant);
        }
        assert_eq!(resolve_nameserver("localhost").unwrap().port(), 53);
        assert!(resolve_nameserver("127.0.0.1:0").is_err());
    }

    #[test]
    fn a_round_where_any_zone_could_not_be_asked_is_a_failure() {
        let failed = outcome(false, &[], None, Some("timeout"));
        let clean = outcome(false, &[], None, None);
        let listed = outcome(true, &["127.0.0.2"], Some("listed"), None);
        assert_eq!(
            exit_code(&[failed.clone(), failed.clone()]),
            ExitCode::from(1)
        );
        assert_eq!(exit_code(&[failed, clean.clone()]), ExitCode::from(1));
        assert_eq!(exit_code(&[clean, listed]), ExitCode::SUCCESS);
        assert_eq!(exit_code(&[]), ExitCode::SUCCESS);
    }

    fn outcome(
        listed: bool,
        codes: &[&str],
        reason: Option<&str>,
        error: Option<&str>,
    ) -> ProbeOutcome {
        ProbeOutcome {
            ip: "192.0.2.2".parse().unwrap(),
            result: DnsblResult {
                zone: "zen.test".into(),
                listed,
                codes: codes.iter().map(|c| c.to_string()).collect(),
                reason: reason.map(String::from),
                error: error.map(String::from),
                checked_at: Time(jiff::Timestamp::UNIX_EPOCH),
            },
            error: None,
            cached: false,
        }
    }

    #[test]
    fn the_json_shape_is_the_documented_one() {
        let outcomes = [
            outcome(true, &["127.0.0.2"], Some("SBL"), None),
            outcome(false, &[], None, None),
            outcome(
                false,
                &["127.255.255.254"],
                None,
                Some("error answer 127.255.255.254: open resolver"),
            ),
        ];
        let json = serde_json::to_value(json_report(&outcomes)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"results": [
                {"ip": "192.0.2.2", "zone": "zen.test", "listed": true, "codes": ["127.0.0.2"], "reason": "SBL", "error": null},
                {"ip": "192.0.2.2", "zone": "zen.test", "listed": false, "codes": [], "reason": null, "error": null},
                {"ip": "192.0.2.2", "zone": "zen.test", "listed": false, "codes": ["127.255.255.254"], "reason": null,
                 "error": "error answer 127.255.255.254: open resolver"},
            ]})
        );
        let text = table_report(&outcomes);
        assert!(text.starts_with("IP"));
        assert!(text.contains("LISTED") && text.contains("ERROR") && text.contains("clean"));
        assert!(summary(&outcomes, Duration::from_millis(5))
            .starts_with("3 questions in 5 ms: 1 listed, 1 clean, 1 errors"));
    }

    #[test]
    fn a_bad_ip_is_named() {
        let err = parse_ips(&["192.0.2.1".into(), "192.0.2.300".into()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("IP argument `192.0.2.300`"), "{err}");
    }

    #[test]
    fn a_bad_nameserver_is_named() {
        assert_eq!(
            resolve_nameserver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert!(resolve_nameserver("localhost:5353")
            .unwrap()
            .ip()
            .is_loopback());
        assert_eq!(
            resolve_nameserver("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        let err = resolve_nameserver("127.0.0.1:99999")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--nameserver `127.0.0.1:99999`"), "{err}");
        for bad in ["127.0.0.1:0", "127.0.0.1:dns", "[::1]:99999"] {
            let err = resolve_nameserver(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--nameserver `{bad}`")), "{err}");
        }
    }

    #[test]
    fn the_command_line_parses() {
        let cli = crate::cli::Cli::try_parse_from([
            "mailfleet",
            "probe",
            "dnsbl",
            "--nameserver",
            "127.0.0.1:53",
            "--zone",
            "a.test",
            "--zone",
            "b.test",
            "192.0.2.1",
            "2001:db8::1",
            "--format",
            "json",
            "--concurrency",
            "8",
            "--timeout-ms",
            "300",
        ])
        .unwrap();
        let crate::cli::Command::Probe(ProbeArgs {
            command: ProbeCommand::Dnsbl(args),
        }) = cli.command
        else {
            panic!("not a probe command")
        };
        assert_eq!(args.zones, vec!["a.test", "b.test"]);
        assert_eq!(args.ips, vec!["192.0.2.1", "2001:db8::1"]);
        assert_eq!(
            (args.concurrency, args.timeout_ms, args.format),
            (8, 300, Format::Json)
        );
        assert!(crate::cli::Cli::try_parse_from([
            "mailfleet",
            "probe",
            "dnsbl",
            "--nameserver",
            "x:1",
            "192.0.2.1"
        ])
        .is_err());
    }
}
