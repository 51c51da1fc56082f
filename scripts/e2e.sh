#!/usr/bin/env bash
# make e2e: the block -> re-route story on a real, disposable cluster (kind or k3d).
#
#   build the image, load it into the cluster, helm install the chart, apply
#   examples/fleet, then play the agent's part: post one feedback report with
#   Microsoft's `550 5.7.606 ... banned sending IP [203.0.113.10]` for that IP,
#   with the ServiceAccount token of that IP's sender pod, and wait until the
#   microsoft DomainRoute's status no longer lists the IP while the google
#   route still does.
#
# Without a reachable cluster it says so and exits 0 (our machines have none).
# Settings (environment):
#   E2E_IMAGE=mailfleet:e2e          image to build and load
#   E2E_SKIP_BUILD=1                 use E2E_IMAGE as it is (already built or pushed)
#   E2E_SENDER_IMAGE=registry.k8s.io/pause:3.10
#                                    the chart's operator.senderImage, which the example pools run
#                                    (their templates name no container); the story needs the pods,
#                                    not mail, so a pause image stands in for images/sender
#   E2E_ALLOW_ANY_CONTEXT=1          run on a context not named kind-* or k3d-* (it deletes and
#                                    recreates namespace `mail`: use a disposable cluster)
#   E2E_TIMEOUT=120                  seconds to wait for each step
set -euo pipefail
cd "$(dirname "$0")/.."

how_to="how to run it: create a disposable cluster with 'kind create cluster --name mailfleet' \
or 'k3d cluster create mailfleet', check that 'kubectl cluster-info' answers, then run 'make e2e' \
(docs/OPERATING.md, End-to-end test; CI: .github/workflows/e2e.yaml)"
skip() {
  echo "e2e: skipping: $1 ($how_to)"
  exit 0
}
command -v kubectl >/dev/null || skip "no cluster reachable: kubectl is not installed"
kubectl cluster-info --request-timeout=5s >/dev/null 2>&1 || skip "no cluster reachable: 'kubectl cluster-info' fails"

image=${E2E_IMAGE:-mailfleet:e2e}
sender_image=${E2E_SENDER_IMAGE:-registry.k8s.io/pause:3.10}
timeout=${E2E_TIMEOUT:-120}
release=mailfleet
operator_ns=mailfleet
fleet_ns=mail
ip=203.0.113.10
ip_slug=mf-${ip//./-}
context=$(kubectl config current-context)
step() { echo "e2e: $*"; }
die() {
  echo "e2e: FAILED: $*" >&2
  echo "--- operator logs" >&2
  kubectl -n "$operator_ns" logs -l app.kubernetes.io/instance=$release --tail=60 --prefix >&2 || true
  echo "--- pools and routes" >&2
  kubectl -n "$fleet_ns" get senderpools,domainroutes -o wide >&2 || true
  exit 1
}

case "$context" in
  kind-* | k3d-*) ;;
  *) [ "${E2E_ALLOW_ANY_CONTEXT:-}" = 1 ] || {
       echo "e2e: context '$context' is not a kind or k3d cluster; the test deletes namespace '$fleet_ns'." >&2
       echo "e2e: set E2E_ALLOW_ANY_CONTEXT=1 to run on it anyway (image $image must then be pullable there)." >&2
       exit 1
     } ;;
esac
for f in namespace pool-bulk pool-reserve relay-credentials route-default route-google route-microsoft; do
  [ -f "examples/fleet/$f.yaml" ] || die "examples/fleet/$f.yaml is missing"
done
helm=$(command -v helm || echo target/tools/helm)
[ -x "$helm" ] || die "helm is missing; install it or run scripts/ensure-tools.sh"
command -v curl >/dev/null || die "curl is missing"

if [ "${E2E_SKIP_BUILD:-}" != 1 ]; then
  step "building $image"
  docker build -t "$image" . || die "docker build failed"
fi
case "$context" in
  kind-*)
    command -v kind >/dev/null || die "kind is missing: it loads $image into cluster ${context#kind-}"
    step "loading $image into kind cluster ${context#kind-}"
    kind load docker-image "$image" --name "${context#kind-}" || die "kind load docker-image failed"
    ;;
  k3d-*)
    command -v k3d >/dev/null || die "k3d is missing: it imports $image into cluster ${context#k3d-}"
    step "importing $image into k3d cluster ${context#k3d-}"
    k3d image import "$image" --cluster "${context#k3d-}" || die "k3d image import failed"
    ;;
esac

# A fresh fleet: a status left by an earlier run would already hold the block.
kubectl delete namespace "$fleet_ns" --ignore-not-found --wait=true --timeout="${timeout}s" >/dev/null

