//! How one zone's answers are read: which A answers are listings and which are
//! errors. Pure.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::cache::{ProbeInterval, DEFAULT_INTERVAL_SECONDS, MIN_INTERVAL_SECONDS};
use super::error::ProbeError;
use super::name::{normalize_zone, ZoneNameError};
use super::transport::{parse_nameserver, Nameserver, NameserverSyntaxError};
use crate::api::{DnsblSettings, DnsblZone};

/// Spamhaus ZEN, the zone whose listing codes are built in.
pub const SPAMHAUS_ZEN: &str = "zen.spamhaus.org";

/// Spamhaus ZEN listing codes: .2 SBL, .3 SBL CSS, .4-.7 XBL, .9 DROP, .10/.11 PBL.
pub const ZEN_LISTING_CODES: [Ipv4Addr; 9] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
    Ipv4Addr::new(127, 0, 0, 6),
    Ipv4Addr::new(127, 0, 0, 7),
    Ipv4Addr::new(127, 0, 0, 9),
    Ipv4Addr::new(127, 0, 0, 10),
    Ipv4Addr::new(127, 0, 0, 11),
];

/// Error answers of every zone whose `errorCodes` are not set: Spamhaus's
/// typo in zone (.252), public/open resolver (.254) and too many queries (.255).
pub const DEFAULT_ERROR_CODES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 255, 255, 252),
    Ipv4Addr::new(127, 255, 255, 254),
    Ipv4Addr::new(127, 255, 255, 255),
];

/// A configured zone that cannot be probed as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZoneConfigError {
    #[error("{field} `{zone}` is not a usable zone: {problem}")]
    InvalidZone {
        field: String,
        zone: String,
        problem: ZoneNameError,
    },

    #[error("{field} `{value}` is not a code: {problem}")]
    InvalidCode {
        field: String,
        value: String,
        problem: String,
    },

    #[error("{field} {code} is also one of the zone's error codes; an answer cannot be both, remove it from one list")]
    CodeInBothLists { field: String, code: Ipv4Addr },

    #[error("{field} names zone `{zone}` a second time ({first}); remove one of them")]
    DuplicateZone {
        field: String,
        zone: String,
        first: String,
    },

    #[error("{field} is {value}: {problem}")]
    InvalidSetting {
        field: String,
        value: String,
        problem: String,
    },

    #[error("{field} is {value}: {problem}")]
    InvalidResolver {
        field: String,
        value: String,
        problem: NameserverSyntaxError,
    },
}

/// Which A answers of a zone are listings.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Listing {
    /// Every 127.0.0.0/8 answer except 127.0.0.1 and the error codes.
    AnyLoopback,
    Codes(Vec<Ipv4Addr>),
}

/// How to read one zone's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneRules {
    name: String,
    query_zone: String,
    listing: Listing,
    errors: Vec<Ipv4Addr>,
}

/// What the A answers of one query say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    NotListed,
    Listed,
    Error(ProbeError),
}

impl ZoneRules {
    /// The built-in rules of a zone: Spamhaus ZEN codes for zen.spamhaus.org,
    /// any 127.0.0.0/8 answer elsewhere; the Spamhaus error codes everywhere.
    pub fn with_defaults(zone: &str) -> Result<Self, ZoneConfigError> {
        Self::from_spec(
            "--zone",
            &DnsblZone {
                zone: zone.to_string(),
                listing_codes: Vec::new(),
                error_codes: Vec::new(),
                providers: Vec::new(),
            },
        )
    }

    /// The rules of one `spec.reputation.dnsbl.zones[]` entry; `field` names it in errors.
    pub fn from_spec(field: &str, spec: &DnsblZone) -> Result<Self, ZoneConfigError> {
        let query_zone =
            normalize_zone(&spec.zone).map_err(|problem| ZoneConfigError::InvalidZone {
                field: field_of(field, "zone"),
                zone: spec.zone.clone(),
                problem,
            })?;
        let errors = if spec.error_codes.is_empty() {
            DEFAULT_ERROR_CODES.to_vec()
        } else {
            parse_codes(&field_of(field, "errorCodes"), &spec.error_codes, false)?
        };
        let listing = if !spec.listing_codes.is_empty() {
            let field = field_of(field, "listingCodes");
            let codes = parse_codes(&field, &spec.listing_codes, true)?;
            if let Some((i, code)) = codes.iter().enumerate().find(|(_, c)| errors.contains(c)) {
                return Err(ZoneConfigError::CodeInBothLists {
                    field: format!("{field}[{i}]"),
                    code: *code,
                });
            }
            Listing::Codes(codes)
        } else if is_zen(&query_zone) {
            Listing::Codes(ZEN_LISTING_CODES.to_vec())
        } else {
            Listing::AnyLoopback
        };
        Ok(ZoneRules {
            name: spec.zone.clone(),
            query_zone,
            listing,
            errors,
        })
    }

