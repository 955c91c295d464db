"""Both dedupe stores against the same contract, the Redis one against real redis-server processes."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from receiver.app import build_dedupe, build_services, started
from receiver.dedupe import Claim, DedupeStore, DedupeUnavailable, MemoryDedupeStore
from receiver.errors import ConfigurationError, DuplicateInFlight, PublishFailed
from receiver.event import OUTBOUND_MESSAGE, CloudEvent, Connection
from receiver.metrics import Metrics
from receiver.pipeline import MAX_KEYS_PER_COMMIT, Delivery, Pipeline
from receiver.redis_dedupe import RedisDedupeStore, redact_url
from tests.conftest import SettingsFactory

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6390/0")
CLAIM_TTL_S = 30.0
COMMIT_TTL_S = 90_000.0
ORG_ID = "00D5g000004Xz1AEAS"

StoreFactory = Callable[..., Awaitable[DedupeStore]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of this test alone, on a free port, so it can be stopped and paused."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.process = await asyncio.create_subprocess_exec(
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not await self.answers_ping():
            assert self.process.returncode is None, f"redis-server exited with {self.process.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            await asyncio.sleep(0.02)

    async def answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return await asyncio.wait_for(reader.readline(), 1) == b"+PONG\r\n"
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            await writer.wait_closed()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Paused inside, resumed on the way out whatever happened."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
        await process.wait()


class RecordingSink:
    """Our ``Sink`` protocol, in memory: records what it stores, or fails when told to."""

    def __init__(self) -> None:
        self.published: list[CloudEvent] = []
        self.failing = False
        #: When set, publish waits for it: a broker that does not answer.
        self.stall: asyncio.Event | None = None
        self.publishing = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        self.publishing.set()
        if self.stall is not None:
            await self.stall.wait()
        if self.failing:
            raise PublishFailed("the test told the sink to fail")
        self.published.extend(events)

    async def quarantine(self, record: dict[str, Any]) -> None:
        return None

    async def record_raw(self, line: bytes) -> None:
        return None

    async def is_ready(self) -> bool:
        return not self.failing

    def describe(self) -> dict[str, object]:
        return {"failing": self.failing}


def outbound_event(notification_id: str) -> CloudEvent:
    record_id = "0015g00000N1ABCAA3"
    return CloudEvent(
        type=OUTBOUND_MESSAGE,
        id=notification_id,
        organization_id=ORG_ID,
        connection=Connection(connection_id="acme-prod", integration="salesforce"),
        time="2024-05-01T12:00:00.000Z",
        key=f"{ORG_ID}:{record_id}",
        data={"organization_id": ORG_ID, "record_id": record_id, "fields": {"Name": "Acme"}},
        object="Account",
        subject=record_id,
    )


def unique_keys(count: int) -> list[str]:
    return [f"/salesforce/orgs/{ORG_ID} {uuid.uuid4().hex}" for _ in range(count)]


async def delete_prefixed(url: str, prefix: str) -> None:
    async with Redis.from_url(url) as admin:
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await admin.delete(*keys)


@pytest.fixture(scope="session")
async def redis_url() -> str:
    """The shared Redis of scripts/services; a test that needs it fails when it is down."""
    try:
        async with Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2, socket_timeout=2) as probe:
            await probe.ping()
    except (RedisError, OSError) as exc:
        pytest.fail(f"Redis at {redact_url(TEST_REDIS_URL)} is unreachable ({exc!r}); run scripts/services start")
    return TEST_REDIS_URL


@pytest.fixture
def key_prefix() -> str:
    """A prefix of this test alone, so concurrent runs on the shared Redis never collide."""
    return f"test-dedupe:{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_store_factory(
    redis_url: str, key_prefix: str
) -> AsyncIterator[Callable[..., Awaitable[RedisDedupeStore]]]:
    """Started ``RedisDedupeStore``s on the shared Redis, stopped and their keys deleted after the test."""
    stores: list[RedisDedupeStore] = []

    async def make(
        *, claim_ttl_s: float = CLAIM_TTL_S, commit_ttl_s: float = COMMIT_TTL_S, url: str = redis_url
    ) -> RedisDedupeStore:
        store = RedisDedupeStore(url, claim_ttl_s=claim_ttl_s, commit_ttl_s=commit_ttl_s, key_prefix=key_prefix)
        stores.append(store)
        await store.start()
        return store

    yield make
    for store in stores:
        await store.stop()
    await delete_prefixed(redis_url, key_prefix)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Builds started stores of one kind; the tests using it pin what both kinds share."""
    if request.param == "redis":
        factory: StoreFactory = request.getfixturevalue("redis_store_factory")
        return factory

    async def make(*, claim_ttl_s: float = CLAIM_TTL_S, commit_ttl_s: float = COMMIT_TTL_S) -> DedupeStore:
        store = MemoryDedupeStore(claim_ttl_s=claim_ttl_s, commit_ttl_s=commit_ttl_s, max_entries=10_000)
        await store.start()
        return store

    return make


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A redis-server on a free port that the test may stop, restart or pause."""
    server = PrivateRedis(tmp_path)
    await server.start()
    yield server
    await server.stop()


# --- the contract both stores keep ---------------------------------------------------------


async def test_claim_of_new_key_is_new(make_store: StoreFactory) -> None:
    """A key nobody claimed is NEW: the claimant publishes it."""
    store = await make_store()
    assert await store.claim(unique_keys(1)) == [Claim.NEW]


async def test_second_claim_while_claimed_is_in_flight(make_store: StoreFactory) -> None:
    """A key claimed and neither committed nor released is IN_FLIGHT for the next claimant."""
    store = await make_store()
    keys = unique_keys(1)
    await store.claim(keys)
    assert await store.claim(keys) == [Claim.IN_FLIGHT]


async def test_claim_after_commit_is_duplicate(make_store: StoreFactory) -> None:
    """A committed key is a DUPLICATE: nothing is published again."""
    store = await make_store()
    keys = unique_keys(1)
    await store.claim(keys)
    await store.commit(keys)
    assert await store.claim(keys) == [Claim.DUPLICATE]


async def test_claim_after_release_is_new_again(make_store: StoreFactory) -> None:
    """A released claim (failed publish) lets the resend be published."""
    store = await make_store()
    keys = unique_keys(1)
    await store.claim(keys)
    await store.release(keys)
    assert await store.claim(keys) == [Claim.NEW]


async def test_release_does_not_remove_commit(make_store: StoreFactory) -> None:
    """A release arriving after a commit leaves the commit in place."""
    store = await make_store()
    keys = unique_keys(1)
    await store.claim(keys)
    await store.commit(keys)
    await store.release(keys)
    assert await store.claim(keys) == [Claim.DUPLICATE]


async def test_claim_expires_after_claim_ttl(make_store: StoreFactory) -> None:
    """A claim whose claimant vanished frees the key once the claim TTL passed."""
    store = await make_store(claim_ttl_s=0.2)
    keys = unique_keys(1)
    await store.claim(keys)
    await asyncio.sleep(0.3)
    assert await store.claim(keys) == [Claim.NEW]


async def test_batch_claim_answers_each_key_in_order(make_store: StoreFactory) -> None:
    """One claim of a batch answers per key, in the order given, whatever each key's state."""
    store = await make_store()
    committed, claimed, fresh = unique_keys(3)
    await store.claim([committed, claimed])
    await store.commit([committed])
    assert await store.claim([fresh, committed, claimed]) == [Claim.NEW, Claim.DUPLICATE, Claim.IN_FLIGHT]


