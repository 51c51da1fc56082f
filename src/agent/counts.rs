//! Delivery attempts counted per (provider, outcome, category), with the
//! conclusive replies among them: what `agent replay` prints and what one
//! feedback report carries.
//!
//! The classification is the core's ([`Verdict`]); the counts keep the same
//! facts as [`crate::reputation::tally::Tally`] (attempts, delivered,
//! ip_blocklisted, ip_rate_limited, conclusive replies), only finer, so
//! [`crate::agent::report::FeedbackReport::to_feedback`] gives the engine what a
//! `Tally` would. Counting allocates nothing per attempt: one slot array per
//! provider, found by name among the few providers seen.

use std::net::IpAddr;

use crate::agent::report::TotalCount;
use crate::reputation::classifier::Verdict;
use crate::reputation::providers::SharedName;
use crate::vocab::{Category, Outcome};

const OUTCOMES: usize = Outcome::ALL.len();
const CATEGORIES: usize = Category::ALL.len();

/// One conclusive reply; `At` is a timestamp in the agent and the logged time
/// text in an offline replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conclusive<At> {
    pub provider: SharedName,
    pub reply: String,
    pub at: At,
    pub named_ip: Option<IpAddr>,
    /// A rate-limit reply whose rule asks for a pause of this many seconds.
    pub pause_seconds: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProviderCounts {
    name: SharedName,
    counts: [[u64; CATEGORIES]; OUTCOMES],
    conclusive_kept: usize,
}

/// Counts of classified attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptCounts<At> {
    providers: Vec<ProviderCounts>,
    conclusive: Vec<Conclusive<At>>,
    conclusive_cap: Option<usize>,
    dropped_conclusive: u64,
}

impl<At> Default for AttemptCounts<At> {
    fn default() -> Self {
        AttemptCounts {
            providers: Vec::new(),
            conclusive: Vec::new(),
            conclusive_cap: None,
            dropped_conclusive: 0,
        }
    }
}

fn outcome_slot(outcome: Outcome) -> usize {
    outcome as usize
}

fn category_slot(category: Category) -> usize {
    category as usize
}

impl<At> AttemptCounts<At> {
    /// Keeps at most `cap` conclusive replies per provider; the others are
    /// counted in [`AttemptCounts::dropped_conclusive`].
    pub fn with_conclusive_cap(cap: usize) -> Self {
        AttemptCounts {
            conclusive_cap: Some(cap),
            ..AttemptCounts::default()
        }
    }

    fn slot(&mut self, provider: &SharedName) -> usize {
        match self
            .providers
            .iter()
            .position(|p| p.name.as_str() == provider.as_str())
        {
            Some(i) => i,
            None => {
                self.providers.push(ProviderCounts {
                    name: provider.clone(),
                    counts: [[0; CATEGORIES]; OUTCOMES],
                    conclusive_kept: 0,
                });
                self.providers.len() - 1
            }
        }
    }

    /// Counts one attempt. `at` is only asked for when the verdict is conclusive.
    pub fn add(&mut self, verdict: &Verdict, reply: &str, at: impl FnOnce() -> At) {
        self.add_count(&verdict.provider, verdict.outcome, verdict.category, 1);
        let pause = verdict
            .pause_seconds
            .filter(|_| verdict.category == Category::IpRateLimited);
        if (verdict.conclusive && verdict.category == Category::IpBlocklisted) || pause.is_some() {
            self.push_conclusive(Conclusive {
                provider: verdict.provider.clone(),
                reply: reply.to_string(),
                at: at(),
                named_ip: verdict.ip,
                pause_seconds: pause,
            });
        }
    }

    /// Adds `count` attempts to one row.
    pub fn add_count(
        &mut self,
        provider: &SharedName,
        outcome: Outcome,
        category: Category,
        count: u64,
    ) {
        let i = self.slot(provider);
        let cell = &mut self.providers[i].counts[outcome_slot(outcome)][category_slot(category)];
        *cell = cell.saturating_add(count);
    }

    /// Keeps a conclusive reply (its attempt must be counted with `add_count`).
    pub fn push_conclusive(&mut self, conclusive: Conclusive<At>) {
        let i = self.slot(&conclusive.provider);
        let kept = &mut self.providers[i].conclusive_kept;
        if self.conclusive_cap.is_some_and(|cap| *kept >= cap) {
            self.dropped_conclusive = self.dropped_conclusive.saturating_add(1);
            return;
        }
        *kept += 1;
        self.conclusive.push(conclusive);
    }

