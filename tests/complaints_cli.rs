//! `mailfleet complaints`, tried as a new user would: a folder of feedback
//! reports as a mailbox export leaves them, with a repeat, a report about
//! another sender, a file that is no report, and a link.

use std::fs;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mailfleet");

/// A feedback report in the shape of RFC 5965, documentation addresses only.
fn report(source_ip: &str, rcpt: &str, message_id: &str, incidents: u32) -> String {
    format!(
        "From: feedback@arf.example.net\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report;\r\n\
         \tboundary=\"----=_Part_1\"\r\n\
         \r\n\
         ------=_Part_1\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is an email abuse report.\r\n\
         ------=_Part_1\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: ExampleFBL/1.0\r\n\
         Version: 1\r\n\
         Original-Rcpt-To: {rcpt}\r\n\
         Incidents: {incidents}\r\n\
         \r\n\
         ------=_Part_1\r\n\
         Content-Type: message/rfc822\r\n\
         \r\n\
         Received: from mta1.example.com (mta1.example.com [{source_ip}])\r\n\
         \tby mx.example.net with ESMTP; Fri, 5 Nov 2021 08:10:00 +0000\r\n\
         Message-ID: <{message_id}>\r\n\
         Subject: News\r\n\
         \r\n\
         Hello\r\n\
         ------=_Part_1--\r\n"
    )
}

#[test]
fn a_folder_of_reports_is_counted_per_ip_and_provider_and_the_rest_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("fbl");
    fs::create_dir(&inbox).unwrap();
    let yahoo = report("203.0.113.10", "user@yahoo.com", "a1@example.com", 2);
    fs::write(inbox.join("1.eml"), &yahoo).unwrap();
    fs::write(inbox.join("2.eml"), &yahoo).unwrap();
    fs::write(
        inbox.join("3.eml"),
        report("203.0.113.11", "other@hotmail.com", "a2@example.com", 1),
    )
    .unwrap();
    fs::write(
        inbox.join("4.eml"),
        report("192.0.2.50", "x@yahoo.com", "a3@example.com", 1),
    )
    .unwrap();
    fs::write(
        inbox.join("5.eml"),
        "Subject: out of office\r\n\r\nback soon\r\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(inbox.join("3.eml"), inbox.join("6.eml")).unwrap();

    let out = Command::new(BIN)
        .args(["complaints", "--ip", "203.0.113.10", "--ip", "203.0.113.11"])
        .args(["--format", "json"])
        .arg(&inbox)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "pairs": [
                {"ip": "203.0.113.10", "provider": "yahoo", "reports": 1, "incidents": 2,
                 "feedback_types": {"abuse": 1}},
                {"ip": "203.0.113.11", "provider": "microsoft", "reports": 1, "incidents": 1,
                 "feedback_types": {"abuse": 1}},
            ],
            "skipped": {"duplicate": 1, "not_a_file": 1, "not_feedback_report": 1, "not_ours": 1},
        })
    );

    let table = Command::new(BIN)
        .args(["complaints", "--ip", "203.0.113.10"])
        .arg(inbox.join("1.eml"))
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.starts_with("IP            PROVIDER  REPORTS  INCIDENTS  TYPES\n203.0.113.10  yahoo     1        2          abuse 1\n"),
        "{text}"
    );

    let missing = Command::new(BIN)
        .args(["complaints", "--ip", "203.0.113.10"])
        .arg(dir.path().join("nothing-here"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}
