"""POST /webhooks/{integration}/events and /webhooks/terapi on a live server, signatures for real."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from receiver.file_sink import EVENTS_FILE, QUARANTINE_FILE
from tests.conftest import SettingsFactory, live_receiver
from tests.event_payloads import (
    ORG,
    ROTATED_SECRET,
    SECRET,
    TERAPI_SECRET,
    change_event,
    platform_message,
    sample,
    signed_headers,
    terapi_headers,
)
from tests.kafka_helpers import read_topic

EVENTS_PATH = "/webhooks/salesforce/events"


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture
def event_settings(make_settings: SettingsFactory) -> SettingsFactory:
    def build(**overrides: Any) -> Any:
        return make_settings(**{"event_secrets": SECRET, "terapi_webhook_secret": TERAPI_SECRET, **overrides})

    return build


def written(settings: Any) -> list[dict[str, Any]]:
    path = settings.data_dir / EVENTS_FILE
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def assert_problem(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["reason"] == reason and problem["detail"]


@pytest.mark.kafka
async def test_platform_event_sample_lands_on_the_broker(kafka_settings: SettingsFactory) -> None:
    """A signed platform event is accepted and published with EventUuid as ce_id."""
    settings = kafka_settings(event_secrets=SECRET)
    body = dumps(sample("platform_event_low_ink.json"))
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
    assert response.status_code == 200 and response.json() == {"accepted": 1, "duplicates": 0}
    [record] = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=1)
    assert record.header("ce_type") == "com.salesforce.platform_event"
    assert record.header("ce_id") == "2ec0e371-1395-457f-9275-be1b527a72f7"
    assert record.header("ce_time") == "2017-04-09T18:31:40.517Z"
    assert record.key == f"{ORG}:/event/Low_Ink__e".encode()
    data = orjson.loads(record.value)
    assert data["platform_event"]["replay_id"] == 2
    assert data["fields"]["Ink_Percentage__c"] == 0.2


@pytest.mark.kafka
async def test_an_event_over_the_kafka_request_bound_is_413_and_the_producer_keeps_serving(
    kafka_settings: SettingsFactory,
) -> None:
    """No retry makes an event smaller: 413 event_too_large at once (it was a 503 retried for a
    day), before any event of the message is sent (resends would publish the others again),
    and the next event publishes on the same producer."""
    settings = kafka_settings(event_secrets=SECRET, kafka_max_request_bytes=4096)
    large = sample("platform_event_low_ink.json")
    large["data"]["payload"]["Notes__c"] = "x" * 8000
    large_body = dumps([platform_message(EventUuid=str(uuid.uuid4()), replayId="8"), large])
    small_body = dumps(platform_message(EventUuid=str(uuid.uuid4()), replayId="9"))
    async with live_receiver(settings) as client:
        for _ in range(2):  # the sender's resend
            refused = await client.post(EVENTS_PATH, content=large_body, headers=signed_headers(large_body))
        accepted = await client.post(EVENTS_PATH, content=small_body, headers=signed_headers(small_body))
        metrics = (await client.get("/metrics")).text
    assert_problem(refused, 413, "event_too_large")
    assert "RECEIVER_KAFKA_MAX_REQUEST_BYTES" in refused.json()["detail"]
    assert accepted.json() == {"accepted": 1, "duplicates": 0}
    [record] = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=1)
    assert record.header("ce_id") == orjson.loads(small_body)["data"]["event"]["EventUuid"]
    assert 'reason="event_too_large",status="413"' in metrics


@pytest.mark.kafka
async def test_cdc_with_several_records_is_one_event_each_on_the_broker(kafka_settings: SettingsFactory) -> None:
    """A CDC event naming three records becomes three events keyed by record, exact commitNumber."""
    settings = kafka_settings(event_secrets=SECRET)
    records_ids = ["001xx000003DGb4AAG", "001xx000003DGb5AAG", "001xx000003DGb6AAG"]
    body = dumps(change_event(records_ids, Name="Acme", BillingAddress={"City": "Paris"}))
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
    assert response.json() == {"accepted": 3, "duplicates": 0}
    records = await read_topic(settings.kafka_bootstrap_servers or "", settings.kafka_topic, expect=3)
    assert sorted(r.header("ce_subject") for r in records) == records_ids
    for record in records:
        assert record.key == f"{ORG}:{record.header('ce_subject')}".encode()
        data = orjson.loads(record.value)
        assert data["change_event"]["commit_number"] == 1745500706683617281
        assert b"1745500706683617281" in record.value
        assert data["fields"]["BillingAddress"] == {"City": "Paris"}
        assert record.header("ce_time") == "2025-04-24T13:18:26.000Z"


async def test_rotated_secret_is_accepted(event_settings: SettingsFactory) -> None:
    """With two secrets configured, a body signed with the second one is accepted."""
    settings = event_settings(event_secrets=f"{SECRET},{ROTATED_SECRET}")
    body = dumps(sample("platform_event_low_ink.json"))
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body, secret=ROTATED_SECRET))
    assert response.status_code == 200


async def test_per_org_secret_from_the_configuration(event_settings: SettingsFactory) -> None:
    """A secret configured for one org only verifies that org's requests."""
    settings = event_settings(event_secrets="", event_secrets_by_org={ORG: [ROTATED_SECRET]})
    body = dumps(sample("platform_event_low_ink.json"))
    async with live_receiver(settings) as client:
        ok = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body, secret=ROTATED_SECRET))
        other_org = signed_headers(body, secret=ROTATED_SECRET, org="00DD0000000muCUMAY")
        refused = await client.post(EVENTS_PATH, content=body, headers=other_org)
    assert ok.status_code == 200
    assert_problem(refused, 401, "bad_signature")


