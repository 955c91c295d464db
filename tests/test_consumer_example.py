"""examples/consumer.py, run as a consumer would run it, reads what a live receiver put on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from receiver.settings import Settings
from tests.conftest import REPO, SettingsFactory, live_receiver
from tests.event_payloads import SECRET, change_event, sample, signed_headers
from tests.kafka_helpers import read_topic
from tests.om_payloads import SAMPLE_FILES
from tests.om_payloads import sample as om_sample

pytestmark = pytest.mark.kafka

CONSUMER = REPO / "examples" / "consumer.py"
OM_PATH = "/webhooks/salesforce/outbound-messages"
SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
RUN_TIMEOUT_S = 90


async def produce(settings: Settings) -> None:
    """4 OM notifications, a platform event and a CDC event of two records: 7 events."""
    async with live_receiver(settings) as client:
        for name in SAMPLE_FILES:
            response = await client.post(
                "/webhooks/salesforce/outbound-messages", content=om_sample(name), headers=SOAP
            )
            assert response.status_code == 200, response.text
        for document in (
            sample("platform_event_low_ink.json"),
            change_event(["001xx000003DGb4AAG", "001xx000003DGb5AAG"]),
        ):
            body = json.dumps(document).encode()
            response = await client.post("/webhooks/salesforce/events", content=body, headers=signed_headers(body))
            assert response.status_code == 200, response.text


async def run_consumer(*arguments: str) -> tuple[int, list[str], str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("RECEIVER_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CONSUMER),
        *arguments,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode().splitlines(), stderr.decode()


@pytest.fixture
async def produced(kafka_settings: SettingsFactory) -> Settings:
    settings = kafka_settings(event_secrets=SECRET)
    await produce(settings)
    return settings


async def test_consumer_prints_every_event_the_receiver_produced(produced: Settings) -> None:
    """Decoded with the CloudEvents SDK: one line per event, with kind, record, id and org."""
    bootstrap = produced.kafka_bootstrap_servers or ""
    records = await read_topic(bootstrap, produced.kafka_topic, expect=7)
    status, lines, stderr = await run_consumer("--bootstrap", bootstrap, "--topic", produced.kafka_topic, "--max", "7")
    assert status == 0, stderr
    assert len(lines) == 7
    assert {line.split(" id=")[1].split()[0] for line in lines} == {record.header("ce_id") for record in records}
    change = next(line for line in lines if line.startswith("change_event"))
    assert change.startswith("change_event Account 001xx000003DGb")
    assert "org=00D1I000003qqqEUAQ" in change
    assert any(line.startswith("platform_event Low_Ink__e - id=2ec0e371-1395-457f-9275-be1b527a72f7") for line in lines)


async def test_consumer_skips_a_redelivered_event(produced: Settings) -> None:
    """A record resent with the same ce_source and ce_id (an at-least-once retry) is printed once."""
    bootstrap = produced.kafka_bootstrap_servers or ""
    [original, *_] = await read_topic(bootstrap, produced.kafka_topic, expect=7)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        headers: list[tuple[str, bytes]] = list(original.headers.items())
        await producer.send_and_wait(produced.kafka_topic, original.value, key=original.key, headers=headers)
    finally:
        await producer.stop()
    status, lines, stderr = await run_consumer(
        "--bootstrap", bootstrap, "--topic", produced.kafka_topic, "--timeout", "3"
    )
    assert status == 0, stderr
    assert len(lines) == 7
    assert "7 events, 1 duplicates skipped" in stderr


async def test_consumer_group_resumes_where_it_committed(produced: Settings) -> None:
    """With --group, a second run starts after what the first one handled and committed."""
    bootstrap = produced.kafka_bootstrap_servers or ""
    group = f"example-{produced.kafka_topic}"
    arguments = ("--bootstrap", bootstrap, "--topic", produced.kafka_topic, "--group", group)
    status, first, stderr = await run_consumer(*arguments, "--max", "7")
    assert status == 0 and len(first) == 7, stderr
    status, second, stderr = await run_consumer(*arguments, "--timeout", "3")
    assert status == 0 and second == [], stderr


async def test_consumer_validates_data_against_the_published_schemas(produced: Settings) -> None:
    """--schemas schemas/ checks each event's data as a consumer would, and finds nothing wrong."""
    bootstrap = produced.kafka_bootstrap_servers or ""
    arguments: list[Any] = ["--bootstrap", bootstrap, "--topic", produced.kafka_topic, "--max", "7"]
    status, lines, stderr = await run_consumer(*arguments, "--schemas", str(REPO / "schemas"))
    assert status == 0, stderr
    assert len(lines) == 7 and "0 invalid" in stderr
