//! A stand-in for the Deployment controller and the kubelet, run on demand
//! by a test: Pods from a Deployment's template, made ready or not, and the
//! Deployment's status to match. No ReplicaSets: Pods are owned by the
//! Deployment directly, and a changed template replaces all of them at once.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{json, Value};

use super::store::{name_of, Store};

/// Marks a pod Running and Ready (or not): `status.phase`, the Ready and
/// ContainersReady conditions, each container's status, and a pod IP (from
/// its uid) if it has none.
pub fn mark_ready(pod: &mut Value, ready: bool, now: &str) {
    let flag = if ready { "True" } else { "False" };
    let previous = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = previous
        .into_iter()
        .filter(|c| !matches!(c["type"].as_str(), Some("Ready" | "ContainersReady")))
        .collect();
    for kind in ["Ready", "ContainersReady"] {
        conditions.push(json!({"type": kind, "status": flag, "lastTransitionTime": now}));
    }
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({"name": c["name"], "image": c["image"], "ready": ready,
                           "restartCount": 0, "started": ready, "imageID": ""})
                })
                .collect()
        })
        .unwrap_or_default();
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    pod["status"]["phase"] = json!("Running");
    pod["status"]["conditions"] = json!(conditions);
    pod["status"]["containerStatuses"] = json!(containers);
    if !pod["status"]["podIP"].is_string() {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let n = u64::from_str_radix(uid.rsplit('-').next().unwrap_or("0"), 16).unwrap_or(0);
        let ip = format!("10.244.{}.{}", (n / 250) % 256, n % 250 + 1);
        pod["status"]["podIP"] = json!(ip);
        pod["status"]["podIPs"] = json!([{"ip": ip}]);
    }
}

fn template_hash(template: &Value) -> String {
    let mut hasher = DefaultHasher::new();
    template.to_string().hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
}

/// Brings the Pods of one Deployment to `spec.replicas` copies of its
/// current template (named `<deployment>-<template hash>-<n>`), ready or
/// not, and writes the Deployment's status. Returns the Pod names.
pub fn run_deployment(
    store: &mut Store,
    namespace: &str,
    name: &str,
    ready: bool,
    now: &str,
) -> Result<Vec<String>, String> {
    let deployment = store
        .find(&deployment_key(store)?, namespace, name)
        .ok_or_else(|| format!("run_deployment: Deployment {namespace}/{name} does not exist"))?;
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let template = &deployment["spec"]["template"];
    let hash = template_hash(template);
    let owner = json!([{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
        "uid": deployment["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    }]);
    let wanted: Vec<String> = (0..replicas)
        .map(|i| format!("{name}-{hash}-{i}"))
        .collect();

    let owned: Vec<String> = store
        .list(
            &pod_key(store)?,
            Some(namespace),
            &Default::default(),
            &Default::default(),
        )
        .iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r["uid"] == deployment["metadata"]["uid"])
                })
        })
        .map(|p| name_of(p).to_string())
        .collect();
    for stale in owned.iter().filter(|p| !wanted.contains(p)) {
        store.remove("v1", "Pod", namespace, stale);
    }
    for pod_name in &wanted {
        if store.find(&pod_key(store)?, namespace, pod_name).is_none() {
            let mut labels = template["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            labels["pod-template-hash"] = json!(hash);
            store.insert(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": pod_name, "namespace": namespace, "labels": labels,
                    "annotations": template["metadata"]["annotations"].clone(),
                    "ownerReferences": owner,
                },
                "spec": template["spec"].clone(),
            }))?;
        }
        store.modify("v1", "Pod", namespace, pod_name, |pod| {
            mark_ready(pod, ready, now)
        })?;
    }
    let ready_count = if ready { replicas } else { 0 };
    let generation = deployment["metadata"]["generation"].clone();
    store.modify("apps/v1", "Deployment", namespace, name, |d| {
        d["status"] = json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready_count, "availableReplicas": ready_count,
        });
    })?;
    Ok(wanted)
}

fn deployment_key(store: &Store) -> Result<super::resources::ResourceKey, String> {
    store
        .resources
        .by_kind("apps/v1", "Deployment")
        .map(|rt| rt.key())
        .ok_or_else(|| "Deployments are not served".to_string())
}

fn pod_key(store: &Store) -> Result<super::resources::ResourceKey, String> {
    store
        .resources
        .by_kind("v1", "Pod")
        .map(|rt| rt.key())
        .ok_or_else(|| "Pods are not served".to_string())
}
