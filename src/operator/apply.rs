//! Writing to the API server: server-side apply of owned objects whenever the
//! desired object changed or the stored one drifted from it, deletes for
//! pruning, and status patches guarded by resourceVersion. Every write is
//! counted, so a steady state can be shown to write nothing.
//!
//! Every applied object carries [`APPLIED_DIGEST_ANNOTATION`], a digest of the
//! whole desired object. Comparing it (not only "does the stored object hold
//! every desired field") is what makes a field removed from the desired object
//! leave the cluster: the digest moves, the full object is applied again, and
//! server-side apply drops the fields this manager no longer sets.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{api_status, OperatorError, Result};
use super::metrics::Metrics;

/// The field manager of every server-side apply the operator sends.
pub const FIELD_MANAGER: &str = "mailfleet-operator";
/// The annotation holding the digest of the desired object last applied.
pub const APPLIED_DIGEST_ANNOTATION: &str = "mailfleet.io/applied-digest";

#[derive(Clone)]
pub struct Writer {
    client: Client,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Writer { client, metrics }
    }

    /// Server-side applies `desired` (stamped with its digest) unless
    /// `existing` carries the same digest and still holds every desired field
    /// (so a hand edit is put back). Returns whether a request was sent.
    pub async fn apply<K>(&self, desired: &K, existing: Option<&K>) -> Result<bool>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        self.apply_unless(desired, existing, |_| {}).await
    }

    /// Like [`apply`](Self::apply), comparing only what `shape` leaves of the
    /// desired object (for stores that do not keep every field).
    pub async fn apply_unless<K>(
        &self,
        desired: &K,
        existing: Option<&K>,
        shape: impl FnOnce(&mut Value),
    ) -> Result<bool>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let name = desired.name_any();
        let namespace = desired.namespace().unwrap_or_default();
        let what = format!("{} {namespace}/{name}", K::kind(&()));
        let mut wanted = serde_json::to_value(desired).map_err(|source| OperatorError::Encode {
            what: what.clone(),
            source,
        })?;
        stamp_digest(&mut wanted);
        if let Some(existing) = existing {
            let have = serde_json::to_value(existing).map_err(|source| OperatorError::Encode {
                what: what.clone(),
                source,
            })?;
            let mut compared = wanted.clone();
            shape(&mut compared);
            if contains(&have, &compared) {
                return Ok(false);
            }
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        self.metrics.api_write("apply");
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&wanted),
        )
        .await
        .map_err(|e| OperatorError::kube(format!("apply {what}"), e))?;
        Ok(true)
    }

    /// Deletes one object; one that is already gone is fine.
    pub async fn delete<K>(&self, namespace: &str, name: &str) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        self.metrics.api_write("delete");
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if api_status(&e) == Some(404) => Ok(()),
            Err(e) => Err(OperatorError::kube(
                format!("delete {} {namespace}/{name}", K::kind(&())),
                e,
            )),
        }
    }

    /// Merge-patches the status subresource from `old` to `new`, only the keys
    /// that differ, with `resource_version` as a precondition (a 409 means
    /// someone else wrote first). Returns the object as written, or `None` when
    /// nothing differed and no request was sent.
    pub async fn patch_status<K>(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<String>,
        old: &Value,
        new: &Value,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let Some(diff) = merge_diff(old, new) else {
            return Ok(None);
        };
        let mut patch = Map::new();
        if let Some(rv) = resource_version {
            patch.insert(
                "metadata".into(),
                serde_json::json!({ "resourceVersion": rv }),
            );
        }
        patch.insert("status".into(), diff);
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        self.metrics.api_write("patch_status");
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(Value::Object(patch)),
        )
        .await
        .map(Some)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Adds [`APPLIED_DIGEST_ANNOTATION`] to `object`: a digest of the object
/// as it is without that annotation.
pub fn stamp_digest(object: &mut Value) {
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(APPLIED_DIGEST_ANNOTATION);
    }
    let digest = desired_digest(object);
    let Some(metadata) = object.as_object_mut().map(|o| {
        o.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
    }) else {
        return;
    };
    if let Some(metadata) = metadata.as_object_mut() {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if !annotations.is_object() {
            *annotations = Value::Object(Map::new());
        }
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_DIGEST_ANNOTATION.into(), Value::String(digest));
        }
    }
}

