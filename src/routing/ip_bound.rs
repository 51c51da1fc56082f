//! The per-IP condition `IpBound`: whether the sender pods of an IP in a
//! `spec.ipBinding.mode: Bind` pool hold the address on an interface, as
//! their agents report it (`ip_binding` of a feedback report,
//! [`crate::sender::bind`]).
//!
//! While it is `False` the route compiler sends none of the pool's routes
//! from that IP (every pair is excluded with the reason), so they move to the
//! pool's other IPs, a fallback pool, a relay, or defer: mail that reaches the
//! unbound sender goes on through the route hand-off and is never bounced for
//! it. Under `Snat` the address is on the egress gateway, not on the pod, so
//! the condition does not apply and is removed.
//!
//! The operator and standalone mode both set it here, from the receiver's
//! side of a report ([`crate::serve::ledger`]).

use jiff::Timestamp;

use crate::agent::report::IpBindingReport;
use crate::api::conditions::{set_condition, Condition, ConditionStatus};
use crate::api::{BindMode, IpStatus, SenderPool, SenderPoolStatus};

use super::index::lookup_key;

/// The per-IP condition type.
pub const IP_BOUND: &str = "IpBound";

/// A change of the condition's status that deserves an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundChange {
    /// The IP as the pool's spec writes it.
    pub ip: String,
    /// The new status; `None` when the condition was removed (mode `Snat`).
    pub bound: Option<bool>,
    /// The condition's message (empty when removed).
    pub message: String,
}

/// The condition a report's check gives the IP at `index` of `pool`:
/// `None` to remove it (mode `Snat`).
fn wanted(
    pool: &SenderPool,
    index: usize,
    pod: &str,
    check: &IpBindingReport,
) -> Option<(bool, &'static str, String)> {
    if pool.spec.ip_binding.mode == BindMode::Snat {
        return None;
    }
    let ip = &pool.spec.ips[index].address;
    if check.bound {
        return Some((
            true,
            "AddressOnInterface",
            format!("{ip} is on an interface of its sender pods; transports bind to it"),
        ));
    }
    let detail = check.detail.as_deref().unwrap_or("cannot be bound");
    Some((
        false,
        "AddressNotOnInterface",
        format!(
            "spec.ipBinding.mode is Bind but spec.ips[{index}].address {ip} is not on an interface of sender pod {pod} ({detail}), so Postfix cannot bind to it: the pool's routes leave this IP (mail handed to it goes on through the route hand-off, nothing is bounced) until it is. Fix: run the pod on a node that holds the address (hostNetwork with spec.ips[{index}].nodeSelector) or give the pod a secondary interface with it; or, behind an egress gateway that translates to it, set spec.ipBinding.mode: Snat"
        ),
    ))
}

fn position(pool: &SenderPool, address: &str) -> Option<usize> {
    let key = lookup_key(address);
    pool.spec
        .ips
        .iter()
        .position(|ip| lookup_key(&ip.address) == key)
}

fn ip_status_mut<'a>(status: &'a mut SenderPoolStatus, address: &str) -> &'a mut IpStatus {
    let key = lookup_key(address);
    match status
        .ips
        .iter()
        .position(|s| lookup_key(&s.address) == key)
    {
        Some(at) => &mut status.ips[at],
        None => {
            status.ips.push(IpStatus::new(address));
            let last = status.ips.len() - 1;
            &mut status.ips[last]
        }
    }
}

/// Sets the IP's `IpBound` condition from a report's check (`pod` is the
/// reporting agent's name). Returns the change when the status changed
/// (added, flipped or removed); an IP the pool does not list is left alone.
pub fn record(
    pool: &mut SenderPool,
    address: &str,
    pod: &str,
    check: &IpBindingReport,
    now: Timestamp,
) -> Option<BoundChange> {
    let index = position(pool, address)?;
    let wanted = wanted(pool, index, pod, check);
    let ip = pool.spec.ips[index].address.clone();
    let generation = pool.metadata.generation;
    let status = pool.status.get_or_insert_with(SenderPoolStatus::default);
    let conditions = match wanted {
        Some(_) => &mut ip_status_mut(status, &ip).conditions,
        None => {
            let key = lookup_key(&ip);
            match status
                .ips
                .iter_mut()
                .find(|s| lookup_key(&s.address) == key)
            {
                Some(ip_status) => &mut ip_status.conditions,
                None => return None,
            }
        }
    };
    let before = bound_of(conditions);
    match &wanted {
        Some((bound, reason, message)) => set_condition(
            conditions,
            IP_BOUND,
            ConditionStatus::from(*bound),
            reason,
            message.clone(),
            generation,
            now,
        ),
        None => conditions.retain(|c| c.type_ != IP_BOUND),
    }
    let after = bound_of(conditions);
    (before != after).then(|| BoundChange {
        ip,
        bound: after,
        message: wanted.map(|(_, _, m)| m).unwrap_or_default(),
    })
}

