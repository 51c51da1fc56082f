//! The Service of one route and its EndpointSlices: the ready sender pods of
//! the IPs that may carry the route now.
//!
//! The Service has no selector, so Kubernetes leaves its endpoints to us. A
//! pod is an endpoint when it is ready, in the route's namespace, and its
//! `mailfleet.io/pool` and `mailfleet.io/ip` labels name a target of the route
//! whose state carries mail ([`carries_mail`]): a Probing target only sends its
//! own trickle, so it never receives other pods' mail. In modes Relay and Defer
//! the slices are empty.
//!
//! Slices hold at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints of one address
//! family, sorted by pod IP then name, and are numbered from 0: IPv4 ones
//! `mf-route-<route>-0`, `-1`, ..., IPv6 ones `mf-route-<route>-v6-0`, ...
//! (a slice's `addressType` is immutable, so the families never share a name).
//! There is always a slice 0 (IPv4, empty when no pod may carry the route), so
//! the names stay stable as pods come and go.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::DomainRoute;
use crate::routing::model::carries_mail;
use crate::routing::postfix::ip_slug;
use crate::routing::RouteResult;

use super::{
    endpoint_slice_name, endpoint_slice_name_v6, is_dns_label, namespace_of, route_labels,
    route_name, route_owner, route_service_name, BuildError, ENDPOINTSLICE_MANAGED_BY_LABEL,
    ENDPOINTSLICE_MANAGED_BY_VALUE, IP_LABEL, POOL_LABEL, SERVICE_NAME_LABEL,
};

/// Kubernetes' own limit per slice (its controllers default to 100).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The SMTP port of the Service and of the sender pods.
pub const SMTP_PORT: i32 = 25;
pub const SMTP_PORT_NAME: &str = "smtp";

