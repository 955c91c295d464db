"""POST /webhooks/{integration}/outbound-messages on a live server, events read back from Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from lxml import etree

from receiver.file_sink import EVENTS_FILE, QUARANTINE_FILE
from receiver.processing import PayloadProcessor
from tests.broker import start_kafka, stop_kafka
from tests.conftest import SettingsFactory, live_receiver
from tests.kafka_helpers import read_topic
from tests.om_payloads import SAMPLE_FILES, SESSION_ID, notification_ids, outbound_message, sample

SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
OM_PATH = "/webhooks/salesforce/outbound-messages"
NS = {"soapenv": "http://schemas.xmlsoap.org/soap/envelope/", "om": "http://soap.sforce.com/2005/09/outbound"}


def is_ack(response: httpx.Response) -> bool:
    assert response.headers["content-type"].startswith("text/xml")
    document = etree.fromstring(response.content)
    return document.xpath("string(//om:notificationsResponse/om:Ack)", namespaces=NS) == "true"


def fault(response: httpx.Response) -> tuple[str, str]:
    assert response.headers["content-type"].startswith("text/xml")
    document = etree.fromstring(response.content)
    code = document.xpath("string(//soapenv:Fault/faultcode)", namespaces=NS)
    reason = document.xpath("string(//soapenv:Fault/faultstring)", namespaces=NS)
    assert code and reason
    return code, reason


@pytest.mark.kafka
@pytest.mark.parametrize("name", SAMPLE_FILES)
async def test_each_sample_gives_one_event_per_notification(kafka_settings: SettingsFactory, name: str) -> None:
    """Every real sample is acked and lands as one event per notification with the pinned headers."""
    settings = kafka_settings()
    body = sample(name)
    expected_ids = set(etree.fromstring(body).xpath("//om:Notification/om:Id/text()", namespaces=NS))
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=body, headers=SOAP)
        assert response.status_code == 200 and is_ack(response)
    records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=len(expected_ids))
    assert {r.header("ce_id") for r in records} == expected_ids
    for record in records:
        data = orjson.loads(record.value)
        org = data["organization_id"]
        assert record.header("ce_type") == "com.salesforce.outbound_message"
        assert record.header("ce_source") == f"/salesforce/orgs/{org}"
        assert record.header("ce_subject") == data["record_id"]
        assert record.key == f"{org}:{data['record_id']}".encode()
        assert record.header("ce_terapiconnectionid") == data["connection"]["connection_id"]
        assert data["outbound_message"]["notification_id"] == record.header("ce_id")
        assert b"REDACTED" not in record.value and b"SessionId" not in record.value


@pytest.mark.kafka
async def test_contact_sample_data_and_omitted_email(kafka_settings: SettingsFactory) -> None:
    """The Contact sample: fields as sent, the notification without Email has no Email key."""
    settings = kafka_settings()
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=sample("contact_2_notifications.xml"), headers=SOAP)
        assert is_ack(response)
    records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=2)
    by_id = {r.header("ce_id"): orjson.loads(r.value) for r in records}
    first = by_id["04l1I000000fztEQAQ"]
    assert first["fields"]["LastName"] == "Black"
    assert "Email" not in first["fields"]
    assert by_id["04l1I000000fzt9QAA"]["fields"]["Email"] == "drb24@cornell.edu"
    assert first["connection"] == {"connection_id": "example-contacts", "integration": "salesforce"}
    assert first["object"] == "Contact"


@pytest.mark.kafka
async def test_hundred_notifications_are_all_published_before_the_ack(kafka_settings: SettingsFactory) -> None:
    """A 100-notification message: the Ack comes after all 100 events are in the topic."""
    settings = kafka_settings()
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=outbound_message(100), headers=SOAP)
        assert is_ack(response)
        # Read while the server still runs: everything acked must already be there.
        records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=100)
    assert {r.header("ce_id") for r in records} == notification_ids(100)


async def test_hundred_and_one_notifications_is_a_client_fault(make_settings: SettingsFactory) -> None:
    """101 notifications is a 400 SOAP Fault naming the reason; nothing is written."""
    settings = make_settings()
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=outbound_message(101), headers=SOAP)
    assert response.status_code == 400
    code, reason = fault(response)
    assert code == "soapenv:Client" and "notifications" in reason
    assert (settings.data_dir / EVENTS_FILE).read_bytes() == b""


async def test_typed_with_wsdl_and_strings_without(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """With the action's WSDL the fields are typed; without any WSDL they stay the strings sent."""
    body = sample("discount_rule_custom_object.xml")
    results = {}
    for label, wsdl_dir in (("typed", None), ("untyped", tmp_path / "no-wsdl")):
        overrides = {"data_dir": tmp_path / label}
        if wsdl_dir is not None:
            overrides["wsdl_dir"] = wsdl_dir
        settings = make_settings(**overrides)
        async with live_receiver(settings) as client:
            assert is_ack(await client.post(OM_PATH, content=body, headers=SOAP))
        results[label] = orjson.loads((settings.data_dir / EVENTS_FILE).read_bytes())["data"]["fields"]
    typed, untyped = results["typed"], results["untyped"]
    assert typed["Discount__c"] == 0.0 and isinstance(typed["Discount__c"], float)
    assert typed["Price__c"] == 419.0
    assert typed["IsDeleted"] is False
    assert typed["CreatedDate"] == "2017-05-02T11:53:53.000Z"
    assert typed["ContractTerm__c"] == "24"
    assert untyped["Discount__c"] == "0.0" and untyped["IsDeleted"] == "false" and untyped["Price__c"] == "419.0"


