//! Queue figures in status (pure): an agent's report of its pod's queue goes
//! into the pool's `status.queues`, and a route's `status.queue` sums what
//! every reporting pod of the namespace holds for it.
//!
//! A pod that stops reporting (scaled down, deleted) leaves after
//! [`STALE_AFTER_SECONDS`], so a route's figure never counts a queue that no
//! longer exists for long; the entries are bounded per pod and per pool.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::agent::report::QueueReport;
use crate::api::{RouteQueueStatus, SenderPool, SenderQueue, SenderRouteQueue};

/// A pod's figures older than this are dropped.
pub const STALE_AFTER_SECONDS: i64 = 900;
/// Routes kept per pod (the oldest waiting first).
pub const MAX_ROUTES_PER_POD: usize = 32;
/// Pods kept per pool (those with the oldest mail first).
pub const MAX_PODS_PER_POOL: usize = 1024;

fn fresh(entry: &SenderQueue, now: Timestamp) -> bool {
    now.duration_since(entry.read_time.0) <= SignedDuration::from_secs(STALE_AFTER_SECONDS)
}

/// Puts `pod`'s report into `queues` (replacing its previous figures) and
/// drops stale entries; a pod with an empty queue keeps no entry. Returns the
/// routes whose figures may have changed (the pod's before and after).
pub fn record_report(
    queues: &mut Vec<SenderQueue>,
    pod: &str,
    ip: &str,
    report: &QueueReport,
    now: Timestamp,
) -> Vec<String> {
    let mut touched: Vec<String> = queues
        .iter()
        .filter(|q| q.pod == pod || !fresh(q, now))
        .flat_map(|q| q.routes.iter().map(|r| r.route.clone()))
        .collect();
    queues.retain(|q| q.pod != pod && fresh(q, now));
    let mut routes: Vec<SenderRouteQueue> = report
        .routes
        .iter()
        .filter(|r| r.messages > 0)
        .map(|r| SenderRouteQueue {
            route: r.route.clone(),
            provider: r.provider.clone(),
            messages: i64::try_from(r.messages).unwrap_or(i64::MAX),
            oldest_arrival_time: Time(r.oldest_arrival),
        })
        .collect();
    routes.sort_by_key(|a| a.oldest_arrival_time.0);
    routes.truncate(MAX_ROUTES_PER_POD);
    touched.extend(routes.iter().map(|r| r.route.clone()));
    if report.messages > 0 {
        queues.push(SenderQueue {
            pod: pod.to_string(),
            ip: ip.to_string(),
            read_time: Time(report.read_at.min(now)),
            messages: i64::try_from(report.messages).unwrap_or(i64::MAX),
            oldest_arrival_time: report.oldest_arrival.map(Time),
            lifetime_seconds: report.maximal_lifetime_seconds,
            complete: report.complete,
            routes,
        });
    }
    if queues.len() > MAX_PODS_PER_POOL {
        queues.sort_by_key(|q| q.oldest_arrival_time.as_ref().map(|t| t.0));
        queues.truncate(MAX_PODS_PER_POOL);
    }
    queues.sort_by(|a, b| a.pod.cmp(&b.pod));
    touched.sort();
    touched.dedup();
    touched
}

/// What waits for route `namespace/name` in the fresh figures of `pools`.
pub fn route_queue<'a>(
    pools: impl IntoIterator<Item = &'a SenderPool>,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Option<RouteQueueStatus> {
    let mut messages = 0i64;
    let mut senders = 0i32;
    let mut oldest: Option<Timestamp> = None;
    let mut lifetime: Option<i64> = None;
    for pool in pools {
        if pool.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let Some(status) = &pool.status else { continue };
        for entry in status.queues.iter().filter(|q| fresh(q, now)) {
            let mut held = false;
            for r in entry.routes.iter().filter(|r| r.route == name) {
                messages = messages.saturating_add(r.messages);
                held = true;
                let at = r.oldest_arrival_time.0;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            if held {
                senders += 1;
                if let Some(l) = entry.lifetime_seconds {
                    lifetime = Some(lifetime.map_or(l, |m| m.min(l)));
                }
            }
        }
    }
    let oldest = oldest?;
    let expires = lifetime.and_then(|l| oldest.checked_add(SignedDuration::from_secs(l)).ok());
    let aging = lifetime.is_some_and(|l| now.duration_since(oldest).as_secs() * 2 >= l);
    Some(RouteQueueStatus {
        messages,
        senders,
        oldest_arrival_time: Time(oldest),
        expires_time: expires.map(Time),
        aging,
    })
}