async def test_empty_batch_is_answered_without_work(make_store: StoreFactory) -> None:
    """Claiming, committing or releasing no key at all is a no-op."""
    store = await make_store()
    assert await store.claim([]) == []
    await store.commit([])
    await store.release([])


# --- memory store ----------------------------------------------------------------------------


async def test_memory_store_evicts_oldest_beyond_max_entries() -> None:
    """The memory store holds at most max_entries keys, dropping the oldest first."""
    store = MemoryDedupeStore(claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, max_entries=2)
    oldest, middle, newest = unique_keys(3)
    await store.claim([oldest, middle, newest])
    assert len(store) == 2
    assert await store.claim([middle, newest]) == [Claim.IN_FLIGHT, Claim.IN_FLIGHT]
    assert await store.claim([oldest]) == [Claim.NEW]


async def test_memory_store_keeps_the_newest_keys_past_the_bound() -> None:
    """Past max_entries the oldest keys go (a chunk at a time) and the newest stay duplicates."""
    store = MemoryDedupeStore(claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, max_entries=160)
    keys = unique_keys(400)
    for start in range(0, 400, 40):
        await store.claim(keys[start : start + 40])
        await store.commit(keys[start : start + 40])
    assert len(store) <= 160
    assert await store.claim(keys[-140:]) == [Claim.DUPLICATE] * 140
    assert await store.claim(keys[:1]) == [Claim.NEW]


