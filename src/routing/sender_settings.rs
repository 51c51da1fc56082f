//! What a sender's Postfix needs from its SenderPool besides the routes: how
//! its source IP is reached (`spec.ipBinding.mode`), the name it announces
//! (`spec.ips[].heloName`), who may hand it mail (`spec.intake`), and how it
//! logs in to a relay that wants credentials. Each piece is rendered here as
//! its own lines of main.cf or master.cf, so the route renderer
//! ([`super::postfix`]) only places them.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::api::{BindMode, SenderPool};

use super::index::is_valid_host;

/// The password map written by the sender from the mounted relay Secrets
/// (`[host]:port username:password` per line, indexed with `postmap`).
pub const SASL_PASSWORD_FILE: &str = "mailfleet_sasl_passwd";
/// The status filter of the relay transport (a `regexp:` table).
pub const RELAY_STATUS_FILTER_FILE: &str = "mailfleet_relay_status_filter";
/// The master.cf service that logs in to relays.
pub const RELAY_TRANSPORT: &str = "mf-relay";

/// The pool settings one sender's Postfix files depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SenderSettings {
    pub bind: BindMode,
    /// `smtp_helo_name`; `None` leaves Postfix's own (`$myhostname`).
    pub helo_name: Option<String>,
    /// `mynetworks` besides loopback: clients allowed to relay.
    pub intake_cidrs: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("spec.ips[{ip}].heloName {name:?} is not a host name; write the fully qualified name the IP's PTR record gives, such as mta10.mail.example.net")]
    HeloName { ip: String, name: String },
    #[error("spec.intake.allowedCidrs entry {cidr:?} is not a network; write address/prefix length such as 10.42.0.0/16")]
    Cidr { cidr: String },
}

impl SenderSettings {
    /// The settings of `ip` in `pool` (default settings when the pool does not list it).
    pub fn of(pool: &SenderPool, ip: &str) -> Self {
        let key = ip.trim().parse::<IpAddr>().ok();
        let own = pool
            .spec
            .ips
            .iter()
            .find(|i| i.address.trim().parse::<IpAddr>().ok() == key && key.is_some());
        SenderSettings {
            bind: pool.spec.ip_binding.mode,
            helo_name: own.and_then(|i| i.helo_name.clone()),
            intake_cidrs: pool.spec.intake.allowed_cidrs.clone(),
        }
    }

    /// Refuses what cannot be written into main.cf; the API server's CEL
    /// rules refuse the same, this guards manifests read from files.
    pub fn check(&self, ip: &str) -> Result<(), SettingsError> {
        if let Some(name) = &self.helo_name {
            if !is_host_name(name) {
                return Err(SettingsError::HeloName {
                    ip: ip.to_string(),
                    name: name.clone(),
                });
            }
        }
        if let Some(bad) = self.intake_cidrs.iter().find(|c| parse_cidr(c).is_none()) {
            return Err(SettingsError::Cidr { cidr: bad.clone() });
        }
        Ok(())
    }

    /// Whether transports bind to the source IP (`smtp_bind_address`).
    pub fn binds(&self) -> bool {
        self.bind == BindMode::Bind
    }

    /// main.cf lines: the HELO name and the intake restrictions.
    /// The main.cf parameters of the intake part of [`Self::main_cf`]: the
    /// sender image removes them from its own main.cf before the fragment is
    /// written ([`crate::sender::base::write_base`]), since Debian's main.cf
    /// sets `mynetworks` and `smtpd_relay_restrictions` too.
    pub const INTAKE_PARAMETERS: [&'static str; 4] = [
        "mynetworks",
        "smtpd_relay_restrictions",
        "smtpd_recipient_restrictions",
        "relay_domains",
    ];

    pub fn main_cf(&self) -> String {
        let mut out = String::new();
        if let Some(name) = &self.helo_name {
            let _ = writeln!(
                out,
                "# the name this IP's PTR record gives (spec.ips[].heloName)"
            );
            let _ = writeln!(out, "smtp_helo_name = {name}");
        }
        let mut networks = vec!["127.0.0.0/8".to_string(), "[::1]/128".to_string()];
        networks.extend(self.intake_cidrs.iter().filter_map(|c| parse_cidr(c)));
        out.push_str(
            "# mail intake (spec.intake.allowedCidrs): only these clients may relay, every other is refused\n",
        );
        let _ = writeln!(out, "mynetworks = {}", networks.join(" "));
        out.push_str("smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n");
        out.push_str(
            "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n",
        );
        out.push_str("relay_domains =\n");
        out
    }
}

/// A network in Postfix's `mynetworks` form (`[2001:db8::]/32` for IPv6), or
/// `None` when `text` is not `address/prefix`.
pub fn parse_cidr(text: &str) -> Option<String> {
    let (address, length) = text.trim().split_once('/')?;
    let length: u8 = length.parse().ok()?;
    match address.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) if length <= 32 => Some(format!("{v4}/{length}")),
        IpAddr::V6(v6) if length <= 128 => Some(format!("[{v6}]/{length}")),
        _ => None,
    }
}

