"""sf-receiver tail, run as the real command: the file sink and a Kafka topic, filters, --json, --follow."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.file_sink import EVENTS_FILE
from receiver.settings import Settings
from tests.conftest import REPO, SettingsFactory, live_receiver
from tests.event_payloads import ORG, SECRET, change_event, sample, signed_headers
from tests.om_payloads import ORG15, SAMPLE_FILES, outbound_message
from tests.om_payloads import sample as om_sample

SF_RECEIVER = str(Path(sys.executable).parent / "sf-receiver")
OM_PATH = "/webhooks/salesforce/outbound-messages"
EVENTS_PATH = "/webhooks/salesforce/events"
SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
COMMAND_TIMEOUT_S = 60


async def post_outbound(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(OM_PATH, content=body, headers=SOAP)
    assert response.status_code == 200, response.text


async def post_events(client: httpx.AsyncClient, document: Any) -> None:
    body = json.dumps(document).encode()
    response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text


async def produce_every_kind(settings: Settings) -> None:
    """Three OM samples (4 events, 3 orgs), a platform event and a CDC event of two records."""
    async with live_receiver(settings) as client:
        for name in SAMPLE_FILES:
            await post_outbound(client, om_sample(name))
        await post_events(client, sample("platform_event_low_ink.json"))
        await post_events(client, change_event(["001xx000003DGb4AAG", "001xx000003DGb5AAG"]))


def environment(settings: Settings) -> dict[str, str]:
    """The command's environment: where the sink is, nothing else from RECEIVER_*."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RECEIVER_")}
    env["RECEIVER_DATA_DIR"] = str(settings.data_dir)
    if settings.kafka_bootstrap_servers:
        env["RECEIVER_KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
        env["RECEIVER_KAFKA_TOPIC"] = settings.kafka_topic
    return env


async def run_tail(settings: Settings, *arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        SF_RECEIVER,
        "tail",
        *arguments,
        env=environment(settings),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


@pytest.fixture
def file_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(event_secrets=SECRET)


# --- the embedded file sink ------------------------------------------------------------------


async def test_json_from_beginning_prints_the_file_events_unchanged(file_settings: Settings) -> None:
    """--from-beginning --json prints every structured-mode event of events.jsonl, in order."""
    await produce_every_kind(file_settings)
    status, stdout, stderr = await run_tail(file_settings, "--from-beginning", "--json")
    assert status == 0, stderr
    written = [json.loads(line) for line in (file_settings.data_dir / EVENTS_FILE).read_text().splitlines()]
    assert json_lines(stdout) == written and len(written) == 7


async def test_pretty_output_shows_kind_object_and_record_without_colour_in_a_pipe(file_settings: Settings) -> None:
    """Not on a terminal the pretty form has no escape codes; each event shows kind, object and record."""
    await produce_every_kind(file_settings)
    status, stdout, _ = await run_tail(file_settings, "--kind", "change_event")
    assert status == 0
    assert "\x1b[" not in stdout
    lines = stdout.splitlines()
    assert len(lines) == 6  # two events, three lines each
    assert "change_event  Account  001xx000003DGb4AAG  UPDATE  changed: Name, BillingAddress.City" in lines[0]
    assert f"org {ORG}" in lines[1] and "connection example-contacts (salesforce)" in lines[1]
    assert json.loads(lines[2]) == {}  # this change carries no field values, only the header


async def test_default_shows_the_last_lines_matching(file_settings: Settings) -> None:
    """Without --from-beginning the last -n matching events are printed, oldest first."""
    await produce_every_kind(file_settings)
    status, stdout, _ = await run_tail(file_settings, "-n", "2", "--kind", "outbound_message", "--json")
    assert status == 0
    events = json_lines(stdout)
    assert [event["sfobject"] for event in events] == ["Account", "DiscountRule__c"]


async def test_filters_by_org_kind_and_object(file_settings: Settings) -> None:
    """--org takes a 15-character id; --object is a case-insensitive glob; filters combine."""
    await produce_every_kind(file_settings)
    status, stdout, _ = await run_tail(file_settings, "--from-beginning", "--json", "--org", ORG15, "--object", "c*")
    assert status == 0
    events = json_lines(stdout)
    assert {event["sfobject"] for event in events} == {"Contact"} and len(events) == 2
    assert {event["sforgid"] for event in events} == {ORG}
    status, stdout, _ = await run_tail(
        file_settings, "--from-beginning", "--json", "--kind", "platform_event", "--kind", "change_event"
    )
    assert sorted(event["type"] for event in json_lines(stdout)) == [
        "com.salesforce.change_event",
        "com.salesforce.change_event",
        "com.salesforce.platform_event",
    ]


async def test_limit_stops_after_that_many_events(file_settings: Settings) -> None:
    """--limit N prints N events and exits."""
    await produce_every_kind(file_settings)
    status, stdout, _ = await run_tail(file_settings, "--from-beginning", "--json", "--limit", "3")
    assert status == 0 and len(json_lines(stdout)) == 3


async def follow_json(settings: Settings, *, limit: int) -> asyncio.subprocess.Process:
    """`sf-receiver tail --follow --json --limit N` started in the background, stdout piped."""
    return await asyncio.create_subprocess_exec(
        SF_RECEIVER,
        "tail",
        "--follow",
        "--json",
        "--limit",
        str(limit),
        env=environment(settings),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )


async def test_follow_prints_events_written_later(file_settings: Settings) -> None:
    """--follow waits on events.jsonl and prints events as the receiver writes them."""
    async with live_receiver(file_settings) as client:
        await post_outbound(client, outbound_message(1, start=1))
        process = await follow_json(file_settings, limit=3)
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), COMMAND_TIMEOUT_S)
        await post_outbound(client, outbound_message(2, start=10))
        stdout, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    assert process.returncode == 0
    events = [json.loads(first), *json_lines(stdout.decode())]
    assert [event["data"]["fields"]["LastName"] for event in events] == ["Name 1", "Name 10", "Name 11"]


