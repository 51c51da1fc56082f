#!/usr/bin/env python3
"""The live lab: the incident, stopped, on one machine (docs/LAB.md).

On 127.0.0.x only: eight private Postfix instances, each sending from its own
address with a `mailfleet agent run`; `mailfleet standalone` over the lab's
manifests; Debian's HAProxy for the hand-off between senders, its
configuration written and reloaded by standalone (mflab/handoff.py); a receiver on 127.0.0.1 that answers like Microsoft, Gmail and
Yahoo and refuses Microsoft mail from one source IP; an rbldnsd zone; and a
press-release burst spread at random over the senders. It prints the timeline,
writes OUT/report.json and OUT/delivery.svg, and stops everything it started,
also on Ctrl-C and on failure.

Run it as root with the project's venv: target/venv/bin/python lab/run.py
(`make demo` does). Exit status: 0 when every check passed, 1 when a check
failed, 2 when the lab could not run (the message says why).
"""

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

# No __pycache__ folders in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mflab import handoff, loadgen, report  # noqa: E402
from mflab.postfix import POSTFIX, Instance, slug  # noqa: E402
from mflab.procs import LabError, Supervisor, listening_on, port_problems  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENDERS = [f"127.0.0.{n}" for n in range(11, 19)]
ROUTE_SERVICE_HOST = "127.0.0.10"
NAMESPACE, POOL = "lab", "senders"
DNSBL_ZONE = "dnsbl.lab.mailfleet.test"


