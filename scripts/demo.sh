#!/usr/bin/env bash
# `make demo`: the incident, stopped live on this machine (docs/LAB.md): eight
# Postfix senders on 127.0.0.11-18 with their agents, mailfleet standalone,
# Debian's HAProxy for the hand-off between senders (configured and reloaded
# by standalone), a receiver that bans one IP for Microsoft, and a
# press-release burst. Needs
# root; without it (or with --offline, `make demo-sim`) the incident is
# replayed offline on the example fleet built into mailfleet instead.
# Options after --live go to lab/run.py (--burst N, --seed N, --help).
set -euo pipefail
cd "$(dirname "$0")/.."
mf=target/debug/mailfleet

live() {
  local missing=()
  for p in /usr/sbin/postfix /usr/sbin/postqueue /usr/sbin/rbldnsd /usr/sbin/haproxy; do
    [ -x "$p" ] || missing+=("$p")
  done
  target/venv/bin/python -c 'import aiosmtpd' 2>/dev/null || missing+=(target/venv)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "the live lab needs ${missing[*]}; installing them with scripts/ensure-tools.sh"
    scripts/ensure-tools.sh
  fi
  # exec: Ctrl-C reaches the lab, which stops everything it started.
  exec target/venv/bin/python -B lab/run.py "$@"
}

mode=live
case "${1:-}" in
  --offline) mode=offline; shift ;;
  --live) shift ;;
esac
if [ "$mode" = live ] && [ "$(id -u)" != 0 ]; then
  echo "The live lab runs eight Postfix instances and needs root (sudo make demo)."
  echo "Showing the offline replay instead (make demo-sim)."
  mode=offline
fi
if [ "$mode" = live ]; then
  live "$@"
fi

# The offline replay: a Microsoft block of one source IP, seen in the first
# delivery reply, taken out of the Microsoft route only, and probed again after
# its hold-down.
log=examples/logs/203.0.113.12.maillog
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. One reply from Microsoft, classified (bare reply and Postfix log line)"
echo '550 5.7.606 Access denied, banned sending IP [203.0.113.12]' | $mf classify --domain hotmail.co.jp
grep -m1 'acclaim.jp.*bounced' "$log" | $mf classify

step "2. The sender's delivery log replayed through the reputation engine"
echo "   ($log: 70 attempts from 203.0.113.12; Microsoft starts refusing it at 08:10 JST)"
$mf routes --example --replay-log "$log" --source-ip 203.0.113.12 > target/demo-routes.txt
sed -n '1,/^$/p' target/demo-routes.txt

step "3. The routes it produces: 203.0.113.12 leaves the Microsoft route only"
awk '/^mail\/(microsoft|google) /,/^$/' target/demo-routes.txt

step "4. The Postfix configuration of the blocked sender"
echo "   Microsoft domains (and acclaim.jp, learned from its MX host) go to the route Service
   (healthy IPs only); Gmail stays on this IP:"
$mf routes --example --replay-log "$log" --source-ip 203.0.113.12 --format postfix --sender 203.0.113.12 2>/dev/null \
  | grep -E '^(hotmail\.co\.jp|outlook\.com|acclaim\.jp|gmail\.com|yahoo\.co\.jp)\s' || true
echo "   and block replies become temporary failures, so no message bounces on the block:"
$mf routes --example --replay-log "$log" --source-ip 203.0.113.12 --format postfix --sender 203.0.113.12 2>/dev/null \
  | grep -m1 -F '/^5(\.7\.(60' || true

step "5. An hour and a half later: the hold-down is over, the IP gets a probe trickle"
$mf routes --example --replay-log "$log" --source-ip 203.0.113.12 --at 2026-11-29T00:45:00Z 2>/dev/null \
  | grep -E 'Probing|203\.0\.113\.12 .*microsoft' || true

printf '\nDone. Try it on your own manifests: mailfleet routes --manifests DIR (see README.md).\n'
