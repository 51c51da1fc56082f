//! The metrics table of docs/OPERATING.md is the list the code declares
//! (`src/metrics/catalogue.rs`): every family, its type, its labels and the
//! mode that exports it; and what the operator's and standalone's sources
//! write, scraped, is declared there with those labels.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mailfleet::metrics::catalogue::{Modes, ALL};
use mailfleet::metrics::{render, Kind, ProcessRegistry};
use mailfleet::operator::metrics::{Metrics as OperatorMetrics, PairStates};
use mailfleet::standalone::core::CoreMetrics;
use mailfleet::standalone::haproxy::HaproxyCounts;
use regex::Regex;

const OPERATING_MD: &str = "docs/OPERATING.md";

#[derive(Debug, PartialEq, Eq)]
struct Row {
    kind: String,
    labels: Vec<String>,
    mode: String,
}

fn documented() -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(OPERATING_MD).unwrap();
    let start = text
        .find("\n| metric | type | labels | mode | meaning |")
        .unwrap_or_else(|| panic!("{OPERATING_MD} has no metrics table with a mode column"));
    let word = Regex::new(r"`([a-z_]+)`").unwrap();
    let mut rows = BTreeMap::new();
    for line in text[start + 1..].lines().skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let row = Row {
            kind: cells[2].to_string(),
            labels: word
                .captures_iter(cells[3])
                .map(|c| c[1].to_string())
                .collect(),
            mode: cells[4].to_string(),
        };
        assert!(
            rows.insert(name.clone(), row).is_none(),
            "{name} twice in the table"
        );
    }
    rows
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        _ => "other",
    }
}

#[test]
fn the_table_is_the_catalogue() {
    let documented = documented();
    let declared: BTreeMap<String, Row> = ALL
        .iter()
        .map(|spec| {
            (
                spec.name.to_string(),
                Row {
                    kind: kind_word(spec.kind).to_string(),
                    labels: spec.labels.iter().map(|l| l.to_string()).collect(),
                    mode: spec.modes.as_str().to_string(),
                },
            )
        })
        .collect();
    for (name, row) in &declared {
        assert_eq!(
            documented.get(name),
            Some(row),
            "{OPERATING_MD}'s row for {name} should read type {}, labels {:?}, mode {}",
            row.kind,
            row.labels,
            row.mode
        );
    }
    let extra: Vec<&String> = documented
        .keys()
        .filter(|name| !declared.contains_key(*name))
        .collect();
    assert!(
        extra.is_empty(),
        "{OPERATING_MD} lists families the code does not declare: {extra:?}"
    );
}

/// family → the label sets of its samples (a family without samples has none).
fn scraped(text: &str) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let sample = Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ").unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)=""#).unwrap();
    let mut families: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let name = family.split_whitespace().next().unwrap().to_string();
            families.entry(name).or_default();
        } else if let Some(found) = sample.captures(line) {
            let name = found[1]
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string();
            let labels = found
                .get(3)
                .map(|set| {
                    label
                        .captures_iter(set.as_str())
                        .map(|c| c[1].to_string())
                        .filter(|l| l != "le")
                        .collect()
                })
                .unwrap_or_default();
            families.entry(name).or_default().insert(labels);
        }
    }
    families
}

/// Families written by sources a unit test cannot build alone: the HTTP
/// port's (scraped in tests/dashboard.rs), the reverse DNS gauges' (written
/// only once a verdict exists), standalone's feedback log's, the posted
/// abuse reports' and the operator-made certificate's (scraped in
/// tests/operator_feedback_cert.rs).
const WRITTEN_ELSEWHERE: [&str; 8] = [
    "mailfleet_feedback_requests_total",
    "mailfleet_complaint_reports_total",
    "mailfleet_http_connections_refused_total",
    "mailfleet_http_plain_requests_refused_total",
    "mailfleet_reverse_dns_confirmed",
    "mailfleet_feedback_log_syncs_total",
    "mailfleet_feedback_log_reports_total",
    "mailfleet_feedback_certificate_expiry_timestamp_seconds",
];

fn holds_to_the_catalogue(text: &str, mode: Modes) {
    let families = scraped(text);
    for (name, label_sets) in &families {
        if name.starts_with("process_") {
            continue;
        }
        let spec = ALL
            .iter()
            .find(|spec| spec.name == name)
            .unwrap_or_else(|| panic!("{name} is exported but not declared in the catalogue"));
        assert!(
            spec.modes == mode || spec.modes == Modes::Both,
            "{name} is exported by {mode:?} but declared for {:?}",
            spec.modes
        );
        for labels in label_sets {
            assert_eq!(labels, &spec.labels.to_vec(), "{name}'s labels");
        }
    }
    for spec in ALL.iter().filter(|spec| {
        (spec.modes == mode || spec.modes == Modes::Both) && !WRITTEN_ELSEWHERE.contains(&spec.name)
    }) {
        assert!(
            families.contains_key(spec.name),
            "{} is declared for {mode:?} but not exported",
            spec.name
        );
    }
}

fn operator_with_every_kind_of_sample() -> String {
    let metrics = OperatorMetrics::default();
    metrics.reconciled("pool", Duration::from_millis(12));
    metrics.failed("pool", "api");
    let mut states = PairStates::new();
    states.insert(
        ("203.0.113.10".into(), "microsoft".into()),
        "Blocked".into(),
    );
    metrics.set_pool_states("mail/bulk", states);
    metrics.set_route_targets("mail/microsoft", "FallbackPool", 2);
    metrics.set_route_queue(
        "mail/microsoft",
        Some((1840, 1_636_000_000, Some(1_209_600))),
    );
    metrics.drain("mail/bulk", 3);
    metrics.feedback_report("mail/bulk");
    metrics.feedback_batch(1);
    metrics.api_write("patch");
    metrics.unreadable_status("SenderPool");
    metrics.set_leader(true);
    let registry = ProcessRegistry::new();
    registry.register(metrics);
    registry.encode()
}

#[test]
fn the_operator_exports_what_the_catalogue_declares() {
    let text = operator_with_every_kind_of_sample();
    holds_to_the_catalogue(&text, Modes::Operator);
    assert!(text
        .contains("mailfleet_feedback_reports_total{pool=\"mail/bulk\",result=\"counted\"} 1\n"));
    assert!(text.contains("mailfleet_ip_state{pool=\"mail/bulk\",ip=\"203.0.113.10\",provider=\"microsoft\",state=\"Healthy\"} 0\n"));
}

#[test]
fn standalone_declares_its_families_in_the_catalogue() {
    let mut text = render(&CoreMetrics::default());
    text.push_str(&render(&HaproxyCounts::default()));
    text.push_str(&ProcessRegistry::new().encode());
    holds_to_the_catalogue(&text, Modes::Standalone);
}
