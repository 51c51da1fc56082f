#!/usr/bin/env python3
"""Throughput of durable acknowledgement: a 200 from `mailfleet standalone`
means the report is in feedback.wal and synced, and reports arriving
together share one sync (group commit).

Starts `mailfleet standalone` on the example fleet (loopback, an ephemeral
port, its output folder under /tmp), then for each concurrency C runs C
agents for SECONDS each, every agent its own instance posting delivery
reports one after the other on a kept-alive connection. Reads
`mailfleet_feedback_log_syncs_total` and `..._reports_total` from /metrics
before and after, and prints one Markdown row per C (docs/BENCHMARKS.md):
reports answered 200 per second, reports per sync, the slowest answer.

It first measures the disk: appends of one report-sized line, each followed
by fdatasync, in the same folder; that is the most reports per second a
sync per report could give.

Usage: bench/ack_throughput.py BINARY [CONCURRENCY ...]   (default 1 8 32 128)
"""
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 8


def report(instance, sequence):
    return json.dumps({
        "api_version": "feedback.mailfleet.io/v1",
        "agent": {"name": "bench", "instance": instance},
        "sequence": sequence,
        "source_ip": "203.0.113.10",
        "pool": {"namespace": "mail", "name": "bulk"},
        "period": {"start": "2026-11-29T08:10:00Z", "end": "2026-11-29T08:10:05Z"},
        "totals": [{"provider": "google", "outcome": "delivered", "category": "none", "count": 1}],
    })


def counters(address):
    connection = http.client.HTTPConnection(*address, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    values = {}
    for line in text.splitlines():
        for name in ("mailfleet_feedback_log_syncs_total", "mailfleet_feedback_log_reports_total"):
            if line.startswith(name + " "):
                values[name] = int(float(line.split()[1]))
    return values["mailfleet_feedback_log_syncs_total"], values["mailfleet_feedback_log_reports_total"]


def agent(address, instance, deadline, results):
    connection = http.client.HTTPConnection(*address, timeout=30)
    sequence, ok, other, slowest = 0, 0, 0, 0.0
    while time.monotonic() < deadline:
        sequence += 1
        started = time.monotonic()
        try:
            connection.request("POST", "/v1/feedback", body=report(instance, sequence),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection(*address, timeout=30)
            status = None
        slowest = max(slowest, time.monotonic() - started)
        if status == 200:
            ok += 1
        else:
            other += 1
            sequence -= 1  # not counted: the same sequence is sent again
    connection.close()
    results.append((ok, other, slowest))


def disk_syncs_per_second(folder):
    path = folder / "sync-probe"
    line = (report("probe", 1) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    count, started = 0, time.monotonic()
    while time.monotonic() - started < 3:
        os.write(fd, line)
        os.fdatasync(fd)
        count += 1
    elapsed = time.monotonic() - started
    os.close(fd)
    path.unlink()
    return count / elapsed


def main():
    binary = sys.argv[1]
    concurrencies = [int(n) for n in sys.argv[2:]] or [1, 8, 32, 128]
    work = Path(tempfile.mkdtemp(prefix="mf16-ack-"))
    out = work / "out"
    process = subprocess.Popen(
        [binary, "standalone", "--manifests", str(ROOT / "examples/fleet"), "--out", str(out),
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
    # Keep reading the log so the process never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
    try:
        print(f"disk: {disk_syncs_per_second(out):.0f} appends with fdatasync per second in {out}")
        print("| agents at once | reports answered 200 | per second | reports per sync | not 200 | slowest answer |")
        print("|---|---|---|---|---|---|")
        for count in concurrencies:
            syncs_before, stored_before = counters(address)
            results = []
            deadline = time.monotonic() + SECONDS
            started = time.monotonic()
            threads = [threading.Thread(target=agent, args=(address, f"c{count}-{i}", deadline, results))
                       for i in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            syncs_after, stored_after = counters(address)
            ok = sum(r[0] for r in results)
            other = sum(r[1] for r in results)
            slowest = max(r[2] for r in results)
            syncs = max(syncs_after - syncs_before, 1)
            print(f"| {count} | {ok:,} | {ok / elapsed:,.0f} | {(stored_after - stored_before) / syncs:.1f} "
                  f"| {other} | {slowest * 1000:.0f} ms |", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
