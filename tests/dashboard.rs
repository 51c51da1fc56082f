//! The Grafana dashboard and the PrometheusRule of the chart name only what
//! the code exports: every metric, every label a query groups or filters by,
//! and every state, mode, outcome and category word a matcher compares with.
//!
//! The exported families come from the code itself: the operator's metrics,
//! its DNSBL/feed probes and its HTTP port (served on loopback and scraped),
//! and the agent's metrics, each with one sample of every kind, so a metric
//! renamed in the code fails here before a user's dashboard goes blank.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mailfleet::agent::line::LineSkip;
use mailfleet::agent::metrics::Metrics as AgentMetrics;
use mailfleet::agent::report::{FeedbackReport, FeedbackResponse, QueueReport, RouteQueueReport};
use mailfleet::api::domain_route::RouteMode;
use mailfleet::api::sender_pool::ReputationState;
use mailfleet::api::DnsblResult;
use mailfleet::metrics::ProcessRegistry;
use mailfleet::operator::metrics::{Metrics as OperatorMetrics, PairStates};
use mailfleet::probe::dnsbl::{ProbeError, ProbeOutcome, ZoneErrorCounters};
use mailfleet::probe::runner::render_metrics as render_probe_metrics;
use mailfleet::probe::snds::SndsCounters;
use mailfleet::reputation::postfix_log::Skip;
use mailfleet::serve::{
    FeedbackReceiver, FeedbackRefusal, Observability, ProbeFailure, ProbeReport, RequestHead,
};
use mailfleet::vocab::{Category, Outcome};
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DASHBOARD: &str = "charts/mailfleet/dashboards/mailfleet.json";
const RULES: &str = "charts/mailfleet/templates/prometheusrule.yaml";
/// Labels Prometheus adds to every scraped series, and the histogram bound.
const TARGET_LABELS: [&str; 5] = ["namespace", "pod", "job", "instance", "le"];

/// metric name → labels seen on its samples.
type Catalogue = BTreeMap<String, BTreeSet<String>>;

fn add_exposition(catalogue: &mut Catalogue, text: &str) {
    let sample = Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s").unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="#).unwrap();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let name = family.split_whitespace().next().unwrap().to_string();
            catalogue.entry(name).or_default();
        } else if let Some(found) = sample.captures(line) {
            let labels = catalogue.entry(found[1].to_string()).or_default();
            if let Some(set) = found.get(3) {
                labels.extend(label.captures_iter(set.as_str()).map(|c| c[1].to_string()));
            }
        }
    }
}

fn operator_metrics() -> String {
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
    metrics.api_write("patch");
    metrics.set_leader(true);
    let mut text = metrics.render();
    // The probes' families carry their labels only once a zone was asked.
    let mut zones = ZoneErrorCounters::default();
    let timeout = ProbeError::Timeout {
        nameserver: "127.0.0.1:53".parse().unwrap(),
        attempts: 1,
        timeout_ms: 1,
    };
    for (listed, error) in [(true, None), (false, Some(timeout))] {
        zones.record(&ProbeOutcome {
            ip: "203.0.113.10".parse().unwrap(),
            result: DnsblResult {
                zone: "zen.example.net".into(),
                listed,
                codes: Vec::new(),
                reason: None,
                error: None,
                checked_at: Time(Timestamp::UNIX_EPOCH),
            },
            error,
            cached: false,
        });
    }
    text.push_str(&render_probe_metrics(
        &zones,
        &SndsCounters::default(),
        &SndsCounters::default(),
    ));
    text
}

fn agent_metrics() -> String {
    let metrics = AgentMetrics::default();
    metrics.attempt("microsoft", Outcome::Bounced, Category::IpBlocklisted);
    metrics.skipped(LineSkip::Log(Skip::Binary));
    metrics.report_failed("timeout");
    metrics.set_buffered(1);
    metrics.log_event("rotated");
    metrics.config_apply("applied", Some("v1"));
    let arrival = Timestamp::from_second(1_636_000_000).unwrap();
    metrics.set_queue(
        &QueueReport {
            read_at: Timestamp::now(),
            messages: 1840,
            oldest_arrival: Some(arrival),
            maximal_lifetime_seconds: Some(1_209_600),
            complete: true,
            routes: vec![RouteQueueReport {
                namespace: "mail".into(),
                route: "microsoft".into(),
                provider: "microsoft".into(),
                messages: 1822,
                oldest_arrival: arrival,
            }],
        },
        0.25,
    );
    metrics.render()
}

/// Refuses every report: enough for the port to count a request by status.
struct Refuser;

impl FeedbackReceiver for Refuser {
    type Caller = ();

    async fn authenticate(&self, _: &RequestHead) -> Result<(), FeedbackRefusal> {
        Err(FeedbackRefusal::Unauthorized("no token".into()))
    }

    async fn receive(&self, _: (), _: FeedbackReport) -> Result<FeedbackResponse, FeedbackRefusal> {
        unreachable!("authenticate refuses everything")
    }
}

/// A process whose registry holds only what every process exports.
#[derive(Default)]
struct NoMetrics(ProcessRegistry);

impl Observability for NoMetrics {
    fn registry(&self) -> &ProcessRegistry {
        &self.0
    }
    fn health(&self) -> Result<ProbeReport, ProbeFailure> {
        Ok(ProbeReport::Healthy)
    }
    fn ready(&self) -> Result<ProbeReport, ProbeFailure> {
        Ok(ProbeReport::Ready)
    }
}

