"""Replay orchestration: items from the sources, through the filter and the checkpoint, sent to a
target at a bounded rate and concurrency, tallied into a summary.

``--checkpoint FILE`` makes a run resumable: the ids of finished items (acked, duplicate or
rejected: anything but a failure) are appended and fsynced in batches, and a run given the same
file skips them. A stop request (SIGINT, SIGTERM) lets the items in flight finish and be
checkpointed, so a resumed run sends nothing twice; a crash can resend at most the last
unsynced batch, which dedupe then answers as duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from receiver.connections import ConnectionResolver
from receiver.processing import TERAPI
from receiver.replay_items import ReplayFilter, ReplayItem, SkippedItem, forwarding_connection
from receiver.replay_targets import ReplayResult, ReplayTarget, Verdict

logger = logging.getLogger("receiver.replay")

_CHECKPOINT_BATCH: Final = 100
_CHECKPOINT_INTERVAL_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    #: Items sent per second at most; None: as fast as ``concurrency`` allows.
    rate: float | None = None
    concurrency: int = 4
    #: Items sent at most (after filters and checkpoint); None: all.
    limit: int | None = None
    checkpoint: Path | None = None


@dataclass(slots=True)
class Summary:
    """The tally of one run. ``ok`` is what the exit status reports: nothing rejected, failed or
    left undone by an interruption."""

    dry_run: bool = False
    sent: int = 0
    acked: int = 0
    duplicates: int = 0
    valid: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    filtered_out: int = 0
    already_done: int = 0
    events_accepted: int = 0
    event_duplicates: int = 0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.failed and not self.interrupted

    def add(self, result: ReplayResult) -> None:
        self.sent += 1 if result.sent and not self.dry_run else 0
        self.events_accepted += result.events_accepted
        self.event_duplicates += result.event_duplicates
        match result.verdict:
            case Verdict.ACKED:
                self.acked += 1
            case Verdict.DUPLICATE:
                self.duplicates += 1
            case Verdict.VALID:
                self.valid += 1
            case Verdict.REJECTED:
                self.rejected[result.reason or "unknown"] += 1
            case Verdict.FAILED:
                self.failed[result.reason or "unknown"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "interrupted": self.interrupted,
            "sent": self.sent,
            "acked": self.acked,
            "duplicates": self.duplicates,
            "valid": self.valid,
            "rejected": dict(self.rejected),
            "failed": dict(self.failed),
            "skipped": dict(self.skipped),
            "filtered_out": self.filtered_out,
            "already_done": self.already_done,
            "events_accepted": self.events_accepted,
            "event_duplicates": self.event_duplicates,
        }


class Checkpoint:
    """An append-only file of finished item ids, one per line, fsynced in batches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self._pending: list[str] = []
        self._last_sync = time.monotonic()
        self._file: Any = None

    def open(self) -> None:
        """Load the ids of earlier runs; raises ``OSError`` when the file cannot be read or created."""
        if self.path.exists():
            # A line cut short by a crash is a prefix of no id: it simply matches nothing.
            self.done = {line for line in self.path.read_text(encoding="ascii").split("\n") if line}
        self._file = self.path.open("a", encoding="ascii")

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.done

    def add(self, item_id: str) -> None:
        self.done.add(item_id)
        self._pending.append(item_id)
        if len(self._pending) >= _CHECKPOINT_BATCH or time.monotonic() - self._last_sync >= _CHECKPOINT_INTERVAL_S:
            self.sync()

    def sync(self) -> None:
        if self._file is None or not self._pending:
            return
        self._file.write("".join(f"{item_id}\n" for item_id in self._pending))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._pending.clear()
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self.sync()
        if self._file is not None:
            self._file.close()
            self._file = None


