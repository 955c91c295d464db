"""The JSON bodies of ``/events`` and ``/webhooks/terapi``: bounded parsing and validation.

A body is one CometD event message, a JSON array of them, ``{"events": [...]}``, or a bare
CDC payload (the object Salesforce puts under ``data.payload``, carrying a
``ChangeEventHeader``). Bounds on nesting depth and event count are checked before the work
they would otherwise cause. The result is ``EventMessage`` values; ``receiver.change_events``
turns them into CloudEvents.

Errors are ``InvalidMessage`` whose detail names the offending field path, never its value:
details end up in responses, logs and metrics. The pydantic models hide input values in their
own errors for the same reason, which keeps the chained causes safe to log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Annotated, Any, Final

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from receiver.change_events import (
    CHANGE_EVENT_HEADER,
    GAP_OVERFLOW,
    ChangeEventHeader,
    ChangeType,
    EventMessage,
    change_event_channel,
    field_encoding,
    to_events,
    to_iso_timestamp,
)
from receiver.errors import InvalidMessage
from receiver.ids import normalize_id, normalize_org_id

#: A change to every record of an object: its 3-character key prefix and ``*`` ("001*"), sent
#: when a custom field's type conversion nulls the field everywhere (Salesforce's CDC guide).
_RECORD_WILDCARD: Final = re.compile(r"[a-zA-Z0-9]{3}\*")

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_EVENTS",
    "EventMessage",
    "TerapiForward",
    "message_org_id",
    "parse_event_body",
    "parse_terapi_forward",
    "to_events",
]

DEFAULT_MAX_EVENTS: Final = 1000
DEFAULT_MAX_DEPTH: Final = 64
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


def _exact_long(value: object) -> int:
    """A Java ``long`` as an exact int: JSON integers or strings of digits, never floats.

    ``commitNumber`` has up to 19 digits; a float would silently round it.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.removeprefix("-").isdigit() and len(value) <= 20:
        number = int(value)
    else:
        raise ValueError("must be an integer or a string of digits")
    if not _LONG_MIN <= number <= _LONG_MAX:
        raise ValueError("is outside the 64-bit integer range")
    return number


JavaLong = Annotated[int, BeforeValidator(_exact_long)]
IsoTimestamp = Annotated[str, BeforeValidator(to_iso_timestamp)]


def _field_names(value: object) -> object:
    # The Pub/Sub API's Avro arrays arrive as null when empty in some decoders.
    return [] if value is None else value


FieldNames = Annotated[list[str], BeforeValidator(_field_names)]


#: Entity and channel names: Salesforce API names are at most 40 characters (80 with a namespace
#: and suffix); they reach topic names, routing caches and partition hashes.
MAX_NAME_LENGTH: Final = 255


#: The longest EventUuid or transactionKey taken (Salesforce sends 36-character UUIDs): they
#: become ce_id, a Kafka header, and headers are not measured against the request bound.
MAX_ID_LENGTH: Final = 255


class _Inbound(BaseModel):
    # Salesforce adds fields to its envelopes over API versions: keep them, never reject.
    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)


class ChangeEventHeaderModel(_Inbound):
    #: An sObject name, as in an Outbound Message's xsi:type: it names the channel and ce_sfobject.
    entity_name: str = Field(alias="entityName", pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=MAX_NAME_LENGTH)
    change_type: ChangeType = Field(alias="changeType")
    record_ids: FieldNames = Field(default_factory=list, alias="recordIds")
    changed_fields: FieldNames = Field(default_factory=list, alias="changedFields")
    nulled_fields: FieldNames = Field(default_factory=list, alias="nulledFields")
    diff_fields: FieldNames = Field(default_factory=list, alias="diffFields")
    #: It names the event (ce_id, a Kafka header): Salesforce's are UUIDs.
    transaction_key: str = Field(alias="transactionKey", min_length=1, max_length=MAX_ID_LENGTH)
    sequence_number: JavaLong = Field(alias="sequenceNumber")
    commit_timestamp: IsoTimestamp = Field(alias="commitTimestamp")
    commit_number: JavaLong | None = Field(default=None, alias="commitNumber")
    commit_user: str | None = Field(default=None, alias="commitUser")
    change_origin: str | None = Field(default=None, alias="changeOrigin")


