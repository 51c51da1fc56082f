//! `OUT/state.json`: what standalone mode must not forget across a restart —
//! every pool's and route's status (the reputation engine's whole state) and
//! the feedback ledger (so a report retried across the restart is not counted
//! twice).
//!
//! The file is a Kubernetes-style `List` whose items are status-only documents
//! (kind, metadata, status), the shape `mailfleet routes --manifests DIR
//! --manifests OUT/state.json` reads as an overlay, plus one `FeedbackLedger`
//! item that other readers skip. JSON, because no human edits it and a fleet
//! at the CRDs' limits (many pools of 256 IPs, every provider, full windows)
//! makes a file of many megabytes that a YAML reader's node budget refuses.
//! Runs before this format wrote `state.yaml` (a YAML stream of the same
//! documents); it is read when no `state.json` exists yet.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::api::{DomainRouteStatus, SenderPoolStatus};
use crate::fleet::Fleet;
use crate::manifests::Manifests;
use crate::serve::ledger::FeedbackLedger;

/// File name of the state file in the output folder.
pub const STATE_FILE: &str = "state.json";
/// The state file of earlier runs, read when [`STATE_FILE`] does not exist.
pub const LEGACY_STATE_FILE: &str = "state.yaml";

const API_VERSION: &str = "mailfleet.io/v1alpha1";
const LEDGER_API_VERSION: &str = "standalone.mailfleet.io/v1";
const LEDGER_KIND: &str = "FeedbackLedger";

/// `(namespace, name)` of an object.
pub type Key = (String, String);

/// What a state file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SavedState {
    pub pools: BTreeMap<Key, SenderPoolStatus>,
    pub routes: BTreeMap<Key, DomainRouteStatus>,
    pub ledger: FeedbackLedger,
}

#[derive(Debug, thiserror::Error)]
#[error("{file} (document {document}): {problem}")]
pub struct StateError {
    pub file: PathBuf,
    pub document: usize,
    pub problem: String,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The state file's text for `fleet` and `ledger`: deterministic, so an
/// unchanged state gives the same bytes. One item per line.
pub fn render(fleet: &Fleet, ledger: &FeedbackLedger) -> String {
    let mut items = Vec::new();
    for (kind, key, status) in fleet
        .pools
        .iter()
        .filter_map(|p| {
            Some((
                "SenderPool",
                key_of(&p.metadata),
                serde_json::to_value(p.status.as_ref()?).ok()?,
            ))
        })
        .chain(fleet.routes.iter().filter_map(|r| {
            Some((
                "DomainRoute",
                key_of(&r.metadata),
                serde_json::to_value(r.status.as_ref()?).ok()?,
            ))
        }))
    {
        items.push(json!({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"namespace": key.0, "name": key.1},
            "status": status,
        }));
    }
    items.push(json!({
        "apiVersion": LEDGER_API_VERSION,
        "kind": LEDGER_KIND,
        "sequences": ledger,
    }));
    let mut out = String::from(
        "{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{\"annotations\":{\"mailfleet.io/written-by\":\"mailfleet standalone; read back when it starts, do not edit while it runs\"}},\"items\":[",
    );
    for (index, item) in items.iter().enumerate() {
        let separator = if index == 0 { "" } else { "," };
        let _ = write!(out, "{separator}\n{item}");
    }
    out.push_str("\n]}\n");
    out
}

/// Reads a state file written by [`render`].
pub fn parse(text: &str, file: &Path) -> Result<SavedState, StateError> {
    let error = |problem: String| StateError {
        file: file.to_path_buf(),
        document: 1,
        problem,
    };
    let list: Value =
        serde_json::from_str(text).map_err(|e| error(format!("not valid JSON: {e}")))?;
    let Some(items) = list.get("items").and_then(Value::as_array) else {
        return Err(error("not a List with items".into()));
    };
    parse_documents(items.iter().cloned(), file)
}

/// Reads the YAML stream of status documents earlier runs wrote to `state.yaml`.
pub fn parse_legacy(text: &str, file: &Path) -> Result<SavedState, StateError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| StateError {
        file: file.to_path_buf(),
        document: 1,
        problem: format!("not valid YAML: {e}"),
    })?;
    parse_documents(documents.into_iter(), file)
}

