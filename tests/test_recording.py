"""Recording every request: what a line holds, redaction, rotation, retention, and never failing a request."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from receiver.metrics import Metrics
from receiver.recording import RECORDINGS_DIR, Outcome, RecordedRequest, Recorder, to_line
from receiver.recording_files import DailyRecordingFiles, recording_files
from receiver.settings import Settings
from tests.conftest import SettingsFactory, live_receiver
from tests.event_payloads import SECRET, TERAPI_SECRET, sample, signed_headers, terapi_headers
from tests.kafka_helpers import read_topic, unique_topic
from tests.om_payloads import SESSION_ID, outbound_message
from tests.prometheus import metric
from tests.test_outbound_endpoint import OM_PATH, SOAP, is_ack

OM_TOKEN = "om-url-token-for-recording-tests-5d1c"
EVENTS_PATH = "/webhooks/salesforce/events"


def recording_bytes(directory: Path) -> bytes:
    """Every recording file of ``directory``, decompressed, concatenated oldest first."""
    return b"".join(
        gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        for path in recording_files(directory)
    )


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def recordings(settings: Settings) -> list[dict[str, Any]]:
    directory = settings.data_dir / RECORDINGS_DIR
    return [orjson.loads(line) for line in recording_bytes(directory).splitlines()] if directory.exists() else []


async def failures_metric(client: httpx.AsyncClient) -> float:
    return metric((await client.get("/metrics")).text, "receiver_recording_failures_total")


def entry(body: bytes | None = b"{}", *, received_at: str = "2025-01-01T00:00:00.000Z") -> RecordedRequest:
    return RecordedRequest(
        received_at=received_at,
        kind="event",
        integration="salesforce",
        path=EVENTS_PATH,
        headers={"content-type": "application/json"},
        body=body,
        remote_addr="127.0.0.1",
        outcome=Outcome(200, "ok"),
    )


async def test_accepted_outbound_message_is_one_line_with_its_outcome(make_settings: SettingsFactory) -> None:
    """An acked OM is recorded once: time, integration, path, allowed headers, body, address, 200 ok."""
    settings = make_settings(outbound_token=OM_TOKEN)
    async with live_receiver(settings) as client:
        response = await client.post(
            f"{OM_PATH}?token={OM_TOKEN}", content=outbound_message(1), headers={**SOAP, "Cookie": "sid=abc"}
        )
        assert is_ack(response)
    [line] = recordings(settings)
    assert line["kind"] == "outbound_message" and line["integration"] == "salesforce"
    assert line["path"] == OM_PATH
    assert line["outcome"] == {"status": 200, "reason": "ok"}
    assert line["remote_addr"] == "127.0.0.1"
    assert line["received_at"].endswith("Z")
    assert line["headers"]["content-type"] == SOAP["Content-Type"] and line["headers"]["soapaction"] == '""'
    assert "cookie" not in line["headers"]
    assert "<sf:LastName>Name 0</sf:LastName>" in line["body"]
    assert line["request_id"] == response.headers["x-request-id"]


async def test_rejected_requests_are_recorded_with_status_and_reason(make_settings: SettingsFactory) -> None:
    """A 400, a 403 and a 415 each leave one line naming the status and the reason slug."""
    settings = make_settings()
    async with live_receiver(settings) as client:
        await client.post(OM_PATH, content=b"<not-xml", headers=SOAP)
        await client.post(OM_PATH, content=outbound_message(1, org15="00D000000000001"), headers=SOAP)
        await client.post(OM_PATH, content=b"{}", headers={"Content-Type": "application/json"})
    outcomes = [line["outcome"] for line in recordings(settings)]
    assert outcomes == [
        {"status": 400, "reason": "malformed_xml"},
        {"status": 403, "reason": "unknown_org"},
        {"status": 415, "reason": "unsupported_media_type"},
    ]


async def test_request_refused_before_its_body_is_read_is_recorded_without_body(
    make_settings: SettingsFactory,
) -> None:
    """A wrong OM token is a 401 recorded with a null body: the body was never read."""
    settings = make_settings(outbound_token=OM_TOKEN)
    async with live_receiver(settings) as client:
        response = await client.post(f"{OM_PATH}?token=wrong-token", content=outbound_message(1), headers=SOAP)
    assert response.status_code == 401
    [line] = recordings(settings)
    assert line["outcome"] == {"status": 401, "reason": "wrong_token"}
    assert line["body"] is None


async def test_requests_refused_by_middleware_are_recorded(make_settings: SettingsFactory) -> None:
    """A source outside the allow-list (403) and an overload (503) are recorded, without body."""
    settings = make_settings(allowed_cidrs="10.0.0.0/8")
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=outbound_message(1), headers=SOAP)
    assert response.status_code == 403
    overloaded = make_settings(max_requests_in_flight=1, data_dir=settings.data_dir.parent / "overloaded")
    async with live_receiver(overloaded) as client:
        responses = await asyncio.gather(
            *(client.post(OM_PATH, content=outbound_message(50, start=100 * i), headers=SOAP) for i in range(8))
        )
    assert 503 in {r.status_code for r in responses}
    [refused] = recordings(settings)
    assert refused["outcome"] == {"status": 403, "reason": "source_not_allowed"}
    assert refused["kind"] == "outbound_message" and refused["integration"] == "salesforce"
    assert refused["body"] is None
    shed = [line for line in recordings(overloaded) if line["outcome"]["status"] == 503]
    assert shed and all(line["outcome"]["reason"] == "overloaded" and line["body"] is None for line in shed)


async def test_no_secret_token_or_session_id_reaches_a_recording(make_settings: SettingsFactory) -> None:
    """SessionId, OM token, whsec secret, terapi secret and signatures appear in no recording byte."""
    settings = make_settings(
        outbound_token=OM_TOKEN,
        event_secrets=SECRET,
        terapi_webhook_secret=TERAPI_SECRET,
        recording_max_file_bytes=2048,
    )
    event_body = json.dumps(sample("platform_event_low_ink.json")).encode()
    event_headers = signed_headers(event_body)
    forward = json.dumps(
        {
            "from": "salesforce",
            "type": "forward",
            "connectionId": "example-contacts",
            "providerConfigKey": "salesforce",
            "payload": sample("platform_event_low_ink.json"),
        }
    ).encode()
    forward_headers = terapi_headers(forward)
    async with live_receiver(settings) as client:
        for _ in range(3):
            await client.post(f"{OM_PATH}?token={OM_TOKEN}", content=outbound_message(2), headers=SOAP)
        await client.post(f"{OM_PATH}?token={OM_TOKEN}", content=b"<SessionId>" + SESSION_ID.encode(), headers=SOAP)
        await client.post(
            EVENTS_PATH, content=event_body, headers={**event_headers, "Authorization": f"Bearer {OM_TOKEN}"}
        )
        await client.post("/webhooks/terapi", content=forward, headers=forward_headers)
    directory = settings.data_dir / RECORDINGS_DIR
    assert any(name.endswith(".gz") for name in names(directory)), "rotation should have happened"
    everything = recording_bytes(directory)
    assert len(everything.splitlines()) == 6
    for secret in (
        SESSION_ID,
        SESSION_ID.split("!")[1],
        OM_TOKEN,
        SECRET,
        SECRET.removeprefix("whsec_"),
        TERAPI_SECRET,
        event_headers["webhook-signature"].split(",", 1)[1],
        forward_headers["X-Terapi-Hmac-Sha256"],
    ):
        assert secret.encode() not in everything, secret
    assert b'xsi:nil=\\"true\\"' in everything


def test_body_that_is_not_utf8_is_kept_as_base64() -> None:
    """Bytes that are not UTF-8 go to body_base64, unchanged, with a null body."""
    line = orjson.loads(to_line(entry(b"\xff\xfe<xml/>")))
    assert line["body"] is None and line["body_base64"] == "//48eG1sLz4="


def test_query_string_is_never_part_of_the_recorded_path() -> None:
    """A path given with its query string is recorded without it."""
    recorded = RecordedRequest(**{**_fields(entry()), "path": f"{OM_PATH}?token={OM_TOKEN}"})
    assert OM_TOKEN.encode() not in to_line(recorded)


def _fields(value: RecordedRequest) -> dict[str, Any]:
    return {name: getattr(value, name) for name in RecordedRequest.__slots__}


async def test_rotated_files_are_gzipped_and_hold_every_line(tmp_path: Path) -> None:
    """Past the size bound the file is closed as DAY.N.jsonl.gz; every line is kept, in order."""
    files = DailyRecordingFiles(tmp_path, max_file_bytes=1024, retention_days=7, today=lambda: date(2025, 5, 1))
    recorder = Recorder([files], Metrics(), max_queued_bytes=1 << 20)
    await recorder.start()
    bodies = [f'{{"n": {n}, "pad": "{"x" * 200}"}}'.encode() for n in range(30)]
    for body in bodies:
        recorder.record(entry(body))
    await recorder.stop()
    written = names(tmp_path)
    assert "2025-05-01.jsonl" in written
    assert "2025-05-01.1.jsonl.gz" in written and not any(name.endswith(".1.jsonl") for name in written)
    lines = [orjson.loads(line) for line in recording_bytes(tmp_path).splitlines()]
    assert [line["body"].encode() for line in lines] == bodies


async def test_day_change_closes_the_file_and_expires_old_days(tmp_path: Path) -> None:
    """A new UTC day opens a new file, compresses yesterday's and deletes days past retention."""
    today = [date(2025, 5, 1)]
    old = tmp_path / "2025-04-20.1.jsonl.gz"
    old.write_bytes(gzip.compress(b"{}\n"))
    files = DailyRecordingFiles(tmp_path, max_file_bytes=1 << 20, retention_days=3, today=lambda: today[0])
    await files.start()
    await files.write([to_line(entry())])
    assert not old.exists()
    today[0] = date(2025, 5, 5)
    await files.write([to_line(entry())])
    await files.stop()
    assert names(tmp_path) == ["2025-05-05.jsonl"]
    today[0] = date(2025, 5, 4)
    files = DailyRecordingFiles(tmp_path, max_file_bytes=1 << 20, retention_days=3, today=lambda: today[0])
    (tmp_path / "2025-05-03.2.jsonl").write_bytes(to_line(entry()))
    await files.start()
    await files.stop()
    assert names(tmp_path) == ["2025-05-03.2.jsonl.gz", "2025-05-05.jsonl"]


