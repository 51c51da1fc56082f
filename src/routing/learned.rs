//! Domains learned from MX observations. A company domain hosted by a provider
//! (a Microsoft 365 tenant such as `acclaim.jp`) only shows its provider through
//! the MX host that answered for it; a transport map looks domains up by name, so
//! each such domain seen in delivery results is remembered in the route's status,
//! for a bounded time and in bounded number.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{DomainRouteSpec, DomainRouteStatus, LearnedDomain};

/// A learned domain is forgotten after this long without being seen again.
pub const LEARNED_TTL: SignedDuration = SignedDuration::from_hours(7 * 24);
/// Re-seeing a domain refreshes it at most this often, so a steady flow of mail
/// does not rewrite the status on every delivery.
pub const REFRESH_AFTER: SignedDuration = SignedDuration::from_hours(1);
/// At most this many learned domains per route; the least recently seen go first.
pub const MAX_LEARNED: usize = 10_000;

/// Whether `host` ends with one of the route's MX host suffixes (a leading `.`
/// or `*.` on a suffix matches the host itself too, case-insensitively).
pub fn mx_matches(spec: &DomainRouteSpec, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    spec.match_.mx_host_suffixes.iter().flatten().any(|suffix| {
        let bare = suffix
            .trim_start_matches('*')
            .trim_start_matches('.')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        !bare.is_empty() && (host == bare || host.ends_with(&format!(".{bare}")))
    })
}

/// Records that mail for `domain` went to `mx_host`. Returns whether the status
/// changed (a new domain, a refresh, or expired ones dropped).
pub fn learn(
    status: &mut DomainRouteStatus,
    spec: &DomainRouteSpec,
    domain: &str,
    mx_host: &str,
    now: Timestamp,
) -> bool {
    let mut changed = forget_expired(status, now);
    if !mx_matches(spec, mx_host) {
        return changed;
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty()
        || spec
            .match_
            .domains
            .iter()
            .flatten()
            .any(|d| d.eq_ignore_ascii_case(&domain))
    {
        return changed;
    }
    let expires_at = Time(now + LEARNED_TTL);
    match status
        .learned_domains
        .binary_search_by(|l| l.domain.as_str().cmp(&domain))
    {
        Ok(i) => {
            let entry = &mut status.learned_domains[i];
            if now.duration_since(entry.last_seen.0) >= REFRESH_AFTER || entry.mx_host != mx_host {
                entry.last_seen = Time(now);
                entry.expires_at = expires_at;
                entry.mx_host = mx_host.to_string();
                changed = true;
            }
        }
        Err(i) => {
            status.learned_domains.insert(
                i,
                LearnedDomain {
                    domain,
                    mx_host: mx_host.to_string(),
                    last_seen: Time(now),
                    expires_at,
                },
            );
            if status.learned_domains.len() > MAX_LEARNED {
                let oldest = status
                    .learned_domains
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, l)| (l.last_seen.0, l.domain.clone()))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                status.learned_domains.remove(oldest);
            }
            changed = true;
        }
    }
    changed
}

/// Drops domains whose expiry has passed; returns whether any were dropped.
pub fn forget_expired(status: &mut DomainRouteStatus, now: Timestamp) -> bool {
    let before = status.learned_domains.len();
    status.learned_domains.retain(|l| l.expires_at.0 > now);
    before != status.learned_domains.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::example::{match_domains, match_mx_suffixes, route};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn tenant_domains_are_learned_refreshed_and_forgotten() {
        let ms = route(
            "mail",
            "microsoft",
            "microsoft",
            match_mx_suffixes(&[".mail.protection.outlook.com"]),
            "bulk",
        )
        .spec;
        let mut status = DomainRouteStatus::default();
        let t0 = at("2026-11-29T08:00:00Z");
        assert!(learn(
            &mut status,
            &ms,
            "Acclaim.JP",
            "acclaim-jp.mail.protection.outlook.com.",
            t0
        ));
        assert_eq!(status.learned_domains[0].domain, "acclaim.jp");
        assert!(
            !learn(
                &mut status,
                &ms,
                "acclaim.jp",
                "acclaim-jp.mail.protection.outlook.com.",
                at("2026-11-29T08:30:00Z")
            ),
            "no churn within the refresh interval"
        );
        assert!(learn(
            &mut status,
            &ms,
            "acclaim.jp",
            "acclaim-jp.mail.protection.outlook.com.",
            at("2026-11-29T09:30:00Z")
        ));
        assert!(
            !learn(
                &mut status,
                &ms,
                "gmail.com",
                "gmail-smtp-in.l.google.com",
                t0
            ),
            "other providers' MX hosts teach nothing"
        );
        assert!(!learn(
            &mut status,
            &ms,
            "evil.example",
            "mail.protection.outlook.com.evil.example",
            t0
        ));
        assert!(forget_expired(&mut status, at("2026-12-07T09:30:01Z")));
        assert!(status.learned_domains.is_empty());
    }

    #[test]
    fn routes_without_mx_suffixes_learn_nothing_and_the_list_is_bounded() {
        let by_name = route(
            "mail",
            "yj",
            "yahoo-japan",
            match_domains(&["yahoo.co.jp"]),
            "bulk",
        )
        .spec;
        let mut status = DomainRouteStatus::default();
        assert!(!learn(
            &mut status,
            &by_name,
            "yahoo.co.jp",
            "mx1.mail.yahoo.co.jp",
            at("2026-11-29T08:00:00Z")
        ));
        let ms = route(
            "mail",
            "microsoft",
            "microsoft",
            match_mx_suffixes(&[".mail.protection.outlook.com"]),
            "bulk",
        )
        .spec;
        let t0 = at("2026-11-29T08:00:00Z");
        for i in 0..(MAX_LEARNED + 5) {
            learn(
                &mut status,
                &ms,
                &format!("d{i:05}.example"),
                "x.mail.protection.outlook.com",
                t0 + SignedDuration::from_secs(i as i64),
            );
        }
        assert_eq!(status.learned_domains.len(), MAX_LEARNED);
        assert!(
            status
                .learned_domains
                .iter()
                .all(|l| l.domain != "d00000.example"),
            "the least recently seen is dropped first"
        );
    }
}
