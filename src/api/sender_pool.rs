//! `SenderPool`: a set of source IPs and the sender pods that send from them.

// kube's printcolumn(...) entries each repeat `type_ = ...`; clippy reads them as one attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{conditions_schema, Condition};
use super::schema_util::preserve_unknown_object;
use super::sending::{ConnectionSettings, QueueSettings};
use super::unreadable::{read_leniently, UnreadableStatus};

/// A fleet of outbound mail senders: one set of pods per source IP.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mailfleet.io",
    version = "v1alpha1",
    kind = "SenderPool",
    doc = "A pool of outbound mail senders: one Deployment per source IP, and the reputation of every IP with every mailbox provider.",
    namespaced,
    status = "SenderPoolStatus",
    shortname = "sp",
    category = "mailfleet",
    cel,
    printcolumn(
        name = "IPs",
        type_ = "integer",
        json_path = ".status.ipCount",
        description = "Source IPs in the pool"
    ),
    printcolumn(
        name = "Healthy",
        type_ = "integer",
        json_path = ".status.healthyIps",
        description = "IPs healthy for every provider"
    ),
    printcolumn(
        name = "Blocked",
        type_ = "integer",
        json_path = ".status.blockedPairs",
        description = "(IP, provider) pairs currently blocked"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The Ready condition: every IP has its ready sender pods"
    ),
    printcolumn(
        name = "Ready IPs",
        type_ = "integer",
        json_path = ".status.readyIps",
        description = "IPs with at least one ready sender pod",
        priority = 1
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "Why the pool is or is not ready",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.queue) || !has(self.queue.maximalLifetimeSeconds) || self.queue.maximalLifetimeSeconds >= ((has(self.reputation) && has(self.reputation.maxHoldDownSeconds)) ? self.reputation.maxHoldDownSeconds : 172800)").message("spec.queue.maximalLifetimeSeconds is shorter than spec.reputation.maxHoldDownSeconds: mail deferred through a whole hold-down would be returned to its senders; make it at least the longest hold-down plus a day").reason(Reason::FieldValueInvalid))]
pub struct SenderPoolSpec {
    /// The source IPs of this pool. Each one gets its own sender Deployment and
    /// its own reputation with every mailbox provider. An IP may belong to one pool only.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["address"]))]
    #[x_kube(validation = Rule::new("self.all(a, !isIP(a.address) || self.filter(b, isIP(b.address) && ip(b.address) == ip(a.address)).size() == 1)").message("spec.ips lists the same IP address twice (also when written differently, e.g. 2001:db8::1 and 2001:DB8:0::1); remove the duplicate").reason(Reason::FieldValueDuplicate))]
    pub ips: Vec<PoolIp>,

    /// How many sender pods run per IP. The operator scales each IP between
    /// `min` and `max` with its allowance; a blocked IP keeps `min` so it can be probed.
    #[serde(default)]
    pub replicas_per_ip: ReplicaRange,

    /// The pod template of one sender (for example a Postfix container). The
    /// operator adds the IP binding and, when enabled, the agent sidecar.
    #[schemars(schema_with = "preserve_unknown_object")]
    pub template: PodTemplateSpec,

    /// How a sender pod learns which source IP it must bind to.
    #[serde(default)]
    pub ip_binding: IpBinding,

    /// Who may hand mail to the pool's senders through the Service `mf-pool-<pool>`.
    #[serde(default, skip_serializing_if = "Intake::is_default")]
    pub intake: Intake,

    /// Hourly message limits per IP.
    #[serde(default)]
    pub rate_limits: RateLimits,

    /// The warm-up schedule followed by IPs that have a `warmupStart`.
    #[serde(default)]
    #[x_kube(validation = Rule::new("!has(self.hourlyCaps) || self.hourlyCaps.all(c, c >= 1 && c <= 1000000)").message("warmup.hourlyCaps are messages per hour per provider and must be from 1 to 1000000").reason(Reason::FieldValueInvalid))]
    pub warmup: WarmupSchedule,

    /// How delivery results, DNS block lists and feeds move an IP's reputation.
    #[serde(default)]
    pub reputation: ReputationSettings,

    /// Connection shaping per provider: simultaneous connections, messages per
    /// connection, recipients per message.
    #[serde(default, skip_serializing_if = "ConnectionSettings::is_empty")]
    pub connections: ConnectionSettings,

    /// How long mail may wait in a sender's queue (a deferring route's mail waits there).
    #[serde(default, skip_serializing_if = "QueueSettings::is_empty")]
    #[x_kube(validation = Rule::new("!has(self.maximalLifetimeSeconds) || self.maximalLifetimeSeconds >= 86400").message("queue.maximalLifetimeSeconds must be at least a day: a blocked route's mail waits in the queue for the whole hold-down").reason(Reason::FieldValueInvalid))]
    pub queue: QueueSettings,

