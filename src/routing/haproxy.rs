//! HAProxy configuration of the hand-off between senders on VMs.
//!
//! On Kubernetes a sender that may not send a route's mail hands it to the
//! route's Service, whose endpoints are the pods of the route's targets. On
//! VMs one HAProxy plays that part (`mailfleet standalone --haproxy-config`):
//! a TCP listener per route, on `first_port` plus the route's place in the
//! table ([`handoff_ports`], which the senders' Postfix is given through
//! [`PostfixOptions::route_service_ports`](super::postfix::PostfixOptions)),
//! whose servers are the route's targets that carry mail, weighted as the
//! table says. An IP the route leaves out (Blocked, Probing, no allowance)
//! is no server of it, and the file says why in a comment.
//!
//! Each sender's Postfix is checked once (SMTP EHLO, in the [`CHECKS_BACKEND`]
//! backend) and the route servers `track` that check, so a stopped sender
//! leaves every route at once without one check per route.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::index::is_valid_host;
use super::model::{carries_mail, ObjectKey, RouteTable};
use super::postfix::ip_slug;

/// The backend holding one health-checked server per sender.
pub const CHECKS_BACKEND: &str = "mf-senders";

/// Where HAProxy listens and how it reaches the senders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyOptions {
    /// The address every route listener binds (`0.0.0.0`: all IPv4 ones).
    pub bind_address: IpAddr,
    /// The first route's hand-off port; the next route gets the next port.
    pub first_port: u16,
    /// The port each sender's Postfix accepts mail on.
    pub sender_port: u16,
    /// The name the health check greets the senders with (EHLO).
    pub check_helo: String,
    /// Where HAProxy logs each hand-off (the words after `log`, such as
    /// `/dev/log local0` or `stderr format raw local0`); `None`: no log.
    pub log: Option<String>,
}

impl Default for HaproxyOptions {
    fn default() -> Self {
        HaproxyOptions {
            bind_address: IpAddr::from([0, 0, 0, 0]),
            first_port: 10025,
            sender_port: 25,
            check_helo: "mailfleet-check.invalid".to_string(),
            log: None,
        }
    }
}