async def test_dropping_live_marks_is_reported_and_expired_ones_are_not() -> None:
    """Evicting a mark still within its TTL shortens the dedupe window: the store says how many."""
    reported: list[int] = []
    store = MemoryDedupeStore(
        claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, max_entries=16, on_early_eviction=reported.append
    )
    keys = unique_keys(17)
    await store.claim(keys[:16])
    await store.commit(keys[:16])
    assert reported == []
    await store.claim(keys[16:])
    assert reported == [2]  # evicted down to 15/16 of the bound: the two oldest, both live


async def test_dropping_expired_marks_is_not_reported() -> None:
    reported: list[int] = []
    store = MemoryDedupeStore(
        claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=0.01, max_entries=16, on_early_eviction=reported.append
    )
    keys = unique_keys(17)
    await store.claim(keys[:16])
    await store.commit(keys[:16])
    await asyncio.sleep(0.05)
    await store.claim(keys[16:])
    assert len(store) <= 16
    assert reported == []


async def test_a_full_memory_store_is_counted_and_warned_about(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The app's store counts early evictions in receiver_dedupe_evicted_early_total and warns once."""
    metrics = Metrics()
    store = build_dedupe(make_settings(dedupe_max_entries=16), metrics)
    keys = unique_keys(40)
    with caplog.at_level(logging.WARNING, logger="receiver.app"):
        for key in keys:
            await store.claim([key])
            await store.commit([key])
    assert metrics.registry.get_sample_value("receiver_dedupe_evicted_early_total") == 40 - len(store)
    warnings = [record for record in caplog.records if "dedupe is full" in record.getMessage()]
    assert len(warnings) == 1


async def test_memory_store_is_invisible_to_the_garbage_collector() -> None:
    """A million entries must not be traversed by every full collection: the map stays untracked."""
    store = MemoryDedupeStore(claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, max_entries=100)
    keys = unique_keys(10)
    await store.claim(keys)
    await store.commit(keys[:5])
    await store.release(keys[5:])
    assert not gc.is_tracked(store._entries)


# --- Redis store -----------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_keys_carry_claim_and_commit_ttls(
    redis_store_factory: Callable[..., Awaitable[RedisDedupeStore]], redis_url: str, key_prefix: str
) -> None:
    """A claim lives for the claim TTL and a commit for the commit TTL (past the 24 h retries)."""
    store = await redis_store_factory()
    keys = unique_keys(1)
    async with Redis.from_url(redis_url) as admin:
        await store.claim(keys)
        assert await admin.get(key_prefix + keys[0]) == b"claimed"
        assert 0 < await admin.pttl(key_prefix + keys[0]) <= CLAIM_TTL_S * 1000
        await store.commit(keys)
        assert await admin.get(key_prefix + keys[0]) == b"committed"
        assert (COMMIT_TTL_S - 60) * 1000 < await admin.pttl(key_prefix + keys[0]) <= COMMIT_TTL_S * 1000


@pytest.mark.redis
async def test_two_replicas_share_claims_and_commits(
    redis_store_factory: Callable[..., Awaitable[RedisDedupeStore]],
) -> None:
    """Two stores on one Redis (two replicas) see each other's claims and commits."""
    replica_a = await redis_store_factory()
    replica_b = await redis_store_factory()
    keys = unique_keys(1)
    assert await replica_a.claim(keys) == [Claim.NEW]
    assert await replica_b.claim(keys) == [Claim.IN_FLIGHT]
    await replica_a.commit(keys)
    assert await replica_b.claim(keys) == [Claim.DUPLICATE]


