"""Load phases: one wrk run each, driven by the Lua scripts in bench/wrk/.

Saturation phases keep many connections busy (closed loop) and measure throughput. Fixed-rate
phases run one connection per wrk thread, each thread on a schedule (see wrk/common.lua), and
measure latency from each request's scheduled time, as wrk2 does; wrk's own service-time
percentiles (``latency:percentile`` in ``done()``) are reported next to them.

Every phase has its own id letter, so every notification id of a target's run is unique and
the harness can list exactly which ids were acknowledged (``acked_ids``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cpu
from receiver.ids import checksum

WRK_DIR = Path(__file__).resolve().parent / "wrk"
RESULT_PREFIX = "BENCH_RESULT "
#: Well above any answer the servers give; Salesforce itself waits 60 s.
WRK_TIMEOUT = "30s"


@dataclass(frozen=True, slots=True)
class Phase:
    """One wrk run: what it posts, how hard, for how long."""

    name: str
    letter: str
    kind: str  # "outbound" or "events"
    notifications: int
    connections: int
    threads: int
    duration_s: float
    rate: int = 0  # requests/s in total; 0 means as fast as the server answers

    @property
    def fixed_rate(self) -> bool:
        return self.rate > 0


@dataclass(slots=True)
class PhaseResult:
    phase: Phase
    duration_s: float
    requests: int
    acked: int
    refused: int
    unmatched: int
    socket_errors: int
    statuses: dict[str, int]
    service_ms: dict[str, float | None]
    scheduled_ms: dict[str, float | None]
    threads: list[dict[str, Any]] = field(repr=False)
    server_cpu_s: float = 0.0
    broker_cpu_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.acked / self.duration_s if self.duration_s else 0.0

    @property
    def notifications_per_s(self) -> float:
        return self.requests_per_s * self.phase.notifications

    def cpu_us_per_request(self, seconds: float) -> float | None:
        return round(seconds / self.acked * 1e6, 1) if self.acked else None

    def acked_ids(self) -> Iterator[str]:
        """Every notification or event id that was answered with a 2xx, as the topic holds it."""
        phase = self.phase
        for thread in self.threads:
            missing = set(thread["unanswered"]) | set(thread["refused_seqs"])
            for seq in range(thread["issued"]):
                if seq in missing:
                    continue
                if phase.kind == "events":
                    yield f"bench-{phase.letter}-{thread['thread']}-{seq}"
                    continue
                for i in range(phase.notifications):
                    id15 = f"04l{phase.letter}{thread['thread']:03d}{seq * phase.notifications + i:08d}"
                    yield id15 + checksum(id15)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.phase.kind,
            "notifications_per_request": self.phase.notifications,
            "connections": self.phase.connections,
            "threads": self.phase.threads,
            "offered_rate": self.phase.rate or None,
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "acked": self.acked,
            "refused": self.refused,
            "unmatched": self.unmatched,
            "socket_errors": self.socket_errors,
            "statuses": self.statuses,
            "requests_per_s": round(self.requests_per_s, 1),
            "notifications_per_s": round(self.notifications_per_s, 1),
            "latency_service_ms": self.service_ms,
            "latency_scheduled_ms": self.scheduled_ms,
            "server_cpu_s": round(self.server_cpu_s, 2),
            "broker_cpu_s": round(self.broker_cpu_s, 2),
            "server_cpu_us_per_request": self.cpu_us_per_request(self.server_cpu_s),
            "broker_cpu_us_per_request": self.cpu_us_per_request(self.broker_cpu_s),
        }


def run_phase(phase: Phase, url: str, *, server_pid: int, event_secret: str, log_dir: Path) -> PhaseResult:
    """Run wrk for one phase, measuring the CPU time the server (every worker) and the broker
    spent meanwhile; raises ``RuntimeError`` when wrk fails or prints no result."""
    script = "events.lua" if phase.kind == "events" else "outbound.lua"
    env = {
        **os.environ,
        "BENCH_PHASE": phase.letter,
        "BENCH_RATE": str(phase.rate),
        "BENCH_THREADS": str(phase.threads),
        "BENCH_NOTIFICATIONS": str(phase.notifications),
        "BENCH_SECRET": event_secret,
    }
    command = [
        "wrk",
        f"-t{phase.threads}",
        f"-c{phase.connections}",
        f"-d{phase.duration_s:g}s",
        f"--timeout={WRK_TIMEOUT}",
        "-s",
        str(WRK_DIR / script),
        url,
    ]
    broker = cpu.broker_pid()
    server_before = cpu.tree_cpu_s(server_pid)
    broker_before = cpu.tree_cpu_s(broker) if broker else 0.0
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    server_cpu_s = cpu.tree_cpu_s(server_pid) - server_before
    broker_cpu_s = cpu.tree_cpu_s(broker) - broker_before if broker else 0.0
    (log_dir / f"wrk-{phase.name}.txt").write_text(completed.stdout + completed.stderr)
    line = next((row for row in completed.stdout.splitlines() if row.startswith(RESULT_PREFIX)), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed in phase {phase.name} (status {completed.returncode}): {completed.stderr[-500:]}"
        )
    result = parse_result(phase, json.loads(line[len(RESULT_PREFIX) :]))
    result.server_cpu_s = server_cpu_s
    result.broker_cpu_s = broker_cpu_s
    return result


def _percentiles(names: list[float], values: list[float | None]) -> dict[str, float | None]:
    # Lua arrays with holes come out short: a missing value means no sample.
    padded = [*values, *([None] * (len(names) - len(values)))][: len(names)]
    return {
        f"p{name:g}": None if value is None else round(value / 1000, 3)
        for name, value in zip(names, padded, strict=True)
    }


def parse_result(phase: Phase, report: dict[str, Any]) -> PhaseResult:
    threads = report["threads"]
    statuses: dict[str, int] = {}
    for thread in threads:
        for status, count in (thread["statuses"] or {}).items():
            statuses[status] = statuses.get(status, 0) + count
    names = report["percentiles"]
    return PhaseResult(
        phase=phase,
        duration_s=report["duration_us"] / 1e6,
        requests=report["requests"],
        acked=sum(thread["acked"] for thread in threads),
        refused=sum(thread["refused"] for thread in threads),
        unmatched=sum(thread["unmatched"] for thread in threads),
        socket_errors=sum(report[f"errors_{kind}"] for kind in ("connect", "read", "write", "timeout")),
        statuses=statuses,
        service_ms=_percentiles(names, report["service_us"]),
        scheduled_ms=_percentiles(names, report["scheduled_us"]) if phase.fixed_rate else {},
        threads=threads,
    )
