//! The engine of standalone mode, without I/O: the fleet, the feedback ledger,
//! what it compiles to, the events of each change and the counters. Every
//! method takes `now`; the driver (`standalone::run`) reads the clock, the
//! files and the network and calls in here.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::{json, Value};

use crate::agent::report::{ConfigHint, FeedbackReport, FeedbackResponse, FEEDBACK_API_VERSION};
use crate::api::{DomainRouteStatus, SenderPoolStatus};
use crate::fleet::{Fleet, FleetError};
use crate::manifests::{ManifestError, Manifests};
use crate::metrics::catalogue::{
    ip_state_rows, FEEDBACK_REPORTS, FEEDBACK_RESULTS, IP_STATE, MANIFESTS_VALID, MANIFEST_RELOADS,
    MANIFEST_RELOAD_ERRORS, REPUTATION_TRANSITIONS, ROUTE_TARGETS,
};
use crate::metrics::Families;
use crate::probe::dnsbl::{DnsblHealth, DNSBL_HEALTHY};
use crate::reputation::classifier::ClassifierConfig;
use crate::reputation::engine::{Signal, Transition};
use crate::routing::haproxy::{self, HaproxyOptions};
use crate::routing::postfix::{ip_slug, senders_of, PostfixOptions, Sender};
use crate::routing::sender_config::{sender_config_with, SenderConfig};
use crate::routing::sending::SendingSettings;
use crate::routing::{self, model::mode_name, RouteTable};
use crate::serve::ledger::{Check, FeedbackLedger};
use crate::serve::FeedbackRefusal;

use super::state::{self, SavedState};

/// One sender's rendered configuration and where it goes (`senders/<slug>/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderOutput {
    pub sender: Sender,
    pub slug: String,
    pub config: SenderConfig,
}