/// A fully qualified DNS host name: labels of letters, digits and inner
/// hyphens, at least two of them.
pub fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.contains('.')
        && name.parse::<IpAddr>().is_err()
        && is_valid_host(name)
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The master.cf service that logs in to a relay: SASL with the password
/// map, TLS required (the password never crosses in clear), and a failed or
/// refused login deferred instead of bounced.
pub fn relay_transport(map_directory: &str) -> String {
    let mut out = String::new();
    out.push_str(
        "# relays with credentialsSecret: log in over TLS; a refused login defers, never bounces\n",
    );
    let _ = writeln!(out, "{RELAY_TRANSPORT} unix - - n - - smtp");
    let _ = writeln!(out, "  -o syslog_name=postfix/{RELAY_TRANSPORT}");
    out.push_str("  -o smtp_sasl_auth_enable=yes\n");
    let _ = writeln!(
        out,
        "  -o smtp_sasl_password_maps=hash:{map_directory}/{SASL_PASSWORD_FILE}"
    );
    out.push_str("  -o smtp_sasl_security_options=noanonymous\n");
    out.push_str("  -o smtp_sasl_tls_security_options=noanonymous\n");
    out.push_str("  -o smtp_tls_security_level=encrypt\n");
    out.push_str("  -o smtp_sasl_auth_soft_bounce=yes\n");
    let _ = writeln!(
        out,
        "  -o smtp_delivery_status_filter=regexp:{map_directory}/{RELAY_STATUS_FILTER_FILE}"
    );
    out
}

/// The relay transport's status filter: a relay that refuses the session
/// (login, sender) rather than a recipient answers before RCPT TO; that is a
/// problem of ours to fix, so the mail waits.
pub fn relay_status_filter() -> String {
    let mut out = String::new();
    out.push_str(
        "# mailfleet relay filter (smtp_delivery_status_filter of the mf-relay transport).\n",
    );
    out.push_str("# A 5xx before RCPT TO (authentication required or refused, sender refused)\n");
    out.push_str("# is about the login, not the recipient: defer, so no mail bounces for it.\n");
    out.push_str(
        "/^5(\\.[0-9]+\\.[0-9]+ .*\\(in reply to (MAIL FROM|AUTH|EHLO|HELO|STARTTLS) command\\))$/\t4$1\n",
    );
    out.push_str("/^5(\\.[0-9]+\\.[0-9]+ .*SASL authentication failed.*)$/\t4$1\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_networks_are_checked() {
        assert!(is_host_name("mta10.mail.example.net"));
        assert!(is_host_name("mta10.mail.example.net."));
        for bad in [
            "mta10",
            "-a.example",
            "a_b.example",
            "203.0.113.10",
            "a..b",
            "x y.example",
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
        assert_eq!(parse_cidr("10.42.0.0/16").as_deref(), Some("10.42.0.0/16"));
        assert_eq!(parse_cidr("fd00::/64").as_deref(), Some("[fd00::]/64"));
        for bad in ["10.42.0.0", "10.42.0.0/33", "x/8", "fd00::/129"] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
        let settings = SenderSettings {
            helo_name: Some("mta 10".into()),
            ..SenderSettings::default()
        };
        let err = settings.check("203.0.113.10").unwrap_err().to_string();
        assert!(err.contains("spec.ips[203.0.113.10].heloName"), "{err}");
        let settings = SenderSettings {
            intake_cidrs: vec!["10.0.0.0".into()],
            ..SenderSettings::default()
        };
        let err = settings.check("203.0.113.10").unwrap_err().to_string();
        assert!(err.contains("spec.intake.allowedCidrs"), "{err}");
    }

    #[test]
    fn intake_allows_loopback_and_the_listed_networks_only() {
        let settings = SenderSettings {
            helo_name: Some("mta10.mail.example.net".into()),
            intake_cidrs: vec!["10.42.0.0/16".into(), "fd00::/64".into()],
            ..SenderSettings::default()
        };
        let main_cf = settings.main_cf();
        assert!(main_cf.contains("\nsmtp_helo_name = mta10.mail.example.net\n"));
        assert!(main_cf.contains("\nmynetworks = 127.0.0.0/8 [::1]/128 10.42.0.0/16 [fd00::]/64\n"));
        assert!(main_cf.contains(
            "\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
        ));
        let default = SenderSettings::default().main_cf();
        assert!(default.contains("\nmynetworks = 127.0.0.0/8 [::1]/128\n"));
        assert!(!default.contains("smtp_helo_name"));
    }

    #[test]
    fn the_relay_filter_defers_session_refusals_and_keeps_recipient_bounces() {
        let filter = relay_status_filter();
        let patterns: Vec<regex::Regex> = filter
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(|l| {
                let pattern = l.split('\t').next().unwrap();
                regex::Regex::new(&pattern[1..pattern.len() - 1]).unwrap()
            })
            .collect();
        let deferred = |text: &str| patterns.iter().any(|p| p.is_match(text));
        assert!(deferred("5.7.0 host relay[192.0.2.1] said: 530 5.7.0 Authentication required (in reply to MAIL FROM command)"));
        assert!(deferred("5.7.8 host relay[192.0.2.1] said: 535 5.7.8 Authentication credentials invalid (in reply to AUTH command)"));
        assert!(!deferred("5.1.1 host relay[192.0.2.1] said: 550 5.1.1 no such user (in reply to RCPT TO command)"));
    }
}
