"""Platform-event and CDC bodies: parsing, bounds, org ids and terapi forwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.callbacks import message_org_id, parse_event_body, parse_terapi_forward
from receiver.change_events import EventMessage
from receiver.errors import InvalidMessage
from tests.event_payloads import cdc_payload, platform_message

DATA = Path(__file__).resolve().parents[1] / "examples" / "payloads"
PLATFORM_SAMPLE = (DATA / "platform_event_low_ink.json").read_bytes()
CDC_SAMPLE = (DATA / "change_event_contact_update_payload.json").read_bytes()
ORG = "00D5g000004Xz1AEAS"
ORG_15 = ORG[:15]
OTHER_ORG = "00D000000000001EAA"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def only_message(body: bytes) -> EventMessage:
    messages = parse_event_body(body)
    assert len(messages) == 1
    return messages[0]


def reason_of_parsing(body: bytes, **bounds: int) -> str:
    with pytest.raises(InvalidMessage) as excinfo:
        parse_event_body(body, **bounds)
    return excinfo.value.reason


# --- parsing -------------------------------------------------------------------------------


def test_platform_event_sample_parses_to_one_message() -> None:
    """The CometD sample gives its channel, schema, replay id, EventUuid and payload."""
    message = only_message(PLATFORM_SAMPLE)
    assert message.channel == "/event/Low_Ink__e"
    assert (message.schema, message.replay_id) == ("dffQ2QLzDNHqwB8_sHMxdA", 2)
    assert message.event_uuid == "2ec0e371-1395-457f-9275-be1b527a72f7"
    assert message.payload["Printer_Model__c"] == "XZO-5"
    assert message.change_event_header is None


def test_array_body_gives_one_message_per_item() -> None:
    """A JSON array of messages is a batch, in order."""
    messages = parse_event_body(dumps([platform_message(replayId=1), platform_message(replayId=2)]))
    assert [message.replay_id for message in messages] == [1, 2]


def test_events_wrapper_gives_its_messages_and_lends_its_org() -> None:
    """{"events": [...]} is a batch; its organizationId applies to messages without one."""
    messages = parse_event_body(dumps({"organizationId": ORG, "events": [platform_message(replayId=1)]}))
    assert [(message.replay_id, message.organization_id) for message in messages] == [(1, ORG)]


def test_events_wrapper_with_a_message_of_another_org_is_refused() -> None:
    """A batch cannot mix orgs under one organizationId."""
    body = dumps({"organizationId": ORG, "events": [{**platform_message(replayId=1), "organizationId": OTHER_ORG}]})
    assert reason_of_parsing(body) == "org_mismatch"


def test_events_wrapper_accepts_its_org_in_the_other_id_length() -> None:
    """A batch org of 15 characters and a message org of 18 (or the reverse) are one org."""
    for batch_org, message_org in ((ORG[:15], ORG), (ORG, ORG[:15])):
        body = dumps(
            {"organizationId": batch_org, "events": [{**platform_message(replayId=1), "organizationId": message_org}]}
        )
        [message] = parse_event_body(body)
        assert message_org_id(message, None) == ORG


def test_top_level_organization_id_is_kept_raw() -> None:
    """The message's own organizationId is handed on as sent, for message_org_id."""
    assert only_message(dumps({**platform_message(replayId=1), "organizationId": ORG_15})).organization_id == ORG_15


def test_more_events_than_the_bound_are_refused() -> None:
    """max_events bounds a batch before any message is validated."""
    batch = [platform_message(replayId=index) for index in range(3)]
    assert len(parse_event_body(dumps(batch), max_events=3)) == 3
    assert reason_of_parsing(dumps(batch), max_events=2) == "too_many_events"
    assert reason_of_parsing(dumps({"events": batch}), max_events=2) == "too_many_events"


def nested(depth: int) -> bytes:
    """A platform event whose payload nests arrays so that the whole body has ``depth`` levels."""
    inner = "[" * (depth - 3) + "]" * (depth - 3)
    return f'{{"channel": "/event/A__e", "data": {{"payload": {{"a": {inner}}}, "event": {{"replayId": 1}}}}}}'.encode()


