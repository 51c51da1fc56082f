#!/usr/bin/env bash
# The pacer against real Postfix and the lab's receiver (tests/pacer_live.rs,
# its high-cap test with the cap and span given here):
# one IP on three replicas, then on one, at each cap of CAPS (per hour), over
# SECONDS_SPAN seconds (default 180), with the agent's default 10 s window
# (MAILFLEET_PACE_WINDOW changes it). Needs root, Postfix and the project's
# venv; takes the live lock the other lab tests use. Prints one `pacer:` line
# per cap (with the load average); the figures go to docs/BENCHMARKS.md.
# PROFILE=release measures the release build (the pacing itself is not CPU-bound).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_SPAN:-180}
profile=()
[ "${PROFILE:-debug}" = release ] && profile=(--release)
cargo test "${profile[@]}" --test pacer_live --no-run >/dev/null 2>&1
status=0
for cap in ${CAPS:-600 3600 36000}; do
  out=$(MAILFLEET_PACE_SECONDS=$seconds MAILFLEET_PACE_CAP=$cap \
    flock /tmp/mailfleet-live.lock cargo test "${profile[@]}" --test pacer_live an_ip_keeps_a_high_cap \
    -- --nocapture 2>&1) \
    || status=1
  grep -E '^pacer:|panicked|replica\(s\) of' <<<"$out" || true
done
exit $status
