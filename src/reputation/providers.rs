//! Recognising the mailbox provider behind a recipient, by its domain or by the MX
//! host that answered for it.
//!
//! This runs once per delivery log line, so a lookup never allocates: the name is
//! lowercased into a stack buffer when needed, and the table is probed with hash
//! lookups at label boundaries (longest suffix first). The MX host wins over the
//! recipient domain when it is recognised, because a company domain hosted on
//! Microsoft 365 (say `acclaim.jp`) only shows its provider through its MX host
//! (`acclaim-jp.mail.protection.outlook.com`).
//!
//! Pattern forms, all matched case-insensitively and ignoring one trailing dot:
//! - recipient domains: `example.com` (exactly that domain), `*.example.com` (any
//!   subdomain of it, not the domain itself), `hotmail.*` (that first label under
//!   any top-level domain `hotmail.fr`, or a country's second level `hotmail.co.jp`,
//!   `live.com.sg`: a label of two or three letters then a two-letter country code);
//! - excluded domains: exact domains a provider's `*` patterns must not claim (the
//!   builtin `yahoo` excludes `yahoo.co.jp`, which is Yahoo! JAPAN's own system);
//! - MX host suffixes: `.mail.protection.outlook.com` (a leading `.` or `*.` is
//!   optional) matches that host and every host under it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::vocab::{is_valid_provider_name, BUILTIN_GATEWAYS, BUILTIN_PROVIDERS, OTHER_PROVIDER};

/// An immutable name shared by every verdict that carries it (a provider name or a
/// rule id): cloning it bumps a reference count instead of copying the text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedName(Arc<str>);

impl SharedName {
    pub fn new(name: &str) -> Self {
        SharedName(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for SharedName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SharedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SharedName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SharedName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl From<&str> for SharedName {
    fn from(name: &str) -> Self {
        SharedName::new(name)
    }
}

impl From<String> for SharedName {
    fn from(name: String) -> Self {
        SharedName(Arc::from(name))
    }
}

impl Serialize for SharedName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SharedName::from)
    }
}

/// Index of a provider in its [`ProviderTable`]; [`ProviderId::OTHER`] is the
/// provider of every recipient no pattern claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(u16);

impl ProviderId {
    pub const OTHER: ProviderId = ProviderId(0);

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// How a provider is recognised. The same shape serves the builtin table and the
/// providers a user declares (YAML fields `name`, `domains`, `excludeDomains`,
/// `mxHostSuffixes`); declaring a builtin name again extends that provider.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host_suffixes: Vec<String>,
}

impl ProviderSpec {
    pub fn new(name: &str) -> Self {
        ProviderSpec {
            name: name.to_string(),
            ..ProviderSpec::default()
        }
    }

    pub fn domains<I: IntoIterator<Item = S>, S: Into<String>>(mut self, domains: I) -> Self {
        self.domains.extend(domains.into_iter().map(Into::into));
        self
    }

    pub fn exclude_domains<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        domains: I,
    ) -> Self {
        self.exclude_domains
            .extend(domains.into_iter().map(Into::into));
        self
    }

    pub fn mx_host_suffixes<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        suffixes: I,
    ) -> Self {
        self.mx_host_suffixes
            .extend(suffixes.into_iter().map(Into::into));
        self
    }
}

/// Concrete recipient domains of the builtin providers, for transport maps:
/// Postfix looks domains up by name, while recognition uses patterns
/// (`hotmail.*`) and MX hosts that a map cannot express. Domains seen with a
/// provider's MX host are learned at run time on top of these.
pub const WELL_KNOWN_DOMAINS: [(&str, &[&str]); 4] = [
    (
        "microsoft",
        &[
            "hotmail.com",
            "hotmail.co.jp",
            "hotmail.co.uk",
            "hotmail.fr",
            "hotmail.it",
            "hotmail.nl",
            "hotmail.co.th",
            "hotmail.de",
            "hotmail.es",
            "outlook.com",
            "outlook.jp",
            "outlook.kr",
            "outlook.sa",
            "outlook.fr",
            "outlook.de",
            "live.com",
            "live.jp",
            "live.cn",
            "live.com.sg",
            "live.co.uk",
            "live.fr",
            "msn.com",
            "passport.com",
        ],
    ),
    ("google", &["gmail.com", "googlemail.com"]),
    (
        "yahoo",
        &[
            "yahoo.com",
            "yahoo.co.uk",
            "yahoo.fr",
            "yahoo.de",
            "yahoo.it",
            "yahoo.es",
            "yahoo.ca",
            "yahoo.com.au",
            "yahoo.co.in",
            "ymail.com",
            "rocketmail.com",
            "aol.com",
            "aim.com",
        ],
    ),
    ("apple", &["icloud.com", "me.com", "mac.com"]),
];