async def test_ce_time_is_last_modified_date(make_settings: SettingsFactory) -> None:
    """ce_time is the record's LastModifiedDate when it is sent."""
    settings = make_settings()
    async with live_receiver(settings) as client:
        assert is_ack(await client.post(OM_PATH, content=sample("discount_rule_custom_object.xml"), headers=SOAP))
    event = orjson.loads((settings.data_dir / EVENTS_FILE).read_bytes())
    assert event["time"] == "2018-05-04T11:35:40.000Z"


def xxe_body(secret_file: Path) -> bytes:
    return f"""<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file://{secret_file}"> ]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
 <soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">
  <OrganizationId>&xxe;</OrganizationId></notifications></soapenv:Body></soapenv:Envelope>""".encode()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>&lol9;</soapenv:Body></soapenv:Envelope>"""


def hostile_bodies(secret_file: Path) -> dict[str, bytes]:
    om = outbound_message(1)
    return {
        "xxe": xxe_body(secret_file),
        "billion_laughs": BILLION_LAUGHS,
        "deep": b"<a>" * 20_000 + b"</a>" * 20_000,
        "wrong_namespace": om.replace(b"http://soap.sforce.com/2005/09/outbound", b"http://example.com/not-salesforce"),
        "missing_org": outbound_message(1, organization_element=""),
        "org_not_00D": outbound_message(1, org15="001D0000000muCU", url_org15="001D0000000muCU"),
        "bad_checksum": outbound_message(1, organization_element="<OrganizationId>00D1I000003qqqEAAA</OrganizationId>"),
        "org_url_mismatch": outbound_message(1, url_org15="00DD0000000muCU"),
        "not_xml": b"this is not xml at all",
    }


async def test_hostile_inputs_are_client_faults_and_leave_no_trace(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Each hostile body is a 400 Client Fault; no event is written and the local file never leaks."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("TOP-SECRET-FILE-CONTENT")
    settings = make_settings()
    async with live_receiver(settings) as client:
        for name, body in hostile_bodies(secret_file).items():
            started = time.monotonic()
            response = await client.post(OM_PATH, content=body, headers=SOAP)
            assert response.status_code == 400, (name, response.text)
            code, _ = fault(response)
            assert code == "soapenv:Client", name
            assert b"TOP-SECRET" not in response.content
            assert time.monotonic() - started < 5, name
        assert (await client.get("/healthz")).status_code == 200
    assert (settings.data_dir / EVENTS_FILE).read_bytes() == b""
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert b"TOP-SECRET" not in path.read_bytes()


async def test_a_bug_is_a_soap_fault_salesforce_retries_and_the_payload_is_recorded(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception: a soapenv:Server Fault (500), not a plain-text page; recorded for replay."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(PayloadProcessor, "outbound_message", broken)
    settings = make_settings()
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=outbound_message(1, start=700), headers=SOAP)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 500
    assert fault(response)[0] == "soapenv:Server"
    assert 'kind="outbound_message",reason="internal_error",status="500"} 1.0' in metrics
    [line] = [
        orjson.loads(line)
        for path in (settings.data_dir / "recordings").glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    assert line["outcome"] == {"status": 500, "reason": "internal_error"}
    assert "notifications" in line["body"]


async def test_an_authenticated_message_that_cannot_be_processed_is_quarantined_redacted(
    make_settings: SettingsFactory,
) -> None:
    """A Client Fault after the token check: kept in the quarantine with its reason, SessionId nil."""
    settings = make_settings(outbound_token="om-token")
    body = outbound_message(1, start=5).replace(b"<Id>04l1I0000000005QAA</Id>", b"<Id>not-an-id</Id>")
    async with live_receiver(settings) as client:
        response = await client.post(f"{OM_PATH}?token=om-token", content=body, headers=SOAP)
        wrong_token = await client.post(f"{OM_PATH}?token=guess", content=body, headers=SOAP)
    assert response.status_code == 400 and fault(response)[0] == "soapenv:Client"
    assert wrong_token.status_code == 401
    [quarantined] = [orjson.loads(line) for line in (settings.data_dir / QUARANTINE_FILE).read_bytes().splitlines()]
    assert quarantined["reason"] == "invalid_id" and quarantined["kind"] == "outbound_message"
    assert "not-an-id" in quarantined["body"] and SESSION_ID not in quarantined["body"]


async def test_json_content_type_is_415(make_settings: SettingsFactory) -> None:
    """An OM posted as application/json is refused with 415 before parsing."""
    async with live_receiver(make_settings()) as client:
        response = await client.post(OM_PATH, content=b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert response.status_code == 415
    assert fault(response)[0] == "soapenv:Client"


async def raw_exchange(base_url: str, head: bytes, body_part: bytes) -> bytes:
    """Send a request head and only part of its body, then read the answer the server gives."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body_part)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()


