//! The mailfleet side of a run: agents that classify every reply and report it,
//! the real reputation engine (through [`Fleet`]) and the real incremental
//! route compiler.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::DnsblResult;
use crate::fleet::Fleet;
use crate::reputation::classifier::Verdict;
use crate::reputation::engine::{self, Feedback, Signal, Transition};
use crate::reputation::tally::Tally;
use crate::routing::{ObjectKey, RouteCompiler, RouteResult};

use super::SimError;

/// Keep at most this many conclusive replies per report: one is enough to block.
const CONCLUSIVE_PER_REPORT: usize = 4;

pub struct Watch {
    pub fleet: Fleet,
    compiler: RouteCompiler,
    /// Feedback waiting to be reported, per IP and provider.
    pending: BTreeMap<String, BTreeMap<String, Feedback>>,
    next_wakeup: Option<i64>,
    pub transitions: Vec<Transition>,
    /// Whether the route table changed since the last [`Watch::take_route_change`].
    routes_changed: bool,
}

impl Watch {
    pub fn new(mut fleet: Fleet, start: i64) -> Result<Self, SimError> {
        let now = at(start);
        let transitions = fleet.advance(now)?;
        let compiler = RouteCompiler::new(&fleet.pools, &fleet.routes, now);
        let mut watch = Watch {
            fleet,
            compiler,
            pending: BTreeMap::new(),
            next_wakeup: None,
            transitions,
            routes_changed: true,
        };
        watch.next_wakeup = watch.wakeup(now);
        Ok(watch)
    }

    pub fn routes(&self) -> Vec<&RouteResult> {
        self.compiler.results().collect()
    }

    /// Advances the engine's timers when one fell due by `now`.
    pub fn tick(&mut self, now: i64) -> Result<(), SimError> {
        if self.next_wakeup.is_some_and(|due| due <= now) {
            let transitions = self.fleet.advance(at(now))?;
            self.absorb(transitions, now)?;
        }
        Ok(())
    }

    /// Counts `count` attempts that got the same reply (classified as `verdict`),
    /// through the agent's [`Tally`]. A conclusive reply is reported at once, at
    /// `first_reply_at`; the rest waits for [`Watch::report`].
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        ip: &str,
        verdict: &Verdict,
        reply: &str,
        count: u64,
        first_reply_at: i64,
    ) -> Result<(), SimError> {
        if count == 0 {
            return Ok(());
        }
        let mut tally = Tally::default();
        tally.add(verdict, reply, at(first_reply_at));
        let conclusive = tally.has_conclusive();
        for unit in tally.drain() {
            let times = i64::try_from(count).unwrap_or(i64::MAX);
            if conclusive {
                // The agent reports an IP ban at once, as one attempt; the others follow.
                self.observe(ip, unit.clone(), first_reply_at)?;
                let rest = times - 1;
                if rest > 0 {
                    let mut plain = unit;
                    plain.conclusive.clear();
                    self.add_pending(ip, &plain, rest);
                }
            } else {
                self.add_pending(ip, &unit, times);
            }
        }
        Ok(())
    }

    fn add_pending(&mut self, ip: &str, unit: &Feedback, times: i64) {
        let entry = self
            .pending
            .entry(ip.to_string())
            .or_default()
            .entry(unit.provider.clone())
            .or_insert_with(|| Feedback {
                provider: unit.provider.clone(),
                ..Feedback::default()
            });
        entry.attempts += unit.attempts * times;
        entry.delivered += unit.delivered * times;
        entry.ip_blocklisted += unit.ip_blocklisted * times;
        entry.ip_rate_limited += unit.ip_rate_limited * times;
        for reply in &unit.conclusive {
            if entry.conclusive.len() < CONCLUSIVE_PER_REPORT {
                entry.conclusive.push(reply.clone());
            }
        }
    }

    /// Every agent reports what it counted since its last report.
    pub fn report(&mut self, now: i64) -> Result<(), SimError> {
        let pending = std::mem::take(&mut self.pending);
        for (ip, per_provider) in pending {
            for (_, feedback) in per_provider {
                self.observe(&ip, feedback, now)?;
            }
        }
        Ok(())
    }

    /// One DNS block list answer about `ip`.
    pub fn dnsbl(&mut self, ip: &str, zone: &str, listed: bool, now: i64) -> Result<(), SimError> {
        let result = DnsblResult {
            zone: zone.to_string(),
            listed,
            codes: if listed {
                vec!["127.0.0.2".to_string()]
            } else {
                Vec::new()
            },
            reason: listed.then(|| format!("https://www.spamhaus.org/query/ip/{ip}")),
            error: None,
            checked_at: Time(at(now)),
        };
        let transitions = self.fleet.observe(ip, Signal::Dnsbl(result), at(now))?;
        self.absorb(transitions, now)
    }

    fn observe(&mut self, ip: &str, feedback: Feedback, now: i64) -> Result<(), SimError> {
        let transitions = self
            .fleet
            .observe(ip, Signal::Feedback(feedback), at(now))?;
        self.absorb(transitions, now)
    }

    /// Records transitions and hands the IPs they moved to the route compiler.
    fn absorb(&mut self, transitions: Vec<Transition>, now: i64) -> Result<(), SimError> {
        if transitions.is_empty() {
            return Ok(());
        }
        let mut moved: Vec<&str> = transitions.iter().map(|t| t.ip.as_str()).collect();
        moved.sort_unstable();
        moved.dedup();
        for ip in moved {
            let owner = self.fleet.pools.iter().find_map(|pool| {
                let status = pool.status.as_ref()?.ips.iter().find(|s| s.address == ip)?;
                let key = ObjectKey::new(
                    pool.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".to_string()),
                    pool.metadata.name.clone().unwrap_or_default(),
                );
                Some((key, status))
            });
            if let Some((key, status)) = owner {
                if !self
                    .compiler
                    .set_ip_status(&key, status, at(now))?
                    .is_empty()
                {
                    self.routes_changed = true;
                }
            }
        }
        self.transitions.extend(transitions);
        self.next_wakeup = self.wakeup(at(now));
        Ok(())
    }

    /// Whether the route table changed since the last call.
    pub fn take_route_change(&mut self) -> bool {
        std::mem::take(&mut self.routes_changed)
    }

    /// Whether the incrementally kept table equals a full compile of the fleet.
    pub fn routes_consistent(&self, now: i64) -> bool {
        let full = self.fleet.compile(at(now));
        let incremental: Vec<&RouteResult> = self.compiler.results().collect();
        full.routes.len() == incremental.len()
            && full.routes.iter().zip(incremental).all(|(a, b)| {
                (&a.key, a.mode, &a.targets, &a.relay) == (&b.key, b.mode, &b.targets, &b.relay)
            })
    }

    fn wakeup(&self, now: Timestamp) -> Option<i64> {
        self.fleet
            .pools
            .iter()
            .filter_map(|pool| engine::next_wakeup(&pool.spec, pool.status.as_ref()?, now))
            .map(|t| t.as_second())
            .min()
    }
}

pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReputationState;
    use crate::manifests::Manifests;

    fn watch() -> Watch {
        let scenario = crate::sim::scenario("seed-2021-11").unwrap();
        let setup = scenario
            .runs
            .iter()
            .find(|r| r.name == "mailfleet")
            .unwrap();
        let manifests = Manifests {
            pools: setup.pools.clone(),
            routes: setup.routes.clone(),
            skipped: Vec::new(),
        };
        Watch::new(Fleet::new(manifests, None).unwrap(), 1_636_067_400).unwrap()
    }

    #[test]
    fn a_ban_is_reported_at_once_and_the_rest_of_the_batch_later() {
        let mut watch = watch();
        assert!(
            watch.take_route_change(),
            "the first table counts as a change"
        );
        let reply = "550 5.7.606 Access denied, banned sending IP [203.0.113.13]";
        let verdict = watch.fleet.classifier.classify_text(
            reply,
            Some("acclaim.jp"),
            Some("acclaim-jp.mail.protection.outlook.com"),
        );
        watch
            .record("203.0.113.13", &verdict, reply, 5, 1_636_067_410)
            .unwrap();
        let blocked = &watch.transitions[0];
        assert_eq!(
            (blocked.provider.as_str(), blocked.to),
            ("microsoft", ReputationState::Blocked)
        );
        assert_eq!(blocked.at.as_second(), 1_636_067_410);
        assert!(watch.take_route_change(), "the Microsoft route lost the IP");
        let microsoft = watch
            .routes()
            .into_iter()
            .find(|r| r.provider == "microsoft")
            .unwrap();
        assert!(microsoft.targets.iter().all(|t| t.ip != "203.0.113.13"));
        let waiting = &watch.pending["203.0.113.13"]["microsoft"];
        assert_eq!((waiting.attempts, waiting.ip_blocklisted), (4, 4));
        assert!(
            waiting.conclusive.is_empty(),
            "the ban was reported already"
        );
        watch.report(1_636_067_460).unwrap();
        assert!(watch.pending.is_empty());
        assert!(watch.routes_consistent(1_636_067_460));
    }

    #[test]
    fn delivered_counts_wait_for_the_report() {
        let mut watch = watch();
        let verdict = watch
            .fleet
            .classifier
            .classify_text("250 2.0.0 OK", Some("gmail.com"), None);
        watch
            .record("203.0.113.10", &verdict, "250 2.0.0 OK", 120, 1_636_067_410)
            .unwrap();
        watch
            .record("203.0.113.10", &verdict, "250 2.0.0 OK", 30, 1_636_067_420)
            .unwrap();
        let waiting = &watch.pending["203.0.113.10"]["google"];
        assert_eq!((waiting.attempts, waiting.delivered), (150, 150));
        assert!(watch.transitions.is_empty());
        watch.report(1_636_067_460).unwrap();
        let status = watch.fleet.pools[0].status.as_ref().unwrap();
        let pair = status
            .ips
            .iter()
            .find(|i| i.address == "203.0.113.10")
            .unwrap()
            .pair("google")
            .unwrap();
        assert_eq!(pair.window.iter().map(|b| b.delivered).sum::<i64>(), 150);
    }
}
