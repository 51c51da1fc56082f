"""Offline checks of the rendered mailfleet chart, run by scripts/chart-test.sh.

Each subcommand reads rendered YAML (or the chart's own files), prints one line
saying what it checked, and exits non-zero with the object and field at fault.
"""
import glob
import json
import re
import sys
from pathlib import Path

import yaml

MONITORING_GROUP = "monitoring.coreos.com/"
# The metrics the alerts may use and their labels, as the operator exports
# them (src/metrics/catalogue.rs, the table in docs/OPERATING.md).
OPERATOR_METRICS = {
    "mailfleet_ip_state": {"pool", "ip", "provider", "state"},
    "mailfleet_route_targets": {"route", "mode"},
    "mailfleet_route_queue_messages": {"route"},
    "mailfleet_route_queue_oldest_arrival_timestamp_seconds": {"route"},
    "mailfleet_route_queue_lifetime_seconds": {"route"},
    "mailfleet_drains_total": {"pool", "result"},
    "mailfleet_drain_left_messages_total": {"pool"},
    "mailfleet_feedback_reports_total": {"pool", "result"},
    "mailfleet_feedback_requests_total": {"code"},
    "mailfleet_leader": set(),
    "mailfleet_reconcile_failures_total": {"controller", "category"},
}
ROUTE_MODES = {"Primary", "FallbackPool", "Relay", "Defer"}


def fail(message):
    sys.exit(f"chart check failed: {message}")


def objects(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def crds(rendered_path):
    """The chart's CRD templates render exactly crds/ (plus the keep annotation)."""
    rendered = open(rendered_path).read()
    paths = sorted(glob.glob("crds/*.yaml"))
    for path in paths:
        body = open(path).read().split("---\n", 1)[1]
        kept = body.replace("metadata:\n", "metadata:\n  annotations:\n    helm.sh/resource-policy: keep\n", 1)
        if kept not in rendered:
            fail(f"helm template renders {path} differently from crds/; run `make crds`")
    print(f"chart renders the {len(paths)} CRDs of crds/ byte for byte")


def split(rendered_path, out_dir):
    """Built-in kinds for kubernetes-validate; Prometheus Operator kinds apart."""
    builtin, monitoring = [], []
    for obj in objects(rendered_path):
        (monitoring if obj.get("apiVersion", "").startswith(MONITORING_GROUP) else builtin).append(obj)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "builtin.yaml").write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    (out / "monitoring.yaml").write_text(yaml.safe_dump_all(monitoring, sort_keys=False))
    print(f"{len(builtin)} built-in objects ({', '.join(sorted({o['kind'] for o in builtin}))}), "
          f"{len(monitoring)} Prometheus Operator objects")


def rule_triples(rules, where, named=False):
    """(group, resource, verb) of each rule; with `named`, the rule's
    resourceNames too (the feedback certificate's Role is for one Secret)."""
    triples = set()
    allowed = {"apiGroups", "resources", "verbs"} | ({"resourceNames"} if named else set())
    for rule in rules:
        extra = set(rule) - allowed
        if extra:
            fail(f"{where}: a rule has {sorted(extra)}; the operator's rules use only {sorted(allowed)}")
        names = tuple(sorted(rule.get("resourceNames", [])))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    if "*" in (group, resource, verb):
                        fail(f"{where}: wildcard in rule {rule}")
                    triples.add((group, resource, verb, names) if named else (group, resource, verb))
    return triples


