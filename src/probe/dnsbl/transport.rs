//! One question to one exact resolver over UDP, with a timeout and retries.
//! No system resolver configuration is read.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::error::ProbeError;
use super::name::normalize_zone;
use super::wire::{decode_reply, encode_query, Decoded, QueryType, Reply};

/// Largest reply read; a DNSBL answer is a few hundred bytes.
const MAX_REPLY: usize = 4096;

/// Where the resolver is: an address, or a host name looked up when a round
/// starts (such as a cluster Service `unbound.dns.svc.cluster.local:53`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nameserver {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

impl Nameserver {
    /// The address to send to; a host name is looked up through the system
    /// (only the resolver's own name: DNSBL questions never go that way).
    pub async fn resolve(&self) -> Result<SocketAddr, NameserverLookupError> {
        match self {
            Nameserver::Addr(address) => Ok(*address),
            Nameserver::Host { host, port } => tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|source| NameserverLookupError::Lookup {
                    nameserver: self.to_string(),
                    source,
                })?
                .next()
                .ok_or_else(|| NameserverLookupError::NoAddress {
                    nameserver: self.to_string(),
                }),
        }
    }
}

/// Why a resolver named by host name could not be reached this round.
#[derive(Debug, thiserror::Error)]
pub enum NameserverLookupError {
    #[error("cannot look up the resolver {nameserver}: {source}")]
    Lookup {
        nameserver: String,
        source: std::io::Error,
    },
    #[error("the resolver {nameserver} has no address")]
    NoAddress { nameserver: String },
}

/// Why a `HOST[:PORT]` text names no resolver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameserverSyntaxError {
    #[error("expected HOST or HOST:PORT, such as 10.0.0.53, 10.0.0.53:5353, [2001:db8::53]:53 or unbound.dns.svc.cluster.local")]
    Shape,
    #[error("write an IPv6 resolver in brackets, [{address}] or [{address}]:53, so its last group is not read as a port")]
    UnbracketedIpv6 { address: String },
}

impl std::fmt::Display for Nameserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Nameserver::Addr(address) => write!(f, "{address}"),
            Nameserver::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The port a resolver is asked on when `--nameserver` names none.
pub const DNS_PORT: u16 = 53;

/// Reads `HOST[:PORT]`: an IP address (`10.0.0.53`, `10.0.0.53:5353`,
/// `[2001:db8::53]`, `[2001:db8::53]:53`) or a host name
/// (`unbound.dns.svc.cluster.local`, with `:PORT` or not); the port defaults to 53.
pub fn parse_nameserver(text: &str) -> Result<Nameserver, NameserverSyntaxError> {
    let text = text.trim();
    let problem = || NameserverSyntaxError::Shape;
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(Nameserver::Addr(address));
    }
    if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
        return Ok(Nameserver::Addr(SocketAddr::new(ip.into(), DNS_PORT)));
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| problem())?;
        return Ok(Nameserver::Addr(SocketAddr::new(ip.into(), DNS_PORT)));
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        // `2001:db8::1:53` could be an address or an address and a port.
        return Err(NameserverSyntaxError::UnbracketedIpv6 {
            address: text.to_string(),
        });
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port),
        None => (text, "53"),
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(problem)?;
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.contains(':') || host.starts_with('[') {
        return Err(problem());
    }
    normalize_zone(host).map_err(|_| problem())?;
    if host.parse::<std::net::Ipv4Addr>().is_err()
        && host
            .split('.')
            .all(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(problem());
    }
    Ok(Nameserver::Host {
        host: host.to_string(),
        port,
    })
}

/// The resolver a probe asks, and how patiently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    pub address: SocketAddr,
    /// How long to wait for each attempt.
    pub timeout: Duration,
    /// Attempts before the query is a timeout (at least 1).
    pub attempts: u32,
}

impl Resolver {
    pub fn new(address: SocketAddr, timeout: Duration, attempts: u32) -> Self {
        Resolver {
            address,
            timeout,
            attempts: attempts.max(1),
        }
    }