async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The port's own families, scraped after one refused report.
async fn port_metrics() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mailfleet::serve::serve(
        listener,
        Arc::new(Refuser),
        Arc::new(NoMetrics::default()),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    exchange(
        addr,
        "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    let scraped = exchange(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let (_, body) = scraped.split_once("\r\n\r\n").expect("an HTTP answer");
    body.to_string()
}

async fn exported() -> Catalogue {
    let mut catalogue = Catalogue::new();
    add_exposition(&mut catalogue, &operator_metrics());
    add_exposition(&mut catalogue, &agent_metrics());
    add_exposition(&mut catalogue, &port_metrics().await);
    catalogue
}

/// Every word a matcher on this label may compare with.
fn words_of(label: &str) -> Option<BTreeSet<String>> {
    let words: Vec<&str> = match label {
        "state" => {
            use ReputationState::*;
            [Healthy, Warming, Throttled, Blocked, Probing, Recovering]
                .iter()
                .map(|s| s.as_str())
                .collect()
        }
        "mode" => {
            use RouteMode::*;
            [Primary, FallbackPool, Relay, Defer]
                .iter()
                .map(|m| match m {
                    Primary => "Primary",
                    FallbackPool => "FallbackPool",
                    Relay => "Relay",
                    Defer => "Defer",
                })
                .collect()
        }
        "outcome" => Outcome::ALL.iter().map(|o| o.as_str()).collect(),
        "category" => Category::ALL.iter().map(|c| c.as_str()).collect(),
        _ => return None,
    };
    Some(words.into_iter().map(String::from).collect())
}

/// What is wrong with one PromQL expression, against the catalogue.
fn problems_of(expr: &str, catalogue: &Catalogue) -> Vec<String> {
    let metric = Regex::new(r"\b(mailfleet_[a-z_]+)\b").unwrap();
    let selector = Regex::new(r"\b(mailfleet_[a-z_]+)\{([^}]*)\}").unwrap();
    let matcher = Regex::new(r#"([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let grouping = Regex::new(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)").unwrap();
    let mut problems = Vec::new();
    let used: BTreeSet<&str> = metric
        .captures_iter(expr)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for name in &used {
        match catalogue.get(*name) {
            Some(carried) => labels.extend(carried.iter().cloned()),
            None => problems.push(format!("`{name}` is not exported by the code")),
        }
    }
    for found in selector.captures_iter(expr) {
        let carried = catalogue.get(&found[1]).cloned().unwrap_or_default();
        for m in matcher.captures_iter(&found[2]) {
            let label = &m[1];
            if !carried.contains(label) && !TARGET_LABELS.contains(&label) {
                problems.push(format!("`{}` has no label `{label}`", &found[1]));
            }
            if m[2].starts_with('!') {
                continue;
            }
            if let Some(words) = words_of(label) {
                for word in m[3].split('|').filter(|w| !w.starts_with('$')) {
                    if !words.contains(word) {
                        problems.push(format!("{label}=\"{word}\" is not one of {words:?}"));
                    }
                }
            }
        }
    }
    for found in grouping.captures_iter(expr) {
        for label in found[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            if !labels.contains(label) {
                problems.push(format!("groups by `{label}`, which {used:?} do not carry"));
            }
        }
    }
    problems
}

fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    let label_values = Regex::new(r"label_values\((\w+),\s*(\w+)\)").unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            let found = label_values
                .captures(query)
                .expect("label_values(metric, label)");
            queries.push((
                format!("variable {}", variable["name"]),
                format!("max by ({}) ({})", &found[2], &found[1]),
            ));
        }
    }
    queries
}

#[tokio::test]
async fn every_dashboard_query_names_exported_metrics_and_labels() {
    let catalogue = exported().await;
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "only {} queries", queries.len());
    let mut problems = Vec::new();
    for (panel, expr) in &queries {
        for problem in problems_of(expr, &catalogue) {
            problems.push(format!("{DASHBOARD} panel {panel:?}: {problem}\n  {expr}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn every_alert_names_exported_metrics_and_labels() {
    let catalogue = exported().await;
    let text = std::fs::read_to_string(RULES).unwrap();
    // One-line `expr:` values and `expr: |-` blocks.
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        if rest.trim() == "|-" {
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                if !next.starts_with("            ") {
                    break;
                }
                block.push_str(lines.next().unwrap().trim());
                block.push(' ');
            }
            exprs.push(block);
        } else {
            exprs.push(rest.trim().to_string());
        }
    }
    assert!(exprs.len() >= 6, "found {} alert expressions", exprs.len());
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|e| {
            problems_of(e, &catalogue)
                .into_iter()
                .map(move |p| format!("{p}\n  {e}"))
        })
        .collect();
    assert!(problems.is_empty(), "{RULES}: {}", problems.join("\n"));
}

#[tokio::test]
async fn the_check_finds_a_renamed_metric_a_wrong_label_and_a_wrong_word() {
    let catalogue = exported().await;
    assert!(catalogue.contains_key("mailfleet_ip_state"));
    assert!(catalogue.contains_key("mailfleet_agent_attempts_total"));
    assert!(catalogue.contains_key("mailfleet_feedback_requests_total"));
    assert_eq!(
        problems_of("sum(mailfleet_ip_states)", &catalogue),
        ["`mailfleet_ip_states` is not exported by the code"]
    );
    assert_eq!(
        problems_of("sum by (route) (mailfleet_ip_state)", &catalogue).len(),
        1
    );
    assert_eq!(
        problems_of(r#"mailfleet_ip_state{state="Banned"}"#, &catalogue).len(),
        1
    );
    assert_eq!(
        problems_of(r#"mailfleet_route_targets{pool="x"}"#, &catalogue).len(),
        1
    );
    assert!(problems_of(
        r#"count by (state) (mailfleet_ip_state{state=~"Blocked|Probing", pool=~"$pool"})"#,
        &catalogue
    )
    .is_empty());
}
