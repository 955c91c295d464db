"""What a result was measured on: the machine, the versions and the code."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_PACKAGES = ("salesforce-event-receiver", "aiokafka", "uvicorn", "uvloop", "httptools", "starlette", "orjson", "lxml")
_BASELINE_PACKAGES = ("xmltodict",)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        memory_gib = round(int(match.group(1)) / 1024 / 1024, 1) if match else None
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "load_average_before": load_average(),
        "broker": "single-node Apache Kafka (KRaft) from scripts/services, on the same machine",
    }


def _command_output(*command: str) -> str | None:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    except OSError:
        return None
    return (completed.stdout + completed.stderr).strip() or None


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version()}
    for name in (*_PACKAGES, *_BASELINE_PACKAGES):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    wrk = _command_output("wrk", "--version")
    found["wrk"] = wrk.splitlines()[0] if wrk else None
    jars = sorted((REPO / ".cache" / "kafka" / "libs").glob("kafka-server-*.jar"))
    found["kafka"] = jars[0].stem.removeprefix("kafka-server-") if jars else None
    commit = _command_output("git", "rev-parse", "--short", "HEAD")
    dirty = _command_output("git", "status", "--porcelain", "--untracked-files=no", "receiver", "bench")
    found["git_commit"] = f"{commit}{'+dirty' if dirty else ''}" if commit else None
    return found
