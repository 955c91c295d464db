"""The dedupe store shared by every replica, in Redis.

One key per event, ``{key_prefix}{ce_source} {ce_id}``, holding ``claimed`` (a copy is being
published; expires after the claim TTL so a crashed replica cannot block the event) or
``committed`` (published; kept for the commit TTL, past Salesforce's 24 h retry window).

Each call is one round trip whatever the batch size (an Outbound Message carries up to 100
notifications): all three are Lua scripts, so a claim and the read of the value it lost to happen
atomically, and a release can never delete a commit that landed in between. A script for commit
too, rather than a pipeline of SETs: with 100 keys redis-py's pipeline spends ~1.4 ms in Python
encoding and parsing, the script ~0.3 ms. The calls of concurrent requests are joined into one
round trip per operation (``receiver.coalescing``): a round trip costs redis-py about 70 µs of
CPU whatever it carries, and without joining, Redis dedupe halved the requests served per second.

Redis Cluster (``cluster=True``): a script may only touch keys of one hash slot, so every key
carries the hash tag ``{sf-receiver}`` and all marks live on one shard. Dedupe asks little of
Redis (two small calls per request), so one shard is enough; what it must hold is the marks of
25 h, about 140 bytes each. A single Redis keeps the untagged prefix, so upgrading does not
forget the marks it holds.

Redis is an optimisation of the delivery guarantee, not part of it: when it does not answer
within ``operation_timeout_s`` the call raises ``DedupeUnavailable`` and the pipeline publishes
without dedupe. Hence short socket timeouts and no client-side retries: a retried claim whose
first attempt did reach Redis would find its own claim and answer IN_FLIGHT until it expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from receiver.coalescing import BatchOperation, CoalescedCallInterrupted, CoalescedCalls, Unheard
from receiver.dedupe import Claim, DedupeUnavailable
from receiver.errors import ConfigurationError

logger = logging.getLogger("receiver.redis_dedupe")

# The codes the claim script answers with, per key.
_NEW: Final = 0
_DUPLICATE: Final = 1
_IN_FLIGHT: Final = 2

# KEYS: the dedupe keys; ARGV[1]: the claim TTL in milliseconds. Returns one code per key.
_CLAIM_SCRIPT: Final = """
local results = {}
for i, key in ipairs(KEYS) do
    if redis.call('SET', key, 'claimed', 'NX', 'PX', ARGV[1]) then
        results[i] = 0
    elseif redis.call('GET', key) == 'committed' then
        results[i] = 1
    else
        results[i] = 2
    end
end
return results
"""

# KEYS: the published keys; ARGV[1]: the commit TTL in milliseconds.
_COMMIT_SCRIPT: Final = """
for _, key in ipairs(KEYS) do
    redis.call('SET', key, 'committed', 'PX', ARGV[1])
end
return #KEYS
"""

# Compare-and-delete: a release that raced with a commit (or a claim that already expired and
# was committed by another replica) must leave the commit in place.
_RELEASE_SCRIPT: Final = """
local released = 0
for _, key in ipairs(KEYS) do
    if redis.call('GET', key) == 'claimed' then
        redis.call('DEL', key)
        released = released + 1
    end
