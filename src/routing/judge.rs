//! Whether one source IP may send to one provider, and how much.
//!
//! The reputation engine decides states and allowances; this only reads them.
//! A pair the engine has not recorded is Healthy at 100 %.

use crate::api::{RateLimits, ReputationState};

use super::index::IndexedIp;

/// The verdict on one (IP, provider) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed {
        state: ReputationState,
        /// Effective allowance, 1-100: the engine's, lowered by a manual override.
        allowance: i32,
        /// Messages per hour before any route-wide throttle, at least 1.
        hourly_cap: i64,
    },
    Excluded {
        state: ReputationState,
        reason: String,
    },
}

pub(crate) fn judge(ip: &IndexedIp, provider: &str, rate_limits: &RateLimits) -> Verdict {
    let pair = ip.pair(provider);
    let state = pair.map_or(ReputationState::Healthy, |p| p.state);
    let engine_reason = pair.map(|p| p.reason.as_str()).filter(|r| !r.is_empty());
    if ip.parsed.is_none() {
        return Verdict::Excluded {
            state,
            reason: "the spec address is not an IP address".to_string(),
        };
    }
    if ip.not_bound.is_some() {
        return Verdict::Excluded {
            state,
            reason: "its sender pods cannot bind the address (condition IpBound is False; spec.ips[].address, spec.ipBinding.mode)".to_string(),
        };
    }
    if state == ReputationState::Blocked {
        let reason = match engine_reason {
            Some(r) => format!("{provider} blocks this IP ({r})"),
            None => format!("{provider} blocks this IP"),
        };
        return Verdict::Excluded { state, reason };
    }
    let mut allowance = pair.map_or(100, |p| p.allowance_percent).clamp(0, 100);
    if let Some(over) = ip
        .override_
        .as_ref()
        .filter(|o| o.providers.is_empty() || o.providers.iter().any(|p| p == provider))
    {
        let capped = over.allowance_percent.clamp(0, 100);
        if capped == 0 {
            return Verdict::Excluded {
                state,
                reason: format!("a manual override drains this IP: {}", over.reason),
            };
        }
        allowance = allowance.min(capped);
    }
    if allowance == 0 {
        let reason = match (pair.and_then(|p| p.overridden_by.as_deref()), engine_reason) {
            (Some(by), _) => format!("a manual override drains this IP: {by}"),
            (None, Some(r)) => format!("its allowance for {provider} is 0% ({r})"),
            (None, None) => format!("its allowance for {provider} is 0%"),
        };
        return Verdict::Excluded { state, reason };
    }
    let base = rate_limits.for_provider(provider);
    if base < 1 {
        return Verdict::Excluded {
            state,
            reason: format!("spec.rateLimits allows {base} messages per hour to {provider}"),
        };
    }
    let mut hourly_cap = scale_up(base, allowance);
    if let Some(warm_cap) = pair.and_then(|p| p.hourly_cap) {
        if warm_cap < 1 {
            return Verdict::Excluded {
                state,
                reason: format!("its warm-up cap for {provider} is {warm_cap} per hour"),
            };
        }
        hourly_cap = hourly_cap.min(warm_cap);
    }
    Verdict::Allowed {
        state,
        allowance,
        hourly_cap,
    }
}