    /// Your own classifier rules and providers: a ConfigMap in the pool's
    /// namespace holding a document in the format of `mailfleet --rules`
    /// (docs/CLASSIFIER.md). The operator checks it and copies it, with the
    /// providers the DomainRoutes declare, into every sender's configuration;
    /// a change reaches running senders without a restart. Rules that do not
    /// parse set the condition `ClassifierRulesValid=False` and the senders
    /// keep the last good ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_rules: Option<ClassifierRulesRef>,
}

/// Where a pool's classifier rules are: a key of a ConfigMap.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassifierRulesRef {
    /// Name of the ConfigMap (same namespace as the pool).
    #[schemars(length(min = 1, max = 253))]
    pub config_map: String,
    /// The key holding the rules document.
    #[serde(default = "default_rules_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_rules_key() -> String {
    crate::routing::classifier_files::DEFAULT_RULES_CONFIG_MAP_KEY.to_string()
}

/// One source IP of the pool.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolIp {
    /// The IPv4 or IPv6 address mail leaves from, for example `203.0.113.10`.
    #[schemars(length(max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IPv4 or IPv6 address such as 203.0.113.10 or 2001:db8::10, without a prefix length").reason(Reason::FieldValueInvalid))]
    pub address: String,

    /// When this IP started warming up. While the warm-up schedule lasts, its
    /// hourly volume per provider is capped by the schedule of that day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_start: Option<Time>,

    /// A manual cap on this IP's allowance, for maintenance or a known problem.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<ManualOverride>,

    /// Node labels the pods of this IP must run on (for example the nodes that own the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// The name this IP announces in HELO/EHLO (Postfix `smtp_helo_name`):
    /// the name its reverse DNS (PTR) gives, for example `mta10.mail.example.net`.
    /// Not set: the pod's host name, which providers do not trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$')").message("heloName must be a fully qualified host name such as mta10.mail.example.net (letters, digits, hyphens, at least one dot), the name the IP's PTR record gives").reason(Reason::FieldValueInvalid))]
    pub helo_name: Option<String>,
}

/// A person's decision that outranks the reputation engine, with the reason recorded.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManualOverride {
    /// The highest allowance (percent of normal volume) this IP may have: 0 drains it.
    /// The override only lowers an allowance; it never sends through a blocked IP.
    #[schemars(range(min = 0, max = 100))]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("allowancePercent is a percentage: use a value from 0 to 100"))]
    pub allowance_percent: i32,

    /// Providers the override applies to; empty means every provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub providers: Vec<String>,

    /// Why the override exists; shown in status and events.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("override.reason must say why the IP is overridden"))]
    pub reason: String,
}

/// Lower and upper bound of sender pods per IP.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("replicasPerIp.min must not be greater than replicasPerIp.max").reason(Reason::FieldValueInvalid))]
pub struct ReplicaRange {
    /// Pods per IP when its allowance is lowest (blocked IPs keep this many so they can be probed).
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub min: i32,
    /// Pods per IP at full allowance.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub max: i32,
}

fn one() -> i32 {
    1
}

impl Default for ReplicaRange {
    fn default() -> Self {
        ReplicaRange { min: 1, max: 1 }
    }
}

/// How the sender container learns its source IP.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpBinding {
    /// `Bind`: the address is on the pod's own interface (hostNetwork on a
    /// node that holds it, or a secondary interface) and Postfix binds to it
    /// (`smtp_bind_address`). `Snat`: an egress gateway translates the pod's
    /// traffic to the address, so Postfix binds to nothing.
    #[serde(default)]
    pub mode: BindMode,

    /// Name of the environment variable that carries the IP into every container.
    #[serde(default = "default_ip_env_var")]
    #[schemars(length(min = 1, max = 128))]
    pub env_var: String,

    /// Pod annotations to add; `{{ip}}` in a value is replaced by the IP
    /// (for example a CNI's egress-IP annotation).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How mail leaves from the pool IP.
#[derive(
    JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
)]
pub enum BindMode {
    /// The address is on an interface of the pod; Postfix binds to it.
    #[default]
    Bind,
    /// An egress gateway (CNI egress IP, NAT gateway) translates to the address.
    Snat,
}

impl BindMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BindMode::Bind => "Bind",
            BindMode::Snat => "Snat",
        }
    }
}

