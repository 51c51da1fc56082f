//! Postfix configuration for one sender (a pod of pool P sending from IP X), and
//! for a whole fleet (`mailfleet routes --format postfix`).
//!
//! Any pod accepts any message, so each pod gets an entry for every route it may
//! see mail of: its own pool's routes, and routes its pool currently carries as
//! a fallback. Per route the recipient domains go to:
//! - `mf-<ip>-<route>:` when X is one of the route's targets: a transport of its
//!   own in master.cf, bound to X, with a rate delay from X's hourly cap on that
//!   route (Postfix rate delays are per transport, and caps differ per route);
//! - `smtp:[mf-route-<route>.<namespace>.svc]` when X may not send for the route:
//!   the route's Service, whose endpoints are the pods of the allowed IPs;
//! - `relay:[host]:port` when the route is carried by a relay;
//! - `retry:4.7.0 ...` when the route defers: the mail stays queued.
//!
//! Every transport bound to X also gets the block-reply status filter, which turns
//! a conclusive 5xx IP block into a 4xx, so the message is retried (through the
//! rewritten route) instead of bounced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::api::{RouteMode, SenderPool};

use super::caps::{replica_connections, ReplicaShare};
use super::index::{is_valid_host, lookup_key, normalise_domain, DomainForm, DEFAULT_NAMESPACE};
use super::model::{ObjectKey, RouteResult, RouteTable};
use super::sender_settings::{self, SenderSettings, SettingsError, RELAY_TRANSPORT};
use super::sending::{ResolvedLimits, SendingSettings};

/// File name of the transport map, in [`PostfixOptions::map_directory`].
pub const TRANSPORT_FILE: &str = "mailfleet_transport";
/// File name of the block-reply status filter (a `regexp:` table).
pub const STATUS_FILTER_FILE: &str = "mailfleet_status_filter";

/// Lookup table type of the transport map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    /// Read as text at start and reload: no `postmap` step, works from a
    /// read-only mounted ConfigMap (Postfix >= 2.8).
    Texthash,
    /// Indexed file: run `postmap hash:<file>` after every change.
    Hash,
}

impl MapType {
    pub fn as_str(self) -> &'static str {
        match self {
            MapType::Texthash => "texthash",
            MapType::Hash => "hash",
        }
    }
}

/// How the rendered files refer to each other and to the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostfixOptions {
    /// Where Postfix finds the maps; default `${config_directory}`.
    pub map_directory: String,
    pub transport_map_type: MapType,
    /// Host of a route's Service; `{route}` and `{namespace}` are replaced.
    pub route_service_host: String,
    /// SMTP port of the route Services.
    pub route_service_port: u16,
    /// A route's own hand-off port instead of `route_service_port`: on VMs
    /// one HAProxy listens on a port per route ([`super::haproxy`]).
    pub route_service_ports: BTreeMap<ObjectKey, u16>,
    /// For labs: the next hop of direct deliveries (for example
    /// `[127.0.0.1]:2525`) instead of the recipient domain's MX.
    pub direct_nexthop: Option<String>,
    /// Set `smtp_delivery_status_filter` in main.cf for every smtp(8) transport
    /// instead of only on the transports bound to the sender's IP.
    pub status_filter_global: bool,
}

impl Default for PostfixOptions {
    fn default() -> Self {
        PostfixOptions {
            map_directory: "${config_directory}".to_string(),
            transport_map_type: MapType::Texthash,
            route_service_host: "mf-route-{route}.{namespace}.svc".to_string(),
            route_service_port: 25,
            route_service_ports: BTreeMap::new(),
            direct_nexthop: None,
            status_filter_global: false,
        }
    }
}

/// One sender: a pod of `pool` (in `namespace`) sending from `ip`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sender {
    pub namespace: String,
    pub pool: String,
    pub ip: String,
    /// What the pool says about binding, HELO and intake.
    pub settings: SenderSettings,
}

/// The files one sender needs. `main_cf` and `master_cf` are fragments to
/// append to the sender's own main.cf and master.cf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostfixFiles {
    pub main_cf: String,
    pub master_cf: String,
    /// Content of [`TRANSPORT_FILE`].
    pub transport: String,
    /// Content of [`STATUS_FILTER_FILE`].
    pub status_filter: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PostfixError {
    #[error("sender IP {ip:?} of pool {namespace}/{pool} is not an IPv4 or IPv6 address; fix spec.ips of that SenderPool")]
    InvalidSourceIp {
        namespace: String,
        pool: String,
        ip: String,
    },
    #[error("route {namespace}/{route}: its Service host {host:?} (from route_service_host {template:?}) is not a valid host name; use DNS-label names")]
    InvalidServiceHost {
        namespace: String,
        route: String,
        host: String,
        template: String,
    },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("option {option} = {value:?} cannot be written into a Postfix file: {fix}")]
    InvalidOption {
        option: &'static str,
        value: String,
        fix: &'static str,
    },
}

/// The block-reply status filter. Postfix queries it with
/// `<enhanced status> <text>`, the text of a remote reply being
/// `host MX[ADDR] said: <reply> (in reply to <COMMAND> command)`; a conclusive
/// IP block keeps its text and gets the same status with a leading 4.
pub fn status_filter() -> String {
    let rules: [(&str, &str); 7] = [
        (
            "Microsoft: 5.7.606-5.7.649 banned sending IP, 5.7.511 banned sender",
            r"/^5(\.7\.(60[6-9]|6[1-4][0-9]|511) .*)$/",
        ),
        (
            "The same codes when the server put another enhanced status first",
            r"/^5(\.[0-9]+\.[0-9]+ .*[^0-9.]5\.7\.(60[6-9]|6[1-4][0-9]|511)([^0-9].*)?)$/",
        ),
        (
            "Microsoft consumer block list: S3140, S3150",
            r"/^5(\.[0-9]+\.[0-9]+ .*\((S3140|S3150)\).*)$/",
        ),
        (
            "Yahoo: TSS09/TSS11 IP permanently deferred, BL21/BL23 IP on a Spamhaus list",
            r"/^5(\.[0-9]+\.[0-9]+ .*\[(TSS09|TSS11|BL21|BL23)\].*)$/",
        ),
        (
            "Apple: 5.7.0 Blocked - see ...dnsbl-lookup",
            r"/^5(\.7\.0 .*Blocked - see .*)$/",
        ),
        (
            "A DNS block list reject naming the zone",
            r"/^5(\.[0-9]+\.[0-9]+ .* blocked using .*)$/",
        ),
        (
            "Barracuda reputation list",
            r"/^5(\.[0-9]+\.[0-9]+ .*listed in the RBL at .*)$/",
        ),
    ];
    let mut out = String::new();
    out.push_str("# mailfleet block-reply filter (smtp_delivery_status_filter, regexp: table).\n");
    out.push_str("# Postfix looks up \"<enhanced status> <text>\", for example\n");
    out.push_str("#   5.7.606 host mx.example[192.0.2.1] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]\n");
    out.push_str(
        "# A conclusive IP block is deferred (4.x.x) instead of bounced, so the message is\n",
    );
    out.push_str("# retried through the route mailfleet rewrites around the blocked IP.\n");
    for (why, pattern) in rules {
        let _ = writeln!(out, "# {why}\n{pattern}\t4$1");
    }
    out
}

