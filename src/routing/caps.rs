//! Cap arithmetic: how an IP's hourly cap on one route becomes what one of its
//! sender replicas may send, window by window.
//!
//! The compiler already folds the warm-up schedule, the probe trickle, the
//! allowance and the route throttle into each target's `hourly_cap`; here that
//! cap is shared among the IP's ready replicas and cut into short windows.
//!
//! A replica does not know which of the `R` replicas it is, so each one takes
//! exactly `cap / R` as a fraction: after `n` windows of `w` ms a replica may
//! have sent `floor(n * w * cap / (3_600_000 * R))` messages. The `R` replicas
//! together never exceed the cap over any run of whole windows, and fall short of
//! it by less than `R` messages (one per replica, the rounding), whatever the cap:
//! 1/h and 1,000,000/h are the same arithmetic. Windows are counted from the Unix
//! epoch, so the same window has the same budget on every replica.
//!
//! Postfix's own `<transport>_transport_rate_delay` is whole seconds, so it can
//! only space a transport at 3,600/h or slower, and it counts from the end of
//! each delivery. It is rendered, rounded *down*, for a sender whose agent does
//! not pace (`--no-pace`); the agent's pacer sets it to 0 and releases each
//! window's budget itself, which makes the count exact.

/// One replica's share of an IP's hourly cap on one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaShare {
    /// The IP's cap on the route, messages per hour (at least 1).
    pub per_hour: u64,
    /// Ready replicas of the IP sharing it (at least 1).
    pub replicas: u32,
}

const MS_PER_HOUR: u128 = 3_600_000;

impl ReplicaShare {
    /// The share of one of `ready_replicas` replicas of a cap; `None` when the
    /// route is uncapped (`cap` absent) or the cap is not a positive number.
    /// No ready replica counts as one: the replica asking is running.
    pub fn new(hourly_cap: Option<i64>, ready_replicas: u32) -> Option<ReplicaShare> {
        let cap = u64::try_from(hourly_cap?).ok().filter(|c| *c >= 1)?;
        Some(ReplicaShare {
            per_hour: cap,
            replicas: ready_replicas.max(1),
        })
    }

    /// Messages this replica may have sent after `windows` windows of `window_ms`.
    pub fn cumulative(&self, window_ms: u64, windows: u64) -> u64 {
        let numerator = u128::from(windows) * u128::from(window_ms) * u128::from(self.per_hour);
        let denominator = MS_PER_HOUR * u128::from(self.replicas);
        u64::try_from(numerator / denominator).unwrap_or(u64::MAX)
    }

    /// Messages this replica may send in window `index` (counted from the epoch).
    pub fn window_allowance(&self, window_ms: u64, index: u64) -> u64 {
        self.cumulative(window_ms, index.saturating_add(1)) - self.cumulative(window_ms, index)
    }

    /// The Postfix rate delay (whole seconds) for this share: the longest
    /// whole-second spacing that still lets the replica reach its share, 0 when
    /// the share is above one message a second (the pacer alone keeps it).
    pub fn rate_delay_seconds(&self) -> u64 {
        3600 * u64::from(self.replicas) / self.per_hour
    }

    /// This replica's hourly share, rounded down (for display and metrics).
    pub fn per_hour_floor(&self) -> u64 {
        self.per_hour / u64::from(self.replicas)
    }
}

/// Simultaneous connections of one replica when the IP may hold
/// `max_connections` to a provider: an equal share, at least one (a replica
/// that may not connect could never send).
pub fn replica_connections(max_connections: u32, ready_replicas: u32) -> u32 {
    (max_connections / ready_replicas.max(1)).max(1)
}

/// The window pacer of one transport: how much of the current window's budget
/// is left. Deliveries past the budget (those in flight when the transport
/// was held) are a debt the next windows pay first; budget left unused at the
/// end of a window is not carried, so a quiet minute never becomes a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCredit {
    window: u64,
    credit: i64,
}

/// How many skipped windows are paid one by one before the debt is forgiven
/// (a transport idle that long owes nothing).
const MAX_CATCH_UP_WINDOWS: u64 = 10_000;

impl WindowCredit {
    /// The credit at the start of window `index`.
    pub fn new(share: &ReplicaShare, window_ms: u64, index: u64) -> WindowCredit {
        WindowCredit {
            window: index,
            credit: to_i64(share.window_allowance(window_ms, index)),
        }
    }

    /// The window the credit is for.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Moves to window `index` (never back): each window passed adds its
    /// allowance to a debt, or replaces a positive credit.
    pub fn advance(&mut self, share: &ReplicaShare, window_ms: u64, index: u64) {
        if index <= self.window {
            return;
        }
        if index - self.window > MAX_CATCH_UP_WINDOWS {
            *self = WindowCredit::new(share, window_ms, index);
            return;
        }
        for w in self.window + 1..=index {
            self.credit = self.credit.min(0) + to_i64(share.window_allowance(window_ms, w));
        }
        self.window = index;
    }

    /// Counts `deliveries` made in the current window.
    pub fn spend(&mut self, deliveries: u64) {
        self.credit = self.credit.saturating_sub(to_i64(deliveries));
    }

    /// Messages left in this window (0 when spent or in debt).
    pub fn left(&self) -> u64 {
        u64::try_from(self.credit.max(0)).unwrap_or(0)
    }

