//! Forward-confirmed reverse DNS of a source IP: the PTR records of the IP,
//! then the A (or AAAA) records of each name they give; confirmed when one
//! of those names resolves back to the IP. Gmail and Yahoo require it of
//! bulk senders, and many receivers defer mail from an IP without it.
//!
//! The queries go through the same resolver and transport as the DNSBL
//! probe ([`crate::probe::dnsbl::Resolver`]); the verdict is pure
//! ([`judge`]). The HELO name a pool gives an IP should be the confirmed
//! name: a mismatch is reported too (receivers compare them).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::probe::dnsbl::{query_name, ProbeError, QueryType, Rcode, Resolver};

/// Most PTR names followed per IP (an IP has one in practice).
const MAX_NAMES: usize = 4;

/// What the reverse DNS of one IP says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReverseDns {
    /// `name` is a PTR of the IP and resolves back to it.
    Confirmed { name: String },
    /// The IP has no PTR record.
    NoPtr,
    /// PTR names exist but none resolves back to the IP.
    NotConfirmed {
        /// Each PTR name with the addresses it resolves to.
        names: BTreeMap<String, Vec<IpAddr>>,
    },
    /// The resolver could not answer (timeout, SERVFAIL, ...): nothing is known.
    Unknown { detail: String },
}

impl ReverseDns {
    /// The condition `ReverseDnsConfirmed` of the IP: status, reason, message.
    /// `helo` is the pool's `heloName` for the IP, if any.
    pub fn condition(
        &self,
        ip: IpAddr,
        helo: Option<&str>,
    ) -> (Option<bool>, &'static str, String) {
        let fix = "set the PTR record of the IP at whoever owns the address block (the hosting or IP provider) to a name whose A/AAAA record is the IP, and use that name as spec.ips[].heloName";
        match self {
            ReverseDns::Confirmed { name } => match helo {
                Some(helo) if !helo.eq_ignore_ascii_case(name.trim_end_matches('.')) => (
                    Some(false),
                    "HeloNotPtrName",
                    format!("{ip} has the forward-confirmed name {name}, but spec.ips[].heloName is {helo}; receivers compare them: set heloName to {}", name.trim_end_matches('.')),
                ),
                _ => (
                    Some(true),
                    "Confirmed",
                    format!("{ip} → PTR {name} → {ip}"),
                ),
            },
            ReverseDns::NoPtr => (
                Some(false),
                "NoPtr",
                format!("{ip} has no PTR record; Gmail and Yahoo refuse or defer bulk mail from it: {fix}"),
            ),
            ReverseDns::NotConfirmed { names } => (
                Some(false),
                "PtrNotConfirmed",
                format!(
                    "{ip} has PTR {} but no such name resolves back to it ({}); {fix}",
                    names.keys().cloned().collect::<Vec<_>>().join(", "),
                    names
                        .iter()
                        .map(|(n, a)| format!("{n} → {}", if a.is_empty() { "nothing".to_string() } else { a.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ") }))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
            ReverseDns::Unknown { detail } => (
                None,
                "ResolverError",
                format!("the reverse DNS of {ip} could not be checked: {detail}; the condition keeps its last answer"),
            ),
        }
    }
}

/// The verdict from the PTR names of `ip` and the addresses each resolves to.
pub fn judge(ip: IpAddr, forward: &BTreeMap<String, Vec<IpAddr>>) -> ReverseDns {
    if forward.is_empty() {
        return ReverseDns::NoPtr;
    }
    match forward
        .iter()
        .find(|(_, addresses)| addresses.contains(&ip))
    {
        Some((name, _)) => ReverseDns::Confirmed { name: name.clone() },
        None => ReverseDns::NotConfirmed {
            names: forward.clone(),
        },
    }
}

/// Asks `resolver` for the PTR of `ip`, then the A/AAAA of each name.
pub async fn check(resolver: &Resolver, ip: IpAddr) -> ReverseDns {
    let unknown = |e: ProbeError| ReverseDns::Unknown {
        detail: e.to_string(),
    };
    let zone = match ip {
        IpAddr::V4(_) => "in-addr.arpa",
        IpAddr::V6(_) => "ip6.arpa",
    };
    let reverse = match query_name(ip, zone) {
        Ok(name) => name,
        Err(e) => return unknown(e),
    };
    let reply = match resolver.query(&reverse, QueryType::Ptr).await {
        Ok(reply) => reply,
        Err(e) => return unknown(e),
    };
    match reply.rcode {
        Rcode::NoError | Rcode::NxDomain => {}
        other => {
            return ReverseDns::Unknown {
                detail: format!("the resolver answered {other:?} for {reverse}"),
            }
        }
    }
    let mut forward = BTreeMap::new();
    for name in reply.names.into_iter().take(MAX_NAMES) {
        let qtype = match ip {
            IpAddr::V4(_) => QueryType::A,
            IpAddr::V6(_) => QueryType::Aaaa,
        };
        let answer = match resolver.query(&name, qtype).await {
            Ok(answer) => answer,
            Err(e) => return unknown(e),
        };
        if !matches!(answer.rcode, Rcode::NoError | Rcode::NxDomain) {
            return ReverseDns::Unknown {
                detail: format!("the resolver answered {:?} for {name}", answer.rcode),
            };
        }
        let addresses: Vec<IpAddr> = answer
            .addresses
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(answer.addresses6.iter().map(|a| IpAddr::V6(*a)))
            .collect();
        forward.insert(name.trim_end_matches('.').to_string(), addresses);
    }
    judge(ip, &forward)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ptr_name_must_resolve_back_to_the_ip() {
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(judge(ip, &BTreeMap::new()), ReverseDns::NoPtr);
        let confirmed = BTreeMap::from([(
            "mta7.mail.example.net".to_string(),
            vec!["198.51.100.7".parse().unwrap()],
        )]);
        assert_eq!(
            judge(ip, &confirmed),
            ReverseDns::Confirmed {
                name: "mta7.mail.example.net".into()
            }
        );
        let elsewhere = BTreeMap::from([(
            "mta7.mail.example.net".to_string(),
            vec!["198.51.100.8".parse().unwrap()],
        )]);
        let verdict = judge(ip, &elsewhere);
        assert!(matches!(verdict, ReverseDns::NotConfirmed { .. }));
        let (status, reason, message) = verdict.condition(ip, None);
        assert_eq!((status, reason), (Some(false), "PtrNotConfirmed"));
        assert!(message.contains("198.51.100.8"), "{message}");
        assert!(message.contains("heloName"), "{message}");
        let (status, reason, _) =
            judge(ip, &confirmed).condition(ip, Some("other.mail.example.net"));
        assert_eq!((status, reason), (Some(false), "HeloNotPtrName"));
        let (status, _, _) = judge(ip, &confirmed).condition(ip, Some("MTA7.mail.example.net"));
        assert_eq!(status, Some(true));
    }
}
