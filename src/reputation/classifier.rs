//! The classifier: turns one SMTP reply (and the recipient's domain or MX host)
//! into a [`Verdict`]: provider, outcome, category, whether it is conclusive, the IP
//! the reply names, and the rule that decided.
//!
//! When no rule matches, the reply class decides: 2xx delivered/none, 4xx
//! deferred/other_transient, 5xx bounced/other_permanent, and no reply code at all
//! (Postfix's own "connect to ...: Connection refused", "lost connection ...")
//! deferred/connection_failure. A 2xx reply is always delivered; rules are not
//! consulted for it.
//!
//! [`parse_reply`] reads a reply as Postfix logs it: `550 5.7.606 Access denied ...`,
//! `550-5.7.1 ...` multi-line replies joined on one line (or on several), replies
//! without an enhanced code, and the `host HOST[ADDR] said: <reply> (in reply to
//! RCPT TO command)` wrapper. It borrows from its input except for multi-line
//! replies, whose continuation codes it removes into a new string.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reputation::evidence::dnsbl_zone_of;
use crate::reputation::fingerprints::provider_from_reply;
use crate::reputation::providers::{
    ProviderError, ProviderId, ProviderSpec, ProviderTable, SharedName,
};
use crate::reputation::rules::{Claim, CompiledRules, EnhancedCode, Rule, RuleError, RuleTable};
use crate::vocab::{Category, Outcome};

/// One SMTP reply, split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpReply<'a> {
    /// The basic reply code (`550`); `None` when the text has none (connection errors).
    pub code: Option<u16>,
    /// The enhanced status code (`5.7.606`) when the reply carries one.
    pub status: Option<EnhancedCode>,
    /// The reply text without its codes, wrapper and command note; the lines of a
    /// multi-line reply joined with single spaces.
    pub text: Cow<'a, str>,
    /// The server that replied, from `host HOST[ADDR] said:` (or `connect to HOST[...]`).
    pub remote_host: Option<&'a str>,
    pub remote_addr: Option<&'a str>,
    /// The SMTP command the reply answered (`RCPT TO`, `end of DATA`).
    pub command: Option<&'a str>,
    /// The text is a server's reply (it carries a reply code or came in the `said:`
    /// wrapper), not the MTA's own remark such as `connect to HOST[ADDR]:25:
    /// Connection refused`, whose addresses are the server's, not ours.
    pub from_server: bool,
}

impl SmtpReply<'_> {
    /// A reply with the given parts and no wrapper information.
    pub fn new(code: Option<u16>, status: Option<EnhancedCode>, text: &str) -> SmtpReply<'_> {
        SmtpReply {
            code,
            status,
            text: Cow::Borrowed(text),
            remote_host: None,
            remote_addr: None,
            command: None,
            from_server: code.is_some() || status.is_some(),
        }
    }

    /// The outcome the codes imply: 2xx delivered, 4xx deferred, 5xx bounced; the
    /// enhanced code's class when there is no basic code; deferred with neither
    /// (the connection failed before any reply).
    pub fn implied_outcome(&self) -> Outcome {
        let class = self
            .code
            .map(|c| c / 100)
            .or(self.status.map(|s| u16::from(s.class)));
        match class {
            Some(2) => Outcome::Delivered,
            Some(5) => Outcome::Bounced,
            _ => Outcome::Deferred,
        }
    }
}

const WRAPPER_SAID: &str = " said: ";
const WRAPPER_REFUSED: &str = " refused to talk to me: ";
const IN_REPLY_TO: &str = " (in reply to ";
const COMMAND_END: &str = " command)";

