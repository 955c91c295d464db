"""``sf-receiver tail``: read events back from the sink for a person to look at.

Two sources with the same shape: a Kafka topic (binary content mode: ``ce_`` headers and the
JSON ``data``) read without a consumer group, so tailing never moves anyone's offsets; or the
embedded sink's ``events.jsonl`` (structured mode, one event per line). Both yield CloudEvents
in structured mode, which the filters and ``receiver.tail_output`` work on.

Like ``tail(1)``: by default the last ``--lines`` matching events, ``--from-beginning`` all of
them, ``--follow`` then waits for new ones. Kafka is read backwards in growing windows to find
the last matching events, so a large topic is not read whole to show ten lines.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from fnmatch import translate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from receiver.event import KINDS
from receiver.file_sink import EVENTS_FILE

if TYPE_CHECKING:
    from receiver.settings import Settings

#: ``--lines`` without ``--from-beginning`` reads at most this many records back per partition.
MAX_SCAN_BACK: Final = 200_000
_BACKWARD_CHUNK: Final = 64 * 1024
_FILE_POLL_S: Final = 0.2
_KAFKA_POLL_MS: Final = 500
#: Reading a range stops when the broker sends nothing new for this long.
_STALL_S: Final = 10.0


class TailError(Exception):
    """The source cannot be read: no such topic or file, Kafka unreachable."""


@dataclass(frozen=True, slots=True)
class TailedEvent:
    """One event in CloudEvents structured mode, and where it was read."""

    structured: dict[str, Any]
    #: ``topic/partition@offset`` for Kafka, None for the file.
    position: str | None = None
    #: Milliseconds since the epoch (Kafka record timestamp), for ordering partitions.
    timestamp: int = 0


@dataclass(frozen=True, slots=True)
class EventFilter:
    """``--org``, ``--kind``, ``--object``: each a set of accepted values (any), all must hold."""

    orgs: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    objects: re.Pattern[str] | None = None

    @classmethod
    def of(cls, orgs: Sequence[str], kinds: Sequence[str], objects: Sequence[str]) -> EventFilter:
        """``orgs`` already normalized to 18 characters; ``objects`` are case-insensitive globs."""
        pattern = re.compile("|".join(translate(glob) for glob in objects), re.IGNORECASE) if objects else None
        return cls(frozenset(orgs), frozenset(kinds), pattern)

    def __call__(self, event: TailedEvent) -> bool:
        attributes = event.structured
        if self.orgs and attributes.get("sforgid") not in self.orgs:
            return False
        if self.kinds and KINDS.get(str(attributes.get("type"))) not in self.kinds:
            return False
        if self.objects is not None:
            object_name = attributes.get("sfobject")
            return isinstance(object_name, str) and self.objects.fullmatch(object_name) is not None
        return True


Matches = Callable[[TailedEvent], bool]


class EventSource(Protocol):
    """Where ``tail`` reads: the events there now, the last matching ones, and what comes next."""

    def existing(self) -> AsyncIterator[TailedEvent]:
        """Every event present when the source was opened, oldest first."""

    async def recent(self, matches: Matches, count: int) -> list[TailedEvent]:
        """The last ``count`` events present at opening that ``matches`` accepts, oldest first."""

    def follow(self) -> AsyncIterator[TailedEvent]:
        """Events added after the source was opened, as they arrive; never ends."""


# --- the embedded file sink ------------------------------------------------------------------


class FileSource:
    """``events.jsonl``, read once and then polled like ``tail -f`` (truncation starts over)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._end = 0

    def open(self, *, wait: bool) -> None:
        """Raises ``TailError`` when the file does not exist and ``wait`` is false."""
        if not self.path.is_file():
            if not wait:
                raise TailError(f"no events file at {self.path} (no event received yet?)")
            return
        # A line still being written is left to follow(), which reads it whole once it ends.
        self._end = _after_last_newline(self.path, self.path.stat().st_size)

    async def existing(self) -> AsyncIterator[TailedEvent]:
        if self._end == 0:
            return
        with self.path.open("rb") as stream:
            remaining = self._end
            for line in stream:
                remaining -= len(line)
                if remaining < 0:
                    break  # a line written after opening belongs to follow()
                event = _from_line(line)
                if event is not None:
                    yield event

    async def recent(self, matches: Matches, count: int) -> list[TailedEvent]:
        kept: deque[TailedEvent] = deque(maxlen=count)
        async for event in self.existing():
            if matches(event):
                kept.append(event)
        return list(kept)

    async def follow(self) -> AsyncIterator[TailedEvent]:
        offset = self._end
        pending = b""
        while True:
            size = self.path.stat().st_size if self.path.is_file() else 0
            if size < offset:
                offset, pending = 0, b""  # truncated or replaced: read the new file from its start
            if size > offset:
                with self.path.open("rb") as stream:
                    stream.seek(offset)
                    chunk = stream.read(size - offset)
                offset += len(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    event = _from_line(line)
                    if event is not None:
                        yield event
            else:
                await asyncio.sleep(_FILE_POLL_S)


def _after_last_newline(path: Path, size: int) -> int:
    """The offset just past the last newline in the first ``size`` bytes (0 when there is none)."""
    with path.open("rb") as stream:
        position = size
        while position > 0:
            start = max(0, position - _BACKWARD_CHUNK)
            stream.seek(start)
            newline = stream.read(position - start).rfind(b"\n")
            if newline != -1:
                return start + newline + 1
            position = start
    return 0


def _from_line(line: bytes) -> TailedEvent | None:
    line = line.strip()
    if not line:
        return None
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a line cut short by a crash: skipped, as a consumer of the file would
    return TailedEvent(document) if isinstance(document, dict) else None


# --- a Kafka topic ---------------------------------------------------------------------------


def structured_from_record(headers: Sequence[tuple[str, bytes]], value: bytes | None) -> dict[str, Any]:
    """CloudEvents binary content mode (``ce_`` headers + value) to structured mode."""
    attributes: dict[str, Any] = {}
    content_type = None
    for name, raw in headers:
        text = bytes(raw).decode("utf-8", errors="replace")
        if name.startswith("ce_"):
            attributes[name[3:]] = text
        elif name.lower() == "content-type":
            content_type = text
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    data: Any = None
    if value is not None:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = value.decode("utf-8", errors="replace")
    return {**attributes, "data": data}


class KafkaSource:
    """All partitions of one topic, assigned by hand (``group_id=None``): nothing is committed."""

    def __init__(self, client_options: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            **{**client_options, "client_id": "sf-receiver-tail"},
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._partitions: list[TopicPartition] = []
        self._begin: dict[TopicPartition, int] = {}
        self._end: dict[TopicPartition, int] = {}

    async def open(self, timeout_s: float) -> None:
        """Raises ``TailError`` when Kafka cannot be reached or the topic does not exist."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._consumer.start()
                # The whole cluster's metadata: asking for one topic's could auto-create it. aiokafka
                # has no public call that returns partitions of a topic not yet assigned.
                cluster = await self._consumer._client.fetch_all_metadata()
                topics = cluster.topics()
                if self.topic in topics:
                    partitions = cluster.partitions_for_topic(self.topic) or set()
                    self._partitions = [TopicPartition(self.topic, number) for number in sorted(partitions)]
                    self._consumer.assign(self._partitions)
                    self._begin = await self._consumer.beginning_offsets(self._partitions)
                    self._end = await self._consumer.end_offsets(self._partitions)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._consumer.stop()
            raise TailError(f"cannot read topic {self.topic!r}: {exc!r}") from exc
        if self.topic not in topics:
            await self._consumer.stop()
            raise TailError(f"topic {self.topic!r} does not exist")

    async def close(self) -> None:
        await self._consumer.stop()

    async def existing(self) -> AsyncIterator[TailedEvent]:
        for event in await self._read_ranges(dict(self._begin), dict(self._end)):
            yield event

    async def recent(self, matches: Matches, count: int) -> list[TailedEvent]:
        if count == 0:
            return []
        # The newest `count` of the topic are among the newest `count` of each partition; the
        # newest `count` matches overall could all sit in a partition scanned least far back.
        found: list[TailedEvent] = []
        for tp in self._partitions:
            found += await self._recent_in(tp, matches, count)
        found.sort(key=_timestamp)
        return found[-count:]

    async def _recent_in(self, tp: TopicPartition, matches: Matches, count: int) -> list[TailedEvent]:
        """The last ``count`` matches of one partition, scanning back at most ``MAX_SCAN_BACK``."""
        found: list[TailedEvent] = []
        upper = self._end[tp]
        window = max(count, 64)
        while True:
            lower = max(self._begin[tp], upper - window)
            # Only this partition's range is non-empty; each window is older than the last one.
            window_events = await self._read_ranges({**self._end, tp: lower}, {**self._end, tp: upper})
            found = [event for event in window_events if matches(event)] + found
            upper = lower
            if len(found) >= count or upper <= self._begin[tp] or window >= MAX_SCAN_BACK:
                return found[-count:]
            window = min(window * 4, MAX_SCAN_BACK)

    async def follow(self) -> AsyncIterator[TailedEvent]:
        for tp in self._partitions:
            self._consumer.seek(tp, self._end[tp])
        while True:
            batch = await self._consumer.getmany(timeout_ms=_KAFKA_POLL_MS)
            for messages in batch.values():
                for message in messages:
                    yield self._event(message)

    async def _read_ranges(
        self, lower: dict[TopicPartition, int], upper: dict[TopicPartition, int]
    ) -> list[TailedEvent]:
        """The records of ``[lower, upper)`` of each partition, in partition order."""
        wanted = [tp for tp in self._partitions if lower[tp] < upper[tp]]
        for tp in wanted:
            self._consumer.seek(tp, lower[tp])
        events: list[TailedEvent] = []
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while wanted:
            batch = await self._consumer.getmany(*wanted, timeout_ms=_KAFKA_POLL_MS)
            if batch:
                last_progress = loop.time()
            for tp, messages in batch.items():
                events.extend(self._event(message) for message in messages if message.offset < upper[tp])
            wanted = [tp for tp in wanted if await self._consumer.position(tp) < upper[tp]]
            if wanted and loop.time() - last_progress > _STALL_S:
                raise TailError(f"topic {self.topic!r} stopped sending records before the end")
        events.sort(key=_timestamp)
        return events

    @staticmethod
    def _event(message: Any) -> TailedEvent:
        return TailedEvent(
            structured_from_record(message.headers, message.value),
            position=f"{message.topic}/{message.partition}@{message.offset}",
            timestamp=message.timestamp or 0,
        )


def _timestamp(event: TailedEvent) -> int:
    # A stable sort on the timestamp alone interleaves partitions and keeps each one's order.
    return event.timestamp


# --- the command -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailOptions:
    matches: Matches = EventFilter()
    from_beginning: bool = False
    #: Without ``from_beginning``: how many of the last matching events to show.
    lines: int = 10
    follow: bool = False
    #: Stop after printing this many events.
    limit: int | None = None


async def tail(source: EventSource, options: TailOptions, show: Callable[[TailedEvent], None]) -> int:
    """Print the chosen existing events, then (``follow``) new ones; returns how many were printed."""
    limit = options.limit
    printed = 0
    existing: AsyncIterator[TailedEvent]
    if options.from_beginning:
        existing = (event async for event in source.existing() if options.matches(event))
    else:
        existing = _iterate(await source.recent(options.matches, options.lines))
    async for event in existing:
        if limit is not None and printed >= limit:
            return printed
        show(event)
        printed += 1
    if not options.follow or (limit is not None and printed >= limit):
        return printed
    async for event in source.follow():
        if options.matches(event):
            show(event)
            printed += 1
            if limit is not None and printed >= limit:
                break
    return printed


async def _iterate(events: list[TailedEvent]) -> AsyncIterator[TailedEvent]:
    for event in events:
        yield event


async def run(
    settings: Settings,
    options: TailOptions,
    show: Callable[[TailedEvent], None],
    *,
    topic: str | None = None,
    file: Path | None = None,
) -> int:
    """Tail ``file``, else ``topic`` (default ``RECEIVER_KAFKA_TOPIC``) when Kafka is configured,
    else the embedded ``events.jsonl``. Returns how many events were printed.

    Raises ``TailError`` when the source cannot be read, or ``topic`` is given without Kafka.
    """
    if file is None and settings.uses_kafka:
        from receiver.kafka_sink import producer_options

        source = KafkaSource(producer_options(settings), topic or settings.kafka_topic)
        await source.open(timeout_s=max(settings.publish_timeout_s, 10.0))
        try:
            return await tail(source, options, show)
        finally:
            await source.close()
    if topic is not None:
        raise TailError("--topic needs Kafka: set RECEIVER_KAFKA_BOOTSTRAP_SERVERS (or use --file)")
    file_source = FileSource(file or settings.data_dir / EVENTS_FILE)
    file_source.open(wait=options.follow)
    return await tail(file_source, options, show)
