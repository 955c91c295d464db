"""The normalized event the receiver publishes: CloudEvents 1.0 attributes plus ``data``.

Kept as a frozen dataclass with ``data`` as a plain dict: it is built on the hot path once per
notification, and ``receiver.schema`` holds the pydantic models that describe (and validate, in
tests) the same shape for consumers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

SPEC_VERSION: Final = "1.0"
OUTBOUND_MESSAGE: Final = "com.salesforce.outbound_message"
PLATFORM_EVENT: Final = "com.salesforce.platform_event"
CHANGE_EVENT: Final = "com.salesforce.change_event"

#: ce_type -> the short kind used in routing rules, filters and topic templates.
KINDS: Final = {
    OUTBOUND_MESSAGE: "outbound_message",
    PLATFORM_EVENT: "platform_event",
    CHANGE_EVENT: "change_event",
}


@dataclass(frozen=True, slots=True)
class Connection:
    """The terapi connection an org belongs to."""

    connection_id: str
    integration: str

    def as_dict(self) -> dict[str, str]:
        return {"connection_id": self.connection_id, "integration": self.integration}


def source_for(org_id: str) -> str:
    """The ``ce_source`` of every event of one org; with ``ce_id`` it is the dedupe key."""
    return f"/salesforce/orgs/{org_id}"


# The second's text is formatted once per second, not once per call: every request takes a
# receipt time, and formatting a datetime costs more than the rest of this function.
_formatted_second: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """Now in UTC, ISO 8601 to the millisecond with a ``Z``: ``2024-05-01T12:00:00.123Z``."""
    global _formatted_second  # noqa: PLW0603 -- a one-entry cache of the current second
    now = time.time()
    second = int(now)
    if _formatted_second[0] != second:
        _formatted_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_formatted_second[1]}.{int((now - second) * 1000):03d}Z"


def utc_of(moment: datetime) -> datetime:
    """``moment``, which has an offset, in UTC; raises ``ValueError`` when that leaves the
    years 1 to 9999 (``0001-01-01T00:00:00+01:00``), as the parsers' other refusals do."""
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("date-time out of range once in UTC") from exc


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One notification or record change, ready for a sink."""

    type: str
    id: str
    organization_id: str
    connection: Connection
    time: str
    key: str
    data: dict[str, Any]
    object: str | None = None
    subject: str | None = None

    @property
    def source(self) -> str:
        return source_for(self.organization_id)

    @property
    def kind(self) -> str:
        return KINDS[self.type]

    @property
    def dedupe_key(self) -> str:
        return f"{self.source} {self.id}"

    def attributes(self) -> dict[str, str]:
        """The CloudEvents attributes, extensions included, without ``data``."""
        attributes = {
            "specversion": SPEC_VERSION,
            "type": self.type,
            "source": self.source,
            "id": self.id,
            "time": self.time,
            "datacontenttype": "application/json",
            "sforgid": self.organization_id,
            "terapiconnectionid": self.connection.connection_id,
            "terapiintegration": self.connection.integration,
        }
        if self.subject is not None:
            attributes["subject"] = self.subject
        if self.object is not None:
            attributes["sfobject"] = self.object
        return attributes

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Kafka binary content mode: ``content-type`` plus one ``ce_`` header per attribute.

        Written out rather than derived from ``attributes()`` (same names, same order): it runs
        once per published record.
        """
        headers = [
            ("content-type", b"application/json"),
            ("ce_specversion", b"1.0"),
            ("ce_type", self.type.encode()),
            ("ce_source", f"/salesforce/orgs/{self.organization_id}".encode()),
            ("ce_id", self.id.encode()),
            ("ce_time", self.time.encode()),
            ("ce_sforgid", self.organization_id.encode()),
            ("ce_terapiconnectionid", self.connection.connection_id.encode()),
            ("ce_terapiintegration", self.connection.integration.encode()),
        ]
        if self.subject is not None:
            headers.append(("ce_subject", self.subject.encode()))
        if self.object is not None:
            headers.append(("ce_sfobject", self.object.encode()))
        return headers

    def structured(self) -> dict[str, Any]:
        """CloudEvents structured mode, as the file sink writes it."""
        return {**self.attributes(), "data": self.data}