/// Splits a reply as Postfix logs it. Never fails: text it cannot read becomes a
/// reply without codes.
pub fn parse_reply(input: &str) -> SmtpReply<'_> {
    let mut text = strip_dsn_type(input.trim());
    let mut remote_host = None;
    let mut remote_addr = None;
    let mut command = None;
    let mut said = false;

    if let Some(exim) = split_exim_wrapper(text) {
        (remote_host, remote_addr, command) = (exim.host, exim.addr, exim.command);
        said = true;
        text = exim.reply;
    } else if let Some(rest) = text.strip_prefix("host ") {
        // The endpoint HOST[ADDR] has no spaces: the wrapper's verb follows the first one.
        if let Some(space) = memchr::memchr(b' ', rest.as_bytes()) {
            let verb = &rest[space..];
            let body = verb
                .strip_prefix(WRAPPER_SAID)
                .or_else(|| verb.strip_prefix(WRAPPER_REFUSED));
            if let Some(body) = body {
                (remote_host, remote_addr) = split_endpoint(&rest[..space]);
                said = true;
                text = body.trim_start();
            }
        }
    } else if let Some((endpoint, body)) = quoted_said(text) {
        (remote_host, remote_addr) = endpoint.map_or((None, None), split_endpoint);
        said = true;
        text = body;
    } else {
        remote_host = connection_error_host(text);
    }

    if text.ends_with(COMMAND_END) {
        if let Some(open) = memchr::memrchr(b'(', text.as_bytes()) {
            let note = &text[open..text.len() - COMMAND_END.len()];
            if let Some(inner) = note.strip_prefix(&IN_REPLY_TO[1..]) {
                if open > 0
                    && text.as_bytes()[open - 1] == b' '
                    && !inner.is_empty()
                    && !inner.contains(')')
                {
                    command = Some(inner);
                    text = text[..open].trim_end();
                }
            }
        }
    }

    let head = split_codes(text);
    let from_server = said || head.code.is_some() || head.status.is_some();
    let multi_line =
        head.continued || memchr::memchr2(b'\n', b'\r', head.body.as_bytes()).is_some();
    let body = if multi_line {
        Cow::Owned(join_continuation_lines(
            head.code_text,
            head.status_text,
            head.body,
        ))
    } else {
        Cow::Borrowed(head.body)
    };
    SmtpReply {
        code: head.code,
        status: head.status,
        text: body,
        remote_host,
        remote_addr,
        command,
        from_server,
    }
}

/// The wrapper as bounce notices and web pages quote it, without Postfix's
/// `host ` in front: `mx.example.com[192.0.2.1] said: 550 ...`, `host[] said:`,
/// or qmail's `Remote host said: 554 ...`. The endpoint has no spaces.
fn quoted_said(text: &str) -> Option<(Option<&str>, &str)> {
    let (head, body) = text.split_once(WRAPPER_SAID)?;
    let body = body.trim_start();
    if !body.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if head.eq_ignore_ascii_case("remote host") {
        return Some((None, body));
    }
    let endpoint_like = !head.is_empty()
        && head.len() <= 300
        && !head.contains(char::is_whitespace)
        && (head.contains('[') || head.contains('.'));
    endpoint_like.then_some((Some(head), body))
}

/// A DSN's `Diagnostic-Code: smtp; 550 ...` carries its type in front of the reply.
fn strip_dsn_type(text: &str) -> &str {
    match text.get(..5) {
        Some(head) if head.eq_ignore_ascii_case("smtp;") => text[5..].trim_start(),
        _ => text,
    }
}

struct EximWrapper<'a> {
    host: Option<&'a str>,
    addr: Option<&'a str>,
    command: Option<&'a str>,
    reply: &'a str,
}

const EXIM_SAID: &str = " SMTP error from remote mail server after ";

/// Exim's `host HOST [ADDR] SMTP error from remote mail server after COMMAND: <reply>`
/// (`after initial connection:` for a greeting).
fn split_exim_wrapper(text: &str) -> Option<EximWrapper<'_>> {
    let rest = text.strip_prefix("host ")?;
    let at = rest.find(EXIM_SAID)?;
    let endpoint = &rest[..at];
    let after = &rest[at + EXIM_SAID.len()..];
    // The command may itself hold ": " (`MAIL FROM:<a@b> SIZE=1`): the reply is
    // after the first ": " that a reply code follows.
    let mut from = 0;
    let (command, reply) = loop {
        let colon = after[from..].find(": ")? + from;
        let candidate = &after[colon + 2..];
        if candidate
            .as_bytes()
            .first()
            .is_some_and(|b| matches!(b, b'2' | b'4' | b'5'))
        {
            break (&after[..colon], candidate);
        }
        from = colon + 2;
    };
    let (host, addr) = match endpoint.split_once(" [") {
        Some((host, addr)) => (host, addr.strip_suffix(']')),
        None => (endpoint, None),
    };
    Some(EximWrapper {
        host: (!host.is_empty()).then_some(host),
        addr: addr.filter(|a| !a.is_empty()),
        command: Some(command),
        reply,
    })
}

/// `HOST[ADDR]` (the port, if any, after it is ignored).
fn split_endpoint(endpoint: &str) -> (Option<&str>, Option<&str>) {
    match endpoint.split_once('[') {
        Some((host, rest)) => {
            let addr = rest
                .split_once(']')
                .map(|(addr, _)| addr)
                .filter(|a| !a.is_empty());
            ((!host.is_empty()).then_some(host), addr)
        }
        None => ((!endpoint.is_empty()).then_some(endpoint), None),
    }
}

