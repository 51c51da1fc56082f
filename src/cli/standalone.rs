//! `mailfleet standalone`: the engine on files, for fleets without Kubernetes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::common::FleetArgs;
use super::logs::{LogArgs, LogFormat};
use crate::probe::dnsbl::{parse_nameserver, Nameserver};
use crate::routing::haproxy::HaproxyOptions;
use crate::routing::postfix::PostfixOptions;
use crate::standalone::{self, HaproxyHandoff, Options};

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// The folder of SenderPool and DomainRoute manifests; changes are picked
    /// up while running (refused ones leave the last good ones in force).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,

    /// Where state.json, feedback.wal, routes.json, senders/<ip slug>/ and events.jsonl go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The HTTP port: POST /v1/feedback, GET /metrics, /healthz, /readyz, PUT /log-level.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// A file holding one token every agent may send as
    /// `Authorization: Bearer <token>`, for any IP; re-read at every request.
    /// Without it or --token-dir, feedback is accepted from anyone who
    /// reaches the port.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// A token per sender: a file named after the IP (203.0.113.10; IPv6
    /// with '-' for ':') or `<namespace>_<pool>` holds the token that may
    /// report for that IP or pool only.
    #[arg(long, value_name = "DIR")]
    pub token_dir: Option<PathBuf>,

    /// The token PUT /log-level needs. Without it, the log level changes
    /// from this machine only, and not at all when agents need tokens.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the port over TLS with this PEM certificate (then its
    /// intermediates); agents on other machines use an https:// --endpoint.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Secrets (the SNDS key) as files DIR/<secret name>/<key>.
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Ask every pool's DNSBL zones through this resolver (HOST:PORT) instead
    /// of spec.reputation.dnsbl.resolver.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_nameserver)]
    pub dnsbl_resolver: Option<Nameserver>,

    /// Milliseconds between two engine ticks (reputation timers, manifest
    /// changes, writing outputs). Feedback that changes a route is written at once.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub tick_ms: u64,

    /// Next hop of direct deliveries in the rendered Postfix config instead of
    /// the recipient domain's MX (labs), for example '[127.0.0.1]:2525'.
    #[arg(long, value_name = "NEXTHOP")]
    pub postfix_direct_nexthop: Option<String>,

    /// Host of a route's hand-off service in the rendered Postfix config;
    /// `{route}` and `{namespace}` are replaced.
    #[arg(
        long,
        value_name = "TEMPLATE",
        default_value = "mf-route-{route}.{namespace}.svc"
    )]
    pub route_service_host: String,

    /// SMTP port of the route hand-off services (with --haproxy-config each
    /// route has its own port instead, from --haproxy-first-port).
    #[arg(long, value_name = "PORT", default_value_t = 25)]
    pub route_service_port: u16,

    /// Hand routes off through HAProxy (VM fleets): write its configuration
    /// here whenever a route's senders change, one listener per route, and
    /// run --haproxy-reload-cmd. --route-service-host is then the address
    /// senders reach HAProxy at (docs/STANDALONE.md).
    #[arg(long, value_name = "FILE", requires = "haproxy_reload_cmd")]
    pub haproxy_config: Option<PathBuf>,

    /// The shell command that makes HAProxy read --haproxy-config again, for
    /// example 'systemctl reload haproxy'; it gets the file's path in
    /// $MAILFLEET_HAPROXY_CONFIG. When it fails, the last good file is put back.
    #[arg(long, value_name = "COMMAND", requires = "haproxy_config")]
    pub haproxy_reload_cmd: Option<String>,

    /// The address HAProxy's route listeners bind.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub haproxy_bind: IpAddr,

    /// The first route's hand-off port; routes in namespace/name order get
    /// the ports that follow.
    #[arg(long, value_name = "PORT", default_value_t = 10025)]
    pub haproxy_first_port: u16,

    /// The port senders' Postfix accepts handed-off mail on.
    #[arg(long, value_name = "PORT", default_value_t = 25)]
    pub haproxy_sender_port: u16,

    /// The name HAProxy's SMTP health check greets senders with.
    #[arg(long, value_name = "NAME", default_value = "mailfleet-check.invalid")]
    pub haproxy_check_helo: String,

    /// Where HAProxy logs a line per hand-off (the words after `log` in
    /// haproxy.cfg), for example '/dev/log local0'; without it, no log.
    #[arg(long, value_name = "TARGET")]
    pub haproxy_log: Option<String>,

    /// Your own classifier rules and providers (YAML, see docs/CLASSIFIER.md).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,

    #[command(flatten)]
    pub logs: LogArgs,
}

pub fn run(args: StandaloneArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.haproxy_config.is_some() && args.route_service_host.contains("{route}") {
        return Err(format!(
            "--haproxy-config hands every route to one HAProxy, on a port of its own, but \
             --route-service-host {:?} names a host per route; give --route-service-host \
             the address senders reach HAProxy at (for example its --haproxy-bind address)",
            args.route_service_host
        )
        .into());
    }
    let haproxy = HaproxyOptions {
        bind_address: args.haproxy_bind,
        first_port: args.haproxy_first_port,
        sender_port: args.haproxy_sender_port,
        check_helo: args.haproxy_check_helo.clone(),
        log: args.haproxy_log.clone(),
    };
    haproxy.check()?;
    let rules = FleetArgs {
        manifests: Vec::new(),
        example: false,
        rules: args.rules.clone(),
    }
    .classifier_config()?;
    let log_level = Some(args.logs.init(LogFormat::Text)?);
    let options = Options {
        manifests: args.manifests,
        out: args.out,
        http_addr: args.http_addr,
        token_file: args.token_file,
        token_dir: args.token_dir,
        admin_token_file: args.admin_token_file,
        secrets_dir: args.secrets_dir,
        dnsbl_resolver: args.dnsbl_resolver,
        tick: Duration::from_millis(args.tick_ms),
        postfix: PostfixOptions {
            direct_nexthop: args.postfix_direct_nexthop,
            route_service_host: args.route_service_host,
            route_service_port: args.route_service_port,
            ..PostfixOptions::default()
        },
        rules,
        haproxy: args.haproxy_config.zip(args.haproxy_reload_cmd).map(
            |(config, reload_command)| HaproxyHandoff {
                options: haproxy,
                config,
                reload_command,
            },
        ),
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| standalone::TlsFiles { cert, key }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        // Installed before anything is served, so a SIGTERM sent as soon as
        // the port answers is a graceful stop, not the default kill.
        let shutdown = shutdown_signal().map_err(|e| -> Box<dyn std::error::Error> {
            format!("cannot watch SIGINT/SIGTERM: {e}").into()
        })?;
        standalone::run(options, log_level, shutdown).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    // A name lookup still running in a blocking thread must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM; the handlers are
/// installed when this is called.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
