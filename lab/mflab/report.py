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


# Okabe-Ito colours (safe for the common colour-vision deficiencies); each
# series is also told apart by its position (above / below the axis).
MICROSOFT = "#0072B2"
OTHERS = "#56B4E9"
REFUSED = "#D55E00"
MARK = "#000000"


def text_width(text, size=12):
    """A sans-serif text's width in px, close enough to keep labels apart."""
    return len(text) * size * 0.6


def label_lanes(items, min_x, max_x, gap=6):
    """Assigns each (x, label) a lane so that labels in one lane never overlap
    and stay inside [min_x, max_x]; returns [(x, text_x, lane, label)]."""
    lanes_end = []
    placed = []
    for x, label in sorted(items):
        w = text_width(label)
        text_x = min(max(x + 3, min_x), max_x - w)
        lane = next((n for n, end in enumerate(lanes_end) if end + gap <= text_x), len(lanes_end))
        if lane == len(lanes_end):
            lanes_end.append(0)
        lanes_end[lane] = text_x + w
        placed.append((x, text_x, lane, label))
    return placed


def nice_step(peak, ticks=2):
    """A round step (1, 2, 5 x 10^n) so that `ticks` steps reach at least `peak`."""
    raw = max(peak / ticks, 1)
    magnitude = 10 ** (len(str(int(raw))) - 1)
    for m in (1, 2, 5, 10):
        if m * magnitude >= raw:
            return m * magnitude
    return 10 * magnitude


def svg(answers, senders, blocked_ip, t0, t_end, marks, bucket=2.0):
    """Delivery over time per source IP: one row per sender, all rows on one
    scale (count axis on each row), bars of accepted messages per `bucket`
    seconds (Microsoft dark, others light) and refusals below the axis on
    their own scale; dashed lines at the timeline's milestones, their labels
    in lanes that never overlap."""
    width, left, right, top = 1040, 170, 40, 58
    row_h, gap = 70, 16
    above, below = 0.68, 0.22  # of row_h: accepted bars, refusal bars
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
    step = nice_step(peak)
    scale_top = step * max(1, -(-peak // step))
    bottom = top + len(senders) * (row_h + gap)
    x_of = lambda t: left + t / (n_buckets * bucket) * plot_w  # noqa: E731
    placed = label_lanes([(x_of(t - t0), label) for t, label in marks
                          if left <= x_of(t - t0) <= width - right], left, width - right)
    lanes = max([lane for _, _, lane, _ in placed] + [-1]) + 1
    height = bottom + 40 + lanes * 16 + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="15" font-weight="bold">Delivery over time per source IP '
        f'(messages per {bucket:g} s; every row on the same scale)</text>',
        f'<rect x="{left}" y="30" width="10" height="10" fill="{MICROSOFT}"/>'
        f'<text x="{left + 14}" y="39">Microsoft accepted</text>',
        f'<rect x="{left + 140}" y="30" width="10" height="10" fill="{OTHERS}"/>'
        f'<text x="{left + 154}" y="39">other providers accepted</text>',
        f'<rect x="{left + 320}" y="30" width="10" height="10" fill="{REFUSED}"/>'
        f'<text x="{left + 334}" y="39">refused (block replies), below the line, up to {peak_refused}</text>',
        f'<line x1="{left + 620}" y1="35" x2="{left + 640}" y2="35" stroke="{MARK}" stroke-dasharray="4 3"/>'
        f'<text x="{left + 644}" y="39">mailfleet milestone</text>',
    ]
    for r, ip in enumerate(senders):
        y0 = top + r * (row_h + gap)
        base = y0 + row_h * above + 4
        label = f"{ip} (blocked)" if ip == blocked_ip else ip
        weight = "bold" if ip == blocked_ip else "normal"
        out.append(f'<text x="8" y="{base:.1f}" font-weight="{weight}">{escape(label)}</text>')
        for value in range(0, scale_top + 1, step):
            y = base - value / scale_top * row_h * above
            out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#555"/>')
            out.append(f'<text x="{left - 7}" y="{y + 4:.1f}" text-anchor="end" fill="#555" '
                       f'font-size="10">{value}</text>')
        out.append(f'<line x1="{left}" y1="{base - row_h * above:.1f}" x2="{left}" '
                   f'y2="{base + row_h * below:.1f}" stroke="#555"/>')
        out.append(
            f'<line x1="{left}" y1="{base:.1f}" x2="{width - right}" y2="{base:.1f}" stroke="#888"/>'
        )
        for i, (ms, other, refused) in enumerate(counts[ip]):
            x = left + i * bar_w
            h_ms = ms / scale_top * row_h * above
            h_other = other / scale_top * row_h * above
            if other:
                out.append(f'<rect x="{x:.1f}" y="{base - h_other:.1f}" width="{bar_w:.1f}" '
                           f'height="{h_other:.1f}" fill="{OTHERS}"/>')
            if ms:
                out.append(f'<rect x="{x:.1f}" y="{base - h_other - h_ms:.1f}" width="{bar_w:.1f}" '
                           f'height="{h_ms:.1f}" fill="{MICROSOFT}"/>')
            if refused:
                h = refused / peak_refused * row_h * below
                out.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" '
                           f'height="{h:.1f}" fill="{REFUSED}"/>')
    # Lines first, then every text over them with a white halo, so a line
    # running down to its label never crosses another text.
    halo = 'stroke="white" stroke-width="4" paint-order="stroke"'
    for x, text_x, lane, label in placed:
        y = bottom + 22 + lane * 16
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{y - 10}" '
                   f'stroke="{MARK}" stroke-dasharray="4 3"/>')
    tick = max(10, int(span / 12) // 10 * 10)
    for t in range(0, int(span) + 1, tick):
        x = x_of(t)
        out.append(f'<text x="{x:.1f}" y="{bottom + 4}" text-anchor="middle" fill="#555" {halo}>{t} s</text>')
    for x, text_x, lane, label in placed:
        y = bottom + 22 + lane * 16
        out.append(f'<text x="{text_x:.1f}" y="{y}" fill="{MARK}" {halo}>{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
