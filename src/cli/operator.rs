//! `mailfleet operator`: the in-cluster controller (docs/ARCHITECTURE.md, Operator).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::logs::{LogArgs, LogFormat};
use crate::operator::context::Settings;
use crate::operator::feedback_cert::{names_for_host, CertPolicy, SecretRef};
use crate::operator::feedback_cert_keeper::ManagedTls;
use crate::operator::leader_route::OwnPod;
use crate::operator::run::{start, OperatorOptions};
use crate::serve::{ServeLimits, TlsFiles};

/// How often each replica reads the operator-made certificate's Secret again:
/// a renewal by the other replica is served within this.
const MANAGED_TLS_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Every setting can come from the environment too (`--help` names each
/// variable); a flag on the command line wins.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// One port for POST /v1/feedback, GET /metrics, /healthz, /readyz and
    /// PUT /log-level.
    #[arg(long, env = "MAILFLEET_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// A namespace to watch (repeat, or comma-separated); none means every
    /// namespace.
    #[arg(
        long = "namespace",
        env = "MAILFLEET_NAMESPACE",
        value_delimiter = ',',
        value_parser = non_blank
    )]
    pub namespaces: Vec<String>,

    /// Run only while holding the leader lease: two replicas, one active.
    /// `--leader-election=false` (or --no-leader-election) runs a single replica.
    #[arg(
        long,
        env = "MAILFLEET_LEADER_ELECTION",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,

    /// Run without leader election (a single replica).
    #[arg(long)]
    pub no_leader_election: bool,

    /// Name of the coordination.k8s.io Lease.
    #[arg(
        long,
        env = "MAILFLEET_LEASE_NAME",
        default_value = "mailfleet-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease [default: --pod-namespace].
    #[arg(long, env = "MAILFLEET_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// The operator's own namespace (the chart sets it from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,

    /// The operator pod's name (the chart sets it from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// This replica's name in the Lease and in events [default: --pod-name,
    /// else mailfleet-operator-<pid>].
    #[arg(long, env = "MAILFLEET_IDENTITY")]
    pub identity: Option<String>,

    /// Image of the agent sidecar added to every sender pod; none adds no sidecar.
    #[arg(long, env = "MAILFLEET_AGENT_IMAGE")]
    pub agent_image: Option<String>,

    /// Let SenderPools send their feed key (feeds.snds.keySecretRef) to a
    /// URL other than Microsoft's SNDS, for example an in-cluster proxy.
    /// Off: anyone who may create a SenderPool could send a labelled Secret
    /// of their namespace to a URL of their choice.
    #[arg(long, env = "MAILFLEET_ALLOW_CUSTOM_FEED_URLS")]
    pub allow_custom_feed_urls: bool,

    /// Image of the sender (Postfix and `mailfleet sender run`), run by pools
    /// whose spec.template has no spec; none leaves such pools without pods.
    #[arg(long, env = "MAILFLEET_SENDER_IMAGE")]
    pub sender_image: Option<String>,

    /// What the sidecars post feedback to
    /// [default: http://mailfleet.<pod namespace>.svc:8080/v1/feedback].
    #[arg(long, env = "MAILFLEET_FEEDBACK_URL")]
    pub feedback_url: Option<String>,

    /// Serve the port over TLS with this PEM certificate (then its
    /// intermediates), for example a mounted kubernetes.io/tls Secret's
    /// tls.crt; the default --feedback-url is then https://.
    #[arg(
        long,
        value_name = "FILE",
        env = "MAILFLEET_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "MAILFLEET_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// The PEM CA that signed --tls-cert (a cert-manager Secret's ca.crt, or
    /// the certificate itself when self-signed): put into every agent's
    /// environment so it trusts only that CA for an https:// --feedback-url.
    /// Read at start: a new CA takes a restart (and rolls the sender pods).
    #[arg(long, value_name = "FILE", env = "MAILFLEET_FEEDBACK_CA_FILE")]
    pub feedback_ca_file: Option<PathBuf>,

    /// Serve the port over TLS with a certificate the operator makes and
    /// renews itself, kept in this Secret of --pod-namespace: a ten-year CA
    /// (ca.crt, handed to the agents) and a 90-day serving certificate for
    /// the --feedback-url host's Service (tls.crt), renewed at two thirds of
    /// its life with no restart. The default --feedback-url is then https://.
    #[arg(
        long,
        value_name = "NAME",
        env = "MAILFLEET_FEEDBACK_TLS_SECRET",
        value_parser = non_blank,
        conflicts_with_all = ["tls_cert", "feedback_ca_file"]
    )]
    pub feedback_tls_secret: Option<String>,

    /// Connections the port keeps open at once [default: 1024]. Each report
    /// of a sending agent waits for its pool's next status write (up to
    /// 2 s), so a fleet needs about reports per second x 1.2 of them:
    /// 20,000 sender pods reporting every 5 s, about 5,000.
    #[arg(
        long,
        env = "MAILFLEET_MAX_CONNECTIONS",
        value_parser = clap::value_parser!(u32).range(16..=1_000_000)
    )]
    pub max_connections: Option<u32>,

    /// Reconciles running at once per controller and watched namespace.
    #[arg(
        long,
        env = "MAILFLEET_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub concurrency: u16,

    #[command(flatten)]
    pub logs: LogArgs,
}