async def test_open_file_of_an_earlier_day_is_closed_at_start(tmp_path: Path) -> None:
    """A process down across midnight closes and compresses the old day's open file when it starts."""
    (tmp_path / "2025-05-01.jsonl").write_bytes(to_line(entry()))
    (tmp_path / "2025-05-01.1.jsonl.gz").write_bytes(gzip.compress(to_line(entry())))
    (tmp_path / "2025-05-01.2.jsonl.gz.partial").write_bytes(b"torn")
    files = DailyRecordingFiles(tmp_path, max_file_bytes=1 << 20, retention_days=30, today=lambda: date(2025, 5, 2))
    await files.start()
    await files.stop()
    assert names(tmp_path) == ["2025-05-01.1.jsonl.gz", "2025-05-01.2.jsonl.gz"]


async def test_unwritable_recordings_directory_does_not_fail_requests(make_settings: SettingsFactory) -> None:
    """With recordings/ unusable (a file in its place) the OM is still acked; the loss is counted."""
    settings = make_settings()
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / RECORDINGS_DIR).write_text("in the way")
    async with live_receiver(settings) as client:
        for _ in range(3):
            assert is_ack(await client.post(OM_PATH, content=outbound_message(1), headers=SOAP))
        # The writes happen in the background: wait for the three failures to be counted.
        for _ in range(100):
            if await failures_metric(client) >= 3:
                break
            await asyncio.sleep(0.02)
        assert await failures_metric(client) == 3


