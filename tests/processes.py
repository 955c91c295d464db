"""Receivers as real ``sf-receiver serve`` processes, for tests that need replicas, signals or RSS.

An in-process server (``tests.servers``) shares the test's event loop and memory; a replica, a
SIGTERM and a resident-set measurement need a process of their own, started the way operators
start it: the console script with ``RECEIVER_*`` variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SF_RECEIVER = REPO / ".venv" / "bin" / "sf-receiver"
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ReceiverProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident set size now, from /proc (psutil is not a dependency)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def workers(self) -> set[int]:
        """The pids of its child processes (uvicorn's workers), from /proc."""
        tasks = Path(f"/proc/{self.pid}/task")
        if not tasks.exists():
            return set()
        return {int(child) for task in tasks.iterdir() for child in (task / "children").read_text().split()}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """SIGTERM: what Kubernetes and systemd send to stop a replica."""
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout_s: float) -> int:
        """The exit status, waiting without blocking the event loop; raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while (status := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sf-receiver (pid {self.pid}) still running after {timeout_s} s")
            await asyncio.sleep(0.02)
        return status


def receiver_environment(settings: Mapping[str, object]) -> dict[str, str]:
    """The test's environment without any RECEIVER_* of its own, plus ``settings`` as RECEIVER_*."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("RECEIVER_")}
    environment.update({f"RECEIVER_{name.upper()}": str(value) for name, value in settings.items()})
    return environment


@asynccontextmanager
async def running_receiver(settings: Mapping[str, object], log_dir: Path) -> AsyncIterator[ReceiverProcess]:
    """Start ``sf-receiver serve`` on a free port, wait until ``/readyz`` is 200, kill it at the end.

    ``settings`` are setting names (``kafka_topic``) and values. Raises ``RuntimeError`` with
    the process log when it exits or is not ready within ``READY_TIMEOUT_S``.
    """
    receiver = _launch(settings, log_dir)
    try:
        await _wait_ready(receiver)
        yield receiver
    finally:
        if receiver.process.poll() is None:
            # Its worker processes (RECEIVER_WORKERS above 1) would outlive a killed parent.
            workers = receiver.workers()
            receiver.process.kill()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await receiver.wait(timeout_s=10)


def _launch(settings: Mapping[str, object], log_dir: Path) -> ReceiverProcess:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"receiver-{port}.log"
    environment = receiver_environment({"log_format": "text", **settings, "port": port})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(SF_RECEIVER), "serve"], cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    return ReceiverProcess(process, f"http://127.0.0.1:{port}", log_path)


async def _wait_ready(receiver: ReceiverProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=receiver.base_url, timeout=2) as client:
        while True:
            if receiver.process.poll() is not None:
                raise RuntimeError(f"sf-receiver exited with {receiver.process.returncode}:\n{receiver.log()}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sf-receiver not ready within {READY_TIMEOUT_S} s:\n{receiver.log()}")
            await asyncio.sleep(0.1)
