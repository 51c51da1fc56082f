//! Mail waiting in the senders' queues, held as cohorts (same provider, same
//! submission slice, same number of attempts) rather than one entry per message.
//!
//! Deferred mail is retried on Postfix's schedule: the first retry after
//! `minimal_backoff_time` (300 s), each later one twice as long, at most
//! `maximal_backoff_time` (4000 s); mail still undelivered after
//! `maximal_queue_lifetime` (5 days) bounces.

/// Postfix's `minimal_backoff_time`.
pub const MIN_BACKOFF_SECONDS: i64 = 300;
/// Postfix's `maximal_backoff_time`.
pub const MAX_BACKOFF_SECONDS: i64 = 4000;
/// Postfix's `maximal_queue_lifetime`.
pub const QUEUE_LIFETIME_SECONDS: i64 = 5 * 86_400;

/// Messages that share their history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub count: u64,
    /// The slice the messages were submitted in.
    pub submitted: u32,
    /// Delivery attempts made so far.
    pub attempts: u16,
}

/// Where queued mail is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// In the queue of one sender (an IP's pods): retried from that IP while it
    /// may still send to the provider.
    Sender(usize),
    /// Held for the route as a whole (a deferring route, or mail waiting for
    /// capacity): whoever the route names next sends it.
    Route,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub holder: Holder,
    pub provider: usize,
    pub piece: Piece,
    /// Deferred after a failed attempt (retried on the backoff schedule, moved
    /// forward by a queue flush), as opposed to waiting for capacity.
    pub deferred: bool,
}

/// Mail due in each future slice.
#[derive(Clone, Debug, Default)]
pub struct DueQueue {
    slots: Vec<Vec<Held>>,
    /// Mail due after the last slice: still queued when the simulation ends.
    after_end: Vec<Held>,
}

impl DueQueue {
    pub fn new(slices: usize) -> Self {
        DueQueue {
            slots: vec![Vec::new(); slices],
            after_end: Vec::new(),
        }
    }

    pub fn slices(&self) -> usize {
        self.slots.len()
    }

    /// Queues `held` for slice `due` (after the last slice: it stays queued).
    pub fn push(&mut self, due: usize, held: Held) {
        match self.slots.get_mut(due) {
            Some(slot) => slot.push(held),
            None => self.after_end.push(held),
        }
    }

    /// Everything due in `slice`, leaving it empty.
    pub fn take(&mut self, slice: usize) -> Vec<Held> {
        self.slots
            .get_mut(slice)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// `postqueue -f`: every deferred message is tried again in slice `to`.
    pub fn flush(&mut self, to: usize) {
        let mut moved = Vec::new();
        let later = self.slots.iter_mut().skip(to + 1);
        for slot in later.chain(std::iter::once(&mut self.after_end)) {
            slot.retain(|held| {
                if held.deferred {
                    moved.push(*held);
                    false
                } else {
                    true
                }
            });
        }
        for held in moved {
            self.push(to, held);
        }
    }

    /// Messages still queued anywhere at or after `from`.
    pub fn queued_from(&self, from: usize) -> u64 {
        self.slots
            .iter()
            .skip(from)
            .flatten()
            .chain(&self.after_end)
            .map(|h| h.piece.count)
            .sum()
    }

    pub fn is_empty_from(&self, from: usize) -> bool {
        self.after_end.is_empty() && self.slots.iter().skip(from).all(Vec::is_empty)
    }
}

/// Seconds until the next attempt after the `attempts`-th failed one.
pub fn backoff_seconds(attempts: u16) -> i64 {
    let doublings = u32::from(attempts.saturating_sub(1)).min(20);
    MIN_BACKOFF_SECONDS
        .saturating_mul(1 << doublings)
        .clamp(MIN_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS)
}

/// Splits `take` messages off `pieces` in proportion to their counts (the
/// remainder from the oldest pieces first); returns the part taken.
pub fn split_off(pieces: &mut Vec<Piece>, take: u64) -> Vec<Piece> {
    let total: u64 = pieces.iter().map(|p| p.count).sum();
    if take >= total {
        return std::mem::take(pieces);
    }
    let mut shares: Vec<u64> = pieces
        .iter()
        .map(|p| ((u128::from(p.count) * u128::from(take)) / u128::from(total.max(1))) as u64)
        .collect();
    let mut left = take - shares.iter().sum::<u64>();
    for (share, piece) in shares.iter_mut().zip(pieces.iter()) {
        if left == 0 {
            break;
        }
        if *share < piece.count {
            *share += 1;
            left -= 1;
        }
    }
    let mut taken = Vec::new();
    for (piece, share) in pieces.iter_mut().zip(shares) {
        if share > 0 {
            taken.push(Piece {
                count: share,
                ..*piece
            });
            piece.count -= share;
        }
    }
    pieces.retain(|p| p.count > 0);
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_300_to_4000_seconds() {
        let schedule: Vec<i64> = (1..=7).map(backoff_seconds).collect();
        assert_eq!(schedule, vec![300, 600, 1200, 2400, 4000, 4000, 4000]);
        assert_eq!(backoff_seconds(0), 300);
        assert_eq!(backoff_seconds(u16::MAX), 4000);
    }

    #[test]
    fn split_off_keeps_every_message() {
        let mut pieces = vec![
            Piece {
                count: 7,
                submitted: 1,
                attempts: 0,
            },
            Piece {
                count: 3,
                submitted: 2,
                attempts: 1,
            },
        ];
        let taken = split_off(&mut pieces, 5);
        assert_eq!(taken.iter().map(|p| p.count).sum::<u64>(), 5);
        assert_eq!(pieces.iter().map(|p| p.count).sum::<u64>(), 5);
        assert_eq!(
            split_off(&mut pieces, 99)
                .iter()
                .map(|p| p.count)
                .sum::<u64>(),
            5
        );
        assert!(pieces.is_empty());
    }

    #[test]
    fn a_flush_brings_deferred_mail_forward_only() {
        let piece = Piece {
            count: 1,
            submitted: 0,
            attempts: 1,
        };
        let mut q = DueQueue::new(10);
        q.push(
            8,
            Held {
                holder: Holder::Sender(0),
                provider: 0,
                piece,
                deferred: true,
            },
        );
        q.push(
            8,
            Held {
                holder: Holder::Route,
                provider: 0,
                piece,
                deferred: false,
            },
        );
        q.push(
            50,
            Held {
                holder: Holder::Route,
                provider: 0,
                piece,
                deferred: true,
            },
        );
        assert_eq!(q.queued_from(10), 1, "mail due after the end stays queued");
        q.flush(3);
        assert_eq!(
            q.take(3).len(),
            2,
            "deferred mail, also mail due after the end"
        );
        assert_eq!(
            q.take(8).len(),
            1,
            "mail waiting for capacity is not flushed"
        );
        assert!(q.is_empty_from(0));
    }
}
