//! The reputation of a pool's IPs kept apart from the pool, so that it
//! belongs to the IPs and not to the object.
//!
//! A pool deleted and created again by GitOps (a replace), or restored from
//! a backup that drops status, starts with an empty status: without this, a
//! Blocked IP would be sent to its provider again at once. So every pair
//! that is not plain (see [`crate::api::compact::is_plain`]) is also kept in
//! the ConfigMap `mf-reputation-<pool>`, which has no owner (the garbage
//! collector leaves it when the pool goes) and no pool label (pruning leaves
//! it). A remembered pair missing from the pool's status is put back, for
//! the IPs and providers the pool still has. To forget a deleted pool's
//! reputation, delete its ConfigMap too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::api::compact::is_plain;
use crate::api::{IpStatus, ProviderReputation, SenderPool, SenderPoolStatus};

/// Names the pool a reputation memory belongs to (not [`super::POOL_LABEL`]:
/// that would let pruning remove it).
pub const MEMORY_OF_LABEL: &str = "mailfleet.io/reputation-of";
/// The data key holding the remembered pairs.
pub const MEMORY_KEY: &str = "pairs.json";
/// Evidence kept per remembered pair (the status keeps up to 300 characters).
const EVIDENCE_CHARS: usize = 200;

/// The name of a pool's reputation memory.
pub fn memory_name(pool: &str) -> String {
    format!("mf-reputation-{pool}")
}

/// The pairs remembered for one IP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RememberedIp {
    pub address: String,
    pub pairs: Vec<ProviderReputation>,
}

/// The pairs of `status` worth keeping across a re-creation: every one that
/// is not plain, without its window and claims (evidence of the moment, not
/// state) and with its evidence cut.
pub fn remembered(status: &SenderPoolStatus) -> Vec<RememberedIp> {
    let mut out = Vec::new();
    for ip in &status.ips {
        let pairs: Vec<ProviderReputation> = ip
            .reputation
            .iter()
            .filter(|p| !is_plain(p))
            .map(|p| {
                let mut p = p.clone();
                p.window.clear();
                p.dnsbl_claims.clear();
                p.last_evidence = p
                    .last_evidence
                    .map(|e| e.chars().take(EVIDENCE_CHARS).collect());
                p
            })
            .collect();
        if !pairs.is_empty() {
            out.push(RememberedIp {
                address: ip.address.clone(),
                pairs,
            });
        }
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// The memory ConfigMap of `pool` holding `remembered`, or `None` when there
/// is nothing to remember and nothing was remembered before (`existed`).
pub fn memory_config_map(
    pool: &SenderPool,
    remembered: &[RememberedIp],
    existed: bool,
) -> Option<ConfigMap> {
    if remembered.is_empty() && !existed {
        return None;
    }
    let name = pool.metadata.name.clone().unwrap_or_default();
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (MEMORY_OF_LABEL.to_string(), name.clone()),
    ]);
    let data = serde_json::to_string(remembered).unwrap_or_else(|_| "[]".into());
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(memory_name(&name)),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(MEMORY_KEY.to_string(), data)])),
        ..ConfigMap::default()
    })
}

/// Reads a memory ConfigMap; a damaged one reads as nothing remembered.
pub fn read_memory(config_map: &ConfigMap) -> Result<Vec<RememberedIp>, String> {
    let Some(text) = config_map.data.as_ref().and_then(|d| d.get(MEMORY_KEY)) else {
        return Ok(Vec::new());
    };
    serde_json::from_str(text).map_err(|e| format!("{MEMORY_KEY}: {e}"))
}

