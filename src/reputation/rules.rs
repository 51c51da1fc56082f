//! Classification rules as data: which SMTP replies mean what.
//!
//! A rule names an id, an optional provider scope, match conditions (basic reply
//! code or code class, enhanced status code or range, case-insensitive text
//! substrings, a regex) and its result (category, whether one such reply is
//! conclusive, an optional outcome override). The builtin table lives in
//! `default_rules.yaml` (embedded); users put their own rules in front of it.
//! docs/CLASSIFIER.md describes the format.
//!
//! [`CompiledRules`] prepares a table for speed once: the rules that can apply are
//! pre-sorted per provider and per reply class, every text pattern of every rule is
//! searched in one Aho-Corasick pass (run lazily, at most once per reply), and a
//! rule's regex only runs when its cheaper conditions already hold.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use crate::reputation::providers::{FastMap, ProviderId, ProviderTable, SharedName};
use crate::vocab::{is_valid_provider_name, Category, Outcome, UnknownWord};

/// The builtin rule table, embedded at build time.
pub const DEFAULT_RULES_YAML: &str = include_str!("default_rules.yaml");

/// An RFC 3463 enhanced status code such as `5.7.606`. Ordered by (class, subject,
/// detail), which is what ranges compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Reads exactly `C.SSS.DDD` (class 2, 4 or 5; subject and detail of 1-3 digits).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let (code, used) = Self::parse_prefix(bytes)?;
        (used == bytes.len()).then_some(code)
    }

    /// Reads a code at the start of `bytes`; returns it and the bytes it used.
    pub(crate) fn parse_prefix(bytes: &[u8]) -> Option<(Self, usize)> {
        let class = match bytes.first()? {
            c @ (b'2' | b'4' | b'5') => c - b'0',
            _ => return None,
        };
        if bytes.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, len_subject) = read_number(&bytes[2..])?;
        let after_subject = 2 + len_subject;
        if bytes.get(after_subject) != Some(&b'.') {
            return None;
        }
        let (detail, len_detail) = read_number(&bytes[after_subject + 1..])?;
        Some((
            EnhancedCode {
                class,
                subject,
                detail,
            },
            after_subject + 1 + len_detail,
        ))
    }
}

/// 1-3 ASCII digits, not followed by a fourth.
fn read_number(bytes: &[u8]) -> Option<(u16, usize)> {
    let len = bytes
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if len == 0 || len > 3 {
        return None;
    }
    let value = bytes[..len]
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Some((value, len))
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for EnhancedCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EnhancedCode::parse(s.trim()).ok_or_else(|| {
            format!("`{s}` is not an enhanced status code; expected X.Y.Z such as 5.7.606")
        })
    }
}

/// A condition on the basic reply code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodePattern {
    /// Codes `lo..=hi`: `550` is 550..=550, `55x` is 550..=559, `5xx` is 500..=599.
    Range(u16, u16),
    /// The reply has no basic code at all (Postfix's own connection errors).
    NoCode,
}

impl CodePattern {
    pub fn matches(self, code: Option<u16>) -> bool {
        match (self, code) {
            (CodePattern::Range(lo, hi), Some(code)) => (lo..=hi).contains(&code),
            (CodePattern::NoCode, None) => true,
            _ => false,
        }
    }

    fn parse(text: &str) -> Result<Self, RuleProblem> {
        let lower = text.trim().to_ascii_lowercase();
        if lower == "none" {
            return Ok(CodePattern::NoCode);
        }
        let bytes = lower.as_bytes();
        let shape_ok = bytes.len() == 3
            && bytes[0].is_ascii_digit()
            && (bytes[1].is_ascii_digit() || bytes[1] == b'x')
            && (bytes[2].is_ascii_digit() || bytes[2] == b'x')
            && !(bytes[1] == b'x' && bytes[2] != b'x');
        if !shape_ok {
            return Err(RuleProblem::NotCodePattern {
                text: text.to_string(),
            });
        }
        match bytes[0] {
            b'4' | b'5' => {}
            b'2' => return Err(RuleProblem::SuccessCode),
            _ => {
                return Err(RuleProblem::NotFailureClass {
                    text: text.to_string(),
                })
            }
        }
        let digit = |b: u8, wild: u16| if b == b'x' { wild } else { u16::from(b - b'0') };
        let lo = u16::from(bytes[0] - b'0') * 100 + digit(bytes[1], 0) * 10 + digit(bytes[2], 0);
        let hi = u16::from(bytes[0] - b'0') * 100 + digit(bytes[1], 9) * 10 + digit(bytes[2], 9);
        Ok(CodePattern::Range(lo, hi))
    }

    fn from_number(number: &serde_json::Number) -> Result<Self, RuleProblem> {
        match number.as_u64() {
            Some(code @ 400..=599) => Ok(CodePattern::Range(code as u16, code as u16)),
            Some(200..=299) => Err(RuleProblem::SuccessCode),
            _ => Err(RuleProblem::NotFailureCode {
                number: number.to_string(),
            }),
        }
    }
}

