//! `mailfleet operator`: the in-cluster controller (docs/ARCHITECTURE.md, Operator).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::operator::context::Settings;
use crate::operator::leader_route::OwnPod;
use crate::operator::logging::{self, LogFormat};
use crate::operator::run::{start, OperatorOptions};
use crate::serve::{ServeLimits, TlsFiles};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    #[default]
    Json,
    Text,
}

/// Every flag can also come from the environment as `MAILFLEET_<FLAG>` (for
/// example `MAILFLEET_HTTP_ADDR`); a flag on the command line wins.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// One port for POST /v1/feedback, GET /metrics, /healthz, /readyz and
    /// PUT /log-level [default: 0.0.0.0:8080].
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,

    /// A namespace to watch (repeat for several; env: comma-separated); none
    /// means every namespace.
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,

    /// Run only while holding the leader lease: two replicas, one active (the default).
    #[arg(long, overrides_with = "no_leader_election")]
    pub leader_election: bool,

    /// Run without leader election (a single replica).
    #[arg(long, overrides_with = "leader_election")]
    pub no_leader_election: bool,

    /// Name of the coordination.k8s.io Lease [default: mailfleet-operator].
    #[arg(long)]
    pub lease_name: Option<String>,

    /// Namespace of the Lease [default: env POD_NAMESPACE, else `default`].
    #[arg(long)]
    pub lease_namespace: Option<String>,

    /// This replica's name in the Lease and in events [default: env POD_NAME].
    #[arg(long)]
    pub identity: Option<String>,

    /// Image of the agent sidecar added to every sender pod; none adds no sidecar.
    #[arg(long)]
    pub agent_image: Option<String>,

    /// Let SenderPools send their feed key (feeds.snds.keySecretRef) to a
    /// URL other than Microsoft's SNDS, for example an in-cluster proxy.
    /// Off: anyone who may create a SenderPool could send a labelled Secret
    /// of their namespace to a URL of their choice.
    #[arg(long)]
    pub allow_custom_feed_urls: bool,
    /// Image of the sender (Postfix and `mailfleet sender run`), run by pools
    /// whose spec.template has no spec; none leaves such pools without pods.
    #[arg(long)]
    pub sender_image: Option<String>,

    /// What the sidecars post feedback to
    /// [default: http://mailfleet.<POD_NAMESPACE>.svc:8080/v1/feedback].
    #[arg(long)]
    pub feedback_url: Option<String>,

    /// Serve the port over TLS with this PEM certificate (then its
    /// intermediates), for example a mounted kubernetes.io/tls Secret's
    /// tls.crt; the default --feedback-url is then https://.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The PEM CA that signed --tls-cert (a cert-manager Secret's ca.crt, or
    /// the certificate itself when self-signed): put into every agent's
    /// environment so it trusts only that CA for an https:// --feedback-url.
    /// Read at start: a new CA takes a restart (and rolls the sender pods).
    #[arg(long, value_name = "FILE")]
    pub feedback_ca_file: Option<PathBuf>,

    /// Connections the port keeps open at once [default: 1024]. Each report
    /// of a sending agent waits for its pool's next status write (up to
    /// 2 s), so a fleet needs about reports per second x 1.2 of them:
    /// 20,000 sender pods reporting every 5 s, about 5,000.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub max_connections: Option<u32>,

    /// Reconciles running at once per controller and watched namespace [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,

    /// Log lines as JSON objects or as text [default: json].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,

    /// Log filter (`info`, `debug`, `info,mailfleet::operator=debug`); PUT
    /// /log-level changes it at runtime [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
}

/// The value of `MAILFLEET_<name>`, when set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(format!("MAILFLEET_{name}"))
        .ok()
        .filter(|v| !v.trim().is_empty())
}

fn env_parsed<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    env(name)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|e| format!("MAILFLEET_{name}={v:?} is not valid: {e}"))
        })
        .transpose()
}

/// The settings after flags, environment and defaults.
#[derive(Debug)]
struct Resolved {
    http_addr: SocketAddr,
    log_format: LogFormat,
    log_level: String,
    options: OperatorOptions,
}

