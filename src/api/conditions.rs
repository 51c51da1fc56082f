//! Status conditions, kept as a list keyed by `type` (the Kubernetes convention),
//! so `kubectl wait --for=condition=Ready` and server-side apply both work.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One observation about the resource, in the shape of `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type in CamelCase: `Ready`, `Degraded`, `Progressing`, `Accepted`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A CamelCase word naming why the condition has this status.
    pub reason: String,
    /// A sentence for a person: what is wrong and, where it applies, which field to fix.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (not when the message last changed).
    pub last_transition_time: Time,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The three values Kubernetes allows for a condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// Inserts or updates the condition of `type_`, keeping `lastTransitionTime` when
/// the status did not change so that a reconcile with nothing new writes nothing new.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: Time(now),
            observed_generation,
        }),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Schema extension marking a `conditions` list as a map keyed by `type`.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0: Timestamp = "2021-11-05T08:10:00Z".parse().unwrap();
        let t1: Timestamp = "2021-11-05T08:11:00Z".parse().unwrap();
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            "Ready",
            ConditionStatus::True,
            "AllIpsReady",
            "",
            Some(1),
            t0,
        );
        set_condition(
            &mut conds,
            "Ready",
            ConditionStatus::True,
            "AllIpsReady",
            "still",
            Some(2),
            t1,
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(t0));
        assert_eq!(conds[0].message, "still");
        set_condition(
            &mut conds,
            "Ready",
            ConditionStatus::False,
            "IpBlocked",
            "",
            Some(2),
            t1,
        );
        assert_eq!(conds[0].last_transition_time, Time(t1));
    }
}