def test_nesting_at_the_bound_is_accepted_and_one_deeper_is_refused() -> None:
    """max_depth counts every array and object level of the body."""
    assert len(parse_event_body(nested(10), max_depth=10)) == 1
    assert reason_of_parsing(nested(11), max_depth=10) == "too_deep"


def test_default_depth_bound_refuses_a_nesting_attack() -> None:
    """A body of a million '[' is refused as too deep, not parsed."""
    assert reason_of_parsing(b"[" * 1_000_000 + b"]" * 1_000_000) == "too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Brackets and escaped quotes inside string values are text, not structure."""
    payload = {"text": '[[[[[[[[ {{{{ "quoted [[[[" \\ ]]]]', "more": "[" * 50}
    body = dumps({"channel": "/event/A__e", "data": {"payload": payload, "event": {"replayId": 1}}})
    assert only_message(body).payload == payload
    assert len(parse_event_body(body, max_depth=3)) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=30,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


@given(json_values, st.integers(min_value=0, max_value=6), st.booleans())
def test_too_deep_is_reported_exactly_when_the_body_nests_deeper(value: Any, max_depth: int, ascii_only: bool) -> None:
    """The raw-bytes depth scan agrees with the depth of the parsed JSON, strings and escapes included."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    reason = None
    try:
        parse_event_body(body, max_depth=max_depth)
    except InvalidMessage as error:
        reason = error.reason
    assert (reason == "too_deep") == (depth_of(value) > max_depth)


@pytest.mark.parametrize("body", [b"", b"{", b'{"channel": }', b"\xff\xfe", b"[1, 2,]", b"NaN"])
def test_malformed_json_is_refused(body: bytes) -> None:
    """Bodies that are not JSON are malformed_json."""
    assert reason_of_parsing(body) == "malformed_json"


def test_schema_violation_names_the_field_path_but_not_the_value() -> None:
    """The detail points at the bad field of the bad item and leaves its value out."""
    bad = {"channel": "/event/A__e", "data": {"payload": "secret-value-123"}}
    with pytest.raises(InvalidMessage) as excinfo:
        parse_event_body(dumps([platform_message(replayId=1), bad]))
    assert excinfo.value.reason == "invalid_event"
    assert "[1].data.payload" in excinfo.value.detail
    assert "secret-value-123" not in excinfo.value.detail
    assert "secret-value-123" not in str(excinfo.value.__cause__)


@pytest.mark.parametrize(
    "body",
    [
        b"42",
        b'"text"',
        b'{"events": {"not": "a list"}}',
        b"[1]",
        b'{"data": {"payload": {}}}',
        b'{"channel": "no-slash", "data": {"payload": {}}}',
        b'{"channel": "/event/A__e", "data": {"payload": {}, "event": {"replayId": 1.5}}}',
        b'{"channel": "/event/A__e", "data": {"payload": {}, "event": {"replayId": true}}}',
    ],
    ids=["number", "string", "events-not-list", "item-not-object", "no-channel", "bad-channel", "float-id", "bool-id"],
)
def test_shapes_that_are_not_event_messages_are_invalid(body: bytes) -> None:
    """Anything but a message, an array of them or {"events": [...]} is invalid_event."""
    assert reason_of_parsing(body) == "invalid_event"


def test_bare_cdc_payload_sample_is_accepted_with_a_derived_channel() -> None:
    """A payload with ChangeEventHeader and no envelope is a CDC message on its entity's channel."""
    message = only_message(CDC_SAMPLE)
    assert message.channel == "/data/ContactChangeEvent"
    assert message.change_event_header is not None


def test_custom_object_channel_drops_the_c_of_the_suffix() -> None:
    """Invoice__c changes arrive on /data/Invoice__ChangeEvent."""
    assert only_message(dumps(cdc_payload(entityName="Invoice__c"))).channel == "/data/Invoice__ChangeEvent"