async def test_per_org_secret_under_a_15_character_id_for_an_org_named_in_the_body(
    event_settings: SettingsFactory,
) -> None:
    """The org's secret is found by the body's organizationId too, and its key may be 15 characters."""
    settings = event_settings(event_secrets="", event_secrets_by_org={ORG[:15]: [ROTATED_SECRET]})
    mine = dumps({**sample("platform_event_low_ink.json"), "organizationId": ORG[:15]})
    other = dumps({**sample("platform_event_low_ink.json"), "organizationId": "00DD0000000muCUMAY"})
    async with live_receiver(settings) as client:
        ok = await client.post(EVENTS_PATH, content=mine, headers=signed_headers(mine, secret=ROTATED_SECRET, org=None))
        refused = await client.post(
            EVENTS_PATH, content=other, headers=signed_headers(other, secret=ROTATED_SECRET, org=None)
        )
    assert ok.json() == {"accepted": 1, "duplicates": 0}
    assert_problem(refused, 401, "bad_signature")
    assert [event["source"] for event in written(settings)] == [f"/salesforce/orgs/{ORG}"]


async def test_the_org_for_a_per_org_secret_is_read_as_the_message_reads_it(event_settings: SettingsFactory) -> None:
    """The org of a wrapper's messages, and a blank X-Salesforce-Org-Id (no org), select the org's
    secret as they select the org; an organizationId that is not text is a 401, not a 500."""
    settings = event_settings(event_secrets="", event_secrets_by_org={ORG: [ROTATED_SECRET]})

    def message() -> dict[str, Any]:
        return {**platform_message(EventUuid=str(uuid.uuid4()), replayId="3"), "organizationId": ORG}

    wrapped = dumps({"events": [message()]})
    blank_header = dumps(message())
    not_text = dumps({**message(), "organizationId": [ORG]})
    async with live_receiver(settings) as client:
        answers = [
            await client.post(
                EVENTS_PATH, content=wrapped, headers=signed_headers(wrapped, secret=ROTATED_SECRET, org=None)
            ),
            await client.post(
                EVENTS_PATH, content=blank_header, headers=signed_headers(blank_header, secret=ROTATED_SECRET, org="")
            ),
            await client.post(
                EVENTS_PATH, content=not_text, headers=signed_headers(not_text, secret=ROTATED_SECRET, org=None)
            ),
        ]
    assert [answer.status_code for answer in answers[:2]] == [200, 200], [answer.text for answer in answers]
    assert_problem(answers[2], 401, "bad_signature")


