//! Every file of one sender's configuration: the data of its ConfigMap in the
//! operator, its `senders/<ip slug>/` folder in standalone mode, and the
//! `config` of a feedback response.
//!
//! The Postfix files come from [`postfix::render_sender`]; `sender.json`
//! (`mailfleet.io/sender-config/v1`, docs/ROUTE-TABLE.md) says the same thing for
//! programs: what this IP does per route. `config-version` is a digest of every
//! other file, so it changes exactly when one of them changes; nothing in the
//! files depends on the clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::caps::{replica_connections, ReplicaShare};
use super::model::{mode_name, RouteTable};
use super::postfix::{self, sender_routes, PostfixError, PostfixOptions, Sender, SenderAction};
use super::sending::SendingSettings;

/// The main.cf fragment.
pub const MAIN_CF_KEY: &str = "main.cf";
/// The master.cf fragment.
pub const MASTER_CF_KEY: &str = "master.cf";
/// What this IP does per route, as JSON.
pub const SENDER_JSON_KEY: &str = "sender.json";
/// The digest of every other key (the agent reads the same key name).
pub const CONFIG_VERSION_KEY: &str = "config-version";
/// The schema identifier of `sender.json`.
pub const SCHEMA: &str = "mailfleet.io/sender-config/v1";

/// One sender's configuration files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// The value of [`CONFIG_VERSION_KEY`]: `fnv1a64:<16 hex digits>`.
    pub version: String,
    /// Key -> content, [`CONFIG_VERSION_KEY`] included.
    pub files: BTreeMap<String, String>,
}

/// `sender.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderDocument {
    pub schema: String,
    pub namespace: String,
    pub pool: String,
    /// The source IP as the pool's `spec.ips[].address` writes it.
    pub ip: String,
    /// Own pool's routes first, then the routes the pool carries as a fallback,
    /// each group by namespace then name.
    pub routes: Vec<SenderRouteDocument>,
    /// Ready replicas of this IP sharing each route's hourly cap (at least 1).
    #[serde(default = "one")]
    pub ready_replicas: u32,
    /// How long mail may wait in this sender's queue.
    #[serde(default)]
    pub queue: Option<QueueDocument>,
}

fn one() -> u32 {
    1
}

/// The queue lifetimes the sender's Postfix uses, in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDocument {
    pub maximal_lifetime_seconds: i64,
    pub bounce_lifetime_seconds: i64,
}

/// What the sender does with one route's mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderRouteDocument {
    pub namespace: String,
    pub name: String,
    pub provider: String,
    /// The route's own pool.
    pub pool: String,
    /// The route's mode (`Primary`, `FallbackPool`, `Relay`, `Defer`).
    pub mode: String,
    /// `direct`, `route_service`, `relay` or `defer`.
    pub action: String,
    /// `direct`: the Postfix transport bound to this IP.
    pub transport: Option<String>,
    /// `direct`: messages per hour this IP may send on this route.
    pub hourly_cap: Option<i64>,
    /// `direct`: the Postfix rate delay of this replica's share, seconds
    /// rounded down (0 above one message a second, or uncapped).
    pub rate_delay_seconds: Option<u64>,
    /// `direct`: simultaneous connections this replica may hold to the provider.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// `direct`: messages per SMTP connection.
    #[serde(default)]
    pub max_messages_per_connection: Option<u32>,
    /// `direct`: recipients per delivery.
    #[serde(default)]
    pub max_recipients_per_message: Option<u32>,
    /// `route_service` and `relay`: the next hop.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `relay`: the Secret (same namespace) with `username` and `password`.
    pub credentials_secret: Option<String>,
}

/// Every file of one sender's configuration (ConfigMap data / standalone out
/// folder): main.cf, master.cf, mailfleet_transport, mailfleet_status_filter
/// (from [`postfix::render_sender`]), sender.json (what this IP does per route:
/// direct with hourly cap, via route Service, relay, defer; schema
/// `mailfleet.io/sender-config/v1`), and config-version (a stable content
/// digest of all the other keys, so it changes only when they change).
pub fn sender_config(
    table: &RouteTable,
    sender: &postfix::Sender,
    known_domains: &BTreeMap<String, Vec<String>>,
    options: &postfix::PostfixOptions,
) -> Result<SenderConfig, postfix::PostfixError> {
    sender_config_with(
        table,
        sender,
        known_domains,
        options,
        &SendingSettings::default(),
    )
}

