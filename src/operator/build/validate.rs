//! Fleet-level problems the schema cannot see, one object at a time: a route
//! naming a missing pool, a pool whose template has no container, an IP that
//! two pools claim, a name that cannot become a label or a Service name.
//!
//! Each problem becomes the object's `Accepted` condition (reason, and a
//! message naming the field and the fix) and an Event. Objects in
//! [`FleetValidation::unusable_pools`] / [`FleetValidation::unusable_routes`]
//! are left out of the fleet the operator compiles and manages (their existing
//! objects are left alone); everything else carries on. An IP two pools claim
//! belongs to the pool created first (then the smaller namespace/name): the
//! other pool runs without it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use jiff::Timestamp;

use crate::api::conditions::set_condition;
use crate::api::{Condition, ConditionStatus, DomainRoute, SenderPool};
use crate::routing::ObjectKey;

use super::{is_dns_label, namespace_of, route_service_name};

/// The condition type validation sets on both kinds.
pub const ACCEPTED: &str = "Accepted";

/// One thing wrong with one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectProblem {
    /// CamelCase condition reason.
    pub reason: &'static str,
    /// The offending field, e.g. `spec.ips[2].address`.
    pub field: String,
    /// What is wrong, what happens meanwhile and how to fix it.
    pub message: String,
}

/// The outcome of [`validate_fleet`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FleetValidation {
    pub pool_problems: BTreeMap<ObjectKey, Vec<ObjectProblem>>,
    pub route_problems: BTreeMap<ObjectKey, Vec<ObjectProblem>>,
    /// Pools whose workloads the operator does not manage.
    pub unusable_pools: BTreeSet<ObjectKey>,
    /// Routes the operator does not compile nor give a Service.
    pub unusable_routes: BTreeSet<ObjectKey>,
    /// Per pool, the addresses (as its spec writes them) it must not run:
    /// another pool claimed them first, or they are not IP addresses.
    pub lost_ips: BTreeMap<ObjectKey, BTreeSet<String>>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(namespace_of(meta), meta.name.clone().unwrap_or_default())
}

/// Checks every pool and route against the others.
pub fn validate_fleet(pools: &[SenderPool], routes: &[DomainRoute]) -> FleetValidation {
    let mut out = FleetValidation::default();
    for pool in pools {
        let key = key_of(&pool.metadata);
        let problems = pool_shape_problems(pool, &key);
        if !problems.is_empty() {
            out.unusable_pools.insert(key.clone());
            out.pool_problems.insert(key, problems);
        }
    }
    claim_ips(pools, &mut out);
    let existing: BTreeSet<ObjectKey> = pools
        .iter()
        .map(|p| key_of(&p.metadata))
        .filter(|k| !out.unusable_pools.contains(k))
        .collect();
    for route in routes {
        let key = key_of(&route.metadata);
        let (problems, unusable) = route_problems(route, &key, pools, &existing);
        if unusable {
            out.unusable_routes.insert(key.clone());
        }
        if !problems.is_empty() {
            out.route_problems.insert(key, problems);
        }
    }
    out
}

/// What makes a pool unmanageable on its own, whatever the other objects say.
fn pool_shape_problems(pool: &SenderPool, key: &ObjectKey) -> Vec<ObjectProblem> {
    let mut problems = Vec::new();
    // A template without `spec` gets the operator's sender image; a
    // `spec` listing no container is a mistake.
    let containers = pool
        .spec
        .template
        .spec
        .as_ref()
        .map_or(1, |s| s.containers.len());
    if containers == 0 {
        problems.push(ObjectProblem {
            reason: "TemplateHasNoContainer",
            field: "spec.template.spec.containers".into(),
            message: "spec.template.spec.containers is empty, so no sender pod can run; add the sender (MTA) container, or leave out spec.template.spec to run the sender image".into(),
        });
    }
    if !is_dns_label(&key.name) {
        problems.push(ObjectProblem {
            reason: "InvalidName",
            field: "metadata.name".into(),
            message: format!(
                "the pool name {:?} cannot be the value of the mailfleet.io/pool label of its pods (at most 63 lowercase letters, digits and '-'); recreate the pool with a shorter name",
                key.name
            ),
        });
    }
    problems
}