    /// The zone as configured: the name results carry, matching the pool spec.
    pub fn zone(&self) -> &str {
        &self.name
    }

    /// The zone as queried (lowercase, no trailing dot).
    pub fn query_zone(&self) -> &str {
        &self.query_zone
    }

    /// The listing codes, or `None` when every 127.0.0.0/8 answer lists.
    pub fn listing_codes(&self) -> Option<&[Ipv4Addr]> {
        match &self.listing {
            Listing::AnyLoopback => None,
            Listing::Codes(codes) => Some(codes),
        }
    }

    pub fn error_codes(&self) -> &[Ipv4Addr] {
        &self.errors
    }

    /// Reads the A answers of a successful (NOERROR) reply. An error code or an
    /// answer outside 127.0.0.0/8 anywhere in the answer makes it an error, so
    /// a mixed answer is never a listing.
    pub fn read(&self, codes: &[Ipv4Addr]) -> Reading {
        if codes.is_empty() {
            return Reading::NotListed;
        }
        let outside: Vec<&Ipv4Addr> = codes.iter().filter(|c| c.octets()[0] != 127).collect();
        if !outside.is_empty() {
            return Reading::Error(ProbeError::OutsideLoopback {
                codes: join(outside.into_iter()),
            });
        }
        if let Some(code) = codes.iter().find(|c| self.errors.contains(c)) {
            return Reading::Error(ProbeError::ErrorCode {
                code: *code,
                meaning: error_meaning(*code).to_string(),
            });
        }
        let lists = |c: &Ipv4Addr| match &self.listing {
            Listing::AnyLoopback => *c != Ipv4Addr::LOCALHOST,
            Listing::Codes(listing) => listing.contains(c),
        };
        if codes.iter().any(lists) {
            return Reading::Listed;
        }
        let expected = match &self.listing {
            Listing::AnyLoopback => "any 127.0.0.0/8 answer but 127.0.0.1".to_string(),
            Listing::Codes(listing) => join(listing.iter()),
        };
        Reading::Error(ProbeError::UnexpectedCode {
            codes: join(codes.iter()),
            expected,
        })
    }
}

/// Everything the probe needs from `spec.reputation.dnsbl`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsblPlan {
    pub zones: Vec<ZoneRules>,
    /// `spec.reputation.dnsbl.resolver`; `None` when not set.
    pub resolver: Option<Nameserver>,
    pub interval: ProbeInterval,
}

/// Reads `spec.reputation.dnsbl` into rules, with errors naming the field.
pub fn plan_from_settings(settings: &DnsblSettings) -> Result<DnsblPlan, ZoneConfigError> {
    let base = "spec.reputation.dnsbl";
    let mut zones: Vec<ZoneRules> = Vec::with_capacity(settings.zones.len());
    for (i, spec) in settings.zones.iter().enumerate() {
        let field = format!("{base}.zones[{i}]");
        let rules = ZoneRules::from_spec(&field, spec)?;
        if let Some(first) = zones.iter().position(|z| z.query_zone == rules.query_zone) {
            return Err(ZoneConfigError::DuplicateZone {
                field: format!("{field}.zone"),
                zone: spec.zone.clone(),
                first: format!("{base}.zones[{first}]"),
            });
        }
        zones.push(rules);
    }
    let resolver =
        match &settings.resolver {
            None => None,
            Some(text) => Some(parse_nameserver(text).map_err(|problem| {
                ZoneConfigError::InvalidResolver {
                    field: format!("{base}.resolver"),
                    value: text.clone(),
                    problem,
                }
            })?),
        };
    let seconds = settings
        .interval_seconds
        .unwrap_or(DEFAULT_INTERVAL_SECONDS);
    if seconds < MIN_INTERVAL_SECONDS {
        return Err(ZoneConfigError::InvalidSetting {
            field: format!("{base}.intervalSeconds"),
            value: seconds.to_string(),
            problem: format!(
                "probe rounds must be at least {MIN_INTERVAL_SECONDS} seconds apart; block lists rate-limit frequent queries"
            ),
        });
    }
    Ok(DnsblPlan {
        zones,
        resolver,
        interval: ProbeInterval::every_seconds(seconds),
    })
}