/// Mail intake: applications and existing relays submit to `mf-pool-<pool>:25`.
/// Relaying is refused for every other client, so a pool is never an open relay.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intake {
    /// Client networks allowed to relay through the senders (Postfix
    /// `mynetworks`), for example the pod network of the applications and the
    /// senders themselves (route hand-offs come from sender pods). The pod's
    /// own loopback is always allowed. Empty: only the pod itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("intake.allowedCidrs entries must be networks such as 10.42.0.0/16 or fd00::/64 (address/prefix length)").reason(Reason::FieldValueInvalid))]
    pub allowed_cidrs: Vec<String>,
}

impl Intake {
    pub fn is_default(&self) -> bool {
        self == &Intake::default()
    }
}

fn default_ip_env_var() -> String {
    "MAILFLEET_SOURCE_IP".to_string()
}

impl Default for IpBinding {
    fn default() -> Self {
        IpBinding {
            mode: BindMode::default(),
            env_var: default_ip_env_var(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Hourly message limits for one IP.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Messages per hour one IP may send to one provider when nothing else is configured.
    #[serde(default = "default_per_hour")]
    #[schemars(range(min = 1, max = 1000000))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000000").message("rateLimits.perHour is messages per hour per IP: use 1 to 1000000 (to stop an IP, set an override with allowancePercent 0)").reason(Reason::FieldValueInvalid))]
    pub per_hour: i64,

    /// Messages per hour per IP for a named provider, overriding `perHour`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, self[p] >= 1 && self[p] <= 1000000)").message("rateLimits.perProvider values are messages per hour per IP and must be from 1 to 1000000"))]
    pub per_provider: BTreeMap<String, i64>,
}

fn default_per_hour() -> i64 {
    10_000
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_hour: default_per_hour(),
            per_provider: BTreeMap::new(),
        }
    }
}

impl RateLimits {
    /// The hourly limit of one IP towards `provider`.
    pub fn for_provider(&self, provider: &str) -> i64 {
        self.per_provider
            .get(provider)
            .copied()
            .unwrap_or(self.per_hour)
    }
}

/// Hourly caps for a warming IP, one entry per day since its `warmupStart`.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmupSchedule {
    /// Messages per hour per provider allowed on day 1, day 2, ...; after the last
    /// day the IP is warm and only `rateLimits` apply.
    #[serde(default = "default_warmup_caps")]
    #[schemars(length(max = 90))]
    pub hourly_caps: Vec<i64>,
}

/// A public provider warm-up schedule (about x1.4 a day), see docs/REPUTATION.md.
pub fn default_warmup_caps() -> Vec<i64> {
    vec![
        20, 28, 39, 55, 77, 108, 151, 211, 295, 413, 579, 810, 1000, 1587,
    ]
}

impl Default for WarmupSchedule {
    fn default() -> Self {
        WarmupSchedule {
            hourly_caps: default_warmup_caps(),
        }
    }
}

/// Settings of the reputation engine for this pool.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReputationSettings {
    /// DNS block lists to probe every IP against.
    #[serde(default)]
    pub dnsbl: DnsblSettings,

    /// How delivery results reported by the agents are judged.
    #[serde(default)]
    pub feedback: FeedbackSettings,

    /// How long a blocked (IP, provider) pair rests before probing; doubles on every repeat block.
    #[serde(default = "default_hold_down")]
    #[schemars(range(min = 10))]
    pub hold_down_seconds: i64,

    /// The longest hold-down, however often the pair was blocked.
    #[serde(default = "default_max_hold_down")]
    #[schemars(range(min = 10))]
    pub max_hold_down_seconds: i64,

    /// How a pair whose provider rate-limits it steps down, and climbs back.
    #[serde(default)]
    pub throttle: ThrottleSettings,

    /// The small trickle a blocked pair gets after its hold-down, so the provider can see clean traffic.
    #[serde(default)]
    pub probe: ProbeSettings,

    /// The steps that bring a probed pair back to full volume.
    #[serde(default)]
    pub recovery: RecoverySettings,

    /// Provider feeds polled for this pool's IPs (for example Microsoft SNDS).
    #[serde(default, skip_serializing_if = "FeedSettings::is_empty")]
    pub feeds: FeedSettings,

    /// When spam complaints (abuse feedback reports) throttle a pair.
    #[serde(default)]
    pub complaints: ComplaintSettings,
}

fn default_hold_down() -> i64 {
    3600
}
fn default_max_hold_down() -> i64 {
    48 * 3600
}