async def evalsha_calls(url: str) -> int:
    """Script round trips Redis has served so far (``INFO commandstats``)."""
    async with Redis.from_url(url) as admin:
        stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_calls_share_round_trips_and_answer_each_caller(private_redis: PrivateRedis) -> None:
    """50 requests claiming at once cost Redis a few script calls, not 50, and each gets its own answer."""
    async with RedisDedupeStore(private_redis.url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S) as store:
        batches = [unique_keys(2) for _ in range(50)]
        before = await evalsha_calls(private_redis.url)
        claims = await asyncio.gather(*(store.claim(keys) for keys in batches))
        assert claims == [[Claim.NEW, Claim.NEW]] * 50
        await asyncio.gather(*(store.commit(keys) for keys in batches[:25]))
        claims = await asyncio.gather(*(store.claim(keys) for keys in batches))
        assert claims == [[Claim.DUPLICATE] * 2] * 25 + [[Claim.IN_FLIGHT] * 2] * 25
        round_trips = await evalsha_calls(private_redis.url) - before
        assert round_trips <= 6, f"{round_trips} script calls for 125 concurrent calls"


async def test_concurrent_claims_of_one_key_have_one_winner(private_redis: PrivateRedis) -> None:
    """Copies of one event claimed at once, joined into one round trip: one NEW, the rest IN_FLIGHT."""
    async with RedisDedupeStore(private_redis.url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S) as store:
        key = unique_keys(1)
        claims = await asyncio.gather(*(store.claim(key) for _ in range(20)))
    assert [claim for [claim] in claims].count(Claim.NEW) == 1
    assert [claim for [claim] in claims].count(Claim.IN_FLIGHT) == 19
    assert claims[0] == [Claim.NEW], "the first caller's claim is the first in the joined call"


async def test_paused_redis_fails_every_waiting_call_within_the_deadline(private_redis: PrivateRedis) -> None:
    """Calls queued behind a hung round trip fail with it, not one deadline after another."""
    async with RedisDedupeStore(
        private_redis.url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, operation_timeout_s=0.2
    ) as store:
        assert await store.claim(unique_keys(1)) == [Claim.NEW]
        with private_redis.paused():
            started = time.perf_counter()
            first = asyncio.create_task(store.claim(unique_keys(1)))
            await asyncio.sleep(0.05)
            queued = [asyncio.create_task(store.claim(unique_keys(1))) for _ in range(20)]
            results = await asyncio.gather(first, *queued, return_exceptions=True)
            elapsed = time.perf_counter() - started
        assert all(isinstance(result, DedupeUnavailable) for result in results), results
        # One deadline (2 x 0.2 s) for all 21, with slack for a loaded machine; 21 deadlines would be 8 s.
        assert elapsed < 1.5
        assert await store.claim(unique_keys(1)) == [Claim.NEW]


async def test_a_claim_its_request_gave_up_on_is_given_back(private_redis: PrivateRedis) -> None:
    """A request cut off (shutdown, a hang-up) while its claim's round trip is out publishes
    nothing; the claim Redis then takes is released, so the resend is NEW at once (it was
    IN_FLIGHT until the claim TTL)."""
    async with RedisDedupeStore(
        private_redis.url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, operation_timeout_s=1.0
    ) as store:
        keys = unique_keys(1)
        with private_redis.paused():
            request = asyncio.create_task(store.claim(keys))
            await asyncio.sleep(0.1)  # the round trip is out, Redis holds it
            request.cancel()
            await asyncio.sleep(0.05)
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(0.3)  # Redis answers NEW to nobody; the claim goes back
        assert await store.claim(keys) == [Claim.NEW]


async def test_redis_down_start_succeeds_and_calls_fail_fast() -> None:
    """With Redis down, start() does not raise and every call raises DedupeUnavailable in < 2 s."""
    store = RedisDedupeStore(f"redis://127.0.0.1:{free_port()}/0", claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S)
    await store.start()
    try:
        keys = unique_keys(3)
        for call in (store.claim, store.commit, store.release):
            started = time.perf_counter()
            with pytest.raises(DedupeUnavailable) as raised:
                await call(keys)
            assert time.perf_counter() - started < 2
            assert raised.value.__cause__ is not None
    finally:
        await store.stop()


async def test_unavailable_error_does_not_reveal_password() -> None:
    """The DedupeUnavailable message names the Redis without the password of its URL."""
    store = RedisDedupeStore(
        f"redis://receiver:hunter2@127.0.0.1:{free_port()}/0?password=hunter3",
        claim_ttl_s=CLAIM_TTL_S,
        commit_ttl_s=COMMIT_TTL_S,
    )
    await store.start()
    try:
        with pytest.raises(DedupeUnavailable) as raised:
            await store.claim(unique_keys(1))
    finally:
        await store.stop()
    message = f"{raised.value} {store!r}"
    assert "127.0.0.1" in message
    assert "hunter2" not in message
    assert "hunter3" not in message


