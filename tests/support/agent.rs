//! Shared by the agent's integration tests: a local feedback endpoint that
//! answers as scripted (500, hang, refuse, accept) and counts what it accepts
//! the way a receiver must (once per (instance, sequence)).
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use mailfleet::agent::report::{
    Admission, ConfigHint, FeedbackReport, FeedbackResponse, SequenceLedger, FEEDBACK_API_VERSION,
};
use mailfleet::vocab::{Category, Outcome};

/// How the endpoint answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// HTTP 500; nothing counted.
    Fail,
    /// Counts the report, then never answers (the agent's timeout fires): the
    /// retry must be recognised as a duplicate.
    Hang,
    /// HTTP 400; nothing counted.
    Refuse,
    /// HTTP 200 with a feedback response.
    Accept,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub report: FeedbackReport,
    pub behaviour: Behaviour,
    pub authorization: Option<String>,
}

#[derive(Default)]
pub struct EndpointState {
    /// Consumed one per request; `Accept` once empty.
    pub script: VecDeque<Behaviour>,
    pub received: Vec<Received>,
    /// The reports counted, each once.
    pub counted: Vec<FeedbackReport>,
    pub ledger: SequenceLedger,
    pub duplicates: usize,
    /// Sent in every accepted response.
    pub config: Option<ConfigHint>,
}

pub type Totals = BTreeMap<(String, Outcome, Category), u64>;

impl EndpointState {
    pub fn totals(&self) -> Totals {
        let mut out = Totals::new();
        for report in &self.counted {
            for row in &report.totals {
                *out.entry((row.provider.clone(), row.outcome, row.category))
                    .or_default() += row.count;
            }
        }
        out
    }

    pub fn attempts(&self) -> u64 {
        self.counted.iter().map(FeedbackReport::attempts).sum()
    }

    pub fn conclusive(&self) -> usize {
        self.counted.iter().map(|r| r.conclusive.len()).sum()
    }
}

pub struct FakeEndpoint {
    pub port: u16,
    pub state: Arc<Mutex<EndpointState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeEndpoint {
    pub fn start(script: &[Behaviour]) -> FakeEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(EndpointState {
            script: script.iter().copied().collect(),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = Arc::clone(&s);
                        let st = Arc::clone(&st);
                        std::thread::spawn(move || handle(stream, &s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeEndpoint {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/feedback", self.port)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap()
    }

    /// Waits until the counted attempts reach `attempts`.
    pub fn wait_for_attempts(&self, attempts: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.lock().attempts() >= attempts {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lower-cased header names with their values, and the body.
type Request = (Vec<(String, String)>, Vec<u8>);

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some((headers, body))
}

fn respond(stream: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn handle(mut stream: TcpStream, state: &Mutex<EndpointState>, stop: &AtomicBool) {
    let Some((headers, body)) = read_request(&mut stream) else {
        return;
    };
    let report: FeedbackReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            respond(
                &mut stream,
                "400 Bad Request",
                format!("{{\"error\":\"{e}\"}}").as_bytes(),
            );
            return;
        }
    };
    let authorization = headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.clone());
    let mut s = state.lock().unwrap();
    let behaviour = s.script.pop_front().unwrap_or(Behaviour::Accept);
    s.received.push(Received {
        report: report.clone(),
        behaviour,
        authorization,
    });
    if let Err(e) = report.validate() {
        drop(s);
        respond(
            &mut stream,
            "400 Bad Request",
            format!("{{\"error\":\"{e}\"}}").as_bytes(),
        );
        return;
    }
    let count = |s: &mut EndpointState| match s.ledger.admit(
        &report.agent.instance,
        report.sequence,
        Timestamp::now(),
    ) {
        Admission::New => {
            s.counted.push(report.clone());
            false
        }
        Admission::Duplicate => {
            s.duplicates += 1;
            true
        }
    };
    match behaviour {
        Behaviour::Fail => {
            drop(s);
            respond(
                &mut stream,
                "500 Internal Server Error",
                b"{\"error\":\"try again\"}",
            );
        }
        Behaviour::Refuse => {
            drop(s);
            respond(
                &mut stream,
                "400 Bad Request",
                b"{\"error\":\"refused by the test\"}",
            );
        }
        Behaviour::Hang => {
            count(&mut s);
            drop(s);
            // Hold the connection open without a word until the test ends.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Behaviour::Accept => {
            let duplicate = count(&mut s);
            let response = FeedbackResponse {
                api_version: FEEDBACK_API_VERSION.into(),
                sequence: report.sequence,
                duplicate,
                config: s.config.clone(),
            };
            drop(s);
            respond(
                &mut stream,
                "200 OK",
                &serde_json::to_vec(&response).unwrap(),
            );
        }
    }
}

/// Realistic Postfix delivery lines, each with its own queue id and time.
pub fn delivery_line(i: usize, kind: usize) -> String {
    let qid = format!("4T{:010X}", i * 7919 + 17);
    let stamp = format!(
        "2021-11-05T08:{:02}:{:02}.{:06}+09:00 mx1",
        (i / 60) % 60,
        i % 60,
        i % 1_000_000
    );
    match kind % 6 {
        0 => format!("{stamp} postfix/smtp[311]: {qid}: to=<user{i}@hotmail.co.jp>, relay=hotmail-com.olc.protection.outlook.com[104.47.22.161]:25, delay=0.52, delays=0.01/0/0.31/0.2, dsn=4.7.606, status=deferred (host hotmail-com.olc.protection.outlook.com[104.47.22.161] said: 550 5.7.606 Access denied, banned sending IP [203.0.113.10]. To request removal from this list please visit https://sender.office.com/ (in reply to RCPT TO command))"),
        1 => format!("{stamp} postfix/smtp[312]: {qid}: to=<user{i}@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, delay=0.4, delays=0/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 OK 1636099802 x12si{i} - gsmtp)"),
        2 => format!("{stamp} postfix/smtp[313]: {qid}: to=<user{i}@yahoo.com>, relay=mta5.am0.yahoodns.net[67.195.204.72]:25, delay=1.1, delays=0/0/0.6/0.5, dsn=4.7.0, status=deferred (host mta5.am0.yahoodns.net[67.195.204.72] said: 421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes (in reply to MAIL FROM command))"),
        3 => format!("{stamp} postfix/smtp[314]: {qid}: to=<nobody{i}@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, delay=0.3, delays=0/0/0.2/0.1, dsn=5.1.1, status=bounced (host gmail-smtp-in.l.google.com[142.250.1.26] said: 550-5.1.1 The email account that you tried to reach does not exist. (in reply to RCPT TO command))"),
        4 => format!("{stamp} postfix/qmgr[99]: {qid}: from=<news@sender.example>, size=2048, nrcpt=1 (queue active)"),
        _ => format!("{stamp} postfix/smtp[315]: {qid}: to=<user{i}@acclaim.jp>, relay=acclaim-jp.mail.protection.outlook.com[52.101.1.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status=sent (250 2.6.0 <{qid}@sender.example> Queued mail for delivery)"),
    }
}