/// A sender pod as the route controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderPod {
    pub namespace: String,
    pub name: String,
    /// `status.podIP`; a pod without one is not an endpoint.
    pub pod_ip: Option<String>,
    /// The pod's Ready condition.
    pub ready: bool,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`, copied to the endpoint when set.
    pub node_name: Option<String>,
}

impl SenderPod {
    /// The pod as the route controller needs it; ready means its Ready
    /// condition is True and it is not being deleted.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let ready = pod.metadata.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        SenderPod {
            namespace: namespace_of(&pod.metadata),
            name: pod.metadata.name.clone().unwrap_or_default(),
            pod_ip: status.and_then(|s| s.pod_ip.clone()),
            ready,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        }
    }
}

/// A pod that is an endpoint, with its parsed IP.
type Qualified<'a> = (IpAddr, &'a SenderPod);

/// The Service and slices of one route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteObjects {
    pub service: Service,
    pub slices: Vec<EndpointSlice>,
}

/// `(pool, ip slug)` of every target of `result` that carries mail.
pub fn carrying_targets(result: &RouteResult) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = result
        .targets
        .iter()
        .filter(|t| carries_mail(t.state))
        .filter_map(|t| {
            let ip: IpAddr = t.ip.trim().parse().ok()?;
            Some((t.pool.clone(), ip_slug(ip)))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The Service and EndpointSlices of `route`, compiled as `result`, from
/// `pods` (any pods: the ones that do not qualify are left out).
pub fn build_route_objects(
    route: &DomainRoute,
    result: &RouteResult,
    pods: &[SenderPod],
) -> Result<RouteObjects, BuildError> {
    let name = route_name(route)?;
    let service_name = route_service_name(name);
    if !is_dns_label(&service_name) {
        return Err(BuildError::InvalidName {
            kind: "DomainRoute",
            name: name.to_string(),
            what: "its Service name",
            value: service_name,
            fix: "name the route with at most 54 lowercase letters, digits and '-'",
        });
    }
    let namespace = namespace_of(&route.metadata);
    let owner = route_owner(route)?;
    let labels = route_labels(name);
    let service = route_service(&service_name, &namespace, &labels, &owner);
    let (v4, v6) = qualified_pods(result, pods, &namespace);
    let mut slice_labels = labels;
    slice_labels.insert(SERVICE_NAME_LABEL.to_string(), service_name);
    slice_labels.insert(
        ENDPOINTSLICE_MANAGED_BY_LABEL.to_string(),
        ENDPOINTSLICE_MANAGED_BY_VALUE.to_string(),
    );
    let slices = slice_chunks(name, &v4, &v6)
        .into_iter()
        .map(|(slice_name, family, endpoints)| {
            endpoint_slice(
                slice_name,
                family,
                endpoints,
                &namespace,
                &slice_labels,
                &owner,
            )
        })
        .collect();
    Ok(RouteObjects { service, slices })
}

/// The route's ClusterIP Service on the SMTP port, without a selector: its
/// EndpointSlices are written by the operator.
fn route_service(
    service_name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(service_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            ports: Some(vec![ServicePort {
                name: Some(SMTP_PORT_NAME.to_string()),
                port: SMTP_PORT,
                target_port: Some(IntOrString::Int(SMTP_PORT)),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The ready pods of the route's namespace that carry one of its targets,
/// by address family, sorted and with one pod per address.
fn qualified_pods<'p>(
    result: &RouteResult,
    pods: &'p [SenderPod],
    namespace: &str,
) -> (Vec<Qualified<'p>>, Vec<Qualified<'p>>) {
    let allowed = carrying_targets(result);
    let mut v4: Vec<Qualified> = Vec::new();
    let mut v6: Vec<Qualified> = Vec::new();
    for pod in pods {
        if pod.namespace != namespace || !pod.ready {
            continue;
        }
        let (Some(pool), Some(slug)) = (pod.labels.get(POOL_LABEL), pod.labels.get(IP_LABEL))
        else {
            continue;
        };
        if allowed
            .binary_search(&(pool.clone(), slug.clone()))
            .is_err()
        {
            continue;
        }
        match pod
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        {
            Some(ip @ IpAddr::V4(_)) => v4.push((ip, pod)),
            Some(ip @ IpAddr::V6(_)) => v6.push((ip, pod)),
            None => {}
        }
    }
    for family in [&mut v4, &mut v6] {
        family.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        family.dedup_by(|a, b| a.0 == b.0);
    }
    (v4, v6)
}

/// (slice name, address type, endpoints) of every EndpointSlice. Slice 0
/// always exists (IPv4, empty when no pod qualifies).
fn slice_chunks<'q, 'p>(
    name: &str,
    v4: &'q [Qualified<'p>],
    v6: &'q [Qualified<'p>],
) -> Vec<(String, &'static str, &'q [Qualified<'p>])> {
    let mut chunks: Vec<(String, &'static str, &'q [Qualified<'p>])> = Vec::new();
    let v4_chunks: Vec<&[Qualified]> = if v4.is_empty() {
        vec![&[]]
    } else {
        v4.chunks(MAX_ENDPOINTS_PER_SLICE).collect()
    };
    for (index, chunk) in v4_chunks.into_iter().enumerate() {
        chunks.push((endpoint_slice_name(name, index), "IPv4", chunk));
    }
    for (index, chunk) in v6.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
        chunks.push((endpoint_slice_name_v6(name, index), "IPv6", chunk));
    }
    chunks
}

fn endpoint_slice(
    slice_name: String,
    family: &str,
    endpoints: &[Qualified<'_>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        address_type: family.to_string(),
        endpoints: endpoints
            .iter()
            .map(|(ip, pod)| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: pod.node_name.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_string()),
                    name: Some(pod.name.clone()),
                    namespace: Some(pod.namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(SMTP_PORT_NAME.to_string()),
            port: Some(SMTP_PORT),
            protocol: Some("TCP".to_string()),
            app_protocol: None,
        }]),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{ReputationState, SenderPool};
    use crate::operator::build::fixtures::{fleet, now};
    use crate::routing::compile;
    use crate::routing::example::{pair, set_pair};

    /// `per_ip` ready pods for every IP of every pool, with IPs from 10.0.0.0/8.
    pub(crate) fn pods_of(pools: &[SenderPool], per_ip: usize) -> Vec<SenderPod> {
        let mut out = Vec::new();
        let mut n: u32 = 1;
        for pool in pools {
            let name = pool.metadata.name.clone().unwrap();
            for ip in &pool.spec.ips {
                let slug = ip_slug(ip.address.parse().unwrap());
                let deployment = super::super::deployment_name(&name, &ip.address).unwrap();
                for i in 0..per_ip {
                    out.push(SenderPod {
                        namespace: "mail".into(),
                        name: format!("{deployment}-{i}"),
                        pod_ip: Some(std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string()),
                        ready: true,
                        labels: BTreeMap::from([
                            (POOL_LABEL.to_string(), name.clone()),
                            (IP_LABEL.to_string(), slug.clone()),
                        ]),
                        node_name: None,
                    });
                    n += 1;
                }
            }
        }
        out
    }

    fn endpoint_pods(objects: &RouteObjects) -> Vec<String> {
        let mut names: Vec<String> = objects
            .slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect();
        names.sort();
        names
    }

    fn objects(pools: &[SenderPool], routes: &[DomainRoute], route: &str) -> RouteObjects {
        let table = compile(pools, routes, now());
        let route_obj = routes
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(route))
            .unwrap();
        build_route_objects(
            route_obj,
            table.route("mail", route).unwrap(),
            &pods_of(pools, 1),
        )
        .unwrap()
    }

    #[test]
    fn a_microsoft_block_drops_that_ip_from_the_microsoft_slices_only() {
        let (pools, routes) = fleet();
        let microsoft = objects(&pools, &routes, "microsoft");
        let names = endpoint_pods(&microsoft);
        assert_eq!(names.len(), 7, "{names:?}");
        assert!(!names.iter().any(|n| n.contains("203-0-113-13")));
        let google = objects(&pools, &routes, "google");
        assert_eq!(endpoint_pods(&google).len(), 8);
        assert!(endpoint_pods(&google)
            .iter()
            .any(|n| n.contains("203-0-113-13")));

        let service = &microsoft.service;
        assert_eq!(service.metadata.name.as_deref(), Some("mf-route-microsoft"));
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.selector, None);
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("smtp"), 25));
        let slice = &microsoft.slices[0];
        assert_eq!(slice.metadata.name.as_deref(), Some("mf-route-microsoft-0"));
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/service-name"], "mf-route-microsoft");
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"],
            "mailfleet.io/operator"
        );
        assert_eq!(labels["mailfleet.io/route"], "microsoft");
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].kind,
            "DomainRoute"
        );
    }

    #[test]
    fn every_ip_blocked_moves_the_endpoints_to_the_fallback_pool() {
        let (mut pools, routes) = fleet();
        for ip in (10..18).map(|i| format!("203.0.113.{i}")) {
            set_pair(
                &mut pools[0],
                &ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let names = endpoint_pods(&objects(&pools, &routes, "microsoft"));
        assert_eq!(
            names,
            ["mf-reserve-198-51-100-20-0", "mf-reserve-198-51-100-21-0"]
        );
        // Then the reserve is blocked too: relay, no endpoints, one empty slice.
        for ip in ["198.51.100.20", "198.51.100.21"] {
            set_pair(
                &mut pools[1],
                ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        let relay = objects(&pools, &routes, "microsoft");
        assert_eq!(relay.slices.len(), 1);
        assert!(relay.slices[0].endpoints.is_empty());
    }

    #[test]
    fn probing_ips_and_unready_pods_are_never_endpoints() {
        let (mut pools, routes) = fleet();
        for ip in (10..18).map(|i| format!("203.0.113.{i}")) {
            set_pair(
                &mut pools[0],
                &ip,
                pair("microsoft", ReputationState::Blocked, 0, now()),
            );
        }
        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("microsoft", ReputationState::Probing, 2, now()),
        );
        let table = compile(&pools, &routes, now());
        let result = table.route("mail", "microsoft").unwrap();
        assert!(result.targets.iter().any(|t| t.ip == "203.0.113.10"));
        let mut pods = pods_of(&pools, 1);
        pods.retain(|p| !p.name.contains("198-51-100-21"));
        pods.iter_mut()
            .filter(|p| p.name.contains("198-51-100-20"))
            .for_each(|p| p.ready = false);
        let route = routes
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some("microsoft"))
            .unwrap();
        let built = build_route_objects(route, result, &pods).unwrap();
        assert!(endpoint_pods(&built).is_empty());
    }

    #[test]
    fn slices_hold_at_most_one_hundred_endpoints_per_family() {
        let (pools, routes) = fleet();
        let table = compile(&pools, &routes, now());
        let route = routes
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some("google"))
            .unwrap();
        let mut pods = pods_of(&pools, 30); // 8 IPs x 30 = 240 bulk pods
        pods[0].pod_ip = Some("fd00::1".into());
        pods[1].pod_ip = None;
        let built =
            build_route_objects(route, table.route("mail", "google").unwrap(), &pods).unwrap();
        let sizes: Vec<(String, usize)> = built
            .slices
            .iter()
            .map(|s| (s.address_type.clone(), s.endpoints.len()))
            .collect();
        assert_eq!(
            sizes,
            [
                ("IPv4".to_string(), 100),
                ("IPv4".to_string(), 100),
                ("IPv4".to_string(), 38),
                ("IPv6".to_string(), 1)
            ]
        );
        // A slice's family never changes with its name.
        let names: Vec<&str> = built
            .slices
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(
            names,
            [
                "mf-route-google-0",
                "mf-route-google-1",
                "mf-route-google-2",
                "mf-route-google-v6-0"
            ]
        );
        // Listing order does not matter.
        let mut reversed = pods.clone();
        reversed.reverse();
        assert_eq!(
            built,
            build_route_objects(route, table.route("mail", "google").unwrap(), &reversed).unwrap()
        );
    }

    #[test]
    fn an_ipv6_only_fleet_keeps_an_empty_ipv4_slice_zero() {
        let (pools, routes) = fleet();
        let table = compile(&pools, &routes, now());
        let route = routes
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some("google"))
            .unwrap();
        let mut pods = pods_of(&pools, 1);
        for (n, pod) in pods.iter_mut().enumerate() {
            pod.pod_ip = Some(format!("fd00::{:x}", n + 1));
        }
        let built =
            build_route_objects(route, table.route("mail", "google").unwrap(), &pods).unwrap();
        let slices: Vec<(&str, &str, usize)> = built
            .slices
            .iter()
            .map(|s| {
                (
                    s.metadata.name.as_deref().unwrap(),
                    s.address_type.as_str(),
                    s.endpoints.len(),
                )
            })
            .collect();
        assert_eq!(
            slices,
            [
                ("mf-route-google-0", "IPv4", 0),
                ("mf-route-google-v6-0", "IPv6", 8)
            ]
        );
    }

    #[test]
    fn pods_are_ready_only_with_a_true_ready_condition_and_no_deletion() {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("mail".into());
        pod.status = Some(PodStatus {
            pod_ip: Some("10.0.0.9".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let sender = SenderPod::from_pod(&pod);
        assert!(sender.ready);
        assert_eq!(sender.pod_ip.as_deref(), Some("10.0.0.9"));
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert!(!SenderPod::from_pod(&pod).ready);
        pod.metadata.deletion_timestamp = None;
        pod.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert!(!SenderPod::from_pod(&pod).ready);
    }

    #[test]
    fn a_route_name_that_cannot_name_a_service_is_an_error() {
        let (pools, mut routes) = fleet();
        let table = compile(&pools, &routes, now());
        let result = table.route("mail", "google").unwrap().clone();
        let route = routes
            .iter_mut()
            .find(|r| r.metadata.name.as_deref() == Some("google"))
            .unwrap();
        route.metadata.name = Some("google.com".into());
        let err = build_route_objects(route, &result, &[]).unwrap_err();
        assert!(err.to_string().contains("mf-route-google.com"), "{err}");
    }
}
