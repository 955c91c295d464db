"""Platform events and Change Data Capture messages, turned into CloudEvents.

``receiver.callbacks`` validates the JSON and hands over ``EventMessage`` values; this module
only reshapes them, on the hot path, so it avoids copying payloads it does not change. The
dicts of one message (``fields``, ``change_event``, ``connection``) are shared by the events
built from it: sinks serialize them and must treat them as read-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from receiver.errors import InvalidMessage
from receiver.event import CHANGE_EVENT, PLATFORM_EVENT, CloudEvent, Connection, utc_of

ChangeType = Literal[
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
]
#: Too many changes at once: Salesforce names only the entity, no record ids.
GAP_OVERFLOW: Final = "GAP_OVERFLOW"
PLATFORM_EVENT_PREFIX: Final = "/event/"
CHANGE_EVENT_PREFIX: Final = "/data/"
CHANGE_EVENT_HEADER: Final = "ChangeEventHeader"

#: The Pub/Sub API encodes these audit date-times as epoch milliseconds (Avro ``long``); the
#: CometD shape sends ISO strings. Other date fields cannot be told from plain numbers
#: without the event schema, so they stay as sent.
AUDIT_DATE_FIELDS: Final = ("CreatedDate", "LastModifiedDate", "SystemModstamp")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CANONICAL_TIMESTAMP: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
#: Pub/Sub API field bitmaps: ``0x<hex>`` for the first 64 fields, ``<n>-0x<hex>`` beyond.
_BITMAP_ITEM: Final = re.compile(r"(\d+-)?0x[0-9A-Fa-f]+")


@dataclass(frozen=True, slots=True)
class ChangeEventHeader:
    """The validated ``ChangeEventHeader`` of a CDC payload, record ids already 18 characters."""

    entity_name: str
    change_type: ChangeType
    record_ids: tuple[str, ...]
    changed_fields: tuple[str, ...]
    nulled_fields: tuple[str, ...]
    diff_fields: tuple[str, ...]
    transaction_key: str
    sequence_number: int
    #: ISO 8601 UTC with milliseconds; Salesforce sends epoch milliseconds.
    commit_timestamp: str
    #: Up to 19 digits: kept an exact ``int``, never a float.
    commit_number: int | None
    commit_user: str | None
    change_origin: str | None
    #: ``names`` (CometD: field names) or ``bitmap`` (Pub/Sub API: hex bitmaps of the schema).
    changed_fields_encoding: Literal["names", "bitmap"]
    #: ``001*``: every record of the object with that key prefix (a custom field's type was
    #: converted), instead of or besides ``record_ids``; one event without a record stands for it.
    record_wildcard: str | None = None


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One CometD event message (or bare CDC payload), validated but not yet normalized."""

    channel: str
    payload: dict[str, Any]
    #: The message's own ``organizationId``, raw; see ``callbacks.message_org_id``.
    organization_id: str | None = None
    schema: str | None = None
    replay_id: int | None = None
    event_uuid: str | None = None
    #: Present exactly when the payload carries a ``ChangeEventHeader``.
    change_event_header: ChangeEventHeader | None = None

    @property
    def event_count(self) -> int:
        """The events it becomes: one per record of a change event, else one (see ``to_events``)."""
        header = self.change_event_header
        if header is None or header.change_type == GAP_OVERFLOW or not header.record_ids:
            return 1
        return len(header.record_ids) + (header.record_wildcard is not None)


def to_iso_timestamp(value: object) -> str:
    """ISO 8601 UTC with milliseconds and ``Z`` from an ISO string or epoch milliseconds.

    Raises ``ValueError`` (so pydantic validators can use it) for anything else.
    """
    if isinstance(value, str):
        if _CANONICAL_TIMESTAMP.fullmatch(value):
            return value
        moment = datetime.fromisoformat(value)
        # Salesforce date-times are UTC; a missing offset means UTC, not the host's zone.
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else utc_of(moment)
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            moment = _EPOCH + timedelta(milliseconds=value)
        except OverflowError as exc:
            raise ValueError("epoch milliseconds out of range") from exc
    else:
        # ValueError, not TypeError: pydantic turns only ValueError into a validation error.
        raise ValueError("must be an ISO 8601 date-time or epoch milliseconds")  # noqa: TRY004
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def field_encoding(*field_lists: tuple[str, ...]) -> Literal["names", "bitmap"]:
    """``bitmap`` when every listed item is a Pub/Sub API bitmap, else ``names``."""
    items = [item for field_list in field_lists for item in field_list]
    if items and all(_BITMAP_ITEM.fullmatch(item) for item in items):
        return "bitmap"
    return "names"


def change_event_channel(entity_name: str) -> str:
    """The CDC channel of an entity: ``Account`` -> ``/data/AccountChangeEvent``,
    ``Invoice__c`` -> ``/data/Invoice__ChangeEvent`` (custom objects drop the ``c``)."""
    if entity_name.endswith("__c"):
        return f"{CHANGE_EVENT_PREFIX}{entity_name[:-1]}ChangeEvent"
    return f"{CHANGE_EVENT_PREFIX}{entity_name}ChangeEvent"


def _with_iso_audit_dates(fields: dict[str, Any], *, copy: bool) -> dict[str, Any]:
    """Convert epoch-millisecond audit dates; copies ``fields`` only when one needs it."""
    result = fields
    for name in AUDIT_DATE_FIELDS:
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if result is fields and copy:
                result = dict(fields)
            result[name] = _timestamp(value, f"data.payload.{name}")
    return result