/// [`WELL_KNOWN_DOMAINS`] as the Postfix renderer takes them: provider → domains.
pub fn well_known_domains() -> std::collections::BTreeMap<String, Vec<String>> {
    WELL_KNOWN_DOMAINS
        .iter()
        .map(|(p, d)| (p.to_string(), d.iter().map(|s| s.to_string()).collect()))
        .collect()
}

/// The providers mailfleet knows without configuration (docs/CLASSIFIER.md
/// lists them with their domains and MX host suffixes).
pub fn builtin_provider_specs() -> Vec<ProviderSpec> {
    let specs = vec![
        ProviderSpec::new("microsoft")
            .domains([
                "hotmail.*",
                "outlook.*",
                "live.*",
                "msn.com",
                "passport.com",
            ])
            .mx_host_suffixes([
                ".olc.protection.outlook.com",
                ".mail.protection.outlook.com",
                ".mx.microsoft",
            ]),
        ProviderSpec::new("google")
            .domains(["gmail.com", "googlemail.com"])
            .mx_host_suffixes([".google.com", ".googlemail.com"]),
        ProviderSpec::new("yahoo")
            .domains([
                "yahoo.*",
                "ymail.com",
                "rocketmail.com",
                "aol.com",
                "aim.com",
            ])
            .exclude_domains(["yahoo.co.jp"])
            // `.mx.aol.com`: AOL's own MX names (`mailin-03.mx.aol.com`), still
            // quoted in bounces; AOL mail is Yahoo's (its MX today is
            // `mx-aol.mail.gm0.yahoodns.net`).
            .mx_host_suffixes([".yahoodns.net", ".mx.aol.com"]),
        ProviderSpec::new("apple")
            .domains(["icloud.com", "me.com", "mac.com"])
            .mx_host_suffixes([".icloud.com"]),
    ];
    debug_assert!(specs.iter().map(|s| s.name.as_str()).eq(BUILTIN_PROVIDERS));
    let mut specs = specs;
    specs.extend(builtin_gateway_specs());
    specs
}

/// Business mail gateways: one block there holds for every company domain behind
/// them, so each is a provider of its own, found by its MX host only (their
/// customers' domains have no names in common). docs/CLASSIFIER.md gives the
/// vendor page each suffix comes from.
pub fn builtin_gateway_specs() -> Vec<ProviderSpec> {
    let specs: Vec<ProviderSpec> = [
        ("proofpoint", &[".pphosted.com", ".ppe-hosted.com"][..]),
        ("mimecast", &[".mimecast.com"][..]),
        ("barracuda", &[".barracudanetworks.com"][..]),
        ("cisco", &[".iphmx.com"][..]),
        (
            "trendmicro",
            // `.mx.trendmicro.com`: the hosted ERS front end a public bounce
            // names (bbs.iredmail.org/post13489.html).
            &[
                ".tmes.trendmicro.com",
                ".tmes.trendmicro.eu",
                ".mx.trendmicro.com",
            ][..],
        ),
        ("broadcom", &[".messagelabs.com"][..]),
    ]
    .into_iter()
    .map(|(name, suffixes)| ProviderSpec::new(name).mx_host_suffixes(suffixes.iter().copied()))
    .collect();
    debug_assert!(specs.iter().map(|s| s.name.as_str()).eq(BUILTIN_GATEWAYS));
    specs
}