class EventInfoModel(_Inbound):
    replay_id: JavaLong | None = Field(default=None, alias="replayId")
    #: It is the event's ce_id (a Kafka header): Salesforce's are UUIDs.
    event_uuid: str | None = Field(default=None, alias="EventUuid", max_length=MAX_ID_LENGTH)


class EventDataModel(_Inbound):
    schema_id: str | None = Field(default=None, alias="schema")
    payload: dict[str, Any]
    event: EventInfoModel | None = None


class CometDMessageModel(_Inbound):
    # Optional only for CDC, where the entity name gives the channel.
    channel: str | None = Field(default=None, pattern=r"^/[A-Za-z]+/[A-Za-z0-9_]+$", max_length=MAX_NAME_LENGTH)
    data: EventDataModel
    organization_id: str | None = Field(default=None, alias="organizationId")


class TerapiForwardModel(_Inbound):
    provider: str = Field(alias="from", min_length=1)
    type: str
    connection_id: str = Field(alias="connectionId", min_length=1)
    provider_config_key: str = Field(alias="providerConfigKey", min_length=1)
    payload: Any


@dataclass(frozen=True, slots=True)
class TerapiForward:
    """A webhook terapi forwarded: its connection and the event messages it carried."""

    provider: str
    connection_id: str
    provider_config_key: str
    messages: list[EventMessage]


# --- nesting depth -------------------------------------------------------------------------

#: Only quotes and brackets matter for nesting; everything else is dropped early.
_NOT_STRUCTURE: Final = bytes(byte for byte in range(256) if byte not in b'"[]{}')
#: Openers become +1 and closers -1 (0xff as a signed byte).
_BRACKET_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_DEPTH_CHUNK: Final = 1 << 16


def _bracket_skeleton(body: bytes) -> bytes:
    """The brackets of ``body`` that are outside strings, in order (exact for valid JSON)."""
    # Only two escapes can hide a string's end: an escaped backslash and an escaped quote.
    # Dropping both kinds left to right leaves every remaining quote a real string delimiter.
    skeleton = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    # A string without brackets is now '""'. Once quotes alternate open/close, removing
    # adjacent pairs leaves no quote exactly when no string held a bracket: the common case,
    # done without touching each string.
    without_empty_strings = skeleton.replace(b'""', b"")
    if b'"' not in without_empty_strings:
        return without_empty_strings
    # Some string holds brackets: the even pieces between quotes are outside strings.
    return b"".join(skeleton.split(b'"')[::2])