impl HaproxyOptions {
    /// The errors that need no route table: checked once at start.
    pub fn check(&self) -> Result<(), HaproxyError> {
        for port in [self.first_port, self.sender_port] {
            if port == 0 {
                return Err(HaproxyError::ZeroPort { port });
            }
        }
        if !is_valid_host(&self.check_helo) {
            return Err(HaproxyError::CheckHelo {
                name: self.check_helo.clone(),
            });
        }
        if let Some(log) = &self.log {
            if log.trim().is_empty() || log.chars().any(|c| c.is_control() || c == '#') {
                return Err(HaproxyError::Log { log: log.clone() });
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HaproxyError {
    #[error("{routes} routes need hand-off ports {first_port} to {last}, past 65535; give a lower --haproxy-first-port")]
    PortsExhausted {
        first_port: u16,
        routes: usize,
        last: usize,
    },
    #[error("hand-off port {port} is not a TCP port; give --haproxy-first-port and --haproxy-sender-port between 1 and 65535")]
    ZeroPort { port: u16 },
    #[error("health-check name {name:?} is not a host name; give --haproxy-check-helo a name such as mailfleet-check.example.net")]
    CheckHelo { name: String },
    #[error("--haproxy-log {log:?} is not one HAProxy log target; write it on one line, such as '/dev/log local0'")]
    Log { log: String },
    #[error("route {route}: target {ip:?} of pool {pool} is not an IP address; fix spec.ips of that SenderPool")]
    TargetIp {
        route: String,
        pool: String,
        ip: String,
    },
}

impl HaproxyError {
    /// A short label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            HaproxyError::PortsExhausted { .. } | HaproxyError::ZeroPort { .. } => "port",
            HaproxyError::CheckHelo { .. } | HaproxyError::Log { .. } => "option",
            HaproxyError::TargetIp { .. } => "target",
        }
    }
}

/// Each route's hand-off port: `first_port` plus its place in the table
/// (sorted by namespace, then name), so every sender and HAProxy agree.
pub fn handoff_ports(
    table: &RouteTable,
    first_port: u16,
) -> Result<BTreeMap<ObjectKey, u16>, HaproxyError> {
    if first_port == 0 {
        return Err(HaproxyError::ZeroPort { port: first_port });
    }
    let last = usize::from(first_port) + table.routes.len().saturating_sub(1);
    if last > usize::from(u16::MAX) {
        return Err(HaproxyError::PortsExhausted {
            first_port,
            routes: table.routes.len(),
            last,
        });
    }
    Ok(table
        .routes
        .iter()
        .zip(first_port..)
        .map(|(route, port)| (route.key.clone(), port))
        .collect())
}

/// The whole `haproxy.cfg` for `table`.
pub fn render(table: &RouteTable, options: &HaproxyOptions) -> Result<String, HaproxyError> {
    options.check()?;
    let ports = handoff_ports(table, options.first_port)?;
    let mut checked: BTreeSet<IpAddr> = BTreeSet::new();
    let mut listeners = String::new();
    for route in &table.routes {
        let port = ports[&route.key];
        let mut servers = Vec::new();
        for target in route.targets.iter().filter(|t| carries_mail(t.state)) {
            let ip: IpAddr = target
                .ip
                .trim()
                .parse()
                .map_err(|_| HaproxyError::TargetIp {
                    route: route.key.to_string(),
                    pool: target.pool.clone(),
                    ip: target.ip.clone(),
                })?;
            checked.insert(ip);
            servers.push((ip, target.weight.clamp(0, 256)));
        }
        let _ = writeln!(
            listeners,
            "\n# route {} (provider {}, {}): {} of its senders carry its mail",
            route.key,
            printable(&route.provider),
            super::model::mode_name(route.mode),
            servers.len()
        );
        let _ = writeln!(listeners, "listen {}", listener_name(&route.key));
        let _ = writeln!(
            listeners,
            "    bind {}",
            address(options.bind_address, port)
        );
        listeners.push_str("    balance roundrobin\n");
        if servers.is_empty() {
            listeners.push_str(
                "    # No sender may carry it now: the connection is closed and the\n    # handing sender keeps the mail queued until one may.\n",
            );
        }
        for (ip, weight) in &servers {
            let name = ip_slug(*ip);
            let _ = writeln!(
                listeners,
                "    server {name} {} weight {weight} track {CHECKS_BACKEND}/{name}",
                address(*ip, options.sender_port)
            );
        }
        for excluded in &route.excluded {
            let _ = writeln!(
                listeners,
                "    # left out: {} of pool {} ({}: {})",
                printable(&excluded.ip),
                printable(&excluded.pool),
                excluded.state.as_str(),
                printable(&excluded.reason)
            );
        }
        for target in route.targets.iter().filter(|t| !carries_mail(t.state)) {
            let _ = writeln!(
                listeners,
                "    # left out: {} of pool {} ({}: sends its own probe trickle only)",
                printable(&target.ip),
                printable(&target.pool),
                target.state.as_str()
            );
        }
    }

    let mut out = String::new();
    // No compile time in the file: HAProxy is reloaded only when a route's
    // senders change, not at every recompile.
    out.push_str(
        "# The hand-off between senders, rendered by mailfleet from the route table:\n# do not edit, `mailfleet standalone --haproxy-config` rewrites it whenever\n# a route's senders change.\n",
    );
    out.push_str("global\n    maxconn 4096\n");
    if let Some(log) = &options.log {
        let _ = writeln!(out, "    log {}", log.trim());
    }
    out.push_str("\ndefaults\n    mode tcp\n");
    if options.log.is_some() {
        // One line per hand-off: the handing sender, the route, the sender it went to.
        out.push_str("    log global\n    option tcplog\n");
    }
    out.push_str(
        "    timeout connect 5s\n    # Postfix's own SMTP timeouts are 300 s per command.\n    timeout client 10m\n    timeout server 10m\n    timeout check 5s\n    # A sender that refuses the connection: another one.\n    retries 2\n    option redispatch\n",
    );
    let _ = writeln!(
        out,
        "\n# One SMTP check per sender; the route servers track it.\nbackend {CHECKS_BACKEND}\n    option smtpchk EHLO {}",
        options.check_helo
    );
    for ip in &checked {
        let _ = writeln!(
            out,
            "    server {} {} check inter 2s fall 2 rise 1",
            ip_slug(*ip),
            address(*ip, options.sender_port)
        );
    }
    out.push_str(&listeners);
    Ok(out)
}

/// A route's listener: `.` never occurs in a namespace or a name, so
/// `lab.microsoft` is one route only.
pub fn listener_name(key: &ObjectKey) -> String {
    format!("mf-route.{}.{}", key.namespace, key.name)
}

fn address(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Text from manifests and replies inside a comment: one line, printable.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use crate::routing::compile;
    use crate::routing::example::{incident_fleet, pair, set_pair};

    fn now() -> jiff::Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    fn options() -> HaproxyOptions {
        HaproxyOptions {
            bind_address: "127.0.0.10".parse().unwrap(),
            ..HaproxyOptions::default()
        }
    }

    /// The lines of one `listen` section, up to the next blank line.
    fn section<'a>(config: &'a str, name: &str) -> Vec<&'a str> {
        config
            .lines()
            .skip_while(|l| *l != format!("listen {name}"))
            .take_while(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn each_route_listens_on_its_own_port_in_table_order() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let ports = handoff_ports(&table, 10025).unwrap();
        let names: Vec<String> = table.routes.iter().map(|r| r.key.to_string()).collect();
        assert_eq!(ports.len(), table.routes.len());
        for (i, route) in table.routes.iter().enumerate() {
            assert_eq!(ports[&route.key], 10025 + i as u16, "{names:?}");
        }
        let config = render(&table, &options()).unwrap();
        let microsoft = table.route("mail", "microsoft").unwrap();
        assert!(
            section(&config, "mf-route.mail.microsoft")
                .contains(&format!("    bind 127.0.0.10:{}", ports[&microsoft.key]).as_str()),
            "{config}"
        );
    }

    #[test]
    fn a_blocked_ip_is_no_server_of_its_provider_but_serves_the_others() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let config = render(&table, &options()).unwrap();
        let microsoft = section(&config, "mf-route.mail.microsoft");
        assert!(!microsoft.is_empty(), "{config}");
        assert!(
            !microsoft
                .iter()
                .any(|l| l.starts_with("    server mf-203-0-113-13 ")),
            "{microsoft:#?}"
        );
        assert!(
            microsoft
                .iter()
                .any(|l| l.starts_with("    # left out: 203.0.113.13 of pool bulk (Blocked")),
            "{microsoft:#?}"
        );
        assert!(microsoft.contains(
            &"    server mf-203-0-113-10 203.0.113.10:25 weight 100 track mf-senders/mf-203-0-113-10"
        ));
        let google = section(&config, "mf-route.mail.google");
        assert!(
            google
                .iter()
                .any(|l| l.starts_with("    server mf-203-0-113-13 203.0.113.13:25 ")),
            "{google:#?}"
        );
        // The Throttled IP of the example carries Google mail at a lower weight.
        assert!(
            google.contains(
                &"    server mf-203-0-113-15 203.0.113.15:25 weight 50 track mf-senders/mf-203-0-113-15"
            ),
            "{google:#?}"
        );
        assert!(config
            .contains("    server mf-203-0-113-13 203.0.113.13:25 check inter 2s fall 2 rise 1\n"));
    }