/// Why a provider table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("provider name `{name}` is not valid: use lowercase letters, digits and '-', starting with a letter and at most 40 long (for example `yahoo-japan`)")]
    InvalidName { name: String },
    #[error(
        "provider name `other` is reserved for recipients no provider claims; pick another name"
    )]
    ReservedName,
    #[error("provider `{provider}`: {field} entry `{value}` is not valid: {reason}")]
    InvalidPattern {
        provider: String,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "{what} `{value}` is claimed by both `{first}` and `{second}`; keep it in one provider"
    )]
    Conflict {
        what: &'static str,
        value: String,
        first: String,
        second: String,
    },
    #[error("too many providers: at most {max} can be declared")]
    TooMany { max: usize },
}

/// A small, fast hash for the lookup maps. Their keys come from configuration, not
/// from the (untrusted) log lines, so flooding a bucket is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The lengths of a map's keys, so a lookup skips hashing names no key can equal.
#[derive(Clone, Copy, Debug, Default)]
struct LengthSet([u64; 4]);

impl LengthSet {
    fn insert(&mut self, len: usize) {
        if len < 256 {
            self.0[len / 64] |= 1 << (len % 64);
        }
    }

    #[inline]
    fn contains(&self, len: usize) -> bool {
        len < 256 && self.0[len / 64] & (1 << (len % 64)) != 0
    }

    fn of<V>(map: &FastMap<Box<str>, V>) -> Self {
        let mut set = LengthSet::default();
        map.keys().for_each(|k| set.insert(k.len()));
        set
    }
}

/// A hash map probed only for key lengths it holds.
#[derive(Clone, Debug)]
struct NameMap<V> {
    map: FastMap<Box<str>, V>,
    lengths: LengthSet,
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap {
            map: FastMap::default(),
            lengths: LengthSet::default(),
        }
    }
}

impl<V> NameMap<V> {
    #[inline]
    fn get(&self, name: &str) -> Option<&V> {
        if self.lengths.contains(name.len()) {
            self.map.get(name)
        } else {
            None
        }
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn seal(&mut self) {
        self.lengths = LengthSet::of(&self.map);
    }
}

/// What the table knows about one exact recipient domain.
#[derive(Clone, Debug, Default)]
struct ExactDomain {
    provider: Option<ProviderId>,
    /// Providers whose `*` patterns must not claim this domain.
    excluded_from: Vec<ProviderId>,
}

/// The compiled provider table: names by id, and the lookup maps.
#[derive(Clone, Debug)]
pub struct ProviderTable {
    names: Vec<SharedName>,
    specs: Vec<ProviderSpec>,
    exact: NameMap<ExactDomain>,
    subdomains_of: NameMap<ProviderId>,
    any_tld: NameMap<ProviderId>,
    mx_suffixes: NameMap<ProviderId>,
}

/// Longest name (a DNS name is at most 253 characters) a lookup lowercases; longer
/// input is not a host or domain name and matches nothing.
const MAX_NAME_LEN: usize = 255;

impl ProviderTable {
    /// The builtin providers only.
    pub fn builtin() -> Self {
        match Self::from_specs(builtin_provider_specs()) {
            Ok(table) => table,
            Err(err) => unreachable!("the builtin provider table is valid (tested): {err}"),
        }
    }

    /// The builtin providers plus `declared` ones; a declared spec whose name is a
    /// builtin provider's extends it.
    pub fn builtin_with<I: IntoIterator<Item = ProviderSpec>>(
        declared: I,
    ) -> Result<Self, ProviderError> {
        Self::from_specs(builtin_provider_specs().into_iter().chain(declared))
    }

