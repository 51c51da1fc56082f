//! What the providers answer to one batch, what the senders do with the
//! answer, and what the agents count.

use super::super::provider::ReplyKind;
use super::super::queue::{split_off, Holder, Piece};
use super::super::report::HourlyVolume;
use super::{SimError, World, AGENT_DELAY_SECONDS, DELIVERY_SECONDS, MX_ADDRESS};

impl World<'_> {
    /// The reply text of `kind` for sender `s`, rendered once.
    fn reply_text(&mut self, s: usize, p: usize, kind: ReplyKind) -> String {
        let template = self.destinations[p].model.reply(kind);
        let ip = &self.senders[s].label;
        self.replies
            .entry((s, p, kind))
            .or_insert_with(|| template.render(ip))
            .clone()
    }

    /// Hourly limit a provider holds sender `s` to at `now`, if any.
    fn hourly_limit(&self, s: usize, p: usize, now: i64) -> Option<f64> {
        let model = &self.destinations[p].model;
        let new_ip = self.warmup_start[s].and_then(|start| {
            let day = usize::try_from((now - start).div_euclid(86_400)).ok()?;
            model.new_ip_hourly_limits.get(day).copied()
        });
        let penalised = model
            .rate_limit_penalty
            .filter(|_| self.standing[s][p].penalty_until.is_some_and(|u| u > now));
        let own = model
            .per_ip_hourly_limit
            .map(|limit| limit * self.scale * penalised.map_or(1.0, |x| x.factor));
        match (own, new_ip) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One slice's attempts of sender `s` to provider `p`: the provider answers,
    /// the sender acts on each answer, the agent counts it.
    pub(super) fn attempt(
        &mut self,
        s: usize,
        p: usize,
        pieces: Vec<Piece>,
        t: usize,
        now: i64,
    ) -> Result<(), SimError> {
        let total: u64 = pieces.iter().map(|x| x.count).sum();
        let classes = self.answer(s, p, pieces, now);
        let pick = self
            .rng_replies
            .pick_weighted(&self.destinations[p].weights)
            .unwrap_or(0);
        let domain = self.destinations[p].domains[pick];
        // Attempts are spread over the slice: the first reply comes after one gap.
        let first_reply_at = now + (self.slice / (total as i64 + 1)).max(1) + AGENT_DELAY_SECONDS;
        for (kind, pieces) in classes {
            let count: u64 = pieces.iter().map(|x| x.count).sum();
            if count == 0 {
                continue;
            }
            let reply = self.reply_text(s, p, kind);
            let template_status = self.destinations[p].model.reply(kind).status;
            let status = if self.mailfleet() && kind != ReplyKind::Delivered {
                let said = format!(
                    "host {}[{MX_ADDRESS}] said: {reply} (in reply to RCPT TO command)",
                    domain.mx_host
                );
                self.filter.apply(template_status, &said)
            } else {
                template_status.to_string()
            };
            if let (true, Some(watch)) = (self.senders[s].real, self.watch.as_mut()) {
                let verdict =
                    self.classifier
                        .classify_text(&reply, Some(domain.name), Some(domain.mx_host));
                let ip = &self.senders[s].label;
                watch.record(ip, &verdict, &reply, count, first_reply_at)?;
            }
            self.count_reply(s, p, kind, count, &status, now);
            match status.chars().next() {
                Some('2') => self.delivered(s, p, &pieces, t, now),
                Some('4') => {
                    for piece in pieces {
                        self.defer(Holder::Sender(s), p, piece, t, now + self.slice);
                    }
                }
                _ => {
                    self.totals.bounced += count;
                    if matches!(kind, ReplyKind::Block | ReplyKind::DnsblRefusal) {
                        self.totals.bounced_by_block += count;
                    }
                }
            }
        }
        Ok(())
    }

    /// The provider's answers to one batch, grouped by reply: a listed IP gets
    /// its block reply, a DNSBL-listed one the block-list reply where the
    /// provider checks lists; otherwise the rate limit, then greylisting of
    /// first attempts, then delivery.
    fn answer(
        &mut self,
        s: usize,
        p: usize,
        mut pieces: Vec<Piece>,
        now: i64,
    ) -> Vec<(ReplyKind, Vec<Piece>)> {
        if !self.senders[s].real {
            return vec![(ReplyKind::Delivered, pieces)];
        }
        if self.standing[s][p].is_listed() {
            return vec![(ReplyKind::Block, pieces)];
        }
        if self.destinations[p].model.honours_dnsbl && !self.dnsbl_listings[s].is_empty() {
            return vec![(ReplyKind::DnsblRefusal, pieces)];
        }
        let mut classes = Vec::new();
        let total: u64 = pieces.iter().map(|x| x.count).sum();
        let limit = self.hourly_limit(s, p, now);
        let admitted = self.standing[s][p].admit(total, limit, now);
        let mut accepted = split_off(&mut pieces, admitted);
        if !pieces.is_empty() {
            let standing = &mut self.standing[s][p];
            if let Some(penalty) = self.destinations[p].model.rate_limit_penalty {
                if standing.penalty_until.is_none_or(|u| u <= now) {
                    standing.penalty_until = Some(now + penalty.seconds);
                }
            }
            classes.push((ReplyKind::RateLimited, pieces));
        }
        let share = self.destinations[p].model.greylist_share;
        if share > 0.0 {
            let mut greylisted = Vec::new();
            for piece in accepted.iter_mut().filter(|x| x.attempts == 0) {
                let k = self
                    .rng_replies
                    .round(piece.count as f64 * share)
                    .min(piece.count);
                if k > 0 {
                    greylisted.push(Piece { count: k, ..*piece });
                    piece.count -= k;
                }
            }
            accepted.retain(|x| x.count > 0);
            if !greylisted.is_empty() {
                classes.push((ReplyKind::Greylisted, greylisted));
            }
        }
        if !accepted.is_empty() {
            classes.push((ReplyKind::Delivered, accepted));
        }
        classes
    }

    /// Counts one reply class: refusals by kind, the hourly chart, the first
    /// reputation refusal of an affected pair.
    fn count_reply(
        &mut self,
        s: usize,
        p: usize,
        kind: ReplyKind,
        count: u64,
        status: &str,
        now: i64,
    ) {
        let (delivered, deferred) = (status.starts_with('2'), status.starts_with('4'));
        if kind.is_reputation() && self.watched.contains(&(s, p)) && self.first_refusal.is_none() {
            self.first_refusal = Some(now);
        }
        if !delivered {
            self.totals.refused += count;
            let key = (
                self.senders[s].label.clone(),
                self.destinations[p].name.clone(),
                kind.as_str(),
            );
            *self.detail.refused_by.entry(key).or_default() += count;
        }
        let hour = usize::try_from((now - self.scenario.start) / 3600).unwrap_or(0);
        let volume = self.hourly_row(hour);
        if kind.is_reputation() || !(delivered || deferred) {
            volume.failed[s] += count;
        }
        if delivered {
            volume.delivered[s] += count;
        }
    }

    /// Delivered messages: totals, delays, and the hourly count per provider.
    fn delivered(&mut self, s: usize, p: usize, pieces: &[Piece], t: usize, now: i64) {
        let hour = usize::try_from((now - self.scenario.start) / 3600).unwrap_or(0);
        let label = (
            self.senders[s].label.clone(),
            self.destinations[p].name.clone(),
        );
        let row = self.detail.delivered_hourly.entry(label).or_default();
        if row.len() <= hour {
            row.resize(hour + 1, 0);
        }
        for piece in pieces {
            row[hour] += piece.count;
            self.totals.delivered += piece.count;
            let waited = (t as u64 - u64::from(piece.submitted)) * self.slice as u64;
            *self
                .detail
                .delays
                .entry(waited + DELIVERY_SECONDS)
                .or_default() += piece.count;
            if waited > 0 {
                self.totals.delayed += piece.count;
            }
        }
    }

    fn hourly_row(&mut self, hour: usize) -> &mut HourlyVolume {
        let senders = self.senders.len();
        while self.detail.hourly.len() <= hour {
            self.detail.hourly.push(HourlyVolume {
                delivered: vec![0; senders],
                failed: vec![0; senders],
            });
        }
        &mut self.detail.hourly[hour]
    }
}
