//! L1: the CRDs as shipped. They must match the code byte for byte, be structural
//! (the API server rejects anything else) and accept every example we ship.

use std::path::Path;

use mailfleet::api::crd;
use mailfleet::api::validate::{crd_schema, validate};
use serde_json::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn crds_folder_matches_the_code() {
    for c in crd::all() {
        let file = repo("crds").join(crd::file_name(&c));
        let stored = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            stored == crd::to_yaml(&c),
            "{} is out of date with src/api; run `make crds` and commit the result",
            file.display()
        );
    }
    let files = std::fs::read_dir(repo("crds")).unwrap().count();
    assert_eq!(
        files,
        crd::all().len(),
        "crds/ holds a file that no CRD produces"
    );
}

#[test]
fn the_chart_crds_match_the_code() {
    for c in crd::all() {
        let file = repo(crd::CHART_CRD_DIR).join(crd::file_name(&c));
        let stored = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            stored == crd::to_chart_template(&c),
            "{} is out of date with src/api; run `make crds` and commit the result",
            file.display()
        );
        assert!(stored.contains("helm.sh/resource-policy: keep"));
        assert!(stored.starts_with("{{- if .Values.crds.install }}"));
    }
    let files = std::fs::read_dir(repo(crd::CHART_CRD_DIR)).unwrap().count();
    assert_eq!(
        files,
        crd::all().len(),
        "the chart holds a CRD template that no CRD produces"
    );
}

#[test]
fn mailfleet_crd_prints_exactly_the_crds_folder() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailfleet"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut files: Vec<_> = std::fs::read_dir(repo("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let stored: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), stored);
}

/// Returns what makes a schema node non-structural, if anything.
fn structural_problems(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema node is not an object"));
        return;
    };
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if obj.get("type").and_then(Value::as_str).is_none() && !preserve && !int_or_string {
        out.push(format!("{path}: node without a type"));
    }
    if obj.contains_key("$ref") {
        out.push(format!("{path}: $ref is not allowed"));
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = obj.get(combinator).and_then(Value::as_array) {
            for (i, b) in branches.iter().enumerate() {
                for forbidden in [
                    "type",
                    "default",
                    "nullable",
                    "description",
                    "additionalProperties",
                ] {
                    if b.get(forbidden).is_some() {
                        out.push(format!(
                            "{path}.{combinator}[{i}]: `{forbidden}` inside a {combinator} branch"
                        ));
                    }
                }
            }
        }
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array) {
        if values.iter().any(Value::is_null) {
            out.push(format!("{path}: null inside an enum"));
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("array") && !obj.contains_key("items") {
        out.push(format!("{path}: array without items"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if obj.contains_key("additionalProperties") {
            out.push(format!("{path}: both properties and additionalProperties"));
        }
        for (k, v) in props {
            if path.ends_with(".metadata") {
                continue;
            }
            structural_problems(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    }
    if let Some(add) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_problems(add, &format!("{path}{{}}"), out);
    }
}

fn descriptions_missing(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (k, v) in props {
        let here = format!("{path}.{k}");
        if path.is_empty() && (k == "apiVersion" || k == "kind" || k == "metadata") {
            continue;
        }
        if v.get("description")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            out.push(here.clone());
        }
        descriptions_missing(v, &here, out);
        if let Some(items) = v.get("items") {
            descriptions_missing(items, &format!("{here}[]"), out);
        }
    }
}

#[test]
fn every_schema_is_structural() {
    for c in crd::all() {
        let mut problems = Vec::new();
        structural_problems(&crd_schema(&c), "", &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            c.metadata.name.unwrap()
        );
    }
}

#[test]
fn the_walk_catches_what_the_api_server_rejects() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "x"},
            "mode": {"type": "string", "enum": ["A", null]},
            "either": {"type": "object", "anyOf": [{"type": "string"}]}
        }
    });
    let mut problems = Vec::new();
    structural_problems(&bad, "", &mut problems);
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn every_field_is_described_for_kubectl_explain() {
    for c in crd::all() {
        let mut missing = Vec::new();
        descriptions_missing(&crd_schema(&c), "", &mut missing);
        assert!(
            missing.is_empty(),
            "{} fields without description: {missing:#?}",
            c.metadata.name.unwrap()
        );
    }
}