impl fmt::Display for CodePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CodePattern::NoCode => f.write_str("none"),
            CodePattern::Range(lo, hi) if lo == hi => write!(f, "{lo}"),
            CodePattern::Range(lo, hi) if hi - lo == 9 => write!(f, "{}x", lo / 10),
            CodePattern::Range(lo, _) => write!(f, "{}xx", lo / 100),
        }
    }
}

/// A condition on the enhanced status code: one code, or an inclusive range within
/// one class and subject (`5.7.606-5.7.649`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusPattern {
    pub lo: EnhancedCode,
    pub hi: EnhancedCode,
}

impl StatusPattern {
    pub fn matches(self, status: Option<EnhancedCode>) -> bool {
        status.is_some_and(|s| self.lo <= s && s <= self.hi)
    }

    fn parse(text: &str) -> Result<Self, RuleProblem> {
        let parse_one = |part: &str| {
            EnhancedCode::parse(part.trim()).ok_or_else(|| RuleProblem::NotStatusPattern {
                text: text.to_string(),
            })
        };
        match text.split_once('-') {
            None => parse_one(text).map(|code| StatusPattern { lo: code, hi: code }),
            Some((lo, hi)) => {
                let (lo, hi) = (parse_one(lo)?, parse_one(hi)?);
                if lo.class != hi.class || lo.subject != hi.subject {
                    return Err(RuleProblem::StatusRangeCrossesSubject {
                        text: text.to_string(),
                    });
                }
                if lo > hi {
                    return Err(RuleProblem::StatusRangeBackward {
                        text: text.to_string(),
                    });
                }
                Ok(StatusPattern { lo, hi })
            }
        }
    }
}

impl fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// One classification rule. Conditions of different kinds must all hold; within a
/// kind (several codes, statuses or texts) any one is enough.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: SharedName,
    /// Only replies for recipients of this provider; `None` for every provider.
    pub provider: Option<String>,
    pub codes: Vec<CodePattern>,
    pub statuses: Vec<StatusPattern>,
    /// Substrings of the reply text, compared ASCII case-insensitively.
    pub texts: Vec<String>,
    /// Searched in the reply text, case-insensitively unless the pattern says `(?-i)`.
    pub regex: Option<Regex>,
    pub category: Category,
    pub conclusive: bool,
    /// Replaces the outcome the reply code implies (not what an MTA log says happened).
    pub outcome: Option<Outcome>,
    pub description: Option<String>,
    /// The reply only quotes someone else's verdict (a public DNS block list):
    /// conclusive only when it names an IP, and then only once confirmed
    /// (docs/CLASSIFIER.md, "Evidence").
    pub claim: Option<Claim>,
    /// Seconds the (IP, provider) pair sends nothing after one such reply, then
    /// probes (Yahoo `[TSS04]`): a pause, not a block. Rate-limit rules only.
    pub pause_seconds: Option<i64>,
}

/// The shortest and longest pause a rule may ask for.
pub const PAUSE_SECONDS_RANGE: std::ops::RangeInclusive<i64> = 60..=7 * 24 * 3600;

/// Reads a pause: whole seconds (`3600`) or a duration such as `1h`, `30m`,
/// `1h30m` or ISO 8601 `PT1H` (jiff's reader, the one the engine's clock uses).
pub fn parse_pause(value: &Value) -> Result<i64, RuleProblem> {
    let seconds = match value {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| RuleProblem::PauseNotWholeSeconds {
                number: n.to_string(),
            })?,
        Value::String(text) => text
            .trim()
            .parse::<jiff::SignedDuration>()
            .map_err(|_| RuleProblem::PauseNotDuration { text: text.clone() })?
            .as_secs(),
        other => {
            return Err(RuleProblem::PauseWrongType {
                found: kind_of(other),
            })
        }
    };
    if PAUSE_SECONDS_RANGE.contains(&seconds) {
        Ok(seconds)
    } else {
        Err(RuleProblem::PauseOutOfRange { seconds })
    }
}

/// What kind of second-hand evidence a rule's replies are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// "blocked using <zone>", "listed in Spamhaus": a DNS block list's listing,
    /// which the zone itself can confirm.
    Dnsbl,
}