/// An operator argument that cannot be used as given.
#[derive(Debug, thiserror::Error)]
pub enum OperatorArgError {
    #[error("a namespace name cannot be empty")]
    BlankNamespace,
    #[error("{what} is for an https:// --feedback-url; {feedback_url} is not (serve TLS with --tls-cert/--tls-key)")]
    FeedbackCaWithoutTls { what: String, feedback_url: String },
    #[error("--feedback-tls-secret serves TLS: --feedback-url must be https://<service>.<namespace>.svc:<port>/v1/feedback, not {feedback_url}")]
    FeedbackTlsWithoutHttps { feedback_url: String },
    #[error("{what}: {source}")]
    ReadFeedbackCa {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    FeedbackCa(#[from] crate::agent::http::EndpointError),
}

fn non_blank(value: &str) -> Result<String, OperatorArgError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(OperatorArgError::BlankNamespace);
    }
    Ok(value.to_string())
}

impl OperatorArgs {
    fn options(self) -> Result<OperatorOptions, OperatorArgError> {
        let namespace = self.pod_namespace;
        let identity = self
            .identity
            .or(self.pod_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("mailfleet-operator-{}", std::process::id()));
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            // clap's `requires` refuses one without the other.
            _ => None,
        };
        let scheme = if tls.is_some() || self.feedback_tls_secret.is_some() {
            "https"
        } else {
            "http"
        };
        let mut serve_limits = ServeLimits::default();
        if let Some(max) = self.max_connections {
            serve_limits.max_connections = max as usize;
        }
        let feedback_url = self
            .feedback_url
            .unwrap_or_else(|| format!("{scheme}://mailfleet.{namespace}.svc:8080/v1/feedback"));
        let feedback_ca = self
            .feedback_ca_file
            .map(|path| read_feedback_ca(&path, &feedback_url))
            .transpose()?;
        let managed_tls = self
            .feedback_tls_secret
            .map(|name| managed_tls(name, &namespace, &feedback_url))
            .transpose()?;
        let own_pod = self
            .pod_name
            .filter(|name| !name.is_empty())
            .map(|name| OwnPod {
                namespace: namespace.clone(),
                name,
            });
        Ok(OperatorOptions {
            namespaces: self.namespaces,
            leader_election: self.leader_election && !self.no_leader_election,
            lease_name: self.lease_name,
            lease_namespace: self.lease_namespace.unwrap_or_else(|| namespace.clone()),
            concurrency: self.concurrency,
            lease_timing: OperatorOptions::default().lease_timing,
            tls,
            managed_tls,
            serve_limits,
            own_pod,
            settings: Settings {
                agent_image: self.agent_image,
                allow_custom_feed_urls: self.allow_custom_feed_urls,
                sender_image: self.sender_image,
                feedback_url,
                feedback_ca,
                identity,
            },
        })
    }
}

/// The operator-made certificate for the --feedback-url host.
fn managed_tls(
    name: String,
    namespace: &str,
    feedback_url: &str,
) -> Result<ManagedTls, OperatorArgError> {
    let url = http::Uri::try_from(feedback_url.trim()).ok();
    let host = url
        .as_ref()
        .filter(|url| url.scheme_str() == Some("https"))
        .and_then(|url| url.host())
        .ok_or_else(|| OperatorArgError::FeedbackTlsWithoutHttps {
            feedback_url: feedback_url.to_string(),
        })?;
    Ok(ManagedTls {
        secret: SecretRef {
            namespace: namespace.to_string(),
            name,
        },
        names: names_for_host(host, namespace),
        policy: CertPolicy::default(),
        recheck: MANAGED_TLS_RECHECK,
    })
}