/// `mf-203-0-113-10`: the part of transport names that names the source IP.
pub fn ip_slug(ip: IpAddr) -> String {
    format!("mf-{}", ip.to_string().replace(['.', ':'], "-"))
}

/// The name of the transport that sends `route` from `ip`.
pub fn transport_name(ip: IpAddr, route: &str) -> String {
    let route_slug: String = route
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{}-{}", ip_slug(ip), route_slug)
}

/// The Postfix rate delay of a transport that sends alone at most `cap`
/// messages per hour: the longest whole-second spacing that still reaches the
/// cap (0 above 3,600/h, or when uncapped), rounded down. What keeps the cap
/// when the agent does not pace; a pacing agent sets it to 0 and keeps the
/// exact count ([`super::caps`]).
pub fn rate_delay_seconds(cap: Option<i64>) -> u64 {
    ReplicaShare::new(cap, 1).map_or(0, |s| s.rate_delay_seconds())
}

/// Names from manifests, made safe for one line of a Postfix file: anything but
/// visible ASCII becomes `?`, so a stray newline cannot add a map entry.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// How many left-out entries a comment names before it only counts them.
const SHADOWED_SHOWN: usize = 20;

/// What a pod does with one route's mail.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Direct {
        transport: String,
        hourly_cap: Option<i64>,
    },
    RouteService {
        host: String,
        port: u16,
    },
    Relay {
        host: String,
        port: u16,
        login: bool,
    },
    Defer,
}

impl Action {
    fn describe(&self) -> String {
        match self {
            Action::Direct {
                hourly_cap: Some(cap),
                ..
            } => format!("this IP sends directly, at most {cap} per hour"),
            Action::Direct {
                hourly_cap: None, ..
            } => "this IP sends directly".to_string(),
            Action::RouteService { host, port: 25 } => {
                format!("this IP may not send; handed to the route Service {host}")
            }
            Action::RouteService { host, port } => {
                format!("this IP may not send; handed to the route Service {host}:{port}")
            }
            Action::Relay {
                host,
                port,
                login: false,
            } => format!("carried by the relay {host}:{port}"),
            Action::Relay { host, port, .. } => {
                format!("carried by the relay {host}:{port}, logged in over TLS")
            }
            Action::Defer => "no IP may send; mail stays queued".to_string(),
        }
    }
}

struct PodRoute<'a> {
    route: &'a RouteResult,
    action: Action,
    value: String,
}

/// Renders the Postfix files of one sender alone on its IP, with the default
/// pool settings ([`render_sender_with`] takes the pool's).
pub fn render_sender(
    table: &RouteTable,
    sender: &Sender,
    known_domains: &BTreeMap<String, Vec<String>>,
    options: &PostfixOptions,
) -> Result<PostfixFiles, PostfixError> {
    render_sender_with(
        table,
        sender,
        known_domains,
        options,
        &SendingSettings::default(),
    )
}

/// Renders the Postfix files of one sender, with its pool's connection limits
/// and queue lifetimes and the number of ready replicas sharing its IP.
pub fn render_sender_with(
    table: &RouteTable,
    sender: &Sender,
    known_domains: &BTreeMap<String, Vec<String>>,
    options: &PostfixOptions,
    settings: &SendingSettings,
) -> Result<PostfixFiles, PostfixError> {
    let ip = sender_ip(sender)?;
    check_options(options)?;
    sender.settings.check(&sender.ip)?;
    let pod_routes = pod_routes(table, sender, ip, options)?;
    let transport = transport_map(ip, sender, &pod_routes, known_domains);
    let filter_table = format!("regexp:{}/{STATUS_FILTER_FILE}", options.map_directory);
    let mut main_cf = main_cf_head(ip, sender, options, settings, &filter_table);
    let master_cf = master_cf_transports(
        ip,
        sender,
        &pod_routes,
        options,
        settings,
        &filter_table,
        &mut main_cf,
    );
    Ok(PostfixFiles {
        main_cf,
        master_cf,
        transport,
        status_filter: status_filter(),
    })
}

fn sender_ip(sender: &Sender) -> Result<IpAddr, PostfixError> {
    sender
        .ip
        .trim()
        .parse()
        .map_err(|_| PostfixError::InvalidSourceIp {
            namespace: sender.namespace.clone(),
            pool: sender.pool.clone(),
            ip: sender.ip.clone(),
        })
}