async def test_follow_prints_the_event_being_written_when_it_started(file_settings: Settings) -> None:
    """A line half written when --follow starts is printed once it is complete, not dropped."""
    async with live_receiver(file_settings) as client:
        await post_outbound(client, outbound_message(3, start=20))
    events_file = file_settings.data_dir / EVENTS_FILE
    first, second, third = events_file.read_bytes().splitlines(keepends=True)
    events_file.write_bytes(first + second + third[:40])
    process = await follow_json(file_settings, limit=3)
    assert process.stdout is not None
    shown = [await asyncio.wait_for(process.stdout.readline(), COMMAND_TIMEOUT_S) for _ in range(2)]
    with events_file.open("ab") as appending:
        appending.write(third[40:])
    stdout, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    assert process.returncode == 0
    events = [json.loads(line) for line in shown] + json_lines(stdout.decode())
    assert [event["data"]["fields"]["LastName"] for event in events] == ["Name 20", "Name 21", "Name 22"]


async def test_missing_events_file_is_an_error(file_settings: Settings) -> None:
    """Tailing before any event was received exits 1 and says why."""
    status, _, stderr = await run_tail(file_settings)
    assert status == 1 and "no events file" in stderr


async def test_topic_without_kafka_is_an_error(file_settings: Settings) -> None:
    """--topic with the embedded sink is refused rather than silently reading the file."""
    await produce_every_kind(file_settings)
    status, _, stderr = await run_tail(file_settings, "--topic", "salesforce.events")
    assert status == 1 and "RECEIVER_KAFKA_BOOTSTRAP_SERVERS" in stderr


async def test_invalid_org_filter_is_a_usage_error(file_settings: Settings) -> None:
    """--org must be an org id; a typo is exit status 2 naming the option."""
    status, _, stderr = await run_tail(file_settings, "--org", "00Dnope")
    assert status == 2 and "--org" in stderr


# --- a Kafka topic ---------------------------------------------------------------------------


@pytest.mark.kafka
async def test_kafka_topic_reads_back_as_structured_events(kafka_settings: SettingsFactory) -> None:
    """With Kafka configured, tail reads the default topic and prints the same events the file sink would."""
    settings = kafka_settings(event_secrets=SECRET)
    await produce_every_kind(settings)
    status, stdout, stderr = await run_tail(settings, "--from-beginning", "--json")
    assert status == 0, stderr
    events = json_lines(stdout)
    assert len(events) == 7
    change = next(event for event in events if event["type"] == "com.salesforce.change_event")
    assert change["datacontenttype"] == "application/json"
    assert change["source"] == f"/salesforce/orgs/{ORG}"
    assert change["data"]["change_event"]["commit_number"] == 1745500706683617281
    assert {event["specversion"] for event in events} == {"1.0"}