impl Rule {
    /// Checks what the YAML reader checks, for rules built in code.
    pub fn check(&self) -> Result<(), RuleProblem> {
        check_id(&self.id)?;
        if let Some(provider) = &self.provider {
            check_provider(provider)?;
        }
        if self.codes.is_empty()
            && self.statuses.is_empty()
            && self.texts.is_empty()
            && self.regex.is_none()
        {
            return Err(RuleProblem::NoCondition);
        }
        if self.texts.iter().any(|t| t.trim().is_empty()) {
            return Err(RuleProblem::EmptyTextEntry);
        }
        if self.category == Category::None {
            return Err(RuleProblem::NoneCategory);
        }
        if self.conclusive && self.category == Category::IpRateLimited {
            // The engine throttles on a share of rate-limited replies; one such
            // reply never blocks, so the flag would be silently ignored.
            return Err(RuleProblem::ConclusiveRateLimit);
        }
        if self.conclusive && !self.category.is_reputation_signal() {
            return Err(RuleProblem::ConclusiveNotReputation {
                category: self.category,
            });
        }
        if self.outcome == Some(Outcome::Delivered) {
            return Err(RuleProblem::DeliveredOutcome);
        }
        if self.pause_seconds.is_some() && self.category != Category::IpRateLimited {
            return Err(RuleProblem::PauseWrongCategory {
                category: self.category,
            });
        }
        if self
            .pause_seconds
            .is_some_and(|s| !PAUSE_SECONDS_RANGE.contains(&s))
        {
            return Err(RuleProblem::PauseOutOfRuleRange);
        }
        if self.claim.is_some() && self.category != Category::IpBlocklisted {
            return Err(RuleProblem::ClaimWrongCategory {
                category: self.category,
            });
        }
        Ok(())
    }
}

fn check_id(id: &str) -> Result<(), RuleProblem> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuleProblem::BadId { id: id.to_string() })
    }
}

fn check_provider(provider: &str) -> Result<(), RuleProblem> {
    if is_valid_provider_name(provider) {
        Ok(())
    } else {
        Err(RuleProblem::BadProvider {
            provider: provider.to_string(),
        })
    }
}

