//! Forward-confirmed reverse DNS against a local DNS server on 127.0.0.1
//! (an ephemeral port) that answers PTR for 127.0.0.x and A for the names:
//! 127.0.0.10 is confirmed, 127.0.0.11's name points elsewhere, 127.0.0.12
//! has no PTR, and a server that answers SERVFAIL leaves the verdict unknown.
//!
//! The same checks run on a schedule in the operator's leader (against the
//! fake API server) and in `mailfleet standalone` (the real binary): both
//! write the IPs' `ReverseDnsConfirmed` conditions and the gauge
//! `mailfleet_reverse_dns_confirmed`.

mod operator_harness;
mod support;

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

const LOCAL_IPS: [&str; 3] = ["127.0.0.10", "127.0.0.11", "127.0.0.12"];

/// The condition status and reason each local IP should get.
const EXPECTED: [(&str, &str, &str); 3] = [
    ("127.0.0.10", "True", "Confirmed"),
    ("127.0.0.11", "False", "PtrNotConfirmed"),
    ("127.0.0.12", "False", "NoPtr"),
];

/// The `ReverseDnsConfirmed` condition of `ip` in a pool status (JSON).
fn reverse_dns_condition(status: &serde_json::Value, ip: &str) -> Option<(String, String)> {
    let condition = status["ips"]
        .as_array()?
        .iter()
        .find(|s| s["address"] == ip)?["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "ReverseDnsConfirmed")?
        .clone();
    Some((
        condition["status"].as_str()?.to_string(),
        condition["reason"].as_str()?.to_string(),
    ))
}

fn all_checked(status: &serde_json::Value) -> bool {
    EXPECTED
        .iter()
        .all(|(ip, _, _)| reverse_dns_condition(status, ip).is_some())
}

fn assert_verdicts(status: &serde_json::Value) {
    for (ip, want_status, want_reason) in EXPECTED {
        assert_eq!(
            reverse_dns_condition(status, ip),
            Some((want_status.to_string(), want_reason.to_string())),
            "{ip}: {status}"
        );
    }
}

fn assert_gauges(metrics: &str, pool: &str) {
    for (ip, want, _) in EXPECTED {
        let series = format!(
            "mailfleet_reverse_dns_confirmed{{pool=\"{pool}\",ip=\"{ip}\"}} {}",
            u8::from(want == "True")
        );
        assert!(
            metrics.contains(&series),
            "{series} missing from:\n{metrics}"
        );
    }
}

/// The operator's leader checks a pool that names the resolver and writes
/// the conditions and the gauge, with no report or probe needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_writes_reverse_dns_confirmed_for_every_ip_of_a_pool() {
    use operator_harness::*;

    let dns = DnsServer::start(false);
    let api = support::fake_api::FakeApi::start().await;
    let ips: Vec<String> = LOCAL_IPS.iter().map(|s| s.to_string()).collect();
    let mut local = pool("local", &ips);
    local["spec"]["reputation"] =
        serde_json::json!({ "dnsbl": { "resolver": dns.address.to_string() } });
    api.insert(local);
    let operator = start_operator(&api, options()).await;
    converge(&api, "ReverseDnsConfirmed on the three IPs", |api| {
        all_checked(&pool_status(api, "local"))
    })
    .await;
    assert_verdicts(&pool_status(&api, "local"));
    let (_, metrics) = get(operator.local_addr(), "/metrics").await;
    assert_gauges(&metrics, "mail/local");
    operator.shutdown().await.unwrap();
}

/// `mailfleet standalone` runs the same checks through `--dnsbl-resolver`:
/// its state file holds the conditions and its /metrics the gauge.
#[test]
fn standalone_writes_reverse_dns_confirmed_into_its_state_and_metrics() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let dns = DnsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("pool.yaml"),
        format!(
            "apiVersion: mailfleet.io/v1alpha1\nkind: SenderPool\nmetadata:\n  name: local\n  namespace: mail\nspec:\n  template: {{}}\n  ips:\n{}",
            LOCAL_IPS
                .iter()
                .map(|ip| format!("    - address: {ip}\n"))
                .collect::<String>()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args([
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--tick-ms",
            "100",
        ])
        .arg("--manifests")
        .arg(&manifests)
        .arg("--out")
        .arg(&out)
        .args(["--dnsbl-resolver", &dns.address.to_string()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mailfleet starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let child = Kill(child);
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("mailfleet standalone did not start serving")
            .unwrap();
        if let Some(rest) = line
            .split("://")
            .nth(1)
            .filter(|_| line.contains("serving http"))
        {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    // Keep reading its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});

    let pool_status = || -> serde_json::Value {
        let text = std::fs::read_to_string(out.join("state.json")).unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        state["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i["kind"] == "SenderPool" && i["metadata"]["name"] == "local")
            })
            .map(|i| i["status"].clone())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !all_checked(&pool_status()) {
        assert!(
            Instant::now() < deadline,
            "state.json never showed the checks: {}",
            pool_status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_verdicts(&pool_status());

    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert_gauges(&response, "mail/local");
    drop(child);
}
