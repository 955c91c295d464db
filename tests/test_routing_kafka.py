"""Routing rules on the real broker: events land in the topics the rules name; topics checked at start-up."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import SettingsFactory, live_receiver
from tests.event_payloads import ORG, SECRET, change_event, sample, signed_headers
from tests.kafka_helpers import read_topic, unique_topic
from tests.om_payloads import sample as om_sample

pytestmark = pytest.mark.kafka

OM_PATH = "/webhooks/salesforce/outbound-messages"
EVENTS_PATH = "/webhooks/salesforce/events"
SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


async def partition_count(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert description["error_code"] == 0, description
    return len(description["partitions"])


async def test_events_land_in_the_topics_the_rules_name(kafka_settings: SettingsFactory) -> None:
    """OMs, platform events and CDC reach their rules' topics, fan-out included; the rest the default."""
    prefix = unique_topic("routed")
    settings = kafka_settings(
        event_secrets=SECRET,
        routes=[
            {"name": "gaps", "kind": "change_event", "change_type": "GAP_*", "topics": [f"{prefix}.gaps"]},
            {"name": "cdc", "kind": "change_event", "topics": [prefix + ".cdc.{object}"]},
            {"name": "contacts", "object": "Contact", "topics": [prefix + ".om.{object}", f"{prefix}.audit"]},
            {"name": "events", "channel": "/event/*", "topics": [prefix + ".pe.{org}"]},
        ],
    )
    bootstrap = settings.kafka_bootstrap_servers or ""
    cdc = change_event(["001xx000003DGb4AAG", "001xx000003DGb5AAG"], sequence=1)
    overflow = change_event([], change_type="GAP_OVERFLOW", sequence=2)
    platform_event = dumps(sample("platform_event_low_ink.json"))
    async with live_receiver(settings) as client:
        for name in ("contact_2_notifications.xml", "account_null_field_omitted.xml"):
            response = await client.post(OM_PATH, content=om_sample(name), headers=SOAP)
            assert response.status_code == 200, response.text
        for body in (platform_event, dumps([cdc, overflow])):
            response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
            assert response.status_code == 200, response.text

    contacts = await read_topic(bootstrap, f"{prefix}.om.Contact", expect=2)
    audit = await read_topic(bootstrap, f"{prefix}.audit", expect=2)
    assert {r.header("ce_sfobject") for r in contacts} == {"Contact"} and len(contacts) == 2
    assert {r.header("ce_id") for r in audit} == {r.header("ce_id") for r in contacts}
    [low_ink] = await read_topic(bootstrap, f"{prefix}.pe.{ORG}", expect=1)
    assert low_ink.header("ce_type") == "com.salesforce.platform_event"
    changes = await read_topic(bootstrap, f"{prefix}.cdc.Account", expect=2)
    assert sorted(r.header("ce_subject") for r in changes) == ["001xx000003DGb4AAG", "001xx000003DGb5AAG"]
    [gap] = await read_topic(bootstrap, f"{prefix}.gaps", expect=1)
    assert gap.key == f"{ORG}:/data/AccountChangeEvent".encode()
    default = await read_topic(bootstrap, settings.kafka_topic, expect=1)
    assert [r.header("ce_sfobject") for r in default] == ["Account"]


async def test_routed_records_keep_key_and_headers(kafka_settings: SettingsFactory) -> None:
    """Routing changes only the topic: key, value and ce_ headers are the default topic's."""
    prefix = unique_topic("routed")
    settings = kafka_settings(routes=[{"kind": "outbound_message", "topics": [f"{prefix}.om"]}])
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=om_sample("contact_2_notifications.xml"), headers=SOAP)
        assert response.status_code == 200
    records = await read_topic(settings.kafka_bootstrap_servers or "", f"{prefix}.om", expect=2)
    for record in records:
        data = json.loads(record.value)
        assert record.key == f"{data['organization_id']}:{data['record_id']}".encode()
        assert record.header("ce_source") == f"/salesforce/orgs/{data['organization_id']}"
        assert record.header("content-type") == "application/json"


async def test_missing_fixed_topics_are_reported_at_start_up(
    kafka_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Without RECEIVER_KAFKA_CREATE_TOPICS a missing rule topic is logged, shown in /readyz, not created."""
    missing = unique_topic("missing")
    settings = kafka_settings(routes=[{"kind": "change_event", "topics": [missing]}])
    with caplog.at_level(logging.INFO, logger="receiver.topics"):
        async with live_receiver(settings) as client:
            ready = (await client.get("/readyz")).json()
    assert ready["sink_status"]["topics_checked"] is True
    assert missing in ready["sink_status"]["missing_topics"]
    [report] = [r for r in caplog.records if r.getMessage() == "kafka topics are missing"]
    assert missing in report.topics
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers or "")
    await admin.start()
    try:
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()


async def test_create_topics_makes_fixed_topics_with_the_configured_partitions(
    kafka_settings: SettingsFactory,
) -> None:
    """With RECEIVER_KAFKA_CREATE_TOPICS=true the default, quarantine and rule topics exist after start-up."""
    rule_topic = unique_topic("created")
    settings = kafka_settings(
        kafka_create_topics=True,
        kafka_partitions=5,
        routes=[{"kind": "platform_event", "topics": [rule_topic]}],
    )
    bootstrap = settings.kafka_bootstrap_servers or ""
    async with live_receiver(settings):
        for topic in (settings.kafka_topic, settings.kafka_quarantine_topic, rule_topic):
            assert await partition_count(bootstrap, topic) == 5


async def test_create_topics_makes_templated_topics_on_first_use(kafka_settings: SettingsFactory) -> None:
    """A templated topic is created with the configured partitions before its first event is produced."""
    prefix = unique_topic("templated")
    settings = kafka_settings(kafka_create_topics=True, kafka_partitions=4, routes=[{"topics": [prefix + ".{object}"]}])
    bootstrap = settings.kafka_bootstrap_servers or ""
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=om_sample("contact_2_notifications.xml"), headers=SOAP)
        assert response.status_code == 200
    assert await partition_count(bootstrap, f"{prefix}.Contact") == 4
    assert len(await read_topic(bootstrap, f"{prefix}.Contact", expect=2)) == 2
