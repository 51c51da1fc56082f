"""The press release: recipients across providers, spread at random over the senders.

The shares follow a Japanese press-release distribution list: Gmail and Yahoo!
JAPAN first, Microsoft's consumer domains (hotmail.co.jp, outlook.jp ...) and
company domains hosted on Microsoft 365 (the incident's "tenant" domains)
together about a quarter, Yahoo Inc a little, the rest company domains on
their own servers. Everything is drawn from one seeded generator, so a seed
gives the same list and the same spread every time.
"""

import random
import smtplib
import threading
import time

# (domain, provider as the receiver and mailfleet see it, weight)
DOMAINS = [
    ("gmail.com", "google", 300),
    ("yahoo.co.jp", "other", 160),
    ("hotmail.co.jp", "microsoft", 45),
    ("outlook.jp", "microsoft", 35),
    ("outlook.com", "microsoft", 30),
    ("hotmail.com", "microsoft", 25),
    ("live.jp", "microsoft", 15),
    ("msn.com", "microsoft", 5),
    # Microsoft 365 tenants: only their MX hosts show who hosts them.
    ("acclaim.jp", "microsoft", 20),
    ("albirex2006.com", "microsoft", 15),
    ("hirabayashi.com", "microsoft", 15),
    ("infoseek.jp", "microsoft", 25),
    ("morishow.net", "microsoft", 10),
    ("taswork.com", "microsoft", 10),
    ("yahoo.com", "yahoo", 25),
    ("aol.com", "yahoo", 5),
    ("docomo.ne.jp", "other", 60),
    ("ezweb.ne.jp", "other", 40),
    ("nikkei-press.example.jp", "other", 80),
    ("newsroom.example.co.jp", "other", 125),
]

TENANT_DOMAINS = [
    "acclaim.jp",
    "albirex2006.com",
    "hirabayashi.com",
    "infoseek.jp",
    "morishow.net",
    "taswork.com",
]


def provider_of_domain():
    return {d: p for d, p, _ in DOMAINS}


class Message:
    __slots__ = ("id", "recipient", "provider", "sender", "submitted_at", "phase")

    def __init__(self, id_, recipient, provider, sender, phase):
        self.id = id_
        self.recipient = recipient
        self.provider = provider
        self.sender = sender
        self.submitted_at = None
        self.phase = phase


class LoadGenerator:
    def __init__(self, senders, seed):
        self.senders = list(senders)
        self.rng = random.Random(seed)
        self.messages = []
        self.lock = threading.Lock()
        self.errors = []
        self._domains = [d for d, _, _ in DOMAINS]
        self._weights = [w for _, _, w in DOMAINS]
        self._provider = provider_of_domain()

    def plan(self, count, phase):
        out = []
        for _ in range(count):
            n = len(self.messages) + 1
            domain = self.rng.choices(self._domains, self._weights)[0]
            m = Message(
                n,
                f"r{n:06d}@{domain}",
                self._provider[domain],
                self.rng.choice(self.senders),
                phase,
            )
            self.messages.append(m)
            out.append(m)
        return out

    def submit(self, messages, stop=None):
        """Submits each message to its sender's smtpd, one connection per sender."""
        by_sender = {}
        for m in messages:
            by_sender.setdefault(m.sender, []).append(m)
        threads = [
            threading.Thread(target=self._submit_to, args=(ip, batch, stop), daemon=True)
            for ip, batch in by_sender.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _submit_to(self, ip, batch, stop):
        try:
            with smtplib.SMTP(ip, 25, local_hostname="press.lab.mailfleet.test", timeout=30) as s:
                for m in batch:
                    if stop is not None and stop.is_set():
                        return
                    body = (
                        f"From: Press Room <press@lab.mailfleet.test>\r\n"
                        f"To: <{m.recipient}>\r\n"
                        f"Subject: Press release {m.id}: mailfleet keeps the news flowing\r\n"
                        f"X-Lab-Id: {m.id}\r\n"
                        f"\r\n"
                        f"For immediate release.\r\n"
                    )
                    # The null sender: a bounce would be counted from the log, never mailed.
                    s.sendmail("<>", [m.recipient], body)
                    m.submitted_at = time.time()
        except (OSError, smtplib.SMTPException) as e:
            with self.lock:
                self.errors.append(f"submitting to {ip}: {e}")

    def trickle(self, rate, stop):
        """Submits `rate` messages per second until `stop` is set (the steady
        flow that keeps feeding every route, the probed one too)."""
        period = 1.0 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            batch = self.plan(1, "steady")
            self.submit(batch)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)

    def submitted(self):
        return [m for m in self.messages if m.submitted_at is not None]
