#!/usr/bin/env python3
"""bench_report.py - turn a compare.sh log into the README's table and chart.

usage: bench_report.py COMPARE_LOG [--markdown FILE] [--svg FILE]
                       [--net-markdown FILE] [--net-svg FILE] [--note TEXT]

Reads the FIO, COPY and `## tls` lines that scripts/bench/compare.sh writes
(medians over rounds, as its summarize.py computes them), prints and writes a
markdown table of absolute numbers plus envol's ratio to every peer over the Unix
socket, and draws an SVG bar chart of throughput relative to the plain nbdkit file
server. When the log has the network runs (own-tcp, own-tls and their nbdkit-file
peers), it also writes the targets table (every target of issues 11 and 17 with
the measured ratio and met/missed, 1→4 connection scaling, the negotiated cipher
suites) and a chart of envol ÷ nbdkit per transport. Standard library only, so it
runs wherever compare.sh does.
"""
import argparse
import collections
import html
import statistics

WORKLOADS = [
    # key, column title, field, higher is better
    (("fio", "seqwrite"), "seq write 1M QD16 MiB/s", "mib", True),
    (("fio", "seqread"), "seq read 1M QD16 MiB/s", "mib", True),
    (("fio", "randread"), "rand read 4K QD32 IOPS", "iops", True),
    (("fio", "randwrite"), "rand write 4K QD32 IOPS", "iops", True),
    (("copy", "in"), "nbdcopy in MiB/s", "MiB/s", True),
    (("copy", "out"), "nbdcopy out MiB/s", "MiB/s", True),
    (("fio", "seqwrite"), "seq write server CPU ms/GiB", "sms", False),
]
NAMES = {
    "own": "envol (AES-256-XTS)",
    "own-async": "envol, async loop",
    "nbdkit-file": "nbdkit file (plain)",
    "nbdkit-luks": "nbdkit + luks filter",
    "qemu-luks": "qemu-nbd LUKS",
    "qemu-raw": "qemu-nbd raw (plain)",
    "nbd-server": "nbd-server (plain)",
}
NETWORK_SUFFIXES = ("-tcp", "-tls")
# What `## tls` lines say each TLS server negotiated (the client's view).
TLS_SUITES = {}
COLOURS = ["#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]


def parse(path):
    data = collections.defaultdict(list)
    order = []
    for line in open(path):
        p = line.split()
        if line.startswith("## tls "):
            TLS_SUITES[p[2]] = " ".join(p[3:])
        if line.startswith("## round") and p[4] not in order:
            order.append(p[4])
        elif line.startswith("FIO "):
            _, _, srv, w, mib, iops, p99, ccpu, busy, scpu, sms = p
            data[(srv, "fio", w)].append(
                dict(mib=float(mib), iops=float(iops), p99=float(p99), busy=float(busy),
                     scpu=float(scpu), sms=float(sms)))
        elif line.startswith("COPY "):
            _, _, srv, d, *kv = p
            data[(srv, "copy", d)].append({k: float(v) for k, v in (x.split("=") for x in kv)})
    rounds = max((len(v) for v in data.values()), default=0)
    return order, data, rounds


def median(data, srv, key, field):
    v = data.get((srv, *key))
    return statistics.median(x[field] for x in v) if v else None


def fmt(x, field):
    if x is None:
        return "–"
    return f"{x / 1000:.1f}k" if field == "iops" else f"{x:.0f}"


def markdown(order, data, rounds, note):
    order = [s for s in order if not s.endswith(NETWORK_SUFFIXES)]
    out = [f"Median of {rounds} rounds ({note}); `scripts/bench.sh`, one run.", ""]
    out.append("| server | " + " | ".join(t for _, t, _, _ in WORKLOADS) + " |")
    out.append("|---" * (len(WORKLOADS) + 1) + "|")
    for s in order:
        cells = [fmt(median(data, s, k, f), f) for k, _, f, _ in WORKLOADS]
        name = NAMES.get(s, s)
        if s == "own":
            name = f"**{name}**"
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    if "own" in order:
        out += ["", "envol ÷ peer, same run (throughput: > 1 is envol faster; CPU per GiB: < 1 is envol cheaper):", ""]
        out.append("| peer | " + " | ".join(t for _, t, _, _ in WORKLOADS) + " |")
        out.append("|---" * (len(WORKLOADS) + 1) + "|")
        for s in order:
            if s == "own":
                continue
            cells = []
            for k, _, f, _ in WORKLOADS:
                a, b = median(data, "own", k, f), median(data, s, k, f)
                cells.append(f"{a / b:.2f}×" if a is not None and b else "–")
            out.append(f"| {NAMES.get(s, s)} | " + " | ".join(cells) + " |")
    busy = [x["busy"] for (srv, kind, _), v in data.items() if kind == "fio" for x in v]
    if busy:
        out += ["", f"Whole-machine CPU busy during the fio runs: median {statistics.median(busy):.0f} %, "
                    f"max {max(busy):.0f} % of all cores."]
    return "\n".join(out) + "\n"


def svg(order, data, rounds, note, base="nbdkit-file"):
    """Grouped bars: each throughput workload, every server relative to `base`."""
    metrics = [(k, t, f) for k, t, f, hib in WORKLOADS if hib]
    order = [s for s in order if not s.endswith(NETWORK_SUFFIXES)]
    if base not in order:
        base = order[0]
    servers = order
    W, H, left, top, bottom = 900, 420, 60, 50, 90
    plot_w, plot_h = W - left - 20, H - top - bottom
    ratios = {}
    for k, _, f in metrics:
        b = median(data, base, k, f)
        for s in servers:
            v = median(data, s, k, f)
            ratios[(s, k)] = v / b if v is not None and b else 0.0
    ymax = max(1.0, max(ratios.values(), default=1.0)) * 1.15
    group_w = plot_w / len(metrics)
    bar_w = group_w * 0.8 / len(servers)
    y = lambda r: top + plot_h - r / ymax * plot_h
    e = []
    e.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">')
    e.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    e.append(f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
             f'Throughput relative to {html.escape(NAMES.get(base, base))} (= 1.0), higher is better</text>')
    e.append(f'<text x="{W / 2}" y="38" text-anchor="middle" fill="#555">'
             f'{html.escape(f"median of {rounds} rounds; {note}")}</text>')
    step = 0.5 if ymax <= 3 else 1.0
    t = 0.0
    while t <= ymax:
        e.append(f'<line x1="{left}" x2="{W - 20}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                 f'stroke="{"#000" if t == 1.0 else "#ddd"}" stroke-width="{1.2 if t == 1.0 else 1}"/>')
        e.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}×</text>')
        t += step
    for i, (k, title, f) in enumerate(metrics):
        gx = left + i * group_w + group_w * 0.1
        for j, s in enumerate(servers):
            r = ratios[(s, k)]
            x = gx + j * bar_w
            e.append(f'<rect x="{x:.1f}" y="{y(r):.1f}" width="{bar_w - 2:.1f}" '
                     f'height="{top + plot_h - y(r):.1f}" fill="{COLOURS[j % len(COLOURS)]}">'
                     f'<title>{html.escape(NAMES.get(s, s))}: {fmt(median(data, s, k, f), f)} '
                     f'({r:.2f}×)</title></rect>')
            e.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y(r) - 3:.1f}" text-anchor="middle" '
                     f'font-size="9">{r:.2f}</text>')
        label = title.replace(" MiB/s", "").replace(" IOPS", "")
        e.append(f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{top + plot_h + 16}" '
                 f'text-anchor="middle">{html.escape(label)}</text>')
    lx = left
    for j, s in enumerate(servers):
        e.append(f'<rect x="{lx}" y="{H - 30}" width="12" height="12" fill="{COLOURS[j % len(COLOURS)]}"/>')
        name = NAMES.get(s, s)
        e.append(f'<text x="{lx + 16}" y="{H - 20}">{html.escape(name)}</text>')
        lx += 30 + 7.5 * len(name)
    e.append("</svg>")
    return "\n".join(e) + "\n"


