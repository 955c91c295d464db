"""Dedupe claim -> publish -> dedupe commit: the delivery step shared by every endpoint and replay.

The guarantee lives here: ``deliver`` returns only when every event is stored or known to be a
duplicate, and raises otherwise, so no caller can acknowledge an event that was not stored.

The commit is not part of that guarantee, so the answer does not wait for it: once the publish
succeeded, the keys are committed in the background, the commits of concurrent requests
together (with Redis, one round trip fewer before each Ack). Until a commit lands, a copy of
its event claimed in this process is answered as the duplicate it is (the pipeline remembers
the keys it is committing); on another replica it is ``IN_FLIGHT`` for that moment and retried.
``settle`` waits for the commits still out; the app calls it before the dedupe store stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from receiver.dedupe import Claim, DedupeStore, DedupeUnavailable
from receiver.errors import DuplicateInFlight, Overloaded
from receiver.event import CloudEvent
from receiver.logs import Throttle
from receiver.metrics import Metrics
from receiver.sink import Sink

logger = logging.getLogger("receiver.pipeline")

_UNAVAILABLE_LOG_INTERVAL_S = 60.0
#: Keys per commit call: what queued while Redis hung goes out in calls of bounded size.
MAX_KEYS_PER_COMMIT = 1000


@dataclass(frozen=True, slots=True)
class Delivery:
    accepted: int
    duplicates: int


def delivery_key(delivery_id: str, event_keys: Sequence[str]) -> str:
    """The dedupe key of one delivery: its id and the events it carries.

    The events are part of it because a sender's ids are only unique to that sender: another
    org (with a secret of its own) or a sender counting from 1 again may reuse one. Keyed by the
    id alone, their new events would be answered as duplicates and never published.
    """
    carried = hashlib.blake2b("\n".join(sorted(event_keys)).encode(), digest_size=16).hexdigest()
    return f"delivery {delivery_id} {carried}"


class Pipeline:
    def __init__(self, sink: Sink, dedupe: DedupeStore, metrics: Metrics, *, max_events_in_flight: int) -> None:
        self.sink = sink
        self.dedupe = dedupe
        self.metrics = metrics
        self.max_events_in_flight = max_events_in_flight
        self._events_in_flight = 0
        self._unavailable_log = Throttle(_UNAVAILABLE_LOG_INTERVAL_S)
        #: Keys published whose commit has not landed yet, and those not yet sent to the store.
        self._committing: set[str] = set()
        self._commit_queue: list[str] = []
        self._committer: asyncio.Task[None] | None = None

    async def deliver(self, events: Sequence[CloudEvent], *, delivery_id: str | None = None) -> Delivery:
        """Publish the events not yet published.

        ``delivery_id`` names the request itself (a Standard Webhooks ``webhook-id``): once a
        delivery with that id succeeded, a retry of it, the same id carrying the same events, is
        answered as a duplicate (``delivery_key``).

        Raises ``Overloaded`` past the in-flight bound, ``DuplicateInFlight`` when another copy
        of one of them is being published right now, ``PublishFailed`` when the sink failed.
        """
        unique = list({event.dedupe_key: event for event in events}.values())
        count = len(unique)
        if self._events_in_flight + count > self.max_events_in_flight and self._events_in_flight > 0:
            raise Overloaded(f"more than {self.max_events_in_flight} events in flight", retry_after_s=1)
        self._events_in_flight += count
        self.metrics.in_flight_events.inc(count)
        try:
            return await self._deliver(unique, duplicate_copies=len(events) - count, delivery_id=delivery_id)
        finally:
            self._events_in_flight -= count
            self.metrics.in_flight_events.dec(count)

    async def _deliver(self, events: list[CloudEvent], duplicate_copies: int, delivery_id: str | None) -> Delivery:
        keys = [event.dedupe_key for event in events]
        if delivery_id is not None:
            keys.append(delivery_key(delivery_id, keys))
        deduped = True
        try:
            claims = await self.dedupe.claim(keys)
        except DedupeUnavailable as exc:
            # Accepting without dedupe can publish a resend twice; refusing would lose nothing but
            # stop the whole flow. Consumers dedupe by ce_source + ce_id, so duplicates are safe.
            deduped = False
            claims = [Claim.NEW] * len(keys)
            self.metrics.dedupe_unavailable.inc(len(keys))
            self._log_unavailable(exc)
        if self._committing:
            # Published here, the commit on its way: that is a duplicate, not a copy in flight.
            claims = [
                Claim.DUPLICATE if claim is Claim.IN_FLIGHT and key in self._committing else claim
                for key, claim in zip(keys, claims, strict=True)
            ]
        fresh_keys = [key for key, claim in zip(keys, claims, strict=True) if claim is Claim.NEW]
        if Claim.IN_FLIGHT in claims:
            await self._release(fresh_keys, deduped)
            raise DuplicateInFlight("a copy of this event is being published; retry shortly")
        if delivery_id is not None and claims.pop() is Claim.DUPLICATE:
            # A retry of a delivery that already succeeded: the sender's retry, not new events.
            await self._release(fresh_keys, deduped)
            return self._count(events, fresh=[], duplicate_copies=duplicate_copies)
        fresh = [event for event, claim in zip(events, claims, strict=True) if claim is Claim.NEW]
        if fresh:
            started = time.perf_counter()
            try:
                await self.sink.publish(fresh)
            except BaseException:
                # Failed, timed out, or cancelled (the shutdown deadline cancels requests still
                # running): no Ack goes out, so a resend must find no claim, here or on a replica.
                await self._release(fresh_keys, deduped)
                raise
            self.metrics.publish_latency.observe(time.perf_counter() - started)
            self._count_published(fresh)
        if deduped:
            self._commit_soon(fresh_keys)
        return self._count(events, fresh, duplicate_copies)

    async def settle(self) -> None:
        """Return once every commit started so far has landed or failed (before the store stops)."""
        while (committer := self._committer) is not None and not committer.done():
            await asyncio.wait([committer])

    def _count_published(self, fresh: list[CloudEvent]) -> None:
        # One counter update per kind, not per event: a message carries up to 100 events.
        published: dict[str, int] = {}
        for event in fresh:
            published[event.kind] = published.get(event.kind, 0) + 1
        for kind, count in published.items():
            self.metrics.events_published.labels(kind).inc(count)

    def _count(self, events: list[CloudEvent], fresh: list[CloudEvent], duplicate_copies: int) -> Delivery:
        duplicates = len(events) - len(fresh) + duplicate_copies
        if duplicates and events:
            self.metrics.duplicates.labels(events[0].kind).inc(duplicates)
        return Delivery(accepted=len(fresh), duplicates=duplicates)

    def _commit_soon(self, keys: list[str]) -> None:
        if not keys:
            return
        self._committing.update(keys)
        self._commit_queue.extend(keys)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued(), name="dedupe-commits")
            # Also when it is cancelled before its first step, where its own finally never runs.
            self._committer.add_done_callback(self._committer_done)

    def _committer_done(self, committer: asyncio.Task[None]) -> None:
        if self._committer is committer:
            self._committer = None
            self._committing.difference_update(self._commit_queue)
            self._commit_queue.clear()

    async def _commit_queued(self) -> None:
        try:
            while self._commit_queue:
                keys = self._commit_queue[:MAX_KEYS_PER_COMMIT]
                del self._commit_queue[:MAX_KEYS_PER_COMMIT]
                try:
                    await self.dedupe.commit(keys)
                except DedupeUnavailable as exc:
                    # The events are stored; only a later resend may be published twice.
                    self.metrics.dedupe_unavailable.inc(len(keys))
                    self._log_unavailable(exc)
                except Exception:  # a bug in a store must not stop later commits
                    logger.exception("dedupe commit failed")
                finally:
                    self._committing.difference_update(keys)
        finally:
            self._committer = None

    async def _release(self, keys: list[str], deduped: bool) -> None:
        if not keys or not deduped:
            return
        try:
            await self.dedupe.release(keys)
        except DedupeUnavailable as exc:
            # The claim expires on its own shortly after the publish timeout.
            self._log_unavailable(exc)

    def _log_unavailable(self, exc: DedupeUnavailable) -> None:
        if self._unavailable_log.ready():
            logger.warning("dedupe store unavailable; accepting without dedupe", extra={"error": str(exc)})
