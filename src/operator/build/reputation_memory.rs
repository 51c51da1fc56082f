//! The reputation of a pool's IPs kept apart from the pool, so that it
//! belongs to the IPs and not to the object.
//!
//! A pool deleted and created again by GitOps (a replace), or restored from
//! a backup that drops status, starts with an empty status: without this, a
//! Blocked IP would be sent to its provider again at once. So every pair
//! holding state the spec cannot give back (see [`worth_remembering`]) is
//! also kept in the ConfigMap `mf-reputation-<pool>`, which has no owner
//! (the garbage collector leaves it when the pool goes) and no pool label
//! (pruning leaves it). A remembered pair missing from the pool's status is
//! put back, for the IPs and providers the pool still has. To forget a
//! deleted pool's reputation, delete its ConfigMap too.
//!
//! The memory is bounded like the status: one short-keyed record per pair
//! (times as Unix seconds, no window, no claims), evidence cut, and kept
//! under [`MEMORY_BUDGET`] even when every pair of the largest pool is
//! Blocked (evidence is dropped first, then the least severe pairs).

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};

use super::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::api::{IpStatus, ProviderReputation, ReputationState, SenderPool, SenderPoolStatus};

/// Names the pool a reputation memory belongs to (not [`super::POOL_LABEL`]:
/// that would let pruning remove it).
pub const MEMORY_OF_LABEL: &str = "mailfleet.io/reputation-of";
/// The data key holding the remembered pairs.
pub const MEMORY_KEY: &str = "pairs.json";
/// Evidence kept per remembered pair (the status keeps up to 300 characters).
const EVIDENCE_CHARS: usize = 200;
/// The most the remembered pairs may take (a ConfigMap holds at most 1 MiB).
pub const MEMORY_BUDGET: usize = 896 * 1024;

/// The name of a pool's reputation memory.
pub fn memory_name(pool: &str) -> String {
    format!("mf-reputation-{pool}")
}

/// Whether a pair holds state a re-created pool could not work out again
/// from its spec: any state but Healthy and Warming (Blocked, Probing,
/// Recovering, Throttled), or past blocks (they lengthen the next
/// hold-down). Warming comes back from `warmupStart`, overrides from the
/// spec, and a Healthy pair without blocks starts again as first seen.
pub fn worth_remembering(pair: &ProviderReputation) -> bool {
    !matches!(
        pair.state,
        ReputationState::Healthy | ReputationState::Warming
    ) || pair.block_count > 0
}

/// One remembered pair, short-keyed to keep the memory small.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RememberedPair {
    #[serde(rename = "p")]
    pub provider: String,
    #[serde(rename = "s")]
    pub state: ReputationState,
    /// `since`, Unix seconds.
    #[serde(rename = "t")]
    pub since: i64,
    #[serde(rename = "r")]
    pub reason: String,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    #[serde(rename = "a")]
    pub allowance_percent: i32,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub hourly_cap: Option<i64>,
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub hold_down_seconds: Option<i64>,
    #[serde(rename = "b", default)]
    pub block_count: i32,
    /// `nextStepAt`, Unix seconds.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub next_step_at: Option<i64>,
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub recovery_step: Option<i32>,
    #[serde(rename = "q", default, skip_serializing_if = "is_zero")]
    pub probe_successes: i64,
    /// The graduated throttle's step of a Throttled pair.
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub throttle_step: Option<i32>,
    /// The end of a pause, Unix seconds.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<i64>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn time(seconds: i64) -> Option<Time> {
    Timestamp::from_second(seconds).ok().map(Time)
}

impl RememberedPair {
    fn of(pair: &ProviderReputation) -> Self {
        RememberedPair {
            provider: pair.provider.clone(),
            state: pair.state,
            since: pair.since.0.as_second(),
            reason: pair.reason.clone(),
            evidence: pair
                .last_evidence
                .as_ref()
                .map(|e| e.chars().take(EVIDENCE_CHARS).collect()),
            allowance_percent: pair.allowance_percent,
            hourly_cap: pair.hourly_cap,
            hold_down_seconds: pair.hold_down_seconds,
            block_count: pair.block_count,
            next_step_at: pair.next_step_at.as_ref().map(|t| t.0.as_second()),
            recovery_step: pair.recovery_step,
            probe_successes: pair.probe_successes,
            throttle_step: pair.throttle_step,
            paused_until: pair.paused_until.as_ref().map(|t| t.0.as_second()),
        }
    }

    /// The pair as the status holds it; `None` when a time is out of range.
    pub fn pair(&self) -> Option<ProviderReputation> {
        let next_step_at = match self.next_step_at {
            Some(seconds) => Some(time(seconds)?),
            None => None,
        };
        Some(ProviderReputation {
            state: self.state,
            reason: self.reason.clone(),
            last_evidence: self.evidence.clone(),
            allowance_percent: self.allowance_percent,
            hourly_cap: self.hourly_cap,
            hold_down_seconds: self.hold_down_seconds,
            block_count: self.block_count,
            next_step_at,
            recovery_step: self.recovery_step,
            throttle_step: self.throttle_step,
            paused_until: match self.paused_until {
                Some(seconds) => Some(time(seconds)?),
                None => None,
            },
            probe_successes: self.probe_successes,
            ..ProviderReputation::first_seen(self.provider.clone(), time(self.since)?)
        })
    }

