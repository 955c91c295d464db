"""Results out: the table on the terminal, the JSON files, and the latency chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Every target a run may hold, in the order the table shows them.
TARGETS = ("receiver", "receiver-redis", "baseline", "baseline-batched")
#: What ``--quick`` runs (it must stay under 3 minutes): the receiver with Redis dedupe only in full runs.
QUICK_TARGETS = ("receiver", "baseline", "baseline-batched")

_ROWS = (
    ("requests_per_s", "requests/s, 1-notification OM (saturation)", "{:,.0f}"),
    ("notifications_per_s", "notifications/s, 100-notification OM (saturation)", "{:,.0f}"),
    ("notifications_per_s_4_connections", "notifications/s, 100-notification OM, 4 connections", "{:,.0f}"),
    ("events_per_s", "signed JSON events/s (saturation)", "{:,.0f}"),
    ("p50_ms", "p50 ms at {rate} requests/s", "{:.1f}"),
    ("p99_ms", "p99 ms at {rate} requests/s", "{:.1f}"),
    ("p99_9_ms", "p99.9 ms at {rate} requests/s", "{:.1f}"),
    ("p99_om100_ms", "p99 ms, 100-notification OM at {om100_rate}/s", "{:.1f}"),
    ("cpu_us_per_request", "server CPU us per 1-notification request", "{:,.0f}"),
    ("cpu_us_per_notification", "server CPU us per notification (100 per request)", "{:,.1f}"),
    ("peak_rss_mib", "peak RSS MiB, largest server process", "{:,.0f}"),
    ("lost", "lost (acked, not in the topic)", "{:d}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(value)


def table(document: dict[str, Any]) -> str:
    rate = document["settings"]["headline_rate"]
    targets = [name for name in TARGETS if name in document]
    ratios = [key for key in ("ratio", "ratio_batched") if key in document]
    header = ["", *targets, *ratios]
    rows = [header]
    for key, label, fmt in _ROWS:
        row = [label.format(rate=rate, om100_rate=document["settings"].get("om100_rate"))] + [
            _cell(document[target].get(key), fmt) for target in targets
        ]
        for ratio_key in ratios:
            ratio = document[ratio_key].get(key)
            row.append("-" if ratio is None else f"{ratio:.2f}x")
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    settings = document["settings"]
    lines.append(
        f"{settings['workers']} worker(s), {settings['duration_s']:g} s per phase, run {document['run_id']}, "
        f"load average {document['machine']['load_average_before']} -> {document['machine'].get('load_average_after')}"
    )
    return "\n".join(lines)


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def latency_chart(document: dict[str, Any], path: Path) -> bool:
    """Latency percentiles against offered load, one line per target and percentile; False without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    styles = {"receiver": "-", "receiver-redis": "-.", "baseline": "--", "baseline-batched": ":"}
    colors = {"p50": "tab:green", "p99": "tab:orange", "p99.9": "tab:red"}
    plotted = False
    for target in TARGETS:
        phases = document.get(target, {}).get("phases", {})
        points = sorted(
            (phase["offered_rate"], phase["latency_scheduled_ms"])
            for phase in phases.values()
            if phase.get("offered_rate") and phase["notifications_per_request"] == 1
        )
        for percentile, color in colors.items():
            series = [(rate, latency[percentile]) for rate, latency in points if latency.get(percentile) is not None]
            if not series:
                continue
            plotted = True
            axes.plot(
                [rate for rate, _ in series],
                [value for _, value in series],
                styles[target],
                marker="o",
                color=color,
                label=f"{target} {percentile}",
            )
    if not plotted:
        plt.close(figure)
        return False
    axes.set_yscale("log")
    axes.set_xlabel("offered load, 1-notification Outbound Messages per second")
    axes.set_ylabel("latency from scheduled send, ms (log)")
    settings = document["settings"]
    axes.set_title(
        f"Latency against load: {settings['workers']} worker(s), acks=all, Ack after the broker confirmed\n"
        f"run {document['run_id']} on {document['machine']['cores']} cores shared with Kafka and wrk",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True