def rbac(rendered_path, expected_path, lease_role_expected, watched="", feedback_tls_expected="no"):
    """ClusterRole, per-namespace Roles and lease Role grant exactly tests/chart/expected-rbac.yaml.

    `watched` is the comma-separated operator.watchNamespaces of the render:
    empty means one ClusterRole with everything, otherwise a Role and a
    RoleBinding in each watched namespace and only TokenReview cluster-wide.
    """
    expected = yaml.safe_load(open(expected_path))
    namespaces = sorted(n for n in watched.split(",") if n)
    rendered = objects(rendered_path)
    cluster_roles = [o for o in rendered if o["kind"] == "ClusterRole"]
    if len(cluster_roles) != 1:
        fail(f"{len(cluster_roles)} ClusterRoles rendered, expected one")
    roles = [o for o in rendered if o["kind"] == "Role"]
    lease = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    feedback_tls = [r for r in roles if r["metadata"]["name"].endswith("-feedback-tls")]
    per_namespace = [r for r in roles if r not in lease and r not in feedback_tls]

    def same(obj, key):
        got = rule_triples(obj["rules"], name_of(obj))
        want = rule_triples(expected[key], expected_path)
        if got != want:
            fail(f"{name_of(obj)} grants {sorted(got - want)} beyond the operator's needs "
                 f"and lacks {sorted(want - got)}")

    same(cluster_roles[0], "clusterRoleWithNamespaces" if namespaces else "clusterRole")
    if lease_role_expected == "yes":
        if len(lease) != 1:
            fail("no lease Role rendered")
        same(lease[0], "leaseRole")
    elif lease:
        fail("lease Role rendered although leader election is off")
    if feedback_tls_expected == "yes":
        if len(feedback_tls) != 1:
            fail("no Role for the operator-made feedback certificate rendered")
        got = rule_triples(feedback_tls[0]["rules"], name_of(feedback_tls[0]), named=True)
        want = rule_triples(expected["feedbackTlsRole"], expected_path, named=True)
        if got != want:
            fail(f"{name_of(feedback_tls[0])} grants {sorted(got - want)} beyond the operator's needs "
                 f"and lacks {sorted(want - got)}")
        if not any(b["roleRef"]["name"] == feedback_tls[0]["metadata"]["name"]
                   for b in rendered if b["kind"] == "RoleBinding"):
            fail(f"{name_of(feedback_tls[0])} has no RoleBinding")
    elif feedback_tls:
        fail("a feedback certificate Role rendered although the operator does not make the certificate")
    found = sorted(r["metadata"].get("namespace", "") for r in per_namespace)
    if found != namespaces:
        fail(f"Roles rendered in namespaces {found}, expected one in each of {namespaces}")
    bindings = [o for o in rendered if o["kind"] == "RoleBinding"]
    for role in per_namespace:
        same(role, "namespaceRole")
        ns = role["metadata"]["namespace"]
        if not any(b["metadata"].get("namespace") == ns and b["roleRef"]["name"] == role["metadata"]["name"]
                   for b in bindings):
            fail(f"{name_of(role)} in {ns} has no RoleBinding")
    scope = f"Roles in {', '.join(namespaces)}" if namespaces else "cluster-wide"
    print(f"{Path(rendered_path).name}: RBAC is exactly {expected_path} ({scope}, "
          f"{'with' if lease_role_expected == 'yes' else 'without'} the lease Role, "
          f"{'with' if feedback_tls_expected == 'yes' else 'without'} the feedback certificate Role)")


def unknown_keys(given, dumped, path):
    """Keys of the input the typed model did not keep: fields the CRD does not have."""
    if isinstance(given, dict) and isinstance(dumped, dict):
        for key, value in given.items():
            if key not in dumped:
                yield f"{path}.{key}"
            else:
                yield from unknown_keys(value, dumped[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped)):
            yield from unknown_keys(a, b, f"{path}[{i}]")


def promql_metrics(expr):
    return set(re.findall(r"\b(mailfleet_[a-z_]+)\b", expr))