async def test_per_integration_secret(event_settings: SettingsFactory, tmp_path: Path) -> None:
    """A secret configured for salesforce-sandbox verifies that integration's requests only."""
    org_map = tmp_path / "orgs.toml"
    org_map.write_text(f'[orgs."{ORG}"]\nconnection_id = "acme-sandbox"\nintegration = "salesforce-sandbox"\n')
    settings = event_settings(
        event_secrets="", event_secrets_by_integration={"salesforce-sandbox": [ROTATED_SECRET]}, org_map_file=org_map
    )
    body = dumps(sample("platform_event_low_ink.json"))
    headers = signed_headers(body, secret=ROTATED_SECRET)
    async with live_receiver(settings) as client:
        sandbox = await client.post("/webhooks/salesforce-sandbox/events", content=body, headers=headers)
        production = await client.post(EVENTS_PATH, content=body, headers=headers)
    assert sandbox.json() == {"accepted": 1, "duplicates": 0}
    assert_problem(production, 401, "bad_signature")
    assert [event["data"]["connection"]["connection_id"] for event in written(settings)] == ["acme-sandbox"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda body, h: h.update(
                {"webhook-signature": signed_headers(body, secret=ROTATED_SECRET)["webhook-signature"]}
            ),
            "bad_signature",
        ),
        (lambda body, h: h.update(signed_headers(body, timestamp=int(time.time()) - 3600)), "stale_timestamp"),
        (lambda body, h: h.update(signed_headers(body, timestamp=int(time.time()) + 3600)), "future_timestamp"),
        (lambda body, h: h.pop("webhook-signature"), "missing_signature_headers"),
        (lambda body, h: h.pop("webhook-id"), "missing_signature_headers"),
    ],
    ids=["wrong_secret", "stale", "future", "no_signature", "no_id"],
)
async def test_authentication_failures_are_401_problems(
    event_settings: SettingsFactory, mutate: Any, reason: str
) -> None:
    """Wrong secret, stale or future timestamp, missing headers: 401 problem+json, nothing written."""
    settings = event_settings()
    body = dumps(sample("platform_event_low_ink.json"))
    headers = signed_headers(body)
    mutate(body, headers)
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=headers)
    assert_problem(response, 401, reason)
    assert written(settings) == []


async def test_tampered_body_is_refused(event_settings: SettingsFactory) -> None:
    """A body changed after signing fails verification."""
    settings = event_settings()
    body = dumps(sample("platform_event_low_ink.json"))
    headers = signed_headers(body)
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body.replace(b"XZO-5", b"XZO-6"), headers=headers)
    assert_problem(response, 401, "bad_signature")


async def test_resent_webhook_id_is_a_duplicate(event_settings: SettingsFactory) -> None:
    """The same webhook-id sent twice publishes once; the second answer counts duplicates."""
    settings = event_settings()
    body = dumps(sample("platform_event_low_ink.json"))
    headers = signed_headers(body, webhook_id="msg_resent")
    async with live_receiver(settings) as client:
        first = await client.post(EVENTS_PATH, content=body, headers=headers)
        second = await client.post(EVENTS_PATH, content=body, headers=headers)
    assert first.json() == {"accepted": 1, "duplicates": 0}
    assert second.json() == {"accepted": 0, "duplicates": 1}
    assert len(written(settings)) == 1