/// The server named by Postfix's own connection errors, which carry no reply.
fn connection_error_host(text: &str) -> Option<&str> {
    let text = text
        .strip_prefix("delivery temporarily suspended: ")
        .unwrap_or(text);
    let rest = ["connect to ", "lost connection with ", "conversation with "]
        .iter()
        .find_map(|prefix| text.strip_prefix(prefix))?;
    let host = &rest[..rest.find(['[', ' ', ':']).unwrap_or(rest.len())];
    (!host.is_empty()).then_some(host)
}

struct ReplyHead<'a> {
    code: Option<u16>,
    code_text: Option<&'a str>,
    continued: bool,
    status: Option<EnhancedCode>,
    status_text: Option<&'a str>,
    body: &'a str,
}

/// Reads `550-5.7.1 rest`, `550 rest`, `5.7.1 rest` or just `rest`.
fn split_codes(text: &str) -> ReplyHead<'_> {
    let mut head = ReplyHead {
        code: None,
        code_text: None,
        continued: false,
        status: None,
        status_text: None,
        body: text,
    };
    let bytes = text.as_bytes();
    let mut rest = text;
    if bytes.len() >= 3
        && matches!(bytes[0], b'2' | b'4' | b'5')
        && bytes[1].is_ascii_digit()
        && bytes[2].is_ascii_digit()
        && matches!(bytes.get(3), None | Some(b' ' | b'-' | b'\r' | b'\n'))
    {
        head.code = text[..3].parse().ok();
        head.code_text = Some(&text[..3]);
        head.continued = bytes.get(3) == Some(&b'-');
        rest = text.get(4..).unwrap_or("");
    }
    if let Some((status, used)) = EnhancedCode::parse_prefix(rest.as_bytes()) {
        if matches!(rest.as_bytes().get(used), None | Some(b' ' | b'\r' | b'\n')) {
            head.status = Some(status);
            head.status_text = Some(&rest[..used]);
            rest = &rest[used..];
        }
    }
    head.body = rest.trim();
    head
}

/// Joins the lines of a multi-line reply, dropping each line's repeated
/// `550-5.7.1` / `550 5.7.1` prefix. Postfix logs such a reply on one line with the
/// prefixes still inside (`... this message is 550-5.7.1 likely unsolicited ...`).
fn join_continuation_lines(code: Option<&str>, status: Option<&str>, body: &str) -> String {
    let flat: Cow<'_, str> = if body.contains(['\n', '\r']) {
        Cow::Owned(
            body.split(['\n', '\r'])
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        )
    } else {
        Cow::Borrowed(body)
    };
    let mut out = String::with_capacity(flat.len());
    let mut push = |segment: &str| {
        let segment = segment.trim();
        if !segment.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(segment);
        }
    };
    let Some(code) = code else {
        push(&flat);
        return out;
    };
    let mut rest: &str = &flat;
    // Each joined line starts at a space followed by the code, `-` or ` `, and the
    // same enhanced code when the first line had one.
    let finder = memchr::memmem::Finder::new(code);
    let mut search_from = 0;
    while let Some(found) = finder
        .find(&rest.as_bytes()[search_from..])
        .map(|i| i + search_from)
    {
        let after_code = found + code.len();
        let is_marker = found > 0
            && rest.as_bytes()[found - 1] == b' '
            && matches!(rest.as_bytes().get(after_code), Some(b'-' | b' '));
        let marker_end = if !is_marker {
            None
        } else {
            match status {
                None => Some(after_code + 1),
                Some(status) => {
                    let status_at = after_code + 1;
                    let end = status_at + status.len();
                    let status_here = rest.get(status_at..end) == Some(status);
                    let ends_there = matches!(rest.as_bytes().get(end), None | Some(b' '));
                    (status_here && ends_there).then_some(end)
                }
            }
        };
        match marker_end {
            Some(end) => {
                push(&rest[..found]);
                rest = &rest[end.min(rest.len())..];
                search_from = 0;
            }
            None => search_from = after_code.min(rest.len()),
        }
        if search_from >= rest.len() {
            break;
        }
    }
    push(rest);
    out
}

/// Words after which a bare address names the sending IP ("Messages from 192.0.2.1",
/// "Sender IP 192.0.2.1 is listed"). Other bare dotted numbers (Yahoo's trailing
/// "- 4.16.55.1;") are not taken for an address.
const IP_LEAD_WORDS: [&str; 6] = ["from", "ip", "address", "host", "client", "sender"];

