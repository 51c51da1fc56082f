//! The full desired set of one pool (a Deployment and a ConfigMap per IP) or
//! one route (a Service and its EndpointSlices), and what to prune among the
//! objects the operator owns now.
//!
//! Only objects carrying `app.kubernetes.io/managed-by: mailfleet-operator`
//! and this pool's (or route's) label are ever pruned, so nothing made by
//! someone else is touched, and an unusable pool or route gets no plan at all.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{DomainRoute, SenderPool};
use crate::routing::postfix::PostfixOptions;
use crate::routing::sender_config::SenderConfig;
use crate::routing::{RouteResult, RouteTable};

use super::configmap::render_config_map;
use super::deployment::{build_deployment, AgentSidecar};
use super::replicas::desired_replicas;
use super::route_service::{build_route_objects, SenderPod};
use super::{
    pool_name, route_name, BuildError, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POOL_LABEL, ROUTE_LABEL,
};

/// Kinds of the objects the operator owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnedKind {
    Deployment,
    ConfigMap,
    Service,
    EndpointSlice,
}

/// An object the cluster holds now, as a list or watch shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedObject {
    pub kind: OwnedKind,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl OwnedObject {
    /// From an object's metadata, as a list or watch returns it.
    pub fn from_meta(kind: OwnedKind, meta: &ObjectMeta) -> Option<Self> {
        Some(OwnedObject {
            kind,
            name: meta.name.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
        })
    }
}

/// An object to delete.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PruneTarget {
    pub kind: OwnedKind,
    pub name: String,
}

/// What the plan decided for one IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPlan {
    /// As the spec writes it.
    pub address: String,
    pub deployment: String,
    pub config_map: String,
    pub desired_replicas: i32,
    /// The sender configuration (its version and files, for feedback responses).
    pub config: SenderConfig,
}

/// The desired objects of one pool and what to prune.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    pub deployments: Vec<Deployment>,
    pub config_maps: Vec<ConfigMap>,
    /// The intake Service `mf-pool-<pool>`.
    pub service: Option<Service>,
    pub ips: Vec<IpPlan>,
    pub prune: Vec<PruneTarget>,
}

/// Everything a pool's plan depends on besides the pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolPlanInput<'a> {
    /// The table compiled from the usable fleet.
    pub table: &'a RouteTable,
    pub known_domains: &'a BTreeMap<String, Vec<String>>,
    /// `Fleet::known_providers`.
    pub known_providers: &'a [String],
    pub postfix: &'a PostfixOptions,
    /// `Some` when the operator runs with `--agent-image`.
    pub agent: Option<&'a AgentSidecar>,
}

/// The desired objects of `pool` (from the usable fleet: the IPs it lost to
/// another pool already removed) and the owned objects to prune.
pub fn plan_pool(
    pool: &SenderPool,
    input: &PoolPlanInput<'_>,
    owned: &[OwnedObject],
) -> Result<PoolPlan, BuildError> {
    let name = pool_name(pool)?;
    let mut plan = PoolPlan {
        deployments: Vec::new(),
        config_maps: Vec::new(),
        service: Some(super::pool_service::build_pool_service(pool)?),
        ips: Vec::new(),
        prune: Vec::new(),
    };
    for ip in &pool.spec.ips {
        let replicas = desired_replicas(pool, ip, input.known_providers);
        let deployment = build_deployment(pool, ip, replicas, input.agent)?;
        let (config_map, config) =
            render_config_map(pool, ip, input.table, input.known_domains, input.postfix)?;
        plan.ips.push(IpPlan {
            address: ip.address.clone(),
            deployment: deployment.metadata.name.clone().unwrap_or_default(),
            config_map: config_map.metadata.name.clone().unwrap_or_default(),
            desired_replicas: replicas,
            config,
        });
        plan.deployments.push(deployment);
        plan.config_maps.push(config_map);
    }
    let desired: BTreeSet<(OwnedKind, &str)> = plan
        .ips
        .iter()
        .flat_map(|ip| {
            [
                (OwnedKind::Deployment, ip.deployment.as_str()),
                (OwnedKind::ConfigMap, ip.config_map.as_str()),
            ]
        })
        .collect();
    plan.prune = prune_list(owned, POOL_LABEL, name, &desired);
    Ok(plan)
}

