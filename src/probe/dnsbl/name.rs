//! The DNS name a DNSBL is asked about: the IP reversed under the zone.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::error::ProbeError;

/// Longest DNS name in text form, without the trailing dot (RFC 1035: 255 octets on the wire).
const MAX_NAME_LEN: usize = 253;

/// Why a text is not a zone name. Each says what is wrong and how a zone
/// name is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZoneNameError {
    #[error("the zone is empty; name a DNS block list such as zen.spamhaus.org")]
    Empty,
    #[error("the zone is {length} characters long; a DNS name has at most {MAX_NAME_LEN}")]
    TooLong { length: usize },
    #[error("the zone has an empty label (two dots in a row or a leading dot)")]
    EmptyLabel,
    #[error("the label `{label}` is {} characters long; a DNS label has at most 63", .label.len())]
    LabelTooLong { label: String },
    #[error("the label `{label}` holds `{bad}`; a zone name uses letters, digits, '-' and '_'")]
    BadCharacter { label: String, bad: char },
}

/// Checks a zone name and returns it in the form used in queries: lowercase,
/// without a trailing dot.
pub fn normalize_zone(zone: &str) -> Result<String, ZoneNameError> {
    let trimmed = zone.trim();
    let name = trimmed
        .strip_suffix('.')
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    if name.is_empty() {
        return Err(ZoneNameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ZoneNameError::TooLong { length: name.len() });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(ZoneNameError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(ZoneNameError::LabelTooLong {
                label: label.to_string(),
            });
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(ZoneNameError::BadCharacter {
                label: label.to_string(),
                bad,
            });
        }
    }
    Ok(name)
}

/// The fully qualified query name for `ip` under `zone` (already normalized):
/// IPv4 octets reversed (`10.113.0.203.zen.spamhaus.org.` for 203.0.113.10),
/// IPv6 as 32 reversed nibbles.
pub fn query_name(ip: IpAddr, zone: &str) -> Result<String, ProbeError> {
    let mut name = String::with_capacity(72 + zone.len());
    match ip {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let _ = write!(name, "{octet}.");
            }
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone);
    if name.len() > MAX_NAME_LEN {
        return Err(ProbeError::QueryName {
            detail: format!(
                "`{name}` is {} characters long; a DNS name has at most {MAX_NAME_LEN}: use a shorter zone",
                name.len()
            ),
        });
    }
    name.push('.');
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_octets_are_reversed() {
        let ip: IpAddr = "203.0.113.10".parse().unwrap();
        assert_eq!(
            query_name(ip, "zen.spamhaus.org").unwrap(),
            "10.113.0.203.zen.spamhaus.org."
        );
    }

    #[test]
    fn ipv6_is_32_reversed_nibbles() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let name = query_name(ip, "zen.test").unwrap();
        assert_eq!(
            name,
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test."
        );
        let nibbles = name
            .trim_end_matches("zen.test.")
            .split('.')
            .filter(|s| !s.is_empty())
            .count();
        assert_eq!(nibbles, 32);
    }

    #[test]
    fn zones_are_lowercased_and_lose_the_trailing_dot() {
        assert_eq!(
            normalize_zone(" ZEN.Spamhaus.org. ").unwrap(),
            "zen.spamhaus.org"
        );
    }

    #[test]
    fn bad_zones_are_refused_with_the_reason() {
        assert!(normalize_zone("")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(normalize_zone("a..b")
            .unwrap_err()
            .to_string()
            .contains("empty label"));
        assert!(normalize_zone("bl example.org")
            .unwrap_err()
            .to_string()
            .contains("` `"));
        assert!(normalize_zone(&"a".repeat(64))
            .unwrap_err()
            .to_string()
            .contains("63"));
    }

    #[test]
    fn an_overlong_query_name_is_a_probe_error() {
        let zone = vec!["a".repeat(60); 4].join(".");
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let err = query_name(ip, &zone).unwrap_err();
        assert!(err.to_string().contains("at most 253"), "{err}");
    }
}