#[test]
fn crds_carry_names_categories_columns_and_status() {
    for c in crd::all() {
        let v = &c.spec.versions[0];
        assert_eq!(c.spec.group, "mailfleet.io");
        assert_eq!(v.name, "v1alpha1");
        assert_eq!(c.spec.scope, "Namespaced");
        assert_eq!(
            c.spec.names.categories.as_deref(),
            Some(&["mailfleet".to_string()][..])
        );
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
        let columns: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let short_names = c.spec.names.short_names.clone().unwrap_or_default();
        for name in &short_names {
            assert!(
                !WELL_KNOWN_SHORT_NAMES.contains(&name.as_str()),
                "short name {name} of {} is already taken by a well-known resource",
                c.spec.names.kind
            );
        }
        match c.spec.names.kind.as_str() {
            "SenderPool" => {
                assert_eq!(short_names, ["sp"]);
                assert_eq!(
                    columns,
                    [
                        "IPs",
                        "Healthy",
                        "Blocked",
                        "Ready",
                        "Ready IPs",
                        "Status",
                        "Age"
                    ]
                );
            }
            "DomainRoute" => {
                assert_eq!(short_names, ["mfroute"]);
                assert_eq!(
                    columns,
                    ["Provider", "Pool", "Mode", "Targets", "Excluded", "Ready", "Status", "Age"]
                );
            }
            other => panic!("unexpected kind {other}"),
        }
        // What kubectl prints: the Ready condition's status in the default view,
        // its message only with -o wide (priority 1).
        let status = serde_json::json!({"status": {"conditions": [
            {"type": "Accepted", "status": "True", "message": "accepted"},
            {"type": "Ready", "status": "False", "message": "IP 203.0.113.10 has no ready pod"},
        ]}});
        for column in v.additional_printer_columns.iter().flatten() {
            let shown = kubectl_column(&column.json_path, &status);
            match column.name.as_str() {
                "Ready" => {
                    assert_eq!(shown, ["False"], "{}", column.json_path);
                    assert_eq!(column.priority, None, "Ready is in the default view");
                }
                "Status" => {
                    assert_eq!(shown, ["IP 203.0.113.10 has no ready pod"]);
                    assert_eq!(column.priority, Some(1), "Status only in -o wide");
                }
                _ => {}
            }
        }
        let schema = crd_schema(&c);
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }
}

/// Short names of resources found on many clusters (built-in ones and common
/// CRDs such as Istio's, cert-manager's, Argo's, Flux's, Prometheus's).
const WELL_KNOWN_SHORT_NAMES: &[&str] = &[
    "cm", "cs", "csr", "ds", "deploy", "ep", "ev", "hpa", "ing", "limits", "netpol", "no", "ns",
    "pc", "pdb", "po", "psp", "pv", "pvc", "quota", "rc", "rs", "sa", "sc", "sts", "svc", "crd",
    "crds", "dr", "vs", "gw", "se", "pa", "ra", "ap", "sidecar", "wle", "we", "cert", "certs",
    "cr", "crs", "issuer", "ciss", "app", "apps", "appproj", "hr", "ks", "gitrepo", "promrule",
    "smon", "pmon", "prom", "am",
];

/// Evaluates a printer column's JSONPath as kubectl does (kubectl's dialect is
/// RFC 9535 without the leading `$`).
fn kubectl_column(path: &str, object: &serde_json::Value) -> Vec<String> {
    let query = serde_json_path::JsonPath::parse(&format!("${path}"))
        .unwrap_or_else(|e| panic!("printer column path {path}: {e}"));
    query
        .query(object)
        .all()
        .into_iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .collect()
}

fn holds_yaml(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "yaml"))
}

