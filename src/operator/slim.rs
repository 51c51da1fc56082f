//! What the reflectors keep of each watched object: only what a reconcile,
//! the feedback receiver or a wake-up reads of it.
//!
//! The stores hold every sender pod, Deployment and ConfigMap of the watched
//! namespaces (one of each per IP: 60,000 objects at 20,000 IPs), so what
//! each object carries that nobody reads is most of the operator's memory:
//! managed fields, the `last-applied-configuration` annotation of objects
//! once created with `kubectl apply`, a pod's containers and the status the
//! kubelet writes, a sender config's data. Each function trims one kind in
//! place before the object reaches its store; what it keeps is named next
//! to the reader that needs it.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::build::reputation_memory::MEMORY_OF_LABEL;

/// The annotation `kubectl apply` leaves: a second copy of the whole object.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reader of any kind looks at: managed fields and the
/// `kubectl apply` copy of the object.
pub fn slim_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A sender pod as its readers see it: the route controller
/// (`SenderPod::from_pod`: name, namespace, labels, deletion, `status.podIP`,
/// the Ready condition, `spec.nodeName`), the feedback receiver (the uid a
/// token names, the pool and IP labels) and the pod wake-ups (the same
/// fields). Containers, volumes, annotations and the kubelet's status are
/// not kept.
pub fn slim_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(PodSpec {
        node_name,
        ..Default::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        pod_ip: status.pod_ip,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// A Deployment of a pool: its metadata (owner, labels, the applied digest)
/// and spec are compared with the desired object, so a hand edit is put
/// back; of its status only what tells a finished rollout is read
/// (`pool_controller::rolled_out`).
pub fn slim_deployment(deployment: &mut Deployment) {
    slim_metadata(&mut deployment.metadata);
    deployment.status = deployment.status.take().map(|status| DeploymentStatus {
        observed_generation: status.observed_generation,
        updated_replicas: status.updated_replicas,
        ..Default::default()
    });
}

/// A ConfigMap is compared by its config-version annotation: its data (the
/// largest objects by far) is not kept, except for the pools' reputation
/// memories, which are small and read back.
pub fn slim_config_map(config_map: &mut ConfigMap) {
    slim_metadata(&mut config_map.metadata);
    let memory = config_map
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(MEMORY_OF_LABEL));
    if !memory {
        config_map.data = None;
    }
    config_map.binary_data = None;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, ManagedFieldsEntry, OwnerReference, Time,
    };

    use super::*;
    use crate::operator::build::route_service::SenderPod;
    use crate::operator::build::{IP_LABEL, POOL_LABEL};

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("mail".into()),
            uid: Some("uid-1".into()),
            resource_version: Some("42".into()),
            labels: Some(BTreeMap::from([
                (POOL_LABEL.to_string(), "bulk".to_string()),
                (IP_LABEL.to_string(), "203-0-113-10".to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                (LAST_APPLIED_ANNOTATION.to_string(), "{\"a\":1}".repeat(100)),
                (
                    "mailfleet.io/applied-digest".to_string(),
                    "fnv1a64:1".into(),
                ),
            ])),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("mailfleet-operator".into()),
                ..Default::default()
            }]),
            owner_references: Some(vec![OwnerReference {
                api_version: "mailfleet.io/v1alpha1".into(),
                kind: "SenderPool".into(),
                name: "bulk".into(),
                uid: "pool-uid".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn condition(type_: &str, status: &str) -> PodCondition {
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            message: Some("the kubelet's words".into()),
            last_transition_time: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
            ..Default::default()
        }
    }

    fn full_pod(ready: &str) -> Pod {
        Pod {
            metadata: meta("sender-0"),
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                service_account_name: Some("sender".into()),
                containers: vec![Container {
                    name: "postfix".into(),
                    image: Some("postfix".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.1.0.7".into()),
                host_ip: Some("192.0.2.1".into()),
                phase: Some("Running".into()),
                conditions: Some(vec![
                    condition("Initialized", "True"),
                    condition("Ready", ready),
                    condition("ContainersReady", ready),
                ]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_slim_pod_reads_the_same_to_the_route_controller_and_is_smaller() {
        for ready in ["True", "False"] {
            let full = full_pod(ready);
            let mut slim = full.clone();
            slim_pod(&mut slim);
            let (a, b) = (SenderPod::from_pod(&full), SenderPod::from_pod(&slim));
            assert_eq!(
                (
                    a.namespace,
                    a.name,
                    a.pod_ip,
                    a.ready,
                    a.labels,
                    a.node_name
                ),
                (
                    b.namespace,
                    b.name,
                    b.pod_ip,
                    b.ready,
                    b.labels,
                    b.node_name
                )
            );
            assert_eq!(slim.metadata.uid, full.metadata.uid);
            assert_eq!(
                slim.metadata.resource_version,
                full.metadata.resource_version
            );
            let size = |p: &Pod| serde_json::to_string(p).unwrap().len();
            assert!(
                size(&slim) * 4 < size(&full),
                "{} vs {}",
                size(&slim),
                size(&full)
            );
            let status = slim.status.unwrap();
            assert_eq!(status.conditions.unwrap().len(), 1);
            assert_eq!(status.host_ip, None);
            assert!(slim.spec.unwrap().containers.is_empty());
        }
    }

    #[test]
    fn a_pod_being_deleted_stays_not_ready() {
        let mut pod = full_pod("True");
        pod.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        slim_pod(&mut pod);
        assert!(!SenderPod::from_pod(&pod).ready);
    }

    #[test]
    fn a_slim_deployment_keeps_what_apply_and_rollout_compare() {
        let mut deployment = Deployment {
            metadata: meta("bulk-203-0-113-10"),
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                selector: LabelSelector::default(),
                template: PodTemplateSpec::default(),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(3),
                updated_replicas: Some(2),
                ready_replicas: Some(2),
                ..Default::default()
            }),
        };
        let spec = deployment.spec.clone();
        slim_deployment(&mut deployment);
        assert_eq!(deployment.spec, spec);
        let meta = &deployment.metadata;
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.owner_references.as_ref().map(Vec::len), Some(1));
        let annotations = meta.annotations.as_ref().unwrap();
        assert!(annotations.contains_key("mailfleet.io/applied-digest"));
        assert!(!annotations.contains_key(LAST_APPLIED_ANNOTATION));
        let status = deployment.status.unwrap();
        assert_eq!(
            (status.observed_generation, status.updated_replicas),
            (Some(3), Some(2))
        );
        assert_eq!(status.ready_replicas, None);
    }

    #[test]
    fn metadata_without_other_annotations_loses_the_map() {
        let mut m = meta("x");
        m.annotations = Some(BTreeMap::from([(
            LAST_APPLIED_ANNOTATION.to_string(),
            "{}".to_string(),
        )]));
        slim_metadata(&mut m);
        assert_eq!(m.annotations, None);
        assert_eq!(m.managed_fields, None);
    }

    #[test]
    fn a_config_map_keeps_its_data_only_when_it_is_a_reputation_memory() {
        let data = BTreeMap::from([("main.cf".to_string(), "x".repeat(1000))]);
        let mut sender = ConfigMap {
            metadata: meta("bulk-203-0-113-10"),
            data: Some(data.clone()),
            ..Default::default()
        };
        slim_config_map(&mut sender);
        assert_eq!(sender.data, None);
        let mut memory = ConfigMap {
            metadata: meta("mf-reputation-bulk"),
            data: Some(data.clone()),
            ..Default::default()
        };
        memory
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(MEMORY_OF_LABEL.to_string(), "bulk".to_string());
        slim_config_map(&mut memory);
        assert_eq!(memory.data, Some(data));
    }
}