/// What is wrong with one rule or one of its fields. Each says how the rule
/// should be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error(
        "`{text}` is not a reply code pattern; write 550, 55x, 5xx, 4xx or none (no reply code)"
    )]
    NotCodePattern { text: String },
    #[error("2xx replies are always delivered; rules classify failures (4xx, 5xx, none)")]
    SuccessCode,
    #[error("`{text}`: failure replies start with 4 or 5")]
    NotFailureClass { text: String },
    #[error("`{number}` is not a failure reply code (400-599)")]
    NotFailureCode { number: String },
    #[error("`{text}` is not an enhanced status code or range; write 5.7.606 or 5.7.606-5.7.649")]
    NotStatusPattern { text: String },
    #[error("`{text}`: a range stays within one class and subject, like 4.7.500-4.7.699")]
    StatusRangeCrossesSubject { text: String },
    #[error("`{text}`: the range starts after it ends")]
    StatusRangeBackward { text: String },
    #[error("`{number}` is not a whole number of seconds")]
    PauseNotWholeSeconds { number: String },
    #[error("`{text}` is not a duration; write it like 1h, 30m, 1h30m or 3600")]
    PauseNotDuration { text: String },
    #[error("expected a duration like 1h or 3600, found {found}")]
    PauseWrongType { found: &'static str },
    #[error("a pause of {seconds} s is out of range; use 1m to 7d (60 to 604800 seconds)")]
    PauseOutOfRange { seconds: i64 },
    #[error("a rule needs at least one of `code`, `status`, `text` or `regex`")]
    NoCondition,
    #[error("`text` entries must not be empty")]
    EmptyTextEntry,
    #[error("category `none` is for delivered mail; rules classify failures")]
    NoneCategory,
    #[error("`conclusive: true` fits ip_blocklisted only: one rate-limit reply never blocks a pair, the engine throttles on their share over the window; drop `conclusive`, add `pause: 1h` to stop the pair for a while after one such reply, or use category ip_blocklisted")]
    ConclusiveRateLimit,
    #[error("`conclusive: true` only fits ip_blocklisted, not {category}")]
    ConclusiveNotReputation { category: Category },
    #[error("`outcome` may be deferred or bounced; a failure reply is never delivered")]
    DeliveredOutcome,
    #[error("`pause` fits ip_rate_limited only (a reply that asks the sender to stop for a while), not {category}")]
    PauseWrongCategory { category: Category },
    #[error("`pause` must be from 1m to 7d")]
    PauseOutOfRuleRange,
    #[error("`claim: dnsbl` only fits ip_blocklisted, not {category}")]
    ClaimWrongCategory { category: Category },
    #[error("rule id `{id}` is not valid: use letters, digits, '-', '_' and '.', at most 64 long")]
    BadId { id: String },
    #[error(
        "`{provider}` is not a provider name (lowercase letters, digits and '-', like yahoo-japan)"
    )]
    BadProvider { provider: String },
    #[error("a rule is a mapping with at least `id`, `category` and one condition")]
    NotAMapping,
    #[error("unknown field; a rule has the fields {RULE_FIELDS}")]
    UnknownField,
    #[error("expected a string, found {found}")]
    ExpectedString { found: &'static str },
    #[error("expected a code like 550, 5xx or none, found {found}")]
    ExpectedCode { found: &'static str },
    #[error("expected a code like 5.7.606 or a range like 5.7.606-5.7.649, found {found}")]
    ExpectedStatus { found: &'static str },
    #[error("expected true or false, found {found}")]
    ExpectedBool { found: &'static str },
    #[error("entries must not be empty")]
    EmptyText,
    #[error("does not compile: {reason}")]
    RegexCompile { reason: String },
    #[error(transparent)]
    UnknownWord(#[from] UnknownWord),
    #[error("`{value}` is not a claim kind; the only one is dnsbl")]
    UnknownClaim { value: String },
    #[error("missing: every rule needs a unique id")]
    MissingId,
    #[error("missing: say what the reply means, for example ip_blocklisted")]
    MissingCategory,
}

/// Why a rule table could not be read or compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rules file is not valid YAML: {0}")]
    Syntax(String),
    #[error("rules file: {0}")]
    Shape(String),
    #[error("rules[{index}] ({id}): field `{field}`: {problem}")]
    Field {
        index: usize,
        id: String,
        field: String,
        problem: RuleProblem,
    },
    #[error("rules[{index}] ({id}): {problem}")]
    Rule {
        index: usize,
        id: String,
        problem: RuleProblem,
    },
    #[error(
        "rules[{index}]: rule id `{id}` is already used by rules[{first}]; rule ids must be unique"
    )]
    DuplicateId {
        index: usize,
        id: String,
        first: usize,
    },
    #[error("rule `{id}`: provider `{provider}` is not declared; declare it under `providers:` or fix the name")]
    UnknownProvider { id: String, provider: String },
    #[error("rule texts could not be compiled: {0}")]
    Automaton(String),
}

const RULE_FIELDS: &str =
    "id, description, provider, code, status, text, regex, category, conclusive, outcome, claim, pause";

/// An ordered list of rules: the first rule that matches decides.
#[derive(Clone, Debug, Default)]
pub struct RuleTable {
    rules: Vec<Rule>,
}

impl RuleTable {
    /// The builtin rules of `default_rules.yaml`.
    pub fn builtin() -> Self {
        match Self::from_yaml(DEFAULT_RULES_YAML) {
            Ok(table) => table,
            Err(err) => unreachable!("default_rules.yaml is valid (tested): {err}"),
        }
    }

    /// A table read from a YAML document `rules: [...]`.
    pub fn from_yaml(src: &str) -> Result<Self, RuleError> {
        if src.trim().is_empty() {
            return Ok(RuleTable::default());
        }
        let doc: Value =
            serde_saphyr::from_str(src).map_err(|e| RuleError::Syntax(e.to_string()))?;
        match doc {
            Value::Null => Ok(RuleTable::default()),
            Value::Object(map) => {
                if let Some(key) = map.keys().find(|k| k.as_str() != "rules") {
                    return Err(RuleError::Shape(format!(
                        "unknown top-level key `{key}`; expected `rules`"
                    )));
                }
                match map.get("rules") {
                    None | Some(Value::Null) => Ok(RuleTable::default()),
                    Some(Value::Array(items)) => Self::from_values(items),
                    Some(_) => Err(RuleError::Shape("`rules` must be a list of rules".into())),
                }
            }
            _ => Err(RuleError::Shape(
                "expected a mapping with a `rules:` list".into(),
            )),
        }
    }

    /// A table from already-parsed rule mappings (the items of a `rules:` list).
    pub fn from_values(items: &[Value]) -> Result<Self, RuleError> {
        let rules = items
            .iter()
            .enumerate()
            .map(|(i, v)| parse_rule(i, v))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_rules(rules)
    }

    /// A table from rules built in code; checks them like the YAML reader does.
    pub fn from_rules(rules: Vec<Rule>) -> Result<Self, RuleError> {
        let mut seen: FastMap<&str, usize> = FastMap::default();
        for (index, rule) in rules.iter().enumerate() {
            rule.check().map_err(|problem| RuleError::Rule {
                index,
                id: describe_id(Some(&rule.id)),
                problem,
            })?;
            if let Some(&first) = seen.get(rule.id.as_str()) {
                return Err(RuleError::DuplicateId {
                    index,
                    id: rule.id.to_string(),
                    first,
                });
            }
            seen.insert(rule.id.as_str(), index);
        }
        Ok(RuleTable { rules })
    }

    /// These rules first, then `fallbacks`; a fallback rule with the id of one of
    /// these rules is dropped, so a user rule can replace a default one by id.
    pub fn then(mut self, fallbacks: RuleTable) -> RuleTable {
        let mine: Vec<SharedName> = self.rules.iter().map(|r| r.id.clone()).collect();
        self.rules.extend(
            fallbacks
                .rules
                .into_iter()
                .filter(|r| !mine.contains(&r.id)),
        );
        self
    }

    /// These rules in front of the builtin ones.
    pub fn with_defaults(self) -> RuleTable {
        self.then(RuleTable::builtin())
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id.as_str() == id)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn describe_id(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("id `{id}`"),
        None => "no id".to_string(),
    }
}

/// Items of a field that takes one value or a list of them.
fn one_or_many(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        single => std::slice::from_ref(single),
    }
}

