#!/usr/bin/env python3
"""A scriptable SMTP receiver on 127.0.0.1 that answers like Microsoft, Gmail
and Yahoo do (the texts of /work/shared/REFERENCE.md, as those providers send
them), depending on the client IP and the recipient, and records every answer
it gives as one JSON line:

    {"client_ip": "127.0.0.7", "recipient": "a@hotmail.com", "provider": "microsoft",
     "stage": "rcpt", "kind": "ms_banned", "code": 550, "reply": "550 5.7.606 ...",
     "at": 1636099801.25}

("at" is the Unix time of the answer; a message accepted at DATA gets one line
per recipient with stage "data".)

The policy (--policy, JSON) says which answer each client gets per provider:

    {"domains": {"hotmail.com": "microsoft", "gmail.com": "google", ...},
     "clients": {"127.0.0.7": {"microsoft": "ms_banned", "yahoo": "yahoo_tss04"}},
     "local_parts": {"unknown": "unknown_user"}}

A recipient whose local part starts with a key of "local_parts" gets that
answer whatever the client; everything else is accepted (250). SIGUSR1 lifts
the "clients" answers (the providers delist every IP): from then on only
"local_parts" refuse. Run it with the
project's venv: target/venv/bin/python tests/lab/receiver.py --port-file F ...
It writes the port it listens on to --port-file once it accepts connections,
and stops on SIGTERM.
"""

import argparse
import asyncio
import json
import signal
import socket
import sys
import time

from aiosmtpd.controller import Controller

# Answers, keyed by kind. "{ip}" is the client's IP, "{rcpt}" the recipient.
# Multi-line replies are sent as the providers send them (CRLF-separated lines).
ANSWERS = {
    "ok": "250 2.1.5 Recipient OK",
    "ms_banned": (
        "550 5.7.606 Access denied, banned sending IP [{ip}]. To request removal from this list "
        "please visit https://sender.office.com/ and follow the directions. For more information "
        "please go to http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430) "
        "[DM6NAM12FT041.eop-nam12.prod.protection.outlook.com 2021-11-05T08:10:01.000Z 08D9A0D1A1B2C3D4]"
    ),
    "ms_s3140": (
        "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet "
        "service provider since part of their network is on our block list (S3140). You can also "
        "refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors. "
        "[AM0PR02MB5555.eurprd02.prod.outlook.com 2021-11-05T08:10:01.000Z 08D9A0D1A1B2C3D4]"
    ),
    "ms_rate_limited": (
        "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation. "
        "For e-mail delivery information, see https://postmaster.live.com (S775) "
        "[Name=Protocol Filter Agent][AGT=PFA][MxId=11BA3E1C9F8A2B3C] "
        "[DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com 2021-11-05T08:10:01.000Z 08D9A0D1A1B2C3D4]"
    ),
    "google_rate_limited": (
        "421-4.7.0 [{ip}      15] Our system has detected an unusual rate of\r\n"
        "421-4.7.0 unsolicited mail originating from your IP address. To protect our\r\n"
        "421-4.7.0 users from spam, mail sent from your IP address has been temporarily\r\n"
        "421-4.7.0 rate limited. Please visit\r\n"
        "421-4.7.0  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\r\n"
        "421 4.7.0 review our Bulk Email Senders Guidelines. x12si1234567pjq.123 - gsmtp"
    ),
    "google_low_reputation": (
        "550-5.7.1 [{ip}      12] Our system has detected that this message is\r\n"
        "550-5.7.1 likely suspicious due to the very low reputation of the sending IP\r\n"
        "550-5.7.1 address. To best protect our users from spam, the message has been\r\n"
        "550-5.7.1 blocked. Please visit\r\n"
        "550 5.7.1  https://support.google.com/mail/answer/188131 for more information. x12si1234567pjq.124 - gsmtp"
    ),
    "yahoo_tss04": (
        "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or "
        "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
    ),
    "yahoo_tss09": (
        "553 5.7.2 [TSS09] All messages from {ip} will be permanently deferred; Retrying will NOT "
        "succeed. See https://postmaster.yahooinc.com/error-codes"
    ),
    "unknown_user": (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
        "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
        "550-5.1.1 unnecessary spaces. Learn more at\r\n"
        "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser x12si1234567pjq.125 - gsmtp"
    ),
    "mailbox_full": "552 5.2.2 The email account that you tried to reach is over quota.",
    "greylisted": "451 4.7.1 Greylisted, please try again later",
}

DATA_OK = "250 2.0.0 OK 1636099801 x12si1234567pjq.126 - gsmtp"


class Receiver:
    def __init__(self, policy, record, data_latency=0.0):
        self.data_latency = data_latency
        self.domains = policy.get("domains", {})
        self.clients = policy.get("clients", {})
        self.local_parts = policy.get("local_parts", {})
        self.lifted = False
        self.record_file = open(record, "a", encoding="utf-8")

    def provider_of(self, recipient):
        domain = recipient.rsplit("@", 1)[-1].lower()
        return self.domains.get(domain, "other")

    def decide(self, client_ip, recipient):
        local = recipient.split("@", 1)[0].lower()
        for prefix, kind in self.local_parts.items():
            if local.startswith(prefix):
                return kind
        if self.lifted:
            return "ok"
        return self.clients.get(client_ip, {}).get(self.provider_of(recipient), "ok")

    def record(self, client_ip, recipient, stage, kind, reply):
        entry = {
            "client_ip": client_ip,
            "recipient": recipient,
            "provider": self.provider_of(recipient),
            "stage": stage,
            "kind": kind,
            "code": int(reply[:3]),
            "reply": reply,
            "at": round(time.time(), 3),
        }
        self.record_file.write(json.dumps(entry) + "\n")
        self.record_file.flush()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        client_ip = session.peer[0]
        kind = self.decide(client_ip, address)
        reply = ANSWERS[kind].format(ip=client_ip, rcpt=address)
        if kind == "ok":
            envelope.rcpt_tos.append(address)
            return reply
        self.record(client_ip, address, "rcpt", kind, reply)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.data_latency > 0:
            # A remote server's work before it answers (scanning, storing).
            await asyncio.sleep(self.data_latency)
        for recipient in envelope.rcpt_tos:
            self.record(session.peer[0], recipient, "data", "ok", DATA_OK)
        return DATA_OK


def free_port(host):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="JSON policy (see above)")
    parser.add_argument("--record", required=True, help="file to append one JSON line per answer to")
    parser.add_argument("--port-file", required=True, help="file to write the listening port to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--data-latency-ms", type=float, default=0.0,
                        help="wait this long before answering DATA, as a remote server does")
    args = parser.parse_args()

    policy = json.loads(args.policy)
    unknown = {k for c in policy.get("clients", {}).values() for k in c.values()} | set(policy.get("local_parts", {}).values())
    unknown -= set(ANSWERS)
    if unknown:
        sys.exit(f"unknown answer kinds {sorted(unknown)}; known: {sorted(ANSWERS)}")

    port = args.port or free_port(args.host)
    receiver = Receiver(policy, args.record, args.data_latency_ms / 1000.0)
    controller = Controller(receiver, hostname=args.host, port=port,
                            server_hostname="mx.lab.mailfleet.test")
    controller.start()
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)

    stop = asyncio.Event()

    async def wait():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def lift():
            receiver.lifted = True
            print(f"receiver: block lifted at {time.time():.3f}", file=sys.stderr, flush=True)

        loop.add_signal_handler(signal.SIGUSR1, lift)
        await stop.wait()

    asyncio.run(wait())
    controller.stop()


if __name__ == "__main__":
    main()