async def test_a_signed_payload_that_cannot_be_processed_is_quarantined_with_the_reason(
    event_settings: SettingsFactory,
) -> None:
    """Authenticated but refused (400): the sender will not resend it, so the quarantine keeps it."""
    settings = event_settings()
    body = dumps({"channel": "/event/Low_Ink__e", "data": {"payload": {"Serial__c": "1"}, "event": {}}})
    async with live_receiver(settings) as client:
        refused = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
        unsigned = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body, secret=ROTATED_SECRET))
    assert_problem(refused, 400, "missing_event_id")
    assert_problem(unsigned, 401, "bad_signature")
    [quarantined] = [orjson.loads(line) for line in (settings.data_dir / QUARANTINE_FILE).read_bytes().splitlines()]
    assert quarantined["reason"] == "missing_event_id"
    assert quarantined["kind"] == "event" and quarantined["body"] == body.decode()


async def test_a_reused_webhook_id_with_new_events_publishes_them(event_settings: SettingsFactory) -> None:
    """A sender's ids are unique only to it: the same webhook-id carrying other events is no retry."""
    settings = event_settings()
    bodies = [dumps(platform_message(EventUuid=str(uuid.uuid4()), replayId=str(n))) for n in (1, 2)]
    async with live_receiver(settings) as client:
        answers = [
            (await client.post(EVENTS_PATH, content=body, headers=signed_headers(body, webhook_id="msg_1"))).json()
            for body in bodies
        ]
        retry = await client.post(EVENTS_PATH, content=bodies[1], headers=signed_headers(bodies[1], webhook_id="msg_1"))
    assert answers == [{"accepted": 1, "duplicates": 0}] * 2
    assert retry.json() == {"accepted": 0, "duplicates": 1}
    assert len(written(settings)) == 2


async def test_gap_and_overflow_events(event_settings: SettingsFactory) -> None:
    """GAP_UPDATE gives one event per record; GAP_OVERFLOW, without records, one named by entity."""
    settings = event_settings()
    gap = change_event(["001xx000003DGb4AAG"], change_type="GAP_UPDATE", sequence=1)
    overflow = change_event([], change_type="GAP_OVERFLOW", sequence=2)
    body = dumps([gap, overflow])
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
    assert response.json() == {"accepted": 2, "duplicates": 0}
    by_type = {event["data"]["change_event"]["change_type"]: event for event in written(settings)}
    assert by_type["GAP_UPDATE"]["subject"] == "001xx000003DGb4AAG"
    assert "subject" not in by_type["GAP_OVERFLOW"]
    assert by_type["GAP_OVERFLOW"]["id"].endswith(":Account")


async def test_pubsub_decoded_payload_keeps_bitmaps_and_converts_dates(event_settings: SettingsFactory) -> None:
    """Avro-decoded CDC: epoch-ms dates become ISO, bitmap field lists are kept and flagged."""
    settings = event_settings()
    message = change_event(["001xx000003DGb4AAG"], LastModifiedDate=1745500706000, Name=None, Phone=None)
    message["data"]["payload"]["ChangeEventHeader"]["changedFields"] = ["0x650004E0", "4-0x10"]
    message["data"]["payload"]["ChangeEventHeader"]["nulledFields"] = []
    message["data"]["payload"]["ChangeEventHeader"]["diffFields"] = []
    body = dumps(message)
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text
    [event] = written(settings)
    change = event["data"]["change_event"]
    assert change["changed_fields"] == ["0x650004E0", "4-0x10"]
    assert change["changed_fields_encoding"] == "bitmap"
    assert event["data"]["fields"]["LastModifiedDate"] == "2025-04-24T13:18:26.000Z"
    assert event["data"]["fields"]["Phone"] is None


async def test_events_wrapper_and_org_in_body(event_settings: SettingsFactory) -> None:
    """{"events": [...]} with organizationId in the messages and no org header is accepted."""
    settings = event_settings()
    message = sample("platform_event_low_ink.json")
    message["organizationId"] = "00D1I000003qqqE"
    body = dumps({"events": [message]})
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body, org=None))
    assert response.status_code == 200, response.text
    assert written(settings)[0]["sforgid"] == ORG