fn parse_rule(index: usize, value: &Value) -> Result<Rule, RuleError> {
    let Value::Object(map) = value else {
        return Err(RuleError::Rule {
            index,
            id: describe_id(None),
            problem: RuleProblem::NotAMapping,
        });
    };
    let raw_id = map.get("id").and_then(Value::as_str);
    let id = describe_id(raw_id);
    let field_err = |field: &str, problem: RuleProblem| RuleError::Field {
        index,
        id: id.clone(),
        field: field.to_string(),
        problem,
    };
    if let Some(key) = map
        .keys()
        .find(|k| !RULE_FIELDS.split(", ").any(|f| f == k.as_str()))
    {
        return Err(field_err(key, RuleProblem::UnknownField));
    }
    let rule = read_rule_fields(map).map_err(|(field, problem)| field_err(field, problem))?;
    rule.check().map_err(|problem| RuleError::Rule {
        index,
        id: id.clone(),
        problem,
    })?;
    Ok(rule)
}

type FieldResult<T> = Result<T, (&'static str, RuleProblem)>;

fn read_rule_fields(map: &Map<String, Value>) -> FieldResult<Rule> {
    fn string<'v>(field: &'static str, value: &'v Value) -> FieldResult<&'v str> {
        value.as_str().ok_or_else(|| {
            (
                field,
                RuleProblem::ExpectedString {
                    found: kind_of(value),
                },
            )
        })
    }

    let mut id = None;
    let mut rule = Rule {
        id: SharedName::new(""),
        provider: None,
        codes: Vec::new(),
        statuses: Vec::new(),
        texts: Vec::new(),
        regex: None,
        category: Category::OtherPermanent,
        conclusive: false,
        outcome: None,
        description: None,
        claim: None,
        pause_seconds: None,
    };
    let mut category = None;
    for (key, value) in map {
        match key.as_str() {
            "id" => {
                let text = string("id", value)?;
                check_id(text).map_err(|e| ("id", e))?;
                id = Some(text);
            }
            "description" => rule.description = Some(string("description", value)?.to_string()),
            "provider" => {
                let name = string("provider", value)?;
                check_provider(name).map_err(|e| ("provider", e))?;
                rule.provider = Some(name.to_string());
            }
            "code" => {
                for item in one_or_many(value) {
                    let pattern = match item {
                        Value::Number(n) => CodePattern::from_number(n),
                        Value::String(s) => CodePattern::parse(s),
                        other => Err(RuleProblem::ExpectedCode {
                            found: kind_of(other),
                        }),
                    };
                    rule.codes.push(pattern.map_err(|e| ("code", e))?);
                }
            }
            "status" => {
                for item in one_or_many(value) {
                    // YAML reads `5.7` as a number; report it like any other bad code.
                    let text: Cow<'_, str> = match item {
                        Value::String(s) => Cow::Borrowed(s),
                        Value::Number(n) => Cow::Owned(n.to_string()),
                        other => {
                            let found = kind_of(other);
                            return Err(("status", RuleProblem::ExpectedStatus { found }));
                        }
                    };
                    rule.statuses
                        .push(StatusPattern::parse(&text).map_err(|e| ("status", e))?);
                }
            }
            "text" => {
                for item in one_or_many(value) {
                    let text = string("text", item)?;
                    if text.trim().is_empty() {
                        return Err(("text", RuleProblem::EmptyText));
                    }
                    rule.texts.push(text.to_string());
                }
            }
            "regex" => {
                let pattern = string("regex", value)?;
                let regex = RegexBuilder::new(pattern)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        (
                            "regex",
                            RuleProblem::RegexCompile {
                                reason: e.to_string(),
                            },
                        )
                    })?;
                rule.regex = Some(regex);
            }
            "category" => {
                let text = string("category", value)?;
                category = Some(Category::from_str(text).map_err(|e| ("category", e.into()))?);
            }
            "conclusive" => {
                rule.conclusive = value.as_bool().ok_or_else(|| {
                    (
                        "conclusive",
                        RuleProblem::ExpectedBool {
                            found: kind_of(value),
                        },
                    )
                })?;
            }
            "claim" => {
                rule.claim = match string("claim", value)? {
                    "dnsbl" => Some(Claim::Dnsbl),
                    other => {
                        return Err((
                            "claim",
                            RuleProblem::UnknownClaim {
                                value: other.to_string(),
                            },
                        ))
                    }
                };
            }
            "pause" => rule.pause_seconds = Some(parse_pause(value).map_err(|e| ("pause", e))?),
            "outcome" => {
                let text = string("outcome", value)?;
                rule.outcome = Some(Outcome::from_str(text).map_err(|e| ("outcome", e.into()))?);
            }
            // Unknown fields were rejected before reading.
            _ => {}
        }
    }
    rule.id = SharedName::new(id.ok_or(("id", RuleProblem::MissingId))?);
    rule.category = category.ok_or(("category", RuleProblem::MissingCategory))?;
    Ok(rule)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Reply classes used to pre-sort rules: no basic code, 4xx, 5xx.
const CLASSES: usize = 3;

fn class_slot(code: Option<u16>) -> Option<usize> {
    match code {
        None => Some(0),
        Some(400..=499) => Some(1),
        Some(500..=599) => Some(2),
        Some(_) => None,
    }
}

