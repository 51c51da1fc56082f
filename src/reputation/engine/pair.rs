//! The state machine of one (source IP, provider) pair.
//!
//! Everything here works on one `ProviderReputation` and the rules of its pool;
//! the pool-level code decides which pairs a signal or a tick reaches.

use std::collections::BTreeSet;
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::clock::{add_seconds, seconds_between};
use super::signal::{ConclusiveReply, Feedback};
use super::transition::{Reason, Transition};
use super::warmup::{schedule_end, warm_allowance, warmup_day, WarmupDay};
use super::window::{
    self, basis_points_of, basis_points_text, percent_of, share_at_least,
    share_at_least_basis_points, Counts,
};
use crate::api::{
    ComplaintRate, DnsblClaim, ManualOverride, ProviderReputation, ReputationSettings,
    ReputationState,
};
use crate::reputation::evidence::{claim_of, names_ip};

use ReputationState::*;

/// Guards the timer loop of [`PairRules::settle`] against a corrupted status;
/// a real pair needs at most one move per recovery step plus a few.
const MAX_MOVES_PER_SETTLE: usize = 64;

/// Distinct receiving domains whose replies must quote a block list about this
/// IP, within the feedback window, before the quote alone blocks the pair.
pub const DNSBL_CLAIM_RECEIVERS: usize = 3;
/// Receivers' claims kept per pair (the newest).
const MAX_DNSBL_CLAIMS: usize = 16;
/// Characters of a claim's reply kept as evidence.
const CLAIM_REPLY_CHARS: usize = 300;

/// Collects the transitions of one engine call.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub transitions: Vec<Transition>,
    /// Pairs created during this call: their first transition reports `from: None`.
    new_pairs: BTreeSet<(String, String)>,
}

impl Recorder {
    pub fn mark_new(&mut self, ip: &str, provider: &str) {
        self.new_pairs
            .insert((ip.to_string(), provider.to_string()));
    }

    fn previous_state(
        &mut self,
        ip: &str,
        provider: &str,
        state: ReputationState,
    ) -> Option<ReputationState> {
        if self
            .new_pairs
            .remove(&(ip.to_string(), provider.to_string()))
        {
            None
        } else {
            Some(state)
        }
    }
}

/// A pair that has no record yet: Healthy, full allowance. [`PairRules::settle`]
/// moves it on (to Warming, for instance) in the same call.
pub(crate) fn new_pair(provider: &str, now: Timestamp) -> ProviderReputation {
    debug_assert_eq!(Reason::FirstSeen.as_str(), ProviderReputation::FIRST_SEEN);
    ProviderReputation::first_seen(provider, Time(now))
}

/// The rules one pair runs on, resolved from the pool spec for its IP and provider.
pub(crate) struct PairRules<'a> {
    pub settings: &'a ReputationSettings,
    /// The IP as written in the spec.
    pub ip: &'a str,
    pub ip_addr: IpAddr,
    pub provider: &'a str,
    /// Normal messages per hour of this IP towards this provider.
    pub rate_limit: i64,
    /// Start and daily caps of the IP's warm-up, if it has a `warmupStart`.
    pub warmup: Option<(Timestamp, &'a [i64])>,
    /// The manual override that applies to this provider, if any.
    pub override_: Option<&'a ManualOverride>,
    pub bucket_seconds: i64,
    /// Why the pair may not leave Blocked yet even after its hold-down.
    pub held_by: Option<String>,
    /// Why a feed's figures keep the pair throttled (it may not climb).
    pub feed_throttle: Option<String>,
}