/// The desired objects of one route and what to prune.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePlan {
    pub service: Service,
    pub slices: Vec<EndpointSlice>,
    pub prune: Vec<PruneTarget>,
}

/// The Service and slices of `route`, compiled as `result`, and the owned
/// objects to prune. With `result` = `None` (the route is not in the table)
/// nothing is desired and every owned object of the route is pruned.
pub fn plan_route(
    route: &DomainRoute,
    result: Option<&RouteResult>,
    pods: &[SenderPod],
    owned: &[OwnedObject],
) -> Result<Option<RoutePlan>, BuildError> {
    let name = route_name(route)?;
    let Some(result) = result else {
        return Ok(None);
    };
    let objects = build_route_objects(route, result, pods)?;
    let mut desired: BTreeSet<(OwnedKind, &str)> = BTreeSet::new();
    if let Some(service) = objects.service.metadata.name.as_deref() {
        desired.insert((OwnedKind::Service, service));
    }
    for slice in &objects.slices {
        if let Some(slice_name) = slice.metadata.name.as_deref() {
            desired.insert((OwnedKind::EndpointSlice, slice_name));
        }
    }
    let prune = prune_list(owned, ROUTE_LABEL, name, &desired);
    Ok(Some(RoutePlan {
        service: objects.service,
        slices: objects.slices,
        prune,
    }))
}

/// Every owned object of a route when the route has no plan (it was removed
/// from the table): what to delete.
pub fn prune_route(route: &str, owned: &[OwnedObject]) -> Vec<PruneTarget> {
    prune_list(owned, ROUTE_LABEL, route, &BTreeSet::new())
}