/// The IP address a reply names: in `[IP]`, `[IPv6:IP]`, `(IP)`, `ip=IP`, or bare
/// after a word such as "from" or "IP". The first one found wins.
pub fn extract_ip(text: &str) -> Option<IpAddr> {
    let bytes = text.as_bytes();
    let is_ip_byte = |b: u8| b.is_ascii_hexdigit() || b == b'.' || b == b':';
    let mut start = 0;
    while start < bytes.len() {
        let b = bytes[start];
        let starts_here = (b.is_ascii_hexdigit() || b == b':')
            && start > 0
            && matches!(bytes[start - 1], b'[' | b'(' | b'=' | b' ' | b':');
        if !starts_here {
            start += 1;
            continue;
        }
        let len = bytes[start..]
            .iter()
            .take_while(|&&b| is_ip_byte(b))
            .count();
        let end = start + len;
        if let Some(ip) = candidate_ip(&text[start..end]) {
            if names_an_ip(text, start, end) {
                return Some(ip);
            }
        }
        start = end.max(start + 1);
    }
    None
}

fn candidate_ip(run: &str) -> Option<IpAddr> {
    if run.len() < 2 || !run.contains(['.', ':']) {
        return None;
    }
    run.parse()
        .ok()
        .or_else(|| run.trim_end_matches(['.', ':']).parse().ok())
}

/// Whether the address at `start..end` stands where replies put the sender's IP.
fn names_an_ip(text: &str, start: usize, end: usize) -> bool {
    let bytes = text.as_bytes();
    let next = bytes.get(end).copied();
    let closes = |close: u8| next == Some(close) || next.is_some_and(|b| b.is_ascii_whitespace());
    match bytes[start - 1] {
        b'[' => closes(b']'),
        b'(' => closes(b')'),
        b'=' => start >= 3 && bytes[start - 3..start - 1].eq_ignore_ascii_case(b"ip"),
        b':' => {
            let before = &bytes[..start - 1];
            before.len() >= 5
                && before[before.len() - 5..].eq_ignore_ascii_case(b"[ipv6")
                && closes(b']')
        }
        b' ' => {
            let mut word_end = start - 1;
            while word_end > 0 && bytes[word_end - 1] == b'[' {
                word_end -= 1;
            }
            let word_len = bytes[..word_end]
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_alphabetic())
                .count();
            let word = &bytes[word_end - word_len..word_end];
            IP_LEAD_WORDS
                .iter()
                .any(|lead| word.eq_ignore_ascii_case(lead.as_bytes()))
                && (next.is_none()
                    || next.is_some_and(|b| b.is_ascii_whitespace() || b",;)".contains(&b)))
        }
        _ => false,
    }
}

/// What one reply means for one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Verdict {
    pub provider: SharedName,
    pub outcome: Outcome,
    pub category: Category,
    /// One such reply is enough to mark the (IP, provider) pair blocked, provided
    /// `ip` (when the reply names one) is the sending IP.
    pub conclusive: bool,
    /// The IP the reply names, for failures only.
    pub ip: Option<IpAddr>,
    /// The id of the rule that decided; `None` when the reply class did.
    pub rule: Option<SharedName>,
    /// How the provider was found: the relay (MX) host, the recipient domain, or
    /// the reply's own words; `none` when nothing named one (`other`).
    #[serde(default)]
    pub provider_source: ProviderSource,
    /// For a reply that only quotes a DNS block list (a claim any receiver can
    /// make): the zone it names, so the claim can be checked; see
    /// [`crate::reputation::evidence`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsbl_zone: Option<SharedName>,
    /// Seconds the pair should send nothing after this reply (a rule's `pause`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_seconds: Option<i64>,
}

/// How a verdict's provider was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderSource {
    /// The MX or relay host that answered is the provider's.
    Relay,
    /// The recipient domain is the provider's.
    Domain,
    /// Neither was known; the reply's own words name the provider.
    Reply,
    /// The caller named the provider.
    Given,
    /// Nothing named a provider: `other`.
    #[default]
    None,
}

impl ProviderSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderSource::Relay => "relay",
            ProviderSource::Domain => "domain",
            ProviderSource::Reply => "reply",
            ProviderSource::Given => "given",
            ProviderSource::None => "none",
        }
    }
}

/// Providers to declare and rules to try first, as a user writes them in YAML:
///
/// ```yaml
/// providers:
///   - name: yahoo-japan
///     domains: [yahoo.co.jp]
///     mxHostSuffixes: [.mail.yahoo.co.jp]
/// rules:
///   - id: yahoo-japan-blocked
///     provider: yahoo-japan
///     code: 5xx
///     text: ["blocked"]
///     category: ip_blocklisted
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClassifierConfig {
    pub providers: Vec<ProviderSpec>,
    pub rules: RuleTable,
}

