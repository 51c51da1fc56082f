//! Forward-confirmed reverse DNS against a local DNS server on 127.0.0.1
//! (an ephemeral port) that answers PTR for 127.0.0.x and A for the names:
//! 127.0.0.10 is confirmed, 127.0.0.11's name points elsewhere, 127.0.0.12
//! has no PTR, and a server that answers SERVFAIL leaves the verdict unknown.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use mailfleet::probe::dnsbl::Resolver;
use mailfleet::probe::reverse_dns::{check, ReverseDns};

/// The zone the server holds: PTR and A records.
fn answer(query: &[u8], servfail: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    reply.add_query(question.clone());
    if servfail {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply.to_vec().ok();
    }
    let name = question.name().to_ascii().to_ascii_lowercase();
    let ptr = |host: &str| RData::PTR(PTR(Name::from_ascii(host).unwrap()));
    let a = |ip: &str| RData::A(A(ip.parse().unwrap()));
    let data = match (question.query_type(), name.as_str()) {
        (RecordType::PTR, "10.0.0.127.in-addr.arpa.") => Some(ptr("mta10.mf10.test.")),
        (RecordType::PTR, "11.0.0.127.in-addr.arpa.") => Some(ptr("mta11.mf10.test.")),
        (RecordType::A, "mta10.mf10.test.") => Some(a("127.0.0.10")),
        (RecordType::A, "mta11.mf10.test.") => Some(a("127.0.0.99")),
        _ => None,
    };
    match data {
        Some(data) => {
            reply.add_answer(Record::from_rdata(question.name().clone(), 60, data));
        }
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}

struct DnsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    fn start(servfail: bool) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Some(reply) = answer(&buf[..n], servfail) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }
        });
        DnsServer {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_ptr_name_is_confirmed_only_when_it_resolves_back_to_the_ip() {
    let server = DnsServer::start(false);
    let resolver = Resolver::new(server.address, Duration::from_millis(500), 2);

    let confirmed = check(&resolver, ip("127.0.0.10")).await;
    assert_eq!(
        confirmed,
        ReverseDns::Confirmed {
            name: "mta10.mf10.test".into()
        }
    );
    let (status, reason, _) = confirmed.condition(ip("127.0.0.10"), Some("mta10.mf10.test"));
    assert_eq!((status, reason), (Some(true), "Confirmed"));
    let (status, reason, message) = confirmed.condition(ip("127.0.0.10"), Some("mail.example.net"));
    assert_eq!((status, reason), (Some(false), "HeloNotPtrName"));
    assert!(
        message.contains("set heloName to mta10.mf10.test"),
        "{message}"
    );

    let elsewhere = check(&resolver, ip("127.0.0.11")).await;
    let ReverseDns::NotConfirmed { names } = &elsewhere else {
        panic!("{elsewhere:?}");
    };
    assert_eq!(names["mta11.mf10.test"], vec![ip("127.0.0.99")]);
    let (status, reason, message) = elsewhere.condition(ip("127.0.0.11"), None);
    assert_eq!((status, reason), (Some(false), "PtrNotConfirmed"));
    assert!(
        message.contains("127.0.0.99") && message.contains("PTR record"),
        "{message}"
    );

    let none = check(&resolver, ip("127.0.0.12")).await;
    assert_eq!(none, ReverseDns::NoPtr);
    assert_eq!(none.condition(ip("127.0.0.12"), None).1, "NoPtr");
}

#[tokio::test]
async fn a_failing_resolver_leaves_the_verdict_unknown() {
    let server = DnsServer::start(true);
    let resolver = Resolver::new(server.address, Duration::from_millis(500), 1);
    let verdict = check(&resolver, ip("127.0.0.10")).await;
    assert!(matches!(verdict, ReverseDns::Unknown { .. }), "{verdict:?}");
    assert_eq!(verdict.condition(ip("127.0.0.10"), None).0, None);
}
