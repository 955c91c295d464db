"""The Kafka sink against the real broker: records, headers, and bounded failure."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from receiver.errors import PublishFailed
from receiver.event import CHANGE_EVENT, OUTBOUND_MESSAGE, CloudEvent, Connection
from receiver.kafka_sink import KafkaSink
from receiver.metrics import Metrics
from receiver.sink import build_sink, default_router
from tests.broker import kafka_paused
from tests.conftest import SettingsFactory
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.kafka

ORG = "00D1I000003qqqEUAQ"


def an_event(notification_id: str = "04l1I000000fztEQAQ", record_id: str = "0031I0000081tbPQAQ") -> CloudEvent:
    return CloudEvent(
        type=OUTBOUND_MESSAGE,
        id=notification_id,
        organization_id=ORG,
        connection=Connection("acme-prod", "salesforce"),
        time="2017-12-11T21:49:24.000Z",
        key=f"{ORG}:{record_id}",
        data={"organization_id": ORG, "record_id": record_id, "fields": {"LastName": "Black"}},
        object="Contact",
        subject=record_id,
    )


async def test_publish_lands_with_key_and_ce_headers(kafka_settings: SettingsFactory) -> None:
    """A published event is in the topic with its key, JSON value and every ce_ header."""
    settings = kafka_settings()
    sink = build_sink(settings, Metrics())
    assert isinstance(sink, KafkaSink)
    await sink.start()
    try:
        await sink.publish([an_event()])
    finally:
        await sink.stop()
    records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=1)
    assert len(records) == 1
    record = records[0]
    assert record.key == f"{ORG}:0031I0000081tbPQAQ".encode()
    assert orjson.loads(record.value)["fields"] == {"LastName": "Black"}
    assert record.header("content-type") == "application/json"
    assert record.header("ce_specversion") == "1.0"
    assert record.header("ce_type") == OUTBOUND_MESSAGE
    assert record.header("ce_source") == f"/salesforce/orgs/{ORG}"
    assert record.header("ce_id") == "04l1I000000fztEQAQ"
    assert record.header("ce_subject") == "0031I0000081tbPQAQ"
    assert record.header("ce_time") == "2017-12-11T21:49:24.000Z"
    assert record.header("ce_sforgid") == ORG
    assert record.header("ce_sfobject") == "Contact"
    assert record.header("ce_terapiconnectionid") == "acme-prod"
    assert record.header("ce_terapiintegration") == "salesforce"


async def test_router_fans_out_to_every_topic(kafka_settings: SettingsFactory) -> None:
    """An event routed to two topics is confirmed only once both hold it."""
    settings = kafka_settings()
    second = settings.kafka_topic + ".copy"
    sink = KafkaSink(settings, Metrics(), lambda event: (settings.kafka_topic, second))
    await sink.start()
    try:
        await sink.publish([an_event()])
    finally:
        await sink.stop()
    bootstrap = settings.kafka_bootstrap_servers or ""
    assert len(await read_topic(bootstrap, settings.kafka_topic, expect=1)) == 1
    assert len(await read_topic(bootstrap, second, expect=1)) == 1


@pytest.mark.faults
async def test_paused_broker_fails_within_the_publish_timeout_then_recovers(kafka_settings: SettingsFactory) -> None:
    """With the broker frozen, publish raises within the timeout; once it is back, publish works."""
    settings = kafka_settings(publish_timeout_s=3.0)
    sink = KafkaSink(settings, Metrics(), default_router(settings.kafka_topic))
    await sink.start()
    try:
        await sink.publish([an_event("04l1I000000fzt9QAA")])
        with kafka_paused():
            started = time.monotonic()
            with pytest.raises(PublishFailed):
                await sink.publish([an_event("04l1I000000fztEQAQ")])
            assert time.monotonic() - started < settings.publish_timeout_s + 1.5
            assert not await sink.is_ready()
        deadline = time.monotonic() + 30
        while True:
            try:
                await sink.publish([an_event("04l1I000000fztEQAQ")])
                break
            except PublishFailed:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert await sink.is_ready()
    finally:
        await sink.stop()
    records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=2)
    assert {r.header("ce_id") for r in records} >= {"04l1I000000fzt9QAA", "04l1I000000fztEQAQ"}


async def test_unreachable_broker_does_not_stop_start_and_publish_fails_fast(make_settings: SettingsFactory) -> None:
    """A broker that is not there: start() returns, publish raises PublishFailed, readiness is false."""
    settings = make_settings(kafka_bootstrap_servers="127.0.0.1:1", publish_timeout_s=2.0)
    sink = KafkaSink(settings, Metrics(), default_router("x"))
    await sink.start()
    try:
        with pytest.raises(PublishFailed):
            await sink.publish([an_event()])
        assert not await sink.is_ready()
    finally:
        await sink.stop()


def test_change_event_without_subject_has_no_subject_header() -> None:
    """Events without a record carry no ce_subject header at all."""
    event = CloudEvent(
        type=CHANGE_EVENT,
        id="t:1:Account",
        organization_id=ORG,
        connection=Connection("c", "salesforce"),
        time="2025-01-01T00:00:00.000Z",
        key=f"{ORG}:Account",
        data={},
        object="Account",
    )
    assert "ce_subject" not in dict(event.kafka_headers())
