//! Turns classified delivery attempts into the engine's [`Feedback`] signals.
//!
//! Both the agent (counts over a few seconds) and the offline replay (one line at
//! a time) report through this, so the engine sees the same shape of evidence
//! whichever driver feeds it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use jiff::Timestamp;

use super::classifier::Verdict;
use super::engine::{ConclusiveReply, Feedback};
use crate::vocab::{Category, Outcome};

/// Delivery attempts per provider, waiting to be reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    per_provider: BTreeMap<String, Feedback>,
    sender: Option<IpAddr>,
}

impl Tally {
    /// A tally of the attempts of one sending IP: replies naming only other
    /// addresses count as no evidence against it ([`Verdict::for_sender`]).
    pub fn for_sender(sender: IpAddr) -> Self {
        Tally {
            sender: Some(sender),
            ..Tally::default()
        }
    }

    /// Counts one attempt. `reply` is kept as evidence when the verdict is conclusive.
    pub fn add(&mut self, verdict: &Verdict, reply: &str, at: Timestamp) {
        let seen;
        let verdict = match self.sender {
            Some(sender) if verdict.ip.is_some_and(|ip| ip != sender) => {
                seen = verdict.clone().for_sender(sender, reply);
                &seen
            }
            _ => verdict,
        };
        let provider = verdict.provider.as_str();
        let entry = self
            .per_provider
            .entry(provider.to_string())
            .or_insert_with(|| Feedback {
                provider: provider.to_string(),
                ..Feedback::default()
            });
        entry.attempts += 1;
        if verdict.outcome == Outcome::Delivered {
            entry.delivered += 1;
        }
        match verdict.category {
            Category::IpBlocklisted => {
                entry.ip_blocklisted += 1;
                if verdict.conclusive {
                    entry.conclusive.push(ConclusiveReply {
                        reply: reply.to_string(),
                        named_ip: verdict.ip,
                        at,
                        pause_seconds: None,
                    });
                }
            }
            Category::IpRateLimited => {
                entry.ip_rate_limited += 1;
                if let Some(seconds) = verdict.pause_seconds {
                    entry.conclusive.push(ConclusiveReply {
                        reply: reply.to_string(),
                        named_ip: verdict.ip,
                        at,
                        pause_seconds: Some(seconds),
                    });
                }
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.per_provider.is_empty()
    }

    /// Whether a conclusive reply is waiting: it should be reported at once.
    pub fn has_conclusive(&self) -> bool {
        self.per_provider.values().any(|f| !f.conclusive.is_empty())
    }

    /// The feedback per provider (sorted by provider), leaving the tally empty.
    pub fn drain(&mut self) -> Vec<Feedback> {
        std::mem::take(&mut self.per_provider)
            .into_values()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::classifier::Classifier;

    #[test]
    fn counts_follow_the_verdicts_and_keep_conclusive_evidence() {
        let classifier = Classifier::builtin();
        let at: Timestamp = "2021-11-05T08:10:00Z".parse().unwrap();
        let mut tally = Tally::default();
        let ban = "550 5.7.606 Access denied, banned sending IP [203.0.113.12]";
        tally.add(
            &classifier.classify_text(ban, Some("hotmail.com"), None),
            ban,
            at,
        );
        tally.add(
            &classifier.classify_text("250 2.0.0 OK", Some("outlook.com"), None),
            "250 2.0.0 OK",
            at,
        );
        tally.add(
            &classifier.classify_text("550 5.1.1 user unknown", Some("gmail.com"), None),
            "",
            at,
        );
        assert!(tally.has_conclusive());
        let feedback = tally.drain();
        assert!(tally.is_empty());
        assert_eq!(feedback.len(), 2);
        let google = &feedback[0];
        assert_eq!(
            (
                google.provider.as_str(),
                google.attempts,
                google.delivered,
                google.ip_blocklisted
            ),
            ("google", 1, 0, 0)
        );
        let microsoft = &feedback[1];
        assert_eq!(
            (
                microsoft.attempts,
                microsoft.delivered,
                microsoft.ip_blocklisted
            ),
            (2, 1, 1)
        );
        assert_eq!(microsoft.conclusive[0].reply, ban);
        assert_eq!(
            microsoft.conclusive[0].named_ip,
            Some("203.0.113.12".parse().unwrap())
        );
    }

    #[test]
    fn a_pause_reply_is_kept_among_the_rate_limited_attempts() {
        let classifier = Classifier::builtin();
        let at: Timestamp = "2021-11-05T08:10:00Z".parse().unwrap();
        let reply = "421 4.7.0 [TSS04] Messages from 203.0.113.12 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1";
        let mut tally = Tally::default();
        tally.add(
            &classifier.classify_text(reply, Some("yahoo.com"), None),
            reply,
            at,
        );
        assert!(tally.has_conclusive(), "reported at once");
        let feedback = tally.drain();
        assert_eq!(
            (feedback[0].ip_rate_limited, feedback[0].ip_blocklisted),
            (1, 0)
        );
        assert_eq!(feedback[0].conclusive[0].pause_seconds, Some(4 * 3600));
    }
}
