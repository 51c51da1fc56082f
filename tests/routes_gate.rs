//! `mailfleet routes` as a pull-request gate, and the other offline commands'
//! manners in a pipeline: each leak a new user found, tried as that user would
//! (the binary, real files, standard input, a closed pipe).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mailfleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args(args)
        .output()
        .unwrap()
}

fn with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of examples/fleet with `file` rewritten by `edit`.
fn fleet_with(file: &str, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("examples/fleet").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut body = std::fs::read_to_string(&path).unwrap();
        if name == file {
            let edited = edit(body.clone());
            assert_ne!(edited, body, "the edit of {file} changed nothing");
            body = edited;
        }
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    dir
}

fn routes_on(dir: &Path) -> Output {
    mailfleet(&["routes", "--manifests", dir.to_str().unwrap()])
}

#[test]
fn the_example_fleet_passes() {
    let out = mailfleet(&["routes", "--manifests", "examples/fleet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_route_naming_a_missing_pool_fails_the_gate() {
    let dir = fleet_with("route-google.yaml", |t| {
        t.replace("pool: bulk", "pool: bluk")
    });
    let out = routes_on(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let shown = text(&out.stdout);
    assert!(shown.contains("spec.pool"), "{shown}");
    assert!(shown.contains("bluk"), "{shown}");
    assert!(text(&out.stderr).contains("problem(s) found"));
}

#[test]
fn an_ip_claimed_by_two_pools_fails_the_gate_as_the_operator_refuses_it() {
    let dir = fleet_with("pool-reserve.yaml", |t| {
        t.replace("198.51.100.21", "203.0.113.10")
    });
    let out = routes_on(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out.stdout);
    assert!(shown.contains("IpClaimedByAnotherPool"), "{shown}");
    assert!(
        shown.contains("SenderPool mail/reserve spec.ips[1].address"),
        "{shown}"
    );
    // Machine formats keep stdout for the document and say it on stderr.
    let json = mailfleet(&[
        "routes",
        "--manifests",
        dir.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(json.status.code(), Some(1));
    serde_json::from_slice::<serde_json::Value>(&json.stdout).unwrap();
    assert!(text(&json.stderr).contains("IpClaimedByAnotherPool"));
}

#[test]
fn a_misspelt_pod_template_field_fails_the_gate_naming_it() {
    let dir = fleet_with("namespace.yaml", |t| t + "\n");
    std::fs::write(
        dir.path().join("pool-own-image.yaml"),
        "apiVersion: mailfleet.io/v1alpha1\nkind: SenderPool\nmetadata: {name: own-image, namespace: mail}\nspec:\n  ips: [{address: 192.0.2.40}]\n  template:\n    spec:\n      contianers:\n        - name: postfix\n          image: registry.example.net/mail/postfix:3.7\n",
    )
    .unwrap();
    let out = routes_on(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("pool-own-image.yaml (document 1)"), "{err}");
    assert!(err.contains("spec.template.spec.contianers"), "{err}");
}

#[test]
fn without_manifests_nothing_is_judged_silently() {
    let out = mailfleet(&["routes"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("--manifests DIR"), "{err}");
    assert!(err.contains("--example"), "{err}");
    assert!(out.stdout.is_empty());
    let example = mailfleet(&["routes", "--example"]);
    assert_eq!(example.status.code(), Some(0));
    assert!(text(&example.stdout).contains("mail/microsoft"));
    let both = mailfleet(&["routes", "--example", "--manifests", "examples/fleet"]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "--example and --manifests conflict"
    );
}

#[test]
fn kubectl_list_output_overlays_live_status() {
    // `kubectl get sp -n mail -o yaml`: a List of full objects with status.
    let pool: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string("examples/fleet/pool-bulk.yaml").unwrap())
            .unwrap();
    let status: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string("examples/incident/status-bulk.yaml").unwrap(),
    )
    .unwrap();
    let mut live = pool.clone();
    live["status"] = status["status"].clone();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [live]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.yaml");
    std::fs::write(&file, serde_json::to_string(&list).unwrap()).unwrap();
    let out = mailfleet(&[
        "routes",
        "--manifests",
        "examples/fleet",
        "--manifests",
        file.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let microsoft = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "microsoft")
        .unwrap();
    let excluded: Vec<&str> = microsoft["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ip"].as_str().unwrap())
        .collect();
    assert_eq!(excluded, ["203.0.113.12"], "{microsoft}");
}

#[test]
fn a_dash_reads_standard_input_for_every_file_argument() {
    let mut fleet = String::new();
    let mut names: Vec<_> = std::fs::read_dir("examples/fleet")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        fleet.push_str("---\n");
        fleet.push_str(&std::fs::read_to_string(path).unwrap());
    }
    let at = "2026-11-29T09:00:00Z";
    let from_stdin = with_stdin(
        &["routes", "--manifests", "-", "--at", at],
        fleet.as_bytes(),
    );
    let from_dir = mailfleet(&["routes", "--manifests", "examples/fleet", "--at", at]);
    assert_eq!(
        from_stdin.status.code(),
        Some(0),
        "{}",
        text(&from_stdin.stderr)
    );
    assert_eq!(text(&from_stdin.stdout), text(&from_dir.stdout));

    let log = std::fs::read("examples/logs/203.0.113.12.maillog").unwrap();
    let replay = |file: &str, input: &[u8]| {
        with_stdin(
            &[
                "routes",
                "--example",
                "--replay-log",
                file,
                "--source-ip",
                "203.0.113.12",
                "--format",
                "json",
            ],
            input,
        )
    };
    let piped = replay("-", &log);
    let named = replay("examples/logs/203.0.113.12.maillog", b"");
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    assert_eq!(piped.stdout, named.stdout);

    let agent = |file: &str, input: &[u8]| {
        with_stdin(
            &[
                "agent",
                "replay",
                "--source-ip",
                "203.0.113.12",
                "--log",
                file,
                "--format",
                "json",
            ],
            input,
        )
    };
    let piped = agent("-", &log);
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    assert_eq!(
        piped.stdout,
        agent("examples/logs/203.0.113.12.maillog", b"").stdout
    );

    let rules = "providers:\n  - name: yahoo-japan\n    domains: [yahoo.co.jp]\n";
    let replies = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(replies.path(), "550 5.7.1 refused by policy\n").unwrap();
    let classified = with_stdin(
        &[
            "classify",
            "--rules",
            "-",
            "--domain",
            "yahoo.co.jp",
            "--format",
            "json",
            replies.path().to_str().unwrap(),
        ],
        rules.as_bytes(),
    );
    assert_eq!(
        classified.status.code(),
        Some(0),
        "{}",
        text(&classified.stderr)
    );
    assert!(
        text(&classified.stdout).contains("\"provider\":\"yahoo-japan\""),
        "{}",
        text(&classified.stdout)
    );

    // One stream cannot feed two arguments.
    let twice = with_stdin(
        &["routes", "--manifests", "-", "--rules", "-"],
        fleet.as_bytes(),
    );
    assert_eq!(twice.status.code(), Some(2));
    assert!(text(&twice.stderr).contains("standard input is already read by"));
}

/// Runs `mailfleet args | head -n 1` in a shell; returns (head's line, mailfleet's stderr, status).
fn into_head(args: &str) -> (String, String, String) {
    let bin = env!("CARGO_BIN_EXE_mailfleet");
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; {bin} {args} 2>stderr.txt | head -n 1; echo \"status=${{PIPESTATUS[0]}}\" >&2; cat stderr.txt >&2"
            ),
        ])
        .current_dir(tempfile::tempdir().unwrap().keep())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    let (status, rest) = err.split_once('\n').unwrap_or((&err, ""));
    (text(&out.stdout), rest.to_string(), status.to_string())
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let repo = env!("CARGO_MANIFEST_DIR");
    // A large output, so the pipe closes while mailfleet still writes.
    let big = tempfile::tempdir().unwrap();
    let log = big.path().join("big.maillog");
    let line =
        std::fs::read_to_string(format!("{repo}/examples/logs/203.0.113.12.maillog")).unwrap();
    std::fs::write(&log, line.repeat(2000)).unwrap();
    for _ in 0..2 {
        for args in [
            format!("routes --manifests {repo}/examples/fleet --format postfix"),
            "completion bash".to_string(),
            "crd".to_string(),
            format!("classify {}", log.display()),
            format!(
                "agent replay --source-ip 203.0.113.12 --log {}",
                log.display()
            ),
        ] {
            let (first, err, status) = into_head(&args);
            assert!(!first.is_empty(), "{args}: nothing printed");
            assert!(err.trim().is_empty(), "{args}: {err}");
            // 0, or 141: ended by SIGPIPE as `cat` would be.
            assert!(
                status == "status=0" || status == "status=141",
                "{args}: {status}"
            );
        }
    }
}

#[test]
fn simulate_lists_scenarios_in_json_when_asked() {
    let out = mailfleet(&["simulate", "--list", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"seed-2021-11"), "{names:?}");
}

#[test]
fn a_dnsbl_round_that_could_not_ask_exits_non_zero() {
    // A UDP port that answers nothing: bound, never read.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let out = mailfleet(&[
        "probe",
        "dnsbl",
        "--nameserver",
        &address,
        "--zone",
        "zen.spamhaus.org",
        "--timeout-ms",
        "100",
        "--attempts",
        "1",
        "192.0.2.2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("zen.spamhaus.org"));
    // The port defaults to 53 (nothing listens there in a test; only the parse matters).
    let parsed = mailfleet(&[
        "probe",
        "dnsbl",
        "--nameserver",
        "127.0.0.1",
        "--zone",
        "zen.spamhaus.org",
        "--timeout-ms",
        "50",
        "--attempts",
        "1",
        "192.0.2.2",
    ]);
    assert_ne!(parsed.status.code(), Some(2), "{}", text(&parsed.stderr));
}