FIO4 = [("seqwrite", "seq write 1M QD16", "mib"), ("seqread", "seq read 1M QD16", "mib"),
        ("randread", "rand read 4K QD32", "iops"), ("randwrite", "rand write 4K QD32", "iops")]
COPIES = [("in", "nbdcopy in, default connections"), ("out", "nbdcopy out, default connections"),
          ("in-1c", "nbdcopy in, 1 connection"), ("out-1c", "nbdcopy out, 1 connection")]
TRANSPORTS = [("", "Unix socket"), ("-tcp", "TCP loopback"), ("-tls", "TLS over TCP loopback")]
ENCRYPTED_PEERS = ["nbdkit-luks", "qemu-luks"]


def targets(order, data):
    """Rows (target, measurement, envol, peer, ratio, goal, verdict) for every
    target the log has the servers for."""
    rows = []

    def row(target, what, own, peer, key, field, goal, higher=True):
        if own not in order or peer not in order:
            return
        a, b = median(data, own, key, field), median(data, peer, key, field)
        if a is None or not b:
            return
        r = a / b
        met = r >= goal if higher else r <= goal
        rows.append((target, what, fmt(a, field), fmt(b, field), f"{r:.2f}×",
                     f"{'≥' if higher else '≤'} {goal:.1f}×", "met" if met else "**missed**"))

    for w, t, f in FIO4:
        row("1 (TLS)", f"{t}, 1 connection", "own-tls", "nbdkit-file-tls", ("fio", w), f, 1.0)
    for w, t, _ in FIO4:
        row("1 (TLS)", f"{t}: server CPU ms/GiB", "own-tls", "nbdkit-file-tls", ("fio", w), "sms",
            1.2, higher=False)
    for w, t, f in FIO4:
        row("2 (TCP)", f"{t}, 1 connection", "own-tcp", "nbdkit-file-tcp", ("fio", w), f, 1.0)
    for suffix, name in TRANSPORTS[1:]:
        for w, t, f in FIO4:
            row("3 (4 connections)", f"{name}: {t}, 4 jobs × 1 connection", "own" + suffix,
                "nbdkit-file" + suffix, ("fio", w + "-4c"), f, 1.0)
    # nbdcopy's default is 4 connections when the server advertises
    # multi-conn (both do): those rows are target 3's as well as 4's.
    for suffix, name in TRANSPORTS:
        for d, t in COPIES:
            row("3, 4 (copies)" if "default" in t else "4 (copies)", f"{name}: {t}", "own" + suffix,
                "nbdkit-file" + suffix, ("copy", d), "MiB/s", 1.0)
    for w, t, f in FIO4:
        row("5 (round one)", f"Unix socket: {t}", "own", "nbdkit-file", ("fio", w), f, 1.0)
    for peer in ENCRYPTED_PEERS:
        for w, t, f in FIO4[:2]:
            row("5 (round one)", f"Unix socket: {t} against {NAMES[peer]}", "own", peer, ("fio", w), f, 4.0)
    row("5 (round one)", "Unix socket: seq write server CPU ms/GiB", "own", "nbdkit-file",
        ("fio", "seqwrite"), "sms", 2.0, higher=False)
    return rows