async def test_calls_before_start_or_after_stop_are_unavailable() -> None:
    """A store not started (or stopped, twice) answers DedupeUnavailable instead of crashing."""
    store = RedisDedupeStore(TEST_REDIS_URL, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S)
    with pytest.raises(DedupeUnavailable):
        await store.claim(unique_keys(1))
    await store.stop()
    await store.stop()
    with pytest.raises(DedupeUnavailable):
        await store.commit(unique_keys(1))


async def test_unusable_url_is_configuration_error() -> None:
    """A URL redis-py cannot parse fails start-up as a ConfigurationError that does not echo it."""
    store = RedisDedupeStore("http://user:hunter2@example.com", claim_ttl_s=1, commit_ttl_s=1)
    with pytest.raises(ConfigurationError) as raised:
        await store.start()
    assert "hunter2" not in str(raised.value)


async def test_store_recovers_after_redis_restart(private_redis: PrivateRedis) -> None:
    """The same store instance fails while Redis is down and works again once it is back."""
    store = RedisDedupeStore(private_redis.url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S)
    await store.start()
    try:
        before, during, after = unique_keys(3)
        assert await store.claim([before]) == [Claim.NEW]
        await private_redis.stop()
        with pytest.raises(DedupeUnavailable):
            await store.claim([during])
        await private_redis.start()
        # The restart emptied Redis, its script cache included: both scripts must reload.
        assert await store.claim([after]) == [Claim.NEW]
        await store.release([after])
        await store.commit([after])
        assert await store.claim([after]) == [Claim.DUPLICATE]
    finally:
        await store.stop()


async def test_restart_between_calls_is_invisible(private_redis: PrivateRedis) -> None:
    """A pooled connection broken by a Redis restart is replaced before the next call uses it."""
    store = RedisDedupeStore(private_redis.url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S)
    await store.start()
    try:
        keys = unique_keys(1)
        assert await store.claim(keys) == [Claim.NEW]
        # Each call below raises DedupeUnavailable if it is handed the connection Redis closed.
        # Each restart also empties Redis (no persistence) and its script cache.
        await private_redis.stop()
        await private_redis.start()
        assert await store.claim(keys) == [Claim.NEW]
        await private_redis.stop()
        await private_redis.start()
        await store.commit(keys)
        assert await store.claim(keys) == [Claim.DUPLICATE]
        await private_redis.stop()
        await private_redis.start()
        await store.release(keys)
    finally:
        await store.stop()


async def test_paused_redis_costs_at_most_the_operation_deadline(private_redis: PrivateRedis) -> None:
    """A Redis that accepts connections but does not answer fails calls within the deadline, then recovers."""
    store = RedisDedupeStore(
        private_redis.url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, operation_timeout_s=0.2
    )
    await store.start()
    try:
        keys = unique_keys(1)
        assert await store.claim(keys) == [Claim.NEW]
        with private_redis.paused():
            for call in (store.claim, store.commit, store.release):
                started = time.perf_counter()
                with pytest.raises(DedupeUnavailable):
                    await call(keys)
                # The deadline is 2 x 0.2 s; the slack is for a loaded test machine.
                assert time.perf_counter() - started < 1.0
        assert await store.claim(keys) == [Claim.IN_FLIGHT]
    finally:
        await store.stop()


# --- through the pipeline --------------------------------------------------------------------


async def test_failed_publish_releases_claim_so_resend_is_published(make_store: StoreFactory) -> None:
    """A publish that failed releases its claim, so Salesforce's resend is published."""
    sink = RecordingSink()
    pipeline = Pipeline(sink, await make_store(), Metrics(), max_events_in_flight=100)
    event = outbound_event(f"04l5g{uuid.uuid4().hex[:13]}")
    sink.failing = True
    with pytest.raises(PublishFailed):
        await pipeline.deliver([event])
    sink.failing = False
    assert await pipeline.deliver([event]) == Delivery(accepted=1, duplicates=0)
    assert sink.published == [event]


async def test_cancelled_publish_releases_claim_so_resend_is_published(make_store: StoreFactory) -> None:
    """A publish cancelled mid-way (the shutdown deadline) releases its claim: the resend is published."""
    sink = RecordingSink()
    pipeline = Pipeline(sink, await make_store(), Metrics(), max_events_in_flight=100)
    event = outbound_event(f"04l5g{uuid.uuid4().hex[:13]}")
    sink.stall = asyncio.Event()
    stuck = asyncio.create_task(pipeline.deliver([event]))
    await sink.publishing.wait()
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    sink.stall = None
    assert await pipeline.deliver([event]) == Delivery(accepted=1, duplicates=0)
    assert sink.published == [event]


