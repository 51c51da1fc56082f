#!/usr/bin/env bash
# The cost of reading a sender's queue: `mailfleet agent queue` sums a
# `postqueue -j` listing of N messages (default 100,000, bench/gen_postqueue.py)
# per route of a transport map. Prints wall time and peak memory (GNU time).
# The listing is read as a stream: memory must not grow with N.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# PROFILE=debug measures the test build instead (slower; memory is the point).
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --bin mailfleet >/dev/null
else
  cargo build --bin mailfleet >/dev/null
fi
python3 bench/gen_postqueue.py "$n" > "$work/listing.jsonl"
cat > "$work/mailfleet_transport" <<'MAP'
# mailfleet transport map for 203.0.113.10 (pool mail/bulk); generated, do not edit.

# route mail/google (provider google, mode Primary): direct
gmail.com	mf-203-0-113-10-google:
googlemail.com	mf-203-0-113-10-google:

# route mail/microsoft (provider microsoft, mode Defer): defer
hotmail.com	retry:4.7.0 mailfleet route mail/microsoft defers mail until a source IP may send to microsoft
outlook.com	retry:4.7.0 mailfleet route mail/microsoft defers mail until a source IP may send to microsoft
live.com	retry:4.7.0 mailfleet route mail/microsoft defers mail until a source IP may send to microsoft

# route mail/yahoo (provider yahoo, mode Primary): direct
yahoo.com	mf-203-0-113-10-yahoo:
aol.com	mf-203-0-113-10-yahoo:

# route mail/orange (provider orange, mode Primary): direct
orange.fr	mf-203-0-113-10-orange:
wanadoo.fr	mf-203-0-113-10-orange:

# route mail/default (provider other, mode Primary): direct
*	mf-203-0-113-10-default:
MAP
size=$(du -h "$work/listing.jsonl" | cut -f1)
echo "listing: $n messages, $size"
for run in 1 2 3; do
  /usr/bin/time -f "run $run: %e s wall, %M KiB peak RSS" \
    target/$profile/mailfleet agent queue --listing "$work/listing.jsonl" \
      --transport-map "$work/mailfleet_transport" >"$work/out.txt"
done
cat "$work/out.txt"