fn is_zen(zone: &str) -> bool {
    zone == SPAMHAUS_ZEN || zone.ends_with(".zen.dq.spamhaus.net")
}

fn field_of(base: &str, leaf: &str) -> String {
    if base.starts_with("--") {
        base.to_string()
    } else {
        format!("{base}.{leaf}")
    }
}

fn parse_codes(
    field: &str,
    values: &[String],
    loopback_only: bool,
) -> Result<Vec<Ipv4Addr>, ZoneConfigError> {
    let mut codes = BTreeSet::new();
    for (i, value) in values.iter().enumerate() {
        let bad = |problem: &str| ZoneConfigError::InvalidCode {
            field: format!("{field}[{i}]"),
            value: value.clone(),
            problem: problem.to_string(),
        };
        let code: Ipv4Addr = value
            .trim()
            .parse()
            .map_err(|_| bad("write an IPv4 address such as 127.0.0.2"))?;
        if loopback_only && code.octets()[0] != 127 {
            return Err(bad(
                "listing codes lie in 127.0.0.0/8; an answer outside it is never a listing",
            ));
        }
        codes.insert(code);
    }
    Ok(codes.into_iter().collect())
}

fn error_meaning(code: Ipv4Addr) -> &'static str {
    match code.octets() {
        [127, 255, 255, 252] => "typo in the zone name, or not a zone of this list",
        [127, 255, 255, 254] => {
            "the query came through a public or open resolver, which the list refuses; use your own recursive resolver"
        }
        [127, 255, 255, 255] => "too many queries: the list rate-limits this resolver",
        _ => "one of the zone's errorCodes: the query failed",
    }
}

