#!/usr/bin/env bash
# `mailfleet agent replay` next to `pflogsumm` on the same 1,000,000-line
# Postfix log, in one run: medians of a few runs of each, and the ratio
# (target: >= 20x). docs/BENCHMARKS.md, "Agent replay".
# Usage: bench/agent_replay.sh [LINES]   (RUNS=5 replay runs, PFL_RUNS=3 pflogsumm runs)
set -euo pipefail
cd "$(dirname "$0")/.."

lines=${1:-1000000}
runs=${RUNS:-5}
pfl_runs=${PFL_RUNS:-3}
dir=target/bench
log=$dir/agent-replay-$lines.maillog
times=$dir/agent-replay-times.txt
mkdir -p "$dir"

command -v pflogsumm >/dev/null || { echo "pflogsumm is missing; run scripts/ensure-tools.sh" >&2; exit 1; }
if [ ! -s "$log" ]; then
  echo "generating $log ($lines lines)"
  python3 bench/gen_postfix_log.py --lines "$lines" --out "$log"
fi
cargo build --release --quiet
bin=target/release/mailfleet

# Every run reads the file from the page cache: what is compared is the work
# on the lines, not the disk.
cat "$log" >/dev/null
: >"$times"

# timeit NAME COMMAND... : appends "NAME SECONDS" to $times, output to $dir/NAME.out
timeit() {
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$dir/$name.out" 2>"$dir/$name.err"
  t1=$(date +%s.%N)
  echo "$name $(echo "$t1 - $t0" | bc -l)" >>"$times"
}

for _ in $(seq "$runs"); do
  timeit replay "$bin" agent replay --source-ip 203.0.113.10 --log "$log" --format json
  timeit replay-1 "$bin" agent replay --source-ip 203.0.113.10 --log "$log" --format json --threads 1
done
for _ in $(seq "$pfl_runs"); do
  timeit pflogsumm pflogsumm "$log"
done
cmp -s "$dir/replay.out" "$dir/replay-1.out" || { echo "parallel and single-thread replays differ" >&2; exit 1; }

python3 - "$dir/replay.out" "$dir/pflogsumm.out" "$times" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)" <<'EOF'
import json, re, statistics, sys
summary_path, pfl_path, times_path, cores, load = sys.argv[1:]
s = json.load(open(summary_path))
runs = {}
for line in open(times_path):
    name, seconds = line.split()
    runs.setdefault(name, []).append(float(seconds))
median = {name: statistics.median(v) for name, v in runs.items()}
delivered = re.search(r"^\s*(\d+)\s+delivered", open(pfl_path).read(), re.M)
ours = sum(t["count"] for t in s["totals"] if t["outcome"] == "delivered")
print(f"log: {s['lines']} lines, {s['attempts']} delivery attempts, {s['skipped']} other lines, "
      f"{len(s['conclusive'])} conclusive replies (load average {load} on {cores} cores)")
print(f"delivered: pflogsumm {delivered.group(1) if delivered else '?'}, agent replay {ours}")
for name, label in [("replay", f"agent replay ({cores} threads)"), ("replay-1", "agent replay (--threads 1)"), ("pflogsumm", "pflogsumm")]:
    v = runs[name]
    print(f"{label:30} median {median[name]:7.3f} s  best {min(v):7.3f} s  ({len(v)} runs)  "
          f"{s['lines'] / median[name] / 1e6:5.2f} M lines/s")
print(f"ratio (medians): {median['pflogsumm'] / median['replay']:.1f}x, "
      f"{median['pflogsumm'] / median['replay-1']:.1f}x on one thread; target >= 20x")
EOF
