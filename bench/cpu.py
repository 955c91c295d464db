"""CPU time (and peak memory) of a process and its children, from /proc: the figure that noise
does not move.

Throughput on a shared 2-core machine swings with whatever else runs; the CPU seconds a server
spends per request hardly do. Each phase records the server's (all worker processes) and the
broker's CPU time, so a result says what one request costs and who pays for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
BROKER_PID_FILE = Path(__file__).resolve().parent.parent / ".cache" / "kafka" / "kafka.pid"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found.extend(int(child) for child in text.split())
    except OSError:
        return found
    return found


def _own_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    fields = stat.rpartition(")")[2].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / _TICKS_PER_S


def _tree(pid: int) -> Iterator[int]:
    """``pid`` and its live descendants."""
    pending = [pid]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(_children(current))


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    return sum(_own_cpu_s(current) for current in _tree(pid))


def _peak_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):  # the resident set's high-water mark, in kB
            return int(line.split()[1]) / 1024
    return None


def tree_peak_rss_mib(pid: int) -> float | None:
    """The largest peak resident set of ``pid`` and its live descendants (one worker's worth):
    what each worker process needs, whatever the number of workers."""
    peaks = [peak for peak in map(_peak_rss_mib, _tree(pid)) if peak is not None]
    return max(peaks, default=None)


def broker_pid() -> int | None:
    """The broker scripts/services started, when its pid file names a live process."""
    try:
        pid = int(BROKER_PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None