impl OperatorArgs {
    fn resolve(self) -> Result<Resolved, String> {
        let pod_namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|s| !s.is_empty());
        let namespace = pod_namespace.unwrap_or_else(|| "default".to_string());
        let http_addr = match self.http_addr {
            Some(a) => a,
            None => env_parsed("HTTP_ADDR")?.unwrap_or_else(|| ([0, 0, 0, 0], 8080).into()),
        };
        let namespaces = if self.namespaces.is_empty() {
            env("NAMESPACE")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            self.namespaces
        };
        let leader_election = if self.no_leader_election {
            false
        } else if self.leader_election {
            true
        } else {
            env_parsed::<bool>("LEADER_ELECTION")?.unwrap_or(true)
        };
        let identity = self
            .identity
            .or_else(|| env("IDENTITY"))
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| format!("mailfleet-operator-{}", std::process::id()));
        let concurrency = match self.concurrency {
            Some(c) => c,
            None => match env_parsed::<u16>("CONCURRENCY")? {
                Some(0) => return Err("MAILFLEET_CONCURRENCY must be at least 1".into()),
                Some(c) => c,
                None => 4,
            },
        };
        let tls = match (
            self.tls_cert.or_else(|| env("TLS_CERT").map(PathBuf::from)),
            self.tls_key.or_else(|| env("TLS_KEY").map(PathBuf::from)),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    "--tls-cert needs --tls-key (MAILFLEET_TLS_KEY), its private key".into(),
                )
            }
            (None, Some(_)) => {
                return Err(
                    "--tls-key needs --tls-cert (MAILFLEET_TLS_CERT), its certificate".into(),
                )
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut serve_limits = ServeLimits::default();
        if let Some(max) = match self.max_connections {
            Some(max) => Some(max),
            None => env_parsed::<u32>("MAX_CONNECTIONS")?,
        } {
            if max < 16 {
                return Err("MAILFLEET_MAX_CONNECTIONS must be at least 16".into());
            }
            serve_limits.max_connections = max as usize;
        }
        let feedback_url = self
            .feedback_url
            .or_else(|| env("FEEDBACK_URL"))
            .unwrap_or_else(|| format!("{scheme}://mailfleet.{namespace}.svc:8080/v1/feedback"));
        let feedback_ca = self
            .feedback_ca_file
            .or_else(|| env("FEEDBACK_CA_FILE").map(PathBuf::from))
            .map(|path| read_feedback_ca(&path, &feedback_url))
            .transpose()?;
        let log_format = match self.log_format {
            Some(f) => f,
            None => match env("LOG_FORMAT").as_deref() {
                None | Some("json") => LogFormatArg::Json,
                Some("text") => LogFormatArg::Text,
                Some(other) => {
                    return Err(format!(
                        "MAILFLEET_LOG_FORMAT={other:?} is not valid: use json or text"
                    ))
                }
            },
        };
        Ok(Resolved {
            http_addr,
            log_format: match log_format {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Text => LogFormat::Text,
            },
            log_level: self
                .log_level
                .or_else(|| env("LOG_LEVEL"))
                .unwrap_or_else(|| "info".to_string()),
            options: OperatorOptions {
                namespaces,
                leader_election,
                lease_name: self
                    .lease_name
                    .or_else(|| env("LEASE_NAME"))
                    .unwrap_or_else(|| "mailfleet-operator".to_string()),
                lease_namespace: self
                    .lease_namespace
                    .or_else(|| env("LEASE_NAMESPACE"))
                    .unwrap_or_else(|| namespace.clone()),
                concurrency,
                lease_timing: OperatorOptions::default().lease_timing,
                tls,
                serve_limits,
                own_pod: match (
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|s| !s.is_empty()),
                    std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
                ) {
                    (Some(namespace), Some(name)) => Some(OwnPod { namespace, name }),
                    _ => None,
                },
                settings: Settings {
                    agent_image: self.agent_image.or_else(|| env("AGENT_IMAGE")),
                    allow_custom_feed_urls: self.allow_custom_feed_urls,
                    sender_image: self.sender_image.or_else(|| env("SENDER_IMAGE")),
                    feedback_url,
                    feedback_ca,
                    identity,
                },
            },
        })
    }
}

/// The CA the agents are to trust, checked the way they will read it.
fn read_feedback_ca(path: &std::path::Path, feedback_url: &str) -> Result<String, String> {
    let what = format!("--feedback-ca-file {}", path.display());
    if !feedback_url.trim_start().starts_with("https://") {
        return Err(format!(
            "{what} is for an https:// --feedback-url; {feedback_url} is not (serve TLS with --tls-cert/--tls-key)"
        ));
    }
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{what}: {e}"))?;
    crate::agent::http::TlsTrust::from_pem(pem.as_bytes(), &what, what.clone())?;
    Ok(pem)
}

pub fn run(args: OperatorArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let Resolved {
        http_addr,
        log_format,
        log_level,
        options,
    } = args.resolve()?;
    let log_level = logging::init(log_format, &log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client: kube::Client = kube::Client::try_default().await.map_err(|e| {
            format!("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {e}")
        })?;
        let listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .map_err(|e| format!("cannot listen on --http-addr {}: {e}", http_addr))?;
        tracing::info!(http_addr = %http_addr, tls = options.tls.is_some(), namespaces = ?options.namespaces,
            leader_election = options.leader_election, identity = %options.settings.identity,
            "starting mailfleet operator");
        let operator = start(client, options, listener, Some(log_level)).await?;
        let outcome: Result<ExitCode, Box<dyn std::error::Error>> =
            match operator.run_until(shutdown_signal()).await {
                Ok(()) => {
                    tracing::info!("stopped");
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    tracing::error!(error = %err, "stopping");
                    Ok(ExitCode::from(1))
                }
            };
        outcome
    })
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