    /// Exactly the given providers (no builtins). Specs with the same name merge.
    pub fn from_specs<I: IntoIterator<Item = ProviderSpec>>(
        specs: I,
    ) -> Result<Self, ProviderError> {
        let mut merged: Vec<ProviderSpec> = Vec::new();
        for spec in specs {
            if spec.name == OTHER_PROVIDER {
                return Err(ProviderError::ReservedName);
            }
            if !is_valid_provider_name(&spec.name) {
                return Err(ProviderError::InvalidName { name: spec.name });
            }
            match merged.iter_mut().find(|m| m.name == spec.name) {
                Some(existing) => {
                    existing.domains.extend(spec.domains);
                    existing.exclude_domains.extend(spec.exclude_domains);
                    existing.mx_host_suffixes.extend(spec.mx_host_suffixes);
                }
                None => merged.push(spec),
            }
        }
        let max = usize::from(u16::MAX) - 1;
        if merged.len() > max {
            return Err(ProviderError::TooMany { max });
        }

        let mut table = ProviderTable {
            names: vec![SharedName::new(OTHER_PROVIDER)],
            specs: Vec::with_capacity(merged.len()),
            exact: NameMap::default(),
            subdomains_of: NameMap::default(),
            any_tld: NameMap::default(),
            mx_suffixes: NameMap::default(),
        };
        for (index, spec) in merged.into_iter().enumerate() {
            let id =
                ProviderId(u16::try_from(index + 1).map_err(|_| ProviderError::TooMany { max })?);
            table.names.push(SharedName::new(&spec.name));
            table.add_spec(id, &spec)?;
            table.specs.push(spec);
        }
        table.exact.seal();
        table.subdomains_of.seal();
        table.any_tld.seal();
        table.mx_suffixes.seal();
        Ok(table)
    }

    fn add_spec(&mut self, id: ProviderId, spec: &ProviderSpec) -> Result<(), ProviderError> {
        let invalid = |field: &'static str, value: &str, reason: &'static str| {
            ProviderError::InvalidPattern {
                provider: spec.name.clone(),
                field,
                value: value.to_string(),
                reason,
            }
        };
        for raw in &spec.domains {
            let pattern =
                DomainPattern::parse(raw).map_err(|reason| invalid("domains", raw, reason))?;
            match pattern {
                DomainPattern::Exact(domain) => {
                    if let Some(other) =
                        self.exact.map.get(domain.as_str()).and_then(|e| e.provider)
                    {
                        if other != id {
                            return Err(self.conflict("domain", &domain, other, id));
                        }
                    }
                    self.exact
                        .map
                        .entry(domain.into_boxed_str())
                        .or_default()
                        .provider = Some(id);
                }
                DomainPattern::Subdomains(parent) => {
                    Self::claim(&mut self.subdomains_of, parent, id).map_err(
                        |(value, other)| self.conflict("domain pattern *.", &value, other, id),
                    )?;
                }
                DomainPattern::AnyTld(label) => {
                    Self::claim(&mut self.any_tld, label, id).map_err(|(value, other)| {
                        self.conflict("domain pattern .*", &value, other, id)
                    })?;
                }
            }
        }
        for raw in &spec.exclude_domains {
            match DomainPattern::parse(raw)
                .map_err(|reason| invalid("excludeDomains", raw, reason))?
            {
                DomainPattern::Exact(domain) => {
                    let entry = self.exact.map.entry(domain.into_boxed_str()).or_default();
                    if !entry.excluded_from.contains(&id) {
                        entry.excluded_from.push(id);
                    }
                }
                _ => {
                    return Err(invalid(
                        "excludeDomains",
                        raw,
                        "list exact domains here, without `*`",
                    ))
                }
            }
        }
        for raw in &spec.mx_host_suffixes {
            let suffix =
                parse_mx_suffix(raw).map_err(|reason| invalid("mxHostSuffixes", raw, reason))?;
            Self::claim(&mut self.mx_suffixes, suffix, id)
                .map_err(|(value, other)| self.conflict("MX host suffix", &value, other, id))?;
        }
        Ok(())
    }

    fn claim(
        map: &mut NameMap<ProviderId>,
        key: String,
        id: ProviderId,
    ) -> Result<(), (String, ProviderId)> {
        match map.map.get(key.as_str()) {
            Some(&other) if other != id => Err((key, other)),
            _ => {
                map.map.insert(key.into_boxed_str(), id);
                Ok(())
            }
        }
    }

    fn conflict(
        &self,
        what: &'static str,
        value: &str,
        first: ProviderId,
        second: ProviderId,
    ) -> ProviderError {
        let name_of = |id: ProviderId| {
            // `second` may be the provider being added, whose name is already pushed.
            self.names
                .get(id.index())
                .map(|n| n.to_string())
                .unwrap_or_default()
        };
        ProviderError::Conflict {
            what,
            value: value.to_string(),
            first: name_of(first),
            second: name_of(second),
        }
    }