/// [`sender_config`] with the sender's pool settings and ready replicas
/// ([`SendingSettings::of_pool`]).
pub fn sender_config_with(
    table: &RouteTable,
    sender: &postfix::Sender,
    known_domains: &BTreeMap<String, Vec<String>>,
    options: &postfix::PostfixOptions,
    settings: &SendingSettings,
) -> Result<SenderConfig, postfix::PostfixError> {
    let postfix_files =
        postfix::render_sender_with(table, sender, known_domains, options, settings)?;
    let document = sender_document_with(table, sender, options, settings)?;
    let mut files = BTreeMap::new();
    files.insert(MAIN_CF_KEY.to_string(), postfix_files.main_cf);
    files.insert(MASTER_CF_KEY.to_string(), postfix_files.master_cf);
    files.insert(postfix::TRANSPORT_FILE.to_string(), postfix_files.transport);
    files.insert(
        postfix::STATUS_FILTER_FILE.to_string(),
        postfix_files.status_filter,
    );
    files.insert(
        super::sender_settings::RELAY_STATUS_FILTER_FILE.to_string(),
        super::sender_settings::relay_status_filter(),
    );
    files.insert(SENDER_JSON_KEY.to_string(), render_document(&document));
    let version = content_digest(&files);
    files.insert(CONFIG_VERSION_KEY.to_string(), version.clone());
    Ok(SenderConfig { version, files })
}

/// The content of `sender.json` for one sender.
pub fn sender_document(
    table: &RouteTable,
    sender: &Sender,
    options: &PostfixOptions,
) -> Result<SenderDocument, PostfixError> {
    sender_document_with(table, sender, options, &SendingSettings::default())
}

/// The content of `sender.json` for one sender with its pool settings.
pub fn sender_document_with(
    table: &RouteTable,
    sender: &Sender,
    options: &PostfixOptions,
    settings: &SendingSettings,
) -> Result<SenderDocument, PostfixError> {
    let routes = sender_routes(table, sender, options)?
        .into_iter()
        .map(|entry| {
            let route = entry.route;
            let mut doc = SenderRouteDocument {
                namespace: route.key.namespace.clone(),
                name: route.key.name.clone(),
                provider: route.provider.clone(),
                pool: route.pool.clone(),
                mode: mode_name(route.mode).to_string(),
                action: String::new(),
                transport: None,
                hourly_cap: None,
                rate_delay_seconds: None,
                max_connections: None,
                max_messages_per_connection: None,
                max_recipients_per_message: None,
                host: None,
                port: None,
                credentials_secret: None,
            };
            match entry.action {
                SenderAction::Direct {
                    transport,
                    hourly_cap,
                } => {
                    doc.action = "direct".to_string();
                    doc.transport = Some(transport);
                    doc.hourly_cap = hourly_cap;
                    doc.rate_delay_seconds = Some(
                        ReplicaShare::new(hourly_cap, settings.ready_replicas)
                            .map_or(0, |s| s.rate_delay_seconds()),
                    );
                    let limits = settings.limits_for(&route.provider, &route.connections);
                    doc.max_connections = Some(replica_connections(
                        limits.max_connections,
                        settings.ready_replicas,
                    ));
                    doc.max_messages_per_connection = Some(limits.max_messages_per_connection);
                    doc.max_recipients_per_message = Some(limits.max_recipients_per_message);
                }
                SenderAction::RouteService { host, port } => {
                    doc.action = "route_service".to_string();
                    doc.host = Some(host);
                    doc.port = Some(port);
                }
                SenderAction::Relay {
                    host,
                    port,
                    credentials_secret,
                } => {
                    doc.action = "relay".to_string();
                    doc.host = Some(host);
                    doc.port = Some(port);
                    doc.credentials_secret = credentials_secret;
                }
                SenderAction::Defer => doc.action = "defer".to_string(),
            }
            doc
        })
        .collect();
    Ok(SenderDocument {
        schema: SCHEMA.to_string(),
        namespace: sender.namespace.clone(),
        pool: sender.pool.clone(),
        ip: sender.ip.trim().to_string(),
        routes,
        ready_replicas: settings.ready_replicas.max(1),
        queue: Some(QueueDocument {
            maximal_lifetime_seconds: settings.queue.maximal_seconds,
            bounce_lifetime_seconds: settings.queue.bounce_seconds,
        }),
    })
}

