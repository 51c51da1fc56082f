//! Whether a `Bind` address can be bound in this pod: the address must be on
//! one of its interfaces (hostNetwork on a node holding it, or a secondary
//! interface). Binding a socket to it is the question Postfix will ask, so
//! the check asks the kernel the same way instead of reading interface lists.
//!
//! The agent loop checks the address of every configuration it applies, and
//! again every [`BindWatch`] period (an interface may come up later), and
//! reports the answer in `ip_binding` of its feedback reports: the receiver
//! turns it into the IP's `IpBound` condition, and the route compiler moves
//! the IP's routes to other IPs while it is `False`.

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::agent::config::ConfigSnapshot;
use crate::agent::report::{IpBindingReport, MAX_BINDING_DETAIL_CHARS};
use crate::routing::sender_config::MASTER_CF_KEY;

/// How often `sender run` checks its bind address again.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);

/// The address the rendered master.cf binds transports to, if any.
pub fn bound_address(master_cf: &str) -> Option<IpAddr> {
    master_cf.lines().find_map(|line| {
        let option = line.trim().strip_prefix("-o ")?;
        let (key, value) = option.split_once('=')?;
        matches!(key.trim(), "smtp_bind_address" | "smtp_bind_address6")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// `Ok` when `ip` is on an interface of this network namespace, else the
/// kernel's reason (typically "Cannot assign requested address").
pub fn check_address(ip: IpAddr) -> Result<(), std::io::Error> {
    UdpSocket::bind((ip, 0)).map(|_| ())
}

/// The check a sender reports: whether this network namespace can bind `ip`.
pub fn check_binding(ip: IpAddr) -> IpBindingReport {
    match check_address(ip) {
        Ok(()) => IpBindingReport {
            address: ip,
            bound: true,
            detail: None,
        },
        Err(e) => IpBindingReport {
            address: ip,
            bound: false,
            detail: Some(
                e.to_string()
                    .chars()
                    .take(MAX_BINDING_DETAIL_CHARS)
                    .collect(),
            ),
        },
    }
}

/// The agent loop's check of its source IP: at start, after each
/// configuration, then every period. The receiver knows the pool's binding
/// mode and decides what the answer means (nothing, under `Snat`); the
/// configuration only tells this log how loud to be.
pub struct BindWatch {
    every: Option<Duration>,
    address: IpAddr,
    /// Whether the configuration last applied binds transports to the
    /// address; `None` before one.
    binds: Option<bool>,
    /// `None`: due at the next poll.
    next: Option<Instant>,
    last: Option<IpBindingReport>,
}

impl BindWatch {
    /// `every: None` never checks.
    pub fn new(every: Option<Duration>, address: IpAddr) -> Self {
        BindWatch {
            every,
            address,
            binds: None,
            next: None,
            last: None,
        }
    }

    /// A configuration was applied: the address is checked at the next poll.
    pub fn configure(&mut self, snapshot: &ConfigSnapshot) {
        let master_cf = snapshot
            .files
            .get(MASTER_CF_KEY)
            .map(|raw| String::from_utf8_lossy(raw).into_owned())
            .unwrap_or_default();
        self.binds = Some(bound_address(&master_cf) == Some(self.address));
        self.next = None;
    }

    /// Checks when due; returns the answer when it differs from the last one
    /// (the first answer included), so the caller reports and logs changes.
    pub fn poll(&mut self, now: Instant) -> Option<IpBindingReport> {
        let every = self.every?;
        if self.next.is_some_and(|next| now < next) {
            return None;
        }
        self.next = Some(now + every);
        let check = check_binding(self.address);
        if self.last.as_ref() == Some(&check) {
            return None;
        }
        let ip = check.address;
        match (&check.detail, self.binds) {
            (Some(detail), Some(true)) => tracing::error!(
                condition = "IpBound",
                status = "False",
                "spec.ipBinding.mode is Bind but {ip} is not on an interface of this pod ({detail}): its deliveries would fail, so the pool's routes leave this IP until it is (mail handed to this sender goes on through the route hand-off). Run the pod on a node that holds the address (hostNetwork and spec.ips[].nodeSelector), or use mode: Snat behind an egress gateway"
            ),
            (Some(detail), _) => tracing::info!(
                "{ip} is not on an interface of this pod ({detail}): right behind an egress gateway (spec.ipBinding.mode: Snat); with mode Bind the IP's IpBound condition turns False"
            ),
            (None, _) => tracing::info!(
                condition = "IpBound",
                status = "True",
                "{ip} is on an interface of this pod; transports can bind to it"
            ),
        }
        self.last = Some(check.clone());
        Some(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(master_cf: &str) -> ConfigSnapshot {
        ConfigSnapshot {
            version: "v1".into(),
            digest: "d".into(),
            files: [(MASTER_CF_KEY.to_string(), master_cf.as_bytes().to_vec())].into(),
        }
    }

    fn fragment(ip: &str) -> String {
        format!("mf-x unix - - n - - smtp\n  -o syslog_name=postfix/mf-x\n  -o smtp_bind_address={ip}\n")
    }

    #[test]
    fn the_bound_address_is_read_from_the_fragment_and_checked() {
        let fragment = fragment("127.0.0.1");
        assert_eq!(bound_address(&fragment), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(bound_address("mf-x unix - - n - - smtp\n"), None);
        assert!(check_address("127.0.0.1".parse().unwrap()).is_ok());
        // TEST-NET-3 is on no interface of a test machine.
        let err = check_address("203.0.113.77".parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable, "{err}");
    }

    #[test]
    fn an_address_on_no_interface_is_reported_unbound_with_the_kernels_reason() {
        let report = check_binding("203.0.113.77".parse().unwrap());
        assert_eq!(report.address, "203.0.113.77".parse::<IpAddr>().unwrap());
        assert!(!report.bound);
        let detail = report.detail.unwrap();
        assert!(detail.contains("assign requested address"), "{detail}");
        let report = check_binding("127.0.0.1".parse().unwrap());
        assert!(report.bound && report.detail.is_none());
    }

    #[test]
    fn the_watch_checks_at_start_after_each_configuration_and_every_period() {
        let start = Instant::now();
        let mut watch = BindWatch::new(
            Some(Duration::from_secs(60)),
            "203.0.113.77".parse().unwrap(),
        );
        let first = watch
            .poll(start)
            .expect("checked at start, before any configuration");
        assert!(!first.bound);
        assert_eq!(watch.poll(start + Duration::from_secs(1)), None, "not due");
        assert_eq!(
            watch.poll(start + Duration::from_secs(61)),
            None,
            "checked again, same answer: nothing new to report"
        );
        watch.configure(&snapshot(&fragment("203.0.113.77")));
        assert_eq!(
            watch.poll(start + Duration::from_secs(62)),
            None,
            "checked after the configuration, same answer"
        );
        let mut here = BindWatch::new(Some(Duration::from_secs(60)), "127.0.0.1".parse().unwrap());
        assert!(here.poll(start).unwrap().bound);
        let mut off = BindWatch::new(None, "203.0.113.77".parse().unwrap());
        off.configure(&snapshot(&fragment("203.0.113.77")));
        assert_eq!(
            off.poll(start),
            None,
            "a watch without a period never checks"
        );
    }
}