    /// Asks `name` (fully qualified) of type `qtype`. Each query has its own
    /// socket on a fresh port, connected to the resolver, so only its replies
    /// reach us; replies to earlier attempts of the same query are accepted.
    pub async fn query(&self, name: &str, qtype: QueryType) -> Result<Reply, ProbeError> {
        let network = |e: std::io::Error| self.network_error(e);
        let local: SocketAddr = if self.address.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(network)?;
        socket.connect(self.address).await.map_err(network)?;
        let mut buf = vec![0u8; MAX_REPLY];
        let mut ids = Vec::with_capacity(self.attempts as usize);
        let mut unreadable = None;
        for _ in 0..self.attempts {
            let id = next_id();
            ids.push(id);
            let query = encode_query(id, name, qtype).map_err(|e| ProbeError::QueryName {
                detail: e.to_string(),
            })?;
            socket.send(&query).await.map_err(network)?;
            let deadline = Instant::now() + self.timeout;
            loop {
                let received = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await
                {
                    Err(_elapsed) => break,
                    Ok(received) => received.map_err(network)?,
                };
                match decode_reply(&buf[..received], &ids, name, qtype) {
                    Ok(Decoded::Reply(reply)) => return Ok(reply),
                    Ok(Decoded::NotOurs) => {}
                    Err(problem) => unreadable = Some(problem.to_string()),
                }
            }
        }
        Err(match unreadable {
            Some(detail) => ProbeError::MalformedReply {
                nameserver: self.address,
                detail,
            },
            None => ProbeError::Timeout {
                nameserver: self.address,
                attempts: self.attempts,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            },
        })
    }

    fn network_error(&self, e: std::io::Error) -> ProbeError {
        let detail = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            "connection refused: nothing listens on this address and port".to_string()
        } else {
            e.to_string()
        };
        ProbeError::Network {
            nameserver: self.address,
            detail,
        }
    }
}

/// Query ids that an off-path sender cannot guess: a hash of a counter under
/// std's randomly keyed hasher (no random-number dependency needed).
fn next_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    RandomState::new().hash_one(n) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_host_and_port() {
        assert_eq!(
            parse_nameserver("127.0.0.1:5353").unwrap(),
            Nameserver::Addr("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("[::1]:53").unwrap(),
            Nameserver::Addr("[::1]:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("unbound.dns.svc.cluster.local:53").unwrap(),
            Nameserver::Host {
                host: "unbound.dns.svc.cluster.local".into(),
                port: 53
            }
        );
        // Without a port, the DNS port.
        assert_eq!(
            parse_nameserver("10.0.0.53").unwrap(),
            Nameserver::Addr("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("[2001:db8::53]").unwrap(),
            Nameserver::Addr("[2001:db8::53]:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("localhost").unwrap(),
            Nameserver::Host {
                host: "localhost".into(),
                port: 53
            }
        );
        assert!(parse_nameserver("::1:53")
            .unwrap_err()
            .to_string()
            .contains("[::1:53]"));
        for bad in [
            "127.0.0.1:99999",
            "host:0",
            "",
            "[::1",
            "a b:53",
            "300.1.1.1:53",
        ] {
            assert!(
                parse_nameserver(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("HOST:PORT"),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_host_name_is_looked_up_when_asked() {
        let ns = parse_nameserver("localhost:5353").unwrap();
        assert_eq!(ns.to_string(), "localhost:5353");
        let address = ns.resolve().await.unwrap();
        assert!(address.ip().is_loopback());
        assert_eq!(address.port(), 5353);
    }

    #[test]
    fn ids_vary() {
        let ids: std::collections::BTreeSet<u16> = (0..64).map(|_| next_id()).collect();
        assert!(ids.len() > 32);
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let resolver = Resolver::new(silent.local_addr().unwrap(), Duration::from_millis(50), 2);
        let err = resolver
            .query("2.0.0.127.zen.test.", QueryType::A)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), super::super::ProbeErrorKind::Timeout);
        assert!(err.to_string().contains("2 attempt(s) of 50 ms"), "{err}");
    }
}