fn prune_list(
    owned: &[OwnedObject],
    owner_label: &str,
    owner: &str,
    desired: &BTreeSet<(OwnedKind, &str)>,
) -> Vec<PruneTarget> {
    let mut out: Vec<PruneTarget> = owned
        .iter()
        .filter(|o| {
            o.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
                && o.labels.get(owner_label).map(String::as_str) == Some(owner)
                && !desired.contains(&(o.kind, o.name.as_str()))
        })
        .map(|o| PruneTarget {
            kind: o.kind,
            name: o.name.clone(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use crate::operator::build::fixtures::{fleet, now};
    use crate::operator::build::route_service::tests::pods_of;
    use crate::operator::build::validate::validate_fleet;
    use crate::routing::compile;
    use crate::routing::example::{known_domains, pair, set_pair};

    fn providers() -> Vec<String> {
        [
            "apple",
            "google",
            "microsoft",
            "other",
            "yahoo",
            "yahoo-japan",
        ]
        .map(String::from)
        .to_vec()
    }

    fn owned_of(plan: &PoolPlan) -> Vec<OwnedObject> {
        let mut out = Vec::new();
        for d in &plan.deployments {
            out.push(OwnedObject::from_meta(OwnedKind::Deployment, &d.metadata).unwrap());
        }
        for c in &plan.config_maps {
            out.push(OwnedObject {
                kind: OwnedKind::ConfigMap,
                name: c.metadata.name.clone().unwrap(),
                labels: c.metadata.labels.clone().unwrap(),
            });
        }
        out
    }

    fn plan(
        pools: &[SenderPool],
        routes: &[DomainRoute],
        pool: usize,
        owned: &[OwnedObject],
    ) -> PoolPlan {
        let table = compile(pools, routes, now());
        let domains = known_domains();
        let providers = providers();
        let postfix = PostfixOptions::default();
        let agent = AgentSidecar::new("mailfleet:1", "http://mailfleet.mf.svc:8080/v1/feedback");
        let input = PoolPlanInput {
            table: &table,
            known_domains: &domains,
            known_providers: &providers,
            postfix: &postfix,
            agent: Some(&agent),
        };
        plan_pool(&pools[pool], &input, owned).unwrap()
    }

    #[test]
    fn eight_ips_give_eight_deployments_and_eight_config_maps() {
        let (pools, routes) = fleet();
        let p = plan(&pools, &routes, 0, &[]);
        assert_eq!(p.deployments.len(), 8);
        assert_eq!(p.config_maps.len(), 8);
        assert!(p.prune.is_empty());
        let names: BTreeSet<&str> = p
            .deployments
            .iter()
            .filter_map(|d| d.metadata.name.as_deref())
            .collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains("mf-bulk-203-0-113-17"));
        assert_eq!(p.ips[3].config_map, "mf-bulk-203-0-113-13-config");
        assert_eq!(p.ips[3].desired_replicas, 1);
    }

    #[test]
    fn removing_an_ip_prunes_its_two_objects_and_nothing_else() {
        let (mut pools, routes) = fleet();
        let before = plan(&pools, &routes, 0, &[]);
        let mut owned = owned_of(&before);
        // Objects someone else made, or of another pool, stay.
        owned.push(OwnedObject {
            kind: OwnedKind::ConfigMap,
            name: "mf-bulk-custom".into(),
            labels: BTreeMap::from([(POOL_LABEL.to_string(), "bulk".to_string())]),
        });
        owned.extend(owned_of(&plan(&pools, &routes, 1, &[])));
        pools[0].spec.ips.retain(|ip| ip.address != "203.0.113.14");
        let after = plan(&pools, &routes, 0, &owned);
        assert_eq!(
            after.prune,
            [
                PruneTarget {
                    kind: OwnedKind::Deployment,
                    name: "mf-bulk-203-0-113-14".into()
                },
                PruneTarget {
                    kind: OwnedKind::ConfigMap,
                    name: "mf-bulk-203-0-113-14-config".into()
                },
            ]
        );
        assert_eq!(after.deployments.len(), 7);
    }

    #[test]
    fn a_block_changes_config_maps_but_no_deployment() {
        let (mut pools, routes) = fleet();
        let before = plan(&pools, &routes, 0, &[]);
        set_pair(
            &mut pools[0],
            "203.0.113.10",
            pair("google", ReputationState::Blocked, 0, now()),
        );
        let after = plan(&pools, &routes, 0, &[]);
        assert_eq!(before.deployments, after.deployments);
        assert_ne!(before.config_maps[0], after.config_maps[0]);
        assert_ne!(before.ips[0].config.version, after.ips[0].config.version);
    }

    #[test]
    fn an_ip_lost_to_another_pool_gets_no_objects() {
        let (mut pools, routes) = fleet();
        let taken = pools[0].spec.ips[0].clone();
        pools[1].spec.ips.push(taken);
        pools[0].metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        let validation = validate_fleet(&pools, &routes);
        let (usable, routes) = validation.usable_fleet(&pools, &routes);
        let p = plan(&usable, &routes, 1, &[]);
        assert_eq!(p.deployments.len(), 2);
        assert!(!p.ips.iter().any(|ip| ip.address == "203.0.113.10"));
    }

    #[test]
    fn a_route_plan_prunes_slices_it_no_longer_needs() {
        let (pools, routes) = fleet();
        let table = compile(&pools, &routes, now());
        let route = routes
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some("google"))
            .unwrap();
        let owned: Vec<OwnedObject> = (0..3)
            .map(|n| OwnedObject {
                kind: OwnedKind::EndpointSlice,
                name: format!("mf-route-google-{n}"),
                labels: BTreeMap::from([
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                    (ROUTE_LABEL.to_string(), "google".to_string()),
                ]),
            })
            .collect();
        let p = plan_route(
            route,
            table.route("mail", "google"),
            &pods_of(&pools, 1),
            &owned,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.slices.len(), 1);
        assert_eq!(
            p.prune.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["mf-route-google-1", "mf-route-google-2"]
        );
        assert_eq!(plan_route(route, None, &[], &owned).unwrap(), None);
        assert_eq!(prune_route("google", &owned).len(), 3);
    }
}