async def test_duplicate_after_success_publishes_nothing(make_store: StoreFactory) -> None:
    """A resend of a published event is answered as a duplicate and publishes nothing."""
    sink = RecordingSink()
    metrics = Metrics()
    pipeline = Pipeline(sink, await make_store(), metrics, max_events_in_flight=100)
    event = outbound_event(f"04l5g{uuid.uuid4().hex[:13]}")
    await pipeline.deliver([event])
    assert await pipeline.deliver([event]) == Delivery(accepted=0, duplicates=1)
    assert sink.published == [event]
    assert metrics.registry.get_sample_value("receiver_duplicates_total", {"kind": "outbound_message"}) == 1.0


async def test_redis_down_publishes_without_dedupe_and_counts_it() -> None:
    """With Redis down the events are still published, and each is counted as not deduped."""
    store = RedisDedupeStore(f"redis://127.0.0.1:{free_port()}/0", claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S)
    await store.start()
    sink = RecordingSink()
    metrics = Metrics()
    pipeline = Pipeline(sink, store, metrics, max_events_in_flight=100)
    events = [outbound_event(f"04l5g{uuid.uuid4().hex[:13]}") for _ in range(2)]
    try:
        assert await pipeline.deliver(events) == Delivery(accepted=2, duplicates=0)
    finally:
        await store.stop()
    assert sink.published == events
    assert metrics.registry.get_sample_value("receiver_dedupe_unavailable_total") == 2.0


class GatedCommits(MemoryDedupeStore):
    """The memory store whose commits wait for ``gate``: a slow or hung shared store."""

    def __init__(self) -> None:
        super().__init__(claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, max_entries=10_000)
        self.gate = asyncio.Event()
        self.commits_started = 0

    async def commit(self, keys: Sequence[str]) -> None:
        self.commits_started += 1
        await self.gate.wait()
        await super().commit(keys)


async def test_the_answer_does_not_wait_for_the_commit() -> None:
    """deliver returns once the publish succeeded, while the commit is still out; settle waits for it."""
    store = GatedCommits()
    pipeline = Pipeline(RecordingSink(), store, Metrics(), max_events_in_flight=100)
    event = outbound_event(f"04l5g{uuid.uuid4().hex[:13]}")
    assert await asyncio.wait_for(pipeline.deliver([event]), 5) == Delivery(accepted=1, duplicates=0)
    await asyncio.sleep(0.01)
    assert store.commits_started == 1
    settling = asyncio.create_task(pipeline.settle())
    await asyncio.sleep(0.01)
    assert not settling.done(), "settle must wait for the commit still out"
    store.gate.set()
    await asyncio.wait_for(settling, 5)
    assert await store.claim([event.dedupe_key]) == [Claim.DUPLICATE]


async def test_a_resend_before_the_commit_landed_is_a_duplicate() -> None:
    """A copy claimed while its first copy's commit is on its way is a duplicate, not a copy in flight."""
    store = GatedCommits()
    sink = RecordingSink()
    pipeline = Pipeline(sink, store, Metrics(), max_events_in_flight=100)
    event = outbound_event(f"04l5g{uuid.uuid4().hex[:13]}")
    await pipeline.deliver([event])
    assert await pipeline.deliver([event]) == Delivery(accepted=0, duplicates=1)
    assert await pipeline.deliver([event], delivery_id="webhook salesforce msg_1") == Delivery(accepted=0, duplicates=1)
    assert sink.published == [event]
    store.gate.set()
    await pipeline.settle()


async def test_commits_of_concurrent_deliveries_go_out_together() -> None:
    """Commits queued while one is out leave as one call: the requests behind it do not each wait."""
    store = GatedCommits()
    pipeline = Pipeline(RecordingSink(), store, Metrics(), max_events_in_flight=1000)
    first, *others = [outbound_event(f"04l5g{uuid.uuid4().hex[:13]}") for _ in range(11)]
    await pipeline.deliver([first])
    await asyncio.gather(*(pipeline.deliver([event]) for event in others))
    store.gate.set()
    await pipeline.settle()
    assert store.commits_started == 2
    assert await store.claim([event.dedupe_key for event in others]) == [Claim.DUPLICATE] * 10


