//! The fleet simulator: a deterministic discrete-event simulation of sender
//! fleets, driving the real reputation engine ([`crate::fleet::Fleet`]) and the
//! real route compiler ([`crate::routing::RouteCompiler`]) on a simulated clock.
//!
//! Mail is simulated in cohorts per time slice (one minute), per sender and per
//! provider, not message by message: the engine, the compiler and the
//! classifier are called per slice and per reply class, so the 14 days and 32.5
//! million messages of the incident take seconds. Pure: no I/O, no wall clock,
//! randomness only from the seed. docs/SIMULATOR.md describes the model.
//!
//! - [`scenario`] builds a named scenario, [`run_scenario`] runs all its runs;
//! - [`run`] does both;
//! - [`svg::chart`] draws delivered and failed mail per hour and per IP.

pub mod filter;
pub mod provider;
pub mod queue;
pub mod recipients;
pub mod report;
pub mod rng;
pub mod routes;
mod scenarios;
pub mod svg;
pub mod traffic;
mod watch;
mod world;

use crate::api::{DomainRoute, SenderPool};
use crate::fleet::FleetError;
use crate::routing::CompileError;

pub use provider::ProviderModel;
pub use recipients::DestinationGroup;
pub use report::{
    Calibration, HourlyVolume, ProviderEvent, RouteChange, RunDetail, RunReport, ScenarioReport,
};
pub use scenarios::{scenario, SCENARIOS};
pub use traffic::TrafficShape;

/// `2021-11-05T08:10:00+09:00`: a simulated instant (Unix seconds) in the
/// senders' local time, as reports for people write it.
pub fn local_time(seconds: i64, utc_offset_seconds: i64) -> String {
    let offset = i32::try_from(utc_offset_seconds)
        .ok()
        .and_then(|s| jiff::tz::Offset::from_seconds(s).ok())
        .unwrap_or(jiff::tz::Offset::UTC);
    watch::at(seconds).display_with_offset(offset).to_string()
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown scenario `{name}`; pick one of: {known}")]
    UnknownScenario { name: String, known: String },
    #[error("--scale {value} is out of range: use a number above 0 and at most 10 (1 is the scenario's full volume)")]
    InvalidScale { value: f64 },
    #[error("the status filter table, line {line}: {problem}")]
    StatusFilter { line: usize, problem: String },
    #[error("scenario {scenario}: {problem}")]
    Setup { scenario: String, problem: String },
    #[error("the simulated fleet: {0}")]
    Fleet(#[from] FleetError),
    #[error("the simulated route compiler: {0}")]
    Compile(#[from] CompileError),
}

/// How to run a scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Seeds every random draw: the same seed gives the same report, byte for byte.
    pub seed: u64,
    /// Volume factor: 1 is the scenario's full volume; smaller values run the
    /// same timeline with less mail (the providers' volume thresholds scale along).
    pub scale: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            scale: 1.0,
        }
    }
}

impl Options {
    pub fn check(&self) -> Result<(), SimError> {
        if self.scale > 0.0 && self.scale <= 10.0 {
            Ok(())
        } else {
            Err(SimError::InvalidScale { value: self.scale })
        }
    }
}

/// Whether a run has mailfleet watching and routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Mail spread over the senders at random, nobody watching the replies, no
    /// status filter: a provider's block reply bounces the message.
    Baseline,
    /// The agents report every reply to the reputation engine, the senders follow
    /// the compiled route table and defer block replies (status filter).
    Mailfleet,
}

/// Something that happens to the fleet from outside, at a set time.
#[derive(Clone, Debug, PartialEq)]
pub enum WorldEvent {
    /// A provider puts an IP on its block list.
    ListIp {
        at: i64,
        ip: String,
        provider: String,
    },
    /// A DNS block list starts (`listed`) or stops listing an IP.
    Dnsbl {
        at: i64,
        ip: String,
        zone: String,
        listed: bool,
    },
}

impl WorldEvent {
    pub fn at(&self) -> i64 {
        match self {
            WorldEvent::ListIp { at, .. } | WorldEvent::Dnsbl { at, .. } => *at,
        }
    }
}

/// What people do in a baseline run (INCIDENT.md's timeline).
#[derive(Clone, Debug, PartialEq)]
pub enum HumanAction {
    /// Someone notices the problem (a customer asks).
    Notice { at: i64 },
    /// `share` of `provider`-bound mail leaving through `ip` is moved, step by
    /// step from `from` to `until`, to another delivery system.
    MoveAway {
        from: i64,
        until: i64,
        ip: String,
        provider: String,
        share: f64,
    },
}

/// The (IP, provider) pairs a scenario is about, and when their trouble begins
/// (`None`: at the first reputation refusal the providers give them).
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub at: Option<i64>,
    pub pairs: Vec<(String, String)>,
}

/// One run of a scenario: a fleet and how it is operated.
#[derive(Clone, Debug)]
pub struct RunSetup {
    pub name: String,
    pub description: String,
    pub mode: Mode,
    pub pools: Vec<SenderPool>,
    pub routes: Vec<DomainRoute>,
    /// Baseline runs: the sender pods per IP that submissions spread over.
    pub pods: Vec<(String, u32)>,
    /// Baseline runs: what people do.
    pub people: Vec<HumanAction>,
    /// Mailfleet runs: the user's own classifier rules (YAML `rules:`), put in
    /// front of the builtin ones; `None` for the builtin rules alone.
    pub rules: Option<String>,
}

/// A complete scenario: traffic, recipients, providers, events and runs.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub title: String,
    /// Unix seconds of the first slice.
    pub start: i64,
    /// How long applications submit mail.
    pub submit_seconds: i64,
    /// How long queues may still drain afterwards (the run stops earlier once
    /// every queue is empty).
    pub drain_seconds: i64,
    pub slice_seconds: i64,
    /// Messages submitted at scale 1.
    pub volume: u64,
    pub traffic: TrafficShape,
    pub destinations: Vec<DestinationGroup>,
    /// Providers that behave other than [`ProviderModel::standard`].
    pub providers: Vec<ProviderModel>,
    pub events: Vec<WorldEvent>,
    pub incident: Option<Incident>,
    /// IPs that are new and warm up from the given time (providers hold them to
    /// their new-IP limits).
    pub new_ips: Vec<(String, i64)>,
    pub runs: Vec<RunSetup>,
    /// What the baseline is calibrated against.
    pub calibration: Option<CalibrationTarget>,
}

/// A published figure the baseline run must reproduce.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationTarget {
    pub reported_messages: u64,
    pub reported_failed: u64,
    /// Percent of all mail bound for Microsoft that the calibration implies.
    pub microsoft_share_percent: f64,
    /// Share of the Microsoft-bound mail going to Microsoft 365 tenant domains.
    pub tenant_share_of_microsoft: f64,
}

/// Builds the named scenario and runs it.
pub fn run(name: &str, options: &Options) -> Result<ScenarioReport, SimError> {
    options.check()?;
    let scenario = scenario(name)?;
    run_scenario(&scenario, options)
}

/// Runs every run of `scenario`, one after the other, each from the same seed.
pub fn run_scenario(scenario: &Scenario, options: &Options) -> Result<ScenarioReport, SimError> {
    options.check()?;
    let mut runs = Vec::with_capacity(scenario.runs.len());
    for setup in &scenario.runs {
        runs.push(world::simulate(scenario, setup, options)?);
    }
    Ok(ScenarioReport::new(scenario, options, runs))
}
