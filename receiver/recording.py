"""Recording every webhook request, redacted, for investigation and replay.

``Recorder.record`` runs on the request path, so it only serializes one line and appends it to
a bounded in-memory queue per outlet; background tasks write the queued lines in batches (daily
files, ``receiver.recording_files``; the ``salesforce.raw`` Kafka topic, ``RawTopicOutlet``).

Recording never fails or slows a request: a full queue or a failed write loses recordings, is
counted in ``receiver_recording_failures`` and logged at most once per interval, and the
request is answered as if nothing happened. The price is that recordings are best effort,
unlike events: a process crash loses what was queued but not yet written.

What is recorded is redacted here, once for every outlet: the body goes through
``redact_session_id`` (whatever the endpoint: an Outbound Message posted to ``/events`` is
still an Outbound Message), headers through the ``recorded_headers`` allow-list (no signature,
``Authorization`` or cookie), and the path is kept without its query string, which is where
the Outbound Message ``token`` travels.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
from starlette.datastructures import Headers
from starlette.types import Scope

from receiver.errors import ReceiverError
from receiver.event import utc_now_iso
from receiver.logs import Throttle
from receiver.metrics import Metrics
from receiver.processing import endpoint_of
from receiver.redaction import recorded_headers, redact_session_id
from receiver.settings import Settings
from receiver.sink import Sink

logger = logging.getLogger("receiver.recording")

RECORDINGS_DIR: Final = "recordings"
_FAILURE_LOG_INTERVAL_S: Final = 60.0
#: How long a written batch may wait for more lines; a crash loses at most this much more.
DEFAULT_LINGER_S: Final = 0.05


class RecordingFailed(ReceiverError):
    """Recordings were lost; never answered to a sender, only counted and logged."""

    reason = "recording_failed"

    def __init__(self, detail: str, *, lost: int) -> None:
        super().__init__(detail)
        self.lost = lost


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the receiver answered: the HTTP status and the reason slug (``ok`` for a success)."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One webhook request as it arrived, before redaction. ``body`` is None when it was not read."""

    received_at: str
    kind: str
    integration: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None
    remote_addr: str | None
    outcome: Outcome
    request_id: str | None = None


def refused_by_middleware(scope: Scope, outcome: Outcome, request_id: str | None) -> RecordedRequest:
    """A webhook request answered before any handler ran (source not allowed, overload).

    Its body was never read, so it is recorded without one; kind and integration come from the path.
    """
    kind, integration = endpoint_of(scope["path"]) or ("unknown", "")
    client = scope.get("client")
    return RecordedRequest(
        received_at=utc_now_iso(),
        kind=kind,
        integration=integration,
        path=scope["path"],
        headers=Headers(scope=scope),
        body=None,
        remote_addr=client[0] if client else None,
        outcome=outcome,
        request_id=request_id,
    )


def to_line(entry: RecordedRequest) -> bytes:
    """The redacted JSON line of one request, newline included.

    Keys: ``received_at``, ``kind``, ``integration``, ``path``, ``headers``, ``body`` (text;
    ``body_base64`` instead when it is not UTF-8; null when it was not read), ``remote_addr``,
    ``outcome`` (``status``, ``reason``) and ``request_id``.
    """
    document: dict[str, Any] = {
        "received_at": entry.received_at,
        "kind": entry.kind,
        "integration": entry.integration,
        "path": entry.path.split("?", 1)[0],
        "headers": recorded_headers(entry.headers),
        "body": None,
        "remote_addr": entry.remote_addr,
        "outcome": {"status": entry.outcome.status, "reason": entry.outcome.reason},
        "request_id": entry.request_id,
    }
    if entry.body is not None:
        document.update(encode_body(redact_session_id(entry.body)))
    return orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE)


def encode_body(body: bytes) -> dict[str, str | None]:
    """``{"body": text}``, or ``{"body": null, "body_base64": ...}`` for bytes that are not UTF-8."""
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body": None, "body_base64": base64.b64encode(body).decode("ascii")}


class RecordingOutlet(Protocol):
    """Where recordings go. ``write`` runs in the background, never on the request path."""

    name: str

    async def start(self) -> None:
        """Prepare; must not raise (a failure shows up as failed writes instead)."""

    async def write(self, lines: Sequence[bytes]) -> None:
        """Store the lines; raises ``RecordingFailed`` saying how many were lost."""

    async def stop(self) -> None:
        """Finish background work (compression) and close; idempotent."""


