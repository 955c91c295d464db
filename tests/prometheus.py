"""Reading the receiver's /metrics answer in tests."""

from __future__ import annotations


def metric(text: str, name: str) -> float:
    """The value of one sample of the Prometheus text ``text``; ``name`` includes its labels, if any."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")
