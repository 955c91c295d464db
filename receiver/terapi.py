"""terapi as a ``ConnectionSource``: an in-memory org -> connection index, kept fresh.

The index is loaded at start-up, refreshed on a schedule, and refreshed early when a request
names an org it does not know, at most once per ``terapi_unknown_org_refresh_interval_s`` and
single-flight, so that a flood of unknown orgs costs terapi one refresh rather than one call
each. A refresh lists every connection and reads only the new or changed ones (by a fingerprint
of the listed fields), because reads are the expensive part: one call per connection.

terapi failing never takes the receiver down: the last good index keeps answering, failures are
logged once per change of cause, counted, and retried on the schedule. What the index holds (each
connection's org id, the winner when several claim one org) is ``receiver.terapi_index``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from receiver.event import Connection
from receiver.settings import Settings
from receiver.terapi_client import TerapiClient, TerapiError, TerapiUnauthorized
from receiver.terapi_index import (
    NO_ORG_ID,
    REFRESH_EXHAUSTED,
    SKIP_REASONS,
    TRANSIENT_REASONS,
    Entry,
    EntryKey,
    build_index,
    org_id_of,
    valid_org_id,
)
from receiver.terapi_wire import ListedConnection

logger = logging.getLogger("receiver.terapi")

#: Reads run side by side, a few at a time, to load many connections quickly without
#: tripping terapi's rate limit.
READ_CONCURRENCY: Final = 8
#: How long a request waits for an unknown-org refresh. With the publish bound (20 s) this stays
#: well under the 60 s Salesforce waits; a refresh that takes longer still completes behind it.
UNKNOWN_ORG_WAIT_S: Final = 15.0


class TerapiConnectionSource:
    """The org index built from terapi's connections; ``resolve`` never raises.

    It owns its client's lifecycle: ``start()`` opens it and ``stop()`` closes it.
    Raises ``ConfigurationError`` at construction when no client is given and no secret key is set.
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry, *, client: TerapiClient | None = None) -> None:
        self._client = client if client is not None else TerapiClient.from_settings(settings, registry=registry)
        self._integrations = tuple(settings.integrations)
        self._refresh_interval_s = settings.terapi_refresh_interval_s
        self._unknown_org_interval_s = settings.terapi_unknown_org_refresh_interval_s
        self._reread_interval_s = settings.terapi_reread_interval_s
        self._entries: dict[EntryKey, Entry] = {}
        self._index: dict[EntryKey, Connection] = {}
        self._conflicts: dict[EntryKey, tuple[str, ...]] = {}
        self._ready = False
        self._scheduler: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_unknown_org_refresh: float | None = None
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._metrics = _SourceMetrics(registry)

    def __repr__(self) -> str:
        return f"TerapiConnectionSource(client={self._client!r}, ready={self._ready}, orgs={len(self._index)})"

    @property
    def ready(self) -> bool:
        """True once one refresh listed every connection; stays True on later failures."""
        return self._ready

    async def start(self) -> None:
        """Run the first load, then keep refreshing in the background; never raises for terapi."""
        if self._scheduler is not None:
            return
        await self._client.start()
        await self._start_refresh("startup")
        self._scheduler = asyncio.create_task(self._run_schedule(), name="terapi-refresh-schedule")

    async def stop(self) -> None:
        """Cancel the background refreshes and close the client; idempotent."""
        tasks = {task for task in (self._scheduler, self._inflight) if task is not None}
        self._scheduler = self._inflight = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._client.stop()

    def describe(self) -> dict[str, object]:
        """The index state for ``/readyz``."""
        age = None if self._last_success is None else round(time.monotonic() - self._last_success, 1)
        return {
            "source": "terapi",
            "ready": self._ready,
            "orgs": len(self._index),
            "connections": len(self._entries),
            "skipped": sum(1 for entry in self._entries.values() if entry.skipped is not None),
            "conflicts": len(self._conflicts),
            "last_success_age_s": age,
            "last_error": self._last_error,
        }

    async def resolve(self, org_id: str, integration: str) -> Connection | None:
        """The connection of ``org_id`` among ``integration``'s connections, or None.

        A miss waits (up to ``UNKNOWN_ORG_WAIT_S``) for a refresh when one is running or allowed.
        """
        normalized = valid_org_id(org_id)
        key = (integration, normalized or org_id)
        connection = self._index.get(key)
        if connection is not None:
            self._metrics.lookups.labels(result="hit").inc()
            return connection
        refresh = None if normalized is None else self._refresh_for_unknown_org(integration)
        if refresh is not None:
            # asyncio.wait neither raises the refresh's outcome nor cancels it on timeout: a
            # request that gives up must not abort the refresh the others are waiting for.
            await asyncio.wait({refresh}, timeout=UNKNOWN_ORG_WAIT_S)
            connection = self._index.get(key)
        self._metrics.lookups.labels(result="miss" if connection is None else "hit_after_refresh").inc()
        return connection

    async def org_of(self, connection: Connection) -> str | None:
        """The org of a terapi connection (for webhooks terapi forwards), refreshing like ``resolve``."""
        key = (connection.integration, connection.connection_id)
        entry = self._entries.get(key)
        if entry is None:
            refresh = self._refresh_for_unknown_org(connection.integration)
            if refresh is not None:
                await asyncio.wait({refresh}, timeout=UNKNOWN_ORG_WAIT_S)
                entry = self._entries.get(key)
        return entry.org_id if entry is not None and entry.skipped is None else None

    def _refresh_for_unknown_org(self, integration: str) -> asyncio.Task[None] | None:
        if self._scheduler is None or integration not in self._integrations:
            return None
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        now = time.monotonic()
        last = self._last_unknown_org_refresh
        if last is not None and now - last < self._unknown_org_interval_s:
            return None
        self._last_unknown_org_refresh = now
        return self._start_refresh("unknown_org")

    def _start_refresh(self, trigger: str) -> asyncio.Task[None]:
        """The running refresh, or a new one: there is never more than one at a time."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._refresh(trigger), name=f"terapi-refresh-{trigger}")
        return self._inflight

    async def _run_schedule(self) -> None:
        while True:
            # Until the first load succeeds, retry at the unknown-org pace: a fixed key or a
            # recovered terapi should make the receiver ready in seconds, not minutes.
            if self._ready:
                delay = self._refresh_interval_s
            else:
                delay = min(self._refresh_interval_s, self._unknown_org_interval_s)
            await asyncio.sleep(delay)
            await self._start_refresh("schedule")

    async def _refresh(self, trigger: str) -> None:
        started = time.monotonic()
        try:
            listed = await self._client.list_connections(self._integrations)
            entries, read = await self._read_changed(listed)
        except TerapiError as exc:
            self._record_failure(trigger, exc.detail)
            return
        except Exception:
            # A bug here must not end the schedule: the last index keeps answering.
            logger.exception("terapi refresh failed unexpectedly", extra={"trigger": trigger})
            self._record_failure(trigger, "unexpected error (see the traceback logged before)")
            return
        self._apply(entries)
        self._metrics.refreshes.labels(trigger=trigger, outcome="ok").inc()
        self._metrics.last_success.set_to_current_time()
        if self._last_error is not None:
            logger.info("terapi answers again", extra={"trigger": trigger})
        self._ready, self._last_error, self._last_success = True, None, time.monotonic()
        logger.info(
            "terapi connections refreshed",
            extra={
                "trigger": trigger,
                "connections": len(entries),
                "connections_read": read,
                "orgs": len(self._index),
                "duration_s": round(time.monotonic() - started, 3),
            },
        )

    def _record_failure(self, trigger: str, detail: str) -> None:
        self._metrics.refreshes.labels(trigger=trigger, outcome="failed").inc()
        # One line per change of cause: a wrong key retried every 30 s must not flood the log.
        level = logging.DEBUG if detail == self._last_error else logging.ERROR
        logger.log(
            level,
            "terapi refresh failed: %s",
            detail,
            extra={"trigger": trigger, "ready": self._ready, "index_kept": bool(self._index)},
        )
        self._last_error = detail

    async def _read_changed(self, listed: list[ListedConnection]) -> tuple[dict[EntryKey, Entry], int]:
        """The entries of ``listed``, reading only connections that are new, changed or unread.

        Raises ``TerapiUnauthorized`` when a read is refused: every other read would be too.
        """
        entries: dict[EntryKey, Entry] = {}
        to_read: list[tuple[ListedConnection, Entry | None]] = []
        # A re-authorization against another org changes no listed field terapi documents: a
        # connection is read again once its last read is this old, whatever its fingerprint.
        read_since = time.monotonic() - self._reread_interval_s
        for item in listed:
            key = (item.integration, item.connection_id)
            old = self._entries.get(key)
            if (
                old is not None
                and old.current
                and old.listed.fingerprint == item.fingerprint
                and old.read_at >= read_since
            ):
                entries[key] = old
            else:
                to_read.append((item, old))
        limit = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(item: ListedConnection, old: Entry | None) -> Entry:
            async with limit:
                return await self._read(item, old)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(read(item, old)) for item, old in to_read]
        except* TerapiUnauthorized as refused:
            raise refused.exceptions[0] from None
        fresh = [task.result() for task in tasks]
        for entry in fresh:
            entries[(entry.listed.integration, entry.listed.connection_id)] = entry
        withheld = [entry for entry in fresh if entry.credentials_withheld]
        if withheld:
            logger.warning(
                "terapi returned no credentials (credentials: {}) for %d connection(s): the secret key lacks "
                "the credentials scope, so their org ids come from metadata.salesforce_org_id",
                len(withheld),
                extra={
                    "connections_without_credentials": len(withheld),
                    "skipped_without_metadata": sum(1 for entry in withheld if entry.org_id is None),
                },
            )
        return entries, len(to_read)

    async def _read(self, item: ListedConnection, old: Entry | None) -> Entry:
        context = {"connection_id": item.connection_id, "integration": item.integration}
        try:
            details = await self._client.get_connection(item.connection_id, item.integration)
        except TerapiUnauthorized:
            raise
        except TerapiError as exc:
            logger.warning("terapi connection skipped: %s", exc.detail, extra={**context, "skip_reason": exc.reason})
            # A connection whose tokens terapi can no longer refresh (424) still belongs to the
            # org it did: the hourly re-read must not drop it from the index for that.
            keeps_org = exc.reason in TRANSIENT_REASONS or exc.reason == REFRESH_EXHAUSTED
            if keeps_org and old is not None and old.org_id is not None:
                return replace(old, listed=item, current=False)
            return Entry(item, None, skipped=exc.reason, current=False)
        org_id = org_id_of(details)
        if org_id is None:
            logger.warning(
                "terapi connection has no org id in credentials.raw.id nor in metadata.salesforce_org_id",
                extra={**context, "credentials_withheld": details.credentials_withheld},
            )
        return Entry(
            item,
            org_id,
            skipped=NO_ORG_ID if org_id is None else None,
            credentials_withheld=details.credentials_withheld,
            read_at=time.monotonic(),
        )

    def _apply(self, entries: dict[EntryKey, Entry]) -> None:
        """Swap in the new index in one assignment, so that lookups never see half of it."""
        index, conflicts = build_index(entries, self._conflicts)
        self._entries, self._index, self._conflicts = entries, index, conflicts
        self._metrics.update(self._integrations, entries, index, conflicts)


class _SourceMetrics:
    """The source's metrics; terapi errors by status are counted by the client."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "receiver_terapi_lookups",
            "Org lookups in the terapi index: hit, hit_after_refresh, miss",
            ["result"],
            registry=registry,
        )
        self.refreshes = Counter(
            "receiver_terapi_refreshes",
            "terapi index refreshes by trigger (startup, schedule, unknown_org) and outcome (ok, failed)",
            ["trigger", "outcome"],
            registry=registry,
        )
        # Every worker holds the same index: with workers sharing metrics, their figures are one.
        self.index_orgs = Gauge(
            "receiver_terapi_index_orgs",
            "Orgs in the terapi index",
            ["integration"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.conflicts = Gauge(
            "receiver_terapi_org_conflicts",
            "Orgs claimed by more than one terapi connection (the most recently created wins)",
            ["integration"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.skipped = Gauge(
            "receiver_terapi_skipped_connections",
            "Listed terapi connections left out of the index, by reason",
            ["reason"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.last_success = Gauge(
            "receiver_terapi_last_refresh_success_timestamp_seconds",
            "When the terapi index was last refreshed successfully",
            registry=registry,
            multiprocess_mode="max",
        )

    def update(
        self,
        integrations: tuple[str, ...],
        entries: dict[EntryKey, Entry],
        index: dict[EntryKey, Connection],
        conflicts: dict[EntryKey, tuple[str, ...]],
    ) -> None:
        for integration in integrations:
            self.index_orgs.labels(integration=integration).set(sum(1 for key in index if key[0] == integration))
            self.conflicts.labels(integration=integration).set(sum(1 for key in conflicts if key[0] == integration))
        skipped = [entry.skipped for entry in entries.values()]
        for reason in SKIP_REASONS:
            self.skipped.labels(reason=reason).set(skipped.count(reason))
