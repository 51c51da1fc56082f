#!/usr/bin/env bash
# The Debian package for VM fleets, tried as a new user would (run by `make test`):
# - `cargo deb` builds it (from the debug binary the tests built, under the
#   package-check profile; releases use `cargo deb --profile dist`);
# - its contents, control fields and maintainer scripts are checked;
# as root with dpkg (CI):
# - `dpkg -i` installs it; the user, folders and conffile are there;
# - `systemd-analyze verify` accepts both units;
# - both units are started from the installed files the way systemd starts
#   them (tests/deb/run_unit.py: no systemd runs as PID 1 here) with the
#   example fleet: the agent of 203.0.113.10 reports to standalone with its
#   own token, standalone stores the report; SIGTERM stops both with exit 0;
# - `dpkg --purge` removes the package and its state.
# Not root, or a mailfleet package already installed: the install part is
# skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo_deb=target/tools/bin/cargo-deb
[ -x "$cargo_deb" ] || { echo "$cargo_deb is missing; run scripts/ensure-tools.sh" >&2; exit 1; }
work=$(mktemp -d)
started_pids=()
created_user=no
cleanup() {
  for pid in "${started_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ -n "${installed:-}" ]; then
    dpkg --purge mailfleet >/dev/null 2>&1 || true
    rm -rf /etc/mailfleet /etc/default/mailfleet-standalone
    [ "$created_user" = yes ] && { deluser --system mailfleet >/dev/null 2>&1 || true; }
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --locked -q
mkdir -p target/package-check
ln -f target/debug/mailfleet target/package-check/mailfleet
deb=$work/mailfleet.deb
"$cargo_deb" --no-build --profile package-check --fast --output "$deb" -q >/dev/null
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/mailfleet ./usr/lib/systemd/system/mailfleet-standalone.service \
  './usr/lib/systemd/system/mailfleet-agent@.service' ./etc/default/mailfleet-standalone \
  ./usr/share/doc/mailfleet/examples/agent.env ./usr/share/doc/mailfleet/examples/fleet/pool-bulk.yaml \
  ./usr/share/doc/mailfleet/STANDALONE.md; do
  grep -q " $path\$" <<<"$contents" || { echo "the package lacks $path" >&2; exit 1; }
done
depends=$(dpkg-deb -f "$deb" Depends)
for want in libc6 adduser; do
  grep -q "$want" <<<"$depends" || { echo "Depends ($depends) lacks $want" >&2; exit 1; }
done
dpkg-deb -e "$deb" "$work/control"
grep -qx /etc/default/mailfleet-standalone "$work/control/conffiles" || { echo "/etc/default/mailfleet-standalone is not a conffile" >&2; exit 1; }
for script in postinst prerm postrm; do
  [ -x "$work/control/$script" ] || { echo "the package has no $script" >&2; exit 1; }
  sh -n "$work/control/$script"
done
echo "deb: $(basename "$deb") $(du -h "$deb" | cut -f1): binary, both units, conffile, docs and examples; Depends: $depends"

if [ "$(id -u)" != 0 ] || ! command -v dpkg >/dev/null; then
  echo "deb: SKIPPED installing and starting it: needs root and dpkg (CI runs as root)"
  exit 0
fi
if dpkg -s mailfleet >/dev/null 2>&1; then
  echo "deb: SKIPPED installing it: a mailfleet package is installed on this machine already"
  exit 0
fi
getent passwd mailfleet >/dev/null || created_user=yes
installed=yes
dpkg -i "$deb" >/dev/null
getent passwd mailfleet >/dev/null || { echo "postinst made no mailfleet user" >&2; exit 1; }
[ "$(stat -c %U:%a /var/lib/mailfleet)" = mailfleet:750 ] || { echo "/var/lib/mailfleet: $(stat -c %U:%a /var/lib/mailfleet)" >&2; exit 1; }
units=/usr/lib/systemd/system
cp "$units/mailfleet-agent@.service" "$work/mailfleet-agent@203.0.113.10.service"
if ! out=$(systemd-analyze verify "$units/mailfleet-standalone.service" "$work/mailfleet-agent@203.0.113.10.service" 2>&1); then
  echo "$out" >&2; echo "systemd-analyze verify refuses the units" >&2; exit 1
fi
if grep -i 'mailfleet' <<<"$out"; then echo "systemd-analyze verify warns about the units" >&2; exit 1; fi
echo "deb: dpkg -i installs it (user mailfleet, /var/lib/mailfleet 0750); systemd-analyze verify accepts both units"

# Configure as docs/STANDALONE.md says, then start both units.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cp examples/fleet/*.yaml /etc/mailfleet/manifests/
token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$token" >/etc/mailfleet/tokens/203.0.113.10
chgrp mailfleet /etc/mailfleet/tokens/203.0.113.10 && chmod 0640 /etc/mailfleet/tokens/203.0.113.10
sed -i "s/^HTTP_ADDR=.*/HTTP_ADDR=127.0.0.1:$port/" /etc/default/mailfleet-standalone
run_unit() { # run_unit UNIT INSTANCE NAME: in the background, its PID in $work/NAME.pid
  python3 tests/deb/run_unit.py "$1" "$2" "$work/$3.cmd" >"$work/$3.log" 2>&1 &
  echo $! >"$work/$3.pid"
  started_pids+=("$!")
}
run_unit "$units/mailfleet-standalone.service" - standalone
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$work/standalone.log" >&2; echo "standalone did not answer /healthz" >&2; exit 1; }
[ "$(stat -c %U /var/lib/mailfleet/state.json 2>/dev/null || stat -c %U /var/lib/mailfleet)" = mailfleet ] || { echo "standalone does not run as mailfleet" >&2; exit 1; }

mkdir -p "$work/postfix"
cat >"$work/maillog" <<'LOG'
Nov 29 21:06:13 sender postfix/smtp[17057]: ADB3298E17A: to=<ok@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.157.27]:25, delay=0.03, delays=0.01/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 OK  1636099802 x12si1234567pgh.123 - gsmtp)
LOG
cat >/etc/mailfleet/agent/203.0.113.10.env <<ENV
POOL=mail/bulk
ENDPOINT=http://127.0.0.1:$port/v1/feedback
MAILLOG=$work/maillog
POSTFIX_CONFIG_DIR=$work/postfix
APPLY=none
AGENT_OPTS="--no-metrics --interval 1"
ENV
printf '%s\n' "$token" >/etc/mailfleet/agent/203.0.113.10.token
chmod 0600 /etc/mailfleet/agent/203.0.113.10.token
run_unit "$units/mailfleet-agent@.service" 203.0.113.10 agent
stored=no
for _ in $(seq 100); do
  if curl -fsS "http://127.0.0.1:$port/metrics" | grep -q '^mailfleet_feedback_requests_total{code="200"} [1-9]'; then stored=yes; break; fi
  sleep 0.2
