#!/usr/bin/env bash
# DNSBL probe benchmark: 1,024 IPs x 4 zones against a local rbldnsd, with
# `mailfleet probe dnsbl` (concurrency 64) next to `rblcheck` on the same set
# and the same server. Target (docs/BENCHMARKS.md): the mailfleet round under 2 s.
#
# rblcheck only reads /etc/resolv.conf, which cannot name a port. So both run
# inside a private network + mount namespace: loopback up, rbldnsd on
# 127.0.0.1:53, and a resolv.conf bind-mounted over /etc/resolv.conf that
# names it. Nothing leaves the namespace. Needs root (unshare), rbldnsd and
# rblcheck (scripts/ensure-tools.sh installs them).
#
# A second phase puts a relay adding LATENCY_MS (default 5, 0 skips it) of
# round trip between both tools and rbldnsd, as a real resolver would be.
#
# Usage: bench/dnsbl.sh [RUNS]   (default 3; MAILFLEET_BIN overrides the binary)
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
latency_ms=${LATENCY_MS:-5}
ips=1024
zones=(zen.spamhaus.org bl.bench.test dnsbl.bench.test rbl.bench.test)

for tool in /usr/sbin/rbldnsd /usr/bin/rblcheck unshare python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool; run scripts/ensure-tools.sh (or: sudo apt-get install -y rbldnsd rblcheck)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench/dnsbl.sh needs root for unshare -n -m (a private network and mount namespace)" >&2; exit 1; }

if [ -z "${MAILFLEET_BIN:-}" ]; then
  cargo build --release --quiet --bin mailfleet
fi
bin=$(realpath "${MAILFLEET_BIN:-target/release/mailfleet}")

