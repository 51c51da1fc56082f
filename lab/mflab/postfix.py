"""One private Postfix per source IP, run from its own folder.

`WORK/postfix/<slug>/` holds `etc/` (main.cf, master.cf: the base below; the
agent adds mailfleet's fragments and maps), `spool/` (the queue), `data/` and
`maillog`. Each instance accepts mail with smtpd on `IP:25` (the load generator
submits there; the route Service hands rerouted mail there) and sends from
`IP` only. It needs root (queue ownership, `postfix -c`).
"""

import json
import os
import pty
import shutil
import subprocess
import time

from .procs import LabError

BIN_DIR = "/usr/sbin"
POSTFIX = f"{BIN_DIR}/postfix"

MASTER_CF = """\
# Lab sender: the services of a stock master.cf, smtpd on the sender's own IP.
{ip}:smtp inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def slug(ip):
    """The folder name of an IP: routing::postfix::ip_slug."""
    return "mf-" + ip.replace(".", "-").replace(":", "-")


class Instance:
    def __init__(self, work, ip, index):
        self.ip = ip
        self.slug = slug(ip)
        self.root = os.path.join(work, "postfix", self.slug)
        self.etc = os.path.join(self.root, "etc")
        self.maillog = os.path.join(self.root, "maillog")
        self.hostname = f"s{index}.senders.lab.mailfleet.test"

    def main_cf(self):
        return f"""\
# Lab sender {self.ip}: a private instance; mailfleet's block is added by the agent.
compatibility_level = 3.6
queue_directory = {self.root}/spool
data_directory = {self.root}/data
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
myhostname = {self.hostname}
mydomain = lab.mailfleet.test
mydestination =
alias_maps =
alias_database =
# Postfix only listens on addresses an interface carries (127.0.0.1 here);
# smtpd is bound to {self.ip} in master.cf instead.
inet_interfaces = loopback-only
inet_protocols = ipv4
# mynetworks and the relay restrictions come with the rendered fragment (the
# pool's intake): set here too, every daemon would warn of the override at each
# start, and with maillog_file those warnings can fill postlogd's own socket.
# Every connection leaves from this sender's IP, as from a pod bound to it.
smtp_bind_address = {self.ip}
smtp_host_lookup = native
disable_dns_lookups = yes
smtp_connection_cache_on_demand = no
# Lab time: deferred mail is retried within seconds, not minutes.
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
"""

    def prepare(self):
        """A fresh instance folder (an earlier run's is stopped and removed)."""
        self.stop_quietly()
        shutil.rmtree(self.root, ignore_errors=True)
        for sub in ("etc", "spool", "data"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        shutil.chown(os.path.join(self.root, "data"), user="postfix")
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(self.main_cf())
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(ip=self.ip))

    def start(self):
        status, output = run_on_terminal([POSTFIX, "-c", self.etc, "start"])
        if status != 0:
            raise LabError(
                f"Postfix for {self.ip} did not start (postfix -c {self.etc} start):\n"
                f"{output.strip()}\n--- end of {self.maillog} ---\n{self.log_tail()}"
            )

    def running(self):
        return os.path.exists(os.path.join(self.root, "spool", "pid", "master.pid")) and (
            subprocess.run(
                [POSTFIX, "-c", self.etc, "status"], capture_output=True
            ).returncode
            == 0
        )

    def master_pid(self):
        try:
            with open(os.path.join(self.root, "spool", "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop_quietly(self):
        """Stops the instance if it runs (also one left over by an earlier run)."""
        if not os.path.exists(os.path.join(self.etc, "main.cf")):
            return
        pid = self.master_pid()
        subprocess.run([POSTFIX, "-c", self.etc, "stop"], capture_output=True)
        if pid is None:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            subprocess.run([POSTFIX, "-c", self.etc, "abort"], capture_output=True)
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def log_tail(self, lines=25):
        try:
            with open(self.maillog, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def queued_recipients(self):
        """Recipients still in this instance's queue (`postqueue -j`)."""
        out = subprocess.run(
            [f"{BIN_DIR}/postqueue", "-c", self.etc, "-j"], capture_output=True, text=True
        )
        recipients = []
        for line in out.stdout.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            for r in entry.get("recipients", []):
                recipients.append((r.get("address", ""), entry.get("queue_name", "")))
        return recipients

    def final_statuses(self):
        """(recipient, status) of every delivery line of the log."""
        out = []
        try:
            with open(self.maillog, encoding="utf-8", errors="replace") as f:
                for line in f:
                    i = line.find(" to=<")
                    j = line.find(", status=")
                    if i < 0 or j < 0:
                        continue
                    rcpt = line[i + 5 : line.find(">", i)]
                    status = line[j + 9 :].split(" ", 1)[0]
                    relay = ""
                    k = line.find("relay=")
                    if k >= 0:
                        relay = line[k + 6 :].split(",", 1)[0]
                    out.append((rcpt, status, relay))
        except OSError:
            pass
        return out


def run_on_terminal(argv):
    """Runs argv with a pseudo-terminal as stdout and stderr: Postfix commands
    print their fatal errors only to a terminal (else to the log service,
    which is not running when `postfix start` fails)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower,
                                stderr=follower, close_fds=True)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