class RateLimiter:
    """Spaces sends ``1/rate`` seconds apart, whatever the concurrency (no bursts)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 0.0 if not rate else 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


OnResult = Callable[[ReplayItem, ReplayResult], None]
OnSkip = Callable[[SkippedItem], None]


class Replayer:
    """One run: a feeder takes items from the sources through the filter, the checkpoint and the
    limit into a small queue; ``concurrency`` workers send them at the limiter's pace."""

    def __init__(
        self,
        item_filter: ReplayFilter,
        target: ReplayTarget,
        options: ReplayOptions,
        summary: Summary,
        *,
        on_result: OnResult | None = None,
        on_skip: OnSkip | None = None,
        stop: asyncio.Event | None = None,
        connections: ConnectionResolver | None = None,
    ) -> None:
        self.item_filter = item_filter
        #: Names the org of a terapi forward, which its payload usually does not (``--org``).
        self.connections = connections
        self.target = target
        self.options = options
        self.summary = summary
        self.on_result = on_result
        self.on_skip = on_skip
        #: Once set, the run ends after the items in flight (``summary.interrupted``).
        self.stop = stop or asyncio.Event()
        self._checkpoint = Checkpoint(options.checkpoint) if options.checkpoint is not None else None
        self._limiter = RateLimiter(options.rate)
        self._queue: asyncio.Queue[ReplayItem | None] = asyncio.Queue(maxsize=options.concurrency * 2)

    async def run(self, items: AsyncIterator[ReplayItem | SkippedItem]) -> Summary:
        """Send every selected item; the tally goes into ``summary`` as it happens.

        Raises ``OSError`` when the checkpoint file cannot be used, what ``target.start``
        raises, and (in an ``ExceptionGroup``) what the sources raise; an item's own failure is
        its result, never an exception.
        """
        if self._checkpoint is not None:
            self._checkpoint.open()
        try:
            await self.target.start()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._feed(items))
                    for _ in range(self.options.concurrency):
                        group.create_task(self._work())
            finally:
                await self.target.stop()
        finally:
            if self._checkpoint is not None:
                self._checkpoint.close()
        return self.summary

    async def _feed(self, items: AsyncIterator[ReplayItem | SkippedItem]) -> None:
        selected = 0
        async for item in items:
            if self.stop.is_set():
                self.summary.interrupted = True
                break
            if isinstance(item, SkippedItem) and self.item_filter.rules_out(item):
                self.summary.filtered_out += 1
            elif isinstance(item, SkippedItem):
                self.summary.skipped[item.reason] += 1
                if self.on_skip is not None:
                    self.on_skip(item)
            elif not self.item_filter.matches(await self._with_connection_org(item)):
                self.summary.filtered_out += 1
            elif self._checkpoint is not None and item.item_id in self._checkpoint:
                self.summary.already_done += 1
            elif self.options.limit is not None and selected >= self.options.limit:
                break
            else:
                selected += 1
                await self._queue.put(item)
        # Not in a finally: when a source fails, the task group cancels the workers, and waiting
        # to hand them end markers on a full queue would hang the run for good.
        for _ in range(self.options.concurrency):
            await self._queue.put(None)

    async def _with_connection_org(self, item: ReplayItem) -> ReplayItem:
        """A terapi forward naming no org gets its connection's, when the org map or terapi knows it."""
        if item.kind != TERAPI or item.organization_id is not None or self.connections is None:
            return item
        connection = forwarding_connection(item.body)
        org_id = await self.connections.org_of(connection) if connection is not None else None
        return item if org_id is None else replace(item, organization_id=org_id)

    async def _send(self, item: ReplayItem) -> ReplayResult:
        """The target's result; a target that raises (a bug, or a recording it cannot turn into
        a request) fails that item, not the run."""
        try:
            return await self.target.send(item)
        except Exception as exc:  # noqa: BLE001 - one item's failure, counted; the run goes on
            logger.warning("replay item failed", extra={"item": item.item_id, "error": type(exc).__name__})
            return ReplayResult(Verdict.FAILED, reason=f"error:{type(exc).__name__}", sent=False)

    async def _work(self) -> None:
        while (item := await self._queue.get()) is not None:
            if self.stop.is_set():
                self.summary.interrupted = True
                continue
            await self._limiter.wait()
            if self.stop.is_set():
                self.summary.interrupted = True
                continue
            result = await self._send(item)
            self.summary.add(result)
            # A dry run sends nothing: what it looked at is still to be done by the real run.
            if self._checkpoint is not None and result.is_final and result.verdict is not Verdict.VALID:
                self._checkpoint.add(item.item_id)
            if self.on_result is not None:
                self.on_result(item, result)