@pytest.mark.kafka
async def test_kafka_last_matching_event_is_found_behind_many_others(kafka_settings: SettingsFactory) -> None:
    """-n 1 --kind change_event finds a change event older than the first backward window."""
    settings = kafka_settings(event_secrets=SECRET)
    async with live_receiver(settings) as client:
        await post_events(client, change_event(["001xx000003DGb4AAG"]))
        for start in range(0, 200, 100):
            await post_outbound(client, outbound_message(100, start=start))
    status, stdout, stderr = await run_tail(settings, "-n", "1", "--kind", "change_event", "--json")
    assert status == 0, stderr
    [event] = json_lines(stdout)
    assert event["subject"] == "001xx000003DGb4AAG"


@pytest.mark.kafka
async def test_kafka_last_matches_come_from_every_partition(kafka_settings: SettingsFactory) -> None:
    """-n 3 --object Account on two partitions: one holds 20 old Accounts, the other a newer one
    100 records back. The newest three are two old ones and the newer one, not the last three old."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    settings = kafka_settings()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.kafka_topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()

    def headers(sobject: str, event_id: str) -> list[tuple[str, bytes]]:
        values = {"specversion": "1.0", "type": "com.salesforce.change_event", "id": event_id}
        values |= {"source": f"/salesforce/orgs/{ORG}", "sforgid": ORG, "sfobject": sobject}
        return [(f"ce_{name}", value.encode()) for name, value in values.items()]

    now_ms = int(time.time() * 1000)
    try:
        for number in range(20):
            await producer.send_and_wait(
                settings.kafka_topic,
                b"{}",
                partition=0,
                timestamp_ms=now_ms - 3_600_000 + number,
                headers=headers("Account", f"old{number}"),
            )
        for number in range(200):
            await producer.send_and_wait(
                settings.kafka_topic,
                b"{}",
                partition=1,
                timestamp_ms=now_ms - 200_000 + number * 1000,
                headers=headers("Account" if number == 100 else "Contact", f"new{number}"),
            )
    finally:
        await producer.stop()
    status, stdout, stderr = await run_tail(settings, "-n", "3", "--object", "Account", "--json")
    assert status == 0, stderr
    assert [event["id"] for event in json_lines(stdout)] == ["old18", "old19", "new100"]


@pytest.mark.kafka
async def test_kafka_pretty_output_names_the_record_position(kafka_settings: SettingsFactory) -> None:
    """The pretty form shows where each record is: topic/partition@offset."""
    settings = kafka_settings(event_secrets=SECRET)
    await produce_every_kind(settings)
    status, stdout, _ = await run_tail(settings, "--topic", settings.kafka_topic, "--kind", "platform_event")
    assert status == 0
    summary, identifiers, fields = stdout.splitlines()
    assert "platform_event  Low_Ink__e  /event/Low_Ink__e replay 2" in summary
    assert re.search(rf"{re.escape(settings.kafka_topic)}/\d+@\d+$", identifiers)
    assert json.loads(fields)["Printer_Model__c"] == "XZO-5"


@pytest.mark.kafka
async def test_kafka_follow_prints_new_events(kafka_settings: SettingsFactory) -> None:
    """--follow on a topic prints events produced after it started, then --limit ends it."""
    settings = kafka_settings(event_secrets=SECRET)
    async with live_receiver(settings) as client:
        await post_outbound(client, outbound_message(1, start=1))
        process = await follow_json(settings, limit=2)
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), COMMAND_TIMEOUT_S)
        await post_events(client, sample("platform_event_low_ink.json"))
        stdout, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    assert process.returncode == 0
    assert json.loads(first)["type"] == "com.salesforce.outbound_message"
    assert [event["type"] for event in json_lines(stdout.decode())] == ["com.salesforce.platform_event"]


@pytest.mark.kafka
async def test_kafka_unknown_topic_is_an_error(kafka_settings: SettingsFactory) -> None:
    """A topic that does not exist exits 1, and tail does not create it."""
    settings = kafka_settings()
    status, _, stderr = await run_tail(settings, "--topic", "no.such.topic.for.tail")
    assert status == 1 and "does not exist" in stderr
