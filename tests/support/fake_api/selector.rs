//! Label and field selectors as the API server reads them from
//! `labelSelector=` and `fieldSelector=`.

use std::collections::BTreeMap;

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(text: &str, term: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| {
            format!("label selector term {term:?}: the value set must be written as (a,b)")
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn check_key(key: &str, term: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!(
            "label selector term {term:?}: {key:?} is not a valid label key"
        ))
    }
}

fn parse_requirement(term: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(check_key(key, term)?));
    }
    if let Some((key, rest)) = term.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        if let Some(set) = rest.strip_prefix("notin") {
            return Ok(LabelRequirement::NotIn(
                check_key(key, term)?,
                parse_set(set, term)?,
            ));
        }
        if let Some(set) = rest.strip_prefix("in") {
            return Ok(LabelRequirement::In(
                check_key(key, term)?,
                parse_set(set, term)?,
            ));
        }
    }
    let number = |value: &str| {
        value
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("label selector term {term:?}: {value:?} is not an integer"))
    };
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(
            check_key(key, term)?,
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = term.split_once("==") {
        return Ok(LabelRequirement::Equals(
            check_key(key, term)?,
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = term.split_once('=') {
        return Ok(LabelRequirement::Equals(
            check_key(key, term)?,
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = term.split_once('>') {
        return Ok(LabelRequirement::GreaterThan(
            check_key(key, term)?,
            number(value)?,
        ));
    }
    if let Some((key, value)) = term.split_once('<') {
        return Ok(LabelRequirement::LessThan(
            check_key(key, term)?,
            number(value)?,
        ));
    }
    Ok(LabelRequirement::Exists(check_key(term, term)?))
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let requirements = split_top_level(text)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { requirements })
    }

    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::NotExists(k) => !labels.contains_key(k),
            LabelRequirement::GreaterThan(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelRequirement::LessThan(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.matches_labels(&labels_of(object))
    }
}

/// `metadata.labels` as strings (non-string values are ignored).
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A parsed `fieldSelector`: `path=value`, `path==value`, `path!=value`
/// over any dotted path of the object (`metadata.name`, `status.phase`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (dotted path, value, must equal)
    pub terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, v, true)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, v, true)
            } else {
                return Err(format!(
                    "field selector term {term:?}: expected path=value, path==value or path!=value"
                ));
            };
            terms.push((path.trim().to_string(), value.trim().to_string(), equal));
        }
        Ok(FieldSelector { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms
            .iter()
            .all(|(path, value, equal)| (field_text(object, path) == *value) == *equal)
    }
}

/// The value at a dotted path as the field selector compares it ("" if absent).
fn field_text(object: &Value, path: &str) -> String {
    let mut at = object;
    for part in path.split('.') {
        at = &at[part];
    }
    match at {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