/// The transport map: each route's keys under a comment naming the route,
/// then the entries left out and why.
fn transport_map(
    ip: IpAddr,
    sender: &Sender,
    pod_routes: &[PodRoute<'_>],
    known_domains: &BTreeMap<String, Vec<String>>,
) -> String {
    let mut transport = String::new();
    let _ = writeln!(
        transport,
        "# mailfleet transport map for {} (pool {}/{}); generated, do not edit.",
        ip,
        printable(&sender.namespace),
        printable(&sender.pool)
    );
    let entries = collect_entries(pod_routes, known_domains);
    let mut keys_of: Vec<Vec<&str>> = vec![Vec::new(); pod_routes.len()];
    for (key, winner) in &entries.winners {
        keys_of[*winner].push(key);
    }
    for (pod_route, keys) in pod_routes.iter().zip(keys_of) {
        let route = pod_route.route;
        let _ = writeln!(
            transport,
            "\n# route {} (provider {}, mode {}): {}",
            printable(&route.key.to_string()),
            printable(&route.provider),
            super::model::mode_name(route.mode),
            pod_route.action.describe()
        );
        for key in keys {
            let _ = writeln!(transport, "{key}\t{}", pod_route.value);
        }
    }
    write_left_out_entries(&mut transport, pod_routes, &entries);
    transport
}

/// Comments on the keys a route lost to another and the known domains that
/// are not domain names, so a reader of the map sees why they are missing.
fn write_left_out_entries(transport: &mut String, pod_routes: &[PodRoute<'_>], entries: &Entries) {
    if entries.shadowed.is_empty() && entries.invalid.is_empty() {
        return;
    }
    transport.push_str("\n# entries left out\n");
    let mut grouped: BTreeMap<(usize, usize), Vec<&str>> = BTreeMap::new();
    for (key, loser, winner) in &entries.shadowed {
        grouped.entry((*loser, *winner)).or_default().push(key);
    }
    for ((loser, winner), keys) in grouped {
        let shown: Vec<&str> = keys.iter().take(SHADOWED_SHOWN).copied().collect();
        let more = keys.len().saturating_sub(SHADOWED_SHOWN);
        let _ = writeln!(
            transport,
            "# route {} also matches {} entr{} that route {} serves first: {}{}",
            printable(&pod_routes[loser].route.key.to_string()),
            keys.len(),
            if keys.len() == 1 { "y" } else { "ies" },
            printable(&pod_routes[winner].route.key.to_string()),
            shown.join(" "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    for (provider, raw) in &entries.invalid {
        let _ = writeln!(
            transport,
            "# known domain {} of provider {} is not a domain name",
            printable(raw),
            printable(provider)
        );
    }
}

/// main.cf's settings for the whole sender; the per-transport limits follow
/// ([`master_cf_transports`]).
fn main_cf_head(
    ip: IpAddr,
    sender: &Sender,
    options: &PostfixOptions,
    settings: &SendingSettings,
    filter_table: &str,
) -> String {
    let mut main_cf = String::new();
    let _ = writeln!(
        main_cf,
        "# mailfleet settings for {ip} (pool {}/{})",
        printable(&sender.namespace),
        printable(&sender.pool)
    );
    let _ = writeln!(
        main_cf,
        "transport_maps = {}:{}/{TRANSPORT_FILE}",
        options.transport_map_type.as_str(),
        options.map_directory
    );
    main_cf.push_str(&sender.settings.main_cf());
    if options.status_filter_global {
        let _ = writeln!(main_cf, "smtp_delivery_status_filter = {filter_table}");
    }
    write_queue_lifetimes(&mut main_cf, settings);
    main_cf
}

/// master.cf: one smtp transport bound to the IP per direct route, and the
/// relay transport when a relay needs a login. Each transport's limits go
/// into master.cf and `main_cf`.
fn master_cf_transports(
    ip: IpAddr,
    sender: &Sender,
    pod_routes: &[PodRoute<'_>],
    options: &PostfixOptions,
    settings: &SendingSettings,
    filter_table: &str,
    main_cf: &mut String,
) -> String {
    let mut master_cf = String::new();
    let _ = writeln!(
        master_cf,
        "# mailfleet transports bound to {ip} (pool {}/{})",
        printable(&sender.namespace),
        printable(&sender.pool)
    );
    let (bind_parameter, protocols) = match ip {
        IpAddr::V4(_) => ("smtp_bind_address", "ipv4"),
        IpAddr::V6(_) => ("smtp_bind_address6", "ipv6"),
    };
    for pod_route in pod_routes {
        let Action::Direct {
            transport: name,
            hourly_cap,
        } = &pod_route.action
        else {
            continue;
        };
        let cap_text =
            hourly_cap.map_or("uncapped".to_string(), |c| format!("at most {c} per hour"));
        let _ = writeln!(
            master_cf,
            "# route {} ({}), {cap_text}",
            printable(&pod_route.route.key.to_string()),
            printable(&pod_route.route.provider)
        );
        let limits = settings.limits_for(&pod_route.route.provider, &pod_route.route.connections);
        let max_processes = replica_connections(limits.max_connections, settings.ready_replicas);
        let _ = writeln!(master_cf, "{name} unix - - n - {max_processes} smtp");
        let _ = writeln!(master_cf, "  -o syslog_name=postfix/{name}");
        if sender.settings.binds() {
            let _ = writeln!(master_cf, "  -o {bind_parameter}={ip}");
        }
        // Without this an IPv4-bound transport would reach IPv6 MX hosts from
        // another source address, outside this IP's reputation.
        let _ = writeln!(master_cf, "  -o inet_protocols={protocols}");
        if !options.status_filter_global {
            let _ = writeln!(master_cf, "  -o smtp_delivery_status_filter={filter_table}");
        }
        write_transport_limits(
            &mut master_cf,
            main_cf,
            name,
            *hourly_cap,
            &limits,
            settings,
        );
    }
    if pod_routes
        .iter()
        .any(|r| matches!(r.action, Action::Relay { login: true, .. }))
    {
        master_cf.push_str(&sender_settings::relay_transport(&options.map_directory));
    }
    master_cf
}

/// How long mail waits in the queue: a route that defers keeps its mail here
/// for the whole of a block, so the lifetime is a decision (`spec.queue`).
fn write_queue_lifetimes(main_cf: &mut String, settings: &SendingSettings) {
    let _ = writeln!(
        main_cf,
        "maximal_queue_lifetime = {}s",
        settings.queue.maximal_seconds
    );
    let _ = writeln!(
        main_cf,
        "bounce_queue_lifetime = {}s",
        settings.queue.bounce_seconds
    );
}

/// The rate and connection limits of one transport. The process limit in
/// master.cf (the `maxproc` column) bounds the transport's simultaneous
/// connections; the destination concurrency limit says the same to the queue
/// manager; the rate delay spaces deliveries when this replica's share is
/// one a second or slower and the agent does not pace (a pacing agent sets it
/// to 0 and keeps the exact count).
fn write_transport_limits(
    master_cf: &mut String,
    main_cf: &mut String,
    name: &str,
    hourly_cap: Option<i64>,
    limits: &ResolvedLimits,
    settings: &SendingSettings,
) {
    let connections = replica_connections(limits.max_connections, settings.ready_replicas);
    let _ = writeln!(
        master_cf,
        "  -o smtp_connection_reuse_count_limit={}",
        limits.max_messages_per_connection
    );
    let share = ReplicaShare::new(hourly_cap, settings.ready_replicas);
    let _ = writeln!(
        main_cf,
        "{name}_transport_rate_delay = {}s",
        share.map_or(0, |s| s.rate_delay_seconds())
    );
    let _ = writeln!(
        main_cf,
        "{name}_destination_concurrency_limit = {connections}"
    );
    let _ = writeln!(
        main_cf,
        "{name}_destination_recipient_limit = {}",
        limits.max_recipients_per_message
    );
}

fn check_options(options: &PostfixOptions) -> Result<(), PostfixError> {
    let unsafe_text = |s: &str| {
        s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    };
    if unsafe_text(&options.map_directory) {
        return Err(PostfixError::InvalidOption {
            option: "map_directory",
            value: options.map_directory.clone(),
            fix: "give a directory path without blanks or commas",
        });
    }
    if let Some(hop) = &options.direct_nexthop {
        if unsafe_text(hop) {
            return Err(PostfixError::InvalidOption {
                option: "direct_nexthop",
                value: hop.clone(),
                fix: "give one next hop such as [127.0.0.1]:2525, without blanks or commas",
            });
        }
    }
    if let Some((route, _)) = options
        .route_service_ports
        .iter()
        .find(|(_, port)| **port == 0)
    {
        return Err(PostfixError::InvalidOption {
            option: "route_service_ports",
            value: format!("{route} = 0"),
            fix: "give each route's hand-off port a TCP port above 0",
        });
    }
    if options.route_service_port == 0 {
        return Err(PostfixError::InvalidOption {
            option: "route_service_port",
            value: "0".to_string(),
            fix: "give the TCP port of the route Services, usually 25",
        });
    }
    Ok(())
}

/// The routes a pod of `sender.pool` sees mail of, its own pool's first.
fn pod_routes<'a>(
    table: &'a RouteTable,
    sender: &Sender,
    ip: IpAddr,
    options: &PostfixOptions,
) -> Result<Vec<PodRoute<'a>>, PostfixError> {
    let in_namespace = table
        .routes
        .iter()
        .filter(|r| r.key.namespace == sender.namespace);
    let own = in_namespace.clone().filter(|r| r.pool == sender.pool);
    let carried = in_namespace.filter(|r| {
        r.pool != sender.pool && r.serving_pool.as_deref() == Some(sender.pool.as_str())
    });
    let my_key = lookup_key(&ip.to_string());
    let mut used_names: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for route in own.chain(carried) {
        let mine = route
            .targets
            .iter()
            .find(|t| t.pool == sender.pool && lookup_key(&t.ip) == my_key);
        let action = match (route.mode, mine) {
            // A target sends directly in every mode: in Relay and Defer it is a
            // Probing IP of the route's own pool keeping its trickle going.
            (_, Some(target)) => {
                let base = transport_name(ip, &route.key.name);
                let mut name = base.clone();
                let mut n = 2;
                while !used_names.insert(name.clone()) {
                    name = format!("{base}-{n}");
                    n += 1;
                }
                Action::Direct {
                    transport: name,
                    hourly_cap: target.hourly_cap,
                }
            }
            (RouteMode::Primary | RouteMode::FallbackPool, None) => {
                let host = options
                    .route_service_host
                    .replace("{route}", &route.key.name)
                    .replace("{namespace}", &route.key.namespace);
                if !is_valid_host(&host) {
                    return Err(PostfixError::InvalidServiceHost {
                        namespace: route.key.namespace.clone(),
                        route: route.key.name.clone(),
                        host,
                        template: options.route_service_host.clone(),
                    });
                }
                let port = options
                    .route_service_ports
                    .get(&route.key)
                    .copied()
                    .unwrap_or(options.route_service_port);
                Action::RouteService { host, port }
            }
            (RouteMode::Relay, _) => match &route.relay {
                Some(relay) => Action::Relay {
                    host: relay.host.clone(),
                    port: relay.port,
                    login: relay.credentials_secret.is_some(),
                },
                None => Action::Defer,
            },
            (RouteMode::Defer, _) => Action::Defer,
        };
        let value = match &action {
            Action::Direct { transport, .. } => format!(
                "{transport}:{}",
                options.direct_nexthop.as_deref().unwrap_or("")
            ),
            Action::RouteService { host, port: 25 } => format!("smtp:[{host}]"),
            Action::RouteService { host, port } => format!("smtp:[{host}]:{port}"),
            Action::Relay {
                host,
                port,
                login: false,
            } => format!("relay:{}:{port}", bracket_host(host)),
            Action::Relay { host, port, .. } => {
                format!("{RELAY_TRANSPORT}:{}:{port}", bracket_host(host))
            }
            Action::Defer => format!(
                "retry:4.7.0 mailfleet route {} defers mail until a source IP may send to {}",
                printable(&route.key.to_string()),
                printable(&route.provider)
            ),
        };
        out.push(PodRoute {
            route,
            action,
            value,
        });
    }
    Ok(out)
}

/// What one sender does with one route's mail: the public view of the
/// decisions the transport map is written from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderAction {
    /// This IP is a target: it sends through its own transport, at most
    /// `hourly_cap` messages per hour (`None`: uncapped).
    Direct {
        transport: String,
        hourly_cap: Option<i64>,
    },
    /// This IP may not send: the mail goes to the route's Service.
    RouteService { host: String, port: u16 },
    /// The route's relay carries the mail.
    Relay {
        host: String,
        port: u16,
        credentials_secret: Option<String>,
    },
    /// No IP may send: the mail stays queued.
    Defer,
}

/// One route a sender sees mail of, and what it does with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderRoute<'a> {
    pub route: &'a RouteResult,
    pub action: SenderAction,
}

/// The routes a pod of `sender` sees mail of (its own pool's first, then the
/// routes its pool carries as a fallback) with what it does for each: the same
/// decisions [`render_sender`] writes into the transport map.
pub fn sender_routes<'a>(
    table: &'a RouteTable,
    sender: &Sender,
    options: &PostfixOptions,
) -> Result<Vec<SenderRoute<'a>>, PostfixError> {
    let ip: IpAddr = sender
        .ip
        .trim()
        .parse()
        .map_err(|_| PostfixError::InvalidSourceIp {
            namespace: sender.namespace.clone(),
            pool: sender.pool.clone(),
            ip: sender.ip.clone(),
        })?;
    check_options(options)?;
    Ok(pod_routes(table, sender, ip, options)?
        .into_iter()
        .map(|pod_route| {
            let action = match pod_route.action {
                Action::Direct {
                    transport,
                    hourly_cap,
                } => SenderAction::Direct {
                    transport,
                    hourly_cap,
                },
                Action::RouteService { host, port } => SenderAction::RouteService { host, port },
                Action::Relay { host, port, .. } => SenderAction::Relay {
                    host,
                    port,
                    credentials_secret: pod_route
                        .route
                        .relay
                        .as_ref()
                        .and_then(|r| r.credentials_secret.clone()),
                },
                Action::Defer => SenderAction::Defer,
            };
            SenderRoute {
                route: pod_route.route,
                action,
            }
        })
        .collect())
}