/// Which reply classes a rule can match. Only `code` narrows this: a status-only
/// rule also sees replies whose basic code a status filter rewrote (450 5.7.1).
fn class_mask(rule: &Rule) -> [bool; CLASSES] {
    if rule.codes.is_empty() {
        return [true; CLASSES];
    }
    let mut mask = [false; CLASSES];
    for code in &rule.codes {
        let slot = match *code {
            CodePattern::NoCode => class_slot(None),
            CodePattern::Range(lo, _) => class_slot(Some(lo)),
        };
        if let Some(slot) = slot {
            mask[slot] = true;
        }
    }
    mask
}

/// Which text patterns one reply contains, as a bit set.
enum PatternHits {
    Few([u64; 4]),
    Many(Vec<u64>),
}

impl PatternHits {
    fn new(patterns: usize) -> Self {
        if patterns <= 256 {
            PatternHits::Few([0; 4])
        } else {
            PatternHits::Many(vec![0; patterns.div_ceil(64)])
        }
    }

    fn words(&mut self) -> &mut [u64] {
        match self {
            PatternHits::Few(words) => words,
            PatternHits::Many(words) => words,
        }
    }

    fn insert(&mut self, id: usize) {
        if let Some(word) = self.words().get_mut(id / 64) {
            *word |= 1 << (id % 64);
        }
    }