/// Pretty JSON (two spaces) with a final newline.
pub fn render_document(document: &SenderDocument) -> String {
    // Serialising plain strings, numbers and options cannot fail.
    let mut text = serde_json::to_string_pretty(document).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads `sender.json`, refusing another schema.
pub fn parse_document(text: &str) -> Result<SenderDocument, SenderDocumentError> {
    let document: SenderDocument =
        serde_json::from_str(text).map_err(|e| SenderDocumentError::Json(e.to_string()))?;
    if document.schema != SCHEMA {
        return Err(SenderDocumentError::Schema(document.schema));
    }
    Ok(document)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SenderDocumentError {
    #[error("sender.json is not valid JSON of the sender config: {0}")]
    Json(String),
    #[error("sender.json has schema {0:?}; this reader reads {SCHEMA:?}")]
    Schema(String),
}

/// FNV-1a (64 bit) over every key and content, each followed by a NUL: stable
/// across builds and platforms, unlike the standard library's hasher.
pub(crate) fn content_digest(files: &BTreeMap<String, String>) -> String {
    let hash = crate::digest::fnv1a_parts(
        files
            .iter()
            .flat_map(|(key, content)| [key.as_bytes(), content.as_bytes()]),
    );
    format!("fnv1a64:{hash:016x}")
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

    fn later() -> jiff::Timestamp {
        "2021-11-05T09:10:00Z".parse().unwrap()
    }

    fn sender(pool: &str, ip: &str) -> Sender {
        Sender {
            namespace: "mail".into(),
            pool: pool.into(),
            ip: ip.into(),
            settings: Default::default(),
        }
    }

    fn config(table: &RouteTable, sender: &Sender) -> SenderConfig {
        sender_config(table, sender, &known_domains(), &PostfixOptions::default()).unwrap()
    }

    #[test]
    fn it_has_every_file_and_the_version_key_holds_the_version() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let c = config(&table, &sender("bulk", "203.0.113.10"));
        let keys: Vec<&str> = c.files.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "config-version",
                "mailfleet_relay_status_filter",
                "mailfleet_status_filter",
                "mailfleet_transport",
                "main.cf",
                "master.cf",
                "sender.json"
            ]
        );
        assert_eq!(c.files[CONFIG_VERSION_KEY], c.version);
        assert!(c.version.starts_with("fnv1a64:") && c.version.len() == 24);
        assert_eq!(CONFIG_VERSION_KEY, crate::agent::config::VERSION_KEY);
        let files = postfix::render_sender(
            &table,
            &sender("bulk", "203.0.113.10"),
            &known_domains(),
            &PostfixOptions::default(),
        )
        .unwrap();
        assert_eq!(c.files["mailfleet_transport"], files.transport);
        assert_eq!(c.files["main.cf"], files.main_cf);
        assert_eq!(c.files["master.cf"], files.master_cf);
        assert_eq!(c.files["mailfleet_status_filter"], files.status_filter);
    }

    #[test]
    fn the_version_changes_only_when_a_file_changes() {
        let (mut pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let first = config(&table, &sender("bulk", "203.0.113.10"));
        // Compiled again later with nothing changed: same bytes, same version.
        let again = config(
            &compile(&pools, &routes, later()),
            &sender("bulk", "203.0.113.10"),
        );
        assert_eq!(first, again);
        // Google blocks this IP: its google route now goes to the route Service.
        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("google", ReputationState::Blocked, 0, now()),
        );
        let table = compile(&pools, &routes, now());
        let blocked = config(&table, &sender("bulk", "203.0.113.10"));
        assert_ne!(first.version, blocked.version);
        assert_ne!(
            first.files["mailfleet_transport"],
            blocked.files["mailfleet_transport"]
        );
        // The reserve pool carries none of bulk's routes before or after: unchanged.
        let reserve_before = config(
            &compile(&incident_fleet(now()).0, &routes, now()),
            &sender("reserve", "198.51.100.20"),
        );
        let reserve_after = config(&table, &sender("reserve", "198.51.100.20"));
        assert_eq!(reserve_before.version, reserve_after.version);
    }

    #[test]
    fn the_digest_covers_every_key_and_the_boundary_between_key_and_content() {
        let mut a = BTreeMap::new();
        a.insert("ab".to_string(), "c".to_string());
        let mut b = BTreeMap::new();
        b.insert("a".to_string(), "bc".to_string());
        assert_ne!(content_digest(&a), content_digest(&b));
        let mut c = a.clone();
        c.insert("sender.json".to_string(), String::new());
        assert_ne!(content_digest(&a), content_digest(&c));
        assert_eq!(content_digest(&a), content_digest(&a.clone()));
        // Pinned: the digest must not change between builds.
        assert_eq!(content_digest(&BTreeMap::new()), "fnv1a64:cbf29ce484222325");
    }

    #[test]
    fn sender_json_says_what_the_ip_does_per_route() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let c = config(&table, &sender("bulk", "203.0.113.13"));
        let doc = parse_document(&c.files[SENDER_JSON_KEY]).unwrap();
        assert_eq!(doc.schema, SCHEMA);
        assert_eq!(
            (doc.pool.as_str(), doc.ip.as_str()),
            ("bulk", "203.0.113.13")
        );
        let route = |name: &str| doc.routes.iter().find(|r| r.name == name).unwrap();
        let microsoft = route("microsoft");
        assert_eq!(microsoft.action, "route_service");
        assert_eq!(
            microsoft.host.as_deref(),
            Some("mf-route-microsoft.mail.svc")
        );
        assert_eq!(microsoft.port, Some(25));
        assert_eq!(microsoft.transport, None);
        let google = route("google");
        assert_eq!(google.action, "direct");
        assert_eq!(google.transport.as_deref(), Some("mf-203-0-113-13-google"));
        assert_eq!(google.hourly_cap, Some(10000));
        // 10,000/h is above one a second: the pacer alone keeps it.
        assert_eq!(google.rate_delay_seconds, Some(0));
        assert_eq!(google.max_connections, Some(20));
        assert_eq!(google.max_recipients_per_message, Some(100));
        assert_eq!(doc.ready_replicas, 1);
        assert_eq!(
            doc.queue.as_ref().map(|q| q.maximal_lifetime_seconds),
            Some(14 * 86_400)
        );
        assert_eq!(google.mode, "Primary");
        assert!(c.files[SENDER_JSON_KEY].ends_with("}\n"));
        // Every field is always present.
        let raw: serde_json::Value = serde_json::from_str(&c.files[SENDER_JSON_KEY]).unwrap();
        assert_eq!(raw["routes"][0].as_object().unwrap().len(), 15);
    }

    #[test]
    fn relay_and_defer_are_named_with_the_relay_and_its_secret() {
        let (mut pools, routes) = incident_fleet(now());
        for ip in (10..18).map(|i| format!("203.0.113.{i}")) {
            for provider in ["microsoft", "yahoo-japan"] {
                set_pair(
                    &mut pools[0],
                    &ip,
                    pair(provider, ReputationState::Blocked, 0, now()),
                );
            }
        }
        for ip in ["198.51.100.20", "198.51.100.21"] {
            set_pair(
                &mut pools[1],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let table = compile(&pools, &routes, now());
        let doc = sender_document(
            &table,
            &sender("bulk", "203.0.113.10"),
            &PostfixOptions::default(),
        )
        .unwrap();
        let microsoft = doc.routes.iter().find(|r| r.name == "microsoft").unwrap();
        assert_eq!(microsoft.action, "relay");
        assert_eq!(microsoft.mode, "Relay");
        assert_eq!(microsoft.host.as_deref(), Some("smtp.relay.example"));
        assert_eq!(microsoft.port, Some(587));
        assert_eq!(
            microsoft.credentials_secret.as_deref(),
            Some("relay-credentials")
        );
        let yahoo = doc.routes.iter().find(|r| r.name == "yahoo-japan").unwrap();
        assert_eq!(yahoo.action, "defer");
        assert_eq!((yahoo.host.as_ref(), yahoo.port), (None, None));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let (pools, routes) = incident_fleet(now());
        let table = compile(&pools, &routes, now());
        let err = sender_config(
            &table,
            &sender("bulk", "not-an-ip"),
            &known_domains(),
            &PostfixOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PostfixError::InvalidSourceIp { .. }));
        assert!(matches!(
            parse_document("{\"schema\":\"mailfleet.io/sender-config/v9\",\"namespace\":\"a\",\"pool\":\"b\",\"ip\":\"c\",\"routes\":[]}"),
            Err(SenderDocumentError::Schema(_))
        ));
        assert!(matches!(
            parse_document("nope"),
            Err(SenderDocumentError::Json(_))
        ));
    }
}