class FailingFirstCommit(MemoryDedupeStore):
    """The memory store whose first commit fails as an unreachable shared store does."""

    def __init__(self) -> None:
        super().__init__(claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, max_entries=10_000)
        self.failed = False

    async def commit(self, keys: Sequence[str]) -> None:
        if not self.failed:
            self.failed = True
            raise DedupeUnavailable("the test's store refused a commit")
        await super().commit(keys)


async def test_a_failed_commit_is_counted_and_later_commits_still_go_out() -> None:
    """A commit the store refused is counted, its keys are no longer taken as published here (the
    store still holds their claim), and the next delivery's commit lands."""
    store = FailingFirstCommit()
    metrics = Metrics()
    pipeline = Pipeline(RecordingSink(), store, metrics, max_events_in_flight=100)
    lost, kept = (outbound_event(f"04l5g{uuid.uuid4().hex[:13]}") for _ in range(2))
    await pipeline.deliver([lost])
    await pipeline.settle()
    assert metrics.registry.get_sample_value("receiver_dedupe_unavailable_total") == 1.0
    with pytest.raises(DuplicateInFlight):
        await pipeline.deliver([lost])
    await pipeline.deliver([kept])
    await pipeline.settle()
    assert await store.claim([kept.dedupe_key]) == [Claim.DUPLICATE]


async def test_stopping_the_app_lands_the_commits_of_acknowledged_events(
    redis_url: str, key_prefix: str, make_settings: SettingsFactory
) -> None:
    """The lifespan waits for commits before closing the store: a resend after a restart is a duplicate."""
    settings = make_settings(redis_url=redis_url)
    services = build_services(settings)
    assert isinstance(services.dedupe, RedisDedupeStore)
    services.dedupe.key_prefix = key_prefix
    event = outbound_event(f"04l5g{uuid.uuid4().hex[:13]}")
    try:
        async with started(services):
            assert await services.pipeline.deliver([event]) == Delivery(accepted=1, duplicates=0)
        async with RedisDedupeStore(
            redis_url, claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, key_prefix=key_prefix
        ) as replica:
            assert await replica.claim([event.dedupe_key]) == [Claim.DUPLICATE]
    finally:
        await delete_prefixed(redis_url, key_prefix)


async def test_a_long_commit_queue_goes_out_in_bounded_calls() -> None:
    """Commits queued behind a hung store leave in calls of at most MAX_KEYS_PER_COMMIT keys."""
    store = GatedCommits()
    sizes: list[int] = []
    commit = store.commit

    async def counted(keys: Sequence[str]) -> None:
        sizes.append(len(keys))
        await commit(keys)

    store.commit = counted  # type: ignore[method-assign]
    pipeline = Pipeline(RecordingSink(), store, Metrics(), max_events_in_flight=10_000)
    await pipeline.deliver([outbound_event(f"04l5g{uuid.uuid4().hex[:13]}")])
    await asyncio.sleep(0)  # the first commit goes out, and hangs
    events = [outbound_event(f"04l5g{uuid.uuid4().hex[:13]}") for _ in range(2 * MAX_KEYS_PER_COMMIT + 5)]
    await pipeline.deliver(events)
    store.gate.set()
    await pipeline.settle()
    assert sizes == [1, MAX_KEYS_PER_COMMIT, MAX_KEYS_PER_COMMIT, 5]


async def test_a_committer_cancelled_before_it_ran_leaves_later_commits_going_out() -> None:
    """A commit task cut off before its first step (its finally never runs) does not block the
    commits after it, and settle returns rather than raising its cancellation."""
    store = MemoryDedupeStore(claim_ttl_s=CLAIM_TTL_S, commit_ttl_s=COMMIT_TTL_S, max_entries=10_000)
    pipeline = Pipeline(RecordingSink(), store, Metrics(), max_events_in_flight=100)
    first, later = (outbound_event(f"04l5g{uuid.uuid4().hex[:13]}") for _ in range(2))
    await pipeline.deliver([first])
    committer = pipeline._committer
    assert committer is not None
    committer.cancel()
    await pipeline.settle()
    await pipeline.deliver([later])
    await pipeline.settle()
    assert await store.claim([later.dedupe_key]) == [Claim.DUPLICATE]
