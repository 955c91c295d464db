"""The published event's contract for consumers, as pydantic models and generated JSON Schemas.

The hot path builds ``data`` as plain dicts (``receiver.event``); these models describe the same
shape, are what ``schemas/*.schema.json`` are generated from (``python -m receiver.schema``),
and validate produced events in the tests, so the files, the models and the code cannot drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
_ID18 = r"^[a-zA-Z0-9]{18}$"
_ORG18 = r"^00D[a-zA-Z0-9]{15}$"
#: ISO 8601 in UTC with a ``Z``, as every time the receiver writes: ``2025-04-24T13:18:26.000Z``.
_UTC_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConnectionModel(_Model):
    connection_id: str = Field(description="The terapi connection id of the org.")
    integration: str = Field(description="The terapi integration: salesforce or salesforce-sandbox.")


class _EventData(_Model):
    organization_id: str = Field(pattern=_ORG18, description="18-character Salesforce org id.")
    connection: ConnectionModel
    object: str | None = Field(description="sObject, platform event or change event entity name.")
    record_id: str | None = Field(pattern=_ID18, description="18-character record id, where there is one.")
    fields: dict[str, Any] = Field(
        description="Field values: typed when the action's WSDL is registered, else as sent. "
        "An omitted field is absent; a nil field is null."
    )
    received_at: str = Field(pattern=_UTC_TIMESTAMP, description="When the receiver got the request (ISO 8601, UTC).")


class OutboundMessageSection(_Model):
    action_id: str = Field(pattern=_ID18)
    notification_id: str = Field(pattern=_ID18)
    enterprise_url: str
    partner_url: str


class OutboundMessageData(_EventData):
    """``data`` of ``com.salesforce.outbound_message``."""

    outbound_message: OutboundMessageSection


class PlatformEventSection(_Model):
    channel: str
    replay_id: int | None
    event_uuid: str | None
    schema_: str | None = Field(alias="schema")


class PlatformEventData(_EventData):
    """``data`` of ``com.salesforce.platform_event``."""

    platform_event: PlatformEventSection


class ChangeEventSection(_Model):
    change_type: str = Field(description="CREATE, UPDATE, DELETE, UNDELETE, GAP_* or GAP_OVERFLOW.")
    entity_name: str
    changed_fields: list[str]
    nulled_fields: list[str]
    diff_fields: list[str]
    changed_fields_encoding: Literal["names", "bitmap"] = Field(
        description="bitmap: the field lists are Pub/Sub API bitmaps, kept as sent and not decoded."
    )
    transaction_key: str | None
    sequence_number: int | None
    commit_timestamp: str | None = Field(pattern=_UTC_TIMESTAMP)
    commit_number: int | None = Field(description="Exact integer (up to 19 digits).")
    commit_user: str | None
    change_origin: str | None
    record_wildcard: str | None = Field(
        pattern=r"^[a-zA-Z0-9]{3}\*$",
        description=(
            "An object's key prefix and '*' (001*): the change is to every record of the object (a custom "
            "field's type was converted); the event stands for them all and has no record_id."
        ),
    )


class ChangeEventData(_EventData):
    """``data`` of ``com.salesforce.change_event``."""

    change_event: ChangeEventSection


class EventHeaders(_Model):
    """The Kafka headers of every event (CloudEvents binary content mode)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    content_type: Literal["application/json"] = Field(alias="content-type")
    ce_specversion: Literal["1.0"]
    ce_type: Literal["com.salesforce.outbound_message", "com.salesforce.platform_event", "com.salesforce.change_event"]
    ce_source: str = Field(pattern=r"^/salesforce/orgs/00D[a-zA-Z0-9]{15}$")
    ce_id: str = Field(min_length=1)
    ce_time: str = Field(pattern=_UTC_TIMESTAMP)
    ce_subject: str | None = Field(default=None, pattern=_ID18)
    ce_sforgid: str = Field(pattern=_ORG18)
    ce_sfobject: str | None = None
    ce_terapiconnectionid: str
    ce_terapiintegration: str


DATA_MODELS: dict[str, type[BaseModel]] = {
    "com.salesforce.outbound_message": OutboundMessageData,
    "com.salesforce.platform_event": PlatformEventData,
    "com.salesforce.change_event": ChangeEventData,
}

SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "outbound_message.data.schema.json": OutboundMessageData,
    "platform_event.data.schema.json": PlatformEventData,
    "change_event.data.schema.json": ChangeEventData,
    "event.headers.schema.json": EventHeaders,
}


def render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check the event JSON Schemas in schemas/.")
    parser.add_argument("--check", action="store_true", help="fail when a file differs from the models")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, model in SCHEMA_FILES.items():
        path = args.dir / name
        text = render(model)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        sys.stderr.write(f"schemas out of date: {', '.join(stale)}; run python -m receiver.schema\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
