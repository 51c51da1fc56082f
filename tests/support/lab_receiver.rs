//! The lab's receiver (tests/lab/receiver.py, as `make demo` runs it) for
//! the tests that drive a real Postfix: it answers each message by a policy
//! (per client IP, provider and local part), optionally after a latency, and
//! records every answer with the client's address and the time, one JSON
//! line each.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python")
}

/// What the receiver needs that is missing: the project's venv with aiosmtpd.
pub fn missing() -> Vec<String> {
    let found = Command::new(python())
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        Vec::new()
    } else {
        vec![format!("{} with aiosmtpd", python().display())]
    }
}

pub struct LabReceiver {
    child: Child,
    pub port: u16,
    record: PathBuf,
}

impl LabReceiver {
    /// Starts it on a free port, recording into `dir`; `latency` delays each
    /// DATA answer (a remote server's work).
    pub fn start(dir: &Path, policy: &str, latency: Option<Duration>) -> LabReceiver {
        let record = dir.join("answers.jsonl");
        let port_file = dir.join("receiver.port");
        let mut command = Command::new(python());
        command
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/receiver.py"))
            .args(["--policy", policy])
            .arg("--record")
            .arg(&record)
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null());
        if let Some(latency) = latency {
            command.args(["--data-latency-ms", &latency.as_millis().to_string()]);
        }
        let mut receiver = LabReceiver {
            child: command.spawn().expect("start the lab's receiver"),
            port: 0,
            record,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while receiver.port == 0 {
            if let Ok(text) = fs::read_to_string(&port_file) {
                receiver.port = text.trim().parse().unwrap_or(0);
            }
            assert!(Instant::now() < deadline, "the receiver did not start");
            assert!(
                receiver.child.try_wait().unwrap().is_none(),
                "the receiver exited"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        receiver
    }

    /// Every answer given so far.
    pub fn answers(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for LabReceiver {
    fn drop(&mut self) {
        super::process::terminate(&mut self.child, Duration::from_secs(3));
    }
}