def monitoring(monitoring_path, builtin_path, expected_count):
    """ServiceMonitor and PrometheusRule against the Prometheus Operator's typed
    models (unknown fields rejected), PromQL parsed, selector and port matched
    to the rendered Service."""
    import promql_parser
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule, ServiceMonitor

    models = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule, "PodMonitor": PodMonitor}
    runbooks = {re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
                for line in open("docs/RUNBOOKS.md") if line.startswith("## ")}
    found = objects(monitoring_path)
    if len(found) != int(expected_count):
        fail(f"expected {expected_count} Prometheus Operator objects, rendered {len(found)}")
    services = [o for o in objects(builtin_path) if o["kind"] == "Service"]
    alerts = 0
    for obj in found:
        model = models.get(obj["kind"])
        if model is None or obj["apiVersion"] != "monitoring.coreos.com/v1":
            fail(f"{name_of(obj)}: unexpected {obj['apiVersion']} kind")
        try:
            typed = model.model_validate(obj)
        except Exception as error:  # pydantic's ValidationError names the field
            fail(f"{name_of(obj)}: {error}")
        dumped = typed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        extra = list(unknown_keys(obj, dumped, ""))
        if extra:
            fail(f"{name_of(obj)}: fields the CRD does not have: {extra}")
        if obj["kind"] == "PodMonitor":
            # The agents' pods as the operator labels them (src/operator/build/mod.rs, ip_labels)
            # and their metrics port (src/operator/build/deployment.rs, AGENT_METRICS_PORT).
            spec = obj["spec"]
            pod_labels = {"app.kubernetes.io/managed-by": "mailfleet-operator", "mailfleet.io/pool": "bulk",
                          "mailfleet.io/ip": "mf-203-0-113-10"}
            if not spec["selector"]["matchLabels"].items() <= pod_labels.items():
                fail(f"{name_of(obj)} selects {spec['selector']['matchLabels']}, not the sender pods")
            for expression in spec["selector"].get("matchExpressions", []):
                if expression["operator"] != "Exists" or expression["key"] not in pod_labels:
                    fail(f"{name_of(obj)}: selector expression {expression} does not match the sender pods")
            if [e["port"] for e in spec["podMetricsEndpoints"]] != ["agent-metrics"]:
                fail(f"{name_of(obj)}: scrapes {spec['podMetricsEndpoints']}, not the agent-metrics port")
        elif obj["kind"] == "ServiceMonitor":
            selector = obj["spec"]["selector"]["matchLabels"]
            matching = [s for s in services
                        if selector.items() <= s["metadata"].get("labels", {}).items()
                        and s["metadata"]["namespace"] in obj["spec"]["namespaceSelector"]["matchNames"]]
            if len(matching) != 1:
                fail(f"{name_of(obj)} selects {len(matching)} Services, expected the operator's one")
            ports = {p["name"] for p in matching[0]["spec"]["ports"]}
            for endpoint in obj["spec"]["endpoints"]:
                if endpoint["port"] not in ports:
                    fail(f"{name_of(obj)}: endpoint port {endpoint['port']} is not a port of {name_of(matching[0])}")
        else:
            for group in obj["spec"]["groups"]:
                for rule in group["rules"]:
                    expr = rule["expr"]
                    url = rule.get("annotations", {}).get("runbook_url", "")
                    anchor = url.partition("#")[2]
                    if not url.startswith("http") or anchor not in runbooks:
                        fail(f"alert {rule.get('alert')}: runbook_url {url!r} is not a section of docs/RUNBOOKS.md "
                             f"(sections: {sorted(runbooks)})")
                    try:
                        promql_parser.parse(expr)
                    except Exception as error:
                        fail(f"{name_of(obj)} alert {rule.get('alert')}: PromQL does not parse: {error}")
                    used = promql_metrics(expr)
                    unknown = used - OPERATOR_METRICS.keys()
                    if unknown:
                        fail(f"alert {rule.get('alert')} uses metrics the operator does not export: {sorted(unknown)}")
                    labels = set().union(*(OPERATOR_METRICS[m] for m in used))
                    named = set(re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr))
                    named = {label.strip() for group in named for label in group.split(",") if label.strip()}
                    named |= set(re.findall(r"[{,]\s*([a-z_]+)\s*[=!]", expr))
                    if not named <= labels:
                        fail(f"alert {rule.get('alert')} uses labels {sorted(named - labels)} that "
                             f"{sorted(used)} do not carry ({sorted(labels)})")
                    for mode in re.findall(r'mode=~?"([^"]+)"', expr):
                        if not set(mode.split("|")) <= ROUTE_MODES:
                            fail(f"alert {rule.get('alert')}: mode {mode!r} is not one of {sorted(ROUTE_MODES)}")
                    alerts += 1
    if not found:
        print("no Prometheus Operator objects rendered, as expected")
        return
    print(f"{len(found)} Prometheus Operator objects match the typed models (prometheus-operator v0.80), "
          f"{alerts} alert expressions parse as PromQL and link their runbook, ServiceMonitor selects the Service's http port")


# The Kubernetes version from which an API server accepts each CEL function in
# a new CRD's x-kubernetes-validations (kubernetes.io/docs/reference/using-api/cel/:
# a library added in version N is accepted in new expressions from N+1, so
# that a rollback to N still reads every stored rule).
CEL_FUNCTIONS_SINCE = {
    # the CEL standard definitions and macros, with CRD validation rules (1.25)
    **{f: (1, 25) for f in ("has", "size", "matches", "startsWith", "endsWith", "contains", "all",
                            "exists", "exists_one", "map", "filter", "int", "uint", "double",
                            "string", "bytes", "bool", "duration", "timestamp", "type", "dyn")},
    # Kubernetes list, regex, URL and extended string libraries
    **{f: (1, 27) for f in ("isSorted", "sum", "min", "max", "indexOf", "lastIndexOf", "find",
                            "findAll", "url", "isURL", "getScheme", "getHost", "getHostname",
                            "getPort", "getEscapedPath", "getQuery", "charAt", "lowerAscii",
                            "upperAscii", "replace", "split", "substring", "trim", "join")},
    # Kubernetes IP address and CIDR libraries (added in 1.30)
    **{f: (1, 31) for f in ("ip", "isIP", "cidr", "isCIDR", "containsIP", "containsCIDR", "family",
                            "isLoopback", "isUnspecified", "isLinkLocalMulticast",
                            "isLinkLocalUnicast", "isGlobalUnicast", "prefixLength", "masked")},
}