/// Everything standalone mode writes, as it should be now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// `state.json`.
    pub state: String,
    /// `routes.json`.
    pub routes: String,
    /// Keyed by the IP as the pool spec writes it.
    pub senders: BTreeMap<String, SenderOutput>,
    /// The hand-off's `haproxy.cfg`, when standalone runs HAProxy.
    pub haproxy: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Feedback reports by (pool `ns/name`, result: counted, duplicate,
    /// refused); the pool is empty for a report naming no pool of the fleet,
    /// so a label never takes a value only the network chose.
    reports: BTreeMap<(String, &'static str), u64>,
    /// Reputation transitions by (provider, from, to).
    transitions: BTreeMap<(String, String, String), u64>,
    manifest_reloads: u64,
    /// Manifest reloads refused, by error category.
    reload_errors: BTreeMap<&'static str, u64>,
}

pub struct Core {
    fleet: Fleet,
    ledger: FeedbackLedger,
    rules: Option<ClassifierConfig>,
    postfix: PostfixOptions,
    /// Set when the hand-off between senders goes through HAProxy.
    haproxy: Option<HaproxyOptions>,
    /// The last `haproxy.cfg` rendered (kept when a render fails).
    haproxy_config: Option<String>,
    table: RouteTable,
    senders: BTreeMap<String, SenderOutput>,
    /// Senders whose configuration cannot be rendered, with why.
    render_errors: Vec<String>,
    /// The refused manifests, while the last good ones stay in force.
    manifest_error: Option<String>,
    /// Event lines not yet written to events.jsonl.
    events: Vec<Value>,
    counters: Counters,
}

impl Core {
    /// Starts from `manifests` with the state saved by an earlier run, if any.
    /// Returns the core and the saved objects the manifests no longer hold.
    pub fn start(
        mut manifests: Manifests,
        saved: Option<SavedState>,
        rules: Option<ClassifierConfig>,
        postfix: PostfixOptions,
        now: Timestamp,
    ) -> Result<(Core, Vec<String>), FleetError> {
        let gone = saved
            .as_ref()
            .map(|s| state::merge_into(&mut manifests, s))
            .unwrap_or_default();
        let fleet = Fleet::new(manifests, rules.clone())?;
        let mut core = Core {
            table: RouteTable {
                generated_at: now,
                routes: Vec::new(),
                problems: Vec::new(),
            },
            fleet,
            ledger: saved.map(|s| s.ledger).unwrap_or_default(),
            rules,
            postfix,
            haproxy: None,
            haproxy_config: None,
            senders: BTreeMap::new(),
            render_errors: Vec::new(),
            manifest_error: None,
            events: Vec::new(),
            counters: Counters::default(),
        };
        core.tick(now)?;
        Ok((core, gone))
    }

    /// Hands routes off through HAProxy: each route gets its own port in
    /// the senders' Postfix, and [`Outputs::haproxy`] its listener.
    pub fn set_haproxy(&mut self, options: HaproxyOptions, now: Timestamp) {
        self.haproxy = Some(options);
        self.refresh(now);
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// Records that the manifests were refused while the running ones (or,
    /// at start, the last good set) stay in force: `/healthz` and the
    /// metrics say so until a reload succeeds.
    pub fn refuse_manifests(&mut self, category: &'static str, message: String) {
        *self.counters.reload_errors.entry(category).or_default() += 1;
        self.manifest_error = Some(message);
    }

    /// Takes new manifests (keeping every pool's and route's status) or,
    /// when they are refused, keeps the running ones and remembers why.
    pub fn reload(&mut self, loaded: Result<Manifests, ManifestError>, now: Timestamp) {
        self.counters.manifest_reloads += 1;
        let refused = |core: &mut Core, category: &'static str, message: String| {
            *core.counters.reload_errors.entry(category).or_default() += 1;
            core.manifest_error = Some(message);
        };
        let mut manifests = match loaded {
            Ok(m) => m,
            Err(err) => return refused(self, err.category(), err.to_string()),
        };
        state::carry_over(&mut manifests, &self.fleet);
        let fleet = match Fleet::new(manifests, self.rules.clone()) {
            Ok(fleet) => fleet,
            Err(err) => return refused(self, err.category(), err.to_string()),
        };
        let previous = std::mem::replace(&mut self.fleet, fleet);
        if let Err(err) = self.tick(now) {
            self.fleet = previous;
            return refused(self, err.category(), err.to_string());
        }
        self.manifest_error = None;
    }

    /// Advances every pool to `now` and recompiles.
    pub fn tick(&mut self, now: Timestamp) -> Result<(), FleetError> {
        let transitions = self.fleet.advance(now)?;
        self.record_transitions(&transitions);
        self.ledger.expire(now);
        self.refresh(now);
        Ok(())
    }

    /// Replays reports that were stored but may not be in the saved state
    /// (the write-ahead log): the ledger skips those the state counted.
    /// Returns how many were counted now.
    pub fn replay<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a FeedbackReport, Timestamp)>,
    ) -> usize {
        let mut counted = 0;
        for (report, at) in entries {
            if matches!(self.receive(report, at), Ok(answer) if !answer.duplicate) {
                counted += 1;
            }
        }
        counted
    }

    fn count_report(&mut self, report: &FeedbackReport, result: &'static str) {
        let pool = format!("{}/{}", report.pool.namespace, report.pool.name);
        let known = self.pool_keys().any(|key| key == pool);
        let label = if known { pool } else { String::new() };
        *self.counters.reports.entry((label, result)).or_default() += 1;
    }

    /// `ns/name` of every pool of the fleet.
    fn pool_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.fleet.pools.iter().map(|pool| {
            format!(
                "{}/{}",
                pool.metadata.namespace.as_deref().unwrap_or("default"),
                pool.metadata.name.as_deref().unwrap_or("")
            )
        })
    }

    /// What [`receive`](Self::receive) would do, before the report is stored:
    /// the refusal, the answer to a report counted before (nothing to
    /// store), or `None` for a new report, which must be stored and then
    /// received.
    pub fn check(
        &mut self,
        report: &FeedbackReport,
        now: Timestamp,
    ) -> Result<Option<FeedbackResponse>, FeedbackRefusal> {
        match self.ledger.check(&self.fleet, report) {
            Ok(Check::New) => Ok(None),
            Ok(Check::Duplicate) => self.receive(report, now).map(Some),
            Err(err) => {
                self.count_report(report, "refused");
                Err(err.refusal())
            }
        }
    }

    /// Counts one report (already validated and authenticated) and answers
    /// with the reporting IP's sender configuration.
    pub fn receive(
        &mut self,
        report: &FeedbackReport,
        now: Timestamp,
    ) -> Result<FeedbackResponse, FeedbackRefusal> {
        let applied = match self.ledger.apply(&mut self.fleet, report, now) {
            Ok(applied) => applied,
            Err(err) => {
                self.count_report(report, "refused");
                return Err(err.refusal());
            }
        };
        let result = if applied.duplicate {
            "duplicate"
        } else {
            "counted"
        };
        self.count_report(report, result);
        if let Some(change) = &applied.ip_bound {
            self.events.push(json!({
                "at": now.to_string(),
                "event": "ip_bound",
                "pool": applied.pool,
                "ip": change.ip,
                "status": match change.bound {
                    Some(true) => "True",
                    Some(false) => "False",
                    None => "removed",
                },
                "message": change.message,
            }));
        }
        if !applied.transitions.is_empty() || applied.ip_bound.is_some() {
            self.record_transitions(&applied.transitions);
            // At once, not at the next tick: the reporting agent gets the
            // rewritten configuration in this very answer.
            self.refresh(now);
        }
        let config = self.senders.get(&applied.ip).map(|s| ConfigHint {
            version: s.config.version.clone(),
            files: (report.config_version.as_deref() != Some(s.config.version.as_str()))
                .then(|| s.config.files.clone()),
        });
        Ok(FeedbackResponse {
            api_version: FEEDBACK_API_VERSION.to_string(),
            sequence: report.sequence,
            duplicate: applied.duplicate,
            config,
        })
    }

    /// Feeds the signals of a probe round and sets each pool's `DnsblHealthy`
    /// condition (removed when the pool probes no zone). Signals about IPs no
    /// longer in the fleet are returned as problems.
    pub fn apply_probes(
        &mut self,
        signals: Vec<(String, Signal)>,
        dnsbl_health: &[(String, Option<DnsblHealth>)],
        now: Timestamp,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut moved = false;
        for (ip, signal) in signals {
            match self.fleet.observe(&ip, signal, now) {
                Ok(transitions) => {
                    moved |= !transitions.is_empty();
                    self.record_transitions(&transitions);
                }
                Err(err) => problems.push(err.to_string()),
            }
        }
        for (name, health) in dnsbl_health {
            let Some(pool) = self.fleet.pools.iter_mut().find(|p| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or("")
                ) == *name
            }) else {
                continue;
            };
            let generation = pool.metadata.generation;
            let status = pool.status.get_or_insert_with(SenderPoolStatus::default);
            match health {
                Some(health) => health.set_on(&mut status.conditions, generation, now),
                None => status.conditions.retain(|c| c.type_ != DNSBL_HEALTHY),
            }
        }
        if moved {
            self.refresh(now);
        }
        problems
    }

    /// Records a round of reverse DNS checks as the IPs'
    /// `ReverseDnsConfirmed` conditions (the operator's own,
    /// [`crate::probe::reverse_dns_checks`]).
    pub fn apply_reverse_dns(
        &mut self,
        rounds: &[crate::probe::reverse_dns_checks::PoolVerdicts],
        now: Timestamp,
    ) {
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        for round in rounds {
            let Some(pool) = self.fleet.pools.iter_mut().find(|p| {
                p.metadata.namespace.as_deref().unwrap_or("default") == round.namespace
                    && p.metadata.name.as_deref() == Some(round.name.as_str())
            }) else {
                continue;
            };
            let generation = pool.metadata.generation;
            let status = pool.status.get_or_insert_with(SenderPoolStatus::default);
            crate::probe::reverse_dns_checks::set_conditions(status, &round.ips, generation, now);
        }
    }

    /// Recompiles the routes, projects them on the route status (an event per
    /// route whose targets changed) and renders every sender's configuration.
    fn refresh(&mut self, now: Timestamp) {
        // Status times are whole seconds, like Kubernetes `Time`.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let table = self.fleet.compile(now);
        for route in &mut self.fleet.routes {
            let namespace = route.metadata.namespace.as_deref().unwrap_or("default");
            let name = route.metadata.name.as_deref().unwrap_or("");
            let Some(result) = table.route(namespace, name) else {
                continue;
            };
            let previous = route.status.take();
            let mut status = routing::status_for(result, previous.as_ref(), now);
            routing::learned::forget_expired(&mut status, now);
            if route_changed(previous.as_ref(), &status) {
                self.events.push(json!({
                    "at": now.to_string(),
                    "event": "route",
                    "route": format!("{namespace}/{name}"),
                    "provider": result.provider,
                    "from": previous.as_ref().and_then(|p| p.mode).map(mode_name),
                    "to": mode_name(result.mode),
                    "targets": result.targets.iter().map(|t| json!({"pool": t.pool, "ip": t.ip, "weight": t.weight})).collect::<Vec<_>>(),
                    "excluded": result.excluded.iter().map(|e| json!({"pool": e.pool, "ip": e.ip, "state": e.state.as_str()})).collect::<Vec<_>>(),
                    "relay": status.relay,
                }));
            }
            route.status = Some(status);
        }
        let known_domains = self.fleet.known_domains();
        let mut senders = BTreeMap::new();
        let mut errors = Vec::new();
        let mut postfix = std::borrow::Cow::Borrowed(&self.postfix);
        if let Some(options) = &self.haproxy {
            let rendered = haproxy::handoff_ports(&table, options.first_port)
                .map(|ports| postfix.to_mut().route_service_ports = ports)
                .and_then(|()| haproxy::render(&table, options));
            match rendered {
                Ok(config) => self.haproxy_config = Some(config),
                Err(err) => errors.push(format!("HAProxy hand-off not rendered: {err}")),
            }
        }
        for sender in senders_of(&self.fleet.pools) {
            let Ok(address) = sender.ip.parse() else {
                errors.push(format!(
                    "pool {}/{}: {} is not an IP address",
                    sender.namespace, sender.pool, sender.ip
                ));
                continue;
            };
            let settings = SendingSettings::find(&self.fleet.pools, &sender);
            match sender_config_with(&table, &sender, &known_domains, &postfix, &settings) {
                Ok(config) => {
                    senders.insert(
                        sender.ip.clone(),
                        SenderOutput {
                            slug: ip_slug(address),
                            sender,
                            config,
                        },
                    );
                }
                Err(err) => errors.push(err.to_string()),
            }
        }
        self.senders = senders;
        self.render_errors = errors;
        self.table = table;
    }

    fn record_transitions(&mut self, transitions: &[Transition]) {
        for t in transitions {
            let from = t.from.map(|s| s.as_str()).unwrap_or("none");
            *self
                .counters
                .transitions
                .entry((
                    t.provider.clone(),
                    from.to_string(),
                    t.to.as_str().to_string(),
                ))
                .or_default() += 1;
            self.events.push(json!({
                "at": t.at.to_string(),
                "event": "transition",
                "pool": self.pool_of(&t.ip),
                "ip": t.ip,
                "provider": t.provider,
                "from": t.from.map(|s| s.as_str()),
                "to": t.to.as_str(),
                "reason": t.reason.as_str(),
                "evidence": t.evidence,
                "allowance_percent": t.allowance_percent,
            }));
        }
    }

    fn pool_of(&self, ip: &str) -> Option<String> {
        self.fleet
            .pools
            .iter()
            .find(|p| p.spec.ips.iter().any(|i| i.address == ip))
            .map(|p| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or("")
                )
            })
    }

    /// Records, as an event, a state file that could not be read and was
    /// moved aside, with the Blocked pairs it held (`pool ip provider`).
    pub fn note_discarded_state(
        &mut self,
        file: &std::path::Path,
        moved_to: &std::path::Path,
        blocked: &[String],
    ) {
        self.events.push(json!({
            "at": self.table.generated_at.to_string(),
            "event": "state_discarded",
            "file": file.display().to_string(),
            "moved_to": moved_to.display().to_string(),
            "blocked_pairs": blocked,
        }));
    }

    /// Event lines (JSON, one per line) since the last call.
    pub fn take_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// The files as they should be now.
    pub fn outputs(&self) -> Outputs {
        Outputs {
            state: state::render(&self.fleet, &self.ledger),
            routes: routing::json::render(&self.table),
            senders: self.senders.clone(),
            haproxy: self.haproxy_config.clone(),
        }
    }

    /// Why `/healthz` fails: refused manifests, senders without configuration.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(err) = &self.manifest_error {
            out.push(format!(
                "manifests refused, the last good ones stay in force: {err}"
            ));
        }
        out.extend(
            self.render_errors
                .iter()
                .map(|e| format!("sender configuration not rendered: {e}")),
        );
        out
    }

    /// The engine's state and counters as a scrape writes them.
    pub fn metric_snapshot(&self) -> CoreMetrics {
        let c = &self.counters;
        // Every pool of the fleet shows, at 0 before its first report.
        let mut reports = c.reports.clone();
        for pool in self.pool_keys() {
            for result in FEEDBACK_RESULTS {
                reports.entry((pool.clone(), result)).or_default();
            }
        }
        let mut ip_states = Vec::new();
        for (pool, name) in self.fleet.pools.iter().zip(self.pool_keys()) {
            for ip in pool.status.iter().flat_map(|s| s.ips.iter()) {
                for pair in &ip.reputation {
                    ip_states.push((
                        name.clone(),
                        ip.address.clone(),
                        pair.provider.clone(),
                        pair.state.as_str(),
                    ));
                }
            }
        }
        CoreMetrics {
            reports,
            ip_states,
            routes: self
                .table
                .routes
                .iter()
                .map(|route| {
                    (
                        format!("{}/{}", route.key.namespace, route.key.name),
                        mode_name(route.mode),
                        route.targets.len(),
                    )
                })
                .collect(),
            transitions: c.transitions.clone(),
            manifest_reloads: c.manifest_reloads,
            reload_errors: c.reload_errors.clone(),
            manifests_valid: self.manifest_error.is_none(),
        }
    }

    /// The engine's families alone, as Prometheus text.
    pub fn metrics(&self) -> String {
        crate::metrics::render(&self.metric_snapshot())
    }
}

