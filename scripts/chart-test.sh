#!/usr/bin/env bash
# The Helm chart as a user meets it: `helm lint --strict`, and the rendered CRDs
# equal crds/ (plus the keep annotation) with default values; none with
# crds.install=false. Helm comes from scripts/ensure-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
helm=target/tools/helm
[ -x "$helm" ] || { echo "helm is missing; run scripts/ensure-tools.sh" >&2; exit 1; }
"$helm" lint --strict charts/mailfleet
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
"$helm" template mailfleet charts/mailfleet > "$rendered"
python3 - "$rendered" <<'PY'
import sys, glob
rendered = open(sys.argv[1]).read()
for path in sorted(glob.glob("crds/*.yaml")):
    body = open(path).read().split("---\n", 1)[1]
    kept = body.replace("metadata:\n", "metadata:\n  annotations:\n    helm.sh/resource-policy: keep\n", 1)
    if kept not in rendered:
        sys.exit(f"helm template renders {path} differently from crds/; run `make crds`")
print(f"chart renders the {len(glob.glob('crds/*.yaml'))} CRDs of crds/ byte for byte")
PY
if "$helm" template mailfleet charts/mailfleet --set crds.install=false | grep -q CustomResourceDefinition; then
  echo "crds.install=false still renders CRDs" >&2
  exit 1
fi
echo "chart: ok"
