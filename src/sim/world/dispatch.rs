//! Where the mail due in a slice goes: spread over the pods (a baseline), or
//! over the route in force within its caps (mailfleet); and deferrals.

use crate::api::RouteMode;

use super::super::queue::{backoff_seconds, split_off, Held, Holder, Piece};
use super::super::rng::apportion;
use super::super::routes::{fill, Plan};
use super::World;

impl World<'_> {
    /// Share of `provider`-bound mail that people have moved off sender `s` at `now`.
    pub(super) fn moved_share(&self, s: usize, p: usize, now: i64) -> f64 {
        self.moves
            .iter()
            .filter(|(_, _, ms, mp, _)| *ms == s && *mp == p)
            .map(|(from, until, _, _, share)| {
                if now < *from {
                    0.0
                } else if now >= *until || until <= from {
                    *share
                } else {
                    share * ((now - from) as f64 / (until - from) as f64)
                }
            })
            .fold(0.0, f64::max)
    }

    /// Puts the mail due in slice `t` into per-sender, per-provider batches.
    pub(super) fn dispatch(&mut self, t: usize, now: i64, batches: &mut [Vec<Vec<Piece>>]) {
        let providers = self.destinations.len();
        let mut for_route: Vec<Vec<Piece>> = vec![Vec::new(); providers];
        let mut pinned: Vec<Vec<Vec<Piece>>> =
            vec![vec![Vec::new(); providers]; self.senders.len()];
        for held in self.due.take(t) {
            match held.holder {
                Holder::Sender(s)
                    if !self.mailfleet() || self.plans[held.provider].target(s).is_some() =>
                {
                    pinned[s][held.provider].push(held.piece)
                }
                _ => for_route[held.provider].push(held.piece),
            }
        }
        if t < self.submit_slices {
            let count = self.submissions[t];
            self.totals.submitted += count;
            let shares: Vec<f64> = self.destinations.iter().map(|d| d.share).collect();
            let per_provider = apportion(count, &shares, &mut self.rng_dispatch);
            for (p, n) in per_provider.into_iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let piece = Piece {
                    count: n,
                    submitted: t as u32,
                    attempts: 0,
                };
                if self.mailfleet() {
                    for_route[p].push(piece);
                } else {
                    let weights: Vec<f64> = self.pods.iter().map(|(_, n)| f64::from(*n)).collect();
                    let spread = apportion(n, &weights, &mut self.rng_dispatch);
                    for ((s, _), k) in self.pods.iter().zip(spread) {
                        if k > 0 {
                            pinned[*s][p].push(Piece { count: k, ..piece });
                        }
                    }
                }
            }
        }
        if self.mailfleet() {
            for (p, demand) in for_route.into_iter().enumerate() {
                self.follow_plan(p, demand, &mut pinned, t, now, batches);
            }
        } else {
            self.spread(pinned, now, batches);
        }
    }

    /// A baseline fleet: every sender sends its own mail, except what people
    /// moved to another system.
    fn spread(&mut self, pinned: Vec<Vec<Vec<Piece>>>, now: i64, batches: &mut [Vec<Vec<Piece>>]) {
        for (s, per_provider) in pinned.into_iter().enumerate() {
            for (p, mut pieces) in per_provider.into_iter().enumerate() {
                let total: u64 = pieces.iter().map(|x| x.count).sum();
                let moved = self.moved_share(s, p, now);
                if moved > 0.0 && total > 0 {
                    let away = self.rng_dispatch.round(total as f64 * moved).min(total);
                    batches[self.other_system][p].extend(split_off(&mut pieces, away));
                }
                batches[s][p].extend(pieces);
            }
        }
    }

    /// Provider `p`'s mail under mailfleet: retries held by a target leave from
    /// it, the rest is shared over the targets by weight, all within the
    /// targets' hourly caps; in mode Relay the relay takes what the targets (a
    /// Probing IP's trickle, if any) do not; mode Defer keeps that queued. Mail
    /// nobody may take now waits for the next slice.
    fn follow_plan(
        &mut self,
        p: usize,
        demand: Vec<Piece>,
        pinned: &mut [Vec<Vec<Piece>>],
        t: usize,
        now: i64,
        batches: &mut [Vec<Vec<Piece>>],
    ) {
        let plan = self.plans[p].clone();
        let rest = self.send_via_targets(&plan, p, demand, pinned, t, batches);
        match plan.mode {
            RouteMode::Relay => batches[self.relay][p].extend(rest),
            RouteMode::Defer => {
                for piece in rest {
                    self.defer(Holder::Route, p, piece, t, now + self.slice);
                }
            }
            RouteMode::Primary | RouteMode::FallbackPool => {
                for piece in rest {
                    self.wait(Holder::Route, p, piece, t);
                }
            }
        }
    }

    /// Sends what the plan's targets may take now and returns the rest.
    fn send_via_targets(
        &mut self,
        plan: &Plan,
        p: usize,
        mut demand: Vec<Piece>,
        pinned: &mut [Vec<Vec<Piece>>],
        t: usize,
        batches: &mut [Vec<Vec<Piece>>],
    ) -> Vec<Piece> {
        if plan.targets.is_empty() {
            return demand;
        }
        let mut rooms = Vec::with_capacity(plan.targets.len());
        for target in &plan.targets {
            let s = target.sender;
            let room = match target.hourly_cap {
                Some(cap) => {
                    let refill = cap as f64 * self.slice as f64 / 3600.0;
                    self.credit[s][p] = (self.credit[s][p] + refill).min(refill + 1.0);
                    self.credit[s][p].floor().max(0.0) as u64
                }
                None => u64::MAX,
            };
            let mut own = std::mem::take(&mut pinned[s][p]);
            let own_total: u64 = own.iter().map(|x| x.count).sum();
            let sent = split_off(&mut own, own_total.min(room));
            let used: u64 = sent.iter().map(|x| x.count).sum();
            batches[s][p].extend(sent);
            for piece in own {
                self.wait(Holder::Sender(s), p, piece, t);
            }
            rooms.push(room - used);
        }
        let total: u64 = demand.iter().map(|x| x.count).sum();
        let weights: Vec<f64> = plan.targets.iter().map(|x| x.weight).collect();
        let given = fill(total, &weights, &rooms, &mut self.rng_dispatch);
        for (target, share) in plan.targets.iter().zip(&given) {
            let s = target.sender;
            if *share > 0 {
                batches[s][p].extend(split_off(&mut demand, *share));
            }
            if target.hourly_cap.is_some() {
                let sent: u64 = batches[s][p].iter().map(|x| x.count).sum();
                self.credit[s][p] = (self.credit[s][p] - sent as f64).max(0.0);
            }
        }
        demand
    }

    /// Keeps `piece` for the next slice: it waits for room, it is not deferred.
    fn wait(&mut self, holder: Holder, p: usize, piece: Piece, t: usize) {
        let held = Held {
            holder,
            provider: p,
            piece,
            deferred: false,
        };
        self.due.push(t + 1, held);
    }

    /// Queues `piece` for a retry after a failed attempt at `end`, or bounces it
    /// when it has outlived the queue lifetime.
    pub(super) fn defer(&mut self, holder: Holder, p: usize, piece: Piece, t: usize, end: i64) {
        self.totals.deferrals += piece.count;
        let submitted_at = self.scenario.start + i64::from(piece.submitted) * self.slice;
        self.oldest_wait = self.oldest_wait.max(end - submitted_at);
        if end - submitted_at >= self.queue_lifetime {
            self.totals.expired += piece.count;
            self.totals.bounced += piece.count;
            return;
        }
        let attempts = piece.attempts.saturating_add(1);
        let wait = backoff_seconds(attempts);
        let slices = usize::try_from((wait + self.slice - 1) / self.slice)
            .unwrap_or(1)
            .max(1);
        self.due.push(
            t + slices,
            Held {
                holder,
                provider: p,
                piece: Piece { attempts, ..piece },
                deferred: true,
            },
        );
    }
}
