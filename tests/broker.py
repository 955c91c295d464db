"""Fault injection on the real broker started by scripts/services (pause, stop, kill, restart)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

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
    """SIGSTOP the broker: connections stay open but nothing answers, the worst case for a client.

    The block starts only once every thread of the broker is seen stopped: ``kill`` returns
    before a busy JVM's threads have all halted, and a request sent in between can be answered.
    """
    pid = kafka_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        _wait_until_stopped(pid)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _wait_until_stopped(pid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {_thread_state(task) for task in Path(f"/proc/{pid}/task").iterdir()}
        if states <= {"T", "t", None}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"broker (pid {pid}) not stopped after SIGSTOP: thread states {states}")
        time.sleep(0.01)


def _thread_state(task: Path) -> str | None:
    try:
        # "pid (comm) S ...": the state follows the last ")", as comm may hold spaces.
        return (task / "stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None  # a thread that ended meanwhile


def _services_environment() -> dict[str, str]:
    """The environment for scripts/services: a private copy gets the ports the tests point at.

    Without this, ``services start`` on a private copy would start its broker on the default
    ports, where the shared one already answers, and "restart" nothing of ours.
    """
    environment = dict(os.environ)
    if "TEST_SERVICES_ROOT" not in os.environ:
        return environment
    bootstrap = os.environ.get("TEST_KAFKA_BOOTSTRAP")
    if bootstrap:
        environment.setdefault("SERVICES_KAFKA_PORT", bootstrap.split(",")[0].rsplit(":", 1)[1])
    redis_url = os.environ.get("TEST_REDIS_URL")
    if redis_url:
        port = urlsplit(redis_url).port
        if port is not None:
            environment.setdefault("SERVICES_REDIS_PORT", str(port))
    return environment


def services(*args: str) -> None:
    subprocess.run([str(SERVICES), *args], check=True, capture_output=True, timeout=180, env=_services_environment())


def kill_kafka() -> None:
    os.kill(kafka_pid(), signal.SIGKILL)


def stop_kafka() -> None:
    services("stop", "kafka")


def start_kafka() -> None:
    services("start", "kafka")


def stop_redis() -> None:
    services("stop", "redis")


def start_redis() -> None:
    services("start", "redis")