    /// The provider of a recipient: its MX host when that is recognised, else its
    /// domain, else [`ProviderId::OTHER`].
    pub fn recognise(&self, recipient_domain: Option<&str>, mx_host: Option<&str>) -> ProviderId {
        if let Some(id) = mx_host.and_then(|host| self.by_mx_host(host)) {
            return id;
        }
        recipient_domain
            .and_then(|domain| self.by_domain(domain))
            .unwrap_or(ProviderId::OTHER)
    }

    /// The provider a recipient domain belongs to by name alone.
    pub fn by_domain(&self, domain: &str) -> Option<ProviderId> {
        let mut buf = [0u8; MAX_NAME_LEN];
        let domain = normalise(domain, &mut buf)?;
        let mut excluded: &[ProviderId] = &[];
        if let Some(entry) = self.exact.get(domain) {
            if let Some(id) = entry.provider {
                return Some(id);
            }
            excluded = &entry.excluded_from;
        }
        let allowed = |id: &ProviderId| !excluded.contains(id);
        if !self.subdomains_of.is_empty() {
            // The first dot gives the longest parent, so the most specific pattern wins.
            let bytes = domain.as_bytes();
            for i in (0..bytes.len()).filter(|&i| bytes[i] == b'.') {
                if let Some(id) = self
                    .subdomains_of
                    .get(&domain[i + 1..])
                    .filter(|id| allowed(id))
                {
                    return Some(*id);
                }
            }
        }
        if !self.any_tld.is_empty() {
            if let Some((label, rest)) = domain.split_once('.') {
                if is_public_suffix_shaped(rest) {
                    if let Some(id) = self.any_tld.get(label).filter(|id| allowed(id)) {
                        return Some(*id);
                    }
                }
            }
        }
        None
    }

    /// The provider an MX (or relay) host name belongs to.
    pub fn by_mx_host(&self, host: &str) -> Option<ProviderId> {
        let mut buf = [0u8; MAX_NAME_LEN];
        let host = normalise(host, &mut buf)?;
        if self.mx_suffixes.is_empty() {
            return None;
        }
        if let Some(id) = self.mx_suffixes.get(host) {
            return Some(*id);
        }
        let bytes = host.as_bytes();
        (0..bytes.len())
            .filter(|&i| bytes[i] == b'.')
            .find_map(|i| self.mx_suffixes.get(&host[i + 1..]).copied())
    }

    /// The name of a provider id (`other` for ids this table does not hold).
    pub fn name(&self, id: ProviderId) -> &SharedName {
        self.names.get(id.index()).unwrap_or(&self.names[0])
    }

    /// The id of a provider name, `other` included.
    pub fn id_of(&self, name: &str) -> Option<ProviderId> {
        self.names
            .iter()
            .position(|n| n.as_str() == name)
            .and_then(|i| u16::try_from(i).ok())
            .map(ProviderId)
    }

    /// Number of providers, `other` included (ids are `0..len()`).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never true: `other` is always there.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Provider names in id order, starting with `other`.
    pub fn names(&self) -> impl Iterator<Item = &SharedName> {
        self.names.iter()
    }

    /// The merged specs the table was built from, in id order (without `other`).
    pub fn specs(&self) -> &[ProviderSpec] {
        &self.specs
    }
}

impl Default for ProviderTable {
    fn default() -> Self {
        ProviderTable::builtin()
    }
}

/// Lowercases `raw` (dropping one trailing dot) without allocating: the input itself
/// when it already is, else a copy in `buf`.
fn normalise<'b>(raw: &'b str, buf: &'b mut [u8; MAX_NAME_LEN]) -> Option<&'b str> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(name);
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    // Only ASCII bytes changed, so the bytes are still UTF-8.
    std::str::from_utf8(out).ok()
}