/// Whether [`record`] would change the pool's stored status at all (message
/// included): a report that would not needs no status write.
pub fn would_change(pool: &SenderPool, address: &str, pod: &str, check: &IpBindingReport) -> bool {
    let mut copy = pool.clone();
    // The clock does not matter: an unchanged status keeps its transition time.
    record(&mut copy, address, pod, check, Timestamp::UNIX_EPOCH);
    copy.status != pool.status
}

fn bound_of(conditions: &[Condition]) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == IP_BOUND)
        .map(|c| c.status == ConditionStatus::True)
}

/// The message of the IP's `IpBound` condition when it is `False`.
pub fn not_bound(status: &IpStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == IP_BOUND && c.status == ConditionStatus::False)
        .map(|c| c.message.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::example::pool;

    fn bulk() -> SenderPool {
        pool(
            "mail",
            "bulk",
            &["203.0.113.10".to_string(), "203.0.113.11".to_string()],
        )
    }

    fn check(ip: &str, bound: bool) -> IpBindingReport {
        IpBindingReport {
            address: ip.parse().unwrap(),
            bound,
            detail: (!bound).then(|| "Cannot assign requested address (os error 99)".into()),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn status_of<'a>(pool: &'a SenderPool, ip: &str) -> &'a IpStatus {
        let status = pool.status.as_ref().expect("the pool has a status");
        status
            .ips
            .iter()
            .find(|s| s.address == ip)
            .expect("the IP has a status")
    }

    #[test]
    fn an_unbound_address_is_a_false_condition_naming_the_field_and_the_fix() {
        let mut pool = bulk();
        let ip = pool.spec.ips[1].address.clone();
        let change = record(&mut pool, &ip, "bulk-x-0", &check(&ip, false), t(0)).unwrap();
        assert_eq!(change.bound, Some(false));
        assert!(
            change.message.contains("spec.ips[1].address"),
            "{}",
            change.message
        );
        assert!(
            change.message.contains("spec.ipBinding.mode: Snat"),
            "{}",
            change.message
        );
        assert!(change.message.contains("bulk-x-0"), "{}", change.message);
        let ip_status = status_of(&pool, &ip);
        assert!(not_bound(ip_status).is_some());
        // The same answer again changes nothing.
        assert!(!would_change(&pool, &ip, "bulk-x-0", &check(&ip, false)));
        assert_eq!(
            record(&mut pool, &ip, "bulk-x-0", &check(&ip, false), t(5)),
            None
        );
        // Bound again: True, with an event-worthy change.
        assert!(would_change(&pool, &ip, "bulk-x-0", &check(&ip, true)));
        let change = record(&mut pool, &ip, "bulk-x-0", &check(&ip, true), t(10)).unwrap();
        assert_eq!(change.bound, Some(true));
        let ip_status = status_of(&pool, &ip);
        assert!(not_bound(ip_status).is_none());
    }

    #[test]
    fn under_snat_the_condition_does_not_apply_and_is_removed() {
        let mut pool = bulk();
        let ip = pool.spec.ips[0].address.clone();
        record(&mut pool, &ip, "p", &check(&ip, false), t(0)).unwrap();
        pool.spec.ip_binding.mode = BindMode::Snat;
        let change = record(&mut pool, &ip, "p", &check(&ip, false), t(1)).unwrap();
        assert_eq!(change.bound, None);
        let ip_status = status_of(&pool, &ip);
        assert!(ip_status.conditions.iter().all(|c| c.type_ != IP_BOUND));
        assert!(!would_change(&pool, &ip, "p", &check(&ip, false)));
        assert_eq!(
            record(
                &mut pool,
                "192.0.2.99",
                "p",
                &check("192.0.2.99", false),
                t(2)
            ),
            None
        );
    }
}
