#!/usr/bin/env python3
"""Writes a `postqueue -j` listing of N queued messages (one JSON object per
line, as Postfix >= 3.1 prints it) to stdout, for bench/queue_listing.sh.
Recipients are spread over the providers of the bench's transport map; one
message in 50 has 20 recipients, the rest one to three. Seeded: the same N
gives the same listing."""
import json
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
rng = random.Random(11)
domains = ["gmail.com", "googlemail.com", "hotmail.com", "outlook.com", "live.com",
           "yahoo.com", "aol.com", "orange.fr", "wanadoo.fr", "icloud.com",
           "mail.example.org", "corp.example.net"]
now = 1_765_000_000
out = sys.stdout
for i in range(n):
    count = 20 if i % 50 == 0 else rng.randint(1, 3)
    recipients = []
    for r in range(count):
        rcpt = {"address": f"user{i}-{r}@{rng.choice(domains)}"}
        if i % 3:
            rcpt["delay_reason"] = "host mx.example[192.0.2.1] said: 451 4.7.650 The mail server has been temporarily rate limited due to IP reputation"
        recipients.append(rcpt)
    message = {
        "queue_name": "deferred" if i % 3 else "active",
        "queue_id": f"4Q{i:09X}",
        "arrival_time": now - rng.randint(0, 10 * 86_400),
        "message_size": rng.randint(2_000, 60_000),
        "forced_expire": False,
        "sender": f"news{i % 7}@sender.example",
        "recipients": recipients,
    }
    out.write(json.dumps(message) + "\n")
