"""Fault injection on the real broker started by scripts/services (pause, stop, kill, restart)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Fault tests act on the services of this checkout unless pointed at another one (a private
# copy on other ports), so that breaking a broker does not disturb other test runs.
SERVICES_ROOT = Path(os.environ.get("TEST_SERVICES_ROOT", str(REPO)))
KAFKA_PID_FILE = SERVICES_ROOT / ".cache" / "kafka" / "kafka.pid"
SERVICES = SERVICES_ROOT / "scripts" / "services"


def kafka_pid() -> int:
    return int(KAFKA_PID_FILE.read_text().strip())


@contextmanager
def kafka_paused() -> Iterator[None]:
    """SIGSTOP the broker: connections stay open but nothing answers, the worst case for a client."""
    pid = kafka_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def services(*args: str) -> None:
    subprocess.run([str(SERVICES), *args], check=True, capture_output=True, timeout=180)


def kill_kafka() -> None:
    os.kill(kafka_pid(), signal.SIGKILL)


def stop_kafka() -> None:
    services("stop", "kafka")


def start_kafka() -> None:
    services("start", "kafka")
