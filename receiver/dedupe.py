"""Dedupe by ``ce_source`` + ``ce_id``: Salesforce resends, even after an Ack.

Claim before publishing, commit after the publish succeeded, release when it failed. A claim
is short-lived (a little over the publish timeout) so that a crashed replica cannot block an
event; a commit lives at least 25 hours, past Salesforce's 24 h retry window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import Enum
from itertools import islice
from typing import Protocol


class Claim(Enum):
    NEW = "new"
    """Nobody has this event: the claimant publishes it."""
    DUPLICATE = "duplicate"
    """Already published: answer as a duplicate, publish nothing."""
    IN_FLIGHT = "in_flight"
    """Another copy is being published right now: its outcome is unknown yet."""


class DedupeStore(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def claim(self, keys: Sequence[str]) -> list[Claim]:
        """Claim each key; raises ``DedupeUnavailable`` when the store cannot answer."""

    async def commit(self, keys: Sequence[str]) -> None:
        """Mark published keys as done for the commit TTL."""

    async def release(self, keys: Sequence[str]) -> None:
        """Forget claims whose publish failed, so a resend is published."""


class DedupeUnavailable(Exception):
    """The shared store did not answer; the caller proceeds without dedupe."""


class MemoryDedupeStore:
    """One process's dedupe: bounded in entries (oldest evicted first), with TTLs.

    Entries live in a plain dict of ``key -> expiry`` (monotonic seconds), negative while
    claimed and positive once committed. Holding only strings and floats keeps the dict out of
    the garbage collector's sight: a dict of tuples (or an OrderedDict) of a million entries is
    traversed by every full collection, a 40 ms pause at a time on the request path. Insertion
    order is the eviction order: a key written again is moved to the end, and past the bound
    the oldest are dropped in chunks, so that eviction does not rescan the deleted slots at the
    front of the dict once per new key.
    """

    def __init__(
        self,
        *,
        claim_ttl_s: float,
        commit_ttl_s: float,
        max_entries: int,
        on_early_eviction: Callable[[int], None] | None = None,
    ) -> None:
        self.claim_ttl_s = claim_ttl_s
        self.commit_ttl_s = commit_ttl_s
        self.max_entries = max_entries
        #: Told how many live entries (committed or claimed, not yet expired) an eviction dropped:
        #: each is an event whose resend would be published again, the window cut short.
        self.on_early_eviction = on_early_eviction
        # Evicting down to this many leaves room for a chunk of new keys before the next scan.
        self._evict_to = max_entries - max_entries // 16
        self._entries: dict[str, float] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, keys: Sequence[str]) -> list[Claim]:
        now = time.monotonic()
        entries = self._entries
        claimed_until = -(now + self.claim_ttl_s)
        results = []
        for key in keys:
            expiry = entries.get(key)
            if expiry is not None:
                if expiry > now:
                    results.append(Claim.DUPLICATE)
                    continue
                if -expiry > now:
                    results.append(Claim.IN_FLIGHT)
                    continue
                del entries[key]  # expired: written again below, at the end
            entries[key] = claimed_until
            results.append(Claim.NEW)
        if len(entries) > self.max_entries:
            self._evict()
        return results

    def _evict(self) -> None:
        entries = self._entries
        now = time.monotonic()
        live = 0
        for key in list(islice(entries, len(entries) - self._evict_to)):
            if abs(entries.pop(key)) > now:
                live += 1
        if live and self.on_early_eviction is not None:
            self.on_early_eviction(live)

    async def commit(self, keys: Sequence[str]) -> None:
        committed_until = time.monotonic() + self.commit_ttl_s
        entries = self._entries
        for key in keys:
            entries.pop(key, None)
            entries[key] = committed_until
        if len(entries) > self.max_entries:
            self._evict()

    async def release(self, keys: Sequence[str]) -> None:
        entries = self._entries
        for key in keys:
            expiry = entries.get(key)
            if expiry is not None and expiry < 0:
                del entries[key]
