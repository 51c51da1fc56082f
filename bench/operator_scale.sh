#!/usr/bin/env bash
# The operator at scale (docs/BENCHMARKS.md, "Operator"): 200 SenderPools x 8
# IPs and 500 DomainRoutes in the in-process fake API server, `mailfleet
# operator` (release build) as its own process against it. Prints the initial
# convergence, the time from a Blocked transition to the last affected route
# status and EndpointSlice, the operator's RSS, and the API writes over a
# steady minute (target 0).
# Usage: bench/operator_scale.sh   (SCALE_POOLS, SCALE_IPS, SCALE_ROUTES,
# SCALE_STEADY_SECS override the sizes and the steady-state window)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --quiet --test operator_scale -- --ignored --nocapture