def test_enveloped_cdc_without_channel_derives_it() -> None:
    """A CometD envelope around a CDC payload may leave the channel out."""
    message = only_message(dumps({"data": {"payload": cdc_payload(), "event": {"replayId": 7}}}))
    assert (message.channel, message.replay_id) == ("/data/AccountChangeEvent", 7)


def test_commit_number_as_a_string_of_digits_is_an_exact_int() -> None:
    """commitNumber may come quoted; it becomes the same exact integer."""
    header = only_message(dumps(cdc_payload(commitNumber="1745500706683617281"))).change_event_header
    assert header is not None
    assert header.commit_number == 1745500706683617281


@pytest.mark.parametrize(
    "header",
    [
        {"commitNumber": 1.7455007066836173e18},
        {"commitNumber": "9" * 20},
        {"changeType": "MERGE"},
        {"recordIds": []},
        {"transactionKey": ""},
        {"commitTimestamp": "yesterday"},
        {"entityName": "Account Contact"},
        {"entityName": "../Account"},
    ],
    ids=[
        "float-commit-number",
        "commit-number-overflow",
        "unknown-change-type",
        "no-records",
        "no-tx",
        "bad-time",
        "entity-with-space",
        "entity-path",
    ],
)
def test_change_event_header_violations_are_invalid(header: dict[str, Any]) -> None:
    """The header fields that ids, keys and times depend on are checked strictly."""
    assert reason_of_parsing(dumps(cdc_payload(**header))) == "invalid_event"


@pytest.mark.parametrize(
    "body",
    [
        dumps(platform_message(EventUuid="u" * 600_000)),
        dumps(cdc_payload(transactionKey="t" * 600_000)),
    ],
    ids=["event-uuid", "transaction-key"],
)
def test_an_event_id_longer_than_any_salesforce_sends_is_refused(body: bytes) -> None:
    """EventUuid and transactionKey become ce_id, a Kafka header the size check does not measure."""
    assert reason_of_parsing(body) == "invalid_event"


def test_record_id_that_is_not_a_salesforce_id_is_refused() -> None:
    """Record ids become partition keys, so a malformed one is refused."""
    assert reason_of_parsing(dumps(cdc_payload(recordIds=["not-an-id"]))) == "invalid_id"


# --- org ids -------------------------------------------------------------------------------


def test_org_from_the_header_is_normalized() -> None:
    """X-Salesforce-Org-Id alone gives the 18-character org."""
    assert message_org_id(only_message(PLATFORM_SAMPLE), ORG_15) == ORG


def test_org_from_the_body_is_normalized() -> None:
    """organizationId alone gives the 18-character org."""
    message = only_message(dumps({**platform_message(replayId=1), "organizationId": ORG_15}))
    assert message_org_id(message, None) == ORG


def test_header_and_body_naming_the_same_org_agree() -> None:
    """The 15- and 18-character forms of one org are the same org."""
    message = only_message(dumps({**platform_message(replayId=1), "organizationId": ORG_15}))
    assert message_org_id(message, ORG) == ORG


def test_header_and_body_naming_different_orgs_are_refused() -> None:
    """A header cannot route a body signed for one org to another."""
    message = only_message(dumps({**platform_message(replayId=1), "organizationId": OTHER_ORG}))
    with pytest.raises(InvalidMessage) as excinfo:
        message_org_id(message, ORG)
    assert excinfo.value.reason == "org_mismatch"


def test_no_org_anywhere_is_refused() -> None:
    """Without header or organizationId the org is unknown."""
    with pytest.raises(InvalidMessage) as excinfo:
        message_org_id(only_message(PLATFORM_SAMPLE), None)
    assert excinfo.value.reason == "missing_org_id"


# --- terapi forwards -----------------------------------------------------------------------