class RawTopicOutlet:
    """The ``salesforce.raw`` Kafka topic, through the sink's producer."""

    name = "kafka"

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def start(self) -> None:
        # The sink is started and stopped by the app; its producer is shared.
        return None

    async def write(self, lines: Sequence[bytes]) -> None:
        # Sent concurrently so the producer batches them; each one is awaited to count losses.
        results = await asyncio.gather(*(self.sink.record_raw(line) for line in lines), return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise RecordingFailed(f"the raw topic refused {len(failures)} recordings", lost=len(failures)) from (
                failures[0]
            )

    async def stop(self) -> None:
        return None


class _Channel:
    """The bounded queue of one outlet and the task that drains it."""

    def __init__(self, outlet: RecordingOutlet, max_queued_bytes: int, linger_s: float, recorder: Recorder) -> None:
        self.outlet = outlet
        self.max_queued_bytes = max_queued_bytes
        self.recorder = recorder
        self.lines: deque[bytes] = deque()
        self.queued_bytes = 0
        self.linger_s = linger_s
        self.wake = asyncio.Event()
        #: Set when the batch should not wait for the linger: half the queue used, or stopping.
        self.urgent = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def offer(self, line: bytes) -> bool:
        if self.closing or self.queued_bytes + len(line) > self.max_queued_bytes:
            return False
        self.lines.append(line)
        self.queued_bytes += len(line)
        self.wake.set()
        if self.queued_bytes * 2 >= self.max_queued_bytes:
            self.urgent.set()
        return True

    async def drain(self) -> None:
        while True:
            await self.wake.wait()
            if not self.closing:
                # Let a batch gather: one thread hop and one write per linger, not one per request.
                try:
                    async with asyncio.timeout(self.linger_s):
                        await self.urgent.wait()
                except TimeoutError:
                    pass
            self.wake.clear()
            self.urgent.clear()
            while self.lines:
                batch = list(self.lines)
                self.lines.clear()
                self.queued_bytes = 0
                try:
                    await self.outlet.write(batch)
                except RecordingFailed as exc:
                    self.recorder.count_failure(exc.lost, f"{self.outlet.name}: {exc.detail}")
                except Exception as exc:  # a bug in an outlet must not end recording for good
                    logger.exception("recording outlet failed", extra={"outlet": self.outlet.name})
                    self.recorder.count_failure(len(batch), f"{self.outlet.name}: {exc!r}")
            if self.closing:
                return


class Recorder:
    """Takes one line per request on the request path; outlets write them in the background."""

    def __init__(
        self,
        outlets: Sequence[RecordingOutlet],
        metrics: Metrics,
        *,
        max_queued_bytes: int,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        self.outlets = list(outlets)
        self._linger_s = linger_s
        self.metrics = metrics
        self._channels: list[_Channel] = []
        self._max_queued_bytes = max_queued_bytes
        self._failure_log = Throttle(_FAILURE_LOG_INTERVAL_S)
        self._failures_since_log = 0

    @property
    def enabled(self) -> bool:
        """False when no outlet is configured: the handler then does not even build an entry."""
        return bool(self.outlets)

    async def start(self) -> None:
        self._channels = [_Channel(outlet, self._max_queued_bytes, self._linger_s, self) for outlet in self.outlets]
        for channel in self._channels:
            await channel.outlet.start()
            channel.task = asyncio.create_task(channel.drain(), name=f"recording-{channel.outlet.name}")

    async def stop(self) -> None:
        """Write what is queued, then stop; idempotent."""
        channels, self._channels = self._channels, []
        for channel in channels:
            channel.closing = True
            channel.wake.set()
            channel.urgent.set()
        for channel in channels:
            if channel.task is not None:
                await channel.task
            await channel.outlet.stop()

    def record(self, entry: RecordedRequest) -> None:
        """Queue the redacted line of one request; never raises, never waits."""
        if not self._channels:
            if self.outlets:
                self.count_failure(1, "the recorder is not running")
            return
        try:
            line = to_line(entry)
        except TypeError as exc:  # orjson.JSONEncodeError: a header value that is not text
            self.count_failure(1, f"the request could not be serialized: {exc}")
            return
        for channel in self._channels:
            if not channel.offer(line):
                self.count_failure(1, f"{channel.outlet.name}: the recording queue is full")

    def count_failure(self, lost: int, detail: str) -> None:
        self.metrics.recording_failures.inc(lost)
        self._failures_since_log += lost
        if self._failure_log.ready():
            logger.warning("requests not recorded", extra={"lost": self._failures_since_log, "error": detail})
            self._failures_since_log = 0


def build_recorder(settings: Settings, sink: Sink, metrics: Metrics) -> Recorder:
    """Daily files when ``recording_enabled``; the raw topic when Kafka and ``kafka_record_raw``."""
    from receiver.recording_files import DailyRecordingFiles

    outlets: list[RecordingOutlet] = []
    if settings.recording_enabled:
        # Worker processes each write files of their own: rotation is not safe across processes.
        writer = f"w{os.getpid()}" if settings.workers > 1 else None
        outlets.append(
            DailyRecordingFiles(
                settings.data_dir / RECORDINGS_DIR,
                max_file_bytes=settings.recording_max_file_bytes,
                retention_days=settings.recording_retention_days,
                writer=writer,
            )
        )
    if settings.uses_kafka and settings.kafka_record_raw:
        outlets.append(RawTopicOutlet(sink))
    return Recorder(outlets, metrics, max_queued_bytes=settings.recording_queue_max_bytes)
