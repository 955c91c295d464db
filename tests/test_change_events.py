"""Normalization: platform events and CDC messages become CloudEvents as DESIGN.md pins them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.callbacks import parse_event_body
from receiver.change_events import to_events
from receiver.errors import InvalidMessage
from receiver.event import CHANGE_EVENT, PLATFORM_EVENT, CloudEvent, Connection
from tests.event_payloads import cdc_payload, platform_message

DATA = Path(__file__).resolve().parents[1] / "examples" / "payloads"
PLATFORM_SAMPLE = (DATA / "platform_event_low_ink.json").read_bytes()
CDC_SAMPLE = (DATA / "change_event_contact_update_payload.json").read_bytes()
ORG = "00D5g000004Xz1AEAS"
CONNECTION = Connection("acme-prod", "salesforce")
RECEIVED_AT = "2025-05-01T10:00:00.000Z"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def events_of(body: bytes) -> list[CloudEvent]:
    return [event for message in parse_event_body(body) for event in to_events(message, ORG, CONNECTION, RECEIVED_AT)]


# --- platform events -----------------------------------------------------------------------


def test_platform_event_sample_becomes_one_event_keyed_by_its_uuid() -> None:
    """The sample gives one platform event: EventUuid id, CreatedDate time, channel key."""
    [event] = events_of(PLATFORM_SAMPLE)
    assert (event.type, event.id) == (PLATFORM_EVENT, "2ec0e371-1395-457f-9275-be1b527a72f7")
    assert (event.object, event.subject, event.time) == ("Low_Ink__e", None, "2017-04-09T18:31:40.517Z")
    assert event.key == f"{ORG}:/event/Low_Ink__e"
    assert event.data["fields"]["Ink_Percentage__c"] == 0.2
    assert event.data["record_id"] is None
    assert event.data["connection"] == {"connection_id": "acme-prod", "integration": "salesforce"}
    assert event.data["platform_event"] == {
        "channel": "/event/Low_Ink__e",
        "replay_id": 2,
        "event_uuid": "2ec0e371-1395-457f-9275-be1b527a72f7",
        "schema": "dffQ2QLzDNHqwB8_sHMxdA",
    }


def test_platform_event_without_uuid_is_identified_by_channel_and_replay_id() -> None:
    """Without EventUuid the id is '{channel}:{replayId}'."""
    [event] = events_of(dumps(platform_message(replayId=17)))
    assert event.id == "/event/Low_Ink__e:17"


def test_event_uuid_field_of_the_payload_is_used_when_the_envelope_has_none() -> None:
    """Apex serializes EventUuid as a field of the event record itself."""
    body = dumps({"channel": "/event/A__e", "data": {"payload": {"EventUuid": "u-1"}}})
    assert events_of(body)[0].id == "u-1"


def test_platform_event_with_neither_uuid_nor_replay_id_is_refused() -> None:
    """An event that cannot be deduplicated is refused."""
    with pytest.raises(InvalidMessage) as excinfo:
        events_of(dumps(platform_message()))
    assert excinfo.value.reason == "missing_event_id"


def test_custom_channel_is_a_platform_event_named_after_the_channel() -> None:
    """/event/X__chn custom channels carry platform events too."""
    body = dumps({"channel": "/event/Printers__chn", "data": {"payload": {}, "event": {"replayId": 5}}})
    [event] = events_of(body)
    assert (event.type, event.object, event.key) == (PLATFORM_EVENT, "Printers__chn", f"{ORG}:/event/Printers__chn")


def test_platform_event_without_created_date_takes_the_receipt_time() -> None:
    """ce_time falls back to received_at."""
    assert events_of(dumps(platform_message(replayId=1)))[0].time == RECEIVED_AT


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (1491762700517, "2017-04-09T18:31:40.517Z"),
        ("2017-04-09T18:31:40.517+0000", "2017-04-09T18:31:40.517Z"),
        ("2017-04-09T20:31:40.517+02:00", "2017-04-09T18:31:40.517Z"),
    ],
    ids=["epoch-ms", "apex-offset", "other-zone"],
)
def test_created_date_is_normalized_to_utc_iso(created: Any, expected: str) -> None:
    """CreatedDate in epoch ms or any ISO offset becomes UTC ISO with millis and Z."""
    body = dumps({"channel": "/event/A__e", "data": {"payload": {"CreatedDate": created}, "event": {"replayId": 1}}})
    assert events_of(body)[0].time == expected


@pytest.mark.parametrize("created", ["soon", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_unparseable_created_date_is_refused(created: str) -> None:
    """ce_time must be a date-time, so a broken CreatedDate, or one past year 9999 or before
    year 1 once in UTC, is invalid_event (not an OverflowError, which was a 500)."""
    body = dumps({"channel": "/event/A__e", "data": {"payload": {"CreatedDate": created}, "event": {"replayId": 1}}})
    with pytest.raises(InvalidMessage) as excinfo:
        events_of(body)
    assert excinfo.value.reason == "invalid_event"


@pytest.mark.parametrize(
    ("channel", "reason"),
    [("/data/AccountChangeEvent", "missing_change_event_header"), ("/topic/Accounts", "unsupported_channel")],
)
def test_channels_that_carry_no_usable_event_are_refused(channel: str, reason: str) -> None:
    """A /data/ payload needs its ChangeEventHeader; other channel kinds are not supported."""
    with pytest.raises(InvalidMessage) as excinfo:
        events_of(dumps({"channel": channel, "data": {"payload": {}, "event": {"replayId": 1}}}))
    assert excinfo.value.reason == reason


# --- change data capture -------------------------------------------------------------------


def test_cdc_sample_keeps_compound_name_nested_and_commit_number_exact() -> None:
    """The sample: one Contact event, Name nested as sent, 19-digit commitNumber an exact int."""
    [event] = events_of(CDC_SAMPLE)
    assert (event.type, event.object, event.subject) == (CHANGE_EVENT, "Contact", "003ak00000IiFInAAN")
    assert event.id == "0000be70-a756-e601-9202-32967602a6be:1:003ak00000IiFInAAN"
    assert event.key == f"{ORG}:003ak00000IiFInAAN"
    assert event.time == "2025-04-24T13:18:26.000Z"
    assert event.data["fields"] == {"LastModifiedDate": "2025-04-24T13:18:26.000Z", "Name": {"LastName": "Youngest"}}
    change = event.data["change_event"]
    assert change["commit_number"] == 1745500706683617281
    assert type(change["commit_number"]) is int
    assert change["commit_timestamp"] == "2025-04-24T13:18:26.000Z"
    assert change["changed_fields"] == ["LastModifiedDate", "Name.LastName"]
    assert change["changed_fields_encoding"] == "names"
    assert (change["change_type"], change["entity_name"], change["sequence_number"]) == ("UPDATE", "Contact", 1)


def test_commit_number_survives_serialization_exactly() -> None:
    """The published JSON carries the 19 digits, not a rounded float."""
    [event] = events_of(CDC_SAMPLE)
    assert b'"commit_number":1745500706683617281' in orjson.dumps(event.structured())


def test_cdc_with_several_record_ids_gives_one_event_per_record() -> None:
    """Each record gets its own event, id and key; 15-character ids become 18."""
    events = events_of(dumps(cdc_payload(recordIds=["001ak00000IiFIn", "001ak00000IiFIoAAN", "001ak00000IiFInAAN"])))
    assert [event.subject for event in events] == ["001ak00000IiFInAAN", "001ak00000IiFIoAAN"]
    assert [event.id for event in events] == ["tx-1:3:001ak00000IiFInAAN", "tx-1:3:001ak00000IiFIoAAN"]
    assert [event.key for event in events] == [f"{ORG}:001ak00000IiFInAAN", f"{ORG}:001ak00000IiFIoAAN"]


@pytest.mark.parametrize(
    "change_type", ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"]
)
def test_every_record_change_type_becomes_a_record_event(change_type: str) -> None:
    """Ordinary and gap change types name records and keep their change type."""
    [event] = events_of(dumps(cdc_payload(changeType=change_type)))
    assert (event.subject, event.data["change_event"]["change_type"]) == ("001ak00000IiFInAAN", change_type)


def test_gap_overflow_becomes_one_event_for_the_entity() -> None:
    """GAP_OVERFLOW names no records: one event, identified by the entity and keyed by the
    channel, as DESIGN keys every event without a record."""
    [event] = events_of(dumps(cdc_payload(changeType="GAP_OVERFLOW", recordIds=[])))
    assert (event.id, event.subject, event.key) == ("tx-1:3:Account", None, f"{ORG}:/data/AccountChangeEvent")
    assert event.data["record_id"] is None


def test_a_wildcard_record_id_becomes_one_event_for_every_record_of_the_object() -> None:
    """A custom field type conversion sends recordIds ["001*"]: one event, keyed like GAP_OVERFLOW,
    the wildcard kept (it was refused as invalid_id, a 400 for a real Salesforce payload)."""
    [event] = events_of(dumps(cdc_payload(recordIds=["001*"], changedFields=["Rating__c"])))
    assert (event.id, event.subject, event.key) == ("tx-1:3:Account", None, f"{ORG}:/data/AccountChangeEvent")
    assert event.data["record_id"] is None
    assert event.data["change_event"]["record_wildcard"] == "001*"
    record, everyone = events_of(dumps(cdc_payload(recordIds=["001ak00000IiFInAAN", "001*"])))
    assert (record.subject, everyone.subject) == ("001ak00000IiFInAAN", None)
    assert record.data["change_event"]["record_wildcard"] == "001*"


@pytest.mark.parametrize("record_ids", [["00*"], ["001**"], ["001*", "003*"]])
def test_what_is_not_one_key_prefix_wildcard_is_refused(record_ids: list[str]) -> None:
    """Only a 3-character key prefix and '*', once per header."""
    with pytest.raises(InvalidMessage) as caught:
        events_of(dumps(cdc_payload(recordIds=record_ids)))
    assert caught.value.reason == "invalid_id"


def test_pubsub_decoded_payload_keeps_bitmaps_and_nulls_and_converts_epoch_dates() -> None:
    """Avro-decoded payloads: bitmaps kept as sent, unchanged fields null, epoch-ms dates ISO."""
    payload = {
        "Name": None,
        "Phone": "555-0100",
        "LastModifiedDate": 1745500706000,
        "CreatedDate": None,
        "ChangeEventHeader": {
            "entityName": "Account",
            "recordIds": ["001ak00000IiFInAAN"],
            "changeType": "UPDATE",
            "changeOrigin": "com/salesforce/api/rest/63.0",
            "transactionKey": "0002b2f1-1c4d-4c3a-9c2e-8d5a1e6b7f90",
            "sequenceNumber": 1,
            "commitTimestamp": 1745500706000,
            "commitNumber": 11652926927183,
            "commitUser": "005ak00000EpjsfAAB",
            "nulledFields": [],
            "diffFields": [],
            "changedFields": ["0x650004E0", "4-0x10"],
        },
    }
    [event] = events_of(dumps(payload))
    assert event.data["fields"] == {
        "Name": None,
        "Phone": "555-0100",
        "LastModifiedDate": "2025-04-24T13:18:26.000Z",
        "CreatedDate": None,
    }
    change = event.data["change_event"]
    assert change["changed_fields"] == ["0x650004E0", "4-0x10"]
    assert change["changed_fields_encoding"] == "bitmap"
    assert change["commit_timestamp"] == event.time == "2025-04-24T13:18:26.000Z"
    assert payload["LastModifiedDate"] == 1745500706000


# --- robustness ----------------------------------------------------------------------------


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)


def corrupted(valid: st.SearchStrategy[dict[str, Any]], keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid dicts, and the same with one key dropped or set to an arbitrary scalar."""
    dropped = st.builds(lambda value, key: {k: v for k, v in value.items() if k != key}, valid, st.sampled_from(keys))
    replaced = st.builds(lambda value, key, new: {**value, key: new}, valid, st.sampled_from(keys), scalars)
    return valid | dropped | replaced