impl PairRules<'_> {
    fn warmup_at(&self, t: Timestamp) -> Option<WarmupDay> {
        self.warmup
            .and_then(|(start, caps)| warmup_day(start, caps, t))
    }

    /// Where a pair settles when nothing is wrong: Warming while the schedule runs, else Healthy.
    fn resting_state(&self, t: Timestamp) -> ReputationState {
        if self.warmup_at(t).is_some() {
            Warming
        } else {
            Healthy
        }
    }

    /// Allowance and hourly cap of a pair in `state` at `t`. The warm-up cap and
    /// the manual override only ever lower the state's own allowance.
    fn allowance(&self, pair: &ProviderReputation, t: Timestamp) -> (i32, Option<i64>) {
        let (state, recovery_step) = (pair.state, pair.recovery_step);
        let warm = self.warmup_at(t);
        let steps = &self.settings.recovery.step_percents;
        let own = match state {
            Healthy | Warming => 100,
            Throttled if pair.paused_until.is_some() => 0,
            Throttled => {
                let throttle = &self.settings.throttle.step_percents;
                let index = usize::try_from(pair.throttle_step.unwrap_or(0)).unwrap_or(0);
                throttle
                    .get(index)
                    .or(throttle.last())
                    .copied()
                    .unwrap_or(0)
            }
            Blocked => 0,
            Probing => self.settings.probe.allowance_percent,
            Recovering => {
                let index = usize::try_from(recovery_step.unwrap_or(0)).unwrap_or(0);
                steps.get(index).or(steps.last()).copied().unwrap_or(100)
            }
        };
        let warmed = match warm {
            Some(day) if state != Blocked => own.min(warm_allowance(day.cap, self.rate_limit)),
            _ => own,
        };
        let capped = self
            .override_
            .map_or(warmed, |o| warmed.min(o.allowance_percent));
        (capped.clamp(0, 100), warm.map(|day| day.cap))
    }

    fn refresh_allowance(&self, pair: &mut ProviderReputation, t: Timestamp) {
        let (allowance, cap) = self.allowance(pair, t);
        pair.allowance_percent = allowance;
        pair.hourly_cap = cap;
    }

    fn record(
        &self,
        pair: &ProviderReputation,
        from: ReputationState,
        reason: Reason,
        evidence: String,
        at: Timestamp,
        rec: &mut Recorder,
    ) {
        let from = rec.previous_state(self.ip, self.provider, from);
        rec.transitions.push(Transition {
            ip: self.ip.to_string(),
            provider: self.provider.to_string(),
            from,
            to: pair.state,
            reason,
            evidence: Some(evidence),
            allowance_percent: pair.allowance_percent,
            at,
        });
    }

    /// Moves the pair into another state at `at`. The window starts afresh: it
    /// only ever judges traffic sent in the current state.
    fn enter(
        &self,
        pair: &mut ProviderReputation,
        to: ReputationState,
        reason: Reason,
        evidence: String,
        at: Timestamp,
        rec: &mut Recorder,
    ) {
        self.enter_paused(pair, to, reason, evidence, at, None, rec);
    }

    /// [`Self::enter`], Throttled with a pause until `paused_until` when it is set.
    #[allow(clippy::too_many_arguments)]
    fn enter_paused(
        &self,
        pair: &mut ProviderReputation,
        to: ReputationState,
        reason: Reason,
        evidence: String,
        at: Timestamp,
        paused_until: Option<Timestamp>,
        rec: &mut Recorder,
    ) {
        let from = pair.state;
        let at = at.max(pair.since.0);
        pair.state = to;
        pair.since = Time(at);
        pair.reason = reason.as_str().to_string();
        pair.last_evidence = Some(evidence.clone());
        pair.window.clear();
        pair.probe_successes = 0;
        pair.recovery_step = (to == Recovering).then_some(0);
        pair.paused_until = paused_until.filter(|_| to == Throttled).map(Time);
        pair.throttle_step = (to == Throttled && pair.paused_until.is_none()).then_some(0);
        pair.next_step_at = match to {
            // Paused: when probing starts. Else the earliest time it may climb.
            Throttled => {
                Some(Time(paused_until.unwrap_or_else(|| {
                    add_seconds(at, self.settings.throttle.step_seconds)
                })))
            }
            Blocked => Some(Time(add_seconds(
                at,
                pair.hold_down_seconds
                    .unwrap_or(self.settings.hold_down_seconds),
            ))),
            Recovering => Some(Time(add_seconds(at, self.settings.recovery.step_seconds))),
            Warming => self.warmup_at(at).map(|day| Time(day.next_change)),
            Healthy | Probing => None,
        };
        self.refresh_allowance(pair, at);
        self.record(pair, from, reason, evidence, at, rec);
    }

    /// A step within the same state (recovery or warm-up): `since` stays.
    fn step(
        &self,
        pair: &mut ProviderReputation,
        reason: Reason,
        evidence: String,
        at: Timestamp,
        rec: &mut Recorder,
    ) {
        pair.reason = reason.as_str().to_string();
        pair.last_evidence = Some(evidence.clone());
        self.refresh_allowance(pair, at);
        self.record(pair, pair.state, reason, evidence, at, rec);
    }

    /// Blocks the pair, unless it is Blocked already (later evidence of the same
    /// block neither extends nor restarts the hold-down).
    ///
    /// The hold-down doubles for a repeat block: one while Probing or Recovering,
    /// or within `maxHoldDownSeconds` of the pair reaching its current state after
    /// an earlier block. A pair that stayed out of trouble that long starts again
    /// at the pool's `holdDownSeconds`. `block_count` keeps counting either way.
    pub fn block(
        &self,
        pair: &mut ProviderReputation,
        reason: Reason,
        evidence: String,
        now: Timestamp,
        rec: &mut Recorder,
    ) {
        if pair.state == Blocked {
            return;
        }
        let base = self.settings.hold_down_seconds;
        let max = self.settings.max_hold_down_seconds;
        let repeat = match pair.state {
            // A pair that only ever paused has served no block to repeat.
            Probing | Recovering => pair.block_count > 0,
            Healthy | Warming | Throttled | Blocked => {
                pair.block_count > 0 && seconds_between(pair.since.0, now) < max
            }
        };
        let hold_down = if repeat {
            pair.hold_down_seconds.unwrap_or(base).saturating_mul(2)
        } else {
            base
        };
        pair.hold_down_seconds = Some(hold_down.clamp(1, max));
        pair.block_count = pair.block_count.saturating_add(1);
        self.enter(pair, Blocked, reason, evidence, now, rec);
    }

    /// Brings the pair up to `now`: timers that fell due (each at the instant it
    /// was due, so the result does not depend on how often this runs), warm-up
    /// days, window pruning, allowance, and the manual override marker.
    pub fn settle(&self, pair: &mut ProviderReputation, now: Timestamp, rec: &mut Recorder) {
        for _ in 0..MAX_MOVES_PER_SETTLE {
            if !self.advance_once(pair, now, rec) {
                break;
            }
        }
        window::prune(
            &mut pair.window,
            now,
            self.settings.feedback.window_seconds,
            self.bucket_seconds,
        );
        self.refresh_complaint_rate(pair, now);
        self.refresh_allowance(pair, now);
        self.mark_override(pair, now, rec);
    }

    /// Keeps `complaintRate` current while the window holds complaints (`at`
    /// is when the last one arrived). Once it holds none (they aged out, or a
    /// state change began a fresh window) the last figures stay, as the
    /// pair's evidence, until a window has passed since the last complaint.
    fn refresh_complaint_rate(&self, pair: &mut ProviderReputation, now: Timestamp) {
        let totals = window::totals(&pair.window);
        if totals.complaints > 0 {
            let at = pair
                .complaint_rate
                .as_ref()
                .map_or(Time(now), |r| r.at.clone());
            pair.complaint_rate = Some(ComplaintRate {
                complaints: totals.complaints,
                delivered: totals.delivered,
                basis_points: basis_points_of(totals.complaints, totals.delivered),
                at,
            });
        } else if pair
            .complaint_rate
            .as_ref()
            .is_some_and(|r| seconds_between(r.at.0, now) >= self.settings.feedback.window_seconds)
        {
            pair.complaint_rate = None;
        }
    }

    /// The evidence of a window whose complaint rate is at or over the
    /// threshold, with enough delivered mail to judge; `None` otherwise.
    fn complaints_over(&self, pair: &ProviderReputation) -> Option<String> {
        let c = &self.settings.complaints;
        let totals = window::totals(&pair.window);
        let judged = totals.delivered >= c.min_delivered;
        let over = judged
            && totals.complaints > 0
            && share_at_least_basis_points(
                totals.complaints,
                totals.delivered,
                c.threshold_basis_points,
            );
        over.then(|| {
            format!(
                "{} complaints per {} delivered in the last {} s ({}, threshold {})",
                totals.complaints,
                totals.delivered,
                self.settings.feedback.window_seconds,
                basis_points_text(
                    basis_points_of(totals.complaints, totals.delivered).unwrap_or(0)
                ),
                basis_points_text(i64::from(c.threshold_basis_points))
            )
        })
    }

    /// A feed verdict that is no block: its figures throttle a Healthy or
    /// Warming pair (FeedThrottled) and hold a Recovering one at its step.
    /// Repeated polls of the same figures change nothing more.
    pub fn on_feed_scores(
        &self,
        pair: &mut ProviderReputation,
        now: Timestamp,
        rec: &mut Recorder,
    ) {
        let Some(evidence) = self.feed_throttle.clone() else {
            return;
        };
        match pair.state {
            Healthy | Warming => {
                self.enter(pair, Throttled, Reason::FeedThrottled, evidence, now, rec)
            }
            Recovering => {
                pair.next_step_at =
                    Some(Time(add_seconds(now, self.settings.recovery.step_seconds)));
            }
            Throttled | Blocked | Probing => {}
        }
    }

    /// Counts `count` spam complaints into the window and judges the pair's
    /// complaint rate. Call [`Self::settle`] before and after, as for feedback.
    ///
    /// Over the threshold a Healthy or Warming pair enters Throttled; a
    /// Throttled one goes one step lower once it has held its step for
    /// `throttle.stepSeconds`; a Recovering one holds its step. A Blocked,
    /// paused or Probing pair only counts them.
    pub fn on_complaints(
        &self,
        pair: &mut ProviderReputation,
        count: i64,
        now: Timestamp,
        rec: &mut Recorder,
    ) {
        let counts = Counts {
            complaints: count,
            ..Counts::default()
        };
        window::record(&mut pair.window, counts, now, self.bucket_seconds);
        window::prune(
            &mut pair.window,
            now,
            self.settings.feedback.window_seconds,
            self.bucket_seconds,
        );
        if let Some(rate) = &mut pair.complaint_rate {
            rate.at = Time(now);
        }
        self.refresh_complaint_rate(pair, now);
        if pair.paused_until.is_some() {
            return;
        }
        let Some(evidence) = self.complaints_over(pair) else {
            return;
        };
        match pair.state {
            Healthy | Warming => {
                self.enter(pair, Throttled, Reason::ComplaintRate, evidence, now, rec)
            }
            Throttled if pair.next_step_at.as_ref().is_none_or(|t| t.0 <= now) => {
                let steps = &self.settings.throttle.step_percents;
                let next = pair.throttle_step.unwrap_or(0).max(0).saturating_add(1);
                match usize::try_from(next).ok().and_then(|i| steps.get(i)) {
                    Some(percent) => {
                        let evidence = format!(
                            "{evidence}; step {} of {}: {percent} %",
                            next + 1,
                            steps.len()
                        );
                        self.throttle_step(pair, next, Reason::ComplaintRate, evidence, now, rec);
                    }
                    None => {
                        // The lowest step holds; climbing waits a full step again.
                        pair.next_step_at =
                            Some(Time(add_seconds(now, self.settings.throttle.step_seconds)));
                    }
                }
            }
            Recovering => {
                pair.next_step_at =
                    Some(Time(add_seconds(now, self.settings.recovery.step_seconds)));
            }
            Throttled | Blocked | Probing => {}
        }
    }

    /// Makes the one move that is due at `now`, if any; returns whether it moved.
    fn advance_once(
        &self,
        pair: &mut ProviderReputation,
        now: Timestamp,
        rec: &mut Recorder,
    ) -> bool {
        match pair.state {
            Blocked => {
                let (due, evidence) = match pair.next_step_at.as_ref().map(|t| t.0) {
                    Some(end) if end > now => return false,
                    Some(end) => {
                        let held = pair
                            .hold_down_seconds
                            .unwrap_or(self.settings.hold_down_seconds);
                        (end, format!("hold-down of {held} s ended"))
                    }
                    None => (
                        now,
                        "no block list or feed lists the IP any more; hold-down already over"
                            .to_string(),
                    ),
                };
                if self.held_by.is_some() {
                    // Probing while a list still names the IP would only be refused:
                    // wait for the list to clear instead (no timer, a signal releases it).
                    pair.next_step_at = None;
                    return false;
                }
                self.enter(pair, Probing, Reason::HoldDownElapsed, evidence, due, rec);
                true
            }
            Recovering => {
                let step_seconds = self.settings.recovery.step_seconds;
                let Some(due) = pair.next_step_at.as_ref().map(|t| t.0) else {
                    pair.next_step_at = Some(Time(add_seconds(now, step_seconds)));
                    return false;
                };
                if due > now {
                    return false;
                }
                if self.feed_throttle.is_some() {
                    // A feed still scores the mail badly: the step holds.
                    pair.next_step_at = Some(Time(add_seconds(now, step_seconds)));
                    return false;
                }
                let steps = &self.settings.recovery.step_percents;
                let next = pair.recovery_step.unwrap_or(0).max(0).saturating_add(1);
                let next_index = usize::try_from(next).unwrap_or(usize::MAX);
                match steps.get(next_index) {
                    Some(percent) => {
                        let evidence = format!(
                            "recovery step {} of {}: {percent} %",
                            next_index + 1,
                            steps.len()
                        );
                        pair.recovery_step = Some(next);
                        pair.next_step_at = Some(Time(add_seconds(due, step_seconds)));
                        self.step(pair, Reason::RecoveryStep, evidence, due, rec);
                    }
                    None => {
                        let evidence =
                            format!("all {} recovery steps passed without failure", steps.len());
                        self.enter(
                            pair,
                            self.resting_state(due),
                            Reason::Recovered,
                            evidence,
                            due,
                            rec,
                        );
                    }
                }
                true
            }
            Warming => match self.warmup_at(now) {
                None => {
                    let (at, evidence) = match self.warmup {
                        Some((start, caps)) => (
                            schedule_end(start, caps).min(now),
                            format!("warm-up schedule of {} days ended", caps.len()),
                        ),
                        None => (now, "warmupStart was removed from the spec".to_string()),
                    };
                    self.enter(pair, Healthy, Reason::WarmupComplete, evidence, at, rec);
                    true
                }
                Some(day) => {
                    pair.next_step_at = Some(Time(day.next_change));
                    if pair.hourly_cap != Some(day.cap) {
                        let at = day.day_start.max(pair.since.0).min(now);
                        self.step(pair, Reason::WarmupStep, warmup_evidence(&day), at, rec);
                    }
                    false
                }
            },
            Healthy => match self.warmup_at(now) {
                Some(day) => {
                    self.enter(
                        pair,
                        Warming,
                        Reason::WarmupStarted,
                        warmup_evidence(&day),
                        now,
                        rec,
                    );
                    true
                }
                None => false,
            },
            Throttled => match pair.paused_until.as_ref().map(|t| t.0) {
                Some(end) if end <= now => {
                    let evidence = format!(
                        "pause of {} s ended",
                        seconds_between(pair.since.0, end).max(0)
                    );
                    self.enter(pair, Probing, Reason::PauseElapsed, evidence, end, rec);
                    true
                }
                _ => false,
            },
            Probing => false,
        }
    }

    /// Stops the pair for `seconds` after a reply that asks for a pause, unless
    /// it is Blocked or already paused (a later pause reply neither extends nor
    /// restarts the pause, as with a block's hold-down).
    fn pause(
        &self,
        pair: &mut ProviderReputation,
        reply: &ConclusiveReply,
        seconds: i64,
        now: Timestamp,
        rec: &mut Recorder,
    ) {
        if pair.state == Blocked || pair.paused_until.is_some() {
            return;
        }
        let until = add_seconds(now.max(pair.since.0), seconds);
        let evidence = format!("paused {seconds} s: {}", reply.reply);
        self.enter_paused(
            pair,
            Throttled,
            Reason::PauseReply,
            evidence,
            now,
            Some(until),
            rec,
        );
    }

    /// Moves a Throttled pair to step `index` of `throttle.stepPercents` (a
    /// higher index is a smaller allowance). The window starts afresh so the
    /// next judgement sees only traffic sent at the new step.
    fn throttle_step(
        &self,
        pair: &mut ProviderReputation,
        index: i32,
        reason: Reason,
        evidence: String,
        now: Timestamp,
        rec: &mut Recorder,
    ) {
        pair.throttle_step = Some(index);
        pair.window.clear();
        pair.next_step_at = Some(Time(add_seconds(now, self.settings.throttle.step_seconds)));
        self.step(pair, reason, evidence, now, rec);
    }

    /// Records the override in force in `overridden_by`, announcing a change.
    /// The cap itself is applied by [`Self::allowance`].
    fn mark_override(&self, pair: &mut ProviderReputation, now: Timestamp, rec: &mut Recorder) {
        let wanted = self.override_.map(|o| o.reason.clone());
        if wanted == pair.overridden_by {
            return;
        }
        let previous = std::mem::replace(&mut pair.overridden_by, wanted);
        let (reason, evidence) = match self.override_ {
            Some(o) => (
                Reason::ManualOverride,
                format!(
                    "allowance capped at {} %: {}",
                    o.allowance_percent, o.reason
                ),
            ),
            None => (
                Reason::OverrideLifted,
                format!("override removed: {}", previous.unwrap_or_default()),
            ),
        };
        self.record(pair, pair.state, reason, evidence, now, rec);
    }

    /// Judges one feedback report. Call [`Self::settle`] before (so the report
    /// meets the pair's state at `now`) and after (allowance, override).
    /// `listed_zones`: the zones whose last answer through the pool's own
    /// resolver lists this IP; they confirm a claim naming them.
    pub fn on_feedback(
        &self,
        pair: &mut ProviderReputation,
        feedback: &Feedback,
        listed_zones: &[String],
        now: Timestamp,
        rec: &mut Recorder,
    ) {
        // A ban naming only another address is no refusal of this IP (an agent
        // that knows its address already leaves those out).
        let about_others = feedback
            .conclusive
            .iter()
            .filter(|r| r.pause_seconds.is_none())
            .filter(|r| {
                r.named_ip
                    .is_some_and(|n| n != self.ip_addr && !names_ip(&r.reply, self.ip_addr))
            })
            .count();
        let counts = Counts {
            attempts: feedback.attempts,
            delivered: feedback.delivered,
            ip_blocklisted: feedback
                .ip_blocklisted
                .saturating_sub(i64::try_from(about_others).unwrap_or(i64::MAX))
                .max(0),
            ip_rate_limited: feedback.ip_rate_limited,
            complaints: 0,
        };
        let window_seconds = self.settings.feedback.window_seconds;
        window::record(&mut pair.window, counts, now, self.bucket_seconds);
        window::prune(&mut pair.window, now, window_seconds, self.bucket_seconds);
        if pair.state == Blocked {
            // Replies to mail sent before the block: the hold-down already serves them.
            return;
        }

        // The sender counts wherever the reply names it, not only first.
        let about_this_ip = |r: &&ConclusiveReply| {
            r.named_ip
                .is_none_or(|named| named == self.ip_addr || names_ip(&r.reply, self.ip_addr))
        };
        // While Probing, a ban reply received before probing began speaks of the
        // block already served, not of the probe.
        let probing_since = (pair.state == Probing).then_some(pair.since.0);
        let is_stale = |r: &&ConclusiveReply| probing_since.is_some_and(|since| r.at < since);
        let is_ban = |r: &&ConclusiveReply| r.pause_seconds.is_none();
        let stale = feedback
            .conclusive
            .iter()
            .filter(is_ban)
            .filter(about_this_ip)
            .filter(is_stale)
            .count();
        let mut claims = Vec::new();
        let first_fresh = feedback
            .conclusive
            .iter()
            .filter(is_ban)
            .filter(about_this_ip)
            .filter(|r| !is_stale(r))
            .filter(|r| match claim_of(&r.reply, self.provider) {
                Some(claim) => {
                    claims.push((claim, *r));
                    false
                }
                None => true,
            })
            .min_by(|a, b| (a.at, &a.reply).cmp(&(b.at, &b.reply)));
        self.record_claims(pair, claims, now);
        if let Some(reply) = first_fresh {
            self.block(
                pair,
                Reason::ConclusiveBlockReply,
                reply.reply.clone(),
                now,
                rec,
            );
            return;
        }
        if let Some(evidence) = self.confirmed_claim(pair, listed_zones) {
            self.block(pair, Reason::DnsblClaimConfirmed, evidence, now, rec);
            return;
        }
        let first_pause = feedback
            .conclusive
            .iter()
            .filter(|r| r.pause_seconds.is_some())
            .filter(about_this_ip)
            .filter(|r| !is_stale(r))
            .min_by(|a, b| (a.at, &a.reply).cmp(&(b.at, &b.reply)));
        if let Some(reply) = first_pause {
            if pair.paused_until.is_none() {
                let seconds = reply.pause_seconds.unwrap_or_default();
                self.pause(pair, reply, seconds, now, rec);
                return;
            }
        }
        if pair.paused_until.is_some() {
            // Replies to mail sent before the pause: the pause already serves them.
            return;
        }

        let f = &self.settings.feedback;
        let totals = window::totals(&pair.window);
        let judged = totals.attempts >= f.min_samples;
        let over_block =
            judged && share_at_least(totals.ip_blocklisted, totals.attempts, f.block_percent);
        let over_throttle =
            judged && share_at_least(totals.ip_rate_limited, totals.attempts, f.throttle_percent);
        // Hysteresis: Throttled at >= throttlePercent, clean again below half of it.
        let clean = judged
            && !share_at_least(
                totals.ip_rate_limited.saturating_mul(2),
                totals.attempts,
                f.throttle_percent,
            );
        let describe = |part: i64, what: &str, threshold: String| {
            format!(
                "{part} of {} attempts {what} in the last {window_seconds} s ({} %, {threshold})",
                totals.attempts,
                percent_of(part, totals.attempts)
            )
        };
        let block_evidence = || {
            describe(
                totals.ip_blocklisted,
                "refused for IP reputation",
                format!("threshold {} %", f.block_percent),
            )
        };

        match pair.state {
            Blocked => {}
            _ if over_block => self.block(
                pair,
                Reason::BlockRateOverThreshold,
                block_evidence(),
                now,
                rec,
            ),
            Healthy | Warming if over_throttle => {
                let evidence = describe(
                    totals.ip_rate_limited,
                    "rate-limited",
                    format!("threshold {} %", f.throttle_percent),
                );
                self.enter(pair, Throttled, Reason::RateLimited, evidence, now, rec);
            }
            Throttled if over_throttle => {
                let steps = &self.settings.throttle.step_percents;
                let index = pair.throttle_step.unwrap_or(0).max(0);
                let next = index.saturating_add(1);
                if let Some(percent) = usize::try_from(next).ok().and_then(|i| steps.get(i)) {
                    let threshold = format!(
                        "threshold {} %; step {} of {}: {percent} %",
                        f.throttle_percent,
                        next + 1,
                        steps.len()
                    );
                    let evidence = describe(totals.ip_rate_limited, "rate-limited", threshold);
                    self.throttle_step(pair, next, Reason::ThrottleStepDown, evidence, now, rec);
                } else {
                    // Already at the lowest step: it holds; climbing waits for
                    // a clean window that began after this one.
                    pair.window.clear();
                    pair.next_step_at =
                        Some(Time(add_seconds(now, self.settings.throttle.step_seconds)));
                }
            }
            Throttled
                if clean
                    && pair.next_step_at.as_ref().is_none_or(|t| t.0 <= now)
                    && self.complaints_over(pair).is_none()
                    && self.feed_throttle.is_none() =>
            {
                let index = pair.throttle_step.unwrap_or(0).max(0);
                let threshold = format!("below half the {} % threshold", f.throttle_percent);
                let evidence = describe(totals.ip_rate_limited, "rate-limited", threshold);
                let steps = &self.settings.throttle.step_percents;
                let up = usize::try_from(index - 1).ok().and_then(|i| steps.get(i));
                match up {
                    Some(percent) => {
                        let evidence =
                            format!("{evidence}; step {} of {}: {percent} %", index, steps.len());
                        self.throttle_step(
                            pair,
                            index - 1,
                            Reason::ThrottleStepUp,
                            evidence,
                            now,
                            rec,
                        );
                    }
                    None => self.enter(
                        pair,
                        self.resting_state(now),
                        Reason::WindowClean,
                        evidence,
                        now,
                        rec,
                    ),
                }
            }
            Probing => {
                let failures = feedback
                    .ip_blocklisted
                    .saturating_sub(i64::try_from(stale).unwrap_or(i64::MAX))
                    .saturating_add(feedback.ip_rate_limited);
                if failures > 0 {
                    pair.probe_successes = 0;
                    return;
                }
                pair.probe_successes = pair.probe_successes.saturating_add(feedback.delivered);
                let needed = self.settings.probe.successes_to_recover;
                if pair.probe_successes >= needed {
                    let evidence = format!(
                        "{} clean deliveries while probing (needed {needed})",
                        pair.probe_successes
                    );
                    self.enter(pair, Recovering, Reason::ProbeClean, evidence, now, rec);
                }
            }
            Recovering if over_throttle => {
                // Rate limits while ramping up hold the current step rather than
                // climbing into them; only a block sends the pair back.
                pair.next_step_at =
                    Some(Time(add_seconds(now, self.settings.recovery.step_seconds)));
            }
            Healthy | Warming | Throttled | Recovering => {}
        }
    }
}