/// The usable pools, oldest first, so the first claimant of an IP wins. A
/// pool without a timestamp (not yet stored) sorts last.
fn oldest_first<'p>(pools: &'p [SenderPool], out: &FleetValidation) -> Vec<&'p SenderPool> {
    let mut claimants: Vec<&SenderPool> = pools
        .iter()
        .filter(|p| !out.unusable_pools.contains(&key_of(&p.metadata)))
        .collect();
    claimants.sort_by(|a, b| {
        let created = |p: &SenderPool| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (created(a).is_none(), created(a), key_of(&a.metadata)).cmp(&(
            created(b).is_none(),
            created(b),
            key_of(&b.metadata),
        ))
    });
    claimants
}

/// Gives each address to the first pool that lists it; the others lose it,
/// and so does a pool for an address that is not an IP.
fn claim_ips(pools: &[SenderPool], out: &mut FleetValidation) {
    let mut owner_of: BTreeMap<IpAddr, ObjectKey> = BTreeMap::new();
    for pool in oldest_first(pools, out) {
        let key = key_of(&pool.metadata);
        for (index, ip) in pool.spec.ips.iter().enumerate() {
            let field = format!("spec.ips[{index}].address");
            let Ok(parsed) = ip.address.trim().parse::<IpAddr>() else {
                let message = format!(
                    "{field} {:?} is not an IPv4 or IPv6 address, so it gets no sender pods; fix or remove it",
                    ip.address
                );
                lose_ip(out, &key, &ip.address, "InvalidAddress", field, message);
                continue;
            };
            match owner_of.get(&parsed) {
                None => {
                    owner_of.insert(parsed, key.clone());
                }
                Some(winner) if *winner == key => {}
                Some(winner) => {
                    let message = format!(
                        "{} also belongs to SenderPool {winner}, created first, which keeps it; this pool runs no sender for it. Remove it from spec.ips of one of the two pools",
                        ip.address
                    );
                    lose_ip(
                        out,
                        &key,
                        &ip.address,
                        "IpClaimedByAnotherPool",
                        field,
                        message,
                    );
                }
            }
        }
    }
}

fn lose_ip(
    out: &mut FleetValidation,
    pool: &ObjectKey,
    address: &str,
    reason: &'static str,
    field: String,
    message: String,
) {
    out.lost_ips
        .entry(pool.clone())
        .or_default()
        .insert(address.to_string());
    out.pool_problems
        .entry(pool.clone())
        .or_default()
        .push(ObjectProblem {
            reason,
            field,
            message,
        });
}

/// A route's problems, and whether they make it unusable (only a name that
/// cannot name its Service does: a missing pool leaves the fallbacks).
fn route_problems(
    route: &DomainRoute,
    key: &ObjectKey,
    pools: &[SenderPool],
    existing: &BTreeSet<ObjectKey>,
) -> (Vec<ObjectProblem>, bool) {
    let mut problems = Vec::new();
    let service = route_service_name(&key.name);
    let unusable = !is_dns_label(&service);
    if unusable {
        problems.push(ObjectProblem {
            reason: "InvalidName",
            field: "metadata.name".into(),
            message: format!(
                "the route's Service would be named {service:?}, which is not a DNS label (at most 63 lowercase letters, digits and '-'); recreate the route with a name of at most 54 such characters"
            ),
        });
    }
    let pool_key = ObjectKey::new(key.namespace.clone(), route.spec.pool.clone());
    if !existing.contains(&pool_key) {
        problems.push(ObjectProblem {
            reason: "PoolNotFound",
            field: "spec.pool".into(),
            message: format!(
                "spec.pool names SenderPool {pool_key}, which does not exist{}; the route uses its fallbacks (or defers) meanwhile. Create the pool or fix spec.pool",
                if pools.iter().any(|p| key_of(&p.metadata) == pool_key) {
                    " in a usable form"
                } else {
                    ""
                }
            ),
        });
    }
    for (index, fallback) in route.spec.fallback.iter().enumerate() {
        let Some(pool) = &fallback.pool else { continue };
        let fallback_key = ObjectKey::new(key.namespace.clone(), pool.clone());
        if !existing.contains(&fallback_key) {
            problems.push(ObjectProblem {
                reason: "FallbackPoolNotFound",
                field: format!("spec.fallback[{index}].pool"),
                message: format!(
                    "spec.fallback[{index}].pool names SenderPool {fallback_key}, which does not exist; that fallback is skipped. Create the pool or fix the fallback"
                ),
            });
        }
    }
    (problems, unusable)
}

