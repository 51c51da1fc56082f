#!/usr/bin/env bash
# The largest-fleet restart of tests/standalone_durable.rs at a larger size:
# POOLS generated pools of 256 IPs (the CRD's maximum) beside the example
# fleet, every provider (builtin, other, declared) with a full window. Prints
# the state file's size and how long `mailfleet standalone` took to start on
# it, and to start again after SIGKILL. Results go to docs/BENCHMARKS.md by hand.
# Usage: bench/largest_fleet.sh [POOLS] (default 8); debug build, like the test.
set -euo pipefail
cd "$(dirname "$0")/.."
MAILFLEET_LARGEST_POOLS=${1:-8} exec cargo test --quiet --test standalone_durable -- \
  --nocapture a_fleet_at_the_crd_limits_is_killed_and_started_again_with_its_state