/// A top-level domain (`fr`, `com`) or a country's second level (`co.jp`, `com.sg`).
fn is_public_suffix_shaped(rest: &str) -> bool {
    let alpha = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    match rest.split_once('.') {
        None => rest.len() >= 2 && (alpha(rest) || rest.starts_with("xn--")),
        Some((second, country)) => {
            (2..=3).contains(&second.len()) && alpha(second) && country.len() == 2 && alpha(country)
        }
    }
}

enum DomainPattern {
    Exact(String),
    Subdomains(String),
    AnyTld(String),
}

impl DomainPattern {
    fn parse(raw: &str) -> Result<DomainPattern, &'static str> {
        let lower = raw.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if let Some(parent) = lower.strip_prefix("*.") {
            validate_domain(parent, 1)?;
            Ok(DomainPattern::Subdomains(parent.to_string()))
        } else if let Some(label) = lower.strip_suffix(".*") {
            validate_label(label)?;
            Ok(DomainPattern::AnyTld(label.to_string()))
        } else {
            validate_domain(lower, 1)?;
            Ok(DomainPattern::Exact(lower.to_string()))
        }
    }
}

fn parse_mx_suffix(raw: &str) -> Result<String, &'static str> {
    let lower = raw.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let suffix = lower
        .strip_prefix("*.")
        .or_else(|| lower.strip_prefix('.'))
        .unwrap_or(lower);
    validate_domain(suffix, 2)?;
    Ok(suffix.to_string())
}

fn validate_domain(name: &str, min_labels: usize) -> Result<(), &'static str> {
    if name.contains('*') {
        return Err("a `*` may only stand for the first label (`*.example.com`) or the top-level domain (`hotmail.*`)");
    }
    if name.len() > 253 {
        return Err("a domain name is at most 253 characters");
    }
    let mut labels = 0;
    for label in name.split('.') {
        validate_label(label)?;
        labels += 1;
    }
    if labels < min_labels {
        return Err("an MX host suffix needs at least two labels (for example `.mail.protection.outlook.com`)");
    }
    Ok(())
}

