//! Read-only answers for the route compiler and metrics.

use std::net::IpAddr;

use crate::api::{ProviderReputation, ReputationState, SenderPoolStatus};

/// What one (IP, provider) pair may send right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairView {
    pub state: ReputationState,
    /// Share (0-100) of the IP's normal hourly limit towards this provider.
    pub allowance_percent: i32,
    /// Absolute messages per hour while the IP warms up.
    pub hourly_cap: Option<i64>,
}

impl PairView {
    /// A pair nothing is known about: full volume.
    pub const HEALTHY: PairView = PairView {
        state: ReputationState::Healthy,
        allowance_percent: 100,
        hourly_cap: None,
    };

    fn of(pair: &ProviderReputation) -> PairView {
        PairView {
            state: pair.state,
            allowance_percent: pair.allowance_percent.clamp(0, 100),
            hourly_cap: pair.hourly_cap,
        }
    }
}

/// The state, allowance and cap of `ip` towards `provider` as status records it.
///
/// A pair without a record is Healthy at 100 %, unless the IP is warming up
/// (some other pair of it carries an hourly cap): then it is Warming, with that
/// cap and the lowest allowance of the IP's Warming pairs (1 % if none is
/// Warming). [`super::tick`] creates the pairs of every known provider of a
/// warming IP, so this fallback only serves providers it was not told about.
pub fn pair_view(status: &SenderPoolStatus, ip: &str, provider: &str) -> PairView {
    let wanted: Option<IpAddr> = ip.trim().parse().ok();
    let found = status
        .ips
        .iter()
        .find(|s| match (wanted, s.address.trim().parse::<IpAddr>()) {
            (Some(a), Ok(b)) => a == b,
            _ => s.address == ip,
        });
    let Some(ip_status) = found else {
        return PairView::HEALTHY;
    };
    if let Some(pair) = ip_status.pair(provider) {
        return PairView::of(pair);
    }
    let Some(cap) = ip_status
        .reputation
        .iter()
        .filter_map(|p| p.hourly_cap)
        .min()
    else {
        return PairView::HEALTHY;
    };
    let allowance = ip_status
        .reputation
        .iter()
        .filter(|p| p.state == ReputationState::Warming)
        .map(|p| p.allowance_percent.clamp(0, 100))
        .min()
        .unwrap_or(1);
    PairView {
        state: ReputationState::Warming,
        allowance_percent: allowance,
        hourly_cap: Some(cap),
    }
}
