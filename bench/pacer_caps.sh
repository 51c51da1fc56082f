#!/usr/bin/env bash
# The pacer against real Postfix (tests/pacer_live.rs): one IP on three replicas,
# then on one, at each cap, over SECONDS (default 180). Needs root and Postfix;
# takes the live lock other lab tests use. Results go to docs/BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_SPAN:-180}
cargo test --release --test pacer_live --no-run >/dev/null
for cap in ${CAPS:-600 3600 36000}; do
  MAILFLEET_PACE_SECONDS=$seconds MAILFLEET_PACE_CAP=$cap \
    flock /tmp/mailfleet-live.lock cargo test --release --test pacer_live -- --ignored --nocapture 2>&1 \
    | grep -E '^pacer:|panicked|delivered' || true
done