impl PairRules<'_> {
    /// Keeps one claim per receiving domain (its newest), within the window.
    fn record_claims(
        &self,
        pair: &mut ProviderReputation,
        claims: Vec<(crate::reputation::evidence::ClaimOf, &ConclusiveReply)>,
        now: Timestamp,
    ) {
        let window_start = add_seconds(now, -self.settings.feedback.window_seconds);
        pair.dnsbl_claims.retain(|c| c.at.0 >= window_start);
        for (claim, reply) in claims {
            let at = Time(super::clock::whole_second(reply.at));
            if at.0 < window_start {
                continue;
            }
            let entry = DnsblClaim {
                zone: claim.zone,
                receiver: claim.receiver,
                at,
                reply: reply.reply.chars().take(CLAIM_REPLY_CHARS).collect(),
            };
            match pair
                .dnsbl_claims
                .iter_mut()
                .find(|c| c.receiver == entry.receiver)
            {
                Some(existing) if existing.at <= entry.at => *existing = entry,
                Some(_) => {}
                None => pair.dnsbl_claims.push(entry),
            }
        }
        pair.dnsbl_claims
            .sort_by(|a, b| (a.at.0, &a.receiver).cmp(&(b.at.0, &b.receiver)));
        let excess = pair.dnsbl_claims.len().saturating_sub(MAX_DNSBL_CLAIMS);
        pair.dnsbl_claims.drain(..excess);
    }

    /// Why the pair's claims now amount to a block, if they do: a claimed zone
    /// lists the IP through the pool's own resolver, or enough receivers agree.
    fn confirmed_claim(
        &self,
        pair: &ProviderReputation,
        listed_zones: &[String],
    ) -> Option<String> {
        if let Some(claim) = pair
            .dnsbl_claims
            .iter()
            .rev()
            .find(|c| c.zone.as_ref().is_some_and(|z| listed_zones.contains(z)))
        {
            return Some(format!(
                "{} lists {} (asked through the pool's resolver), as {} said: {}",
                claim.zone.as_deref().unwrap_or_default(),
                self.ip,
                claim.receiver,
                claim.reply
            ));
        }
        if pair.dnsbl_claims.len() >= DNSBL_CLAIM_RECEIVERS {
            let receivers: Vec<&str> = pair
                .dnsbl_claims
                .iter()
                .map(|c| c.receiver.as_str())
                .collect();
            let last = pair.dnsbl_claims.last().map_or("", |c| c.reply.as_str());
            return Some(format!(
                "{} receiving domains quote a block list about {} ({}); last: {last}",
                receivers.len(),
                self.ip,
                receivers.join(", ")
            ));
        }
        None
    }
}

fn warmup_evidence(day: &WarmupDay) -> String {
    format!(
        "warm-up day {} of {}: {} messages per hour",
        day.day + 1,
        day.days,
        day.cap
    )
}
