#!/usr/bin/python3
"""Charts of a `make bench` run, as SVG, from its result lines (Debian's python3-matplotlib).

    plots.py --out DIR --baselines RAW [--idle FILE]... [--flood FILE]... [--format svg|png]

- throughput.svg: msgs/s per case and target (median over repetitions), from the harness's
  `baselines-*.raw.txt`;
- cpu.svg: the proxy's CPU per message (µs: its CPU share / msgs/s) per case and target (not
  Postfix's: the harness cannot count its short-lived smtpd processes);
- idle.svg: KiB per idle session: HAProxy and nginx from the baselines (N=5000), attitude from
  `--idle` files (a fresh process; one RESULT line each, labelled by the file's label=);
- flood.svg: the legitimate client's retained goodput per run and mode, from `FLOOD` lines
  (`make bench-flood` output), when `--flood` files are given.
"""

import argparse
import os
import re
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FORMAT = "svg"
TARGETS = ["direct", "haproxy", "nginx", "postfix", "attitude"]
COLORS = {
    "direct": "#9e9e9e",
    "haproxy": "#1f77b4",
    "nginx": "#2ca02c",
    "postfix": "#9467bd",
    "attitude": "#d62728",
}


def save(fig, out, name):
    """Writes the chart; an SVG without its date, so the same run gives the same file."""
    meta = {"Date": None} if FORMAT == "svg" else {}
    fig.savefig(os.path.join(out, f"{name}.{FORMAT}"), metadata=meta)


def results(path):
    """Every RESULT line of a file as a dict."""
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith("RESULT "):
                out.append(dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv))
    return out


def bars(ax, cases, series, ylabel, title):
    """Grouped bars: one group per case, one bar per target that has a value."""
    targets = [t for t in TARGETS if any(t in series[c] for c in cases)]
    width = 0.8 / max(len(targets), 1)
    for i, target in enumerate(targets):
        xs = [c + (i - (len(targets) - 1) / 2) * width for c in range(len(cases))]
        ys = [series[case].get(target, 0) for case in cases]
        ax.bar(xs, ys, width, label=target, color=COLORS.get(target))
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def throughput_and_cpu(raw, out):
    rate = defaultdict(lambda: defaultdict(list))
    cpu = defaultdict(lambda: defaultdict(list))
    cases = []
    for r in results(raw):
        label = r.get("label", "")
        if "@" not in label or label.startswith("idle"):
            continue
        case, target = label.split("@", 1)
        if case not in cases:
            cases.append(case)
        msgs = float(r["msgs_per_s"])
        rate[case][target].append(msgs)
        share = r.get("cpu_proxy_pct")
        # Postfix's CPU column is not meaningful (the harness cannot count its short-lived
        # smtpd children), nor is the direct one's (no proxy).
        if share is not None and msgs > 0 and target not in ("direct", "postfix"):
            cpu[case][target].append(float(share) / 100 / msgs * 1e6)
    med = lambda d: {c: {t: statistics.median(v) for t, v in d[c].items()} for c in d}  # noqa: E731
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bars(ax, cases, med(rate), "msgs/s (median)", "Throughput per case")
    fig.tight_layout()
    save(fig, out, "throughput")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bars(ax, cases, med(cpu), "µs of proxy CPU per message", "CPU per message")
    fig.tight_layout()
    save(fig, out, "cpu")


def idle(raw, files, out):
    kib = {}
    for r in results(raw):
        m = re.match(r"idle@(\w+)", r.get("label", ""))
        if m and r.get("conns") == "5000":
            kib[f"{m.group(1)} plain"] = float(r["kib_per_conn"])
    for path in files:
        for r in results(path):
            label = r.get("label", "attitude")
            kind = "STARTTLS" if "starttls" in label else "plain"
            kib[f"attitude {kind}"] = float(r["kib_per_conn"])
    names = sorted(kib, key=lambda n: (not n.startswith("attitude"), n))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(names, [kib[n] for n in names],
            color=[COLORS.get(n.split()[0], "#777") for n in names])
    for y, n in enumerate(names):
        ax.text(kib[n], y, f" {kib[n]:.2f}", va="center", fontsize=8)
    ax.set_xlabel("KiB per idle session (RSS growth, after EHLO)")
    ax.set_title("Idle sessions")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save(fig, out, "idle")


def flood(files, out):
    runs = defaultdict(list)
    for path in files:
        with open(path) as f:
            for line in f:
                m = re.match(r"FLOOD (\S+): .*retained=(\d+)%", line)
                if m:
                    runs[m.group(1)].append(int(m.group(2)))
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (name, values) in enumerate(sorted(runs.items())):
        ax.scatter([i] * len(values), values, color="#d62728", alpha=0.6)
        ax.hlines(statistics.median(values), i - 0.3, i + 0.3, color="black")
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(sorted(runs), fontsize=8)
    ax.axhline(97, color="#1f77b4", linestyle="--", linewidth=1, label="97 % aim")
    lowest = min(min(v) for v in runs.values())
    ax.set_ylim(max(0, lowest - 5), 101)
    ax.set_ylabel("legitimate goodput retained (%)")
    ax.set_title("Under a connection flood (runs, and their median)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, out, "flood")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--baselines", required=True)
    ap.add_argument("--idle", action="append", default=[])
    ap.add_argument("--flood", action="append", default=[])
    ap.add_argument("--format", default="svg", choices=["svg", "png"])
    a = ap.parse_args()
    global FORMAT
    FORMAT = a.format
    os.makedirs(a.out, exist_ok=True)
    plt.rcParams["svg.hashsalt"] = "attitude"  # the same input gives the same file
    throughput_and_cpu(a.baselines, a.out)
    idle(a.baselines, a.idle, a.out)
    flood(a.flood, a.out)
    print(f"plots: {', '.join(sorted(os.listdir(a.out)))} in {a.out}")


if __name__ == "__main__":
    main()