    /// Whether the transport must be held until a later window.
    pub fn spent(&self) -> bool {
        self.credit <= 0
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn share(cap: i64, replicas: u32) -> ReplicaShare {
        ReplicaShare::new(Some(cap), replicas).unwrap()
    }

    #[test]
    fn a_share_needs_a_positive_cap_and_counts_at_least_one_replica() {
        assert_eq!(ReplicaShare::new(None, 3), None);
        assert_eq!(ReplicaShare::new(Some(0), 3), None);
        assert_eq!(ReplicaShare::new(Some(-5), 3), None);
        assert_eq!(share(600, 0).replicas, 1);
    }

    #[test]
    fn caps_above_one_a_second_are_exact_over_an_hour() {
        // 20,000/h on one replica, 10 s windows: 360 windows of 55 or 56.
        let s = share(20_000, 1);
        let total: u64 = (0..360).map(|k| s.window_allowance(10_000, k)).sum();
        assert_eq!(total, 20_000);
        assert_eq!(s.rate_delay_seconds(), 0);
        // 36,000/h on three replicas: each sends 12,000 and the IP 36,000.
        let s = share(36_000, 3);
        let per_replica: u64 = (0..60).map(|k| s.window_allowance(60_000, k)).sum();
        assert_eq!(per_replica, 12_000);
        // 100,000/h, one replica, 1 s windows.
        let s = share(100_000, 1);
        let total: u64 = (0..3600).map(|k| s.window_allowance(1000, k)).sum();
        assert_eq!(total, 100_000);
    }

    #[test]
    fn low_caps_spread_single_messages_over_windows() {
        // 600/h on three replicas: 200/h each, one message every 18 s.
        let s = share(600, 3);
        assert_eq!(s.rate_delay_seconds(), 18);
        let three_minutes: u64 = (0..18).map(|k| s.window_allowance(10_000, k)).sum();
        assert_eq!(three_minutes, 10);
        // 1/h: one message in the hour.
        let s = share(1, 1);
        assert_eq!(s.rate_delay_seconds(), 3600);
        let hour: u64 = (0..360).map(|k| s.window_allowance(10_000, k)).sum();
        assert_eq!(hour, 1);
    }

    #[test]
    fn rate_delays_round_down_to_never_ask_less_than_the_share() {
        // ceil would give 2 s = 1,800/h for 2,000/h; floor gives 1 s and the pacer trims.
        assert_eq!(share(2000, 1).rate_delay_seconds(), 1);
        assert_eq!(share(3600, 1).rate_delay_seconds(), 1);
        assert_eq!(share(3601, 1).rate_delay_seconds(), 0);
        assert_eq!(share(7, 1).rate_delay_seconds(), 514);
    }

    #[test]
    fn connections_are_shared_with_one_at_least() {
        assert_eq!(replica_connections(10, 3), 3);
        assert_eq!(replica_connections(2, 3), 1);
        assert_eq!(replica_connections(2, 0), 2);
    }

    #[test]
    fn an_overshoot_is_paid_by_the_next_window_and_unused_budget_is_lost() {
        let s = share(36_000, 1); // 100 per 10 s window
        let mut credit = WindowCredit::new(&s, 10_000, 0);
        credit.spend(130);
        assert!(credit.spent());
        credit.advance(&s, 10_000, 1);
        assert_eq!(credit.left(), 70);
        credit.spend(10);
        credit.advance(&s, 10_000, 2);
        assert_eq!(credit.left(), 100, "60 unused messages are not carried");
        credit.spend(350);
        credit.advance(&s, 10_000, 4); // two windows pay 200 of the 250 owed
        assert!(credit.spent());
        credit.advance(&s, 10_000, 5);
        assert_eq!(credit.left(), 50);
        credit.advance(&s, 10_000, 3);
        assert_eq!(credit.window(), 5, "time never goes back");
    }

    proptest! {
        #[test]
        fn replicas_together_keep_within_r_of_the_cap(
            cap in 1i64..=200_000,
            replicas in 1u32..=10,
            window_ms in prop::sample::select(vec![250u64, 1000, 5000, 10_000, 60_000]),
            start in 0u64..1_000_000_000,
        ) {
            let s = share(cap, replicas);
            let windows = 3_600_000 / window_ms;
            let per_replica: u64 = (start..start + windows)
                .map(|k| s.window_allowance(window_ms, k))
                .sum();
            let all = per_replica * u64::from(replicas);
            let cap = u64::try_from(cap).unwrap();
            prop_assert!(all <= cap + u64::from(replicas), "{all} > {cap}");
            prop_assert!(all + u64::from(replicas) >= cap, "{all} far below {cap}");
        }

        #[test]
        fn a_paced_transport_never_sends_more_than_its_windows_allow_plus_one_overshoot(
            cap in 1i64..=200_000,
            demand in prop::collection::vec(0u64..500, 1..200),
        ) {
            // A transport that sends `demand[k]` in window k unless held, and
            // overshoots by at most 5 once its budget is spent: the debt never
            // exceeds one overshoot, so neither does the excess.
            let s = share(cap, 1);
            let w = 10_000;
            let mut credit = WindowCredit::new(&s, w, 0);
            let mut sent = 0u64;
            for (k, want) in demand.iter().enumerate() {
                credit.advance(&s, w, k as u64);
                let send = if credit.spent() { 0 } else { (*want).min(credit.left() + 5) };
                credit.spend(send);
                sent += send;
            }
            let allowed = s.cumulative(w, demand.len() as u64);
            prop_assert!(sent <= allowed + 5, "{sent} > {allowed} + 5");
        }

        #[test]
        fn a_saturated_transport_sends_its_whole_share(
            cap in 1i64..=200_000,
            windows in 1u64..500,
        ) {
            let s = share(cap, 1);
            let w = 10_000;
            let mut credit = WindowCredit::new(&s, w, 0);
            let mut sent = 0u64;
            for k in 0..windows {
                credit.advance(&s, w, k);
                let send = credit.left();
                credit.spend(send);
                sent += send;
            }
            prop_assert_eq!(sent, s.cumulative(w, windows));
        }
    }
}