/// FNV-1a over the canonical JSON text (serde_json keeps object keys
/// sorted), so the digest is the same in every build and on every replica:
/// a std `Hasher` may change between Rust releases and would re-apply the
/// whole fleet after an upgrade.
pub fn desired_digest(object: &Value) -> String {
    let hash = crate::digest::fnv1a(object.to_string().as_bytes());
    format!("fnv1a64:{hash:016x}")
}

/// Whether `have` holds every field of `want` with the same value. Objects may
/// carry more keys (defaults the API server filled in); lists must have the
/// same length and hold their counterparts in order.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| match h.get(k) {
            Some(hv) => contains(hv, wv),
            None => wv.is_null() || is_empty_collection(wv),
        }),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        _ => have == want,
    }
}

fn is_empty_collection(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`, or `None` when
/// they are equal. Keys missing from `new` become `null` (removed).
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_diff(ov, nv) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            if patch.is_empty() {
                None
            } else {
                Some(Value::Object(patch))
            }
        }
        _ => Some(new.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_do_not_count_as_a_difference() {
        let have = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "postfix", "image": "p", "terminationMessagePath": "/dev/termination-log"}
        ]}}}, "status": {"readyReplicas": 1}});
        let want = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "postfix", "image": "p"}
        ]}}}});
        assert!(contains(&have, &want));
        let scaled = json!({"spec": {"replicas": 2}});
        assert!(!contains(&have, &scaled));
        let extra_container = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "postfix"}, {"name": "mailfleet-agent"}
        ]}}}});
        assert!(!contains(&have, &extra_container));
    }

    #[test]
    fn the_digest_moves_when_a_field_is_removed_and_is_stamped_once() {
        let mut with_selector = json!({"metadata": {"name": "d", "annotations": {"a": "1"}},
            "spec": {"template": {"spec": {"nodeSelector": {"zone": "a"}}}}});
        let mut without = json!({"metadata": {"name": "d", "annotations": {"a": "1"}},
            "spec": {"template": {"spec": {}}}});
        stamp_digest(&mut with_selector);
        stamp_digest(&mut without);
        let digest = |v: &Value| v["metadata"]["annotations"][APPLIED_DIGEST_ANNOTATION].clone();
        assert!(digest(&with_selector).is_string());
        assert_ne!(digest(&with_selector), digest(&without));
        // The stored object already carries the stamp: stamping it again
        // gives the same digest, so an unchanged object compares equal.
        let mut again = with_selector.clone();
        stamp_digest(&mut again);
        assert_eq!(again, with_selector);
        // The store keeps more than was applied (server defaults), yet the
        // stamped desired object is contained in it; a removed key is not.
        let mut stored = with_selector.clone();
        stored["spec"]["template"]["spec"]["dnsPolicy"] = json!("ClusterFirst");
        assert!(contains(&stored, &with_selector));
        assert!(!contains(&stored, &without));
        let mut no_metadata = json!({"spec": {}});
        stamp_digest(&mut no_metadata);
        assert!(digest(&no_metadata).is_string());
    }

    #[test]
    fn merge_diff_sends_only_changes_and_nulls_removed_keys() {
        let old = json!({"mode": "Relay", "relay": "smtp.example:587", "targetCount": 0});
        let new = json!({"mode": "Primary", "targetCount": 0});
        assert_eq!(
            merge_diff(&old, &new),
            Some(json!({"mode": "Primary", "relay": null}))
        );
        assert_eq!(merge_diff(&new, &new), None);
        let nested_old = json!({"a": {"b": 1, "c": [1, 2]}});
        let nested_new = json!({"a": {"b": 1, "c": [1]}});
        assert_eq!(
            merge_diff(&nested_old, &nested_new),
            Some(json!({"a": {"c": [1]}}))
        );
    }
}