@pytest.mark.parametrize(
    ("body", "headers_org", "status", "reason"),
    [
        (b"{not json", ORG, 400, "malformed_json"),
        (b'{"channel": "/event/X__e"}', ORG, 400, "invalid_event"),
        (dumps(sample("platform_event_low_ink.json")), None, 400, "missing_org_id"),
        (dumps(sample("platform_event_low_ink.json")), "00D5g000004Xz1AEAS", 403, "unknown_org"),
    ],
    ids=["malformed", "invalid", "no_org", "unknown_org"],
)
async def test_bad_bodies_get_their_status(
    event_settings: SettingsFactory, body: bytes, headers_org: str | None, status: int, reason: str
) -> None:
    """Malformed, invalid, org-less and unknown-org bodies each get their status and reason."""
    settings = event_settings()
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body, org=headers_org))
    assert_problem(response, status, reason)


async def test_xml_content_type_is_415(event_settings: SettingsFactory) -> None:
    """An events body declared as XML is refused with 415."""
    async with live_receiver(event_settings()) as client:
        response = await client.post(EVENTS_PATH, content=b"<a/>", headers={"Content-Type": "text/xml"})
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("header", ["X-Terapi-Hmac-Sha256", "X-Nango-Hmac-Sha256"])
async def test_terapi_forward_is_accepted_under_both_header_names(event_settings: SettingsFactory, header: str) -> None:
    """A terapi forward signed with the webhook secret is published with its connection."""
    settings = event_settings()
    forward = {
        "from": "salesforce",
        "type": "forward",
        "connectionId": "example-contacts",
        "providerConfigKey": "salesforce",
        "payload": sample("platform_event_low_ink.json"),
    }
    body = dumps(forward)
    async with live_receiver(settings) as client:
        response = await client.post("/webhooks/terapi", content=body, headers=terapi_headers(body, header=header))
    assert response.status_code == 200, response.text
    [event] = written(settings)
    assert event["sforgid"] == ORG
    assert event["terapiconnectionid"] == "example-contacts"


async def test_terapi_forward_with_a_bad_signature_is_401(event_settings: SettingsFactory) -> None:
    """A forward signed with another secret is refused."""
    body = dumps(
        {"from": "salesforce", "type": "forward", "connectionId": "c", "providerConfigKey": "salesforce", "payload": {}}
    )
    async with live_receiver(event_settings()) as client:
        response = await client.post(
            "/webhooks/terapi", content=body, headers=terapi_headers(body, secret="other-secret-value")
        )
    assert_problem(response, 401, "bad_signature")


async def test_terapi_forward_of_an_unknown_connection_is_403(event_settings: SettingsFactory) -> None:
    """A forward from a connection whose org is not known is refused and quarantined."""
    settings = event_settings()
    forward = {
        "from": "salesforce",
        "type": "forward",
        "connectionId": "nobody",
        "providerConfigKey": "salesforce",
        "payload": {**sample("platform_event_low_ink.json"), "organizationId": "00D5g000004Xz1AEAS"},
    }
    body = dumps(forward)
    async with live_receiver(settings) as client:
        response = await client.post("/webhooks/terapi", content=body, headers=terapi_headers(body))
    assert_problem(response, 403, "unknown_org")


async def test_message_shape_of_the_apex_example_is_accepted(event_settings: SettingsFactory) -> None:
    """What examples/salesforce/SignedEventPublisher.cls posts (events wrapper, +0000 dates) is accepted."""
    settings = event_settings()
    message = {
        "channel": "/event/Low_Ink__e",
        "data": {
            "schema": None,
            "payload": {"CreatedDate": "2017-04-09T18:31:40.517+0000", "Printer_Model__c": "XZO-5"},
            "event": {"replayId": 7, "EventUuid": "9a6c0e0c-1395-457f-9275-be1b527a72f7"},
        },
    }
    body = dumps({"events": [message]})
    async with live_receiver(settings) as client:
        response = await client.post(EVENTS_PATH, content=body, headers=signed_headers(body))
    assert response.json() == {"accepted": 1, "duplicates": 0}
    [event] = written(settings)
    assert event["time"] == "2017-04-09T18:31:40.517Z"
    assert event["id"] == "9a6c0e0c-1395-457f-9275-be1b527a72f7"
