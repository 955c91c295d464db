"""The Redis dedupe store on a real Redis Cluster: three redis-server nodes made one cluster by
``redis-cli --cluster create``, started once for this module."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from receiver.app import build_dedupe
from receiver.dedupe import Claim, DedupeUnavailable
from receiver.errors import ConfigurationError
from receiver.metrics import Metrics
from receiver.redis_dedupe import CLUSTER_KEY_PREFIX, RedisDedupeStore
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.redis

CLAIM_TTL_S = 30.0
COMMIT_TTL_S = 90_000.0
NODES = 3
READY_TIMEOUT_S = 30.0


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def cluster_ok(port: int) -> bool:
    answer = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=5, check=False
    )
    return "cluster_state:ok" in answer.stdout


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of one node of a 3-node Redis Cluster, no replicas, no persistence."""
    binary = shutil.which("redis-server")
    assert binary is not None and shutil.which("redis-cli") is not None, "redis-server and redis-cli are needed"
    directory = tmp_path_factory.mktemp("redis-cluster")
    ports = [free_cluster_port() for _ in range(NODES)]
    processes = []
    for port in ports:
        node = directory / str(port)
        node.mkdir()
        options = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        processes.append(
            subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", *options, "--dir", str(node)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while subprocess.run(["redis-cli", "-p", str(ports[-1]), "ping"], capture_output=True, check=False).returncode:
            assert time.monotonic() < deadline, "redis-server nodes did not start"
            time.sleep(0.05)
        nodes = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=READY_TIMEOUT_S,
        )
        while not all(cluster_ok(port) for port in ports):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


@pytest.fixture
async def cluster_store(redis_cluster: str) -> AsyncIterator[RedisDedupeStore]:
    """A started store on the cluster, with a key prefix of this test alone (hash-tagged)."""
    async with RedisDedupeStore(
        redis_cluster,
        claim_ttl_s=CLAIM_TTL_S,
        commit_ttl_s=COMMIT_TTL_S,
        key_prefix=f"{{test-{uuid.uuid4().hex}}}:",
        cluster=True,
    ) as store:
        yield store


def unique_keys(count: int) -> list[str]:
    # Plain keys would hash to slots all over the cluster: the store's hash tag must gather them.
    return [f"/salesforce/orgs/00D5g000004Xz1AEAS {uuid.uuid4().hex}" for _ in range(count)]


async def test_a_batch_over_many_slots_is_answered_key_by_key(cluster_store: RedisDedupeStore) -> None:
    """One call of keys that would live on different nodes: claimed, committed and released
    in one script, each key answered in order."""
    committed, claimed, released, fresh = unique_keys(4)
    assert await cluster_store.claim([committed, claimed, released]) == [Claim.NEW] * 3
    await cluster_store.commit([committed])
    await cluster_store.release([released, committed])
    assert await cluster_store.claim([fresh, committed, claimed, released]) == [
        Claim.NEW,
        Claim.DUPLICATE,
        Claim.IN_FLIGHT,
        Claim.NEW,
    ]


async def test_concurrent_calls_are_joined_on_a_cluster(cluster_store: RedisDedupeStore) -> None:
    """Concurrent requests' calls join into few round trips on a cluster as on one Redis."""
    batches = [unique_keys(2) for _ in range(40)]
    assert await asyncio.gather(*(cluster_store.claim(keys) for keys in batches)) == [[Claim.NEW] * 2] * 40
    await asyncio.gather(*(cluster_store.commit(keys) for keys in batches))
    assert await asyncio.gather(*(cluster_store.claim(keys) for keys in batches)) == [[Claim.DUPLICATE] * 2] * 40


async def test_two_replicas_share_marks_on_a_cluster(redis_cluster: str) -> None:
    """Two stores with the default cluster prefix (two replicas) see each other's claims and commits."""
    keys = unique_keys(1)
    options = {"claim_ttl_s": CLAIM_TTL_S, "commit_ttl_s": COMMIT_TTL_S, "cluster": True}
    async with (
        RedisDedupeStore(redis_cluster, **options) as replica_a,  # type: ignore[arg-type]
        RedisDedupeStore(redis_cluster, **options) as replica_b,  # type: ignore[arg-type]
    ):
        assert await replica_a.claim(keys) == [Claim.NEW]
        assert await replica_b.claim(keys) == [Claim.IN_FLIGHT]
        await replica_a.commit(keys)
        assert await replica_b.claim(keys) == [Claim.DUPLICATE]
    async with RedisCluster.from_url(redis_cluster) as admin:
        assert await admin.get(CLUSTER_KEY_PREFIX + keys[0]) == b"committed"
        await admin.delete(CLUSTER_KEY_PREFIX + keys[0])


def test_the_setting_builds_a_cluster_store(make_settings: SettingsFactory) -> None:
    """RECEIVER_REDIS_CLUSTER=true makes the app's store a cluster client with the tagged prefix."""
    store = build_dedupe(make_settings(redis_url="redis://127.0.0.1:7000/0", redis_cluster=True), Metrics())
    assert isinstance(store, RedisDedupeStore)
    assert (store.cluster, store.key_prefix) == (True, CLUSTER_KEY_PREFIX)
    single = build_dedupe(make_settings(redis_url="redis://127.0.0.1:6379/0"), Metrics())
    assert isinstance(single, RedisDedupeStore)
    assert (single.cluster, single.key_prefix) == (False, "sf-receiver:dedupe:")


def test_a_cluster_prefix_without_a_hash_tag_is_refused() -> None:
    """Without a hash tag, a batch's keys would fall in different slots and every call would fail."""
    with pytest.raises(ConfigurationError, match="hash tag"):
        RedisDedupeStore("redis://127.0.0.1:7000/0", claim_ttl_s=1, commit_ttl_s=1, key_prefix="plain:", cluster=True)


async def test_an_unreachable_cluster_is_logged_at_start_and_unavailable_per_call() -> None:
    """The cluster client's errors are not RedisErrors: they too must mean "accept without
    dedupe", not a failed start-up or a 500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = RedisDedupeStore(f"redis://127.0.0.1:{port}/0", claim_ttl_s=1, commit_ttl_s=1, cluster=True)
    await store.start()
    try:
        for call in (store.claim, store.commit, store.release):
            started = time.perf_counter()
            with pytest.raises(DedupeUnavailable):
                await call(unique_keys(1))
            assert time.perf_counter() - started < 2
    finally:
        await store.stop()
