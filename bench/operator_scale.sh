#!/usr/bin/env bash
# The operator at scale (docs/BENCHMARKS.md, "Operator"): SenderPools x IPs
# and DomainRoutes in the in-process fake API server, `mailfleet operator`
# (release build) as its own process against it. Prints the initial
# convergence, the operator's RSS and the API writes over a steady window
# (target 0); then simulates every pod's agent over HTTP (its own token, a
# report of deliveries every interval) and prints the API requests per second
# by verb, the feedback answer time p50/p99, the time from a Blocked
# transition to the last affected route status and EndpointSlice under that
# load, and the RSS.
# Usage: bench/operator_scale.sh   (SCALE_POOLS, SCALE_IPS, SCALE_ROUTES,
# SCALE_STEADY_SECS, SCALE_AGENT_SECS, SCALE_INTERVAL_MS,
# SCALE_MAX_CONNECTIONS override the sizes and windows; SCALE_OPERATOR_WRAPPER
# runs the operator under a program such as bench/heaptrack_exec.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --quiet --test operator_scale -- --ignored --nocapture