/// Puts the remembered pairs of the pool's current IPs and known providers
/// into `status`. Returns how many pairs were restored.
pub fn restore(
    status: &mut SenderPoolStatus,
    pool: &SenderPool,
    memory: &[RememberedIp],
    known_providers: &[String],
) -> usize {
    let mut restored = 0;
    for remembered in memory {
        let Some(spec_ip) = pool
            .spec
            .ips
            .iter()
            .find(|ip| ip.address.trim() == remembered.address.trim())
        else {
            continue;
        };
        let pairs: Vec<ProviderReputation> = remembered
            .pairs
            .iter()
            .filter(|p| known_providers.contains(&p.provider))
            .cloned()
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let index = match status
            .ips
            .iter()
            .position(|ip| ip.address == spec_ip.address)
        {
            Some(i) => i,
            None => {
                status.ips.push(IpStatus::new(spec_ip.address.clone()));
                status.ips.len() - 1
            }
        };
        let ip = &mut status.ips[index];
        for pair in pairs {
            if ip.pair(&pair.provider).is_none() {
                ip.reputation.push(pair);
                restored += 1;
            }
        }
        ip.reputation.sort_by(|a, b| a.provider.cmp(&b.provider));
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pool(ips: &[&str]) -> SenderPool {
        let ips: Vec<serde_json::Value> = ips
            .iter()
            .map(|a| serde_json::json!({ "address": a }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mailfleet.io/v1alpha1", "kind": "SenderPool",
            "metadata": {"name": "bulk", "namespace": "mail"},
            "spec": {"ips": ips, "template": {"spec": {"containers": [{"name": "postfix", "image": "postfix"}]}}}
        }))
        .unwrap()
    }

    fn pair(provider: &str, state: ReputationState) -> ProviderReputation {
        ProviderReputation {
            provider: provider.into(),
            state,
            since: Time(Timestamp::from_second(1_765_000_000).unwrap()),
            reason: if state == ReputationState::Healthy {
                "FirstSeen".into()
            } else {
                "ConclusiveBlockReply".into()
            },
            last_evidence: (state != ReputationState::Healthy).then(|| "5".repeat(400)),
            allowance_percent: if state == ReputationState::Healthy {
                100
            } else {
                0
            },
            hourly_cap: None,
            overridden_by: None,
            hold_down_seconds: None,
            block_count: i32::from(state != ReputationState::Healthy),
            next_step_at: None,
            recovery_step: None,
            probe_successes: 0,
            window: Vec::new(),
            dnsbl_claims: Vec::new(),
        }
    }

    fn status() -> SenderPoolStatus {
        let mut a = IpStatus::new("203.0.113.10");
        a.reputation = vec![
            pair("google", ReputationState::Healthy),
            pair("microsoft", ReputationState::Blocked),
        ];
        let mut b = IpStatus::new("203.0.113.11");
        b.reputation = vec![pair("google", ReputationState::Healthy)];
        SenderPoolStatus {
            ips: vec![a, b],
            ..SenderPoolStatus::default()
        }
    }

    #[test]
    fn only_pairs_that_are_not_plain_are_remembered_with_their_evidence_cut() {
        let memory = remembered(&status());
        assert_eq!(memory.len(), 1);
        assert_eq!(memory[0].address, "203.0.113.10");
        assert_eq!(memory[0].pairs.len(), 1);
        assert_eq!(memory[0].pairs[0].provider, "microsoft");
        assert_eq!(
            memory[0].pairs[0].last_evidence.as_ref().unwrap().len(),
            EVIDENCE_CHARS
        );
        let cm = memory_config_map(&pool(&["203.0.113.10"]), &memory, false).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("mf-reputation-bulk"));
        assert!(cm.metadata.owner_references.is_none());
        assert!(!cm
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(super::super::POOL_LABEL));
        assert_eq!(read_memory(&cm).unwrap(), memory);
        assert!(memory_config_map(&pool(&[]), &[], false).is_none());
        assert!(memory_config_map(&pool(&[]), &[], true).is_some());
    }

    #[test]
    fn a_status_without_them_gets_back_the_pairs_of_its_current_ips_and_known_providers() {
        let mut memory = remembered(&status());
        memory.push(RememberedIp {
            address: "198.51.100.99".into(),
            pairs: vec![pair("microsoft", ReputationState::Blocked)],
        });
        memory[0]
            .pairs
            .push(pair("gone-provider", ReputationState::Blocked));
        let pool = pool(&["203.0.113.10", "203.0.113.11"]);
        let mut fresh = SenderPoolStatus::default();
        let known = vec!["microsoft".to_string(), "google".to_string()];
        assert_eq!(restore(&mut fresh, &pool, &memory, &known), 1);
        assert_eq!(fresh.ips.len(), 1);
        assert_eq!(
            fresh.ips[0].pair("microsoft").unwrap().state,
            ReputationState::Blocked
        );
        // Run again: nothing is added twice.
        assert_eq!(restore(&mut fresh, &pool, &memory, &known), 0);
    }
}