/// A copy of the engine's state and counters for one scrape.
#[derive(Clone, Debug, Default)]
pub struct CoreMetrics {
    reports: BTreeMap<(String, &'static str), u64>,
    /// (pool, ip, provider, current state word).
    ip_states: Vec<(String, String, String, &'static str)>,
    /// (route `ns/name`, mode word, targets).
    routes: Vec<(String, &'static str, usize)>,
    transitions: BTreeMap<(String, String, String), u64>,
    manifest_reloads: u64,
    reload_errors: BTreeMap<&'static str, u64>,
    manifests_valid: bool,
}

impl Families for CoreMetrics {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        FEEDBACK_REPORTS.write(
            out,
            self.reports
                .iter()
                .map(|((pool, result), n)| ([pool.as_str(), *result], *n)),
        )?;
        IP_STATE.write(
            out,
            self.ip_states
                .iter()
                .flat_map(|(pool, ip, provider, state)| ip_state_rows(pool, ip, provider, state)),
        )?;
        ROUTE_TARGETS.write(
            out,
            self.routes
                .iter()
                .map(|(route, mode, targets)| ([route.as_str(), *mode], *targets)),
        )?;
        REPUTATION_TRANSITIONS.write(
            out,
            self.transitions.iter().map(|((provider, from, to), n)| {
                ([provider.as_str(), from.as_str(), to.as_str()], *n)
            }),
        )?;
        MANIFEST_RELOADS.write(out, [([], self.manifest_reloads)])?;
        MANIFEST_RELOAD_ERRORS.write(
            out,
            self.reload_errors
                .iter()
                .map(|(category, n)| ([*category], *n)),
        )?;
        MANIFESTS_VALID.write(out, [([], self.manifests_valid)])
    }
}

fn route_changed(previous: Option<&DomainRouteStatus>, now: &DomainRouteStatus) -> bool {
    previous.is_none_or(|p| p.mode != now.mode || p.targets != now.targets || p.relay != now.relay)
}

#[cfg(test)]
mod tests;
