#!/usr/bin/env python3
"""Writes a realistic Postfix log for the agent replay benchmark: per message
the pickup, cleanup, qmgr, delivery and removal lines Postfix writes, over the
incident's providers (Microsoft consumer and Microsoft 365 tenants, Gmail,
Yahoo, others), with the replies they give a blocked or throttled IP.
Deterministic (fixed seed), so every run measures the same file.

    python3 bench/gen_postfix_log.py --lines 1000000 --out target/bench/maillog
"""

import argparse
import random

SOURCE_IP = "203.0.113.10"

# (weight, recipient domain, relay host, relay address)
DESTINATIONS = [
    (18, "hotmail.com", "hotmail-com.olc.protection.outlook.com", "104.47.22.161"),
    (6, "outlook.jp", "outlook-jp.olc.protection.outlook.com", "104.47.93.33"),
    (5, "hotmail.co.jp", "hotmail-co-jp.olc.protection.outlook.com", "52.101.1.7"),
    (4, "acclaim.jp", "acclaim-jp.mail.protection.outlook.com", "52.101.68.12"),
    (30, "gmail.com", "gmail-smtp-in.l.google.com", "142.250.157.26"),
    (12, "yahoo.com", "mta5.am0.yahoodns.net", "67.195.204.72"),
    (8, "yahoo.co.jp", "mx1.mail.yahoo.co.jp", "183.79.57.119"),
    (4, "icloud.com", "mx01.mail.icloud.com", "17.57.154.33"),
    (13, "example.co.jp", "mx.example.co.jp", "192.0.2.25"),
]

MS_BAN = ("deferred", "4.7.606", "550 5.7.606 Access denied, banned sending IP [{ip}]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430)", "RCPT TO")
MS_RATE = ("deferred", "4.7.650", "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)", "MAIL FROM")
GOOGLE_RATE = ("deferred", "4.7.0", "421-4.7.0 [{ip}      15] Our system has detected an unusual rate of 421-4.7.0 unsolicited mail originating from your IP address. To protect our 421-4.7.0 users from spam, mail sent from your IP address has been temporarily 421 4.7.0 rate limited. x12si1234567pjq.123 - gsmtp", "RCPT TO")
YAHOO_TSS04 = ("deferred", "4.7.0", "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", "MAIL FROM")
UNKNOWN = ("bounced", "5.1.1", "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table", "RCPT TO")
FULL = ("bounced", "5.2.2", "552 5.2.2 <{rcpt}>: Mailbox full", "RCPT TO")
GREY = ("deferred", "4.7.1", "451 4.7.1 Greylisted, please try again later", "RCPT TO")


def failure_for(rng, domain):
    """A failure reply for this destination, or None for a delivery."""
    r = rng.random()
    if domain in ("hotmail.com", "outlook.jp", "hotmail.co.jp", "acclaim.jp"):
        if r < 0.10:
            return MS_BAN
        if r < 0.13:
            return MS_RATE
    elif domain == "gmail.com" and r < 0.02:
        return GOOGLE_RATE
    elif domain == "yahoo.com" and r < 0.05:
        return YAHOO_TSS04
    r = rng.random()
    if r < 0.03:
        return UNKNOWN
    if r < 0.035:
        return FULL
    if r < 0.045:
        return GREY
    return None


def stamp(second):
    day = 5 + second // 86400
    s = second % 86400
    return f"Nov {day:2d} {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=2021)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    weights = [d[0] for d in DESTINATIONS]
    host = "mx1"
    written = 0
    message = 0
    second = 8 * 3600
    with open(args.out, "w", buffering=1 << 20) as out:
        def emit(text):
            nonlocal written
            if written >= args.lines:
                return
            out.write(text)
            out.write("\n")
            written += 1

        while written < args.lines:
            message += 1
            if message % 7 == 0:
                second += 1
            when = stamp(second)
            qid = f"4T{message:011X}"
            _, domain, relay, addr = rng.choices(DESTINATIONS, weights)[0]
            rcpt = f"user{rng.randrange(1_000_000)}@{domain}"
            sender = "news@press.example.co.jp"
            pid = 1000 + message % 50
            emit(f"{when} {host} postfix/pickup[900]: {qid}: uid=1000 from=<{sender}>")
            emit(f"{when} {host} postfix/cleanup[{pid}]: {qid}: message-id=<{message}.{qid}@press.example.co.jp>")
            size = 2000 + rng.randrange(30000)
            emit(f"{when} {host} postfix/qmgr[901]: {qid}: from=<{sender}>, size={size}, nrcpt=1 (queue active)")
            failure = failure_for(rng, domain)
            delay = rng.randrange(1, 300) / 100
            delays = f"0.01/0/{delay / 2:.2f}/{delay / 2:.2f}"
            if failure is None:
                emit(f"{when} {host} postfix/smtp[{pid}]: {qid}: to=<{rcpt}>, relay={relay}[{addr}]:25, delay={delay}, delays={delays}, dsn=2.0.0, status=sent (250 2.0.0 OK 1636099801 {qid} - queued)")
                emit(f"{when} {host} postfix/qmgr[901]: {qid}: removed")
                continue
            status, dsn, reply, command = failure
            text = reply.format(ip=SOURCE_IP, rcpt=rcpt)
            emit(f"{when} {host} postfix/smtp[{pid}]: {qid}: to=<{rcpt}>, relay={relay}[{addr}]:25, delay={delay}, delays={delays}, dsn={dsn}, status={status} (host {relay}[{addr}] said: {text} (in reply to {command} command))")
            if status == "bounced":
                emit(f"{when} {host} postfix/bounce[{pid}]: {qid}: sender non-delivery notification: B{qid}")
                emit(f"{when} {host} postfix/qmgr[901]: {qid}: removed")


if __name__ == "__main__":
    main()