/// `[host]` disables MX lookups; an IPv6 literal is written `[ipv6:...]`.
fn bracket_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[ipv6:{v6}]"),
        _ => format!("[{host}]"),
    }
}

struct Entries {
    /// Table key to the index (in the pod's route list) of the route it goes to.
    winners: BTreeMap<String, usize>,
    /// (key, route left out, route that won).
    shadowed: Vec<(String, usize, usize)>,
    /// (provider, text) of known domains that are not domain names.
    invalid: BTreeSet<(String, String)>,
}

/// Every table key with the route it goes to. Explicit domains outrank learned
/// ones, which outrank a provider's well-known domains; at the same rank the
/// pod's own pool's routes come first, then route order.
fn collect_entries(
    pod_routes: &[PodRoute<'_>],
    known_domains: &BTreeMap<String, Vec<String>>,
) -> Entries {
    let mut candidates: Vec<(u8, usize, String)> = Vec::new();
    let mut invalid = BTreeSet::new();
    for (index, pod_route) in pod_routes.iter().enumerate() {
        let matcher = &pod_route.route.matcher;
        for domain in &matcher.domains {
            candidates.push((0, index, domain.clone()));
        }
        for suffix in &matcher.domain_suffixes {
            match suffix.strip_prefix('.') {
                Some(_) => candidates.push((0, index, suffix.clone())),
                None => {
                    // Written without a leading dot: the domain itself and its subdomains.
                    candidates.push((0, index, suffix.clone()));
                    candidates.push((0, index, format!(".{suffix}")));
                }
            }
        }
        for domain in &pod_route.route.learned_domains {
            candidates.push((1, index, domain.clone()));
        }
        if !matcher.mx_host_suffixes.is_empty() {
            for raw in known_domains
                .get(&pod_route.route.provider)
                .into_iter()
                .flatten()
            {
                match normalise_domain(raw, DomainForm::Exact) {
                    Some(domain) => candidates.push((2, index, domain)),
                    None => {
                        invalid.insert((pod_route.route.provider.clone(), raw.clone()));
                    }
                }
            }
        }
        if matcher.default {
            candidates.push((3, index, "*".to_string()));
        }
    }
    candidates.sort();
    let mut winners: BTreeMap<String, usize> = BTreeMap::new();
    let mut shadowed = Vec::new();
    for (_, index, key) in candidates {
        match winners.get(&key) {
            None => {
                winners.insert(key, index);
            }
            Some(&winner) if winner != index => shadowed.push((key, index, winner)),
            Some(_) => {}
        }
    }
    shadowed.sort();
    shadowed.dedup();
    Entries {
        winners,
        shadowed,
        invalid,
    }
}

/// Every sender of the given pools, sorted by namespace, pool and address.
pub fn senders_of(pools: &[SenderPool]) -> Vec<Sender> {
    let mut senders: BTreeSet<Sender> = BTreeSet::new();
    for pool in pools {
        let Some(name) = &pool.metadata.name else {
            continue;
        };
        let namespace = pool
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        for ip in &pool.spec.ips {
            senders.insert(Sender {
                namespace: namespace.clone(),
                pool: name.clone(),
                ip: ip.address.trim().to_string(),
                settings: SenderSettings::of(pool, &ip.address),
            });
        }
    }
    senders.into_iter().collect()
}

/// The sender of `ip` in pool `namespace/pool`, with that pool's settings
/// (default settings when the pools do not list it).
pub fn sender_in(pools: &[SenderPool], namespace: &str, pool: &str, ip: &str) -> Sender {
    let settings = pools
        .iter()
        .find(|p| {
            p.metadata.name.as_deref() == Some(pool)
                && p.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE) == namespace
        })
        .map(|p| SenderSettings::of(p, ip))
        .unwrap_or_default();
    Sender {
        namespace: namespace.to_string(),
        pool: pool.to_string(),
        ip: ip.to_string(),
        settings,
    }
}