record_ids = st.lists(st.sampled_from(["001ak00000IiFInAAN", "001ak00000IiFIn", "001ak00000IiFIoAAN"]), max_size=3)
headers = corrupted(
    st.fixed_dictionaries(
        {
            "entityName": st.sampled_from(["Account", "Invoice__c"]),
            "changeType": st.sampled_from(["UPDATE", "GAP_OVERFLOW", "DELETE", "GAP_CREATE"]),
            "recordIds": record_ids,
            "transactionKey": st.text(min_size=1, max_size=5),
            "sequenceNumber": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "commitTimestamp": st.integers(min_value=0, max_value=2**45) | st.just("2025-04-24T13:18:26Z"),
        },
        optional={
            "commitNumber": st.integers() | st.text(alphabet="0123456789", max_size=21),
            "changedFields": st.lists(st.sampled_from(["Name", "Name.LastName", "0x1F", "2-0xA"]), max_size=3),
            "nulledFields": st.none() | st.lists(st.text(max_size=3), max_size=2),
            "commitUser": st.text(max_size=5),
        },
    ),
    ["entityName", "changeType", "recordIds", "transactionKey", "sequenceNumber", "commitTimestamp", "commitNumber"],
)
fields = st.dictionaries(
    st.sampled_from(["CreatedDate", "LastModifiedDate", "EventUuid", "Name", "Other"]),
    st.integers() | st.sampled_from(["2025-04-24T13:18:26.000Z", "2025-04-24T13:18:26+0000"]) | scalars,
    max_size=4,
)
payloads = fields | st.builds(lambda values, header: {**values, "ChangeEventHeader": header}, fields, headers)
events = corrupted(
    st.fixed_dictionaries({}, optional={"replayId": st.integers(), "EventUuid": st.text(max_size=5)}),
    ["replayId", "EventUuid"],
)
messages = corrupted(
    st.fixed_dictionaries(
        {"data": st.fixed_dictionaries({"payload": payloads}, optional={"event": events, "schema": st.text()})},
        optional={
            "channel": st.sampled_from(["/event/A__e", "/event/X__chn", "/data/ChangeEvents", "/topic/T"]),
            "organizationId": st.just(ORG),
        },
    ),
    ["channel", "data", "organizationId"],
)


@given(messages | payloads)
def test_to_events_on_any_parsed_message_raises_only_invalid_message(document: dict[str, Any]) -> None:
    """Whatever passed parsing either normalizes or is refused with InvalidMessage."""
    try:
        # json, not orjson: hypothesis' integers may exceed 64 bits, which the parser must survive.
        parsed = parse_event_body(json.dumps(document).encode())
    except InvalidMessage:
        return
    for message in parsed:
        try:
            events = to_events(message, ORG, CONNECTION, RECEIVED_AT)
        except InvalidMessage:
            continue
        for event in events:
            assert event.id
            assert event.time
            assert event.key.startswith(f"{ORG}:")
            orjson.dumps(event.structured())
