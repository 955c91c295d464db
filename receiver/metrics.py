"""Prometheus metrics of the request path, in a registry owned by one app.

A registry per app (not the process-global one) so that tests and replay can build several
pipelines in one process. Components with metrics of their own register them in the same
registry, passed to them by the app factory.

With worker processes (``RECEIVER_WORKERS`` above 1) a scrape reaches one worker, chosen by
the kernel, and its own counters alone would jump up and down from scrape to scrape. ``serve``
then runs the workers in prometheus_client's multiprocess mode (``workers_share_metrics``):
each worker keeps its values in memory-mapped files of one directory, and ``exposition`` sums
every worker's files. Gauges say how they combine (``multiprocess_mode``): in-flight counts are
summed over live workers, terapi index figures (each worker holds the same index) take the
largest live worker's value; the live gauges of workers that died are dropped at each scrape.

In those workers a value changes in memory and reaches its file at most
``WRITE_BEHIND_INTERVAL_S`` later, before each scrape and at shutdown (``write_behind``):
writing the file on every change (about 11 per request) took a 1-notification message from
166 to about 205 us of CPU under load (bench), though only 6 us in-process.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from receiver.errors import ConfigurationError

#: Read by prometheus_client when it is imported: set, values live in files of that directory.
MULTIPROCESS_DIRECTORY_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Set by ``workers_share_metrics`` alone: a PROMETHEUS_MULTIPROC_DIR a user exported for some
#: other purpose must not make ``/metrics`` sum whatever files that directory holds.
SHARED_BY_WORKERS_ENV: Final = "SF_RECEIVER_WORKER_METRICS_DIR"
#: The key of the app's ``Metrics`` in the lifespan state (uvicorn's ``app_state``).
METRICS_STATE_KEY = "receiver.metrics"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
#: The longest a worker's changed value waits before its file holds it (``write_behind``).
WRITE_BEHIND_INTERVAL_S: Final = 0.5
#: Label combinations remembered per metric; past it (hostile label values) lookups go the slow way.
_MAX_REMEMBERED_CHILDREN = 1024


class _RememberedLabels:
    """``labels(...)`` that remembers its children: prometheus_client validates the values and
    takes a lock on every call (about a microsecond), and the request path calls it several
    times per request and once per published event. A dict lookup is all a known child costs."""

    _remembered: dict[tuple[Any, ...], Any]

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        try:
            return self._remembered[labelvalues]
        except AttributeError:
            self._remembered = {}
        except KeyError:
            pass
        child = super().labels(*labelvalues)  # type: ignore[misc]
        if len(self._remembered) < _MAX_REMEMBERED_CHILDREN:
            self._remembered[labelvalues] = child
        return child


class _Counter(_RememberedLabels, Counter):
    pass


class _Histogram(_RememberedLabels, Histogram):
    pass


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    messages_received: Counter = field(init=False)
    notifications_received: Counter = field(init=False)
    events_published: Counter = field(init=False)
    duplicates: Counter = field(init=False)
    rejected: Counter = field(init=False)
    publish_latency: Histogram = field(init=False)
    request_latency: Histogram = field(init=False)
    quarantined: Counter = field(init=False)
    quarantine_dropped: Counter = field(init=False)
    in_flight_requests: Gauge = field(init=False)
    in_flight_events: Gauge = field(init=False)
    dedupe_unavailable: Counter = field(init=False)
    dedupe_evicted_early: Counter = field(init=False)
    recording_failures: Counter = field(init=False)
    sink_recreated: Counter = field(init=False)
    connections_refused: Counter = field(init=False)

    def __post_init__(self) -> None:
        registry = self.registry

        def set_metric(name: str, metric: object) -> None:
            object.__setattr__(self, name, metric)

        set_metric(
            "messages_received",
            _Counter(
                "receiver_messages_received",
                "Requests received, by endpoint kind",
                ["kind", "integration"],
                registry=registry,
            ),
        )
        set_metric(
            "notifications_received",
            _Counter(
                "receiver_notifications_received",
                "Notifications and events parsed from requests",
                ["kind"],
                registry=registry,
            ),
        )
        set_metric(
            "events_published",
            _Counter("receiver_events_published", "Events the sink confirmed", ["kind"], registry=registry),
        )
        set_metric(
            "duplicates",
            _Counter(
                "receiver_duplicates",
                "Events not published again because they already were",
                ["kind"],
                registry=registry,
            ),
        )
        set_metric(
            "rejected",
            _Counter(
                "receiver_requests_rejected",
                "Requests answered with an error, by reason",
                ["kind", "status", "reason"],
                registry=registry,
            ),
        )
        set_metric(
            "publish_latency",
            Histogram(
                "receiver_publish_seconds",
                "Time to publish all events of one request",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
        )
        set_metric(
            "request_latency",
            _Histogram(
                "receiver_request_seconds",
                "Time to answer a webhook request",
                ["kind"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
        )
        set_metric(
            "quarantined",
            _Counter(
                "receiver_quarantined",
                "Authenticated payloads sent to quarantine, by reason",
                ["reason"],
                registry=registry,
            ),
        )
        set_metric(
            "quarantine_dropped",
            _Counter(
                "receiver_quarantine_dropped",
                "Payloads not quarantined because of the rate or size bound",
                ["reason"],
                registry=registry,
            ),
        )
        set_metric(
            "in_flight_requests",
            Gauge(
                "receiver_in_flight_requests",
                "Webhook requests being processed",
                registry=registry,
                multiprocess_mode="livesum",
            ),
        )
        set_metric(
            "in_flight_events",
            Gauge(
                "receiver_in_flight_events", "Events being published", registry=registry, multiprocess_mode="livesum"
            ),
        )
        set_metric(
            "dedupe_unavailable",
            _Counter(
                "receiver_dedupe_unavailable",
                "Events accepted without dedupe because the store failed",
                registry=registry,
            ),
        )
        set_metric(
            "dedupe_evicted_early",
            _Counter(
                "receiver_dedupe_evicted_early",
                "Dedupe marks the full in-memory store dropped before their TTL",
                registry=registry,
            ),
        )
        set_metric(
            "recording_failures",
            Counter("receiver_recording_failures", "Requests that could not be recorded", registry=registry),
        )
        set_metric(
            "sink_recreated",
            _Counter(
                "receiver_sink_recreated",
                "Kafka producers thrown away and built again after a fault",
                registry=registry,
            ),
        )
        set_metric(
            "connections_refused",
            _Counter(
                "receiver_connections_refused",
                "Connections answered and closed before a request reached the app (head too large or too slow, "
                "client certificate name), by reason",
                ["reason"],
                registry=registry,
            ),
        )


class _WriteBehind:
    """The values of this process changed since they were last written to their files."""

    lock = threading.Lock()
    changed: ClassVar[set[Any]] = set()
    installed = False

    @classmethod
    def write(cls) -> None:
        with cls.lock:
            changed = list(cls.changed)
            cls.changed.clear()
            for value in changed:
                value._file.write_value(value._key, value._value, value._timestamp)


def write_behind() -> None:
    """Make this worker's metric values write behind: an increment changes memory only, and
    ``write_changed_values`` (every ``WRITE_BEHIND_INTERVAL_S`` in the app's lifespan, before
    each scrape, and at exit) writes what changed to the multiprocess files.

    Call it in a worker of ``workers_share_metrics`` before any metric exists. A scrape may
    then miss the last half second of another worker's counts, and a worker killed outright
    loses its last half second of them: neither matters to a Prometheus rate.
    """
    if _WriteBehind.installed:
        return
    mmaped: Any = values.MultiProcessValue()  # type: ignore[no-untyped-call]

    class WriteBehindValue(mmaped):  # type: ignore[misc]
        def inc(self, amount: float) -> None:
            with _WriteBehind.lock:
                self._value += amount
                _WriteBehind.changed.add(self)

        def set(self, value: float, timestamp: float | None = None) -> None:
            with _WriteBehind.lock:
                self._value = value
                self._timestamp = timestamp or 0.0
                _WriteBehind.changed.add(self)

        def get(self) -> float:
            return float(self._value)

    values.ValueClass = WriteBehindValue
    _WriteBehind.installed = True
    atexit.register(_WriteBehind.write)


def writes_behind() -> bool:
    return _WriteBehind.installed


def write_changed_values() -> None:
    """Write the values changed since the last call (nothing unless ``write_behind``)."""
    if _WriteBehind.installed:
        _WriteBehind.write()


async def write_behind_periodically() -> None:
    """``write_changed_values`` every ``WRITE_BEHIND_INTERVAL_S``, until cancelled (and once more then)."""
    try:
        while True:
            await asyncio.sleep(WRITE_BEHIND_INTERVAL_S)
            write_changed_values()
    finally:
        write_changed_values()


def exposition(registry: CollectorRegistry) -> bytes:
    """The ``/metrics`` text: the app's registry, or every worker's values summed when the
    workers share metrics (``workers_share_metrics``)."""
    directory = os.environ.get(SHARED_BY_WORKERS_ENV)
    if not directory:
        return generate_latest(registry)
    write_changed_values()
    forget_dead_workers(Path(directory))
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(combined)


def forget_dead_workers(directory: Path) -> None:
    """Drop the live gauges of workers that are gone (killed by uvicorn as unresponsive, or
    crashed): their in-flight counts would otherwise stay in every sum. Counters stay: what a
    dead worker counted did happen."""
    for path in directory.glob("gauge_live*_*.db"):
        pid_text = path.stem.rpartition("_")[2]
        if pid_text.isdigit() and not _is_running(int(pid_text)):
            mark_process_dead(int(pid_text), str(directory))  # type: ignore[no-untyped-call]


def _is_running(pid: int) -> bool:
    """True for a process that exists and has not exited (a killed worker stays a zombie until
    uvicorn's supervisor reaps it, which may be after the next scrape)."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        # The state follows the command name, which is in parentheses and may hold spaces.
        return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
    try:  # no /proc: existence is what can be asked
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_worker_metrics_directory() -> Path:
    """A fresh directory for the workers' metric files (``workers_share_metrics``).

    Fresh because files of an earlier run would be summed in: counters would start where a
    previous process left them. Raises ``ConfigurationError`` when it cannot be created (a
    read-only root file system without a writable ``TMPDIR``).
    """
    try:
        return Path(tempfile.mkdtemp(prefix="sf-receiver-metrics-"))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the workers' metrics directory ({exc.strerror or exc}); "
            "point TMPDIR at a writable directory, or run one worker"
        ) from exc


@contextmanager
def workers_share_metrics(directory: Path) -> Iterator[Path]:
    """For the worker processes started inside: ``directory`` named in the environment they
    inherit (so it must be entered before they start), removed after."""
    previous = {name: os.environ.get(name) for name in (MULTIPROCESS_DIRECTORY_ENV, SHARED_BY_WORKERS_ENV)}
    os.environ[MULTIPROCESS_DIRECTORY_ENV] = os.environ[SHARED_BY_WORKERS_ENV] = str(directory)
    try:
        yield directory
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(directory, ignore_errors=True)