/// Why a classifier could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifierError {
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Providers(#[from] ProviderError),
    #[error("providers[{index}] ({name}): field `{field}`: {problem}")]
    ProviderField {
        index: usize,
        name: String,
        field: String,
        problem: String,
    },
    #[error("classifier file: {0}")]
    Shape(String),
}

const PROVIDER_FIELDS: [&str; 4] = ["name", "domains", "excludeDomains", "mxHostSuffixes"];

impl ClassifierConfig {
    /// Reads a document with optional `providers:` and `rules:` lists.
    pub fn from_yaml(src: &str) -> Result<Self, ClassifierError> {
        if src.trim().is_empty() {
            return Ok(ClassifierConfig::default());
        }
        let doc: Value =
            serde_saphyr::from_str(src).map_err(|e| RuleError::Syntax(e.to_string()))?;
        let map = match doc {
            Value::Null => return Ok(ClassifierConfig::default()),
            Value::Object(map) => map,
            _ => {
                return Err(ClassifierError::Shape(
                    "expected a mapping with `providers:` and/or `rules:`".into(),
                ))
            }
        };
        if let Some(key) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "providers" | "rules"))
        {
            return Err(ClassifierError::Shape(format!(
                "unknown top-level key `{key}`; expected providers or rules"
            )));
        }
        let providers = match map.get("providers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_provider(i, v))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ClassifierError::Shape("`providers` must be a list".into())),
        };
        let rules = match map.get("rules") {
            None | Some(Value::Null) => RuleTable::default(),
            Some(Value::Array(items)) => RuleTable::from_values(items)?,
            Some(_) => return Err(ClassifierError::Shape("`rules` must be a list".into())),
        };
        Ok(ClassifierConfig { providers, rules })
    }
}

fn parse_provider(index: usize, value: &Value) -> Result<ProviderSpec, ClassifierError> {
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .map_or("no name".to_string(), |n| format!("`{n}`"));
    let err = |field: &str, problem: String| ClassifierError::ProviderField {
        index,
        name: name.clone(),
        field: field.to_string(),
        problem,
    };
    let Value::Object(map) = value else {
        return Err(err(
            "name",
            "a provider is a mapping with `name` and its patterns".into(),
        ));
    };
    let mut spec = ProviderSpec::default();
    for (key, value) in map {
        let strings = || -> Result<Vec<String>, ClassifierError> {
            let items = match value {
                Value::Array(items) => items.as_slice(),
                single => std::slice::from_ref(single),
            };
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(key, "expected strings".into()))
                })
                .collect()
        };
        match key.as_str() {
            "name" => {
                spec.name = value
                    .as_str()
                    .ok_or_else(|| err("name", "expected a string".into()))?
                    .to_string()
            }
            "domains" => spec.domains = strings()?,
            "excludeDomains" => spec.exclude_domains = strings()?,
            "mxHostSuffixes" => spec.mx_host_suffixes = strings()?,
            _ => {
                return Err(err(
                    key,
                    format!(
                        "unknown field; a provider has the fields {}",
                        PROVIDER_FIELDS.join(", ")
                    ),
                ))
            }
        }
    }
    if spec.name.is_empty() {
        return Err(err(
            "name",
            "missing: every provider needs a name such as yahoo-japan".into(),
        ));
    }
    Ok(spec)
}

/// Providers and rules, compiled once; classification then only reads them.
#[derive(Clone, Debug)]
pub struct Classifier {
    providers: ProviderTable,
    rules: CompiledRules,
}

impl Classifier {
    /// The builtin providers and rules.
    pub fn builtin() -> Self {
        static BUILTIN: OnceLock<Classifier> = OnceLock::new();
        BUILTIN
            .get_or_init(
                || match Classifier::new(ProviderTable::builtin(), RuleTable::builtin()) {
                    Ok(classifier) => classifier,
                    Err(err) => unreachable!("the builtin classifier is valid (tested): {err}"),
                },
            )
            .clone()
    }

    /// Exactly these providers and rules (add builtins with
    /// [`ProviderTable::builtin_with`] and [`RuleTable::with_defaults`]).
    pub fn new(providers: ProviderTable, rules: RuleTable) -> Result<Self, ClassifierError> {
        let rules = CompiledRules::new(&rules, &providers)?;
        Ok(Classifier { providers, rules })
    }

    /// The builtin table extended by a user's declared providers, with the user's
    /// rules tried before the builtin ones.
    pub fn with_config(config: ClassifierConfig) -> Result<Self, ClassifierError> {
        let providers = ProviderTable::builtin_with(config.providers)?;
        Classifier::new(providers, config.rules.with_defaults())
    }