def forward(payload: Any, /, **overrides: Any) -> bytes:
    envelope = {
        "from": "salesforce",
        "type": "forward",
        "connectionId": "acme-prod",
        "providerConfigKey": "salesforce",
        "payload": payload,
    }
    return dumps({**envelope, **overrides})


def test_terapi_forward_gives_its_connection_and_messages() -> None:
    """The envelope names the connection; its payload is read like an /events body."""
    result = parse_terapi_forward(forward([orjson.loads(PLATFORM_SAMPLE), orjson.loads(CDC_SAMPLE)]))
    assert (result.connection_id, result.provider_config_key, result.provider) == (
        "acme-prod",
        "salesforce",
        "salesforce",
    )
    assert [message.channel for message in result.messages] == ["/event/Low_Ink__e", "/data/ContactChangeEvent"]


def test_terapi_forward_from_a_sandbox_integration_is_accepted() -> None:
    """salesforce-sandbox is a Salesforce provider too."""
    result = parse_terapi_forward(forward(orjson.loads(PLATFORM_SAMPLE), **{"from": "salesforce-sandbox"}))
    assert result.provider == "salesforce-sandbox"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"type": "auth"}, "unsupported_webhook_type"),
        ({"from": "hubspot"}, "unsupported_provider"),
        ({"connectionId": ""}, "invalid_event"),
        ({"payload": None}, "invalid_event"),
    ],
    ids=["auth-webhook", "other-provider", "no-connection", "no-payload"],
)
def test_terapi_forward_violations_are_refused(overrides: dict[str, Any], reason: str) -> None:
    """Only forwards of Salesforce payloads with a connection carry events."""
    with pytest.raises(InvalidMessage) as excinfo:
        parse_terapi_forward(forward(orjson.loads(PLATFORM_SAMPLE), **overrides))
    assert excinfo.value.reason == reason


def test_terapi_forward_payload_has_the_same_depth_bound_as_an_events_body() -> None:
    """The envelope's own level does not count against the payload."""
    envelope = b'{"from": "salesforce", "type": "forward", "connectionId": "c", "providerConfigKey": "salesforce"'
    result = parse_terapi_forward(envelope + b', "payload": ' + nested(10) + b"}", max_depth=10)
    assert len(result.messages) == 1


# --- robustness ----------------------------------------------------------------------------


@given(st.binary(max_size=300) | json_values.map(lambda value: json.dumps(value).encode()))
def test_arbitrary_bytes_give_messages_or_invalid_message(body: bytes) -> None:
    """No input makes the parser raise anything but InvalidMessage."""
    try:
        messages = parse_event_body(body, max_depth=8)
    except InvalidMessage:
        return
    assert all(isinstance(message, EventMessage) for message in messages)


# Values of every JSON type, strings included that look like ids, dates and channels.
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["/event/A__e", "/data/AccountChangeEvent", ORG, ORG_15, "001ak00000IiFInAAN", "2024-01-01"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=20,
)
HEADER_FIELDS = list(cdc_payload()["ChangeEventHeader"])


def events_of(body: bytes, header_org: str | None) -> list[object] | InvalidMessage:
    """The whole path after authentication: parse, the org of each message, then its CloudEvents."""
    from receiver.callbacks import to_events
    from receiver.event import Connection

    connection = Connection("acme-prod", "salesforce")
    try:
        events: list[object] = []
        for message in parse_event_body(body, max_depth=16):
            org_id = message_org_id(message, header_org)
            events.extend(to_events(message, org_id, connection, "2024-01-01T00:00:00Z"))
        return events
    except InvalidMessage as error:
        return error


@given(
    st.sampled_from([PLATFORM_SAMPLE, CDC_SAMPLE, b"[" + PLATFORM_SAMPLE + b"," + CDC_SAMPLE + b"]"]),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(max_size=6), st.integers(0, 6)), max_size=5),
    st.sampled_from([ORG, ORG_15, None, "00Dgarbage", ""]),
)
def test_mutated_samples_end_in_events_or_invalid_message(
    body: bytes, edits: list[tuple[float, bytes, int]], header_org: str | None
) -> None:
    """Real bodies with bytes replaced, inserted or cut end in CloudEvents or an InvalidMessage."""
    for where, insert, cut in edits:
        at = int(where * len(body))
        body = body[:at] + insert + body[at + cut :]
    assert isinstance(events_of(body, header_org), list | InvalidMessage)