impl Default for ReputationSettings {
    fn default() -> Self {
        ReputationSettings {
            dnsbl: DnsblSettings::default(),
            feedback: FeedbackSettings::default(),
            hold_down_seconds: default_hold_down(),
            max_hold_down_seconds: default_max_hold_down(),
            throttle: ThrottleSettings::default(),
            probe: ProbeSettings::default(),
            recovery: RecoverySettings::default(),
            feeds: FeedSettings::default(),
            complaints: ComplaintSettings::default(),
        }
    }
}

/// Which DNS block lists are checked, and through which resolver.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DnsblSettings {
    /// The zones to query. Empty: no DNSBL probing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub zones: Vec<DnsblZone>,

    /// `HOST:PORT` of your own recursive resolver. Big lists refuse public resolvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,

    /// Seconds between two probe rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub interval_seconds: Option<i64>,
}

/// One DNS block list zone and how to read its answers.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsblZone {
    /// The zone, for example `zen.spamhaus.org`.
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,

    /// A answers that mean "listed"; empty means every 127.0.0.0/8 answer that is not an error code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listing_codes: Vec<String>,

    /// A answers that mean the query itself failed (Spamhaus: 127.255.255.252/254/255); never read as a listing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_codes: Vec<String>,

    /// Providers a listing in this zone blocks; empty means every provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
}

/// Provider feeds polled for this pool's IPs.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FeedSettings {
    /// Microsoft SNDS automated data access: a blocked range covering a pool IP
    /// marks (IP, microsoft) Blocked. Not set: SNDS is not polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snds: Option<SndsFeedSettings>,

    /// Google Postmaster Tools (its API, read with a service account): a pool
    /// IP Postmaster rates BAD marks (IP, google) Blocked; a domain's
    /// user-reported spam rate at or over `complaints.thresholdBasisPoints`
    /// throttles the pool's IPs to Google. Not set: Postmaster is not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster: Option<PostmasterFeedSettings>,
}

impl FeedSettings {
    pub fn is_empty(&self) -> bool {
        self.snds.is_none() && self.postmaster.is_none()
    }
}

/// Which sending domains are read from Google Postmaster Tools, with which
/// service account; the account's JSON key comes from a Secret.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostmasterFeedSettings {
    /// The Secret (in the pool's namespace) and data key holding the service
    /// account's JSON key file (`client_email`, `private_key`, `token_uri`).
    /// The account must be added as a user of each domain in Postmaster Tools.
    pub service_account_secret_ref: SecretKeySelector,

    /// The domains this pool's IPs send mail for, as verified in Postmaster
    /// Tools (for example `news.example.com`).
    #[schemars(length(min = 1, max = 50))]
    pub domains: Vec<String>,

    /// Seconds between two polls (Postmaster updates once a day; at least 300).
    #[serde(default = "default_postmaster_interval")]
    #[schemars(range(min = 300))]
    pub interval_seconds: i64,

    /// The API's base URL; default `https://gmailpostmastertools.googleapis.com`
    /// (set it for a proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must start with https:// (or http:// for an in-cluster proxy)").reason(Reason::FieldValueInvalid))]
    pub url: Option<String>,

    /// Where the signed assertion is exchanged for an access token; default
    /// the key file's `token_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("tokenUrl must start with https:// (or http:// for an in-cluster proxy)").reason(Reason::FieldValueInvalid))]
    pub token_url: Option<String>,

    /// A Secret key holding extra PEM CA certificates trusted for the API's
    /// and the token endpoint's HTTPS servers besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeySelector>,
}

/// Seconds between two Postmaster polls when `intervalSeconds` is not set.
pub fn default_postmaster_interval() -> i64 {
    6 * 3600
}

/// Where and how often Microsoft SNDS is read; the key comes from a Secret.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SndsFeedSettings {
    /// The ip-status URL without the key, for example
    /// `https://sendersupport.olc.protection.outlook.com/snds/ipStatus.aspx`.
    /// The key is added from `keySecretRef` and never written here.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must start with https:// (or http:// for an in-cluster proxy)").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("!self.matches('[?&][Kk][Ee][Yy]=')").message("url carries the SNDS key in its query; remove `key=...` from the URL and put the key in the Secret named by keySecretRef").reason(Reason::FieldValueForbidden))]
    pub url: String,

    /// The data URL (per-IP filter result) without the key, for example
    /// `https://sendersupport.olc.protection.outlook.com/snds/data.aspx`.
    /// Not set: only the ip-status file is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("dataUrl must start with https:// (or http:// for an in-cluster proxy)").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("!self.matches('[?&][Kk][Ee][Yy]=')").message("dataUrl carries the SNDS key in its query; remove `key=...` from the URL and put the key in the Secret named by keySecretRef").reason(Reason::FieldValueForbidden))]
    pub data_url: Option<String>,

    /// The Secret (in the pool's namespace) and data key holding the SNDS
    /// automated-access key.
    pub key_secret_ref: SecretKeySelector,

    /// Seconds between two polls (SNDS updates about once a day; at least 300).
    #[serde(default = "default_snds_interval")]
    #[schemars(range(min = 300))]
    pub interval_seconds: i64,

    /// A Secret key holding extra PEM CA certificates trusted for the feed's
    /// HTTPS server besides the system roots (a private feed or proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeySelector>,
}

