//! The JSON route table (`mailfleet.io/route-table/v1`), documented field by
//! field in docs/ROUTE-TABLE.md.
//!
//! Field names are snake_case; mode and state values are the API's own words
//! (`Primary`, `Blocked`), so they read the same as `kubectl get mfroute -o yaml`.
//! Every field is always present (empty lists, `null`), and every list is sorted
//! by the compiler, so the same fleet always gives the same bytes. The document
//! carries no timestamp: an unchanged fleet renders an unchanged file, and a
//! sender reloads only when its routes really change.

use serde::{Deserialize, Serialize};

use crate::api::{ExcludedIp, ReputationState, RouteTarget};

use super::model::{mode_name, policy_name, Problem, RelayTarget, RouteResult, RouteTable};

/// The schema identifier; a breaking change to the format gets a new version.
pub const SCHEMA: &str = "mailfleet.io/route-table/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTableDocument {
    pub schema: String,
    pub routes: Vec<RouteDocument>,
    pub problems: Vec<ProblemDocument>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDocument {
    pub namespace: String,
    pub name: String,
    pub provider: String,
    #[serde(rename = "match")]
    pub match_: MatchDocument,
    pub learned_domains: Vec<String>,
    pub pool: String,
    pub when_no_healthy_ip: String,
    pub mode: String,
    pub fallback_in_use: bool,
    pub fallback_index: Option<usize>,
    pub serving_pool: Option<String>,
    pub throttle_per_hour: Option<i64>,
    pub targets: Vec<TargetDocument>,
    pub excluded: Vec<ExcludedDocument>,
    pub relay: Option<RelayDocument>,
    pub problems: Vec<ProblemDocument>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchDocument {
    pub domains: Vec<String>,
    pub domain_suffixes: Vec<String>,
    pub mx_host_suffixes: Vec<String>,
    pub default: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDocument {
    pub pool: String,
    pub ip: String,
    pub state: String,
    pub weight: i32,
    pub hourly_cap: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludedDocument {
    pub pool: String,
    pub ip: String,
    pub state: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayDocument {
    pub host: String,
    pub port: u16,
    pub credentials_secret: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemDocument {
    pub field: String,
    pub message: String,
}

/// Why a route table document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableJsonError {
    #[error("the route table is not valid JSON of schema {SCHEMA}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the route table has schema {found:?}, this mailfleet reads {SCHEMA:?}; upgrade the reader or the writer so they match")]
    WrongSchema { found: String },
}

impl From<&RouteTable> for RouteTableDocument {
    fn from(table: &RouteTable) -> Self {
        RouteTableDocument {
            schema: SCHEMA.to_string(),
            routes: table.routes.iter().map(RouteDocument::from).collect(),
            problems: table.problems.iter().map(ProblemDocument::from).collect(),
        }
    }
}

impl From<&RouteResult> for RouteDocument {
    fn from(route: &RouteResult) -> Self {
        RouteDocument {
            namespace: route.key.namespace.clone(),
            name: route.key.name.clone(),
            provider: route.provider.clone(),
            match_: MatchDocument {
                domains: route.matcher.domains.clone(),
                domain_suffixes: route.matcher.domain_suffixes.clone(),
                mx_host_suffixes: route.matcher.mx_host_suffixes.clone(),
                default: route.matcher.default,
            },
            learned_domains: route.learned_domains.clone(),
            pool: route.pool.clone(),
            when_no_healthy_ip: policy_name(route.when_no_healthy_ip).to_string(),
            mode: mode_name(route.mode).to_string(),
            fallback_in_use: route.fallback_in_use(),
            fallback_index: route.fallback_index,
            serving_pool: route.serving_pool.clone(),
            throttle_per_hour: route.throttle_per_hour,
            targets: route.targets.iter().map(TargetDocument::from).collect(),
            excluded: route.excluded.iter().map(ExcludedDocument::from).collect(),
            relay: route.relay.as_ref().map(RelayDocument::from),
            problems: route.problems.iter().map(ProblemDocument::from).collect(),
        }
    }
}

impl From<&RouteTarget> for TargetDocument {
    fn from(t: &RouteTarget) -> Self {
        TargetDocument {
            pool: t.pool.clone(),
            ip: t.ip.clone(),
            state: state_name(t.state).to_string(),
            weight: t.weight,
            hourly_cap: t.hourly_cap,
        }
    }
}

impl From<&ExcludedIp> for ExcludedDocument {
    fn from(e: &ExcludedIp) -> Self {
        ExcludedDocument {
            pool: e.pool.clone(),
            ip: e.ip.clone(),
            state: state_name(e.state).to_string(),
            reason: e.reason.clone(),
        }
    }
}

impl From<&RelayTarget> for RelayDocument {
    fn from(r: &RelayTarget) -> Self {
        RelayDocument {
            host: r.host.clone(),
            port: r.port,
            credentials_secret: r.credentials_secret.clone(),
        }
    }
}

impl From<&Problem> for ProblemDocument {
    fn from(p: &Problem) -> Self {
        ProblemDocument {
            field: p.field.clone(),
            message: p.message.clone(),
        }
    }
}

fn state_name(state: ReputationState) -> &'static str {
    state.as_str()
}

/// The route table as pretty-printed JSON with a final newline.
pub fn render(table: &RouteTable) -> String {
    let document = RouteTableDocument::from(table);
    // Plain strings, numbers and lists cannot fail to serialise.
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads a route table document, refusing other schema versions. Fields it does
/// not know are ignored, so a `v1` writer may add optional fields.
pub fn parse(text: &str) -> Result<RouteTableDocument, RouteTableJsonError> {
    #[derive(Deserialize)]
    struct Probe {
        schema: String,
    }
    let probe: Probe = serde_json::from_str(text)?;
    if probe.schema != SCHEMA {
        return Err(RouteTableJsonError::WrongSchema {
            found: probe.schema,
        });
    }
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::compile;
    use crate::routing::example::incident_fleet;

    fn now() -> jiff::Timestamp {
        "2021-11-05T08:10:00Z".parse().unwrap()
    }

    #[test]
    fn the_table_is_versioned_snake_case_and_round_trips() {
        let (pools, routes) = incident_fleet(now());
        let text = render(&compile(&pools, &routes, now()));
        assert!(
            text.starts_with(
                "{\n  \"schema\": \"mailfleet.io/route-table/v1\",\n  \"routes\": [\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        for field in [
            "\"learned_domains\"",
            "\"when_no_healthy_ip\"",
            "\"fallback_in_use\"",
            "\"hourly_cap\"",
            "\"mx_host_suffixes\"",
        ] {
            assert!(text.contains(field), "missing {field}");
        }
        assert!(text.contains(
            "        {\n          \"pool\": \"bulk\",\n          \"ip\": \"203.0.113.13\",\n          \"state\": \"Blocked\",\n          \"reason\": \"microsoft blocks this IP (ConclusiveBlockReply)\"\n        }"
        ), "{text}");
        let document = parse(&text).unwrap();
        assert_eq!(document.routes.len(), 5);
        let names: Vec<&str> = document.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "default",
                "google",
                "microsoft",
                "microsoft-365",
                "yahoo-japan"
            ]
        );
        assert_eq!(
            serde_json::to_string_pretty(&document).unwrap() + "\n",
            text
        );
    }

    #[test]
    fn the_same_fleet_gives_the_same_bytes_at_any_time() {
        let (pools, routes) = incident_fleet(now());
        let a = render(&compile(&pools, &routes, now()));
        let later = now() + jiff::SignedDuration::from_hours(1);
        let b = render(&compile(&pools, &routes, later));
        assert_eq!(a, b);
    }

    #[test]
    fn other_schema_versions_are_refused() {
        let err = parse(
            "{\"schema\": \"mailfleet.io/route-table/v2\", \"routes\": [], \"problems\": []}",
        )
        .unwrap_err();
        assert!(err.to_string().contains("route-table/v2"), "{err}");
        assert!(matches!(
            parse("[]"),
            Err(RouteTableJsonError::Malformed(_))
        ));
        // A later v1 writer may add fields; this reader ignores them.
        let newer = r#"{"schema": "mailfleet.io/route-table/v1", "routes": [], "problems": [], "digest": "x"}"#;
        assert!(parse(newer).unwrap().routes.is_empty());
    }
}
