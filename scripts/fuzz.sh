#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target (fuzz/fuzz_targets/*.rs).
# cargo-fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them. FUZZ_SECONDS sets the time per target (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  echo "== fuzzing $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  # The tracked seeds (real reply texts and log lines) start the corpus.
  cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