/// Seconds between two SNDS polls when `intervalSeconds` is not set.
pub fn default_snds_interval() -> i64 {
    3600
}

/// One key of a Secret in the pool's namespace.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Thresholds for ambiguous delivery signals (conclusive block replies need no threshold).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackSettings {
    /// Length of the sliding window, in seconds.
    #[serde(default = "default_window")]
    #[schemars(range(min = 60, max = 86400))]
    pub window_seconds: i64,

    /// Attempts the window must hold before a rate is judged at all.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples: i64,

    /// Percent of attempts refused for IP reputation (non-conclusive) that marks the pair Blocked.
    #[serde(default = "default_block_percent")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("feedback.blockPercent is a percentage from 1 to 100"))]
    pub block_percent: i32,

    /// Percent of attempts rate-limited that marks the pair Throttled.
    #[serde(default = "default_throttle_percent")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("feedback.throttlePercent is a percentage from 1 to 100"))]
    pub throttle_percent: i32,
}

fn default_window() -> i64 {
    900
}
fn default_min_samples() -> i64 {
    50
}
fn default_block_percent() -> i32 {
    20
}
fn default_throttle_percent() -> i32 {
    10
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        FeedbackSettings {
            window_seconds: default_window(),
            min_samples: default_min_samples(),
            block_percent: default_block_percent(),
            throttle_percent: default_throttle_percent(),
        }
    }
}

/// The complaint rate of a pair: complaints received in its feedback window
/// against the messages it delivered in that window.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplaintSettings {
    /// Complaint rate, in basis points (hundredths of a percent), at or over
    /// which the pair is throttled: 30 is 0.3 %, the spam rate Gmail and
    /// Yahoo hold bulk senders under.
    #[serde(default = "default_complaint_threshold")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("complaints.thresholdBasisPoints is from 1 (0.01 %) to 10000 (100 %)"))]
    pub threshold_basis_points: i32,

    /// Messages the window must have delivered before its complaint rate is
    /// judged: one complaint among ten messages throttles nothing.
    #[serde(default = "default_complaint_min_delivered")]
    #[schemars(range(min = 1))]
    pub min_delivered: i64,
}

fn default_complaint_threshold() -> i32 {
    30
}
fn default_complaint_min_delivered() -> i64 {
    1000
}

impl Default for ComplaintSettings {
    fn default() -> Self {
        ComplaintSettings {
            threshold_basis_points: default_complaint_threshold(),
            min_delivered: default_complaint_min_delivered(),
        }
    }
}

/// The trickle sent through a blocked pair after its hold-down.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSettings {
    /// Allowance (percent) while Probing.
    #[serde(default = "default_trickle")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("probe.allowancePercent is a percentage from 1 to 100"))]
    pub allowance_percent: i32,

    /// Clean deliveries needed while Probing before recovery starts.
    #[serde(default = "default_probe_successes")]
    #[schemars(range(min = 1))]
    pub successes_to_recover: i64,
}

fn default_trickle() -> i32 {
    2
}
fn default_probe_successes() -> i64 {
    20
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            allowance_percent: default_trickle(),
            successes_to_recover: default_probe_successes(),
        }
    }
}

/// The ramp from Probing back to Healthy.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverySettings {
    /// Allowance (percent) of each Recovering step, rising.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self.all(s, s >= 1 && s <= 100)").message("recovery.stepPercents are percentages from 1 to 100"))]
    pub step_percents: Vec<i32>,

    /// How long each step lasts without a new failure before the next one.
    #[serde(default = "default_step_seconds")]
    #[schemars(range(min = 10))]
    pub step_seconds: i64,
}

fn default_steps() -> Vec<i32> {
    vec![10, 25, 50, 75]
}