    fn contains(&self, id: usize) -> bool {
        let words: &[u64] = match self {
            PatternHits::Few(words) => words,
            PatternHits::Many(words) => words,
        };
        words
            .get(id / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// A rule table prepared for one provider table.
#[derive(Clone, Debug)]
pub struct CompiledRules {
    rules: Vec<Rule>,
    /// Per rule: ids of its text patterns in `texts`.
    text_ids: Vec<Box<[u32]>>,
    /// Per provider id, per reply class: the rules that may apply, in table order.
    candidates: Vec<[Box<[u32]>; CLASSES]>,
    texts: Option<AhoCorasick>,
    pattern_count: usize,
}

impl CompiledRules {
    pub fn new(table: &RuleTable, providers: &ProviderTable) -> Result<Self, RuleError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut pattern_ids: FastMap<String, u32> = FastMap::default();
        let mut text_ids = Vec::with_capacity(table.rules.len());
        let mut scopes = Vec::with_capacity(table.rules.len());
        for rule in &table.rules {
            let scope = match &rule.provider {
                None => None,
                Some(name) => {
                    Some(
                        providers
                            .id_of(name)
                            .ok_or_else(|| RuleError::UnknownProvider {
                                id: rule.id.to_string(),
                                provider: name.clone(),
                            })?,
                    )
                }
            };
            scopes.push(scope);
            let mut ids = Vec::with_capacity(rule.texts.len());
            for text in &rule.texts {
                let key = text.to_ascii_lowercase();
                let next = u32::try_from(patterns.len())
                    .map_err(|_| RuleError::Automaton("too many texts".into()))?;
                let id = *pattern_ids.entry(key.clone()).or_insert_with(|| {
                    patterns.push(key);
                    next
                });
                ids.push(id);
            }
            text_ids.push(ids.into_boxed_slice());
        }

        let texts = if patterns.is_empty() {
            None
        } else {
            let automaton = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(&patterns)
                .map_err(|e| RuleError::Automaton(e.to_string()))?;
            Some(automaton)
        };

        let masks: Vec<[bool; CLASSES]> = table.rules.iter().map(class_mask).collect();
        let candidates = (0..providers.len())
            .map(|provider| {
                std::array::from_fn(|slot| {
                    (0..table.rules.len())
                        .filter(|&r| {
                            masks[r][slot] && scopes[r].is_none_or(|p| p.index() == provider)
                        })
                        .filter_map(|r| u32::try_from(r).ok())
                        .collect::<Vec<u32>>()
                        .into_boxed_slice()
                })
            })
            .collect();

        Ok(CompiledRules {
            rules: table.rules.clone(),
            text_ids,
            candidates,
            texts,
            pattern_count: patterns.len(),
        })
    }

    /// The first rule that matches a failure reply to a recipient of `provider`.
    pub fn first_match(
        &self,
        provider: ProviderId,
        code: Option<u16>,
        status: Option<EnhancedCode>,
        text: &str,
    ) -> Option<&Rule> {
        let slot = class_slot(code)?;
        let candidates = &self.candidates.get(provider.index())?[slot];
        let mut hits: Option<PatternHits> = None;
        for &index in candidates.iter() {
            let index = index as usize;
            let rule = &self.rules[index];
            if !rule.codes.is_empty() && !rule.codes.iter().any(|c| c.matches(code)) {
                continue;
            }
            if !rule.statuses.is_empty() && !rule.statuses.iter().any(|s| s.matches(status)) {
                continue;
            }
            let wanted = &self.text_ids[index];
            if !wanted.is_empty() {
                let hits = hits.get_or_insert_with(|| self.scan(text));
                if !wanted.iter().any(|&id| hits.contains(id as usize)) {
                    continue;
                }
            }
            if let Some(regex) = &rule.regex {
                if !regex.is_match(text) {
                    continue;
                }
            }
            return Some(rule);
        }
        None
    }

    fn scan(&self, text: &str) -> PatternHits {
        let mut hits = PatternHits::new(self.pattern_count);
        if let Some(automaton) = &self.texts {
            for found in automaton.find_overlapping_iter(text) {
                hits.insert(found.pattern().as_usize());
            }
        }
        hits
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> CompiledRules {
        CompiledRules::new(
            &RuleTable::from_yaml(yaml).unwrap(),
            &ProviderTable::builtin(),
        )
        .unwrap()
    }

    fn matched<'a>(
        rules: &'a CompiledRules,
        provider: &str,
        reply: (Option<u16>, Option<&str>, &str),
    ) -> Option<&'a str> {
        let providers = ProviderTable::builtin();
        let id = providers.id_of(provider).unwrap();
        let status = reply.1.map(|s| EnhancedCode::parse(s).unwrap());
        rules
            .first_match(id, reply.0, status, reply.2)
            .map(|r| r.id.as_str())
    }

    #[test]
    fn builtin_rules_parse_and_have_unique_ids() {
        let table = RuleTable::builtin();
        assert!(table.len() >= 30, "{}", table.len());
        assert!(table.get("microsoft-banned-sending-ip").is_some());
        CompiledRules::new(&table, &ProviderTable::builtin()).unwrap();
    }

    #[test]
    fn enhanced_codes_parse_strictly_and_order_by_parts() {
        assert_eq!(
            EnhancedCode::parse("5.7.606"),
            Some(EnhancedCode::new(5, 7, 606))
        );
        for bad in ["5.7", "5.7.6066", "3.1.1", "5..1", "5.7.1 ", "x.1.1", ""] {
            assert_eq!(EnhancedCode::parse(bad), None, "{bad}");
        }
        assert!(EnhancedCode::new(4, 7, 650) < EnhancedCode::new(4, 7, 699));
        assert!(EnhancedCode::new(4, 7, 1) < EnhancedCode::new(4, 10, 0));
        assert_eq!(EnhancedCode::new(5, 7, 26).to_string(), "5.7.26");
    }

    #[test]
    fn code_patterns_cover_exact_tens_and_class() {
        let p = CodePattern::parse("55x").unwrap();
        assert!(p.matches(Some(554)) && !p.matches(Some(560)) && !p.matches(None));
        assert_eq!(p.to_string(), "55x");
        assert_eq!(
            CodePattern::parse("5XX").unwrap(),
            CodePattern::Range(500, 599)
        );
        assert!(CodePattern::parse("none").unwrap().matches(None));
        assert!(CodePattern::parse("250")
            .unwrap_err()
            .to_string()
            .contains("always delivered"));
        assert!(CodePattern::parse("5x0").is_err());
    }

    #[test]
    fn first_matching_rule_wins_and_all_condition_kinds_must_hold() {
        let rules = compile(
            r#"
rules:
  - id: a
    provider: google
    code: 5xx
    status: 5.7.1
    text: ["low reputation"]
    category: ip_blocklisted
  - id: b
    status: [5.7.1, 4.7.1]
    regex: 'spam\s+detected'
    category: content_spam
  - id: c
    status: 5.7.1
    category: policy_other
"#,
        );
        assert_eq!(
            matched(
                &rules,
                "google",
                (Some(550), Some("5.7.1"), "very LOW Reputation")
            ),
            Some("a")
        );
        assert_eq!(
            matched(
                &rules,
                "yahoo",
                (Some(550), Some("5.7.1"), "very low reputation")
            ),
            Some("c")
        );
        assert_eq!(
            matched(
                &rules,
                "yahoo",
                (Some(450), Some("4.7.1"), "Spam  Detected")
            ),
            Some("b")
        );
        assert_eq!(
            matched(
                &rules,
                "google",
                (Some(450), Some("4.7.1"), "low reputation")
            ),
            None
        );
        assert_eq!(
            matched(&rules, "google", (None, Some("5.7.1"), "x")),
            Some("c")
        );
    }

    #[test]
    fn status_ranges_are_inclusive() {
        let rules =
            compile("rules:\n  - {id: r, status: 5.7.606-5.7.649, category: ip_blocklisted}\n");
        assert_eq!(
            matched(&rules, "other", (Some(550), Some("5.7.606"), "")),
            Some("r")
        );
        assert_eq!(
            matched(&rules, "other", (Some(550), Some("5.7.649"), "")),
            Some("r")
        );
        assert_eq!(
            matched(&rules, "other", (Some(550), Some("5.7.650"), "")),
            None
        );
        assert_eq!(
            matched(&rules, "other", (Some(550), Some("5.7.605"), "")),
            None
        );
    }

    #[test]
    fn many_text_patterns_spill_past_the_inline_bit_set() {
        let mut yaml = String::from("rules:\n");
        for i in 0..300 {
            yaml.push_str(&format!(
                "  - {{id: r{i}, text: [\"marker{i:03}x\"], category: policy_other}}\n"
            ));
        }
        let rules = compile(&yaml);
        assert_eq!(
            matched(&rules, "other", (Some(550), None, "a MARKER299X b")),
            Some("r299")
        );
        assert_eq!(
            matched(&rules, "other", (Some(550), None, "a marker007x b")),
            Some("r7")
        );
    }

    fn error_of(yaml: &str) -> String {
        RuleTable::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn broken_rules_name_their_index_id_and_field() {
        let e = error_of("rules:\n  - {id: ok, code: 550, category: policy_other}\n  - {id: bad, status: '5.7', category: policy_other}\n");
        assert!(e.starts_with("rules[1] (id `bad`): field `status`"), "{e}");
        let e = error_of("rules:\n  - {id: x, stauts: 5.7.1, category: policy_other}\n");
        assert!(e.contains("field `stauts`: unknown field"), "{e}");
        let e = error_of("rules:\n  - {code: 550, category: policy_other}\n");
        assert!(e.contains("rules[0] (no id): field `id`: missing"), "{e}");
        let e = error_of("rules:\n  - {id: x, code: 550, category: spammy}\n");
        assert!(
            e.contains("field `category`") && e.contains("ip_blocklisted"),
            "{e}"
        );
        let e =
            error_of("rules:\n  - {id: x, code: 550, category: content_spam, conclusive: true}\n");
        assert!(e.contains("conclusive"), "{e}");
        let e = error_of(
            "rules:\n  - {id: x, code: 421, category: ip_rate_limited, conclusive: true}\n",
        );
        assert!(e.contains("one rate-limit reply never blocks"), "{e}");
        assert!(e.contains("pause: 1h"), "{e}");
        let e = error_of("rules:\n  - {id: x, code: 550, category: ip_blocklisted, pause: 1h}\n");
        assert!(e.contains("`pause` fits ip_rate_limited only"), "{e}");
        let e = error_of("rules:\n  - {id: x, code: 421, category: ip_rate_limited, pause: 10s}\n");
        assert!(
            e.contains("field `pause`") && e.contains("out of range"),
            "{e}"
        );
        let e =
            error_of("rules:\n  - {id: x, code: 421, category: ip_rate_limited, pause: soon}\n");
        assert!(
            e.contains("field `pause`") && e.contains("not a duration"),
            "{e}"
        );
        let e = error_of("rules:\n  - {id: x, category: content_spam}\n");
        assert!(e.contains("at least one of"), "{e}");
        let e = error_of("rules:\n  - {id: x, regex: '(', category: content_spam}\n");
        assert!(e.contains("field `regex`: does not compile"), "{e}");
        let e = error_of("rules:\n  - {id: x, code: 550, category: policy_other}\n  - {id: x, code: 551, category: policy_other}\n");
        assert!(e.contains("already used by rules[0]"), "{e}");
        let e = error_of(
            "rules:\n  - {id: x, code: 550, outcome: delivered, category: policy_other}\n",
        );
        assert!(e.contains("outcome"), "{e}");
        let e = error_of("rulez: []\n");
        assert!(e.contains("unknown top-level key `rulez`"), "{e}");
        let e = error_of("rules: [\n");
        assert!(e.starts_with("rules file is not valid YAML"), "{e}");
    }

    #[test]
    fn unknown_provider_scope_is_reported_at_compile_time() {
        let table = RuleTable::from_yaml(
            "rules:\n  - {id: x, provider: yahoo-japan, code: 550, category: policy_other}\n",
        )
        .unwrap();
        let err = CompiledRules::new(&table, &ProviderTable::builtin()).unwrap_err();
        assert!(
            err.to_string()
                .contains("provider `yahoo-japan` is not declared"),
            "{err}"
        );
    }

    #[test]
    fn user_rules_go_first_and_replace_defaults_by_id() {
        let user = RuleTable::from_yaml(
            "rules:\n  - {id: microsoft-multiple-regions, provider: microsoft, status: 4.5.3, category: policy_other}\n",
        )
        .unwrap();
        let merged = user.with_defaults();
        assert_eq!(merged.rules()[0].category, Category::PolicyOther);
        assert_eq!(
            merged
                .rules()
                .iter()
                .filter(|r| r.id == "microsoft-multiple-regions")
                .count(),
            1
        );
        assert_eq!(merged.len(), RuleTable::builtin().len());
    }

    #[test]
    fn a_pause_is_read_as_seconds_or_a_duration() {
        for (written, seconds) in [
            ("3600", 3600),
            ("4h", 14_400),
            ("1h30m", 5400),
            ("PT2H", 7200),
        ] {
            let yaml = format!(
                "rules:\n  - {{id: x, code: 421, category: ip_rate_limited, pause: {written}}}\n"
            );
            let table = RuleTable::from_yaml(&yaml).unwrap();
            assert_eq!(table.rules()[0].pause_seconds, Some(seconds), "{written}");
        }
        let builtin = RuleTable::builtin();
        assert_eq!(
            builtin.get("yahoo-tss04").unwrap().pause_seconds,
            Some(14_400)
        );
    }
}
