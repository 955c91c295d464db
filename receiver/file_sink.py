"""The embedded sink: CloudEvents structured-mode JSON lines under ``RECEIVER_DATA_DIR``.

Durability is the point: ``publish`` returns only after the lines are fsynced. Concurrent
publishes share one write and one fsync (group commit), so the cost of an fsync is paid once
per batch of requests rather than once per request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from receiver.errors import PublishFailed, PublishTimeout
from receiver.event import CloudEvent

EVENTS_FILE = "events.jsonl"
QUARANTINE_FILE = "quarantine.jsonl"


def write_fully(descriptor: int, data: bytes) -> None:
    """Write all of ``data``: ``os.write`` may write less than it is given."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


class _GroupCommitFile:
    """An append-only file where concurrent appends are written and fsynced together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    async def append(self, data: bytes) -> None:
        if self._descriptor is None:
            raise PublishFailed(f"{self.path.name} is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, b"".join(data for data, _ in batch))
            except OSError as exc:
                failure = PublishFailed(f"writing {self.path.name} failed: {exc.strerror}")
                failure.__cause__ = exc
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _write(self, data: bytes) -> None:
        assert self._descriptor is not None
        write_fully(self._descriptor, data)
        os.fsync(self._descriptor)

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class FileSink:
    """Writes ``events.jsonl`` and ``quarantine.jsonl``; used when no Kafka is configured."""

    def __init__(self, data_dir: Path, *, publish_timeout_s: float) -> None:
        self.data_dir = data_dir
        self.publish_timeout_s = publish_timeout_s
        self._events = _GroupCommitFile(data_dir / EVENTS_FILE)
        self._quarantine = _GroupCommitFile(data_dir / QUARANTINE_FILE)

    async def start(self) -> None:
        self._events.open()
        self._quarantine.open()

    async def stop(self) -> None:
        await self._events.close()
        await self._quarantine.close()

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        if not events:
            return
        payload = b"".join(orjson.dumps(event.structured()) + b"\n" for event in events)
        try:
            await asyncio.wait_for(self._events.append(payload), self.publish_timeout_s)
        except TimeoutError as exc:
            raise PublishTimeout(f"{EVENTS_FILE} was not written within {self.publish_timeout_s} s") from exc

    async def quarantine(self, record: dict[str, Any]) -> None:
        await self._quarantine.append(orjson.dumps(record) + b"\n")

    async def record_raw(self, line: bytes) -> None:
        # Recordings have their own rotating files in the embedded mode (receiver.recording).
        return None

    async def is_ready(self) -> bool:
        return self._events._descriptor is not None and os.access(self.data_dir, os.W_OK)

    def describe(self) -> dict[str, object]:
        return {"events_file": str(self.data_dir / EVENTS_FILE)}