fn parse_documents(
    documents: impl Iterator<Item = Value>,
    file: &Path,
) -> Result<SavedState, StateError> {
    let error = |document: usize, problem: String| StateError {
        file: file.to_path_buf(),
        document,
        problem,
    };
    let mut saved = SavedState::default();
    for (index, document) in documents.enumerate() {
        let number = index + 1;
        if document.is_null() {
            continue;
        }
        let kind = document.get("kind").and_then(Value::as_str).unwrap_or("");
        let field = |name: &str| document.get(name).cloned().unwrap_or(Value::Null);
        match kind {
            "SenderPool" | "DomainRoute" => {
                let meta = field("metadata");
                let key = (
                    meta.get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("default")
                        .to_string(),
                    meta.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                );
                if key.1.is_empty() {
                    return Err(error(number, format!("{kind} without metadata.name")));
                }
                let status = field("status");
                let problem = |e: serde_path_to_error::Error<serde_json::Error>| {
                    error(
                        number,
                        format!(
                            "{kind} {}/{}: status.{}: {}",
                            key.0,
                            key.1,
                            e.path(),
                            e.inner()
                        ),
                    )
                };
                if kind == "SenderPool" {
                    let status: SenderPoolStatus =
                        serde_path_to_error::deserialize(status).map_err(problem)?;
                    // The pool status reads leniently (for the operator's
                    // watch); a state file with a part cut out is refused
                    // instead, so it is moved aside and its Blocked pairs
                    // reported, never silently thinned.
                    if let Some(unreadable) = &status.unreadable {
                        return Err(error(
                            number,
                            format!(
                                "{kind} {}/{}: {}",
                                key.0,
                                key.1,
                                unreadable.problems.join("; ")
                            ),
                        ));
                    }
                    saved.pools.insert(key, status);
                } else {
                    let status = serde_path_to_error::deserialize(status).map_err(problem)?;
                    saved.routes.insert(key, status);
                }
            }
            LEDGER_KIND => {
                saved.ledger =
                    serde_path_to_error::deserialize(field("sequences")).map_err(|e| {
                        error(
                            number,
                            format!("{LEDGER_KIND}: sequences.{}: {}", e.path(), e.inner()),
                        )
                    })?;
            }
            other => {
                return Err(error(number, format!("unexpected kind `{other}`")));
            }
        }
    }
    Ok(saved)
}

/// The pairs a state file holds as Blocked, as `pool ip provider`, read as
/// leniently as possible: what a damaged file held is reported, never
/// silently forgotten. Each item of [`render`] is one line, so every whole
/// line is read on its own.
pub fn blocked_pairs(text: &str) -> Vec<String> {
    let mut documents: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line.trim().trim_end_matches(',')).ok())
        .collect();
    if documents.is_empty() {
        documents = serde_saphyr::from_multiple(text).unwrap_or_default();
    }
    let mut pairs = Vec::new();
    for document in documents {
        if document.get("kind").and_then(Value::as_str) != Some("SenderPool") {
            continue;
        }
        let text_at = |pointer: &str| {
            document
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let pool = format!(
            "{}/{}",
            text_at("/metadata/namespace"),
            text_at("/metadata/name")
        );
        let ips = document.pointer("/status/ips").and_then(Value::as_array);
        for ip in ips.into_iter().flatten() {
            let address = ip.get("address").and_then(Value::as_str).unwrap_or("?");
            let reputation = ip.get("reputation").and_then(Value::as_array);
            for pair in reputation.into_iter().flatten() {
                if pair.get("state").and_then(Value::as_str) == Some("Blocked") {
                    let provider = pair.get("provider").and_then(Value::as_str).unwrap_or("?");
                    pairs.push(format!("{pool} {address} {provider}"));
                }
            }
        }
    }
    pairs
}

/// Sets the saved status of every object the manifests still hold (saved
/// status wins over status written in the manifests: it is newer). Returns
/// the saved objects no longer in the manifests, as `Kind namespace/name`.
pub fn merge_into(manifests: &mut Manifests, saved: &SavedState) -> Vec<String> {
    let mut gone = Vec::new();
    for (key, status) in &saved.pools {
        match manifests
            .pools
            .iter_mut()
            .find(|p| &key_of(&p.metadata) == key)
        {
            Some(pool) => pool.status = Some(status.clone()),
            None => gone.push(format!("SenderPool {}/{}", key.0, key.1)),
        }
    }
    for (key, status) in &saved.routes {
        match manifests
            .routes
            .iter_mut()
            .find(|r| &key_of(&r.metadata) == key)
        {
            Some(route) => route.status = Some(status.clone()),
            None => gone.push(format!("DomainRoute {}/{}", key.0, key.1)),
        }
    }
    gone
}