def cel(crds_dir, chart_yaml):
    """Every CEL function the CRDs' rules call is accepted by the chart's lowest
    Kubernetes version (Chart.yaml kubeVersion)."""
    floor = re.search(r'kubeVersion:\s*">=\s*(\d+)\.(\d+)', open(chart_yaml).read())
    if not floor:
        fail(f"{chart_yaml} has no kubeVersion floor")
    floor = (int(floor.group(1)), int(floor.group(2)))
    used = {}
    for path in sorted(glob.glob(f"{crds_dir}/*.yaml")):
        for doc in objects(path):
            def walk(node):
                if isinstance(node, dict):
                    for rule in node.get("x-kubernetes-validations", []):
                        for name in re.findall(r"(?:\.|(?<![\w.]))([A-Za-z_]\w*)\(", rule["rule"]):
                            used.setdefault(name, (path, rule["rule"]))
                    for value in node.values():
                        walk(value)
                elif isinstance(node, list):
                    for value in node:
                        walk(value)
            walk(doc)
    for name, (path, rule) in sorted(used.items()):
        since = CEL_FUNCTIONS_SINCE.get(name)
        if since is None:
            fail(f"{path}: CEL function {name}() in `{rule}` is not in CEL_FUNCTIONS_SINCE "
                 f"(tests/chart/checks.py): add it with the Kubernetes version that accepts it")
        if since > floor:
            fail(f"{path}: CEL function {name}() in `{rule}` needs Kubernetes "
                 f"{since[0]}.{since[1]}, but {chart_yaml} allows {floor[0]}.{floor[1]}")
    print(f"the CRDs' CEL rules call {len(used)} functions ({', '.join(sorted(used))}), "
          f"all accepted from Kubernetes {floor[0]}.{floor[1]}, the chart's floor")