    /// [`Classifier::with_config`] from a user's YAML file.
    pub fn from_yaml(src: &str) -> Result<Self, ClassifierError> {
        Classifier::with_config(ClassifierConfig::from_yaml(src)?)
    }

    pub fn providers(&self) -> &ProviderTable {
        &self.providers
    }

    /// The rules in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        self.rules.rules()
    }

    /// The provider of a recipient (MX host first, then domain).
    pub fn provider_of(&self, recipient_domain: Option<&str>, mx_host: Option<&str>) -> ProviderId {
        self.providers.recognise(recipient_domain, mx_host)
    }

    /// The provider and how it was found: the MX (relay) host, else the recipient
    /// domain, else, only when neither is known, the reply's own words
    /// ([`crate::reputation::fingerprints`]). A known but unrecognised relay or
    /// domain is `other`: a receiving server cannot talk its way into being a
    /// big provider.
    pub fn find_provider(
        &self,
        recipient_domain: Option<&str>,
        mx_host: Option<&str>,
        reply: &SmtpReply<'_>,
    ) -> (ProviderId, ProviderSource) {
        if let Some(id) = mx_host.and_then(|host| self.providers.by_mx_host(host)) {
            return (id, ProviderSource::Relay);
        }
        if let Some(id) = recipient_domain.and_then(|d| self.providers.by_domain(d)) {
            return (id, ProviderSource::Domain);
        }
        if mx_host.is_none() && recipient_domain.is_none() {
            if let Some(id) = provider_from_reply(reply).and_then(|name| self.providers.id_of(name))
            {
                return (id, ProviderSource::Reply);
            }
        }
        (ProviderId::OTHER, ProviderSource::None)
    }

    /// Classifies a reply to a recipient; without `mx_host`, the server named in
    /// the reply's `host HOST[ADDR] said:` wrapper serves as the MX host.
    pub fn classify(
        &self,
        reply: &SmtpReply<'_>,
        recipient_domain: Option<&str>,
        mx_host: Option<&str>,
    ) -> Verdict {
        let (provider, source) =
            self.find_provider(recipient_domain, mx_host.or(reply.remote_host), reply);
        self.classify_found(reply, provider, source, None)
    }

    /// [`parse_reply`] then [`Classifier::classify`].
    pub fn classify_text(
        &self,
        reply: &str,
        recipient_domain: Option<&str>,
        mx_host: Option<&str>,
    ) -> Verdict {
        self.classify(&parse_reply(reply), recipient_domain, mx_host)
    }

    /// Classifies a reply for a known provider. `observed` is what the MTA says
    /// happened (a log line's status); it wins over what the codes or a rule imply.
    pub fn classify_for(
        &self,
        reply: &SmtpReply<'_>,
        provider: ProviderId,
        observed: Option<Outcome>,
    ) -> Verdict {
        let source = if provider == ProviderId::OTHER {
            ProviderSource::None
        } else {
            ProviderSource::Given
        };
        self.classify_found(reply, provider, source, observed)
    }

    /// [`Classifier::classify_for`] with the way the provider was found
    /// ([`Classifier::find_provider`]).
    pub fn classify_found(
        &self,
        reply: &SmtpReply<'_>,
        provider: ProviderId,
        provider_source: ProviderSource,
        observed: Option<Outcome>,
    ) -> Verdict {
        let provider_name = self.providers.name(provider).clone();
        if observed.unwrap_or_else(|| reply.implied_outcome()) == Outcome::Delivered {
            return Verdict {
                provider: provider_name,
                outcome: Outcome::Delivered,
                category: Category::None,
                conclusive: false,
                ip: None,
                rule: None,
                provider_source,
                dnsbl_zone: None,
                pause_seconds: None,
            };
        }
        let rule = self
            .rules
            .first_match(provider, reply.code, reply.status, &reply.text);
        let outcome = observed
            .or(rule.and_then(|r| r.outcome))
            .unwrap_or_else(|| reply.implied_outcome());
        let (category, conclusive, rule_id) = match rule {
            Some(rule) => (rule.category, rule.conclusive, Some(rule.id.clone())),
            None => (fallback_category(reply.code, outcome), false, None),
        };
        let ip = if reply.from_server {
            extract_ip(&reply.text)
        } else {
            None
        };
        let claim = rule.is_some_and(|r| r.claim == Some(Claim::Dnsbl));
        Verdict {
            provider: provider_name,
            outcome,
            category,
            // A block list quoted without our address is about nobody in particular.
            conclusive: conclusive && (!claim || ip.is_some()),
            ip,
            rule: rule_id,
            provider_source,
            dnsbl_zone: if claim {
                dnsbl_zone_of(&reply.text).map(SharedName::from)
            } else {
                None
            },
            pause_seconds: rule.and_then(|r| r.pause_seconds),
        }
    }
}