done
if [ "$stored" != yes ]; then
  cat "$work/agent.log" "$work/standalone.log" >&2
  echo "standalone answered no report of the agent with 200" >&2; exit 1
fi
[ -s /var/lib/mailfleet-agent/203.0.113.10/state.json ] || { echo "the agent kept no state in its StateDirectory" >&2; exit 1; }
for name in agent standalone; do
  pid=$(cat "$work/$name.pid")
  kill -TERM "$pid"
  ( sleep 30; kill -KILL "$pid" 2>/dev/null ) &
  watchdog=$!
  status=0
  wait "$pid" || status=$?
  kill "$watchdog" 2>/dev/null || true
  [ "$status" = 0 ] || { cat "$work/$name.log" >&2; echo "$name exited $status on SIGTERM, not 0" >&2; exit 1; }
done
grep -q '"203.0.113.10"' /var/lib/mailfleet/state.json || { echo "standalone's state holds nothing of 203.0.113.10" >&2; exit 1; }
echo "deb: both units started as installed ($(cat "$work/standalone.cmd" | cut -c1-60)...): the agent's report was stored with its own token; SIGTERM stopped both"

dpkg --purge mailfleet >/dev/null
installed=
for gone in /usr/bin/mailfleet /var/lib/mailfleet "$units/mailfleet-standalone.service"; do
  [ ! -e "$gone" ] || { echo "dpkg --purge left $gone" >&2; exit 1; }
done
rm -rf /etc/mailfleet
[ "$created_user" = yes ] && deluser --system mailfleet >/dev/null 2>&1
echo "deb: dpkg --purge removes the package and its state: ok"
