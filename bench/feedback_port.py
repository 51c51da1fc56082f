#!/usr/bin/env python3
"""Memory and answerability of the feedback port under hostile connections.

Starts `mailfleet standalone` on the example fleet (loopback, an ephemeral
port), then for each attack opens N connections and holds them for a while:

  idle       connect and send nothing;
The connections are held by child processes of at most 10,000 each (each
process has its own descriptor limit).
  drip       a valid request head declaring a 64 KiB body, then one body
             byte per connection every second;
  slow-body  the head and half of the body, then nothing.

During each attack it samples the process' resident memory (VmRSS) and asks
GET /healthz and POST /v1/feedback as an agent would, timing the answers.
Prints one Markdown table row per attack (docs/BENCHMARKS.md).

Usage: bench/feedback_port.py BINARY [CONNECTIONS ...]   (default 10000 20000)
       bench/feedback_port.py --attach PID HOST:PORT TOKEN POOL IP AGENT [CONNECTIONS ...]
The second form attacks a port already served by process PID (the operator,
run in-process against the fake API server by `tests/operator_feedback.rs`,
`operator_port_memory_under_hostile_connections`), posting reports for IP of
POOL as AGENT with TOKEN.
"""
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLD_SECONDS = 12


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def exchange(address, request, timeout=10):
    started = time.monotonic()
    try:
        with socket.create_connection(address, timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        status = int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        status = None
    return status, time.monotonic() - started


# Who the reports come from; --attach changes it.
AGENT = {"token": None, "pool": "bulk", "ip": "203.0.113.10", "name": "bench"}


def report(sequence):
    body = json.dumps({
        "api_version": "feedback.mailfleet.io/v1",
        "agent": {"name": AGENT["name"], "instance": "bench-1"},
        "sequence": sequence,
        "source_ip": AGENT["ip"],
        "pool": {"namespace": "mail", "name": AGENT["pool"]},
        "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"},
        "totals": [{"provider": "google", "outcome": "delivered", "category": "none", "count": 1}],
    }).encode()
    auth = b"Authorization: Bearer %s\r\n" % AGENT["token"].encode() if AGENT["token"] else b""
    return (b"POST /v1/feedback HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n" + auth +
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body


HEAD = (b"POST /v1/feedback HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: 65536\r\n\r\n")


# Connections one holder process opens: each process has its own descriptor
# limit, so 20,000 connections need two of them.
PER_HOLDER = 10000


def hold(kind, address, count, seconds):
    """Opens `count` connections, plays the attack on them for `seconds`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sockets = []
    for _ in range(count):
        try:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(address)
            sockets.append(s)
        except OSError:
            break
    time.sleep(0.5)
    for s in sockets:
        try:
            if kind == "drip":
                s.send(HEAD + b"{")
            elif kind == "slow-body":
                s.send(HEAD + b" " * 32768)
        except OSError:
            pass
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if kind == "drip":
            for s in sockets:
                try:
                    s.send(b" ")
                except OSError:
                    pass
        time.sleep(1.0)
    os._exit(0 if sockets else 1)


def attack(kind, address, pid, count, sequence):
    holders = []
    left = count
    while left > 0:
        n = min(left, PER_HOLDER)
        child = os.fork()
        if child == 0:
            hold(kind, address, n, HOLD_SECONDS + 1)
        holders.append(child)
        left -= n
    time.sleep(2.0)
    peak = 0
    health, feedback = [], []
    started = time.monotonic()
    while time.monotonic() - started < HOLD_SECONDS - 2:
        peak = max(peak, rss_kib(pid))
        health.append(exchange(address, b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"))
        sequence += 1
        feedback.append(exchange(address, report(sequence)))
        peak = max(peak, rss_kib(pid))
        time.sleep(0.5)
    for child in holders:
        os.waitpid(child, 0)
    time.sleep(1.0)
    return count, peak, health, feedback, sequence


def summary(samples):
    ok = [t for status, t in samples if status == 200]
    worst = max((t for _, t in samples), default=0.0)
    others = sorted({str(status) for status, _ in samples if status != 200})
    rest = f" (others: {', '.join(others)})" if others else ""
    return f"{len(ok)}/{len(samples)} answered 200{rest}, slowest {worst * 1000:.0f} ms"


def attach():
    """The --attach form: the port of a process someone else started."""
    pid, hostport, token, pool, ip, name = sys.argv[2:8]
    AGENT.update(token=token, pool=pool, ip=ip, name=name)
    host, port = hostport.rsplit(":", 1)
    counts = [int(n) for n in sys.argv[8:]] or [10000]
    run(int(pid), (host, int(port)), counts)


def run(pid, address, counts):
    time.sleep(1.0)
    baseline = rss_kib(pid)
    print(f"baseline RSS {baseline / 1024:.1f} MiB")
    print("| attack | connections | extra RSS at peak | /healthz during the attack | POST /v1/feedback during the attack |")
    print("|---|---|---|---|---|")
    sequence = 0
    for count in counts:
        for kind in ("idle", "drip", "slow-body"):
            opened, peak, health, feedback, sequence = attack(kind, address, pid, count, sequence)
            print(f"| {kind} | {opened} | {(peak - baseline) / 1024:.1f} MiB | {summary(health)} | {summary(feedback)} |",
                  flush=True)


def main():
    if sys.argv[1] == "--attach":
        return attach()
    binary = sys.argv[1]
    counts = [int(n) for n in sys.argv[2:]] or [10000, 20000]
    work = Path(tempfile.mkdtemp(prefix="mf16-bench-"))
    process = subprocess.Popen(
        [binary, "standalone", "--manifests", str(ROOT / "examples/fleet"), "--out", str(work / "out"),
         "--http-addr", "127.0.0.1:0", "--dnsbl-resolver", "127.0.0.1:9", "--log-level", "warn,mailfleet::standalone=info"],
        stderr=subprocess.PIPE, text=True)
    address = None
    for line in process.stderr:
        if "serving http://" in line:
            host, port = line.split("serving http://")[1].split("/")[0].rsplit(":", 1)
            address = (host, int(port))
            break
    if address is None:
        sys.exit("mailfleet standalone did not start")
    try:
        run(process.pid, address, counts)
    finally:
        process.terminate()
        process.wait(timeout=20)


if __name__ == "__main__":
    main()