/// The category when no rule matched a failure.
fn fallback_category(code: Option<u16>, outcome: Outcome) -> Category {
    match code.map(|c| c / 100) {
        None => Category::ConnectionFailure,
        Some(4) => Category::OtherTransient,
        Some(5) => Category::OtherPermanent,
        Some(_) if outcome == Outcome::Bounced => Category::OtherPermanent,
        Some(_) => Category::OtherTransient,
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_postfix_wrapper_and_command() {
        let r = parse_reply(
            "host mx1.example.com[192.0.2.25] said: 550 5.1.1 <a@example.com>: Recipient address rejected (in reply to RCPT TO command)",
        );
        assert_eq!(r.code, Some(550));
        assert_eq!(r.status, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(r.text, "<a@example.com>: Recipient address rejected");
        assert_eq!(r.remote_host, Some("mx1.example.com"));
        assert_eq!(r.remote_addr, Some("192.0.2.25"));
        assert_eq!(r.command, Some("RCPT TO"));
        assert!(matches!(r.text, Cow::Borrowed(_)));
    }

    #[test]
    fn parses_refused_to_talk_and_connection_errors() {
        let r = parse_reply("host mx.example.net[198.51.100.7] refused to talk to me: 554 5.7.1 Service unavailable");
        assert_eq!((r.code, r.remote_host), (Some(554), Some("mx.example.net")));
        let r = parse_reply("connect to mx.example.net[198.51.100.7]:25: Connection refused");
        assert_eq!(
            (r.code, r.status, r.remote_host),
            (None, None, Some("mx.example.net"))
        );
        assert_eq!(
            r.text,
            "connect to mx.example.net[198.51.100.7]:25: Connection refused"
        );
        let r = parse_reply("delivery temporarily suspended: lost connection with mx.example.net[198.51.100.7] while sending RCPT TO");
        assert_eq!(r.remote_host, Some("mx.example.net"));
    }

    #[test]
    fn joins_multi_line_replies_in_both_shapes() {
        let one_line = "550-5.7.1 [203.0.113.10] Our system has detected that this message is 550-5.7.1 likely unsolicited mail. 550 5.7.1  https://support.google.com/mail/?p=UnsolicitedMessageError x - gsmtp";
        let r = parse_reply(one_line);
        assert_eq!(r.code, Some(550));
        assert_eq!(r.status, Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(
            r.text,
            "[203.0.113.10] Our system has detected that this message is likely unsolicited mail. https://support.google.com/mail/?p=UnsolicitedMessageError x - gsmtp"
        );
        let lines = "550-5.7.1 first line\r\n550-5.7.1 second 550 inside\r\n550 5.7.1 last";
        assert_eq!(parse_reply(lines).text, "first line second 550 inside last");
        let no_status = "451-Greylisted\n451 come back later";
        let r = parse_reply(no_status);
        assert_eq!((r.code, r.status), (Some(451), None));
        assert_eq!(r.text, "Greylisted come back later");
    }

    #[test]
    fn codes_only_where_they_belong() {
        assert_eq!(
            parse_reply("5.7.606 Access denied").status,
            Some(EnhancedCode::new(5, 7, 606))
        );
        assert_eq!(parse_reply("5.7.606 Access denied").code, None);
        let r = parse_reply("5500 not a code");
        assert_eq!((r.code, r.status), (None, None));
        let r = parse_reply("550 5.7.1x text");
        assert_eq!((r.code, r.status), (Some(550), None));
        assert_eq!(parse_reply("250").code, Some(250));
        assert_eq!(parse_reply("").text, "");
    }

    #[test]
    fn extracts_ips_in_the_places_replies_put_them() {
        let ip = |t: &str| extract_ip(t).map(|ip| ip.to_string());
        assert_eq!(
            ip("banned sending IP [203.0.113.10]. To request"),
            Some("203.0.113.10".into())
        );
        assert_eq!(
            ip("banned sender[203.0.113.11]."),
            Some("203.0.113.11".into())
        );
        assert_eq!(ip("see (198.51.100.1) here"), Some("198.51.100.1".into()));
        assert_eq!(
            ip("dnsbl-lookup.cgi?ip=198.51.100.2"),
            Some("198.51.100.2".into())
        );
        assert_eq!(
            ip("Messages from 198.51.100.3 temporarily deferred - 4.16.55.1;"),
            Some("198.51.100.3".into())
        );
        assert_eq!(
            ip("[198.51.100.4      12] Our system"),
            Some("198.51.100.4".into())
        );
        assert_eq!(
            ip("banned sending IP [2001:db8::25]."),
            Some("2001:db8::25".into())
        );
        assert_eq!(
            ip("client [IPv6:2001:db8::26] said"),
            Some("2001:db8::26".into())
        );
        assert_eq!(ip("from 198.51.100.5."), Some("198.51.100.5".into()));
        assert_eq!(ip("deferred - 4.16.55.1; see"), None);
        assert_eq!(
            ip("[DB8EUR06FT056.eop-eur06.prod.protection.outlook.com 2023-09-27T21:25:31.391Z]"),
            None
        );
        assert_eq!(ip("at 12:34:56 AS(1430)"), None);
        assert_eq!(ip("[300.1.2.3]"), None);
    }

    #[test]
    fn fallbacks_follow_the_reply_class() {
        let c = Classifier::builtin();
        let v = c.classify_text("250 2.0.0 OK", Some("example.org"), None);
        assert_eq!(
            (v.outcome, v.category, v.rule.clone(), v.ip),
            (Outcome::Delivered, Category::None, None, None)
        );
        let v = c.classify_text("451 4.3.0 try later", Some("example.org"), None);
        assert_eq!(
            (v.outcome, v.category),
            (Outcome::Deferred, Category::OtherTransient)
        );
        let v = c.classify_text("554 5.6.0 nope", Some("example.org"), None);
        assert_eq!(
            (v.outcome, v.category),
            (Outcome::Bounced, Category::OtherPermanent)
        );
        let v = c.classify_text("something odd happened", Some("example.org"), None);
        assert_eq!(
            (v.outcome, v.category),
            (Outcome::Deferred, Category::ConnectionFailure)
        );
        assert_eq!(v.provider, "other");
    }

    #[test]
    fn the_wrapper_host_identifies_the_provider_when_no_mx_is_given() {
        let c = Classifier::builtin();
        let v = c.classify_text(
            "host acclaim-jp.mail.protection.outlook.com[52.101.1.1] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]. (in reply to MAIL FROM command)",
            Some("acclaim.jp"),
            None,
        );
        assert_eq!(v.provider, "microsoft");
        assert_eq!(v.rule.as_deref(), Some("microsoft-banned-sending-ip"));
    }

    #[test]
    fn observed_outcome_wins_and_rule_outcome_overrides_the_code() {
        let c = Classifier::from_yaml(
            "rules:\n  - {id: soft, code: 550, text: [\"try again\"], category: other_transient, outcome: deferred}\n",
        )
        .unwrap();
        let reply = parse_reply("550 please try again");
        let v = c.classify(&reply, None, None);
        assert_eq!(
            (v.outcome, v.category, v.rule.as_deref()),
            (Outcome::Deferred, Category::OtherTransient, Some("soft"))
        );
        let v = c.classify_for(&reply, ProviderId::OTHER, Some(Outcome::Bounced));
        assert_eq!(v.outcome, Outcome::Bounced);
        let v = c.classify_for(&reply, ProviderId::OTHER, Some(Outcome::Delivered));
        assert_eq!((v.category, v.rule), (Category::None, None));
    }

    #[test]
    fn config_files_report_provider_fields() {
        let err = ClassifierConfig::from_yaml("providers:\n  - {name: x, mxHosts: [a.b.c]}\n")
            .unwrap_err();
        assert_eq!(err.to_string(), "providers[0] (`x`): field `mxHosts`: unknown field; a provider has the fields name, domains, excludeDomains, mxHostSuffixes");
        let err = ClassifierConfig::from_yaml("providers:\n  - {domains: [a.b]}\n").unwrap_err();
        assert!(err.to_string().contains("field `name`: missing"), "{err}");
        let err = ClassifierConfig::from_yaml("provider: []\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown top-level key `provider`"),
            "{err}"
        );
        let err = Classifier::from_yaml("providers:\n  - {name: Bad}\n").unwrap_err();
        assert!(err.to_string().contains("`Bad` is not valid"), "{err}");
    }

    #[test]
    fn a_classifier_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<Classifier>();
        shareable::<Verdict>();
    }

    #[test]
    fn verdicts_serialise_with_the_documented_field_names() {
        let v = Classifier::builtin().classify_text(
            "550 5.7.606 Access denied, banned sending IP [203.0.113.10].",
            Some("hotmail.com"),
            None,
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "provider": "microsoft", "outcome": "bounced", "category": "ip_blocklisted",
                "conclusive": true, "ip": "203.0.113.10", "rule": "microsoft-banned-sending-ip",
                "provider_source": "domain"
            })
        );
        let back: Verdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
    }
}
