"""The lab's results: the tally per provider, the checks, and the picture."""

from html import escape

PROVIDERS = ["microsoft", "google", "yahoo", "other"]


def tally(messages, delivered, bounced, queued):
    """Per provider: submitted, delivered, bounced, still queued, unaccounted.

    `delivered`: recipient -> client IP the receiver accepted it from;
    `bounced`: set of recipients some sender bounced; `queued`: set of
    recipients still in some queue.
    """
    rows = {p: {"submitted": 0, "delivered": 0, "bounced": 0, "queued": 0, "unaccounted": 0}
            for p in PROVIDERS}
    for m in messages:
        row = rows.setdefault(
            m.provider, {"submitted": 0, "delivered": 0, "bounced": 0, "queued": 0, "unaccounted": 0}
        )
        row["submitted"] += 1
        if m.recipient in delivered:
            row["delivered"] += 1
        elif m.recipient in bounced:
            row["bounced"] += 1
        elif m.recipient in queued:
            row["queued"] += 1
        else:
            row["unaccounted"] += 1
    total = {k: sum(r[k] for r in rows.values()) for k in
             ("submitted", "delivered", "bounced", "queued", "unaccounted")}
    rows["total"] = total
    return rows


def format_tally(rows):
    head = f"{'provider':<10} {'submitted':>9} {'delivered':>9} {'bounced':>7} {'queued':>6}"
    lines = [head]
    for name, r in rows.items():
        extra = f"  ({r['unaccounted']} unaccounted)" if r["unaccounted"] else ""
        lines.append(
            f"{name:<10} {r['submitted']:>9} {r['delivered']:>9} {r['bounced']:>7} {r['queued']:>6}{extra}"
        )
    return "\n".join(lines)


def svg(answers, senders, blocked_ip, t0, t_end, marks, bucket=2.0):
    """Delivery over time per source IP: one row per sender, bars of accepted
    messages per `bucket` seconds (Microsoft dark, others light) and refusals
    (red) below the axis; vertical lines at the timeline's milestones."""
    width, left, right, top = 1040, 150, 70, 50
    row_h, gap = 70, 14
    span = max(t_end - t0, bucket)
    n_buckets = int(span // bucket) + 1
    plot_w = width - left - right
    bar_w = plot_w / n_buckets
    counts = {ip: [[0, 0, 0] for _ in range(n_buckets)] for ip in senders}
    for a in answers:
        ip = a.get("client_ip")
        if ip not in counts or "at" not in a:
            continue
        i = int((a["at"] - t0) // bucket)
        if i < 0 or i >= n_buckets:
            continue
        if a.get("stage") == "data":
            counts[ip][i][0 if a.get("provider") == "microsoft" else 1] += 1
        elif a.get("code", 250) >= 400:
            counts[ip][i][2] += 1
    peak = max([c[0] + c[1] for rows in counts.values() for c in rows] + [1])
    peak_refused = max([c[2] for rows in counts.values() for c in rows] + [1])
    height = top + len(senders) * (row_h + gap) + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="15" font-weight="bold">Delivery over time per source IP '
        f'(messages accepted per {bucket:g} s)</text>',
        f'<text x="{left}" y="38" fill="#555"><tspan fill="#1f5fa8">■</tspan> Microsoft accepted '
        f'<tspan fill="#9bb7d4">■</tspan> other providers accepted '
        f'<tspan fill="#c0392b">■</tspan> refused (block replies, below the line); peak {peak}</text>',
    ]
    for r, ip in enumerate(senders):
        y0 = top + r * (row_h + gap)
        base = y0 + row_h * 0.75
        label = f"{ip} (blocked)" if ip == blocked_ip else ip
        weight = "bold" if ip == blocked_ip else "normal"
        out.append(f'<text x="8" y="{base:.1f}" font-weight="{weight}">{escape(label)}</text>')
        out.append(
            f'<line x1="{left}" y1="{base:.1f}" x2="{width - right}" y2="{base:.1f}" stroke="#888"/>'
        )
        for i, (ms, other, refused) in enumerate(counts[ip]):
            x = left + i * bar_w
            h_ms = ms / peak * row_h * 0.7
            h_other = other / peak * row_h * 0.7
            if other:
                out.append(f'<rect x="{x:.1f}" y="{base - h_other:.1f}" width="{bar_w:.1f}" '
                           f'height="{h_other:.1f}" fill="#9bb7d4"/>')
            if ms:
                out.append(f'<rect x="{x:.1f}" y="{base - h_other - h_ms:.1f}" width="{bar_w:.1f}" '
                           f'height="{h_ms:.1f}" fill="#1f5fa8"/>')
            if refused:
                h = refused / peak_refused * row_h * 0.22
                out.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" '
                           f'height="{h:.1f}" fill="#c0392b"/>')
    bottom = top + len(senders) * (row_h + gap)
    step = max(10, int(span / 12) // 10 * 10)
    for t in range(0, int(span) + 1, step):
        x = left + t / (n_buckets * bucket) * plot_w
        out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" fill="#555">{t}s</text>')
    for i, (t, label) in enumerate(marks):
        x = left + (t - t0) / (n_buckets * bucket) * plot_w
        if x < left or x > width - right:
            continue
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" '
                   f'stroke="#e67e22" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x + 3:.1f}" y="{bottom + 30 + (i % 2) * 14}" fill="#e67e22">'
                   f'{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
