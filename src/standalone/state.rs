//! `OUT/state.yaml`: what standalone mode must not forget across a restart —
//! every pool's and route's status (the reputation engine's whole state) and
//! the feedback ledger (so a report retried across the restart is not counted
//! twice).
//!
//! The file is a list of status-only documents (kind, metadata, status), the
//! shape `mailfleet routes --manifests DIR --manifests OUT/state.yaml` reads
//! as an overlay, plus one `FeedbackLedger` document that other readers skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::api::{DomainRouteStatus, SenderPoolStatus};
use crate::fleet::Fleet;
use crate::manifests::Manifests;
use crate::serve::ledger::FeedbackLedger;

/// File name of the state file in the output folder.
pub const STATE_FILE: &str = "state.yaml";

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
#[error("{file} (document {document}): {problem}; fix or move the file away (starting without it forgets every Blocked pair)")]
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
/// unchanged state gives the same bytes.
pub fn render(fleet: &Fleet, ledger: &FeedbackLedger) -> String {
    let mut documents = Vec::new();
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
        documents.push(json!({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {"namespace": key.0, "name": key.1},
            "status": status,
        }));
    }
    documents.push(json!({
        "apiVersion": LEDGER_API_VERSION,
        "kind": LEDGER_KIND,
        "sequences": ledger,
    }));
    let mut out = String::from("# Written by `mailfleet standalone`; read back when it starts. Do not edit while it runs.\n");
    for document in documents {
        out.push_str("---\n");
        // JSON values of strings, numbers, lists and maps always serialise.
        out.push_str(&serde_saphyr::to_string(&document).unwrap_or_default());
    }
    out
}

/// Reads a state file written by [`render`].
pub fn parse(text: &str, file: &Path) -> Result<SavedState, StateError> {
    let error = |document: usize, problem: String| StateError {
        file: file.to_path_buf(),
        document,
        problem,
    };
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| error(1, format!("not valid YAML: {e}")))?;
    let mut saved = SavedState::default();
    for (index, document) in documents.into_iter().enumerate() {
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
                    let status = serde_path_to_error::deserialize(status).map_err(problem)?;
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
        let saved = parse(&text, Path::new("out/state.yaml")).unwrap();
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
        let text = render(&fleet, &ledger).replacen("state: Blocked", "state: Blokked", 1);
        let err = parse(&text, Path::new("out/state.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("out/state.yaml (document 1): SenderPool mail/bulk: status.ips"),
            "{err}"
        );
        assert!(err.contains("move the file away"), "{err}");
        let err = parse("kind: Nonsense\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected kind `Nonsense`"), "{err}");
        let err = parse("{{{", Path::new("s.yaml")).unwrap_err().to_string();
        assert!(err.contains("not valid YAML"), "{err}");
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