    #[test]
    fn a_route_no_sender_may_carry_keeps_its_port_and_has_no_server() {
        let (mut pools, routes) = incident_fleet(now());
        for pool in &mut pools {
            let ips: Vec<String> = pool.spec.ips.iter().map(|ip| ip.address.clone()).collect();
            for ip in ips {
                set_pair(
                    pool,
                    &ip,
                    pair("microsoft", ReputationState::Blocked, 0, now()),
                );
            }
        }
        let table = compile(&pools, &routes, now());
        let config = render(&table, &options()).unwrap();
        let microsoft = section(&config, "mf-route.mail.microsoft");
        assert!(
            microsoft
                .iter()
                .any(|l| l.starts_with("    bind 127.0.0.10:")),
            "{microsoft:#?}"
        );
        assert!(
            !microsoft.iter().any(|l| l.starts_with("    server ")),
            "{microsoft:#?}"
        );
        assert!(microsoft
            .iter()
            .any(|l| l.contains("No sender may carry it now")));
    }

    #[test]
    fn the_same_routes_later_render_the_same_file() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let later = compile(&pools, &routes, now() + jiff::SignedDuration::from_secs(1));
        assert_ne!(table.generated_at, later.generated_at);
        assert_eq!(
            render(&table, &options()).unwrap(),
            render(&later, &options()).unwrap(),
            "a reload per recompile"
        );
    }

    #[test]
    fn bad_options_name_the_flag_to_fix() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let late = HaproxyOptions {
            first_port: 65534,
            ..options()
        };
        let err = render(&table, &late).unwrap_err();
        assert!(matches!(err, HaproxyError::PortsExhausted { .. }), "{err}");
        assert!(err.to_string().contains("--haproxy-first-port"), "{err}");
        let helo = HaproxyOptions {
            check_helo: "not a name".into(),
            ..options()
        };
        assert_eq!(render(&table, &helo).unwrap_err().category(), "option");
        let zero = HaproxyOptions {
            first_port: 0,
            ..options()
        };
        assert!(render(&table, &zero).is_err());
        let log = HaproxyOptions {
            log: Some("/dev/log local0\nlisten evil".into()),
            ..options()
        };
        let err = render(&table, &log).unwrap_err();
        assert!(err.to_string().contains("--haproxy-log"), "{err}");
    }

    #[test]
    fn a_log_target_logs_every_hand_off_and_none_logs_nothing() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let quiet = render(&table, &options()).unwrap();
        assert!(!quiet.contains("log"), "{quiet}");
        let logged = render(
            &table,
            &HaproxyOptions {
                log: Some("stderr format raw local0".into()),
                ..options()
            },
        )
        .unwrap();
        assert!(logged.contains("global\n    maxconn 4096\n    log stderr format raw local0\n"));
        assert!(logged.contains("defaults\n    mode tcp\n    log global\n    option tcplog\n"));
    }

    #[test]
    fn ipv6_senders_and_listeners_are_bracketed_and_comments_stay_one_line() {
        let (pools, routes) = incident_fleet(now());
        let mut table = compile(&pools, &routes, now());
        let route = &mut table.routes[0];
        route.targets[0].ip = "2001:db8::10".into();
        route.targets[0].state = ReputationState::Healthy;
        route.excluded.push(crate::api::ExcludedIp {
            pool: "bulk".into(),
            ip: "2001:db8::11".into(),
            state: ReputationState::Blocked,
            reason: "550 banned\nlisten evil\n".into(),
        });
        let config = render(
            &table,
            &HaproxyOptions {
                bind_address: "::1".parse().unwrap(),
                ..options()
            },
        )
        .unwrap();
        assert!(config.contains(" [2001:db8::10]:25 "), "{config}");
        assert!(config.contains("    bind [::1]:10025\n"), "{config}");
        assert!(!config.contains("\nlisten evil"), "{config}");
    }
}
