#!/usr/bin/env bash
# The feedback port under 10,000 and 20,000 hostile connections (idle, drip,
# slow body): extra memory and whether /healthz and reports stay answered.
# The operator serves the same code (src/serve), so its port holds the same
# bounds. Results go to docs/BENCHMARKS.md by hand.
# Usage: bench/feedback_port.sh [CONNECTIONS ...]; MAILFLEET_BIN picks a binary.
#        bench/feedback_port.sh --operator [CONNECTIONS]: the operator's port,
#        the operator running in-process against the fake API server
#        (tests/operator_feedback.rs, ignored in `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
# Both ends of every connection live on this machine: raise the descriptor limit.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
if [ "${1:-}" = "--operator" ]; then
  MAILFLEET_BENCH_CONNECTIONS=${2:-10000} exec cargo test --quiet --test operator_feedback -- \
    --ignored --nocapture operator_port_memory_under_hostile_connections
fi
bin=${MAILFLEET_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin mailfleet
  bin=target/release/mailfleet
fi
exec python3 bench/feedback_port.py "$bin" "$@"