step "installing the chart (release $release, namespace $operator_ns)"
repository=${image%:*}
tag=${image##*:}
[ "$repository" != "$image" ] || tag=latest
"$helm" upgrade --install "$release" charts/mailfleet --namespace "$operator_ns" --create-namespace \
  --set image.repository="$repository" --set image.tag="$tag" --set image.pullPolicy=IfNotPresent \
  --set operator.senderImage="$sender_image" \
  --set operator.logFormat=text --wait --timeout "${timeout}s" || die "helm install failed"

step "applying examples/fleet (sender image $sender_image)"
fleet=$(mktemp -d)
port_forward_pid=
cleanup() {
  [ -z "$port_forward_pid" ] || kill "$port_forward_pid" 2>/dev/null || true
  rm -rf "$fleet"
}
trap cleanup EXIT
for f in examples/fleet/*.yaml; do
  cp "$f" "$fleet/$(basename "$f")"
done
kubectl apply -f "$fleet/namespace.yaml" >/dev/null
kubectl apply -f "$fleet" >/dev/null || die "kubectl apply of examples/fleet failed"

wait_for() { # wait_for DESCRIPTION COMMAND...: until the command succeeds, at most $timeout s
  local what=$1 deadline=$((SECONDS + timeout))
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${timeout}s waiting for $what"
    sleep 2
  done
  step "ok: $what"
}
targets() { kubectl -n "$fleet_ns" get domainroute "$1" -o jsonpath='{.status.targets[*].ip}' 2>/dev/null; }
lists_ip() { [[ " $(targets "$1") " == *" $ip "* ]]; }
both_routes_list_ip() { lists_ip microsoft && lists_ip google; }
microsoft_drops_ip() { [ -n "$(targets microsoft)" ] && ! lists_ip microsoft; }
# The first sender pod of the IP that is not being deleted.
sender_pod() {
  kubectl -n "$fleet_ns" get pods -l "mailfleet.io/pool=bulk,mailfleet.io/ip=$ip_slug" -o go-template \
    --template '{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}' \
    2>/dev/null | head -n 1
}
has_sender_pod() { [ -n "$(sender_pod)" ]; }
lease_holder() { kubectl -n "$operator_ns" get lease mailfleet-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
has_leader() { [ -n "$(lease_holder)" ]; }
# A token bound to the sender pod, as the kubelet projects it into the agent sidecar.
pod_token() {
  pod=$(sender_pod)
  [ -n "$pod" ] || die "no sender pod of $ip"
  local uid account
  uid=$(kubectl -n "$fleet_ns" get pod "$pod" -o jsonpath='{.metadata.uid}')
  account=$(kubectl -n "$fleet_ns" get pod "$pod" -o jsonpath='{.spec.serviceAccountName}')
  token=$(kubectl -n "$fleet_ns" create token "${account:-default}" --duration=10m \
    --bound-object-kind=Pod --bound-object-name="$pod" --bound-object-uid="$uid") \
    || die "kubectl create token for pod $pod failed"
  step "token of pod $fleet_ns/$pod (ServiceAccount ${account:-default})"
}

wait_for "routes microsoft and google list $ip" both_routes_list_ip
wait_for "a sender pod of $ip exists" has_sender_pod
wait_for "an operator replica holds the lease" has_leader
leader=$(lease_holder)
local_port=${E2E_LOCAL_PORT:-18080}
kubectl -n "$operator_ns" port-forward "pod/$leader" "$local_port:8080" >/dev/null 2>&1 &
port_forward_pid=$!
# The port speaks TLS with the certificate the operator made (the chart's
# default): trust its CA from the Secret, and name the Service the way the
# agents do, reaching it through the port-forward.
kubectl -n "$operator_ns" get secret "$release-feedback-tls" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$fleet/feedback-ca.crt" \
  || die "no CA in Secret $operator_ns/$release-feedback-tls"
feedback_host="$release.$operator_ns.svc"
https_args=(--cacert "$fleet/feedback-ca.crt" --resolve "$feedback_host:$local_port:127.0.0.1")
wait_for "port-forward to the leader $leader" curl -sf "${https_args[@]}" -o /dev/null "https://$feedback_host:$local_port/healthz"
pod_token

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
report=$(cat <<JSON
{
  "api_version": "feedback.mailfleet.io/v1",
  "agent": {"name": "$pod", "instance": "e2e-$(date +%s)"},
  "sequence": 1,
  "source_ip": "$ip",
  "pool": {"namespace": "$fleet_ns", "name": "bulk"},
  "period": {"start": "$now", "end": "$now"},
  "totals": [
    {"provider": "microsoft", "outcome": "bounced", "category": "ip_blocklisted", "count": 1},
    {"provider": "google", "outcome": "delivered", "category": "none", "count": 10}
  ],
  "conclusive": [
    {"provider": "microsoft",
     "reply": "host hotmail-com.olc.protection.outlook.com[104.47.22.161] said: 550 5.7.606 Access denied, banned sending IP [$ip]. (in reply to RCPT TO command)",
     "at": "$now", "named_ip": "$ip"}
  ]
}
JSON
)
post() {
  curl -sS "${https_args[@]}" -o "$fleet/response.json" -w '%{http_code}' -X POST "https://$feedback_host:$local_port/v1/feedback" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' --data-binary "$report"
}
step "posting the 5.7.606 report for $ip"
deadline=$((SECONDS + timeout))
until code=$(post) && [ "$code" = 200 ]; do
  [ $SECONDS -lt $deadline ] || die "feedback refused: HTTP ${code:-none} $(cat "$fleet/response.json" 2>/dev/null)"
  case "${code:-}" in
    000 | 503) ;;            # port-forward not there yet / operator not synced yet
    401 | 403) pod_token ;;  # the pod was replaced (a rollout): its token went with it
    *) die "feedback refused: HTTP ${code:-none} $(cat "$fleet/response.json" 2>/dev/null)" ;;
  esac
  sleep 2
done
step "ok: report accepted $(cat "$fleet/response.json")"

wait_for "route microsoft drops $ip" microsoft_drops_ip
lists_ip google || die "route google no longer lists $ip: a Microsoft block must not touch other providers"
step "ok: route google still lists $ip"
step "microsoft targets: $(targets microsoft)"
step "passed: one 550 5.7.606 report took $ip out of the microsoft route only"