end
return released
"""

#: What a call to Redis may raise when Redis is down, slow or unreachable. OSError covers
#: TimeoutError and socket errors; the cluster client's own root is not a RedisError.
_REDIS_FAILURES: Final = (RedisError, OSError, RedisClusterException)

_CLAIM_RESULTS: Final = {_NEW: Claim.NEW, _DUPLICATE: Claim.DUPLICATE, _IN_FLIGHT: Claim.IN_FLIGHT}
_Answer = TypeVar("_Answer")
#: The most keys one joined round trip carries: a script of 1,000 SETs holds Redis for about 1 ms.
MAX_KEYS_PER_ROUND_TRIP: Final = 1000
KEY_PREFIX: Final = "sf-receiver:dedupe:"
#: On Redis Cluster: the hash tag puts every key in one slot, where one script may touch them all.
CLUSTER_KEY_PREFIX: Final = "{sf-receiver}:dedupe:"


def redact_url(url: str) -> str:
    """The URL without its user, password and query (which may carry ``password=``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    credentials = "***@" if parts.username or parts.password else ""
    netloc = f"{credentials}{host}:{port}" if port is not None else f"{credentials}{host}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def _secrets_in(url: str) -> list[str]:
    parts = urlsplit(url)
    secrets = parse_qs(parts.query).get("password", [])
    if parts.password:
        secrets.append(parts.password)
    return [secret for secret in secrets if secret]


@dataclass(frozen=True, slots=True)
class _Connection:
    """What ``start`` creates and ``stop`` closes, together."""

    client: Redis | RedisCluster
    claims: CoalescedCalls[Claim]
    commits: CoalescedCalls[None]
    releases: CoalescedCalls[None]


class RedisDedupeStore:
    """``DedupeStore`` in one Redis, or a Redis Cluster (``cluster``; see the module docstring).

    ``claim``, ``commit`` and ``release`` raise ``DedupeUnavailable`` when Redis fails or does
    not answer in time; the client reconnects by itself on the next call once Redis is back.
    """

    def __init__(
        self,
        url: str,
        *,
        claim_ttl_s: float,
        commit_ttl_s: float,
        key_prefix: str | None = None,
        operation_timeout_s: float = 0.5,
        cluster: bool = False,
    ) -> None:
        """``key_prefix`` defaults to ``KEY_PREFIX``, or ``CLUSTER_KEY_PREFIX`` with ``cluster``;
        a prefix given for a cluster must hold a hash tag (``{...}``)."""
        if claim_ttl_s <= 0 or commit_ttl_s <= 0 or operation_timeout_s <= 0:
            raise ConfigurationError("dedupe TTLs and the Redis operation timeout must be positive")
        self._url = url
        self.redacted_url = redact_url(url)
        self.claim_ttl_ms = max(1, round(claim_ttl_s * 1000))
        self.commit_ttl_ms = max(1, round(commit_ttl_s * 1000))
        if key_prefix is None:
            key_prefix = CLUSTER_KEY_PREFIX if cluster else KEY_PREFIX
        if cluster and not re.search(r"\{[^{}]+\}", key_prefix):
            raise ConfigurationError("a Redis Cluster key prefix needs a hash tag, e.g. {sf-receiver}:")
        self.key_prefix = key_prefix
        self.cluster = cluster
        self.operation_timeout_s = operation_timeout_s
        self._connection: _Connection | None = None
        self._giving_back: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"RedisDedupeStore(url={self.redacted_url!r}, key_prefix={self.key_prefix!r})"

    async def __aenter__(self) -> RedisDedupeStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create the client and load the scripts; a Redis that is down is logged, not raised.

        Raises ``ConfigurationError`` when the URL cannot be parsed.
        """
        if self._connection is not None:
            return
        client_class = RedisCluster if self.cluster else Redis
        try:
            client = client_class.from_url(
                self._url,
                socket_timeout=self.operation_timeout_s,
                socket_connect_timeout=self.operation_timeout_s,
                retry=Retry(NoBackoff(), 0),
                # RESP2 on purpose: on RESP3 redis-py 8 turns on maintenance notifications, which
                # skip the pool's check for connections the server closed (so the first call after
                # a Redis restart failed) and relax timeouts to 20 s during a maintenance.
                protocol=2,
            )
        except ValueError as exc:
            # redis-py's message names the problem, not the URL; ours must not echo it either.
            raise ConfigurationError(f"RECEIVER_REDIS_URL is not a usable Redis URL: {exc}") from None
        claim_script = client.register_script(_CLAIM_SCRIPT)
        commit_script = client.register_script(_COMMIT_SCRIPT)
        release_script = client.register_script(_RELEASE_SCRIPT)

        async def claim(keys: list[str]) -> list[Claim]:
            codes = await self._evaluate("claim", claim_script, keys, [self.claim_ttl_ms])
            return [_CLAIM_RESULTS[int(code)] for code in codes]

        async def commit(keys: list[str]) -> list[None]:
            await self._evaluate("commit", commit_script, keys, [self.commit_ttl_ms])
            return [None] * len(keys)

        async def release(keys: list[str]) -> list[None]:
            await self._evaluate("release", release_script, keys, [])
            return [None] * len(keys)

        releases = self._joining(release)

        def give_back(keys: Sequence[str], answers: Sequence[Claim]) -> None:
            # Claims taken for a request that gave up on them (and published without dedupe):
            # kept, they would make the event's resends 503 until they expired.
            taken = [key for key, answer in zip(keys, answers, strict=True) if answer is Claim.NEW]
            if taken:
                task = asyncio.create_task(self._give_back(releases, taken), name="dedupe-give-back")
                self._giving_back.add(task)
                task.add_done_callback(self._giving_back.discard)

        self._connection = _Connection(
            client,
            claims=self._joining(claim, unheard=give_back),
            commits=self._joining(commit),
            releases=releases,
        )
        try:
            # Loading now saves the first request the NOSCRIPT round trips; the scripts reload
            # themselves after a Redis restart flushed its script cache.
            async with asyncio.timeout(self._deadline_s):
                for script in (_CLAIM_SCRIPT, _COMMIT_SCRIPT, _RELEASE_SCRIPT):
                    await client.script_load(script)
        except _REDIS_FAILURES as exc:
            logger.warning(
                "redis dedupe store unreachable at start; accepting without dedupe until it answers",
                extra={"redis": self.redacted_url, "error": self._describe(exc)},
            )

    async def stop(self) -> None:
        """Close the client; idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            # Calls still out end within the deadline, answered or failed, before the client goes.
            for calls in (connection.claims, connection.commits, connection.releases):
                await calls.wait_idle()
            if self._giving_back:
                await asyncio.wait(self._giving_back)
            await connection.client.aclose()

    async def claim(self, keys: Sequence[str]) -> list[Claim]:
        """Claim each key; raises ``DedupeUnavailable`` when Redis cannot answer."""
        if not keys:
            return []
        return await self._joined("claim", self._connected().claims, keys)

    async def commit(self, keys: Sequence[str]) -> None:
        """Mark published keys as done for the commit TTL; raises ``DedupeUnavailable``."""
        if keys:
            await self._joined("commit", self._connected().commits, keys)

    async def release(self, keys: Sequence[str]) -> None:
        """Forget claims (never commits) so a resend is published; raises ``DedupeUnavailable``."""
        if keys:
            await self._joined("release", self._connected().releases, keys)

    def _joining(
        self, operation: BatchOperation[_Answer], *, unheard: Unheard[_Answer] | None = None
    ) -> CoalescedCalls[_Answer]:
        # Each caller's wait is bounded too: behind a slow round trip it would otherwise wait
        # for that one and then its own.
        return CoalescedCalls(operation, max_keys=MAX_KEYS_PER_ROUND_TRIP, deadline_s=self._deadline_s, unheard=unheard)

    async def _give_back(self, releases: CoalescedCalls[None], keys: list[str]) -> None:
        # Redis failing: the claims expire with their TTL, as the README says.
        with contextlib.suppress(TimeoutError, CoalescedCallInterrupted, DedupeUnavailable):
            await releases.call(keys)

    async def _joined(self, operation: str, calls: CoalescedCalls[_Answer], keys: Sequence[str]) -> list[_Answer]:
        try:
            return await calls.call(self._keys(keys))
        except (TimeoutError, CoalescedCallInterrupted) as exc:
            raise self._unavailable(operation, exc) from exc

    async def _evaluate(self, operation: str, script: AsyncScript, keys: list[str], args: list[int]) -> list[int]:
        """One round trip of a script, for the keys of every call joined into it."""
        try:
            async with asyncio.timeout(self._deadline_s):
                answer = await script(keys=keys, args=args)
        except _REDIS_FAILURES as exc:
            raise self._unavailable(operation, exc) from exc
        return answer if isinstance(answer, list) else []

    @property
    def _deadline_s(self) -> float:
        # Socket timeouts bound each connect and read; this bounds the whole call (a connect
        # plus a read, or a NOSCRIPT reload), so a request never waits on Redis much longer.
        return self.operation_timeout_s * 2

    def _keys(self, keys: Sequence[str]) -> list[str]:
        return [f"{self.key_prefix}{key}" for key in keys]

    def _connected(self) -> _Connection:
        if self._connection is None:
            raise DedupeUnavailable(f"redis dedupe store at {self.redacted_url} is not started")
        return self._connection

    def _describe(self, exc: BaseException) -> str:
        # redis-py names host and port only, but a password must not leak even if that changes.
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in _secrets_in(self._url):
            text = text.replace(secret, "***")
        return text

    def _unavailable(self, operation: str, exc: BaseException) -> DedupeUnavailable:
        return DedupeUnavailable(f"redis {operation} at {self.redacted_url} failed: {self._describe(exc)}")