/// The Warning a route gets when its oldest waiting message has used half
/// of its lifetime: how old it is, how much is left, and when it bounces.
pub fn aging_note(route: &str, queue: &RouteQueueStatus, now: Timestamp) -> String {
    let age = now
        .duration_since(queue.oldest_arrival_time.0)
        .as_secs()
        .max(0);
    let left = queue
        .expires_time
        .as_ref()
        .map(|e| e.0.duration_since(now).as_secs().max(0));
    format!(
        "route {route}: {} message(s) wait in {} sender(s); the oldest has waited {}{}. Mail still queued at its lifetime is returned to its sender: give the route an IP, a fallback pool or a relay, or raise the pool's spec.queue.maximalLifetimeSeconds",
        queue.messages,
        queue.senders,
        human(age),
        match (left, &queue.expires_time) {
            (Some(left), Some(at)) => format!(", {} left (it expires at {})", human(left), at.0),
            _ => String::new(),
        }
    )
}

fn human(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::report::RouteQueueReport;
    use crate::routing::example::pool;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn report(at: i64, routes: &[(&str, u64, i64)]) -> QueueReport {
        QueueReport {
            read_at: t(at),
            messages: routes.iter().map(|r| r.1).sum(),
            oldest_arrival: routes.iter().map(|r| t(r.2)).min(),
            maximal_lifetime_seconds: Some(1000),
            complete: true,
            routes: routes
                .iter()
                .map(|(name, n, arrival)| RouteQueueReport {
                    namespace: "mail".into(),
                    route: name.to_string(),
                    provider: "microsoft".into(),
                    messages: *n,
                    oldest_arrival: t(*arrival),
                })
                .collect(),
        }
    }

    #[test]
    fn pods_are_summed_per_route_and_half_a_lifetime_is_aging() {
        let mut bulk = pool("mail", "bulk", &["203.0.113.10".to_string()]);
        let queues = &mut bulk.status.as_mut().unwrap().queues;
        let touched = record_report(
            queues,
            "s-0",
            "203.0.113.10",
            &report(100, &[("ms", 40, 0)]),
            t(100),
        );
        assert_eq!(touched, vec!["ms".to_string()]);
        record_report(
            queues,
            "s-1",
            "203.0.113.10",
            &report(100, &[("ms", 2, 50), ("g", 1, 90)]),
            t(100),
        );
        let q = route_queue([&bulk], "mail", "ms", t(400)).unwrap();
        assert_eq!((q.messages, q.senders), (42, 2));
        assert_eq!(q.oldest_arrival_time.0, t(0));
        assert_eq!(q.expires_time.as_ref().unwrap().0, t(1000));
        assert!(!q.aging);
        assert!(route_queue([&bulk], "mail", "ms", t(500)).unwrap().aging);
        assert!(route_queue([&bulk], "other", "ms", t(500)).is_none());
        let note = aging_note("mail/ms", &q, t(500));
        assert!(note.contains("8m left"), "{note}");
    }

    #[test]
    fn an_empty_queue_and_a_silent_pod_leave_the_figures() {
        let mut bulk = pool("mail", "bulk", &["203.0.113.10".to_string()]);
        let queues = &mut bulk.status.as_mut().unwrap().queues;
        record_report(
            queues,
            "s-0",
            "203.0.113.10",
            &report(0, &[("ms", 4, 0)]),
            t(0),
        );
        record_report(
            queues,
            "s-1",
            "203.0.113.10",
            &report(0, &[("ms", 1, 0)]),
            t(0),
        );
        // s-0 drained its queue; s-1 was deleted and reports no more.
        let touched = record_report(queues, "s-0", "203.0.113.10", &report(1000, &[]), t(1000));
        assert_eq!(touched, vec!["ms".to_string()]);
        assert!(queues.is_empty(), "{queues:?}");
        assert!(route_queue([&bulk], "mail", "ms", t(1000)).is_none());
    }

    #[test]
    fn a_pod_keeps_at_most_its_oldest_routes() {
        let mut queues = Vec::new();
        let many: Vec<(String, u64, i64)> =
            (0..100).map(|i| (format!("r{i:03}"), 1, 100 - i)).collect();
        let borrowed: Vec<(&str, u64, i64)> =
            many.iter().map(|(n, c, a)| (n.as_str(), *c, *a)).collect();
        record_report(&mut queues, "s-0", "ip", &report(200, &borrowed), t(200));
        assert_eq!(queues[0].routes.len(), MAX_ROUTES_PER_POD);
        assert_eq!(queues[0].routes[0].route, "r099");
    }
}
