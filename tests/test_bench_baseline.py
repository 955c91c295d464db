"""The benchmark's baseline publishes as issue #8 defines it: nothing batched across requests.

aiokafka batches concurrent ``send_and_wait`` calls on its own, so the baseline holds one send
in flight per process unless ``BASELINE_BATCHING=client`` asks for aiokafka's behaviour. These
tests count, on the real broker, how many sends are in flight at once in each variant.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka_helpers import read_topic, unique_topic


def _load_baseline(monkeypatch: pytest.MonkeyPatch, batching: str) -> ModuleType:
    monkeypatch.setenv("BASELINE_BATCHING", batching)
    sys.modules.pop("bench.baseline.app", None)
    return importlib.import_module("bench.baseline.app")


@pytest.fixture(autouse=True)
def _forget_baseline() -> Iterator[None]:
    yield
    sys.modules.pop("bench.baseline.app", None)


async def _most_sends_in_flight(baseline: ModuleType, bootstrap: str, topic: str, sends: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    in_flight = peak = 0
    send_and_wait = producer.send_and_wait

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await send_and_wait(*args, **kwargs)
        finally:
            in_flight -= 1

    producer.send_and_wait = counted  # type: ignore[method-assign]
    baseline.producer = producer
    try:
        await asyncio.gather(
            *(baseline.send(topic, b"{}", key=f"k{number}".encode(), headers=[]) for number in range(sends))
        )
    finally:
        await producer.stop()
    return peak


async def test_the_baseline_holds_one_send_in_flight(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str) -> None:
    baseline = _load_baseline(monkeypatch, "none")
    topic = unique_topic("baseline")
    assert await _most_sends_in_flight(baseline, kafka_bootstrap, topic, 20) == 1
    assert len(await read_topic(kafka_bootstrap, topic, expect=20)) == 20


async def test_the_batched_baseline_lets_concurrent_sends_share_batches(
    monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str
) -> None:
    baseline = _load_baseline(monkeypatch, "client")
    topic = unique_topic("baseline")
    assert await _most_sends_in_flight(baseline, kafka_bootstrap, topic, 20) == 20
    assert len(await read_topic(kafka_bootstrap, topic, expect=20)) == 20


def test_an_unknown_batching_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="BASELINE_BATCHING must be none or client"):
        _load_baseline(monkeypatch, "sometimes")