/// The CA the agents are to trust, checked the way they will read it.
fn read_feedback_ca(
    path: &std::path::Path,
    feedback_url: &str,
) -> Result<String, OperatorArgError> {
    let what = format!("--feedback-ca-file {}", path.display());
    if !feedback_url.trim_start().starts_with("https://") {
        return Err(OperatorArgError::FeedbackCaWithoutTls {
            what,
            feedback_url: feedback_url.to_string(),
        });
    }
    let pem = std::fs::read_to_string(path).map_err(|source| OperatorArgError::ReadFeedbackCa {
        what: what.clone(),
        source,
    })?;
    crate::agent::http::TlsTrust::from_pem(pem.as_bytes(), &what, what.clone())?;
    Ok(pem)
}

pub fn run(args: OperatorArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let log_level = args.logs.init(LogFormat::Json)?;
    let http_addr = args.http_addr;
    let options = args.options()?;
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
        tracing::info!(http_addr = %http_addr, tls = options.tls.is_some() || options.managed_tls.is_some(), namespaces = ?options.namespaces,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        operator: OperatorArgs,
    }

    /// The environment is the process'; this is the only test that sets
    /// these variables, and it sets them all in one place.
    #[test]
    fn settings_come_from_the_environment_and_flags_win() {
        let vars = [
            ("MAILFLEET_NAMESPACE", "mail, bulk"),
            ("MAILFLEET_LEADER_ELECTION", "false"),
            ("POD_NAMESPACE", "mailfleet-system"),
            ("POD_NAME", "mailfleet-7d9f-abcde"),
        ];
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let from_env = Cmd::try_parse_from(["x"]).map(|c| c.operator.options().unwrap());
        let flags_win = Cmd::try_parse_from([
            "x",
            "--namespace=ops",
            "--leader-election",
            "--concurrency=8",
            "--identity=replica-b",
        ])
        .map(|c| c.operator.options().unwrap());
        std::env::set_var("MAILFLEET_CONCURRENCY", "0");
        let zero = Cmd::try_parse_from(["x"]).err().map(|e| e.to_string());
        for (name, _) in vars {
            std::env::remove_var(name);
        }
        std::env::remove_var("MAILFLEET_CONCURRENCY");

        let options = from_env.expect("the environment parses");
        assert_eq!(options.namespaces, ["mail", "bulk"]);
        assert!(!options.leader_election);
        assert_eq!(options.concurrency, 4);
        assert_eq!(options.lease_namespace, "mailfleet-system");
        assert_eq!(options.settings.identity, "mailfleet-7d9f-abcde");
        assert_eq!(
            options.settings.feedback_url,
            "http://mailfleet.mailfleet-system.svc:8080/v1/feedback"
        );

        let options = flags_win.expect("the flags parse");
        assert_eq!(options.namespaces, ["ops"]);
        assert!(options.leader_election);
        assert_eq!(options.concurrency, 8);
        assert_eq!(options.settings.identity, "replica-b");

        let zero = zero.expect("a concurrency of 0 is refused");
        assert!(
            zero.contains("MAILFLEET_CONCURRENCY") || zero.contains("--concurrency"),
            "{zero}"
        );
    }

    #[test]
    fn the_operator_made_certificate_serves_https_for_the_feedback_host() {
        let parse = |args: &[&str]| {
            // Flags for what the environment test sets meanwhile.
            let fixed = ["x", "--pod-namespace=ops", "--concurrency=4"];
            Cmd::try_parse_from(fixed.iter().chain(args))
                .map_err(|e| e.to_string())
                .and_then(|c| c.operator.options().map_err(|e| e.to_string()))
        };
        let options = parse(&["--feedback-tls-secret=mailfleet-feedback-tls"]).unwrap();
        assert_eq!(
            options.settings.feedback_url,
            "https://mailfleet.ops.svc:8080/v1/feedback"
        );
        let managed = options
            .managed_tls
            .expect("the operator makes the certificate");
        assert_eq!(managed.secret.to_string(), "ops/mailfleet-feedback-tls");
        assert_eq!(
            managed.names,
            crate::operator::feedback_cert::serving_names("mailfleet", "ops")
        );
        assert!(options.tls.is_none());

        let custom = parse(&[
            "--feedback-tls-secret=t",
            "--feedback-url=https://feedback.example.net:8443/v1/feedback",
        ])
        .unwrap();
        assert!(custom
            .managed_tls
            .unwrap()
            .names
            .contains(&"feedback.example.net".to_string()));

        let plain = parse(&[
            "--feedback-tls-secret=t",
            "--feedback-url=http://mailfleet.ops.svc:8080/v1/feedback",
        ])
        .unwrap_err();
        assert!(plain.contains("--feedback-url must be https://"), "{plain}");
        let both =
            parse(&["--feedback-tls-secret=t", "--tls-cert=/c", "--tls-key=/k"]).unwrap_err();
        assert!(both.contains("cannot be used with"), "{both}");
    }
}