/// `base * percent / 100`, rounded up so that an allowed IP never gets a cap of 0.
fn scale_up(base: i64, percent: i32) -> i64 {
    let product = i128::from(base) * i128::from(percent);
    let scaled = (product + 99) / 100;
    i64::try_from(scaled).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ManualOverride, ProviderReputation};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pair(
        provider: &str,
        state: ReputationState,
        allowance: i32,
        cap: Option<i64>,
    ) -> ProviderReputation {
        ProviderReputation {
            provider: provider.to_string(),
            state,
            since: Time(jiff::Timestamp::UNIX_EPOCH),
            reason: "Test".to_string(),
            last_evidence: None,
            allowance_percent: allowance,
            hourly_cap: cap,
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

    fn ip(reputation: Vec<ProviderReputation>, override_: Option<ManualOverride>) -> IndexedIp {
        IndexedIp {
            address: "203.0.113.10".into(),
            parsed: "203.0.113.10".parse().ok(),
            override_,
            reputation,
            not_bound: None,
        }
    }

    #[test]
    fn a_missing_pair_is_healthy_at_full_allowance() {
        let v = judge(&ip(vec![], None), "google", &RateLimits::default());
        assert_eq!(
            v,
            Verdict::Allowed {
                state: ReputationState::Healthy,
                allowance: 100,
                hourly_cap: 10_000
            }
        );
    }

    #[test]
    fn blocked_is_excluded_whatever_its_allowance() {
        let v = judge(
            &ip(
                vec![pair("microsoft", ReputationState::Blocked, 100, None)],
                None,
            ),
            "microsoft",
            &RateLimits::default(),
        );
        assert!(
            matches!(v, Verdict::Excluded { state: ReputationState::Blocked, ref reason } if reason.contains("microsoft blocks this IP (Test)")),
            "{v:?}"
        );
        // The block is per provider: the same IP still sends to Google.
        let v = judge(
            &ip(
                vec![pair("microsoft", ReputationState::Blocked, 0, None)],
                None,
            ),
            "google",
            &RateLimits::default(),
        );
        assert!(matches!(v, Verdict::Allowed { .. }));
    }

    #[test]
    fn caps_scale_with_allowance_round_up_and_respect_warm_up() {
        let limits = RateLimits {
            per_hour: 10,
            per_provider: [("yahoo".to_string(), 1000)].into(),
        };
        let v = judge(
            &ip(
                vec![pair("google", ReputationState::Probing, 5, None)],
                None,
            ),
            "google",
            &limits,
        );
        assert_eq!(
            v,
            Verdict::Allowed {
                state: ReputationState::Probing,
                allowance: 5,
                hourly_cap: 1
            }
        );
        let v = judge(
            &ip(
                vec![pair("yahoo", ReputationState::Warming, 100, Some(39))],
                None,
            ),
            "yahoo",
            &limits,
        );
        assert_eq!(
            v,
            Verdict::Allowed {
                state: ReputationState::Warming,
                allowance: 100,
                hourly_cap: 39
            }
        );
        let v = judge(
            &ip(
                vec![pair("yahoo", ReputationState::Throttled, 50, None)],
                None,
            ),
            "yahoo",
            &limits,
        );
        assert_eq!(
            v,
            Verdict::Allowed {
                state: ReputationState::Throttled,
                allowance: 50,
                hourly_cap: 500
            }
        );
    }

    #[test]
    fn overrides_only_lower_and_zero_drains() {
        let over = |pct: i32, providers: Vec<&str>| ManualOverride {
            allowance_percent: pct,
            providers: providers.into_iter().map(String::from).collect(),
            reason: "maintenance".into(),
        };
        let v = judge(
            &ip(
                vec![pair("google", ReputationState::Recovering, 25, None)],
                Some(over(60, vec![])),
            ),
            "google",
            &RateLimits::default(),
        );
        assert!(matches!(v, Verdict::Allowed { allowance: 25, .. }), "{v:?}");
        let v = judge(
            &ip(vec![], Some(over(0, vec!["microsoft"]))),
            "microsoft",
            &RateLimits::default(),
        );
        assert!(
            matches!(v, Verdict::Excluded { ref reason, .. } if reason.contains("maintenance")),
            "{v:?}"
        );
        let v = judge(
            &ip(vec![], Some(over(0, vec!["microsoft"]))),
            "google",
            &RateLimits::default(),
        );
        assert!(matches!(v, Verdict::Allowed { allowance: 100, .. }));
        let mut drained = pair("google", ReputationState::Healthy, 0, None);
        drained.overridden_by = Some("drain for move".into());
        let v = judge(&ip(vec![drained], None), "google", &RateLimits::default());
        assert!(
            matches!(v, Verdict::Excluded { ref reason, .. } if reason.contains("drain for move")),
            "{v:?}"
        );
    }

    #[test]
    fn an_unparsable_address_never_sends() {
        let mut bad = ip(vec![], None);
        bad.parsed = None;
        assert!(matches!(
            judge(&bad, "google", &RateLimits::default()),
            Verdict::Excluded { .. }
        ));
    }

    #[test]
    fn an_ip_its_senders_cannot_bind_sends_to_no_provider() {
        let mut unbound = ip(vec![], None);
        unbound.not_bound = Some("not on an interface".into());
        for provider in ["google", "microsoft"] {
            assert!(matches!(
                judge(&unbound, provider, &RateLimits::default()),
                Verdict::Excluded { ref reason, .. } if reason.contains("IpBound")
            ));
        }
    }
}
