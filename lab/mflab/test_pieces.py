"""Unit tests of the lab's pieces that need neither root nor Postfix:
python3 -m unittest discover -s lab -p 'test_*.py' (tests/lab_incident.rs runs it)."""

import os
import socket
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mflab import loadgen, report  # noqa: E402
from mflab.postfix import Instance, slug  # noqa: E402
from mflab.procs import port_problems  # noqa: E402
from mflab import handoff  # noqa: E402

SENDERS = [f"127.0.0.{n}" for n in range(11, 19)]


class LoadGeneratorTest(unittest.TestCase):
    def test_a_seed_gives_the_same_press_release(self):
        a = loadgen.LoadGenerator(SENDERS, 7).plan(500, "burst")
        b = loadgen.LoadGenerator(SENDERS, 7).plan(500, "burst")
        c = loadgen.LoadGenerator(SENDERS, 8).plan(500, "burst")
        key = [(m.recipient, m.sender) for m in a]
        self.assertEqual(key, [(m.recipient, m.sender) for m in b])
        self.assertNotEqual(key, [(m.recipient, m.sender) for m in c])

    def test_the_mix_is_realistic_and_spread_over_every_sender(self):
        plan = loadgen.LoadGenerator(SENDERS, 2021).plan(4000, "burst")
        share = {p: sum(1 for m in plan if m.provider == p) / len(plan)
                 for p in ("microsoft", "google", "yahoo", "other")}
        self.assertTrue(0.18 < share["microsoft"] < 0.30, share)
        self.assertTrue(0.24 < share["google"] < 0.34, share)
        tenants = [m for m in plan if m.recipient.split("@")[1] in loadgen.TENANT_DOMAINS]
        self.assertTrue(all(m.provider == "microsoft" for m in tenants))
        self.assertGreater(len(tenants), 200)
        self.assertEqual({m.sender for m in plan}, set(SENDERS))
        self.assertEqual(len({m.recipient for m in plan}), len(plan), "recipients are unique")


class TallyTest(unittest.TestCase):
    def test_every_message_lands_in_exactly_one_column(self):
        gen = loadgen.LoadGenerator(SENDERS, 1)
        msgs = gen.plan(40, "burst")
        delivered = {m.recipient: "127.0.0.11" for m in msgs[:25]}
        bounced = {msgs[25].recipient}
        queued = {m.recipient for m in msgs[26:38]}
        rows = report.tally(msgs, delivered, bounced, queued)
        total = rows["total"]
        self.assertEqual(total, {"submitted": 40, "delivered": 25, "bounced": 1,
                                 "queued": 12, "unaccounted": 2})
        for provider in ("microsoft", "google", "yahoo", "other"):
            r = rows[provider]
            self.assertEqual(r["submitted"],
                             r["delivered"] + r["bounced"] + r["queued"] + r["unaccounted"])
        self.assertIn("2 unaccounted", report.format_tally(rows))


class SvgTest(unittest.TestCase):
    def test_one_row_per_sender_with_bars_and_marks(self):
        answers = [
            {"client_ip": "127.0.0.11", "stage": "data", "provider": "microsoft", "at": 101.0},
            {"client_ip": "127.0.0.14", "stage": "rcpt", "provider": "microsoft", "code": 550,
             "at": 100.5},
            {"client_ip": "127.0.0.14", "stage": "data", "provider": "google", "at": 103.0},
        ]
        svg = report.svg(answers, SENDERS, "127.0.0.14", 100.0, 110.0, [(102.0, "Blocked")])
        self.assertTrue(svg.startswith("<svg"))
        self.assertIn("127.0.0.14 (blocked)", svg)
        for ip in SENDERS:
            self.assertIn(f">{ip}", svg)
        self.assertIn(report.REFUSED, svg)  # the refusal
        self.assertIn(">Blocked<", svg)

    def test_milestone_labels_close_together_never_overlap(self):
        marks = [(100.0 + t, label) for t, label in
                 [(1, "Blocked"), (1.5, "delisted"), (2, "Probing"), (2.2, "Recovering"), (9, "Healthy")]]
        placed = report.label_lanes([(150 + t, label) for t, label in marks], 150, 1000)
        for a in placed:
            for b in placed:
                if a is not b and a[2] == b[2]:
                    a_end = a[1] + report.text_width(a[3])
                    b_end = b[1] + report.text_width(b[3])
                    self.assertTrue(a_end <= b[1] or b_end <= a[1], f"{a} overlaps {b}")
        self.assertGreater(max(lane for _, _, lane, _ in placed), 0)
        # a label at the right edge stays inside the picture
        [(_, text_x, _, label)] = report.label_lanes([(999, "Recovering")], 150, 1000)
        self.assertLessEqual(text_x + report.text_width(label), 1000)