def iso(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Tail:
    """New complete lines of a file that grows."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        parts = data.split(b"\n")
        self.partial = parts.pop()
        out = []
        for p in parts:
            try:
                out.append(json.loads(p))
            except ValueError:
                continue
        return out


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


class Lab:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.out = os.path.abspath(args.out)
        self.sa_out = os.path.join(self.work, "standalone")
        self.manifests = os.path.join(self.work, "manifests")
        self.sup = Supervisor(os.path.join(self.work, "logs"), os.path.join(self.work, "lab.pids"))
        self.instances = [Instance(self.work, ip, i + 1) for i, ip in enumerate(SENDERS)]
        self.blocked = args.blocked_ip
        self.timeline = []
        self.t0 = None
        self.answers = []
        self.events = []
        self.out_versions = {ip: [] for ip in SENDERS}  # (mtime, version)
        self.applied = {ip: [] for ip in SENDERS}  # (seen, version)
        self.milestones = {}
        self.stop_load = threading.Event()
        self.loadgen = loadgen.LoadGenerator(SENDERS, args.seed)
        self.haproxy = None
        self.route_ports = []
        self.lab_routes = []
        self.receiver = None
        self.postfix_started = []
        # Set once the ports were found free: only then is a listener left behind ours.
        self.started = False
        self.by_recipient = {}
        self.speed = {}
        self.next_listing_read = 0.0

    # ---------- output ----------

    def say(self, what, at=None, kind="note", **extra):
        at = time.time() if at is None else at
        rel = None if self.t0 is None else round(at - self.t0, 3)
        entry = {"t": rel, "at": iso(at), "kind": kind, "what": what, **extra}
        self.timeline.append(entry)
        stamp = f"+{rel:7.2f}s" if rel is not None else " " * 9
        print(f"[{stamp}] {what}", flush=True)

    def step(self, text):
        print(f"\n\033[1m== {text}\033[0m", flush=True)

    # ---------- preflight ----------

    def ports(self):
        tcp = [("127.0.0.1", self.args.receiver_port, "the receiver"),
               ("127.0.0.1", self.args.http_port, "mailfleet standalone"),
               ]
        tcp += [(ROUTE_SERVICE_HOST, port, "HAProxy's hand-off listener of a route")
                for port in self.route_ports]
        tcp += [(ip, 25, f"the Postfix of sender {ip}") for ip in SENDERS]
        udp = [("127.0.0.1", self.args.dns_port, "rbldnsd")]
        return tcp, udp

    def preflight(self):
        if os.geteuid() != 0:
            raise LabError("the lab needs root: Postfix's queue belongs to root and its own user "
                           "(run it with sudo, or as root in the dev container)")
        needed = [POSTFIX, "/usr/sbin/postqueue", "/usr/sbin/postmap", self.args.rbldnsd,
                  handoff.HAPROXY]
        missing = [p for p in needed if not os.path.exists(p)]
        if missing:
            raise LabError(f"missing {', '.join(missing)}; install with scripts/ensure-tools.sh "
                           "(or: apt-get install -y postfix rbldnsd haproxy)")
        if not os.path.exists(self.args.mailfleet):
            raise LabError(f"{self.args.mailfleet} does not exist; build it with `cargo build`")
        helped = subprocess.run([self.args.mailfleet, "standalone", "--help"],
                                capture_output=True, text=True)
        if helped.returncode != 0:
            raise LabError(f"{self.args.mailfleet} has no working `standalone` command: "
                           f"{helped.stderr.strip()[:300]}")
        checked = subprocess.run(
            [self.args.mailfleet, "routes", "--manifests", self.args.manifests, "--format", "json"],
            capture_output=True, text=True)
        if checked.returncode != 0:
            raise LabError(f"the lab's manifests in {self.args.manifests} are refused; fix them "
                           f"and run again:\n{checked.stderr.strip()}")
        self.lab_routes = json.loads(checked.stdout).get("routes", [])
        self.route_ports = handoff.ports(len(self.lab_routes))
        # What a run killed with SIGKILL left behind.
        for left in self.sup.stop_leftovers():
            print(f"stopped a process left over by an earlier run: {left}")
        for inst in self.instances:
            inst.stop_quietly()
        tcp, udp = self.ports()
        taken = port_problems(tcp, udp)
        if taken:
            raise LabError("the lab's ports are taken, so it will not start:\n  "
                           + "\n  ".join(taken)
                           + "\nstop what holds them (an earlier lab? `make demo` stops its own "
                             "on exit) or choose other ports (--receiver-port, --http-port, --dns-port)")

    # ---------- start ----------

    def prepare_work(self):
        for sub in ("standalone", "agents", "logs", "manifests", "dnsbl", "receiver", "haproxy"):
            shutil.rmtree(os.path.join(self.work, sub), ignore_errors=True)
            os.makedirs(os.path.join(self.work, sub), exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        for name in os.listdir(self.args.manifests):
            src = os.path.join(self.args.manifests, name)
            if os.path.isfile(src):
                shutil.copy(src, self.manifests)
        self.haproxy_config = os.path.join(self.work, "haproxy", "haproxy.cfg")
        self.haproxy_pid_file = os.path.join(self.work, "haproxy", "haproxy.pid")
        self.token = os.path.join(self.work, "token")
        with open(self.token, "w") as f:
            f.write(secrets.token_hex(16))
        os.chmod(self.token, 0o600)
        # rbldnsd drops root: its folder and zone must be readable by its user.
        for path in (self.work, os.path.join(self.work, "dnsbl")):
            os.chmod(path, 0o755)
        self.zone_file = os.path.join(self.work, "dnsbl", "lab-zone")
        self.write_zone(listed=False)

    def write_zone(self, listed):
        text = ":127.0.0.2:Listed by the lab's block list: $\n"
        if listed:
            text += f"{self.blocked}\n"
        tmp = self.zone_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.zone_file)

    def start_rbldnsd(self):
        self.sup.start("rbldnsd", [
            self.args.rbldnsd, "-n", "-b", f"127.0.0.1/{self.args.dns_port}", "-t", "1", "-c", "1",
            "-w", os.path.join(self.work, "dnsbl"), f"{DNSBL_ZONE}:ip4set:lab-zone"])

    def start_receiver(self):
        policy = {
            "domains": loadgen.provider_of_domain(),
            "clients": {self.blocked: {"microsoft": "ms_banned"}},
        }
        self.answers_path = os.path.join(self.work, "receiver", "answers.jsonl")
        port_file = os.path.join(self.work, "receiver", "port")
        self.receiver = self.sup.start("receiver", [
            self.args.python, os.path.join(REPO, "tests", "lab", "receiver.py"),
            "--policy", json.dumps(policy), "--record", self.answers_path,
            "--port-file", port_file, "--port", str(self.args.receiver_port), "--host", "127.0.0.1"])
        self.wait_for(lambda: os.path.exists(port_file), 20, "the receiver to listen")
        self.answers_tail = Tail(self.answers_path)

    def start_standalone(self):
        argv = [self.args.mailfleet, "standalone", "--manifests", self.manifests,
                "--out", self.sa_out, "--http-addr", f"127.0.0.1:{self.args.http_port}",
                "--token-file", self.token, "--dnsbl-resolver", f"127.0.0.1:{self.args.dns_port}",
                "--tick-ms", str(self.args.tick_ms),
                "--postfix-direct-nexthop", f"[127.0.0.1]:{self.args.receiver_port}",
                "--route-service-host", ROUTE_SERVICE_HOST,
                "--haproxy-config", self.haproxy_config,
                "--haproxy-reload-cmd", handoff.reload_command(self.haproxy_pid_file),
                "--haproxy-bind", ROUTE_SERVICE_HOST,
                "--haproxy-first-port", str(handoff.FIRST_PORT),
                "--haproxy-log", handoff.LOG_TARGET]
        self.sup.start("standalone", argv, env={**os.environ, "MAILFLEET_LOG_LEVEL": os.environ.get("MAILFLEET_LOG_LEVEL", "info")})
        versions = [os.path.join(self.sa_out, "senders", slug(ip), "config-version") for ip in SENDERS]
        self.wait_for(lambda: all(os.path.exists(v) for v in versions), 30,
                      "mailfleet standalone to write every sender's configuration")
        self.wait_for(lambda: os.path.exists(self.haproxy_config), 30,
                      "mailfleet standalone to write HAProxy's configuration")
        self.events_tail = Tail(os.path.join(self.sa_out, "events.jsonl"))

    def start_agents(self):
        for inst in self.instances:
            state_dir = os.path.join(self.work, "agents", inst.slug)
            os.makedirs(state_dir, exist_ok=True)
            inst.state_file = os.path.join(state_dir, "state.json")
            self.sup.start(f"agent-{inst.ip}", [
                self.args.mailfleet, "agent", "run", "--source-ip", inst.ip,
                "--pool", f"{NAMESPACE}/{POOL}", "--agent-name", f"lab-{inst.slug}",
                "--log", inst.maillog, "--state-file", inst.state_file,
                "--endpoint", f"http://127.0.0.1:{self.args.http_port}/v1/feedback",
                "--token-file", self.token, "--interval", "0.5", "--poll", "0.05",
                "--config-poll", "0.1", "--timeout", "2", "--no-metrics",
                "--config-dir", os.path.join(self.sa_out, "senders", inst.slug),
                "--postfix-config-dir", inst.etc, "--manifests", self.manifests,
                "--shutdown-timeout", "2"])

        def all_applied():
            self.sup.check_alive()
            for inst in self.instances:
                want = read_text(os.path.join(self.sa_out, "senders", inst.slug, "config-version"))
                if self.agent_version(inst) != want:
                    return False
            return True

        self.wait_for(all_applied, 30, "every agent to apply its first configuration")

    def start_haproxy(self):
        """HAProxy on the configuration standalone wrote; from now on
        standalone's reload command signals it (through the pid file)."""
        self.haproxy = self.sup.start("haproxy", handoff.argv(self.haproxy_config,
                                                              self.haproxy_pid_file))
        listeners = [(ROUTE_SERVICE_HOST, port, "") for port in self.route_ports]
        self.wait_for(lambda: (os.path.exists(self.haproxy_pid_file)
                               and len(listening_on(listeners)) == len(listeners)), 20,
                      "HAProxy to listen on every route's hand-off port")

    def handoffs(self):
        """Hand-offs between senders (the lab's own port checks left out)."""
        if self.haproxy is None:
            return {}
        return {k: n for k, n in handoff.handoffs(self.haproxy.log_path).items()
                if k[0] in SENDERS}

    def handoff_summary(self):
        by_way = {}
        for (f, r, t), n in self.handoffs().items():
            by_way.setdefault((f, r), {})[t or "no sender (closed, mail kept queued)"] = n
        if not by_way:
            return "  none: no sender handed mail off"
        lines = []
        for (f, r), to in sorted(by_way.items()):
            spread = ", ".join(f"{t} {n}" for t, n in sorted(to.items()))
            lines.append(f"  {f} -> {r}: {sum(to.values())} ({spread})")
        return "\n".join(lines)

    def agent_version(self, inst):
        try:
            with open(inst.state_file) as f:
                return json.load(f).get("applied_config")
        except (OSError, ValueError):
            return None

    def start_postfix(self):
        def start(inst):
            inst.start()
            self.postfix_started.append(inst)
        for inst in self.instances:
            inst.prepare()
        self.sup.on_stop(self.stop_postfix)
        threads = []
        errors = []
        for inst in self.instances:
            def run(inst=inst):
                try:
                    start(inst)
                except LabError as e:
                    errors.append(str(e))
            t = threading.Thread(target=run)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        if errors:
            raise LabError(errors[0])

    def stop_postfix(self):
        threads = [threading.Thread(target=i.stop_quietly) for i in self.instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout} s waiting for {what}")
            self.sup.check_alive()
            time.sleep(0.05)

    # ---------- watching ----------

    def poll(self):
        """Reads what changed since the last call and adds timeline entries."""
        now = time.time()
        for a in self.answers_tail.lines():
            self.answers.append(a)
            self.on_answer(a)
        for e in self.events_tail.lines():
            self.events.append(e)
            self.on_event(e)
        for inst in self.instances:
            path = os.path.join(self.sa_out, "senders", inst.slug, "config-version")
            version = read_text(path)
            history = self.out_versions[inst.ip]
            if version and (not history or history[-1][1] != version):
                try:
                    mtime = os.stat(path).st_mtime
                except OSError:
                    mtime = now
                history.append((mtime, version))
            applied = self.agent_version(inst)
            if applied and (not self.applied[inst.ip] or self.applied[inst.ip][-1][1] != applied):
                # The agent saves its state right after Postfix took the new
                # configuration: the file's time is when it applied, not when
                # this loop (slower on a loaded machine) got round to reading it.
                try:
                    seen = min(now, os.stat(inst.state_file).st_mtime)
                except OSError:
                    seen = now
                self.applied[inst.ip].append((seen, applied))
                self.on_applied(inst, applied, seen)
        if "dnsbl_listed" in self.milestones and "dnsbl_seen" not in self.milestones:
            self.watch_listing(now)

    def on_answer(self, a):
        m = self.milestones
        ip, provider = a.get("client_ip"), a.get("provider")
        if a.get("kind") == "ms_banned" and "first_conclusive" not in m:
            m["first_conclusive"] = a["at"]
            self.say(f"first conclusive reply: {a['reply'][:72]}... to {ip} for {a['recipient']}",
                     a["at"], "first_conclusive_reply", ip=ip)
        if a.get("stage") != "data" or provider != "microsoft":
            return
        msg = self.by_recipient.get(a.get("recipient"))
        if (ip != self.blocked and msg is not None and msg.sender == self.blocked
                and "first_rerouted" not in m):
            m["first_rerouted"] = a["at"]
            self.say(f"deferred Microsoft mail of {self.blocked} leaves through a healthy IP: "
                     f"{a['recipient']} accepted from {ip}", a["at"], "rerouted", ip=ip)
        if ip == self.blocked and "probing" in m and "first_probe" not in m:
            m["first_probe"] = a["at"]
            self.say(f"trickle probe: Microsoft accepts {a['recipient']} from {ip} again",
                     a["at"], "probe_delivered", ip=ip)

    def on_event(self, e):
        # Standalone stamps a transition with the time of its evidence (the
        # log line's, to the second); the timeline shows when it was seen.
        at = time.time()
        extra = {"event_at": e.get("at")}
        if e.get("event") == "route":
            excluded = ", ".join(f"{x.get('ip')} ({x.get('state')})" for x in e.get("excluded", []))
            targets = e.get("targets", [])
            reduced = ", ".join(f"{t.get('ip')} at weight {t.get('weight')}" for t in targets
                                if t.get("weight") != 100)
            what = (f"route {e.get('route')} ({e.get('provider')}, {e.get('to')}): {len(targets)} "
                    f"sending IPs" + (f" ({reduced})" if reduced else "")
                    + (f", without {excluded}" if excluded else ""))
            if self.t0 is not None:
                self.say(what, at, "route_rewritten", route=e.get("route"), **extra)
            if ("blocked" in self.milestones and "routes_rewritten" not in self.milestones
                    and self.blocked in excluded):
                self.milestones["routes_rewritten"] = at
            return
        if e.get("ip") and e.get("to"):
            evidence = e.get("evidence") or ""
            if len(evidence) > 90:
                evidence = evidence[:87] + "..."
            what = (f"{e['ip']} x {e.get('provider')}: {e.get('from') or 'new pair'} -> {e['to']}"
                    f" ({e.get('reason', '')}{': ' + evidence if evidence else ''})")
            if self.t0 is None:
                return
            if e.get("from") is not None or e["to"] != "Healthy":
                # A pair's first appearance as Healthy is bookkeeping, not news.
                self.say(what, at, "transition", ip=e["ip"], provider=e.get("provider"),
                         from_state=e.get("from"), to_state=e["to"],
                         evidence=e.get("evidence"), **extra)
            if e["ip"] == self.blocked and e.get("provider") == "microsoft":
                # Each milestone only after the one before it: Blocked, Probing, Recovering, Healthy.
                order = [("Blocked", "blocked", None), ("Probing", "probing", "blocked"),
                         ("Recovering", "recovering", "probing"), ("Healthy", "healthy", "recovering")]
                for state, key, after in order:
                    if (e["to"] == state and key not in self.milestones
                            and (after is None or after in self.milestones)):
                        self.milestones[key] = at
                        if key == "blocked":
                            self.list_on_block_list()
        else:
            detail = ", ".join(f"{k}={v}" for k, v in e.items() if k != "at")
            self.say(f"standalone: {detail}", at, "event", **extra)

    def list_on_block_list(self):
        """The block list follows the provider as soon as the pair is Blocked,
        while the burst may still be being submitted, so that block-list rounds
        (every 10 s) fall between the listing and the end of the 30 s
        hold-down on every run: the list holds the pair in Blocked until the
        delisting, whatever the machine's load. Listed later (once the burst
        was in, which takes longer on a loaded machine) the hold-down could
        end first, and a round that then saw the listing sent the probing IP
        back to Blocked."""
        self.write_zone(listed=True)
        self.milestones["dnsbl_listed"] = time.time()
        self.say(f"the lab's block list ({DNSBL_ZONE}) lists {self.blocked} too", kind="dnsbl_listed")

    def watch_listing(self, now):
        """Whether standalone's block-list round has seen the lab's listing
        (its state.json keeps each zone's last answer per IP); read once a
        second, the file is large next to the other things a poll reads."""
        if now < self.next_listing_read:
            return
        self.next_listing_read = now + 1.0
        try:
            with open(os.path.join(self.sa_out, "state.json")) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return
        for item in state.get("items", []):
            if item.get("kind") != "SenderPool":
                continue
            for ip in (item.get("status") or {}).get("ips", []):
                if ip.get("address") != self.blocked:
                    continue
                for answer in ip.get("dnsbl", []):
                    if answer.get("zone") == DNSBL_ZONE and answer.get("listed"):
                        self.milestones["dnsbl_seen"] = now
                        self.say(f"mailfleet's block-list round sees {self.blocked} listed: the pair "
                                 f"stays Blocked past its hold-down until a round finds it delisted",
                                 now, "dnsbl_seen", ip=self.blocked)
                        return

    def on_applied(self, inst, version, now):
        m = self.milestones
        if "first_conclusive" in m and "rewrite_s" not in m:
            self.say(f"agent of {inst.ip} applied configuration {version} (postmap, reload, flush)",
                     now, "config_applied", ip=inst.ip, version=version)

    def changed_after(self, ip, t):
        """The first configuration standalone wrote for `ip` after time t."""
        for mtime, version in self.out_versions[ip]:
            if mtime >= t - 0.05:
                return mtime, version
        return None

    def measure_speed(self):
        """First conclusive reply -> the new configuration applied on every
        sender whose configuration the block changed."""
        t = self.milestones["first_conclusive"]
        per_sender = {}
        for ip in SENDERS:
            written = self.changed_after(ip, t)
            if written is None:
                continue
            applied_at = next((s for s, v in self.applied[ip] if v == written[1]), None)
            per_sender[ip] = {"version": written[1], "written_at": iso(written[0]),
                              "applied_at": iso(applied_at) if applied_at else None,
                              "written_s": round(written[0] - t, 3),
                              "applied_s": round(applied_at - t, 3) if applied_at else None}
        return per_sender

    async def watch_until(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if predicate():
                return
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.sup.check_alive()
            await asyncio.sleep(0.025)

    # ---------- the scenario ----------

    async def run(self):
        a = self.args
        self.step("Preparing the lab (127.0.0.x only)")
        self.preflight()
        self.started = True
        self.prepare_work()
        self.start_rbldnsd()
        self.start_receiver()
        print(f"receiver on 127.0.0.1:{a.receiver_port}: Microsoft domains (consumer and "
              f"Microsoft 365 tenants) refuse {self.blocked} with 550 5.7.606; all else accepted")
        self.start_standalone()
        print(f"mailfleet standalone on 127.0.0.1:{a.http_port}, state in {self.sa_out}")
        self.start_postfix()
        self.start_agents()
        self.start_haproxy()
        print(f"8 Postfix senders on {SENDERS[0]}..{SENDERS[-1]}, each with its agent; "
              f"the hand-off between them: HAProxy on {ROUTE_SERVICE_HOST}, a port per route "
              f"({self.route_ports[0]}-{self.route_ports[-1]}), configured and reloaded by "
              f"mailfleet standalone")
        self.poll()

        self.step(f"The press release: {a.burst} recipients, spread at random over 8 senders "
                  f"(seed {a.seed}), then {a.steady_rate:g} a second; the timeline")
        self.t0 = time.time()
        self.say(f"block in force: Microsoft refuses {self.blocked} (a banned sending IP)",
                 kind="block_starts", ip=self.blocked)
        burst = self.loadgen.plan(a.burst, "burst")
        for msg in burst:
            self.by_recipient[msg.recipient] = msg
        share = sum(1 for m in burst if m.provider == "microsoft") / max(1, len(burst))
        submit = asyncio.get_running_loop().run_in_executor(None, self.loadgen.submit, burst)
        await self.watch_until(lambda: submit.done(), 600, "the burst to be submitted")
        submit.result()
        if self.loadgen.errors:
            raise LabError("the load generator could not submit: " + "; ".join(self.loadgen.errors[:3]))
        self.say(f"burst submitted: {len(burst)} messages ({share:.0%} to Microsoft), "
                 f"{sum(1 for m in burst if m.sender == self.blocked)} of them to {self.blocked}",
                 kind="burst_submitted")
        trickle = threading.Thread(target=self.run_trickle, daemon=True)
        trickle.start()
        self.sup.on_stop(self.stop_load.set)

        await self.watch_until(lambda: "blocked" in self.milestones, 90,
                               f"mailfleet to mark ({self.blocked}, microsoft) Blocked")

        def all_applied():
            speed = self.measure_speed()
            return bool(speed) and all(s["applied_s"] is not None for s in speed.values())
        await self.watch_until(all_applied, 30, "every changed sender to apply its new configuration")
        speed = self.measure_speed()
        rewritten = max(s["written_s"] for s in speed.values())
        applied = max(s["applied_s"] for s in speed.values())
        self.milestones["rewrite_s"] = rewritten
        self.milestones["apply_s"] = applied
        self.milestones["applied_blocked"] = (
            self.milestones["first_conclusive"] + speed[self.blocked]["applied_s"]
            if self.blocked in speed else self.milestones["first_conclusive"] + applied)
        self.say(f"mailfleet rewrote the routes and the configuration of every changed sender "
                 f"({len(speed)}) {rewritten:.2f} s after the first conclusive reply (target < 2 s); "
                 f"their Postfix had it applied (postmap, reload, flush) after {applied:.2f} s",
                 kind="speed")
        self.speed = speed

        delist_at = self.milestones["first_conclusive"] + a.delist_after
        await self.watch_until(lambda: time.time() >= delist_at, a.delist_after + 5, "delisting")
        os.kill(self.receiver.popen.pid, signal.SIGUSR1)
        self.write_zone(listed=False)
        self.milestones["delisted"] = time.time()
        self.say(f"delisting: Microsoft accepts {self.blocked} again and the block list drops it "
                 f"(mailfleet is not told)", kind="delisted")
        await self.watch_until(lambda: "probing" in self.milestones, a.hold_down + 150,
                               "the hold-down to end (Probing)")
        await self.watch_until(lambda: "recovering" in self.milestones, 120,
                               "the probe's clean deliveries (Recovering)")
        await self.watch_until(lambda: "healthy" in self.milestones, a.recovery_time + 120,
                               "the recovery steps (Healthy)")

        self.step("Draining the queues")
        self.stop_load.set()
        trickle.join(timeout=10)
        try:
            await self.watch_until(self.drained, a.drain_timeout, "the queues to drain")
        except LabError:
            print(f"(queues not empty after {a.drain_timeout:.0f} s: the tally counts what waits)")
        self.poll()
        self.t_end = time.time()

    def run_trickle(self):
        self.loadgen.trickle(self.args.steady_rate, self.stop_load)

    def drained(self):
        delivered = {a["recipient"] for a in self.answers if a.get("stage") == "data"}
        pending = [m for m in self.loadgen.submitted() if m.recipient not in delivered]
        return not pending

    # ---------- results ----------

    def account(self, rounds=5, pause=0.5):
        """Where every submitted message is: delivered (the receiver's record),
        bounced (a sender's log) or queued (`postqueue -j` of every sender).

        Mail keeps moving while this reads: a message can leave a queue for the
        receiver, or for another sender through the route Service, between two
        reads. The queues are read first and the receiver's record and the logs
        after them: the receiver records a message before it answers 250 and a
        sender removes it from its queue only after that answer, so a message
        that left a queue after it was read is in the record read later. Only a
        hand-off from a sender not yet read to one already read escapes one
        round; another round finds it. A message missing from every round is lost.
        """
        submitted = self.loadgen.submitted()
        for round_ in range(rounds):
            queued = set()
            for inst in self.instances:
                for rcpt, _ in inst.queued_recipients():
                    queued.add(rcpt)
            self.poll()
            delivered = {}
            for a in self.answers:
                if a.get("stage") == "data":
                    delivered.setdefault(a["recipient"], a["client_ip"])
            bounced = set()
            for inst in self.instances:
                for rcpt, status, _ in inst.final_statuses():
                    if status in ("bounced", "expired"):
                        bounced.add(rcpt)
            missing = [m for m in submitted if m.recipient not in delivered
                       and m.recipient not in bounced and m.recipient not in queued]
            if not missing:
                break
            if round_ + 1 < rounds:
                time.sleep(pause)
        return submitted, delivered, bounced, queued

    def results(self):
        for m in self.loadgen.messages:
            self.by_recipient.setdefault(m.recipient, m)
        submitted, delivered, bounced, queued = self.account()
        rows = report.tally(submitted, delivered, bounced, queued)
        m = self.milestones
        after_rewrite = m["applied_blocked"] + self.args.grace
        until = m.get("probing", time.time())
        ms_from_blocked = [a for a in self.answers
                           if a.get("client_ip") == self.blocked and a.get("provider") == "microsoft"
                           and after_rewrite <= a["at"] < until]
        ms_accepted = [a for a in ms_from_blocked if a.get("stage") == "data"]
        others_through_blocked = [a for a in self.answers
                                  if a.get("client_ip") == self.blocked and a.get("stage") == "data"
                                  and a.get("provider") != "microsoft"
                                  and after_rewrite <= a["at"] < until]
        rerouted = sum(1 for r, ip in delivered.items()
                       if ip != self.blocked and r in self.by_recipient
                       and self.by_recipient[r].sender == self.blocked
                       and self.by_recipient[r].provider == "microsoft")
        handed = self.handoffs()
        ms_routes = {f"{r['namespace']}/{r['name']}" for r in self.lab_routes
                     if r.get("provider") == "microsoft"}
        handed_away = sum(n for (f, r, t), n in handed.items()
                          if f == self.blocked and r in ms_routes and t not in (None, self.blocked))
        handed_back = sum(n for (f, r, t), n in handed.items()
                          if r in ms_routes and t == self.blocked)
        order = [m.get(k) for k in ("blocked", "delisted", "probing", "recovering", "healthy")]
        checks = {
            "zero_bounced": {"ok": rows["total"]["bounced"] == 0,
                             "detail": f"{rows['total']['bounced']} bounced"},
            "every_message_delivered_or_queued": {
                "ok": rows["total"]["unaccounted"] == 0,
                "detail": f"{rows['total']['unaccounted']} neither delivered, bounced nor queued"},
            "no_microsoft_from_blocked_ip_after_rewrite": {
                "ok": not ms_accepted,
                "detail": f"{len(ms_accepted)} accepted, {len(ms_from_blocked)} attempted from "
                          f"{self.blocked} between the rewrite (+{self.args.grace} s) and Probing"},
            "other_providers_flow_through_blocked_ip": {
                "ok": len(others_through_blocked) > 0,
                "detail": f"{len(others_through_blocked)} non-Microsoft messages accepted from "
                          f"{self.blocked} while it was blocked for Microsoft"},
            "deferred_microsoft_mail_rerouted": {
                "ok": rerouted > 0,
                "detail": f"{rerouted} Microsoft messages submitted to {self.blocked} delivered "
                          f"through other IPs"},
            "handed_off_through_haproxy": {
                "ok": handed_away > 0,
                "detail": f"{handed_away} connections from {self.blocked} on its Microsoft routes "
                          f"went through HAProxy to healthy senders ({handed_back} to "
                          f"{self.blocked} itself)"},
            "recovered_without_manual_step": {
                "ok": all(order) and order == sorted(order),
                "detail": "Blocked, delisting, Probing, Recovering, Healthy in order" + (
                    "" if all(order) and order == sorted(order) else ": " + ", ".join(
                        f"{k} {'never' if t is None else f'at +{t - self.t0:.1f} s'}"
                        for k, t in zip(("Blocked", "delisting", "Probing", "Recovering",
                                         "Healthy"), order))
                    + ("" if "dnsbl_seen" in m else
                       "; no block-list round saw the listing before it was lifted"))},
        }
        return rows, checks, rerouted

    def speed_summary(self):
        m = self.milestones
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        return (f"  first conclusive reply -> mailfleet's new configuration written for every "
                f"changed sender: {m['rewrite_s']:.3f} s (target < 2 s: "
                f"{'met' if m['rewrite_s'] < 2.0 else 'missed'})\n"
                f"  first conclusive reply -> applied by their Postfix (postmap, reload, flush): "
                f"{m['apply_s']:.3f} s\n"
                f"  load average {load} on {os.cpu_count()} CPUs (docs/BENCHMARKS.md, "
                f"\"Block to rewrite in the live lab\")")

    def write_report(self, rows, checks, rerouted):
        m = self.milestones
        rel = {k: round(v - self.t0, 3) for k, v in m.items()
               if isinstance(v, float) and v > 1e9}
        doc = {
            "schema": "mailfleet.io/lab-report/v1",
            "seed": self.args.seed,
            "senders": SENDERS,
            "blocked_ip": self.blocked,
            "started_at": iso(self.t0),
            "duration_s": round(self.t_end - self.t0, 3),
            "burst": self.args.burst,
            "steady_rate_per_s": self.args.steady_rate,
            "speed": {
                "first_conclusive_to_rewritten_everywhere_s": round(m["rewrite_s"], 3),
                "rewrite_target_met": m["rewrite_s"] < 2.0,
                "first_conclusive_to_applied_everywhere_s": round(m["apply_s"], 3),
                "target_s": 2.0,
                "load_average": list(os.getloadavg()),
                "per_sender": self.speed,
            },
            "milestones_s": rel,
            "timeline": self.timeline,
            "tally": rows,
            "rerouted_microsoft_messages": rerouted,
            "handoffs": [
                {"from": f, "route": r, "to": t, "count": n}
                for (f, r, t), n in sorted(self.handoffs().items(), key=str)],
            "checks": checks,
        }
        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, "report.json")
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(path + ".tmp", path)
        marks = [(m[k], label) for k, label in (
            ("blocked", "Blocked"), ("delisted", "delisted"), ("probing", "Probing"),
            ("recovering", "Recovering"), ("healthy", "Healthy")) if k in m]
        picture = report.svg(self.answers, SENDERS, self.blocked, self.t0, self.t_end, marks)
        with open(os.path.join(self.out, "delivery.svg"), "w") as f:
            f.write(picture)
        return path

    async def teardown(self):
        self.stop_load.set()
        self.sup.stop_all()
        if not self.started:
            return []
        tcp, _ = self.ports()
        left = listening_on(tcp)
        if left:
            print("lab: still listening after the stop: " + ", ".join(left), flush=True)
        return left


async def main_async(args):
    lab = Lab(args)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    status = 2
    try:
        await lab.run()
        rows, checks, rerouted = lab.results()
        path = lab.write_report(rows, checks, rerouted)
        lab.step("Tally per provider (every submitted message)")
        print(report.format_tally(rows))
        lab.step("The hand-off through HAProxy (connections, from its log)")
        print(lab.handoff_summary())
        lab.step("Checks")
        for name, c in checks.items():
            print(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['detail']}")
        lab.step("Speed (measured, not a check: it follows the machine's load)")
        print(lab.speed_summary())
        print(f"\nreport: {path}\npicture: {os.path.join(lab.out, 'delivery.svg')}")
        status = 0 if all(c["ok"] for c in checks.values()) else 1
    except LabError as e:
        print(f"\nlab: {e}", file=sys.stderr, flush=True)
        status = 2
    except asyncio.CancelledError:
        print("\nlab: interrupted; stopping everything it started", file=sys.stderr, flush=True)
        status = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        left = await lab.teardown()
        if left and status == 0:
            status = 1
    return status


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mailfleet", default=os.path.join(REPO, "target", "debug", "mailfleet"))
    p.add_argument("--python", default=sys.executable, help="the Python that runs the receiver")
    p.add_argument("--rbldnsd", default="/usr/sbin/rbldnsd")
    p.add_argument("--manifests", default=os.path.join(REPO, "lab", "manifests"))
    p.add_argument("--work", default=os.path.join(REPO, "target", "lab"),
                   help="Postfix folders, queues, logs, standalone's output")
    p.add_argument("--out", default=os.path.join(REPO, "target", "demo"),
                   help="where report.json and delivery.svg go")
    p.add_argument("--burst", type=int, default=2400, help="recipients of the press release")
    p.add_argument("--steady-rate", type=float, default=6.0,
                   help="messages per second submitted after the burst, until the IP is Healthy")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--blocked-ip", default="127.0.0.14", choices=SENDERS)
    p.add_argument("--delist-after", type=float, default=40.0,
                   help="seconds from the first conclusive reply to the provider's delisting")
    p.add_argument("--hold-down", type=float, default=30.0, help="the manifests' holdDownSeconds")
    p.add_argument("--recovery-time", type=float, default=20.0,
                   help="the manifests' recovery steps x stepSeconds")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds to wait for the queues to empty at the end")
    p.add_argument("--grace", type=float, default=1.0,
                   help="seconds after the blocked sender applied its new configuration during "
                        "which deliveries already under way may still reach Microsoft")
    p.add_argument("--tick-ms", type=int, default=200)
    p.add_argument("--receiver-port", type=int, default=2525)
    p.add_argument("--http-port", type=int, default=18080)
    p.add_argument("--dns-port", type=int, default=15353)
    return p.parse_args(argv)


def main():
    args = parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
