//! The pure part of the operator: from pools, routes, the compiled route table
//! and what the cluster holds to the objects the controllers apply, the status
//! they write and the events they record. No client, no clock (`now` is a
//! parameter), so every decision here is unit-tested without a cluster.
//!
//! Names and labels (shared with the chart, the standalone mode and the tests):
//! per IP a Deployment `mf-<pool>-<ip slug>` and a ConfigMap
//! `mf-<pool>-<ip slug>-config`; per route a Service `mf-route-<route>` and
//! EndpointSlices `mf-route-<route>-<n>` (IPv6 ones `mf-route-<route>-v6-<n>`).
//! The IP slug is
//! [`crate::routing::postfix::ip_slug`] (`mf-203-0-113-10`), so the Deployment of
//! 203.0.113.10 in pool `bulk` is `mf-bulk-203-0-113-10`.

pub mod agent_token;
pub mod configmap;
pub mod deployment;
pub mod events;
pub mod plan;
pub mod pool_service;
pub mod pool_status;
pub mod replicas;
pub mod reputation_memory;
pub mod route_service;
pub mod sender_container;
pub mod validate;

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::{DomainRoute, SenderPool};
use crate::routing::postfix::{ip_slug, PostfixError};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "mailfleet-operator";
/// `app.kubernetes.io/managed-by`, on everything the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "mailfleet-operator";
/// The pool of a per-IP object or sender pod.
pub const POOL_LABEL: &str = "mailfleet.io/pool";
/// The IP slug of a per-IP object or sender pod.
pub const IP_LABEL: &str = "mailfleet.io/ip";
/// The route of a per-route object.
pub const ROUTE_LABEL: &str = "mailfleet.io/route";
/// The IP as the pool's spec writes it, on Deployments and sender pods.
pub const SOURCE_IP_ANNOTATION: &str = "mailfleet.io/source-ip";
/// The name of the sender ConfigMap, on the pod template. It never changes
/// with the configuration, so a new configuration restarts no pod.
pub const SENDER_CONFIG_ANNOTATION: &str = "mailfleet.io/sender-config";
/// The configuration version, on the ConfigMap only.
pub const CONFIG_VERSION_ANNOTATION: &str = "mailfleet.io/config-version";
/// Links an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Tells Kubernetes' own EndpointSlice controllers to leave the slices alone.
pub const ENDPOINTSLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const ENDPOINTSLICE_MANAGED_BY_VALUE: &str = "mailfleet.io/operator";
/// The longest Kubernetes label value and DNS label.
pub const MAX_LABEL_LENGTH: usize = 63;

/// The custom resources' `apiVersion`.
pub const API_VERSION: &str = "mailfleet.io/v1alpha1";

/// Why an object cannot be built. Each message names the field and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("{kind} has no metadata.name; objects read from the API always have one")]
    MissingName { kind: &'static str },
    #[error("{kind} {name} has no metadata.uid, so nothing can name it as owner; build from the object as the API server returns it")]
    MissingUid { kind: &'static str, name: String },
    #[error("SenderPool {pool}: spec.ips address {address:?} is not an IPv4 or IPv6 address; fix spec.ips")]
    InvalidIp { pool: String, address: String },
    #[error("SenderPool {pool}: spec.template.spec.containers is empty and the operator has no sender image; set the chart value sender.image (operator flag --sender-image) or add the sender (MTA) container to the pod template")]
    NoContainer { pool: String },
    #[error("SenderPool {pool}: address {address:?} is not in spec.ips")]
    UnknownIp { pool: String, address: String },
    #[error("{kind} {name}: {what} would be {value:?}, longer than {MAX_LABEL_LENGTH} characters or not a DNS label; {fix}")]
    InvalidName {
        kind: &'static str,
        name: String,
        what: &'static str,
        value: String,
        fix: &'static str,
    },
    #[error(transparent)]
    Postfix(#[from] PostfixError),
}

/// Namespace of an object; `default` when unset, as the route compiler reads it.
pub fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

/// The slug of an address as the spec writes it (`mf-203-0-113-10`).
pub fn ip_slug_of(pool: &str, address: &str) -> Result<String, BuildError> {
    let ip: IpAddr = address.trim().parse().map_err(|_| BuildError::InvalidIp {
        pool: pool.to_string(),
        address: address.to_string(),
    })?;
    Ok(ip_slug(ip))
}

/// `mf-<pool>-<address with dashes>`, e.g. `mf-bulk-203-0-113-10` (the slug's
/// own `mf-` is not repeated).
pub fn deployment_name(pool: &str, address: &str) -> Result<String, BuildError> {
    let slug = ip_slug_of(pool, address)?;
    let address_part = slug.strip_prefix("mf-").unwrap_or(&slug);
    Ok(format!("mf-{pool}-{address_part}"))
}

/// `mf-<pool>-<ip slug>-config`.
pub fn config_map_name(pool: &str, address: &str) -> Result<String, BuildError> {
    Ok(format!("{}-config", deployment_name(pool, address)?))
}

/// `mf-route-<route>`: the host the sender configs name (with the namespace).
pub fn route_service_name(route: &str) -> String {
    format!("mf-route-{route}")
}

/// `mf-route-<route>-<n>`: the IPv4 slices.
pub fn endpoint_slice_name(route: &str, index: usize) -> String {
    format!("mf-route-{route}-{index}")
}

/// `mf-route-<route>-v6-<n>`: the IPv6 slices. A slice's `addressType` cannot
/// change, so the two families never share a name.
pub fn endpoint_slice_name_v6(route: &str, index: usize) -> String {
    format!("mf-route-{route}-v6-{index}")
}

/// Whether `value` is a valid DNS label (RFC 1123): what a Service name and a
/// label value made of a name must be.
pub fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LABEL_LENGTH
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// Whether two spec addresses name the same IP (`2001:db8::1` = `2001:DB8:0::1`).
pub fn same_address(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (a.trim().parse::<IpAddr>(), b.trim().parse::<IpAddr>()),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Labels of a per-IP object and of its pods.
pub fn ip_labels(pool: &str, slug: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (POOL_LABEL.to_string(), pool.to_string()),
        (IP_LABEL.to_string(), slug.to_string()),
    ])
}

/// Labels of a per-route object.
pub fn route_labels(route: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (ROUTE_LABEL.to_string(), route.to_string()),
    ])
}