class PortsTest(unittest.TestCase):
    def test_a_taken_port_is_named_and_a_free_one_is_not(self):
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        try:
            problems = port_problems([("127.0.0.1", port, "the receiver"),
                                      ("127.0.0.1", free_port, "standalone")], [])
        finally:
            held.close()
        self.assertEqual(problems, [f"TCP 127.0.0.1:{port} (the receiver) is in use"])


class HandoffTest(unittest.TestCase):
    def test_haproxy_log_lines_count_by_sender_route_and_receiving_sender(self):
        log = (
            "[NOTICE]   (1053) : New worker (1072) forked\n"
            "127.0.0.14:37548 [07/Dec/2026:20:08:08.117] mf-route.lab.microsoft "
            "mf-route.lab.microsoft/mf-127-0-0-11 1/0/5 486 -- 1/1/0/0/0 0/0\n"
            "127.0.0.14:37550 [07/Dec/2026:20:08:08.301] mf-route.lab.microsoft "
            "mf-route.lab.microsoft/mf-127-0-0-11 1/0/5 486 -- 1/1/0/0/0 0/0\n"
            "127.0.0.14:37552 [07/Dec/2026:20:08:08.302] mf-route.lab.microsoft-365 "
            "mf-route.lab.microsoft-365/mf-127-0-0-12 1/0/5 486 -- 1/1/0/0/0 0/0\n"
            "127.0.0.13:36440 [07/Dec/2026:20:08:08.143] mf-route.lab.default "
            "mf-route.lab.default/<NOSRV> -1/-1/0 0 SC 1/1/0/0/0 0/0\n"
            "127.0.0.14:1 [07/Dec/2026:20:08:08.143] half a li"
        )
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "haproxy.log")
            self.assertEqual(handoff.handoffs(path), {}, "no log yet")
            with open(path, "w") as f:
                f.write(log)
            self.assertEqual(handoff.handoffs(path), {
                ("127.0.0.14", "lab/microsoft", "127.0.0.11"): 2,
                ("127.0.0.14", "lab/microsoft-365", "127.0.0.12"): 1,
                ("127.0.0.13", "lab/default", None): 1,
            })

    def test_the_reload_checks_the_file_before_it_signals_haproxy(self):
        command = handoff.reload_command("/w/haproxy.pid")
        self.assertTrue(command.startswith(
            '/usr/sbin/haproxy -c -f "$MAILFLEET_HAPROXY_CONFIG" && '), command)
        self.assertIn('kill -USR2 "$(cat /w/haproxy.pid)"', command)
        self.assertEqual(handoff.ports(5), [10025, 10026, 10027, 10028, 10029])


class PostfixConfigTest(unittest.TestCase):
    def test_each_sender_listens_and_sends_on_its_own_address(self):
        inst = Instance("/tmp/lab-work", "127.0.0.13", 3)
        self.assertEqual(inst.slug, "mf-127-0-0-13")
        self.assertEqual(slug("2001:db8::1"), "mf-2001-db8--1")
        main_cf = inst.main_cf()
        self.assertIn("smtp_bind_address = 127.0.0.13\n", main_cf)
        self.assertIn("queue_directory = /tmp/lab-work/postfix/mf-127-0-0-13/spool\n", main_cf)
        self.assertIn("maillog_file = /tmp/lab-work/postfix/mf-127-0-0-13/maillog\n", main_cf)


if __name__ == "__main__":
    unittest.main()
