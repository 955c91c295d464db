"""The two servers under test, each started as its own process group and stopped by its pid.

``receiver``: ``sf-receiver serve`` exactly as an operator runs it, configured only through
``RECEIVER_*`` variables (every inherited one is dropped first, so a developer's exports, such
as ``RECEIVER_REDIS_URL`` from ``scripts/services start``, cannot change what is measured).

``receiver-redis``: the same, with ``RECEIVER_REDIS_URL`` at a redis-server of its own
(``private_redis``), started empty for the run: the setting of replicas sharing dedupe, and the
dedupe marks of an earlier run (ids repeat from run to run) cannot make this run's events
duplicates.

``baseline``: ``bench/baseline/app.py`` under the same uvicorn settings (uvloop, httptools, no
access log, same number of workers), so the comparison isolates what the handlers do.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The Standard Webhooks secret both servers verify and bench/wrk/events.lua signs with.
EVENT_SECRET = "whsec_YmVuY2gtaGFybmVzcy1ldmVudC1zZWNyZXQtMDEyMzQ1Njc4OQ=="
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to start one server under test."""

    name: str
    topic: str
    workers: int
    kafka_bootstrap: str
    data_dir: Path
    linger_ms: int | None = None
    redis_url: str | None = None
    #: Further RECEIVER_* settings for experiments (--receiver-env), applied last.
    extra_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RunningServer:
    name: str
    url: str
    pid: int
    topic: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith(("RECEIVER_", "BASELINE_"))}


def _receiver_command(spec: ServerSpec, port: int) -> tuple[list[str], dict[str, str]]:
    env = _clean_environment()
    env.update(
        {
            "RECEIVER_HOST": "127.0.0.1",
            "RECEIVER_PORT": str(port),
            "RECEIVER_WORKERS": str(spec.workers),
            "RECEIVER_KAFKA_BOOTSTRAP_SERVERS": spec.kafka_bootstrap,
            "RECEIVER_KAFKA_TOPIC": spec.topic,
            "RECEIVER_KAFKA_QUARANTINE_TOPIC": f"{spec.topic}.quarantine",
            "RECEIVER_ORG_MAP_FILE": str(REPO / "examples" / "org-map.toml"),
            "RECEIVER_WSDL_DIR": str(REPO / "examples" / "wsdl"),
            "RECEIVER_DATA_DIR": str(spec.data_dir),
            "RECEIVER_EVENT_SECRETS": EVENT_SECRET,
            "RECEIVER_LOG_LEVEL": "warning",
        }
    )
    if spec.linger_ms is not None:
        env["RECEIVER_KAFKA_LINGER_MS"] = str(spec.linger_ms)
    if spec.redis_url is not None:
        env["RECEIVER_REDIS_URL"] = spec.redis_url
    env.update(spec.extra_env)
    return [str(Path(sys.executable).with_name("sf-receiver")), "serve"], env


def _baseline_command(spec: ServerSpec, port: int) -> tuple[list[str], dict[str, str]]:
    env = _clean_environment()
    env.update(
        {
            "BASELINE_KAFKA_BOOTSTRAP_SERVERS": spec.kafka_bootstrap,
            "BASELINE_KAFKA_TOPIC": spec.topic,
            "BASELINE_EVENT_SECRET": EVENT_SECRET,
            "BASELINE_BATCHING": "client" if spec.name == "baseline-batched" else "none",
        }
    )
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline.app:app",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--workers={spec.workers}",
        "--loop=uvloop",
        "--http=httptools",
        "--no-access-log",
        "--log-level=warning",
    ]
    return command, env


@contextmanager
def running(spec: ServerSpec, log_path: Path) -> Iterator[RunningServer]:
    """Start the server, wait until it answers, and stop it (SIGTERM, then SIGKILL) at the end.

    Stopping is part of the measurement's correctness: the receiver flushes its producer on
    SIGTERM, and the topic is read back only after that.
    """
    port = free_port()
    is_receiver = spec.name.startswith("receiver")
    build = _receiver_command if is_receiver else _baseline_command
    command, env = build(spec, port)
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_ready(process, url, ready_path="/readyz" if is_receiver else "/healthz", log=log_path)
        yield RunningServer(spec.name, url, process.pid, spec.topic)
    finally:
        _stop(process)


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, *, ready_path: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + ready_path, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready within {START_TIMEOUT_S} s; see {log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # The process leads its own session: the signal reaches uvicorn's worker processes too.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A redis-server of the run alone on a free port, empty and without persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run scripts/services start once")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(
        [binary, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(port):
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not answering within {START_TIMEOUT_S} s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16) == b"+PONG\r\n"
    except OSError:
        return False