/// Carries the status of the running fleet over to newly loaded manifests.
pub fn carry_over(manifests: &mut Manifests, fleet: &Fleet) {
    for pool in &mut manifests.pools {
        let key = key_of(&pool.metadata);
        if let Some(old) = fleet.pools.iter().find(|p| key_of(&p.metadata) == key) {
            if old.status.is_some() {
                pool.status = old.status.clone();
            }
        }
    }
    for route in &mut manifests.routes {
        let key = key_of(&route.metadata);
        if let Some(old) = fleet.routes.iter().find(|r| key_of(&r.metadata) == key) {
            if old.status.is_some() {
                route.status = old.status.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::report::SequenceLedger;
    use crate::api::ReputationState;
    use crate::reputation::engine::{ConclusiveReply, Feedback, Signal};

    fn example() -> Manifests {
        crate::manifests::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"))
            .unwrap()
    }

    fn blocked_fleet() -> (Fleet, FeedbackLedger) {
        let now: jiff::Timestamp = "2026-11-29T08:10:00Z".parse().unwrap();
        let mut fleet = Fleet::new(example(), None).unwrap();
        fleet.advance(now).unwrap();
        let reply = "550 5.7.606 Access denied, banned sending IP [203.0.113.12]";
        let feedback = Feedback {
            provider: "microsoft".into(),
            attempts: 1,
            ip_blocklisted: 1,
            conclusive: vec![ConclusiveReply {
                reply: reply.into(),
                named_ip: "203.0.113.12".parse().ok(),
                at: now,
                pause_seconds: None,
            }],
            ..Feedback::default()
        };
        fleet
            .observe("203.0.113.12", Signal::Feedback(feedback), now)
            .unwrap();
        for route in &mut fleet.routes {
            route.status = Some(DomainRouteStatus {
                target_count: 3,
                ..Default::default()
            });
        }
        let mut sequences = SequenceLedger::default();
        sequences.admit("agent-1", 4, now);
        (fleet, FeedbackLedger::from_sequences(sequences))
    }

    #[test]
    fn state_round_trips_and_merges_into_fresh_manifests() {
        let (fleet, ledger) = blocked_fleet();
        let text = render(&fleet, &ledger);
        assert_eq!(text, render(&fleet, &ledger), "not deterministic");
        let saved = parse(&text, Path::new("out/state.json")).unwrap();
        assert_eq!(saved.ledger, ledger);
        assert_eq!(saved.pools.len(), 2);
        assert_eq!(saved.routes.len(), fleet.routes.len());
        let mut fresh = example();
        assert!(merge_into(&mut fresh, &saved).is_empty());
        let restarted = Fleet::new(fresh, None).unwrap();
        assert_eq!(
            serde_json::to_value(&restarted.pools).unwrap(),
            serde_json::to_value(&fleet.pools).unwrap()
        );
        let bulk = restarted.pools[0].status.as_ref().unwrap();
        let pair = bulk
            .ips
            .iter()
            .find(|i| i.address == "203.0.113.12")
            .unwrap();
        assert!(pair
            .reputation
            .iter()
            .any(|r| r.provider == "microsoft" && r.state == ReputationState::Blocked));
    }

    #[test]
    fn the_state_file_is_an_overlay_the_routes_command_reads() {
        let (fleet, ledger) = blocked_fleet();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(STATE_FILE);
        std::fs::write(&state, render(&fleet, &ledger)).unwrap();
        let overlaid = crate::manifests::load_overlays(&[
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet"),
            state,
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_value(&overlaid.pools).unwrap(),
            serde_json::to_value(&fleet.pools).unwrap()
        );
    }

    #[test]
    fn a_damaged_state_file_is_refused_naming_the_document_and_field() {
        let (fleet, ledger) = blocked_fleet();
        let text =
            render(&fleet, &ledger).replacen("\"state\":\"Blocked\"", "\"state\":\"Blokked\"", 1);
        let err = parse(&text, Path::new("out/state.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("out/state.json (document 1): SenderPool mail/bulk: status.ips"),
            "{err}"
        );
        let err = parse("{\"kind\": \"Nonsense\"}", Path::new("s.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a List"), "{err}");
        let err = parse("{{{", Path::new("s.json")).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn the_blocked_pairs_of_a_damaged_file_are_still_found() {
        let (fleet, ledger) = blocked_fleet();
        let text = render(&fleet, &ledger);
        let cut = &text[..text.len() - 40];
        assert!(parse(cut, Path::new("s.json")).is_err());
        assert_eq!(
            blocked_pairs(cut),
            vec!["mail/bulk 203.0.113.12 microsoft".to_string()]
        );
    }

    #[test]
    fn a_legacy_yaml_state_is_read() {
        let (fleet, ledger) = blocked_fleet();
        let mut yaml = String::new();
        let list: Value = serde_json::from_str(&render(&fleet, &ledger)).unwrap();
        for item in list["items"].as_array().unwrap() {
            yaml.push_str("---\n");
            yaml.push_str(&serde_saphyr::to_string(item).unwrap());
        }
        let saved = parse_legacy(&yaml, Path::new("state.yaml")).unwrap();
        assert_eq!(
            saved,
            parse(&render(&fleet, &ledger), Path::new("s")).unwrap()
        );
    }

    /// Pools at the largest size the CRD allows (256 IPs), every builtin
    /// provider plus `other`, every window bucket filled: 2,560 pairs, more
    /// than the 2,000 whose YAML state could not be read back. JSON has no
    /// node budget, so more pools only make the file longer (two keep the
    /// test quick in a debug build).
    #[test]
    fn a_fleet_at_the_crd_limits_round_trips() {
        use crate::api::{IpStatus, ProviderReputation, WindowBucket};
        let (mut fleet, ledger) = blocked_fleet();
        let template = fleet.pools[0].clone();
        let since = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-11-29T08:10:00Z".parse().unwrap(),
        );
        let mut providers: Vec<String> = crate::vocab::BUILTIN_PROVIDERS
            .iter()
            .map(|p| p.to_string())
            .collect();
        providers.push("other".into());
        fleet.pools = (0..2)
            .map(|p| {
                let mut pool = template.clone();
                pool.metadata.name = Some(format!("pool-{p}"));
                let mut status = pool.status.clone().unwrap_or_default();
                status.ips = (0..256)
                    .map(|i| {
                        let mut ip = IpStatus::new(format!("10.{p}.{}.{}", i / 256, i % 256));
                        ip.reputation = providers
                            .iter()
                            .map(|provider| ProviderReputation {
                                provider: provider.clone(),
                                state: ReputationState::Blocked,
                                since: since.clone(),
                                reason: "ConclusiveBlockReply".into(),
                                last_evidence: Some(format!(
                                    "550 5.7.606 Access denied, banned sending IP [10.{p}.0.{i}]"
                                )),
                                window: (0..16)
                                    .map(|b| WindowBucket {
                                        start: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                            jiff::Timestamp::from_second(1_700_000_000 + b * 60)
                                                .unwrap(),
                                        ),
                                        attempts: 123_456,
                                        delivered: 120_000,
                                        ip_blocklisted: 3_000,
                                        ip_rate_limited: 456,
                                        complaints: 0,
                                    })
                                    .collect(),
                                allowance_percent: 0,
                                hourly_cap: None,
                                overridden_by: None,
                                hold_down_seconds: Some(3600),
                                block_count: 3,
                                next_step_at: Some(since.clone()),
                                recovery_step: None,
                                throttle_step: None,
                                paused_until: None,
                                probe_successes: 0,
                                dnsbl_claims: Vec::new(),
                                complaint_rate: None,
                            })
                            .collect();
                        ip
                    })
                    .collect();
                pool.status = Some(status);
                pool
            })
            .collect();
        let text = render(&fleet, &ledger);
        // Windows are packed (api::compact): well over a mebibyte still.
        assert!(text.len() > 1_000_000, "{} bytes", text.len());
        let saved = parse(&text, Path::new("state.json")).unwrap();
        assert_eq!(saved.pools.len(), 2);
        let blocked: usize = saved
            .pools
            .values()
            .flat_map(|s| s.ips.iter())
            .flat_map(|i| i.reputation.iter())
            .filter(|r| r.state == ReputationState::Blocked)
            .count();
        assert_eq!(blocked, 2 * 256 * providers.len());
        assert_eq!(saved.ledger, ledger);
    }

    #[test]
    fn objects_gone_from_the_manifests_are_reported_and_reload_keeps_status() {
        let (fleet, ledger) = blocked_fleet();
        let saved = parse(&render(&fleet, &ledger), Path::new("s")).unwrap();
        let mut fewer = example();
        fewer
            .pools
            .retain(|p| p.metadata.name.as_deref() == Some("bulk"));
        assert_eq!(
            merge_into(&mut fewer, &saved),
            vec!["SenderPool mail/reserve".to_string()]
        );
        let mut reloaded = example();
        carry_over(&mut reloaded, &fleet);
        assert_eq!(reloaded.pools[0].status, fleet.pools[0].status);
        assert_eq!(reloaded.routes[0].status, fleet.routes[0].status);
    }
}
