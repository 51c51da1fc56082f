//! The block-reply status filter as a sender applies it: the very table that
//! `routing::postfix::status_filter` renders, read as Postfix reads a `regexp:`
//! table, so the simulated senders defer exactly what the real ones would.

use regex::Regex;

use super::SimError;

/// A Postfix `regexp:` table: the first pattern that matches decides.
#[derive(Clone, Debug)]
pub struct StatusFilter {
    rules: Vec<(Regex, String)>,
}

impl StatusFilter {
    /// The filter mailfleet renders for every sender.
    pub fn mailfleet() -> Result<Self, SimError> {
        StatusFilter::parse(&crate::routing::postfix::status_filter())
    }

    /// Reads `/pattern/<TAB>result` lines; `#` comments and blank lines are skipped.
    /// Postfix matches case-insensitively unless told otherwise, and so does this.
    pub fn parse(table: &str) -> Result<Self, SimError> {
        let mut rules = Vec::new();
        for (number, line) in table.lines().enumerate() {
            let line = line.trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let bad = |why: &str| SimError::StatusFilter {
                line: number + 1,
                problem: why.to_string(),
            };
            let body = line
                .strip_prefix('/')
                .ok_or_else(|| bad("a rule must start with /pattern/"))?;
            let end = body
                .rfind('/')
                .ok_or_else(|| bad("the pattern has no closing /"))?;
            let (pattern, rest) = (&body[..end], body[end + 1..].trim());
            if rest.is_empty() {
                return Err(bad("the rule has no result after the pattern"));
            }
            let regex = Regex::new(&format!("(?i){pattern}")).map_err(|e| bad(&e.to_string()))?;
            // Postfix writes $1 where the regex crate wants ${1} before a digit or letter.
            let replacement = rest.replace("$1", "${1}").replace("$2", "${2}");
            rules.push((regex, replacement));
        }
        Ok(StatusFilter { rules })
    }

    /// What Postfix makes of one reply: the (possibly rewritten) enhanced status
    /// for the lookup key `<status> <text>`.
    pub fn apply(&self, status: &str, text: &str) -> String {
        let key = format!("{status} {text}");
        for (regex, replacement) in &self.rules {
            if regex.is_match(&key) {
                let result = regex.replace(&key, replacement.as_str());
                return result
                    .split_whitespace()
                    .next()
                    .unwrap_or(status)
                    .to_string();
            }
        }
        status.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_bans_are_deferred_and_other_failures_pass() {
        let filter = StatusFilter::mailfleet().unwrap();
        let said =
            |reply: &str| format!("host mx[192.0.2.1] said: {reply} (in reply to RCPT TO command)");
        let ban = said("550 5.7.606 Access denied, banned sending IP [203.0.113.13]");
        assert_eq!(filter.apply("5.7.606", &ban), "4.7.606");
        let dnsbl = said("554 5.7.1 Service unavailable; Client host [203.0.113.14] blocked using zen.spamhaus.org");
        assert_eq!(filter.apply("5.7.1", &dnsbl), "4.7.1");
        assert_eq!(
            filter.apply("5.1.1", &said("550 5.1.1 user unknown")),
            "5.1.1"
        );
        assert_eq!(
            filter.apply("4.7.28", &said("421 4.7.28 unusual rate")),
            "4.7.28"
        );
    }

    #[test]
    fn broken_tables_are_refused_with_their_line() {
        let err = StatusFilter::parse("# ok\n/^5(.*)$/\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(StatusFilter::parse("no slash\t4").is_err());
        assert!(StatusFilter::parse("/(/\t4").is_err());
    }
}