fn join<'a>(codes: impl Iterator<Item = &'a Ipv4Addr>) -> String {
    codes.map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn zone(name: &str, listing: &[&str], errors: &[&str]) -> DnsblZone {
        DnsblZone {
            zone: name.to_string(),
            listing_codes: listing.iter().map(|s| s.to_string()).collect(),
            error_codes: errors.iter().map(|s| s.to_string()).collect(),
            providers: Vec::new(),
        }
    }

    #[test]
    fn zen_reads_its_codes_and_never_reads_an_error_as_a_listing() {
        let zen = ZoneRules::with_defaults("zen.spamhaus.org").unwrap();
        assert_eq!(zen.listing_codes().unwrap(), &ZEN_LISTING_CODES);
        for code in [
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.9",
            "127.0.0.10",
            "127.0.0.11",
        ] {
            assert_eq!(zen.read(&[ip(code)]), Reading::Listed, "{code}");
        }
        assert_eq!(zen.read(&[]), Reading::NotListed);
        for (code, kind) in [
            ("127.255.255.252", "typo_in_zone"),
            ("127.255.255.254", "open_resolver"),
            ("127.255.255.255", "rate_limited"),
        ] {
            let Reading::Error(err) = zen.read(&[ip(code)]) else {
                panic!("{code} must be an error")
            };
            assert_eq!(err.kind().label(), kind);
            assert!(err.to_string().contains(code));
        }
        let Reading::Error(err) = zen.read(&[ip("127.0.0.8")]) else {
            panic!()
        };
        assert_eq!(err.kind().label(), "unexpected_code");
    }

    #[test]
    fn an_error_code_beside_a_listing_code_is_still_an_error() {
        let zen = ZoneRules::with_defaults("zen.spamhaus.org").unwrap();
        assert!(matches!(
            zen.read(&[ip("127.0.0.2"), ip("127.255.255.254")]),
            Reading::Error(ProbeError::ErrorCode { .. })
        ));
    }

    #[test]
    fn answers_outside_loopback_are_errors() {
        let any = ZoneRules::with_defaults("bl.example.net").unwrap();
        let Reading::Error(err) = any.read(&[ip("198.51.100.7"), ip("127.0.0.2")]) else {
            panic!()
        };
        assert_eq!(err.kind().label(), "outside_loopback");
        assert!(err.to_string().contains("198.51.100.7"));
    }

    #[test]
    fn other_zones_list_any_loopback_answer_but_127_0_0_1() {
        let any = ZoneRules::with_defaults("b.barracudacentral.org").unwrap();
        assert_eq!(any.listing_codes(), None);
        assert_eq!(any.read(&[ip("127.0.0.2")]), Reading::Listed);
        assert_eq!(any.read(&[ip("127.0.5.9")]), Reading::Listed);
        assert!(matches!(any.read(&[ip("127.0.0.1")]), Reading::Error(_)));
    }

    #[test]
    fn configured_codes_replace_the_defaults() {
        let rules = ZoneRules::from_spec(
            "z",
            &zone(
                "bl.example.net",
                &["127.0.0.2", "127.0.0.20"],
                &["127.0.0.250"],
            ),
        )
        .unwrap();
        assert_eq!(rules.read(&[ip("127.0.0.20")]), Reading::Listed);
        assert!(matches!(
            rules.read(&[ip("127.0.0.3")]),
            Reading::Error(ProbeError::UnexpectedCode { .. })
        ));
        let Reading::Error(err) = rules.read(&[ip("127.0.0.250")]) else {
            panic!()
        };
        assert_eq!(err.kind().label(), "error_code");
        // The Spamhaus codes are no longer errors here, but not listings either.
        assert!(matches!(
            rules.read(&[ip("127.255.255.254")]),
            Reading::Error(ProbeError::UnexpectedCode { .. })
        ));
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let err = ZoneRules::from_spec(
            "spec.reputation.dnsbl.zones[1]",
            &zone("bl.example.net", &["127.0.0.x"], &[]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.reputation.dnsbl.zones[1].listingCodes[0] `127.0.0.x`"),
            "{err}"
        );
        let err =
            ZoneRules::from_spec("z", &zone("bl.example.net", &["10.0.0.2"], &[])).unwrap_err();
        assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
        let err = ZoneRules::from_spec("z", &zone("bl.example.net", &["127.255.255.254"], &[]))
            .unwrap_err();
        assert!(
            matches!(err, ZoneConfigError::CodeInBothLists { .. }),
            "{err}"
        );
        let err = ZoneRules::from_spec("z", &zone("bad zone", &[], &[])).unwrap_err();
        assert!(err.to_string().starts_with("z.zone `bad zone`"), "{err}");
    }

    #[test]
    fn the_plan_checks_duplicates_resolver_and_interval() {
        let mut settings = DnsblSettings {
            zones: vec![
                zone("zen.spamhaus.org", &[], &[]),
                zone("ZEN.spamhaus.org.", &[], &[]),
            ],
            resolver: Some("127.0.0.1:53".into()),
            interval_seconds: None,
        };
        let err = plan_from_settings(&settings).unwrap_err();
        assert!(err.to_string().contains("zones[1].zone"), "{err}");
        settings.zones.pop();
        let plan = plan_from_settings(&settings).unwrap();
        assert_eq!(
            plan.resolver,
            Some(Nameserver::Addr("127.0.0.1:53".parse().unwrap()))
        );
        assert_eq!(
            plan.interval,
            ProbeInterval::every_seconds(DEFAULT_INTERVAL_SECONDS)
        );
        settings.resolver = Some("unbound.dns.svc.cluster.local:53".into());
        let plan = plan_from_settings(&settings).unwrap();
        assert_eq!(
            plan.resolver.unwrap().to_string(),
            "unbound.dns.svc.cluster.local:53"
        );
        // Without a port, the DNS port.
        settings.resolver = Some("resolver.internal".into());
        let plan = plan_from_settings(&settings).unwrap();
        assert_eq!(plan.resolver.unwrap().to_string(), "resolver.internal:53");
        settings.resolver = Some("resolver.internal:dns".into());
        let err = plan_from_settings(&settings).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.reputation.dnsbl.resolver is resolver.internal:dns"),
            "{err}"
        );
        settings.resolver = None;
        settings.interval_seconds = Some(5);
        let err = plan_from_settings(&settings).unwrap_err();
        assert!(err.to_string().contains("intervalSeconds is 5"), "{err}");
    }
}