/// The graduated throttle of a rate-limited pair: it enters at the first step,
/// moves one step down each time a window at the current step is still over
/// `feedback.throttlePercent`, and climbs one step back (then to full volume)
/// each time a window at the current step is clean and it has held that step
/// for `stepSeconds`.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleSettings {
    /// Allowance (percent) of each Throttled step, falling: `[50]` is a fixed
    /// half rate that returns to full volume after one clean window.
    #[serde(default = "default_throttle_steps")]
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self.all(s, s >= 0 && s <= 100)").message("throttle.stepPercents are percentages from 0 to 100"))]
    pub step_percents: Vec<i32>,

    /// The shortest time a Throttled pair holds a step before climbing out of it.
    #[serde(default = "default_throttle_step_seconds")]
    #[schemars(range(min = 10))]
    pub step_seconds: i64,
}

fn default_throttle_steps() -> Vec<i32> {
    vec![50, 25, 10]
}
fn default_throttle_step_seconds() -> i64 {
    900
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            step_percents: default_throttle_steps(),
            step_seconds: default_throttle_step_seconds(),
        }
    }
}
fn default_step_seconds() -> i64 {
    1800
}

impl Default for RecoverySettings {
    fn default() -> Self {
        RecoverySettings {
            step_percents: default_steps(),
            step_seconds: default_step_seconds(),
        }
    }
}

/// What the operator observed and decided for this pool.
// `remote = "Self"`: the derived (de)serialisers become inherent functions,
// wrapped below so that a status this version cannot read is cut down to
// what it can read instead of failing the whole watch (`unreadable`).
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", remote = "Self")]
pub struct SenderPoolStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Degraded (some pair is Blocked) and Progressing.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Per-IP replicas and reputation. This is the reputation engine's whole
    /// state: an operator restarted mid-incident continues from here.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["address"]))]
    pub ips: Vec<IpStatus>,

    /// Number of IPs in the pool.
    #[serde(default)]
    pub ip_count: i32,
    /// IPs that are Healthy (or Warming) for every provider.
    #[serde(default)]
    pub healthy_ips: i32,
    /// (IP, provider) pairs that are Blocked.
    #[serde(default)]
    pub blocked_pairs: i32,
    /// IPs with at least one ready sender pod.
    #[serde(default)]
    pub ready_ips: i32,

    /// The last report sequence counted per agent run, written in the same
    /// patch as the counts it produced: a report retried across an operator
    /// restart or a leader change is acknowledged, not counted twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub feedback_ledger: Option<crate::agent::report::SequenceLedger>,

    /// The queue of each sender pod, as its agent last reported it (pods that
    /// stopped reporting leave after 15 minutes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub queues: Vec<super::queue_status::SenderQueue>,

    /// What could not be read from the stored status (never written).
    #[serde(skip)]
    #[schemars(skip)]
    pub unreadable: Option<Box<UnreadableStatus>>,
}

impl Serialize for SenderPoolStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SenderPoolStatus::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for SenderPoolStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = serde_json::Value::deserialize(deserializer)?;
        let (mut status, unreadable) =
            read_leniently(stored, |de| SenderPoolStatus::deserialize(de));
        status.unreadable = unreadable.map(Box::new);
        Ok(status)
    }
}

/// The observed state of one source IP.
///
/// Written as [`IpStatusWire`]: plain pairs packed (see `super::compact`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "IpStatusWire", into = "IpStatusWire")]
pub struct IpStatus {
    /// The source IP.
    pub address: String,
    /// Sender pods of this IP that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Sender pods of this IP the operator asked for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Reputation of this IP with each provider it has sent to.
    #[serde(default)]
    pub reputation: Vec<ProviderReputation>,
    /// The latest DNS block list answers for this IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dnsbl: Vec<DnsblResult>,
    /// The latest provider feed verdict for this IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedVerdict>,
    /// Checks of this IP: `ReverseDnsConfirmed` (its PTR name resolves back
    /// to it, docs/PROBES.md) and `IpBound` (its sender pods hold the `Bind`
    /// address on an interface; while False no route sends from the IP,
    /// docs/OPERATING.md).
    pub conditions: Vec<Condition>,
}

/// The observed state of one source IP. Pairs Healthy at full allowance
/// with no step ahead are packed into `healthyPairs`; every other pair is
/// listed in `reputation`.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpStatusWire {
    /// The source IP.
    pub address: String,
    /// Sender pods of this IP that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Sender pods of this IP the operator asked for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Reputation of this IP with each provider it has sent to, except the
    /// plain healthy pairs (those are in `healthyPairs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["provider"]))]
    pub reputation: Vec<ProviderReputation>,
    /// The providers this IP is Healthy with at full allowance and no step
    /// ahead (first seen, warmed up, recovered), with since, reason,
    /// evidence, block count, last hold-down and delivery counts, packed to
    /// keep the status bounded (base64url; docs/ARCHITECTURE.md, "Bounded
    /// status").
    /// Their states are also in the metric `mailfleet_ip_state`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "super::compact::plain_pairs_field"
    )]
    #[schemars(with = "String")]
    pub healthy_pairs: Vec<ProviderReputation>,
    /// The latest DNS block list answers for this IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dnsbl: Vec<DnsblResult>,
    /// The latest provider feed verdict for this IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedVerdict>,
    /// Checks of this IP: `ReverseDnsConfirmed` (its PTR name resolves back
    /// to it, docs/PROBES.md) and `IpBound` (its sender pods hold the `Bind`
    /// address on an interface; while False no route sends from the IP,
    /// docs/OPERATING.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