/// kube's controller reference to `object`, blocking the owner's deletion
/// until the garbage collector removed the object, or the error naming the
/// missing field (a reference needs the owner's name and uid).
fn owner_reference<K: Resource<DynamicType = ()>>(
    kind: &'static str,
    object: &K,
) -> Result<OwnerReference, BuildError> {
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(BuildError::MissingName { kind })?;
    let reference = object
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingUid { kind, name })?;
    Ok(OwnerReference {
        block_owner_deletion: Some(true),
        ..reference
    })
}

/// The controller reference to a pool (for its Deployments and ConfigMaps).
pub fn pool_owner(pool: &SenderPool) -> Result<OwnerReference, BuildError> {
    owner_reference("SenderPool", pool)
}

/// The controller reference to a route (for its Service and EndpointSlices).
pub fn route_owner(route: &DomainRoute) -> Result<OwnerReference, BuildError> {
    owner_reference("DomainRoute", route)
}

/// The pool's name, or the error naming the missing field.
pub fn pool_name(pool: &SenderPool) -> Result<&str, BuildError> {
    pool.metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingName { kind: "SenderPool" })
}

/// The route's name, or the error naming the missing field.
pub fn route_name(route: &DomainRoute) -> Result<&str, BuildError> {
    route
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingName {
            kind: "DomainRoute",
        })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Pools and routes as the API server returns them (with uid and generation).

    use jiff::Timestamp;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::api::{DomainRoute, SenderPool};
    use crate::routing::example::incident_fleet;

    pub fn now() -> Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    pub fn template() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_string(),
                        "postfix-sender".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "postfix".into(),
                    image: Some("registry.example.net/mail/postfix-sender:3.7".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// The incident fleet with uids, generations and a sender container.
    pub fn fleet() -> (Vec<SenderPool>, Vec<DomainRoute>) {
        let (mut pools, mut routes) = incident_fleet(now());
        for pool in &mut pools {
            let name = pool.metadata.name.clone().unwrap();
            pool.metadata.uid = Some(format!("uid-pool-{name}"));
            pool.metadata.generation = Some(3);
            pool.spec.template = template();
        }
        for route in &mut routes {
            let name = route.metadata.name.clone().unwrap();
            route.metadata.uid = Some(format!("uid-route-{name}"));
            route.metadata.generation = Some(1);
        }
        (pools, routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_shared_contract() {
        assert_eq!(
            deployment_name("bulk", "203.0.113.10").unwrap(),
            "mf-bulk-203-0-113-10"
        );
        assert_eq!(
            config_map_name("bulk", "2001:DB8::10").unwrap(),
            "mf-bulk-2001-db8--10-config"
        );
        assert_eq!(route_service_name("microsoft"), "mf-route-microsoft");
        assert_eq!(endpoint_slice_name("microsoft", 2), "mf-route-microsoft-2");
        assert_eq!(
            endpoint_slice_name_v6("microsoft", 0),
            "mf-route-microsoft-v6-0"
        );
        assert!(matches!(
            deployment_name("bulk", "not-an-ip"),
            Err(BuildError::InvalidIp { .. })
        ));
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("mf-route-microsoft"));
        assert!(!is_dns_label("mf-route-a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
    }

    #[test]
    fn owner_references_need_a_uid() {
        let (mut pools, _) = fixtures::fleet();
        let owner = pool_owner(&pools[0]).unwrap();
        assert_eq!(owner.kind, "SenderPool");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        pools[0].metadata.uid = None;
        let err = pool_owner(&pools[0]).unwrap_err();
        assert!(err.to_string().contains("metadata.uid"), "{err}");
    }
}