def _timestamp(value: object, where: str) -> str:
    try:
        return to_iso_timestamp(value)
    except ValueError as exc:
        raise InvalidMessage(
            f"{where}: must be an ISO 8601 date-time or epoch milliseconds", reason="invalid_event"
        ) from exc


def to_events(message: EventMessage, org_id: str, connection: Connection, received_at: str) -> list[CloudEvent]:
    """The CloudEvents of one message: one for a platform event, one per record for CDC.

    ``org_id`` must already be the normalized 18-character org id.

    Raises ``InvalidMessage`` with reason ``missing_event_id`` (platform event with neither
    ``EventUuid`` nor ``replayId``), ``missing_change_event_header`` (a ``/data/`` channel
    without one), ``unsupported_channel`` (neither ``/event/`` nor ``/data/``) or
    ``invalid_event`` (a ``CreatedDate`` that is not a date-time).
    """
    header = message.change_event_header
    if header is not None:
        return _change_events(message, header, org_id, connection, received_at)
    if message.channel.startswith(PLATFORM_EVENT_PREFIX):
        return [_platform_event(message, org_id, connection, received_at)]
    if message.channel.startswith(CHANGE_EVENT_PREFIX):
        raise InvalidMessage(
            f"payload on a {CHANGE_EVENT_PREFIX} channel has no ChangeEventHeader",
            reason="missing_change_event_header",
        )
    raise InvalidMessage(
        f"channel is neither {PLATFORM_EVENT_PREFIX} nor {CHANGE_EVENT_PREFIX}", reason="unsupported_channel"
    )


def _platform_event(message: EventMessage, org_id: str, connection: Connection, received_at: str) -> CloudEvent:
    payload = message.payload
    # Apex and Flow callouts serialize the event record, whose EventUuid field (API 52.0+) is
    # the same identifier CometD puts in data.event.
    event_uuid = message.event_uuid or payload.get("EventUuid")
    if isinstance(event_uuid, str) and event_uuid:
        event_id = event_uuid
    elif message.replay_id is not None:
        event_id = f"{message.channel}:{message.replay_id}"
    else:
        raise InvalidMessage("platform event has neither EventUuid nor replayId", reason="missing_event_id")
    created = payload.get("CreatedDate")
    time = received_at if created is None else _timestamp(created, "data.payload.CreatedDate")
    name = message.channel[len(PLATFORM_EVENT_PREFIX) :]
    data = {
        "organization_id": org_id,
        "connection": connection.as_dict(),
        "object": name,
        "record_id": None,
        "fields": _with_iso_audit_dates(payload, copy=True),
        "received_at": received_at,
        "platform_event": {
            "channel": message.channel,
            "replay_id": message.replay_id,
            "event_uuid": event_uuid if isinstance(event_uuid, str) and event_uuid else None,
            "schema": message.schema,
        },
    }
    return CloudEvent(
        type=PLATFORM_EVENT,
        id=event_id,
        organization_id=org_id,
        connection=connection,
        time=time,
        key=f"{org_id}:{message.channel}",
        data=data,
        object=name,
        subject=None,
    )


def _change_events(
    message: EventMessage, header: ChangeEventHeader, org_id: str, connection: Connection, received_at: str
) -> list[CloudEvent]:
    # Compound fields (Name, BillingAddress) stay nested as sent; consumers read changedFields
    # entries such as 'Name.LastName' against that shape.
    fields = {name: value for name, value in message.payload.items() if name != CHANGE_EVENT_HEADER}
    fields = _with_iso_audit_dates(fields, copy=False)
    change_event = {
        "change_type": header.change_type,
        "entity_name": header.entity_name,
        "changed_fields": list(header.changed_fields),
        "nulled_fields": list(header.nulled_fields),
        "diff_fields": list(header.diff_fields),
        "transaction_key": header.transaction_key,
        "sequence_number": header.sequence_number,
        "commit_timestamp": header.commit_timestamp,
        "commit_number": header.commit_number,
        "commit_user": header.commit_user,
        "change_origin": header.change_origin,
        "changed_fields_encoding": header.changed_fields_encoding,
        "record_wildcard": header.record_wildcard,
    }
    connection_dict = connection.as_dict()
    id_prefix = f"{header.transaction_key}:{header.sequence_number}"
    if header.change_type == GAP_OVERFLOW or not header.record_ids:
        targets: tuple[str | None, ...] = (None,)
    else:
        targets = header.record_ids + ((None,) if header.record_wildcard is not None else ())
    events = []
    for record_id in targets:
        # GAP_OVERFLOW and a wildcard name no record: the entity stands in for the record in the
        # id, and the key is the channel's, as for every event without a record.
        events.append(
            CloudEvent(
                type=CHANGE_EVENT,
                id=f"{id_prefix}:{header.entity_name if record_id is None else record_id}",
                organization_id=org_id,
                connection=connection,
                time=header.commit_timestamp,
                key=f"{org_id}:{message.channel if record_id is None else record_id}",
                data={
                    "organization_id": org_id,
                    "connection": connection_dict,
                    "object": header.entity_name,
                    "record_id": record_id,
                    "fields": fields,
                    "received_at": received_at,
                    "change_event": change_event,
                },
                object=header.entity_name,
                subject=record_id,
            )
        )
    return events