impl From<IpStatus> for IpStatusWire {
    fn from(ip: IpStatus) -> Self {
        let (healthy_pairs, reputation) = ip
            .reputation
            .into_iter()
            .partition(super::compact::is_plain);
        IpStatusWire {
            address: ip.address,
            ready_replicas: ip.ready_replicas,
            desired_replicas: ip.desired_replicas,
            reputation,
            healthy_pairs,
            dnsbl: ip.dnsbl,
            feeds: ip.feeds,
            conditions: ip.conditions,
        }
    }
}

impl From<IpStatusWire> for IpStatus {
    fn from(wire: IpStatusWire) -> Self {
        let mut reputation = wire.reputation;
        reputation.extend(wire.healthy_pairs);
        // The engine keeps pairs sorted by provider.
        reputation.sort_by(|a, b| a.provider.cmp(&b.provider));
        IpStatus {
            address: wire.address,
            ready_replicas: wire.ready_replicas,
            desired_replicas: wire.desired_replicas,
            reputation,
            dnsbl: wire.dnsbl,
            feeds: wire.feeds,
            conditions: wire.conditions,
        }
    }
}

impl JsonSchema for IpStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IpStatus".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        IpStatusWire::json_schema(generator)
    }
}

impl IpStatus {
    pub fn new(address: impl Into<String>) -> Self {
        IpStatus {
            address: address.into(),
            ready_replicas: 0,
            desired_replicas: 0,
            reputation: Vec::new(),
            dnsbl: Vec::new(),
            feeds: Vec::new(),
            conditions: Vec::new(),
        }
    }

    pub fn pair(&self, provider: &str) -> Option<&ProviderReputation> {
        self.reputation.iter().find(|r| r.provider == provider)
    }
}

/// The state of one (source IP, provider) pair.
#[derive(
    JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum ReputationState {
    /// Sending at full allowance.
    Healthy,
    /// A new IP following the warm-up schedule.
    Warming,
    /// The provider rate-limits this IP: reduced allowance.
    Throttled,
    /// The provider refuses this IP: no traffic until the hold-down ends.
    Blocked,
    /// After the hold-down: a small trickle to see whether the provider delisted the IP.
    Probing,
    /// Clean probe results: stepping back up to full allowance.
    Recovering,
}

impl ReputationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReputationState::Healthy => "Healthy",
            ReputationState::Warming => "Warming",
            ReputationState::Throttled => "Throttled",
            ReputationState::Blocked => "Blocked",
            ReputationState::Probing => "Probing",
            ReputationState::Recovering => "Recovering",
        }
    }
}

impl std::fmt::Display for ReputationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reputation of one IP with one provider, with the evidence behind it.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderReputation {
    /// Provider name (`microsoft`, `google`, ... or a declared one).
    pub provider: String,
    /// Current state.
    pub state: ReputationState,
    /// When the pair entered this state.
    pub since: Time,
    /// CamelCase reason of the last transition (`ConclusiveBlockReply`, `HoldDownElapsed`, ...).
    pub reason: String,
    /// The reply, DNSBL answer or feed line that caused the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evidence: Option<String>,
    /// Share of its normal volume (0-100) this IP may send to this provider now.
    pub allowance_percent: i32,
    /// Messages per hour while warming (from the warm-up schedule), if capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_cap: Option<i64>,
    /// The manual override in force, if any (its reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden_by: Option<String>,
    /// Hold-down of the current or last block, in seconds (doubles on repeat blocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_down_seconds: Option<i64>,
    /// How many times this pair was blocked.
    #[serde(default)]
    pub block_count: i32,
    /// When the engine will next move this pair by itself (end of hold-down, next recovery step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step_at: Option<Time>,
    /// Index into `recovery.stepPercents` while Recovering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_step: Option<i32>,
    /// Index into `throttle.stepPercents` while Throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_step: Option<i32>,
    /// While Throttled by a reply that asks for a pause (Yahoo `[TSS04]`): the
    /// pair sends nothing until then, and probes afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<Time>,
    /// Clean deliveries counted while Probing.
    #[serde(default)]
    pub probe_successes: i64,
    /// Recent delivery counts, the sliding window the thresholds are judged
    /// on, packed (base64url of varints: bucket starts, then attempts, not
    /// delivered, IP-blocklisted and rate-limited per bucket). A list of
    /// bucket objects, as older versions wrote it, is read too.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "super::compact::window_field"
    )]
    #[schemars(with = "String")]
    pub window: Vec<WindowBucket>,
    /// Replies quoting a DNS block list that name this IP, one per receiving
    /// domain, within the feedback window: not a block until the zone confirms
    /// the listing or several receivers agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dnsbl_claims: Vec<DnsblClaim>,
    /// The complaint rate last judged, while its complaints are in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complaint_rate: Option<ComplaintRate>,
}

