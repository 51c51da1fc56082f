#!/usr/bin/env bash
# The Helm chart as a user meets it, checked offline (no cluster):
# - `helm lint --strict` with the default values and with every option set
#   (charts/mailfleet/ci/all-options-values.yaml);
# - both renders: every built-in object validated with `kubernetes-validate
#   --strict` for Kubernetes 1.31 and 1.37; the ServiceMonitor and
#   PrometheusRule against the Prometheus Operator's typed models with their
#   PromQL parsed; RBAC exactly tests/chart/expected-rbac.yaml;
# - the CRD templates render crds/ byte for byte (plus the keep annotation),
#   and none with crds.install=false;
# - values.schema.json refuses wrong values with helm's own error;
# - every value is documented in the chart README;
# - the example fleet: SenderPool/DomainRoute against crds/ (unknown fields
#   rejected) and through `mailfleet routes`, the rest with kubernetes-validate;
# - the Dockerfile with hadolint.
# Helm and the Python tools come from scripts/ensure-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
helm=target/tools/helm
python=target/venv/bin/python
kubernetes_validate=target/venv/bin/kubernetes-validate
chart=charts/mailfleet
all_options=$chart/ci/all-options-values.yaml
checks=tests/chart/checks.py
for tool in "$helm" "$kubernetes_validate" target/venv/bin/hadolint; do
  [ -x "$tool" ] || { echo "$tool is missing; run scripts/ensure-tools.sh" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The Kubernetes versions to validate for: 1.31 (the chart's kubeVersion floor)
# and 1.37, or the newest one this kubernetes-validate knows when it does not know 1.37.
newest=$("$python" -c 'from kubernetes_validate.utils import latest_version; print(latest_version())')
wanted_newest=1.37.0
if "$python" -c 'import sys; from packaging.version import Version as V; sys.exit(V(sys.argv[1]) > V(sys.argv[2]))' "$wanted_newest" "$newest"; then
  versions=(1.31.0 "$wanted_newest")
else
  echo "NOTE: kubernetes-validate knows Kubernetes up to $newest, not $wanted_newest: validating for 1.31.0 and $newest instead"
  versions=(1.31.0 "$newest")
fi

validate() { # validate LABEL FILE: every object, strict, for each version; an unknown kind is a failure
  local label=$1 file=$2 version out
  for version in "${versions[@]}"; do
    if ! out=$("$kubernetes_validate" --strict --quiet -k "$version" "$file" 2>&1); then
      echo "$out" >&2
      echo "kubernetes-validate --strict -k $version refuses $label" >&2
      exit 1
    fi
    if grep -q "Couldn't find schema" <<<"$out"; then
      echo "$out" >&2
      echo "kubernetes-validate has no schema for an object of $label: a typo in kind or apiVersion?" >&2
      exit 1
    fi
  done
  echo "$label: $(grep -c '^kind:' "$file") objects valid for Kubernetes ${versions[*]} (kubernetes-validate --strict)"
}

for values in default all-options; do
  args=()
  [ "$values" = all-options ] && args=(-f "$all_options")
  "$helm" lint --strict "$chart" "${args[@]}" >"$work/lint.txt" || { cat "$work/lint.txt" >&2; exit 1; }
  "$helm" template mailfleet "$chart" --namespace mailfleet "${args[@]}" >"$work/$values.yaml"
  echo "$values values: helm lint --strict passes"
  "$python" $checks split "$work/$values.yaml" "$work/$values"
  validate "$values render" "$work/$values/builtin.yaml"
done
"$python" $checks crds "$work/default.yaml"
"$python" $checks cel crds $chart/Chart.yaml
"$python" $checks deployment "$work/default.yaml"
if grep -q CustomResourceDefinition "$work/all-options.yaml"; then
  echo "crds.install=false still renders CRDs" >&2
  exit 1
fi
"$python" $checks rbac "$work/default.yaml" tests/chart/expected-rbac.yaml yes "" yes
"$python" $checks rbac "$work/all-options.yaml" tests/chart/expected-rbac.yaml yes mail,mail-eu no
# A NetworkPolicy by default; none when turned off.
grep -q '^kind: NetworkPolicy' "$work/default.yaml" || { echo "no NetworkPolicy rendered by default" >&2; exit 1; }
"$helm" template mailfleet "$chart" --set networkPolicy.enabled=false >"$work/no-netpol.yaml"
if grep -q '^kind: NetworkPolicy' "$work/no-netpol.yaml"; then
  echo "networkPolicy.enabled=false still renders a NetworkPolicy" >&2
  exit 1
fi
"$helm" template mailfleet "$chart" --set operator.leaderElection.enabled=false >"$work/no-lease.yaml"
"$python" $checks rbac "$work/no-lease.yaml" tests/chart/expected-rbac.yaml no "" yes
grep -q -- '--no-leader-election' "$work/no-lease.yaml" || { echo "leader election off does not pass --no-leader-election" >&2; exit 1; }
# The feedback port's TLS in each of its modes. Default: the operator makes
# the certificate; a ServiceMonitor then scrapes over HTTPS trusting its CA.
"$helm" template mailfleet "$chart" --namespace mailfleet --set metrics.serviceMonitor.enabled=true >"$work/tls-operator.yaml"
for want in '"--feedback-tls-secret=mailfleet-feedback-tls"' 'scheme: https' 'name: mailfleet-feedback-tls' 'key: ca.crt' \
  'serverName: mailfleet.mailfleet.svc' 'scheme: HTTPS'; do
  grep -qF -- "$want" "$work/tls-operator.yaml" || { echo "the default TLS render with a ServiceMonitor lacks $want" >&2; exit 1; }
done
# cert-manager: its Certificate, the mounted Secret, no operator-made one.
"$helm" template mailfleet "$chart" --namespace mailfleet --set tls.certManager.enabled=true \
  --set tls.certManager.issuerRef.name=ca-issuer >"$work/tls-cert-manager.yaml"
"$python" $checks rbac "$work/tls-cert-manager.yaml" tests/chart/expected-rbac.yaml yes "" no
for want in '^kind: Certificate' '^  secretName: mailfleet-tls' '--tls-cert=/etc/mailfleet/tls/tls.crt' '"--feedback-ca-file=/etc/mailfleet/tls/ca.crt"'; do
  grep -q -- "$want" "$work/tls-cert-manager.yaml" || { echo "the cert-manager TLS render lacks $want" >&2; exit 1; }
done
# Bring your own Secret: mounted, no Certificate, no operator-made one.
"$helm" template mailfleet "$chart" --namespace mailfleet --set tls.secretName=my-tls >"$work/tls-own.yaml"
"$python" $checks rbac "$work/tls-own.yaml" tests/chart/expected-rbac.yaml yes "" no
grep -q 'secretName: my-tls' "$work/tls-own.yaml" || { echo "the bring-your-own TLS render does not mount my-tls" >&2; exit 1; }
# TLS off: plain HTTP everywhere.
"$helm" template mailfleet "$chart" --namespace mailfleet --set tls.enabled=false >"$work/tls-off.yaml"
"$python" $checks rbac "$work/tls-off.yaml" tests/chart/expected-rbac.yaml yes "" no
if grep -qE 'feedback-tls|--tls-cert|scheme: HTTPS|feedback-url=https://' "$work/tls-off.yaml"; then
  echo "tls.enabled=false still renders TLS" >&2
  exit 1
fi
grep -q '"--feedback-url=http://mailfleet.mailfleet.svc:8080/v1/feedback"' "$work/tls-off.yaml" || { echo "tls.enabled=false does not post to http://" >&2; exit 1; }
echo "feedback TLS: operator-made by default (HTTPS probes and ServiceMonitor), cert-manager, your own Secret, and off"

# The Prometheus Operator kinds: none by default, a ServiceMonitor and a PrometheusRule with all options.
"$python" $checks monitoring "$work/default/monitoring.yaml" "$work/default/builtin.yaml" 0
"$python" $checks monitoring "$work/all-options/monitoring.yaml" "$work/all-options/builtin.yaml" 3
"$python" $checks dashboard "$work/all-options/builtin.yaml" $chart/dashboards/mailfleet.json
for want in 'image: "registry.example.net/mail/mailfleet@sha256:' '--sender-image=registry.example.net/mail/mailfleet-sender:' \
  'mountPath: /etc/ssl/proxy-ca' "name: 'mailfleet-extra'" 'name: mailfleet-extra-text$' 'example.net/owner: mail-team'; do
  grep -q -- "$want" "$work/all-options.yaml" || { echo "the all-options render lacks $want" >&2; exit 1; }
done
echo "all-options: image.registry, volumes, extraObjects (map and string) and commonAnnotations rendered"

# As a subchart of an empty umbrella chart: helm passes `global` down and the
# schema must take it; global.imageRegistry is used when image.registry is empty.
umbrella=$work/umbrella
mkdir -p "$umbrella/charts" "$umbrella/templates"
printf 'apiVersion: v2\nname: umbrella\nversion: 0.0.1\ndependencies:\n  - name: mailfleet\n    version: "*"\n    repository: "file://%s"\n' "$PWD/$chart" >"$umbrella/Chart.yaml"
printf 'global:\n  imageRegistry: mirror.example.net\n  storageClass: fast\nmailfleet:\n  fullnameOverride: mailfleet\n' >"$umbrella/values.yaml"
"$helm" dependency update "$umbrella" >/dev/null
"$helm" lint --strict "$umbrella" >"$work/lint.txt" || { cat "$work/lint.txt" >&2; exit 1; }
"$helm" template mailfleet "$umbrella" --namespace mailfleet >"$work/umbrella.yaml"
grep -q 'image: "mirror.example.net/mailfleet:' "$work/umbrella.yaml" || { echo "as a subchart, global.imageRegistry is not used" >&2; exit 1; }
echo "as a subchart of an empty umbrella chart: helm lint --strict and helm template pass, global.imageRegistry used"

# The validators have teeth: a field the API does not have fails each of them.
sed 's/^      serviceAccountName:/      serviceAccountNme:/' "$work/default/builtin.yaml" >"$work/typo.yaml"
if "$kubernetes_validate" --strict --quiet -k "${versions[0]}" "$work/typo.yaml" >/dev/null 2>&1; then
  echo "kubernetes-validate --strict accepted a Deployment with serviceAccountNme" >&2
  exit 1
fi
sed 's/^    path: \/metrics/    pathh: \/metrics/' "$work/all-options/monitoring.yaml" >"$work/typo-monitoring.yaml"
if "$python" $checks monitoring "$work/typo-monitoring.yaml" "$work/all-options/builtin.yaml" 2 >/dev/null 2>&1; then
  echo "the monitoring check accepted a ServiceMonitor endpoint with pathh" >&2
  exit 1
fi
echo "a misspelt field fails kubernetes-validate and the monitoring check"

# values.schema.json refuses what cannot work, with helm's message naming the value.
refuses() { # refuses EXPECTED-MESSAGE HELM-ARGS...
  local expected=$1 out
  shift
  if out=$("$helm" template mailfleet "$chart" "$@" 2>&1); then
    echo "helm accepted $* although values.schema.json should refuse it" >&2
    exit 1
  fi
  grep -qF -- "$expected" <<<"$out" || { echo "helm refused $* but not with \"$expected\":" >&2; echo "$out" >&2; exit 1; }
}
printf 'replicaCount: two\n' >"$work/replicas-two.yaml"
refuses "at '/replicaCount': got string, want integer" -f "$work/replicas-two.yaml"
refuses "additional properties 'replicas' not allowed" --set replicas=2
refuses "at '/operator/logFormat': value must be one of 'json', 'text'" --set operator.logFormat=xml
refuses "at '/image/pullPolicy'" --set image.pullPolicy=Sometimes
refuses "additional properties 'enable' not allowed" --set networkPolicy.enable=true
refuses "serviceAccount.name is required when serviceAccount.create is false" --set serviceAccount.create=false
echo "values.schema.json refuses a wrong type, an unknown key and a wrong word; a missing ServiceAccount name is named"

"$python" $checks readme $chart/values.yaml $chart/README.md $chart/values.schema.json

"$python" $checks examples examples/fleet "$work/examples-builtin.yaml"
validate "examples/fleet (Namespace, Secret)" "$work/examples-builtin.yaml"
cargo run -q --locked -- routes --manifests examples/fleet >/dev/null
echo "examples/fleet: mailfleet routes compiles the example fleet"
target/venv/bin/hadolint Dockerfile images/sender/Dockerfile
echo "Dockerfile, images/sender/Dockerfile: hadolint finds nothing"
echo "chart: ok"