def _is_too_deep(body: bytes, max_depth: int) -> bool:
    """True when arrays and objects nest deeper than ``max_depth``, judged on the raw bytes.

    Linear and without recursion, in C-speed steps, so it runs before the parser: keep the
    brackets outside strings as +1/-1 steps and follow the running level chunk by chunk, so
    that a deeply nested attack stops at its first chunk. Malformed input is left to the JSON
    parser, which has its own (higher) depth limit.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    steps = memoryview(_bracket_skeleton(body).translate(_BRACKET_STEPS)).cast("b")
    level = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):
        chunk = steps[start : start + _DEPTH_CHUNK]
        if max(accumulate(chunk, initial=level)) > max_depth:
            return True
        level += sum(chunk)
    return False


def _load_json(body: bytes, max_depth: int) -> Any:
    if _is_too_deep(body, max_depth):
        raise InvalidMessage(f"JSON nests deeper than {max_depth} levels", reason="too_deep")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"body is not valid JSON (at character {exc.pos})", reason="malformed_json") from exc


# --- messages ------------------------------------------------------------------------------


#: Past this many validation errors only their number is told: listing them costs seconds and
#: gigabytes for a list of millions of wrong values.
_ERRORS_LISTED_UP_TO = 100


def _describe(exc: ValidationError, where: str) -> str:
    """Field paths and what was expected, without the values sent."""
    if exc.error_count() > _ERRORS_LISTED_UP_TO:
        return f"{where or 'body'}: {exc.error_count()} values do not match the event schema"
    problems = []
    for error in exc.errors(include_input=False, include_url=False)[:3]:
        path = where
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        problems.append(f"{path or 'body'}: {error['msg']}")
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _change_event_header(value: object, where: str) -> ChangeEventHeader:
    try:
        model = ChangeEventHeaderModel.model_validate(value)
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc, where), reason="invalid_event") from exc
    if model.change_type != GAP_OVERFLOW and not model.record_ids:
        raise InvalidMessage(f"{where}.recordIds: at least one record id is required", reason="invalid_event")
    wildcards = [record_id for record_id in model.record_ids if _RECORD_WILDCARD.fullmatch(record_id)]
    # dict.fromkeys: the same record listed twice is one change, so one event.
    record_ids = tuple(
        dict.fromkeys(
            normalize_id(record_id, what=f"{where}.recordIds[{index}]")
            for index, record_id in enumerate(model.record_ids)
            if not _RECORD_WILDCARD.fullmatch(record_id)
        )
    )
    if len(set(wildcards)) > 1:
        raise InvalidMessage(f"{where}.recordIds: more than one wildcard", reason="invalid_id")
    changed, nulled, diff = tuple(model.changed_fields), tuple(model.nulled_fields), tuple(model.diff_fields)
    return ChangeEventHeader(
        entity_name=model.entity_name,
        change_type=model.change_type,
        record_ids=record_ids,
        changed_fields=changed,
        nulled_fields=nulled,
        diff_fields=diff,
        transaction_key=model.transaction_key,
        sequence_number=model.sequence_number,
        commit_timestamp=model.commit_timestamp,
        commit_number=model.commit_number,
        commit_user=model.commit_user,
        change_origin=model.change_origin,
        changed_fields_encoding=field_encoding(changed, nulled, diff),
        record_wildcard=wildcards[0] if wildcards else None,
    )


def _message(item: dict[str, Any], where: str, batch_org_id: str | None) -> EventMessage:
    if CHANGE_EVENT_HEADER in item and "data" not in item:
        # A bare CDC payload, as Apex or a relay may post it without the CometD envelope.
        bare_header = _change_event_header(item[CHANGE_EVENT_HEADER], _join(where, CHANGE_EVENT_HEADER))
        return EventMessage(
            channel=change_event_channel(bare_header.entity_name),
            payload=item,
            organization_id=batch_org_id,
            change_event_header=bare_header,
        )
    try:
        model = CometDMessageModel.model_validate(item)
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc, where), reason="invalid_event") from exc
    payload = model.data.payload
    header: ChangeEventHeader | None = None
    if CHANGE_EVENT_HEADER in payload:
        header = _change_event_header(payload[CHANGE_EVENT_HEADER], _join(where, "data.payload.ChangeEventHeader"))
    channel = model.channel
    if channel is None:
        if header is None:
            raise InvalidMessage(f"{_join(where, 'channel')}: Field required", reason="invalid_event")
        channel = change_event_channel(header.entity_name)
    organization_id = model.organization_id
    if organization_id is None:
        organization_id = batch_org_id
    elif batch_org_id is not None and not _same_org(organization_id, batch_org_id):
        raise InvalidMessage(f"{_join(where, 'organizationId')}: differs from the batch's", reason="org_mismatch")
    event = model.data.event
    return EventMessage(
        channel=channel,
        payload=payload,
        organization_id=organization_id,
        schema=model.data.schema_id,
        replay_id=None if event is None else event.replay_id,
        event_uuid=None if event is None else event.event_uuid,
        change_event_header=header,
    )


def _same_org(first: str, second: str) -> bool:
    """The 15- and 18-character forms of one org are one org. An id that is not an org id is
    left to ``message_org_id`` to report; here it is only equal to itself."""
    try:
        return normalize_org_id(first) == normalize_org_id(second)
    except InvalidMessage:
        return first == second


def _messages(document: Any, where: str, max_events: int) -> list[EventMessage]:
    batch_org_id: str | None = None
    if isinstance(document, list):
        items, items_where = document, where
    elif isinstance(document, dict) and "events" in document and "channel" not in document and "data" not in document:
        items, items_where = document["events"], _join(where, "events")
        if not isinstance(items, list):
            raise InvalidMessage(f"{items_where}: must be an array", reason="invalid_event")
        batch_org_id = document.get("organizationId")
        if batch_org_id is not None and not isinstance(batch_org_id, str):
            raise InvalidMessage(f"{_join(where, 'organizationId')}: must be a string", reason="invalid_event")
    elif isinstance(document, dict):
        return _bounded([_message(document, where, None)], max_events)
    else:
        raise InvalidMessage(
            f'{where or "body"}: must be an event message, an array of them or {{"events": [...]}}',
            reason="invalid_event",
        )
    if len(items) > max_events:
        raise InvalidMessage(f"{len(items)} events in one body; at most {max_events}", reason="too_many_events")
    messages = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidMessage(f"{items_where}[{index}]: must be an object", reason="invalid_event")
        messages.append(_message(item, f"{items_where}[{index}]", batch_org_id))
    return _bounded(messages, max_events)


def _bounded(messages: list[EventMessage], max_events: int) -> list[EventMessage]:
    """``messages``, unless they make more than ``max_events`` events: a change event makes one
    per record, so one message listing 100,000 record ids would be 100,000 events to build,
    serialize and publish."""
    count = sum(message.event_count for message in messages)
    if count > max_events:
        raise InvalidMessage(
            f"{count} events in one body (a change event makes one per record); at most {max_events}",
            reason="too_many_events",
        )
    return messages


def parse_event_body(
    body: bytes, *, max_events: int = DEFAULT_MAX_EVENTS, max_depth: int = DEFAULT_MAX_DEPTH
) -> list[EventMessage]:
    """The event messages of an ``/events`` body (already authenticated: this parses it).

    Raises ``InvalidMessage`` with reason ``too_deep``, ``malformed_json``,
    ``too_many_events``, ``invalid_event`` (schema violation; the detail names the field
    path), ``invalid_id`` (a record id that is not a Salesforce id) or ``org_mismatch`` (an
    ``{"events": [...]}`` batch whose messages name another org than the batch).
    """
    return _messages(_load_json(body, max_depth), "", max_events)


def message_org_id(message: EventMessage, header_value: str | None) -> str:
    """The 18-character org of a message, from ``X-Salesforce-Org-Id`` or ``organizationId``.

    When both are given they must name the same org: a signed body for one org must not be
    routed to another by a header.

    Raises ``InvalidMessage`` with reason ``missing_org_id``, ``org_mismatch``, or
    ``invalid_id`` / ``invalid_org_id`` from ``normalize_org_id``.
    """
    from_header = normalize_org_id(header_value) if header_value and header_value.strip() else None
    from_body = normalize_org_id(message.organization_id) if message.organization_id else None
    if from_header is None:
        if from_body is None:
            raise InvalidMessage(
                "no org id: send X-Salesforce-Org-Id or a top-level organizationId", reason="missing_org_id"
            )
        return from_body
    if from_body is not None and from_header != from_body:
        raise InvalidMessage("X-Salesforce-Org-Id and organizationId name different orgs", reason="org_mismatch")
    return from_header


def _is_salesforce_provider(provider: str) -> bool:
    # terapi names sandbox and other Salesforce flavours 'salesforce-<variant>'.
    return provider == "salesforce" or provider.startswith("salesforce-")


def parse_terapi_forward(
    body: bytes, *, max_events: int = DEFAULT_MAX_EVENTS, max_depth: int = DEFAULT_MAX_DEPTH
) -> TerapiForward:
    """A ``/webhooks/terapi`` body (already authenticated); its ``payload`` is read as an
    ``/events`` body, its depth bounded by ``max_depth`` like one.

    Raises ``InvalidMessage`` with reason ``unsupported_webhook_type`` (terapi's other
    webhooks, such as ``auth`` or ``sync``, which the caller may acknowledge and drop),
    ``unsupported_provider`` (not a Salesforce integration), or any reason of
    ``parse_event_body``.
    """
    document = _load_json(body, max_depth + 1)  # the envelope adds one level
    if isinstance(document, dict) and isinstance(document.get("type"), str) and document["type"] != "forward":
        raise InvalidMessage("type: only 'forward' webhooks carry events", reason="unsupported_webhook_type")
    try:
        model = TerapiForwardModel.model_validate(document)
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc, ""), reason="invalid_event") from exc
    if not _is_salesforce_provider(model.provider):
        raise InvalidMessage("from: not a Salesforce integration", reason="unsupported_provider")
    return TerapiForward(
        provider=model.provider,
        connection_id=model.connection_id,
        provider_config_key=model.provider_config_key,
        messages=_messages(model.payload, "payload", max_events),
    )