/// Spam complaints against delivered mail, as last judged for one pair.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplaintRate {
    /// Complaints received in the window.
    pub complaints: i64,
    /// Messages delivered in the window.
    pub delivered: i64,
    /// complaints / delivered in basis points (30 is 0.3 %), rounded down;
    /// absent while nothing was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis_points: Option<i64>,
    /// When it was judged.
    pub at: Time,
}

impl ProviderReputation {
    /// The reason word of a pair seen for the first time.
    pub const FIRST_SEEN: &'static str = "FirstSeen";

    /// A pair seen for the first time: Healthy at full allowance, no cap,
    /// override, timer, progress, window or claims. Every other pair is this
    /// one with some fields set, so a new field gets its default in one place.
    pub fn first_seen(provider: impl Into<String>, since: Time) -> Self {
        ProviderReputation {
            provider: provider.into(),
            state: ReputationState::Healthy,
            since,
            reason: Self::FIRST_SEEN.to_string(),
            last_evidence: None,
            allowance_percent: 100,
            hourly_cap: None,
            overridden_by: None,
            hold_down_seconds: None,
            block_count: 0,
            next_step_at: None,
            recovery_step: None,
            throttle_step: None,
            paused_until: None,
            probe_successes: 0,
            window: Vec::new(),
            dnsbl_claims: Vec::new(),
            complaint_rate: None,
        }
    }
}

/// One receiver's reply quoting a DNS block list about this IP.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsblClaim {
    /// The zone the reply names (`zen.spamhaus.org`), if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The receiving domain that sent the reply (from its host name), or its
    /// address, or `unknown`.
    pub receiver: String,
    /// When the reply was received.
    pub at: Time,
    /// The reply, cut to 300 characters.
    pub reply: String,
}

/// Delivery counts of one slice of the sliding window.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowBucket {
    /// Start of the slice.
    pub start: Time,
    /// Attempts in the slice.
    pub attempts: i64,
    /// Of those, delivered.
    #[serde(default)]
    pub delivered: i64,
    /// Of those, refused for IP reputation without a conclusive reply.
    #[serde(default)]
    pub ip_blocklisted: i64,
    /// Of those, rate-limited.
    #[serde(default)]
    pub ip_rate_limited: i64,
    /// Spam complaints received in the slice (about mail sent any time).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub complaints: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One DNS block list answer about an IP.
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsblResult {
    /// The zone queried.
    pub zone: String,
    /// Whether the IP is listed (never true for an error answer).
    pub listed: bool,
    /// The A answers received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
    /// The TXT reason of a listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the probe failed (error code, timeout, SERVFAIL), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the answer was received.
    pub checked_at: Time,
}

/// One provider feed's verdict about an IP (for example Microsoft SNDS).
#[derive(JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedVerdict {
    /// The feed, for example `snds`.
    pub feed: String,
    /// Provider the feed speaks for.
    pub provider: String,
    /// Whether the feed says the IP is blocked.
    pub blocked: bool,
    /// The feed's own words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the feed was read.
    pub checked_at: Time,
    /// What the feed measured about the IP's mail, when it says (SNDS's data
    /// file): a bad filter result, complaint rate or trap hits throttle the
    /// pair of the feed's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<FeedScores>,
}

/// A feed's figures about one IP's mail (Microsoft SNDS's data file).
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedScores {
    /// The provider's spam filter verdict on the mail: `GREEN` (up to 10 %
    /// filtered as spam), `YELLOW` (10 to 90 %), `RED` (over 90 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_result: Option<String>,
    /// Complaint rate in basis points (30 is 0.3 %); 0 for SNDS's "< 0.1%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complaint_basis_points: Option<i64>,
    /// Messages that reached spam traps.
    #[serde(default)]
    pub trap_hits: u64,
    /// The period the figures cover, as the feed wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
}