impl FleetValidation {
    pub fn pool_usable(&self, key: &ObjectKey) -> bool {
        !self.unusable_pools.contains(key)
    }

    pub fn route_usable(&self, key: &ObjectKey) -> bool {
        !self.unusable_routes.contains(key)
    }

    pub fn problems_of_pool(&self, key: &ObjectKey) -> &[ObjectProblem] {
        self.pool_problems.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn problems_of_route(&self, key: &ObjectKey) -> &[ObjectProblem] {
        self.route_problems.get(key).map_or(&[], Vec::as_slice)
    }

    /// The fleet the operator compiles and manages: unusable objects left out,
    /// and every pool without the addresses it lost.
    pub fn usable_fleet(
        &self,
        pools: &[SenderPool],
        routes: &[DomainRoute],
    ) -> (Vec<SenderPool>, Vec<DomainRoute>) {
        let pools = pools
            .iter()
            .filter(|p| self.pool_usable(&key_of(&p.metadata)))
            .map(|p| {
                let mut p = p.clone();
                if let Some(lost) = self.lost_ips.get(&key_of(&p.metadata)) {
                    p.spec.ips.retain(|ip| !lost.contains(&ip.address));
                }
                p
            })
            .collect();
        let routes = routes
            .iter()
            .filter(|r| self.route_usable(&key_of(&r.metadata)))
            .cloned()
            .collect();
        (pools, routes)
    }
}

/// Sets the `Accepted` condition from `problems`: True `Valid`, or False with
/// the first problem's reason and every problem's message.
pub fn set_accepted(
    conditions: &mut Vec<Condition>,
    problems: &[ObjectProblem],
    generation: Option<i64>,
    now: Timestamp,
) {
    match problems.first() {
        None => set_condition(
            conditions,
            ACCEPTED,
            ConditionStatus::True,
            "Valid",
            "the spec can work with the rest of the fleet",
            generation,
            now,
        ),
        Some(first) => {
            let message = problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            set_condition(
                conditions,
                ACCEPTED,
                ConditionStatus::False,
                first.reason,
                message,
                generation,
                now,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::build::fixtures::{fleet, now};
    use crate::routing::example::pool;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("mail", name)
    }

    #[test]
    fn a_valid_fleet_has_no_problem() {
        let (pools, routes) = fleet();
        let v = validate_fleet(&pools, &routes);
        assert_eq!(v, FleetValidation::default());
        let (p, r) = v.usable_fleet(&pools, &routes);
        let specs = |p: &[SenderPool]| p.iter().map(|p| p.spec.clone()).collect::<Vec<_>>();
        assert_eq!(specs(&p), specs(&pools));
        assert_eq!(r.len(), routes.len());
    }

    #[test]
    fn a_route_naming_a_missing_pool_is_reported_but_still_compiled() {
        let (pools, mut routes) = fleet();
        routes[2].spec.pool = "bulkk".into();
        let name = routes[2].metadata.name.clone().unwrap();
        let v = validate_fleet(&pools, &routes);
        let problems = v.problems_of_route(&key(&name));
        assert_eq!(problems[0].reason, "PoolNotFound");
        assert_eq!(problems[0].field, "spec.pool");
        assert!(problems[0].message.contains("mail/bulkk"));
        assert!(problems[0].message.contains("fix spec.pool"));
        assert!(v.route_usable(&key(&name)));
        assert!(v.pool_problems.is_empty());
        let mut conditions = Vec::new();
        set_accepted(&mut conditions, problems, Some(1), now());
        assert_eq!(conditions[0].status, ConditionStatus::False);
        assert_eq!(conditions[0].reason, "PoolNotFound");
    }

    #[test]
    fn a_pool_without_a_container_is_unusable_and_the_rest_carries_on() {
        let (mut pools, routes) = fleet();
        pools[1]
            .spec
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers
            .clear();
        let v = validate_fleet(&pools, &routes);
        assert!(!v.pool_usable(&key("reserve")));
        assert!(v.pool_usable(&key("bulk")));
        assert_eq!(
            v.problems_of_pool(&key("reserve"))[0].reason,
            "TemplateHasNoContainer"
        );
        assert!(v.problems_of_pool(&key("reserve"))[0]
            .message
            .contains("spec.template.spec.containers"));
        // Routes falling back to it are told, and still compiled.
        let microsoft = v.problems_of_route(&key("microsoft"));
        assert_eq!(microsoft[0].reason, "FallbackPoolNotFound");
        assert_eq!(microsoft[0].field, "spec.fallback[0].pool");
        let (p, r) = v.usable_fleet(&pools, &routes);
        assert_eq!(p.len(), 1);
        assert_eq!(r.len(), routes.len());
    }

    #[test]
    fn an_ip_claimed_twice_goes_to_the_older_pool_then_by_name() {
        let (mut pools, routes) = fleet();
        let mut intruder = pool(
            "mail",
            "aardvark",
            &["203.0.113.10".into(), "192.0.2.1".into()],
        );
        intruder.spec.template = pools[0].spec.template.clone();
        intruder.metadata.creation_timestamp = Some(Time("2021-11-06T00:00:00Z".parse().unwrap()));
        pools[0].metadata.creation_timestamp = Some(Time("2021-11-01T00:00:00Z".parse().unwrap()));
        pools.push(intruder.clone());
        let v = validate_fleet(&pools, &routes);
        assert_eq!(
            v.lost_ips[&key("aardvark")],
            BTreeSet::from(["203.0.113.10".to_string()])
        );
        let problem = &v.problems_of_pool(&key("aardvark"))[0];
        assert_eq!(problem.reason, "IpClaimedByAnotherPool");
        assert_eq!(problem.field, "spec.ips[0].address");
        assert!(problem.message.contains("mail/bulk"), "{}", problem.message);
        assert!(v.problems_of_pool(&key("bulk")).is_empty());
        let (p, _) = v.usable_fleet(&pools, &routes);
        let aardvark = p
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("aardvark"))
            .unwrap();
        assert_eq!(aardvark.spec.ips.len(), 1);

        // Same creation time: the smaller name wins, whatever the listing order.
        pools.last_mut().unwrap().metadata.creation_timestamp =
            pools[0].metadata.creation_timestamp.clone();
        pools.reverse();
        let v = validate_fleet(&pools, &routes);
        assert!(v.lost_ips[&key("bulk")].contains("203.0.113.10"));
        assert!(!v.lost_ips.contains_key(&key("aardvark")));

        // Written differently, still the same address.
        let mut v6 = pool("mail", "v6a", &["2001:db8::1".into()]);
        v6.spec.template = pools[0].spec.template.clone();
        let mut v6b = pool("mail", "v6b", &["2001:DB8:0::1".into()]);
        v6b.spec.template = pools[0].spec.template.clone();
        let v = validate_fleet(&[v6, v6b], &[]);
        assert!(v.lost_ips[&key("v6b")].contains("2001:DB8:0::1"));
    }

    #[test]
    fn names_that_cannot_become_labels_or_services_are_refused() {
        let (mut pools, mut routes) = fleet();
        routes[0].metadata.name = Some("a".repeat(60));
        pools[1].metadata.name = Some("r".repeat(70));
        let v = validate_fleet(&pools, &routes);
        assert!(!v.route_usable(&key(&"a".repeat(60))));
        assert!(!v.pool_usable(&key(&"r".repeat(70))));
        assert_eq!(
            v.problems_of_route(&key(&"a".repeat(60)))[0].field,
            "metadata.name"
        );
    }

    #[test]
    fn accepted_is_true_without_problems() {
        let mut conditions = Vec::new();
        set_accepted(&mut conditions, &[], Some(2), now());
        assert_eq!(conditions[0].type_, ACCEPTED);
        assert_eq!(conditions[0].status, ConditionStatus::True);
    }
}