def net_markdown(order, data, rounds, note):
    rows = targets(order, data)
    out = [f"Targets of issues 11 and 17: median of {rounds} rounds ({note}); `scripts/bench.sh`, one run, "
           "envol against nbdkit's file plugin on the same transport (ratio: envol ÷ nbdkit; "
           "CPU rows: lower is better).", ""]
    out.append("| target | measurement | envol | nbdkit | ratio | goal | |")
    out.append("|---|---|---|---|---|---|---|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    met = sum(r[-1] == "met" for r in rows)
    out += ["", f"{met} of {len(rows)} met.", ""]
    scaling = []
    for suffix, name in TRANSPORTS[1:]:
        for w, t, f in FIO4:
            cells = []
            for srv in ("own" + suffix, "nbdkit-file" + suffix):
                one, four = median(data, srv, ("fio", w), f), median(data, srv, ("fio", w + "-4c"), f)
                cells.append(f"{fmt(one, f)} → {fmt(four, f)} ({four / one:.2f}×)" if one and four else "–")
            if any(c != "–" for c in cells):
                scaling.append(f"| {name} | {t} | " + " | ".join(cells) + " |")
    if scaling:
        out += ["Scaling from 1 to 4 connections (fio, aggregate of 4 jobs):", "",
                "| transport | workload | envol 1 → 4 | nbdkit 1 → 4 |", "|---|---|---|---|"] + scaling + [""]
    ab = []
    for suffix, name in TRANSPORTS:
        new, old = "own" + suffix, "own-async" + suffix
        if new not in order or old not in order:
            continue
        for w, t, f in FIO4:
            for k, what in ((("fio", w), t), (("fio", w + "-4c"), t + ", 4 connections")):
                a_, b_ = median(data, new, k, f), median(data, old, k, f)
                if a_ is not None and b_:
                    ab.append(f"| {name} | {what} | {fmt(b_, f)} | {fmt(a_, f)} | {a_ / b_:.2f}× |")
        for d, t in COPIES:
            a_, b_ = median(data, new, ("copy", d), "MiB/s"), median(data, old, ("copy", d), "MiB/s")
            if a_ is not None and b_:
                ab.append(f"| {name} | {t} | {fmt(b_, 'MiB/s')} | {fmt(a_, 'MiB/s')} | {a_ / b_:.2f}× |")
    if ab:
        out += ["envol's threaded loop against its async loop (`--transmission async`), same binary, same run:", "",
                "| transport | measurement | async | threaded | threaded ÷ async |", "|---|---|---|---|---|"] + ab + [""]
    if TLS_SUITES:
        out.append("Negotiated (libnbd's view, GnuTLS client): " + "; ".join(
            f"{s}: {v}" for s, v in sorted(TLS_SUITES.items())) + ".")
    return "\n".join(out) + "\n"


def net_svg(order, data, rounds, note):
    """envol ÷ nbdkit per measurement, one bar per transport."""
    metrics = [(("fio", w), t, f) for w, t, f in FIO4]
    metrics += [(("fio", w + "-4c"), t + " ×4", f) for w, t, f in FIO4]
    metrics += [(("copy", d), t.replace("nbdcopy ", "copy ").replace(", default connections", "")
                 .replace(", 1 connection", " 1c"), "MiB/s") for d, t in COPIES]
    series = [(sfx, name) for sfx, name in TRANSPORTS
              if "own" + sfx in order and "nbdkit-file" + sfx in order]
    W, H, left, top, bottom = 1100, 440, 60, 50, 110
    plot_w, plot_h = W - left - 20, H - top - bottom
    ratios = {}
    for k, _, f in metrics:
        for sfx, _ in series:
            a, b = median(data, "own" + sfx, k, f), median(data, "nbdkit-file" + sfx, k, f)
            # Not measured on this transport (the Unix socket has no 4-connection
            # fio rows): no bar, rather than a bar at 0.
            if a is not None and b:
                ratios[(sfx, k)] = a / b
    ymax = max(1.0, max(ratios.values(), default=1.0)) * 1.15
    group_w = plot_w / len(metrics)
    bar_w = group_w * 0.8 / max(1, len(series))
    y = lambda r: top + plot_h - r / ymax * plot_h
    e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
         f'envol ÷ nbdkit file plugin on the same transport (1.0 = equal), higher is better</text>',
         f'<text x="{W / 2}" y="38" text-anchor="middle" fill="#555">'
         f'{html.escape(f"median of {rounds} rounds; {note}")}</text>']
    step = 0.5 if ymax <= 3 else 1.0
    t = 0.0
    while t <= ymax:
        e.append(f'<line x1="{left}" x2="{W - 20}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                 f'stroke="{"#000" if t == 1.0 else "#ddd"}" stroke-width="{1.2 if t == 1.0 else 1}"/>')
        e.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}×</text>')
        t += step
    for i, (k, title, f) in enumerate(metrics):
        gx = left + i * group_w + group_w * 0.1
        for j, (sfx, name) in enumerate(series):
            r = ratios.get((sfx, k))
            if r is None:
                continue
            x = gx + j * bar_w
            e.append(f'<rect x="{x:.1f}" y="{y(r):.1f}" width="{bar_w - 2:.1f}" '
                     f'height="{top + plot_h - y(r):.1f}" fill="{COLOURS[j % len(COLOURS)]}">'
                     f'<title>{html.escape(name)}, {html.escape(title)}: {r:.2f}×</title></rect>')
            e.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y(r) - 3:.1f}" text-anchor="middle" '
                     f'font-size="8">{r:.2f}</text>')
        cx, cy = left + (i + 0.5) * group_w, top + plot_h + 12
        label = title.replace(" 1M QD16", "").replace(" 4K QD32", "")
        e.append(f'<text x="{cx:.1f}" y="{cy}" text-anchor="end" font-size="10" '
                 f'transform="rotate(-30 {cx:.1f} {cy})">{html.escape(label)}</text>')
    lx = left
    for j, (_, name) in enumerate(series):
        e.append(f'<rect x="{lx}" y="{H - 22}" width="12" height="12" fill="{COLOURS[j % len(COLOURS)]}"/>')
        e.append(f'<text x="{lx + 16}" y="{H - 12}">{html.escape(name)}</text>')
        lx += 40 + 7.5 * len(name)
    e.append("</svg>")
    return "\n".join(e) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--markdown")
    ap.add_argument("--svg")
    ap.add_argument("--net-markdown")
    ap.add_argument("--net-svg")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    order, data, rounds = parse(a.log)
    if not order:
        raise SystemExit(f"bench_report.py: no results in {a.log}")
    md = markdown(order, data, rounds, a.note)
    print(md)
    if a.markdown:
        open(a.markdown, "w").write(md)
    if a.svg:
        open(a.svg, "w").write(svg(order, data, rounds, a.note))
    if any(s.endswith(NETWORK_SUFFIXES) for s in order) or a.net_markdown:
        net = net_markdown(order, data, rounds, a.note)
        print(net)
        if a.net_markdown:
            open(a.net_markdown, "w").write(net)
        if a.net_svg:
            open(a.net_svg, "w").write(net_svg(order, data, rounds, a.note))


if __name__ == "__main__":
    main()