    /// Adds everything `other` counted (its conclusive replies after these).
    pub fn merge(&mut self, other: AttemptCounts<At>) {
        for p in &other.providers {
            for outcome in Outcome::ALL {
                for category in Category::ALL {
                    let n = p.counts[outcome_slot(outcome)][category_slot(category)];
                    if n > 0 {
                        self.add_count(&p.name, outcome, category, n);
                    }
                }
            }
        }
        self.dropped_conclusive = self
            .dropped_conclusive
            .saturating_add(other.dropped_conclusive);
        for c in other.conclusive {
            self.push_conclusive(c);
        }
    }

    pub fn attempts(&self) -> u64 {
        self.providers
            .iter()
            .flat_map(|p| p.counts.iter().flatten())
            .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    pub fn is_empty(&self) -> bool {
        self.attempts() == 0 && self.conclusive.is_empty() && self.dropped_conclusive == 0
    }

    pub fn has_conclusive(&self) -> bool {
        !self.conclusive.is_empty()
    }

    /// The conclusive replies kept, in the order they were counted.
    pub fn conclusive(&self) -> &[Conclusive<At>] {
        &self.conclusive
    }

    pub fn into_conclusive(self) -> Vec<Conclusive<At>> {
        self.conclusive
    }

    /// Conclusive replies left out over the cap.
    pub fn dropped_conclusive(&self) -> u64 {
        self.dropped_conclusive
    }

    /// Non-zero rows sorted by provider, outcome word, category word.
    pub fn totals(&self) -> Vec<TotalCount> {
        let mut rows = Vec::new();
        for p in &self.providers {
            for outcome in Outcome::ALL {
                for category in Category::ALL {
                    let count = p.counts[outcome_slot(outcome)][category_slot(category)];
                    if count > 0 {
                        rows.push(TotalCount {
                            provider: p.name.to_string(),
                            outcome,
                            category,
                            count,
                        });
                    }
                }
            }
        }
        rows.sort_by(|a, b| {
            (a.provider.as_str(), a.outcome.as_str(), a.category.as_str()).cmp(&(
                b.provider.as_str(),
                b.outcome.as_str(),
                b.category.as_str(),
            ))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::classifier::Classifier;

    fn verdict(reply: &str, domain: &str) -> Verdict {
        Classifier::builtin().classify_text(reply, Some(domain), None)
    }

    #[test]
    fn rows_are_sorted_by_words_and_conclusive_replies_kept() {
        let ban = "550 5.7.606 Access denied, banned sending IP [203.0.113.10]";
        let mut counts: AttemptCounts<u32> = AttemptCounts::default();
        counts.add(
            &verdict("250 2.0.0 OK", "gmail.com"),
            "250 2.0.0 OK",
            || unreachable!("not conclusive"),
        );
        counts.add(&verdict(ban, "hotmail.com"), ban, || 1);
        counts.add(&verdict(ban, "hotmail.com"), ban, || 2);
        counts.add(&verdict("550 5.1.1 user unknown", "hotmail.com"), "", || 3);
        counts.add(&verdict("250 ok", "hotmail.com"), "", || 4);
        let rows: Vec<(String, &str, &str, u64)> = counts
            .totals()
            .into_iter()
            .map(|r| (r.provider, r.outcome.as_str(), r.category.as_str(), r.count))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("google".into(), "delivered", "none", 1),
                ("microsoft".into(), "bounced", "ip_blocklisted", 2),
                ("microsoft".into(), "bounced", "recipient_unknown", 1),
                ("microsoft".into(), "delivered", "none", 1),
            ]
        );
        assert_eq!(counts.attempts(), 5);
        assert_eq!(
            counts.conclusive().iter().map(|c| c.at).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            counts.conclusive()[0].named_ip,
            Some("203.0.113.10".parse().unwrap())
        );
    }

    #[test]
    fn the_cap_drops_texts_not_attempts_and_merge_adds_up() {
        let ban = "553 5.7.2 [TSS09] All messages from 203.0.113.10 will be permanently deferred";
        let mut a: AttemptCounts<u32> = AttemptCounts::with_conclusive_cap(2);
        for i in 0..5 {
            a.add(&verdict(ban, "yahoo.com"), ban, || i);
        }
        assert_eq!(
            (a.attempts(), a.conclusive().len(), a.dropped_conclusive()),
            (5, 2, 3)
        );
        let mut b: AttemptCounts<u32> = AttemptCounts::default();
        b.add(&verdict(ban, "yahoo.com"), ban, || 9);
        b.add(&verdict("250 ok", "gmail.com"), "", || 9);
        a.merge(b);
        assert_eq!(
            (a.attempts(), a.conclusive().len(), a.dropped_conclusive()),
            (7, 2, 4)
        );
        assert_eq!(a.totals().iter().map(|r| r.count).sum::<u64>(), 7);
        assert!(!a.is_empty() && AttemptCounts::<u32>::default().is_empty());
    }
}
