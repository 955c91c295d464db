"""Dedupe by ``ce_source`` + ``ce_id``: Salesforce resends, even after an Ack.

Claim before publishing, commit after the publish succeeded, release when it failed. A claim
is short-lived (a little over the publish timeout) so that a crashed replica cannot block an
event; a commit lives at least 25 hours, past Salesforce's 24 h retry window.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from enum import Enum
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


_CLAIMED = 0
_COMMITTED = 1


class MemoryDedupeStore:
    """One process's dedupe: bounded in entries (oldest evicted first), with TTLs."""

    def __init__(self, *, claim_ttl_s: float, commit_ttl_s: float, max_entries: int) -> None:
        self.claim_ttl_s = claim_ttl_s
        self.commit_ttl_s = commit_ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, keys: Sequence[str]) -> list[Claim]:
        now = time.monotonic()
        entries = self._entries
        results = []
        for key in keys:
            entry = entries.get(key)
            if entry is not None and entry[1] > now:
                results.append(Claim.DUPLICATE if entry[0] == _COMMITTED else Claim.IN_FLIGHT)
                continue
            entries[key] = (_CLAIMED, now + self.claim_ttl_s)
            entries.move_to_end(key)
            results.append(Claim.NEW)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        return results

    async def commit(self, keys: Sequence[str]) -> None:
        expires = time.monotonic() + self.commit_ttl_s
        for key in keys:
            self._entries[key] = (_COMMITTED, expires)
            self._entries.move_to_end(key)

    async def release(self, keys: Sequence[str]) -> None:
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == _CLAIMED:
                del self._entries[key]