/// The files of every sender of the fleet as one text, section by section (for
/// `mailfleet routes --format postfix`). The status filter, the same for all, comes
/// once at the end. Senders whose address is not an IP are listed as skipped.
pub fn render_fleet(
    table: &RouteTable,
    pools: &[SenderPool],
    known_domains: &BTreeMap<String, Vec<String>>,
    options: &PostfixOptions,
) -> Result<String, PostfixError> {
    let mut out = String::new();
    for sender in senders_of(pools) {
        let _ = writeln!(
            out,
            "##### sender {} of pool {}/{}",
            printable(&sender.ip),
            printable(&sender.namespace),
            printable(&sender.pool)
        );
        match render_sender(table, &sender, known_domains, options) {
            Ok(files) => {
                for (name, body) in [
                    ("main.cf (append)", &files.main_cf),
                    ("master.cf (append)", &files.master_cf),
                    (TRANSPORT_FILE, &files.transport),
                ] {
                    let _ = writeln!(out, "### {name}\n{body}");
                }
            }
            Err(PostfixError::InvalidSourceIp { .. }) => {
                out.push_str("### skipped: the address is not an IP address\n\n");
            }
            Err(other) => return Err(other),
        }
    }
    let _ = writeln!(
        out,
        "##### {STATUS_FILTER_FILE} (every sender)\n{}",
        status_filter()
    );
    let _ = writeln!(
        out,
        "##### {} (every sender)\n{}",
        sender_settings::RELAY_STATUS_FILTER_FILE,
        sender_settings::relay_status_filter()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use crate::routing::compile;
    use crate::routing::example::{incident_fleet, known_domains, pair, set_pair};

    fn now() -> jiff::Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    fn sender(pool: &str, ip: &str) -> Sender {
        Sender {
            namespace: "mail".into(),
            pool: pool.into(),
            ip: ip.into(),
            settings: SenderSettings::default(),
        }
    }

    fn render(table: &RouteTable, sender: &Sender) -> PostfixFiles {
        render_sender(table, sender, &known_domains(), &PostfixOptions::default()).unwrap()
    }

    fn entry<'a>(transport: &'a str, key: &str) -> Option<&'a str> {
        transport
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('\t')))
    }

    #[test]
    fn a_blocked_ip_hands_its_provider_to_the_route_service_and_keeps_the_others() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let files = render(&table, &sender("bulk", "203.0.113.13"));
        let t = &files.transport;
        assert_eq!(
            entry(t, "hotmail.com"),
            Some("smtp:[mf-route-microsoft.mail.svc]")
        );
        assert_eq!(
            entry(t, "acclaim.jp"),
            Some("smtp:[mf-route-microsoft-365.mail.svc]")
        );
        assert_eq!(
            entry(t, "passport.com"),
            Some("smtp:[mf-route-microsoft-365.mail.svc]"),
            "known domains of an MX route"
        );
        assert_eq!(entry(t, "gmail.com"), Some("mf-203-0-113-13-google:"));
        assert_eq!(
            entry(t, "yahoo.co.jp"),
            Some("mf-203-0-113-13-yahoo-japan:")
        );
        assert_eq!(entry(t, "*"), Some("mf-203-0-113-13-default:"));
        assert_eq!(
            t.lines().filter(|l| l.starts_with("hotmail.com\t")).count(),
            1,
            "one entry per key"
        );
        assert!(t.contains("# route mail/microsoft-365 also matches 16 entries that route mail/microsoft serves first"));
        assert!(
            !files.master_cf.contains("microsoft"),
            "no transport for a blocked provider:\n{}",
            files.master_cf
        );
        assert!(files.master_cf.contains(
            "mf-203-0-113-13-google unix - - n - 20 smtp\n  -o syslog_name=postfix/mf-203-0-113-13-google\n  -o smtp_bind_address=203.0.113.13\n  -o inet_protocols=ipv4\n  -o smtp_delivery_status_filter=regexp:${config_directory}/mailfleet_status_filter\n  -o smtp_connection_reuse_count_limit=100\n"
        ), "{}", files.master_cf);
        assert!(files
            .main_cf
            .contains("transport_maps = texthash:${config_directory}/mailfleet_transport\n"));
        assert!(files
            .main_cf
            .contains("mf-203-0-113-13-google_transport_rate_delay = 0s\nmf-203-0-113-13-google_destination_concurrency_limit = 20\nmf-203-0-113-13-google_destination_recipient_limit = 100\n"));
        assert!(!files.main_cf.contains("smtp_delivery_status_filter"));
    }

    #[test]
    fn an_allowed_ip_sends_directly_with_a_delay_from_its_cap() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let files = render(&table, &sender("bulk", "203.0.113.10"));
        assert_eq!(
            entry(&files.transport, "hotmail.com"),
            Some("mf-203-0-113-10-microsoft:")
        );
        assert_eq!(
            entry(&files.transport, "acclaim.jp"),
            Some("mf-203-0-113-10-microsoft-365:")
        );
        // microsoft-365 shares 2000 per hour over 7 IPs: 286 per hour, one every
        // 12.6 s: Postfix spaces them 12 s apart and the pacer keeps the count.
        assert!(
            files
                .main_cf
                .contains("mf-203-0-113-10-microsoft-365_transport_rate_delay = 12s\n"),
            "{}",
            files.main_cf
        );
    }

    #[test]
    fn fallback_relay_and_defer_modes_render_their_next_hop() {
        let (mut pools, routes) = incident_fleet(now());
        let bulk: Vec<String> = pools[0]
            .spec
            .ips
            .iter()
            .map(|i| i.address.clone())
            .collect();
        for ip in &bulk {
            set_pair(
                &mut pools[0],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
            set_pair(
                &mut pools[0],
                ip,
                pair("yahoo-japan", ReputationState::Blocked, 0, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let files = render(&table, &sender("bulk", "203.0.113.10"));
        assert_eq!(
            entry(&files.transport, "hotmail.com"),
            Some("smtp:[mf-route-microsoft.mail.svc]")
        );
        assert_eq!(
            entry(&files.transport, "yahoo.co.jp"),
            Some("retry:4.7.0 mailfleet route mail/yahoo-japan defers mail until a source IP may send to yahoo-japan")
        );
        // The reserve pool now carries the microsoft routes: its pods send them directly.
        let reserve = render(&table, &sender("reserve", "198.51.100.20"));
        assert_eq!(
            entry(&reserve.transport, "hotmail.com"),
            Some("mf-198-51-100-20-microsoft:")
        );
        assert!(
            reserve
                .main_cf
                .contains("mf-198-51-100-20-microsoft_transport_rate_delay = 92s\n"),
            "{}",
            reserve.main_cf
        );
        assert_eq!(
            entry(&reserve.transport, "gmail.com"),
            None,
            "routes the pool does not carry are not its business"
        );

        for ip in ["198.51.100.20", "198.51.100.21"] {
            set_pair(
                &mut pools[1],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let files = render(&table, &sender("bulk", "203.0.113.10"));
        // The relay names a credentialsSecret: the transport that logs in over TLS.
        assert_eq!(
            entry(&files.transport, "hotmail.com"),
            Some("mf-relay:[smtp.relay.example]:587")
        );
        assert!(files.master_cf.contains("\nmf-relay unix - - n - - smtp\n  -o syslog_name=postfix/mf-relay\n  -o smtp_sasl_auth_enable=yes\n  -o smtp_sasl_password_maps=hash:${config_directory}/mailfleet_sasl_passwd\n"), "{}", files.master_cf);
        assert!(files
            .master_cf
            .contains("  -o smtp_tls_security_level=encrypt\n"));
        assert!(files
            .master_cf
            .contains("  -o smtp_sasl_auth_soft_bounce=yes\n"));
        assert!(entry(&files.transport, "acclaim.jp")
            .unwrap()
            .starts_with("retry:4.7.0 "));
        // A relay without credentials is the plain relay transport.
        let mut anonymous = routes.clone();
        for route in &mut anonymous {
            for fallback in &mut route.spec.fallback {
                if let Some(relay) = &mut fallback.relay {
                    relay.credentials_secret = None;
                }
            }
        }
        let table = compile(&pools, &anonymous, now());
        let files = render(&table, &sender("bulk", "203.0.113.10"));
        assert_eq!(
            entry(&files.transport, "hotmail.com"),
            Some("relay:[smtp.relay.example]:587")
        );
        assert!(!files.master_cf.contains("mf-relay"));
    }

    #[test]
    fn helo_name_bind_mode_and_intake_come_from_the_pool() {
        let (mut pools, routes) = incident_fleet(now());
        pools[0].spec.ips[0].helo_name = Some("mta10.mail.example.net".into());
        pools[0].spec.intake.allowed_cidrs = vec!["10.42.0.0/16".into()];
        let table = compile(&pools, &routes, now());
        let bulk = senders_of(&pools);
        let first = bulk.iter().find(|s| s.ip == "203.0.113.10").unwrap();
        let files = render(&table, first);
        assert!(
            files
                .main_cf
                .contains("\nsmtp_helo_name = mta10.mail.example.net\n"),
            "{}",
            files.main_cf
        );
        assert!(files
            .main_cf
            .contains("\nmynetworks = 127.0.0.0/8 [::1]/128 10.42.0.0/16\n"));
        assert!(files
            .master_cf
            .contains("  -o smtp_bind_address=203.0.113.10\n"));
        // Snat: an egress gateway translates, nothing binds.
        pools[0].spec.ip_binding.mode = crate::api::BindMode::Snat;
        let first = sender_in(&pools, "mail", "bulk", "203.0.113.10");
        assert_eq!(
            first.settings.helo_name.as_deref(),
            Some("mta10.mail.example.net")
        );
        let files = render(&table, &first);
        assert!(
            !files.master_cf.contains("smtp_bind_address"),
            "{}",
            files.master_cf
        );
        assert!(files.master_cf.contains("  -o inet_protocols=ipv4\n"));
        // A HELO name that is not a host name is an error naming the field.
        pools[0].spec.ips[0].helo_name = Some("mta 10".into());
        let bad = sender_in(&pools, "mail", "bulk", "203.0.113.10");
        let err = render_sender(&table, &bad, &known_domains(), &PostfixOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("heloName"), "{err}");
    }

    #[test]
    fn a_probing_ip_sends_its_trickle_directly_while_the_others_relay_or_defer() {
        let (mut pools, routes) = incident_fleet(now());
        let bulk: Vec<String> = pools[0]
            .spec
            .ips
            .iter()
            .map(|i| i.address.clone())
            .collect();
        for ip in &bulk {
            set_pair(
                &mut pools[0],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("microsoft", ReputationState::Probing, 2, now()),
        );
        for ip in ["198.51.100.20", "198.51.100.21"] {
            set_pair(
                &mut pools[1],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        assert_eq!(
            table.route("mail", "microsoft").unwrap().mode,
            RouteMode::Relay
        );
        let probing = render(&table, &sender("bulk", "203.0.113.10"));
        assert_eq!(
            entry(&probing.transport, "hotmail.com"),
            Some("mf-203-0-113-10-microsoft:")
        );
        assert!(
            probing
                .main_cf
                .contains("mf-203-0-113-10-microsoft_transport_rate_delay = 18s\n"),
            "{}",
            probing.main_cf
        );
        // microsoft-365 (no relay) defers, except for the probe's trickle.
        assert!(entry(&probing.transport, "acclaim.jp")
            .unwrap()
            .starts_with("mf-203-0-113-10-microsoft-365"));
        let blocked = render(&table, &sender("bulk", "203.0.113.11"));
        assert_eq!(
            entry(&blocked.transport, "hotmail.com"),
            Some("mf-relay:[smtp.relay.example]:587")
        );
        assert!(entry(&blocked.transport, "acclaim.jp")
            .unwrap()
            .starts_with("retry:4.7.0 "));
    }

    #[test]
    fn ipv6_senders_bind_the_v6_address() {
        let (mut pools, routes) = incident_fleet(now());
        pools[0].spec.ips[0].address = "2001:DB8::10".to_string();
        let table = compile(&pools, &routes, now());
        let files = render(&table, &sender("bulk", "2001:db8::10"));
        assert!(
            files
                .master_cf
                .contains("mf-2001-db8--10-google unix - - n - 20 smtp\n"),
            "{}",
            files.master_cf
        );
        assert!(files
            .master_cf
            .contains("  -o smtp_bind_address6=2001:db8::10\n  -o inet_protocols=ipv6\n"));
        assert_eq!(
            entry(&files.transport, "gmail.com"),
            Some("mf-2001-db8--10-google:")
        );
    }

    #[test]
    fn options_change_paths_next_hops_and_filter_scope() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let options = PostfixOptions {
            map_directory: "/etc/postfix/mailfleet".into(),
            transport_map_type: MapType::Hash,
            route_service_host: "{route}.{namespace}.routes.example".into(),
            route_service_port: 2525,
            route_service_ports: BTreeMap::from([(ObjectKey::new("mail", "microsoft-365"), 10026)]),
            direct_nexthop: Some("[127.0.0.1]:2526".into()),
            status_filter_global: true,
        };
        let files = render_sender(
            &table,
            &sender("bulk", "203.0.113.13"),
            &known_domains(),
            &options,
        )
        .unwrap();
        assert_eq!(
            entry(&files.transport, "hotmail.com"),
            Some("smtp:[microsoft.mail.routes.example]:2525")
        );
        assert_eq!(
            entry(&files.transport, "acclaim.jp"),
            Some("smtp:[microsoft-365.mail.routes.example]:10026"),
            "a route's own hand-off port"
        );
        assert_eq!(
            entry(&files.transport, "gmail.com"),
            Some("mf-203-0-113-13-google:[127.0.0.1]:2526")
        );
        assert!(files
            .main_cf
            .contains("transport_maps = hash:/etc/postfix/mailfleet/mailfleet_transport\n"));
        assert!(files.main_cf.contains(
            "smtp_delivery_status_filter = regexp:/etc/postfix/mailfleet/mailfleet_status_filter\n"
        ));
        assert!(!files.master_cf.contains("smtp_delivery_status_filter"));

        let bad = PostfixOptions {
            direct_nexthop: Some("a b".into()),
            ..PostfixOptions::default()
        };
        let err = render_sender(
            &table,
            &sender("bulk", "203.0.113.13"),
            &known_domains(),
            &bad,
        )
        .unwrap_err();
        assert!(err.to_string().contains("direct_nexthop"), "{err}");
        let bad = PostfixOptions {
            route_service_host: "{route} x".into(),
            ..PostfixOptions::default()
        };
        assert!(matches!(
            render_sender(
                &table,
                &sender("bulk", "203.0.113.13"),
                &known_domains(),
                &bad
            ),
            Err(PostfixError::InvalidServiceHost { .. })
        ));
        let err = render_sender(
            &table,
            &sender("bulk", "not-an-ip"),
            &known_domains(),
            &PostfixOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"not-an-ip\""), "{err}");
    }

    #[test]
    fn names_from_manifests_cannot_add_lines_to_a_map() {
        let (pools, mut routes) = incident_fleet(now());
        routes[3].metadata.name = Some("yahoo\n*\tsmtp:[evil.example]".to_string());
        routes[3].spec.provider = "x\ny".to_string();
        let mut pools = pools;
        for ip in pools[0]
            .spec
            .ips
            .iter()
            .map(|i| i.address.clone())
            .collect::<Vec<_>>()
        {
            set_pair(
                &mut pools[0],
                &ip,
                pair("x\ny", ReputationState::Blocked, 0, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let files = render(&table, &sender("bulk", "203.0.113.10"));
        for text in [&files.transport, &files.master_cf, &files.main_cf] {
            for line in text.lines() {
                assert!(
                    !line.contains("evil")
                        || line.starts_with('#')
                        || line.starts_with("yahoo.co.jp\tretry:"),
                    "{line:?}"
                );
            }
        }
        assert_eq!(
            entry(&files.transport, "*"),
            Some("mf-203-0-113-10-default:")
        );
    }

    #[test]
    fn replicas_share_the_cap_and_the_connections_and_the_queue_lives_long() {
        let (mut pools, mut routes) = incident_fleet(now());
        pools[0]
            .spec
            .rate_limits
            .per_provider
            .insert("google".into(), 600);
        pools[0].status.as_mut().unwrap().ips[0].ready_replicas = 3;
        let google = routes
            .iter_mut()
            .find(|r| r.spec.provider == "google")
            .unwrap();
        google.spec.connections = Some(crate::api::ConnectionLimits {
            max_connections: Some(2),
            max_recipients_per_message: Some(25),
            ..Default::default()
        });
        let table = compile(&pools, &routes, now());
        let sender = sender("bulk", "203.0.113.10");
        let settings = SendingSettings::find(&pools, &sender);
        let files = render_sender_with(
            &table,
            &sender,
            &known_domains(),
            &PostfixOptions::default(),
            &settings,
        )
        .unwrap();
        // 600/h over three replicas: 200/h each, one every 18 s.
        let main = &files.main_cf;
        assert!(
            main.contains("mf-203-0-113-10-google_transport_rate_delay = 18s\n"),
            "{main}"
        );
        // Two connections cannot be split three ways: each replica keeps one.
        assert!(
            main.contains("mf-203-0-113-10-google_destination_concurrency_limit = 1\n"),
            "{main}"
        );
        assert!(
            main.contains("mf-203-0-113-10-google_destination_recipient_limit = 25\n"),
            "{main}"
        );
        assert!(files
            .master_cf
            .contains("mf-203-0-113-10-google unix - - n - 1 smtp\n"));
        // Microsoft's built-in limits: 10 connections per IP, 20 messages each.
        assert!(
            main.contains("mf-203-0-113-10-microsoft_destination_concurrency_limit = 3\n"),
            "{main}"
        );
        assert!(files
            .master_cf
            .contains("smtp_connection_reuse_count_limit=20\n"));
        assert!(
            main.contains("maximal_queue_lifetime = 1209600s\nbounce_queue_lifetime = 432000s\n")
        );
    }

    #[test]
    fn rate_delays_round_down_and_zero_means_uncapped() {
        assert_eq!(rate_delay_seconds(None), 0);
        assert_eq!(rate_delay_seconds(Some(0)), 0);
        assert_eq!(rate_delay_seconds(Some(1)), 3600);
        assert_eq!(rate_delay_seconds(Some(39)), 92);
        assert_eq!(rate_delay_seconds(Some(3600)), 1);
        assert_eq!(rate_delay_seconds(Some(10_000)), 0);
    }

    #[test]
    fn the_fleet_text_has_every_sender_once_and_the_filter_once() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let text =
            render_fleet(&table, &pools, &known_domains(), &PostfixOptions::default()).unwrap();
        assert_eq!(text.matches("##### sender ").count(), 10);
        assert_eq!(text.matches("/^5(\\.7\\.(60[6-9]").count(), 1);
        let first = text
            .find("##### sender 198.51.100.20 of pool mail/reserve")
            .unwrap();
        let second = text
            .find("##### sender 203.0.113.10 of pool mail/bulk")
            .unwrap();
        assert!(second < first, "sorted by namespace, pool, address");
        assert_eq!(
            text,
            render_fleet(&table, &pools, &known_domains(), &PostfixOptions::default()).unwrap()
        );
    }
}