async def test_full_recording_queue_drops_recordings_not_requests(make_settings: SettingsFactory) -> None:
    """With a queue of 0 bytes every request is acked and every recording counted as lost."""
    settings = make_settings(recording_queue_max_bytes=0)
    async with live_receiver(settings) as client:
        for n in range(5):
            assert is_ack(await client.post(OM_PATH, content=outbound_message(1, start=n), headers=SOAP))
        assert await failures_metric(client) == 5
    assert recordings(settings) == []


async def test_recording_disabled_writes_nothing(make_settings: SettingsFactory) -> None:
    """RECEIVER_RECORDING_ENABLED=false: no recordings directory, no failures."""
    settings = make_settings(recording_enabled=False)
    async with live_receiver(settings) as client:
        assert is_ack(await client.post(OM_PATH, content=outbound_message(1), headers=SOAP))
        assert await failures_metric(client) == 0
    assert not (settings.data_dir / RECORDINGS_DIR).exists()


@pytest.mark.kafka
async def test_raw_topic_gets_the_same_redacted_lines(kafka_settings: SettingsFactory) -> None:
    """With Kafka and kafka_record_raw, salesforce.raw holds each request's line, SessionId nil."""
    settings = kafka_settings(kafka_record_raw=True, kafka_raw_topic=unique_topic("raw"))
    async with live_receiver(settings) as client:
        assert is_ack(await client.post(OM_PATH, content=outbound_message(2), headers=SOAP))
        assert (await client.post(OM_PATH, content=b"<oops", headers=SOAP)).status_code == 400
    records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_raw_topic, expect=2)
    lines = sorted((orjson.loads(record.value) for record in records), key=lambda line: line["received_at"])
    assert [line["outcome"]["status"] for line in lines] == [200, 400]
    assert all(SESSION_ID not in record.value.decode() for record in records)
    assert [line["received_at"] for line in recordings(settings)] == [line["received_at"] for line in lines]


def test_recording_files_are_private_to_the_service(tmp_path: Path) -> None:
    """Recording files are created without access for other users (0640 at most)."""
    files = DailyRecordingFiles(tmp_path, max_file_bytes=1 << 20, retention_days=3, today=lambda: date(2025, 5, 1))
    files._write([to_line(entry())])
    files._close_descriptor()
    [path] = tmp_path.iterdir()
    assert os.stat(path).st_mode & 0o007 == 0