    /// Which pairs are kept first when the budget is short.
    fn severity(&self) -> u8 {
        match self.state {
            ReputationState::Blocked => 0,
            ReputationState::Probing => 1,
            ReputationState::Recovering => 2,
            ReputationState::Throttled => 3,
            _ => 4,
        }
    }
}

/// The pairs remembered for one IP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RememberedIp {
    #[serde(rename = "ip")]
    pub address: String,
    pub pairs: Vec<RememberedPair>,
}

/// What a status leaves to remember, and how many pairs the budget left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    pub ips: Vec<RememberedIp>,
    pub left_out: usize,
}

/// The pairs of `status` worth keeping across a re-creation (see
/// [`worth_remembering`]), within [`MEMORY_BUDGET`]: over it, evidence is
/// dropped; still over, the least severe pairs are left out.
pub fn remembered(status: &SenderPoolStatus) -> Memory {
    remembered_within(status, MEMORY_BUDGET)
}

fn remembered_within(status: &SenderPoolStatus, budget: usize) -> Memory {
    let mut pairs: Vec<(&str, RememberedPair)> = status
        .ips
        .iter()
        .flat_map(|ip| {
            ip.reputation
                .iter()
                .filter(|p| worth_remembering(p))
                .map(|p| (ip.address.as_str(), RememberedPair::of(p)))
        })
        .collect();
    // What one pair adds to the JSON, and what one IP's entry adds.
    let size = |p: &RememberedPair| serde_json::to_string(p).map_or(0, |s| s.len() + 1);
    let ip_overhead = |address: &str| address.len() + 24;
    let total = |pairs: &[(&str, RememberedPair)]| -> usize {
        let mut addresses: Vec<&str> = pairs.iter().map(|(a, _)| *a).collect();
        addresses.dedup();
        pairs.iter().map(|(_, p)| size(p)).sum::<usize>()
            + addresses.iter().map(|a| ip_overhead(a)).sum::<usize>()
    };
    let mut left_out = 0;
    if total(&pairs) > budget {
        for (_, p) in &mut pairs {
            p.evidence = None;
        }
    }
    if total(&pairs) > budget {
        pairs.sort_by_key(|(_, p)| p.severity());
        let mut used = 0;
        let mut seen: Vec<&str> = Vec::new();
        let mut kept = Vec::new();
        for (address, pair) in pairs {
            let extra = size(&pair)
                + if seen.contains(&address) {
                    0
                } else {
                    ip_overhead(address)
                };
            if used + extra > budget {
                left_out += 1;
                continue;
            }
            used += extra;
            if !seen.contains(&address) {
                seen.push(address);
            }
            kept.push((address, pair));
        }
        pairs = kept;
    }
    let mut by_ip: BTreeMap<&str, Vec<RememberedPair>> = BTreeMap::new();
    for (address, pair) in pairs {
        by_ip.entry(address).or_default().push(pair);
    }
    let ips = by_ip
        .into_iter()
        .map(|(address, mut pairs)| {
            pairs.sort_by(|a, b| a.provider.cmp(&b.provider));
            RememberedIp {
                address: address.to_string(),
                pairs,
            }
        })
        .collect();
    Memory { ips, left_out }
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

/// Reads a memory ConfigMap; one without data remembers nothing.
pub fn read_memory(config_map: &ConfigMap) -> Result<Vec<RememberedIp>, MemoryReadError> {
    let Some(text) = config_map.data.as_ref().and_then(|d| d.get(MEMORY_KEY)) else {
        return Ok(Vec::new());
    };
    Ok(serde_json::from_str(text)?)
}

/// A memory ConfigMap whose data the operator did not write (edited by hand,
/// or by another version).
#[derive(Debug, thiserror::Error)]
#[error("{MEMORY_KEY}: {0}")]
pub struct MemoryReadError(#[from] serde_json::Error);

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
            .filter_map(RememberedPair::pair)
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
        let healthy = matches!(state, ReputationState::Healthy | ReputationState::Warming);
        let first = ProviderReputation::first_seen(
            provider,
            Time(Timestamp::from_second(1_765_000_000).unwrap()),
        );
        if healthy {
            return ProviderReputation { state, ..first };
        }
        ProviderReputation {
            state,
            reason: "ConclusiveBlockReply".into(),
            last_evidence: Some("5".repeat(400)),
            allowance_percent: 0,
            hold_down_seconds: Some(7200),
            block_count: 1,
            next_step_at: Some(Time(Timestamp::from_second(1_765_007_200).unwrap())),
            ..first
        }
    }

    fn status() -> SenderPoolStatus {
        let mut a = IpStatus::new("203.0.113.10");
        a.reputation = vec![
            pair("google", ReputationState::Healthy),
            pair("microsoft", ReputationState::Blocked),
            pair("yahoo", ReputationState::Warming),
        ];
        let mut b = IpStatus::new("203.0.113.11");
        b.reputation = vec![pair("google", ReputationState::Healthy)];
        SenderPoolStatus {
            ips: vec![a, b],
            ..SenderPoolStatus::default()
        }
    }

    #[test]
    fn only_pairs_the_spec_cannot_give_back_are_remembered_with_their_evidence_cut() {
        let memory = remembered(&status());
        assert_eq!(memory.left_out, 0);
        let ips = memory.ips;
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0].address, "203.0.113.10");
        assert_eq!(ips[0].pairs.len(), 1);
        assert_eq!(ips[0].pairs[0].provider, "microsoft");
        assert_eq!(
            ips[0].pairs[0].evidence.as_ref().unwrap().len(),
            EVIDENCE_CHARS
        );
        // Healthy again after a block: its block count is remembered.
        let mut recovered = pair("google", ReputationState::Healthy);
        recovered.block_count = 2;
        assert!(worth_remembering(&recovered));
        let cm = memory_config_map(&pool(&["203.0.113.10"]), &ips, false).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("mf-reputation-bulk"));
        assert!(cm.metadata.owner_references.is_none());
        assert!(!cm
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(super::super::POOL_LABEL));
        assert_eq!(read_memory(&cm).unwrap(), ips);
        assert!(memory_config_map(&pool(&[]), &[], false).is_none());
        assert!(memory_config_map(&pool(&[]), &[], true).is_some());
    }

    #[test]
    fn a_status_without_them_gets_back_the_pairs_of_its_current_ips_and_known_providers() {
        let mut memory = remembered(&status()).ips;
        memory.push(RememberedIp {
            address: "198.51.100.99".into(),
            pairs: vec![RememberedPair::of(&pair(
                "microsoft",
                ReputationState::Blocked,
            ))],
        });
        memory[0].pairs.push(RememberedPair::of(&pair(
            "gone-provider",
            ReputationState::Blocked,
        )));
        let pool = pool(&["203.0.113.10", "203.0.113.11"]);
        let mut fresh = SenderPoolStatus::default();
        let known = vec!["microsoft".to_string(), "google".to_string()];
        assert_eq!(restore(&mut fresh, &pool, &memory, &known), 1);
        assert_eq!(fresh.ips.len(), 1);
        let back = fresh.ips[0].pair("microsoft").unwrap();
        let mut want = pair("microsoft", ReputationState::Blocked);
        want.last_evidence = Some("5".repeat(EVIDENCE_CHARS));
        assert_eq!(back, &want);
        // Run again: nothing is added twice.
        assert_eq!(restore(&mut fresh, &pool, &memory, &known), 0);
    }

    /// The CRD's largest pool (256 IPs, every builtin provider and gateway,
    /// `other` and 16 declared providers) with every pair Blocked: the memory
    /// still fits a ConfigMap and keeps every pair, without evidence.
    #[test]
    fn every_pair_of_the_largest_pool_blocked_still_fits_a_config_map() {
        let providers = crate::api::compact::largest_pool_providers();
        let ips: Vec<IpStatus> = (0..256)
            .map(|n| {
                let mut ip = IpStatus::new(format!("203.0.{}.{}", 100 + n / 200, 10 + n % 200));
                ip.reputation = providers
                    .iter()
                    .map(|p| pair(p, ReputationState::Blocked))
                    .collect();
                ip
            })
            .collect();
        let status = SenderPoolStatus {
            ips,
            ..SenderPoolStatus::default()
        };
        let memory = remembered(&status);
        let pairs: usize = memory.ips.iter().map(|ip| ip.pairs.len()).sum();
        assert_eq!((memory.left_out, pairs), (0, 256 * providers.len()));
        assert!(memory.ips[0].pairs[0].evidence.is_none());
        let cm = memory_config_map(&pool(&[]), &memory.ips, false).unwrap();
        let bytes = cm.data.unwrap()[MEMORY_KEY].len();
        println!("largest pool, every pair Blocked: memory of {bytes} bytes");
        assert!(bytes <= MEMORY_BUDGET, "{bytes} bytes");

        // A budget too small for all: Blocked pairs are kept before the rest.
        let mut mixed = status.clone();
        for ip in &mut mixed.ips {
            for p in ip.reputation.iter_mut().skip(1) {
                p.state = ReputationState::Recovering;
            }
        }
        let small = remembered_within(&mixed, 64 * 1024);
        assert!(small.left_out > 0);
        let kept: Vec<&RememberedPair> = small.ips.iter().flat_map(|ip| &ip.pairs).collect();
        let blocked = kept
            .iter()
            .filter(|p| p.state == ReputationState::Blocked)
            .count();
        assert_eq!(blocked, 256, "every Blocked pair is kept first");
        let json = serde_json::to_string(&small.ips).unwrap();
        assert!(json.len() <= 64 * 1024, "{} bytes", json.len());
    }
}
