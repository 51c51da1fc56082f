"""The lab's hand-off between senders: Debian's HAProxy, as on a VM fleet.

A sender that may not send a route's mail hands it to the route's hand-off
address. `mailfleet standalone --haproxy-config` renders HAProxy's whole
configuration from the route table (one listener per route on
ROUTE_SERVICE_HOST, ports from FIRST_PORT in namespace/name order, servers
the route's senders that carry mail) and runs the reload command below when
a route's senders change. The lab starts HAProxy in master-worker mode; the
reload checks the new file with `haproxy -c` and signals the master, which
starts a worker on the new file and lets the old one finish its sessions.

HAProxy logs one line per hand-off on its standard error (the lab's log of
it): `handoffs` counts them by handing sender, route and receiving sender.
"""

import re

HAPROXY = "/usr/sbin/haproxy"
FIRST_PORT = 10025
LOG_TARGET = "stderr format raw local0"


def reload_command(pid_file):
    """The shell command standalone runs after writing a new configuration.
    Before the lab started HAProxy there is no pid file: the check alone."""
    return (f'{HAPROXY} -c -f "$MAILFLEET_HAPROXY_CONFIG" && '
            f'if [ -s {pid_file} ]; then kill -USR2 "$(cat {pid_file})"; fi')


def argv(config, pid_file):
    """HAProxy in the foreground (-db) as a master with one worker (-W)."""
    return [HAPROXY, "-W", "-db", "-f", config, "-p", pid_file]


# `option tcplog`: client:port [date] frontend backend/server Tw/Tc/Tt bytes ...
_TCPLOG = re.compile(
    r"^(?P<client>[0-9.]+):\d+ \[[^\]]*\] (?P<frontend>mf-route\.\S+) "
    r"(?P<backend>\S+)/(?P<server>\S+) ")


def handoffs(log_path):
    """{(from ip, route ns/name, to ip): connections} from HAProxy's log;
    a connection no sender took (no server, `<NOSRV>`) counts under to=None."""
    counts = {}
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return counts
    for line in lines:
        m = _TCPLOG.match(line.strip())
        if not m:
            continue
        _, namespace, name = m["frontend"].split(".", 2)
        server = m["server"]
        to = None if server == "<NOSRV>" else server_ip(server)
        key = (m["client"], f"{namespace}/{name}", to)
        counts[key] = counts.get(key, 0) + 1
    return counts


def server_ip(name):
    """127.0.0.11 from the server name mf-127-0-0-11 (IPv4: the lab's senders)."""
    return name.removeprefix("mf-").replace("-", ".")


def ports(routes):
    """The hand-off port of each of `routes` routes, in namespace/name order."""
    return list(range(FIRST_PORT, FIRST_PORT + routes))