async def test_declared_oversize_body_is_413_without_reading_it(make_settings: SettingsFactory) -> None:
    """A Content-Length over the bound is answered 413 while the body has not even been sent."""
    settings = make_settings(max_body_bytes=4096)
    head = (
        f"POST {OM_PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: text/xml\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    async with live_receiver(settings) as client:
        answer = await raw_exchange(str(client.base_url).rstrip("/"), head, b"<soapenv:Envelope")
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"soapenv:Client" in answer


async def test_chunked_oversize_body_is_413_before_the_end(make_settings: SettingsFactory) -> None:
    """A chunked body without Content-Length is answered 413 once past the bound, before it ends."""
    settings = make_settings(max_body_bytes=4096)
    head = f"POST {OM_PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 2048
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4))
    async with live_receiver(settings) as client:
        answer = await raw_exchange(str(client.base_url).rstrip("/"), head.encode(), chunks)
    assert answer.startswith(b"HTTP/1.1 413")


async def test_chunked_oversize_body_is_413(make_settings: SettingsFactory) -> None:
    """A chunked body without Content-Length is refused once it passes the bound."""
    settings = make_settings(max_body_bytes=4096)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"<a>" + b"x" * 1000 + b"</a>"

    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=chunks(), headers=SOAP)
    assert response.status_code == 413


async def test_unknown_org_is_403_and_quarantined_without_session_id(make_settings: SettingsFactory) -> None:
    """An org missing from the map is a 403 Fault; the payload is quarantined with its SessionId nil."""
    settings = make_settings()
    body = outbound_message(2, org15="00D5g000004Xz1A", url_org15="00D5g000004Xz1A")
    async with live_receiver(settings) as client:
        response = await client.post(OM_PATH, content=body, headers=SOAP)
    assert response.status_code == 403
    assert fault(response)[0] == "soapenv:Client"
    record = orjson.loads((settings.data_dir / QUARANTINE_FILE).read_bytes())
    assert record["reason"] == "unknown_org"
    assert record["organization_id"] == "00D5g000004Xz1AEAS"
    assert SESSION_ID not in record["body"] and "Name 1" in record["body"]


