"""The CloudEvent's Kafka headers and receipt times keep their shape after the hot-path rewrite."""

from __future__ import annotations

import re

from receiver.event import OUTBOUND_MESSAGE, CloudEvent, Connection, utc_now_iso


def _event(**changes: object) -> CloudEvent:
    values: dict[str, object] = {
        "type": OUTBOUND_MESSAGE,
        "id": "04l1I000000bmsHQAQ",
        "organization_id": "00D1I000003qqqEUAQ",
        "connection": Connection("acme-prod", "salesforce"),
        "time": "2024-05-01T12:00:00.000Z",
        "key": "00D1I000003qqqEUAQ:0031I000003qqqEQAQ",
        "data": {},
        "object": "Contact",
        "subject": "0031I000003qqqEQAQ",
    }
    values.update(changes)
    return CloudEvent(**values)  # type: ignore[arg-type]


def _from_attributes(event: CloudEvent) -> list[tuple[str, bytes]]:
    headers = [("content-type", b"application/json")]
    for name, value in event.attributes().items():
        if name != "datacontenttype":
            headers.append((f"ce_{name}", value.encode()))
    return headers


def test_kafka_headers_are_the_attributes_in_order() -> None:
    """Binary content mode headers: content-type, then every attribute but datacontenttype, in order."""
    event = _event()
    assert event.kafka_headers() == _from_attributes(event)


def test_kafka_headers_leave_out_absent_subject_and_object() -> None:
    """An event without a record or object has no ce_subject or ce_sfobject header."""
    event = _event(object=None, subject=None)
    assert event.kafka_headers() == _from_attributes(event)
    assert "ce_subject" not in dict(event.kafka_headers())


def test_receipt_time_is_iso_8601_to_the_millisecond() -> None:
    """utc_now_iso: YYYY-MM-DDTHH:MM:SS.mmmZ in UTC."""
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", utc_now_iso())