fn validate_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label (two dots in a row, or nothing around a dot)");
    }
    if label.contains('*') {
        return Err("a `*` may only stand for the first label (`*.example.com`) or the top-level domain (`hotmail.*`)");
    }
    if label.len() > 63 {
        return Err("a label is at most 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("use letters, digits, '-' and '.' only (write internationalised names in their xn-- form)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(table: &ProviderTable, domain: Option<&str>, mx: Option<&str>) -> String {
        table.name(table.recognise(domain, mx)).to_string()
    }

    #[test]
    fn builtin_table_builds_and_lists_builtin_names_after_other() {
        let table = ProviderTable::builtin();
        let names: Vec<&str> = table.names().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "other",
                "microsoft",
                "google",
                "yahoo",
                "apple",
                "proofpoint",
                "mimecast",
                "barracuda",
                "cisco",
                "trendmicro",
                "broadcom"
            ]
        );
        assert_eq!(
            name_of(&table, Some("example.com"), Some("mx0a-001.pphosted.com")),
            "proofpoint"
        );
        assert_eq!(
            name_of(&table, None, Some("eu-smtp-inbound-1.mimecast.com")),
            "mimecast"
        );
        assert_eq!(
            name_of(&table, None, Some("d123456a.ess.barracudanetworks.com")),
            "barracuda"
        );
        assert_eq!(
            name_of(&table, None, Some("mx1.hc1234-56.iphmx.com")),
            "cisco"
        );
        assert_eq!(
            name_of(&table, None, Some("example.in.tmes.trendmicro.com")),
            "trendmicro"
        );
        assert_eq!(
            name_of(&table, None, Some("cluster1.eu.messagelabs.com")),
            "broadcom"
        );
        assert_eq!(table.id_of("other"), Some(ProviderId::OTHER));
        assert_eq!(table.id_of("nope"), None);
    }

    #[test]
    fn tld_wildcard_accepts_country_second_levels_only() {
        let table = ProviderTable::builtin();
        for d in [
            "hotmail.co.jp",
            "hotmail.fr",
            "live.com.sg",
            "outlook.sa",
            "yahoo.com.tw",
        ] {
            assert_ne!(name_of(&table, Some(d), None), "other", "{d}");
        }
        for d in [
            "hotmail.example.com",
            "hotmail.verylong.jp",
            "mail.hotmail.com",
            "hotmail",
        ] {
            assert_eq!(name_of(&table, Some(d), None), "other", "{d}");
        }
    }

    #[test]
    fn lookups_ignore_case_and_one_trailing_dot() {
        let table = ProviderTable::builtin();
        assert_eq!(name_of(&table, Some("GMail.COM."), None), "google");
        assert_eq!(name_of(&table, None, Some("ASPMX.L.Google.com.")), "google");
        assert_eq!(name_of(&table, Some(""), Some(".")), "other");
        let long = "a".repeat(300);
        assert_eq!(name_of(&table, Some(&long), Some(&long)), "other");
    }

    #[test]
    fn mx_suffix_matches_at_label_boundaries_only() {
        let table = ProviderTable::builtin();
        assert_eq!(
            name_of(&table, None, Some("mail.protection.outlook.com")),
            "microsoft"
        );
        assert_eq!(
            name_of(&table, None, Some("evilmail.protection.outlook.com")),
            "other"
        );
        assert_eq!(name_of(&table, None, Some("notgoogle.com")), "other");
    }

    #[test]
    fn subdomain_patterns_claim_subdomains_not_the_parent() {
        let table =
            ProviderTable::builtin_with([ProviderSpec::new("corp").domains(["*.corp.example"])])
                .unwrap();
        assert_eq!(name_of(&table, Some("mx.eu.corp.example"), None), "corp");
        assert_eq!(name_of(&table, Some("corp.example"), None), "other");
    }

    #[test]
    fn declaring_a_builtin_name_extends_it() {
        let table =
            ProviderTable::builtin_with([ProviderSpec::new("microsoft").domains(["example.jp"])])
                .unwrap();
        assert_eq!(name_of(&table, Some("example.jp"), None), "microsoft");
        assert_eq!(name_of(&table, Some("hotmail.com"), None), "microsoft");
        assert_eq!(table.len(), 11);
    }

    #[test]
    fn bad_specs_are_rejected_with_the_field_named() {
        let err = ProviderTable::builtin_with([ProviderSpec::new("Yahoo_JP")]).unwrap_err();
        assert!(matches!(err, ProviderError::InvalidName { .. }), "{err}");
        let err = ProviderTable::builtin_with([ProviderSpec::new("other")]).unwrap_err();
        assert_eq!(err, ProviderError::ReservedName);
        let err =
            ProviderTable::builtin_with([ProviderSpec::new("x").domains(["a.*.com"])]).unwrap_err();
        assert!(err.to_string().contains("domains entry `a.*.com`"), "{err}");
        let err = ProviderTable::builtin_with([ProviderSpec::new("x").mx_host_suffixes([".com"])])
            .unwrap_err();
        assert!(err.to_string().contains("mxHostSuffixes"), "{err}");
        let err =
            ProviderTable::builtin_with([ProviderSpec::new("x").exclude_domains(["*.a.com"])])
                .unwrap_err();
        assert!(err.to_string().contains("excludeDomains"), "{err}");
    }

    #[test]
    fn a_domain_claimed_twice_is_a_conflict_naming_both() {
        let err = ProviderTable::builtin_with([ProviderSpec::new("mine").domains(["gmail.com"])])
            .unwrap_err();
        assert_eq!(
            err,
            ProviderError::Conflict {
                what: "domain",
                value: "gmail.com".into(),
                first: "google".into(),
                second: "mine".into()
            }
        );
        let err = ProviderTable::builtin_with([
            ProviderSpec::new("mine").mx_host_suffixes(["google.com"])
        ])
        .unwrap_err();
        assert!(err.to_string().contains("`google` and `mine`"), "{err}");
    }

    #[test]
    fn shared_names_serialise_as_plain_strings() {
        let name = SharedName::new("microsoft");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"microsoft\"");
        let back: SharedName = serde_json::from_str("\"yahoo-japan\"").unwrap();
        assert_eq!(back, "yahoo-japan");
    }
}
