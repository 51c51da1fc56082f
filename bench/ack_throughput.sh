#!/usr/bin/env bash
# Throughput of durable acknowledgement (a 200 means synced to feedback.wal,
# reports arriving together share one sync): bench/ack_throughput.py against
# `mailfleet standalone` on the example fleet. Results go to
# docs/BENCHMARKS.md by hand.
# Usage: bench/ack_throughput.sh [CONCURRENCY ...]; MAILFLEET_BIN picks a binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MAILFLEET_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin mailfleet
  bin=target/release/mailfleet
fi
exec python3 bench/ack_throughput.py "$bin" "$@"