@given(
    st.one_of(st.sampled_from(["/event/Low_Ink__e", "/data/ContactChangeEvent", "/event/", "/data/"]), any_json),
    st.dictionaries(st.sampled_from(["replayId", "EventUuid"]), any_json, max_size=2),
    st.dictionaries(st.sampled_from(HEADER_FIELDS), any_json, max_size=4),
    st.dictionaries(st.sampled_from(["CreatedDate", "CreatedById", "Name"]), any_json, max_size=2),
    st.one_of(st.none(), any_json),
)
def test_messages_with_any_field_values_end_in_events_or_invalid_message(
    channel: object,
    event: dict[str, object],
    header_changes: dict[str, object],
    fields: dict[str, object],
    organization_id: object,
) -> None:
    """Every field of a message set to a value of any type ends in CloudEvents or an InvalidMessage."""
    payload = {**cdc_payload(**header_changes), **fields} if header_changes else fields
    message: dict[str, object] = {"channel": channel, "data": {"schema": "s", "payload": payload, "event": event}}
    if organization_id is not None:
        message["organizationId"] = organization_id
    # json, not orjson: integers past 64 bits are valid JSON that a sender may well send.
    assert isinstance(events_of(json.dumps(message).encode(), ORG), list | InvalidMessage)


@given(
    st.binary(max_size=300)
    | st.dictionaries(
        st.sampled_from(["from", "type", "connectionId", "providerConfigKey", "payload"]), any_json, max_size=5
    ).map(lambda value: json.dumps(value).encode())
)
def test_arbitrary_terapi_forwards_give_a_forward_or_invalid_message(body: bytes) -> None:
    """A /webhooks/terapi body of any bytes or any field values parses or is an InvalidMessage."""
    from receiver.callbacks import TerapiForward

    try:
        forward = parse_terapi_forward(body, max_depth=16)
    except InvalidMessage:
        return
    assert isinstance(forward, TerapiForward)


# --- bounds on what one body may become ----------------------------------------------------


def _record_ids(count: int) -> list[str]:
    return [f"001ak{number:010d}" for number in range(count)]


def test_a_change_event_counts_one_event_per_record_toward_the_bound() -> None:
    """One message listing 1,001 records is 1,001 events: past max_events it is refused whole."""
    at_bound = orjson.dumps(cdc_payload(recordIds=_record_ids(1000)))
    assert parse_event_body(at_bound, max_events=1000)[0].event_count == 1000
    past = orjson.dumps([cdc_payload(recordIds=_record_ids(600)), cdc_payload(recordIds=_record_ids(401))])
    assert reason_of_parsing(past, max_events=1000) == "too_many_events"


def test_a_gap_overflow_counts_as_one_event() -> None:
    gap = orjson.dumps(cdc_payload(changeType="GAP_OVERFLOW", recordIds=[]))
    assert parse_event_body(gap, max_events=1)[0].event_count == 1


def test_millions_of_wrong_values_are_counted_not_listed() -> None:
    """Listing 2,000,000 validation errors cost seconds and gigabytes; their number is told instead."""
    body = orjson.dumps(cdc_payload(recordIds=[1] * 2_000_000))
    with pytest.raises(InvalidMessage) as excinfo:
        parse_event_body(body)
    assert excinfo.value.reason == "invalid_event"
    assert "2000000 values do not match the event schema" in excinfo.value.detail


def test_an_overlong_entity_name_is_refused() -> None:
    """Entity names reach topic names, the routing cache and the partition hash: 255 at most."""
    assert reason_of_parsing(orjson.dumps(cdc_payload(entityName="A" * 256))) == "invalid_event"