work=$(mktemp -d /tmp/mailfleet-dnsbl-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

# 1,024 addresses of 100.64.0.0/22. Only their names are queried; nothing is sent to them.
for i in $(seq 0 $((ips - 1))); do
  echo "100.64.$((i / 256)).$((i % 256))"
done > "$work/ips"

# Zone data: about 1 IP in 16 listed per zone (with codes that vary), and in
# zen a few of each Spamhaus error answer, which must come out as errors.
{
  echo ':127.0.0.2:Listed in SBL: $'
  awk 'NR % 16 == 1' "$work/ips"
  awk 'NR % 64 == 5 { print $0 " :127.0.0.4:XBL $" }' "$work/ips"
  awk 'NR % 128 == 9 { print $0 " :127.255.255.254:public resolver" }' "$work/ips"
  awk 'NR % 128 == 11 { print $0 " :127.255.255.255:rate limited" }' "$work/ips"
} > "$work/zen"
for z in 1 2 3; do
  { echo ":127.0.0.$((z + 1)):listed by bench zone $z: \$"; awk -v z="$z" 'NR % 16 == z + 1' "$work/ips"; } > "$work/zone$z"
done
echo "nameserver 127.0.0.1" > "$work/resolv.conf"

# Holds each question and each answer for half the added latency, like a
# resolver LATENCY_MS away. Listens on 127.0.0.2:53, asks rbldnsd on :5300.
cat > "$work/relay.py" <<'PYTHON'
import asyncio, sys
listen, upstream, half = ("127.0.0.2", 53), ("127.0.0.1", 5300), float(sys.argv[1]) / 2000

class Front(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        loop.call_later(half, lambda: loop.create_task(relay(self.transport, data, addr)))

async def relay(front, data, addr):
    answer = loop.create_future()
    class Up(asyncio.DatagramProtocol):
        def datagram_received(self, reply, _):
            if not answer.done():
                answer.set_result(reply)
    up, _ = await loop.create_datagram_endpoint(Up, remote_addr=upstream)
    up.sendto(data)
    try:
        reply = await asyncio.wait_for(answer, 2)
        loop.call_later(half, front.sendto, reply, addr)
    except asyncio.TimeoutError:
        pass
    finally:
        up.close()

loop = asyncio.new_event_loop()
loop.run_until_complete(loop.create_datagram_endpoint(Front, local_addr=listen))
loop.run_forever()
PYTHON

# What runs inside the namespace. Quoted: it reads its settings from the environment.
cat > "$work/inside.sh" <<'INSIDE'
set -euo pipefail
ip link set lo up
ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
mount --bind "$work/resolv.conf" /etc/resolv.conf
/usr/sbin/rbldnsd -p "$work/rbldnsd.pid" -b 127.0.0.1/53 -b 127.0.0.1/5300 -w "$work" -t 60 \
  zen.spamhaus.org:ip4set:zen bl.bench.test:ip4set:zone1 dnsbl.bench.test:ip4set:zone2 rbl.bench.test:ip4set:zone3 \
  >"$work/rbldnsd.log" 2>&1
relay=""
trap 'kill $(cat "$work/rbldnsd.pid") $relay 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$work/rbldnsd.pid" ] && break; sleep 0.1; done
sleep 0.2
mapfile -t addresses < "$work/ips"
zone_args=()
rbl_args=(-c)
for z in $zones; do zone_args+=(--zone "$z"); rbl_args+=(-s "$z"); done
TIMEFORMAT=%R
phase() {
  local label=$1 nameserver=$2 count=$3 run t
  # Same inode, so the bind mount over /etc/resolv.conf sees the new server.
  echo "nameserver ${nameserver%:*}" > "$work/resolv.conf"
  for run in $(seq "$count"); do
    t=$( { time "$bin" probe dnsbl --nameserver "$nameserver" "${zone_args[@]}" --concurrency 64 --timeout-ms 2000 --format json "${addresses[@]}" >"$work/mailfleet-$label.json"; } 2>&1 )
    echo "$label mailfleet run $run: $t s"
    # rblcheck exits non-zero when it finds a listing.
    t=$( { time rblcheck "${rbl_args[@]}" -t "${addresses[@]}" >"$work/rblcheck-$label.out" || true; } 2>&1 )
    echo "$label rblcheck  run $run: $t s"
  done
}
phase direct 127.0.0.1:53 "$runs"
if [ "$latency_ms" != 0 ]; then
  python3 "$work/relay.py" "$latency_ms" &
  relay=$!
  sleep 0.5
  phase latency 127.0.0.2:53 1
fi
INSIDE

echo "DNSBL probe: $ips IPs x ${#zones[@]} zones = $((ips * ${#zones[@]})) questions against rbldnsd in a private namespace;"
echo "$runs run(s) on loopback, then 1 run with ${latency_ms} ms added round trip"
work=$work bin=$bin runs=$runs latency_ms=$latency_ms zones="${zones[*]}" \
  unshare -n -m bash "$work/inside.sh" | tee "$work/times"

python3 - "$work" "$latency_ms" <<'PYTHON'
import json, re, statistics, sys
work, latency = sys.argv[1], sys.argv[2]
times = open(f"{work}/times").read()
for label, title in [("direct", "loopback, no added latency"), ("latency", f"{latency} ms added round trip")]:
    m = [float(x) for x in re.findall(label + r" mailfleet run \d+: ([0-9.]+) s", times)]
    r = [float(x) for x in re.findall(label + r" rblcheck  run \d+: ([0-9.]+) s", times)]
    if not m:
        continue
    results = json.load(open(f"{work}/mailfleet-{label}.json"))["results"]
    listed = sum(1 for x in results if x["listed"])
    errors = sum(1 for x in results if x["error"])
    rbl = open(f"{work}/rblcheck-{label}.out").read().splitlines()
    rbl_set = set()
    for line in rbl:
        hit = re.match(r"(\S+) listed by ([^:\s]+)", line)
        if hit:
            rbl_set.add(hit.groups())
    rbl_listed = len(rbl_set)
    ours = {(x["ip"], x["zone"]) for x in results if x["listed"]}
    our_errors = {(x["ip"], x["zone"]) for x in results if x["error"]}
    print(f"[{title}]")
    print(f"  mailfleet: median {statistics.median(m):.3f} s (best {min(m):.3f} s) over {len(m)} run(s); "
          f"{len(results)} results, {listed} listed, {errors} errors")
    print(f"  rblcheck:  median {statistics.median(r):.3f} s (best {min(r):.3f} s) over {len(r)} run(s); "
          f"{rbl_listed} reported listed (it counts error answers as listings)")
    print(f"  rblcheck / mailfleet: {statistics.median(r) / statistics.median(m):.1f}x")
    print(f"  listings both report: {len(ours & rbl_set)}; only mailfleet: {len(ours - rbl_set)}; "
          f"only rblcheck: {len(rbl_set - ours)}, of which mailfleet error answers: {len((rbl_set - ours) & our_errors)}")
    if label == "direct":
        print(f"  target (under 2 s with concurrency 64): {'met' if statistics.median(m) < 2.0 else 'MISSED'}")
PYTHON