#[test]
fn every_example_passes_the_schema_and_cel_rules() {
    let mut checked = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(repo("examples"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|d| d.is_dir() && holds_yaml(d))
        .collect();
    dirs.sort();
    for dir in dirs {
        // Every other example folder is an overlay on the fleet (status snapshots, what-ifs).
        let layers = if dir.ends_with("fleet") {
            vec![dir.clone()]
        } else {
            vec![repo("examples/fleet"), dir.clone()]
        };
        let m = mailfleet::manifests::load_overlays(&layers)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        checked += m.pools.len() + m.routes.len();
        for pool in &m.pools {
            pool.validate_cel()
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", pool.metadata.name));
        }
        for route in &m.routes {
            route
                .validate_cel()
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", route.metadata.name));
        }
    }
    assert!(
        checked >= 7,
        "expected the example fleet, found {checked} objects"
    );
}

#[test]
fn the_example_fleet_is_the_realistic_one() {
    let m = mailfleet::manifests::load_dir(&repo("examples/fleet")).unwrap();
    assert_eq!(m.pools.len(), 2);
    let ips: usize = m.pools.iter().map(|p| p.spec.ips.len()).sum();
    assert_eq!(ips, 8);
    let providers: Vec<&str> = m.routes.iter().map(|r| r.spec.provider.as_str()).collect();
    for p in ["microsoft", "google", "yahoo", "other"] {
        assert!(providers.contains(&p), "no {p} route");
    }
    assert!(m.routes.iter().any(|r| r.spec.match_.default == Some(true)));
    assert!(m
        .routes
        .iter()
        .any(|r| r.spec.fallback.iter().any(|f| f.relay.is_some())));
}

#[test]
fn a_rule_violation_is_caught_the_same_way_for_a_typed_object() {
    let m = mailfleet::manifests::load_dir(&repo("examples/fleet")).unwrap();
    let mut pool = m.pools[0].clone();
    pool.spec.replicas_per_ip.min = 5;
    pool.spec.replicas_per_ip.max = 1;
    assert!(pool.validate_cel().is_err());
    let value = serde_json::to_value(&pool).unwrap();
    let schema = crd_schema(
        &crd::all()
            .into_iter()
            .find(|c| c.spec.names.kind == "SenderPool")
            .unwrap(),
    );
    assert!(validate(&schema, &value)
        .iter()
        .any(|v| v.path.contains("replicasPerIp")));
}

#[test]
fn caps_connection_limits_and_queue_lifetimes_are_refused_naming_the_field() {
    let m = mailfleet::manifests::load_dir(&repo("examples/fleet")).unwrap();
    let schema_of = |kind: &str| {
        crd_schema(
            &crd::all()
                .into_iter()
                .find(|c| c.spec.names.kind == kind)
                .unwrap(),
        )
    };
    let pool_schema = schema_of("SenderPool");
    let route_schema = schema_of("DomainRoute");
    let refused = |schema: &Value, value: Value, wanted: &str| {
        let violations = validate(schema, &value);
        assert!(
            violations
                .iter()
                .any(|v| v.path.contains(wanted) || v.message.contains(wanted)),
            "expected a refusal naming {wanted}, got {violations:?}"
        );
    };
    let pool = || serde_json::to_value(&m.pools[0]).unwrap();

    let mut v = pool();
    v["spec"]["rateLimits"]["perHour"] = 0.into();
    refused(&pool_schema, v, "rateLimits.perHour");
    let mut v = pool();
    v["spec"]["rateLimits"]["perProvider"] = serde_json::json!({"microsoft": -5});
    refused(&pool_schema, v, "rateLimits.perProvider");
    let mut v = pool();
    v["spec"]["warmup"] = serde_json::json!({"hourlyCaps": [20, 0, 40]});
    refused(&pool_schema, v, "warmup.hourlyCaps");
    let mut v = pool();
    v["spec"]["connections"] =
        serde_json::json!({"perProvider": {"orange": {"maxConnections": 5000}}});
    refused(&pool_schema, v, "maxConnections");
    let mut v = pool();
    v["spec"]["connections"] = serde_json::json!({"default": {"maxRecipientsPerMessage": 0}});
    refused(&pool_schema, v, "maxRecipientsPerMessage");
    let mut v = pool();
    v["spec"]["queue"] = serde_json::json!({"maximalLifetimeSeconds": 9_000_000});
    refused(&pool_schema, v, "queue.maximalLifetimeSeconds");
    // A lifetime shorter than the longest hold-down: CEL over two fields.
    let mut v = pool();
    v["spec"]["reputation"]["maxHoldDownSeconds"] = (4 * 86_400).into();
    v["spec"]["queue"] = serde_json::json!({"maximalLifetimeSeconds": 3 * 86_400});
    refused(
        &pool_schema,
        v,
        "shorter than spec.reputation.maxHoldDownSeconds",
    );
    let mut v = pool();
    v["spec"]["queue"] = serde_json::json!({"maximalLifetimeSeconds": 86_400 * 10, "bounceLifetimeSeconds": 86_400 * 11});
    refused(&pool_schema, v, "bounceLifetimeSeconds must not exceed");
    // The same pool with sound values passes.
    let mut v = pool();
    v["spec"]["queue"] = serde_json::json!({"maximalLifetimeSeconds": 86_400 * 14});
    v["spec"]["connections"] =
        serde_json::json!({"perProvider": {"orange": {"maxConnections": 2}}});
    assert_eq!(validate(&pool_schema, &v), vec![]);

    let mut v = serde_json::to_value(&m.routes[0]).unwrap();
    v["spec"]["throttle"] = serde_json::json!({"maxPerHour": 0});
    refused(&route_schema, v, "throttle.maxPerHour");
    let mut v = serde_json::to_value(&m.routes[0]).unwrap();
    v["spec"]["connections"] = serde_json::json!({"maxMessagesPerConnection": 200_000});
    refused(&route_schema, v, "maxMessagesPerConnection");
}
