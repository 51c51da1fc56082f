"""Processes the lab starts, and the ports it needs.

Every child runs in a process group of its own, so stopping it also stops
whatever it spawned; `Supervisor.stop_all` runs on success, failure and Ctrl-C
(the runner calls it from `finally` and from its signal handlers). Postfix is
the exception: `postfix start` daemonises its master, which is stopped with
`postfix stop` (see postfix.py).
"""

import ctypes
import errno
import os
import signal
import socket
import subprocess
import time


PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGTERM when the lab dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class LabError(Exception):
    """A failure the lab explains to the person running it (no traceback)."""


def port_problems(tcp, udp):
    """Which of the (host, port, what) endpoints are taken, as sentences."""
    problems = []
    for kind, endpoints in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        for host, port, what in endpoints:
            s = socket.socket(socket.AF_INET, kind)
            try:
                if kind == socket.SOCK_STREAM:
                    # A socket in TIME_WAIT is no obstacle for a server; a listener is.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
            except OSError as e:
                proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
                why = "in use" if e.errno == errno.EADDRINUSE else e.strerror
                problems.append(f"{proto} {host}:{port} ({what}) is {why}")
            finally:
                s.close()
    return problems


def listening_on(tcp):
    """Which of the (host, port, what) TCP endpoints something still listens on."""
    left = []
    for host, port, what in tcp:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.2)
        try:
            if s.connect_ex((host, port)) == 0:
                left.append(f"{host}:{port} ({what})")
        finally:
            s.close()
    return left


class Child:
    def __init__(self, name, popen, log_path):
        self.name = name
        self.popen = popen
        self.log_path = log_path

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """Starts children in their own process groups and stops them all.

    Each child's pid and command line go to `pid_file`, so a run killed with
    SIGKILL (which no handler sees) leaves a record the next run reaps with
    `stop_leftovers` (the children also get SIGTERM when the lab dies, unless
    they changed user, as rbldnsd does)."""

    def __init__(self, log_dir, pid_file):
        self.log_dir = log_dir
        self.pid_file = pid_file
        self.children = []
        self.cleanups = []

    def stop_leftovers(self):
        """Stops the processes an earlier run recorded that still run the same command."""
        try:
            with open(self.pid_file, encoding="utf-8") as f:
                records = [line.rstrip("\n").split("\t", 1) for line in f if "\t" in line]
        except OSError:
            return []
        stopped = []
        for pid_text, cmdline in records:
            pid = int(pid_text)
            if _cmdline(pid) != cmdline:
                continue  # gone, or the pid now belongs to someone else
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _cmdline(pid) == cmdline:
                time.sleep(0.05)
            if _cmdline(pid) == cmdline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stopped.append(cmdline.replace("\0", " ")[:80])
        os.remove(self.pid_file)
        return stopped

    def start(self, name, argv, **kwargs):
        log_path = os.path.join(self.log_dir, f"{name}.log")
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **kwargs,
            )
        except OSError as e:
            raise LabError(f"cannot start {name} ({argv[0]}): {e}") from e
        finally:
            log.close()
        child = Child(name, popen, log_path)
        self.children.append(child)
        with open(self.pid_file, "a", encoding="utf-8") as f:
            f.write(f"{popen.pid}\t{_cmdline(popen.pid) or ''}\n")
        return child

    def on_stop(self, fn):
        """Runs fn() when everything stops (before the children are signalled)."""
        self.cleanups.append(fn)

    def check_alive(self):
        for child in self.children:
            if not child.alive():
                raise LabError(
                    f"{child.name} exited with status {child.popen.returncode}; "
                    f"the end of {child.log_path}:\n{child.log_tail()}"
                )

    def stop_all(self, grace=5.0):
        while self.cleanups:
            fn = self.cleanups.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup goes on whatever fails
                print(f"lab: cleanup step failed: {e}", flush=True)
        for child in self.children:
            if child.alive():
                try:
                    os.killpg(child.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for child in self.children:
            left = max(0.0, deadline - time.monotonic())
            try:
                child.popen.wait(timeout=left)
            except subprocess.TimeoutExpired:
                pass
            # The group may hold grandchildren even when the leader is gone.
            try:
                os.killpg(child.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                child.popen.wait(timeout=2)
            except subprocess.TimeoutExpired:
                print(f"lab: {child.name} (pid {child.popen.pid}) did not stop", flush=True)
        self.children = []
        try:
            os.remove(self.pid_file)
        except OSError:
            pass


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None