async def test_org_of_another_integration_is_403(make_settings: SettingsFactory) -> None:
    """A production org posted to the sandbox integration does not resolve."""
    async with live_receiver(make_settings()) as client:
        response = await client.post(
            "/webhooks/salesforce-sandbox/outbound-messages", content=outbound_message(1), headers=SOAP
        )
    assert response.status_code == 403


async def test_unknown_integration_is_404(make_settings: SettingsFactory) -> None:
    """An integration the receiver is not configured for is a 404 Fault."""
    async with live_receiver(make_settings()) as client:
        response = await client.post("/webhooks/hubspot/outbound-messages", content=outbound_message(1), headers=SOAP)
    assert response.status_code == 404
    assert fault(response)[0] == "soapenv:Client"


async def test_token_is_required_when_configured(make_settings: SettingsFactory) -> None:
    """With RECEIVER_OUTBOUND_TOKEN set: no token 401, wrong token 401, right token acked."""
    async with live_receiver(make_settings(outbound_token="s3cret-token")) as client:
        assert (await client.post(OM_PATH, content=outbound_message(1), headers=SOAP)).status_code == 401
        wrong = await client.post(OM_PATH + "?token=nope", content=outbound_message(1), headers=SOAP)
        assert wrong.status_code == 401 and "s3cret" not in wrong.text
        right = await client.post(OM_PATH + "?token=s3cret-token", content=outbound_message(1), headers=SOAP)
        assert is_ack(right)


async def test_resend_after_ack_publishes_nothing_new(make_settings: SettingsFactory) -> None:
    """Salesforce resends after an Ack: the second copy is acked and writes no second event."""
    settings = make_settings()
    async with live_receiver(settings) as client:
        for _ in range(2):
            assert is_ack(await client.post(OM_PATH, content=outbound_message(3), headers=SOAP))
    assert len((settings.data_dir / EVENTS_FILE).read_bytes().splitlines()) == 3


async def test_session_id_reaches_no_event_and_no_log(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The SessionId of an accepted message is in no event, no log line and no metric."""
    settings = make_settings()
    caplog.set_level("DEBUG")
    async with live_receiver(settings) as client:
        assert is_ack(await client.post(OM_PATH, content=outbound_message(2), headers=SOAP))
        metrics = (await client.get("/metrics")).text
    assert SESSION_ID not in (settings.data_dir / EVENTS_FILE).read_text()
    assert SESSION_ID not in caplog.text
    assert SESSION_ID not in metrics
    assert 'receiver_events_published_total{kind="outbound_message"} 2.0' in metrics


@pytest.mark.kafka
@pytest.mark.faults
async def test_broker_stopped_gives_a_server_fault_then_the_resend_is_acked(kafka_settings: SettingsFactory) -> None:
    """Broker down: a 5xx Server Fault within the publish timeout, no Ack; broker back: acked."""
    settings = kafka_settings(publish_timeout_s=4.0)
    body = outbound_message(2, start=500)
    async with live_receiver(settings) as client:
        assert is_ack(await client.post(OM_PATH, content=outbound_message(1, start=400), headers=SOAP))
        stop_kafka()
        try:
            started = time.monotonic()
            response = await client.post(OM_PATH, content=body, headers=SOAP)
            assert response.status_code in (500, 503)
            assert fault(response)[0] == "soapenv:Server"
            assert time.monotonic() - started < settings.publish_timeout_s + 2
            assert (await client.get("/readyz")).status_code == 503
        finally:
            start_kafka()
        deadline = time.monotonic() + 60
        while True:
            response = await client.post(OM_PATH, content=body, headers=SOAP)
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, response.text
            await asyncio.sleep(1)
        assert is_ack(response)
        assert (await client.get("/readyz")).status_code == 200
    records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=3)
    assert notification_ids(2, start=500) <= {r.header("ce_id") for r in records}