def dashboard(rendered_path, dashboard_path):
    """The dashboard ConfigMap holds the chart's dashboard JSON as it is, under the sidecar label."""
    maps = [o for o in objects(rendered_path) if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    if len(maps) != 1:
        fail(f"expected one dashboard ConfigMap, rendered {len(maps)}")
    [cm] = maps
    if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
        fail(f"{name_of(cm)} lacks the sidecar label grafana_dashboard=1")
    shipped = json.loads(cm["data"]["mailfleet.json"])
    if shipped != json.load(open(dashboard_path)):
        fail(f"{name_of(cm)} does not hold {dashboard_path} as it is")
    print(f"{name_of(cm)}: {dashboard_path} ({len(shipped['panels'])} panels) under grafana_dashboard=1")


def deployment(rendered_path):
    """The operator Deployment of the default values: the restricted Pod
    Security Standard, probes, downward API, flags, spread."""
    [deploy] = [o for o in objects(rendered_path) if o["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    problems = []

    def expect(what, got, want):
        if got != want:
            problems.append(f"{what} is {got!r}, want {want!r}")

    expect("replicas", deploy["spec"]["replicas"], 2)
    expect("pod runAsNonRoot", pod["securityContext"].get("runAsNonRoot"), True)
    expect("pod seccompProfile", pod["securityContext"].get("seccompProfile"), {"type": "RuntimeDefault"})
    sc = container["securityContext"]
    expect("allowPrivilegeEscalation", sc.get("allowPrivilegeEscalation"), False)
    expect("readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem"), True)
    expect("runAsNonRoot", sc.get("runAsNonRoot"), True)
    expect("capabilities", sc.get("capabilities"), {"drop": ["ALL"]})
    expect("seccompProfile", sc.get("seccompProfile"), {"type": "RuntimeDefault"})
    for kind in ("requests", "limits"):
        expect(f"resources.{kind} keys", sorted(container["resources"].get(kind, {})), ["cpu", "memory"])
    expect("liveness path", container["livenessProbe"]["httpGet"]["path"], "/healthz")
    expect("readiness path", container["readinessProbe"]["httpGet"]["path"], "/readyz")
    expect("port", container["ports"], [{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    expect("POD_NAME", env.get("POD_NAME"), "metadata.name")
    expect("POD_NAMESPACE", env.get("POD_NAMESPACE"), "metadata.namespace")
    args = container["args"]
    expect("subcommand", args[0], "operator")
    for flag in ("--http-addr=0.0.0.0:8080", "--leader-election", "--lease-name=mailfleet-operator",
                 f"--agent-image={container['image']}", "--log-format=json",
                 "--feedback-tls-secret=mailfleet-feedback-tls",
                 "--feedback-url=https://mailfleet.mailfleet.svc:8080/v1/feedback"):
        if flag not in args:
            problems.append(f"args lack {flag}")
    # TLS by default, with the certificate the operator makes: no mounted
    # Secret, no --tls-cert, HTTPS probes.
    for flag in args:
        if flag.startswith(("--tls-cert", "--tls-key", "--feedback-ca-file")):
            problems.append(f"args have {flag} although the operator makes the certificate")
    expect("liveness scheme", container["livenessProbe"]["httpGet"].get("scheme"), "HTTPS")
    expect("readiness scheme", container["readinessProbe"]["httpGet"].get("scheme"), "HTTPS")
    expect("volumes", [v["name"] for v in pod["volumes"]], ["tmp"])
    spread = pod.get("topologySpreadConstraints", [])
    expect("spread over", [c["topologyKey"] for c in spread], ["kubernetes.io/hostname"])
    if problems:
        fail(f"{name_of(deploy)}: " + "; ".join(problems))
    print(f"{name_of(deploy)}: 2 replicas, restricted security context, HTTPS probes, downward API, "
          f"--agent-image = the operator image, the operator-made certificate, spread over nodes")


def leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def readme(values_path, readme_path, schema_path):
    """Every value of values.yaml is documented in the README and described in the schema."""
    values = yaml.safe_load(open(values_path))
    text = open(readme_path).read()
    schema = json.load(open(schema_path))
    missing, undescribed = [], []
    for path in leaf_paths(values):
        if f"`{path}`" not in text:
            missing.append(path)
        node = schema
        for part in path.split("."):
            if "properties" not in node and node.get("description"):
                break  # a Kubernetes object passed through whole (resources, affinity ...)
            node = node.get("properties", {}).get(part)
            if node is None:
                break
        if node is None or not node.get("description"):
            undescribed.append(path)
    if missing:
        fail(f"{readme_path} does not document {missing}")
    if undescribed:
        fail(f"{schema_path} has no description for {undescribed}")
    print(f"all {len(list(leaf_paths(values)))} values are in {readme_path} and described in {schema_path}")


def closed(schema):
    """The CRD schema as the API server's strict field validation applies it:
    an object with declared properties accepts no other field."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def examples(examples_dir, builtin_out):
    """SenderPool/DomainRoute examples against our CRDs' schemas (strict);
    the other examples are written out for kubernetes-validate."""
    import jsonschema

    schemas = {}
    for path in glob.glob("crds/*.yaml"):
        crd = objects(path)[0]
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schema = closed(version["schema"]["openAPIV3Schema"])
            # The API server serves these for every object; the CRD schema leaves them out.
            schema["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                    "metadata": {"type": "object"}, **schema["properties"]}
            schemas[key] = schema
    builtin, custom = [], 0
    for path in sorted(glob.glob(f"{examples_dir}/*.yaml")):
        for obj in objects(path):
            key = (obj.get("apiVersion"), obj.get("kind"))
            if key in schemas:
                errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(obj), key=str)
                if errors:
                    where = ".".join(str(p) for p in errors[0].absolute_path)
                    fail(f"{path}: {name_of(obj)} at {where or '(root)'}: {errors[0].message}")
                custom += 1
            else:
                builtin.append(obj)
    Path(builtin_out).write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    print(f"{custom} SenderPool/DomainRoute examples match crds/ (unknown fields rejected); "
          f"{len(builtin)} other example objects go to kubernetes-validate")


if __name__ == "__main__":
    commands = {"crds": crds, "split": split, "rbac": rbac, "monitoring": monitoring, "deployment": deployment,
                "dashboard": dashboard, "cel": cel,
                "readme": readme, "examples": examples}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: checks.py {{{'|'.join(commands)}}} ARGS...")
    commands[sys.argv[1]](*sys.argv[2:])
