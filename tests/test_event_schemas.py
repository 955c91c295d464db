"""The JSON Schemas in schemas/: generated from receiver.schema, and matching every kind of event produced."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from receiver import callbacks, outbound
from receiver.event import OUTBOUND_MESSAGE, CloudEvent, Connection
from receiver.outbound import OutboundMessageParser
from receiver.wsdl import WsdlRegistry
from tests import event_payloads, om_payloads
from tests.conftest import EXAMPLE_WSDL_DIR, REPO
from tests.schema_guard import SchemaGuard

CONNECTION = Connection("acme-prod", "salesforce")
RECEIVED_AT = "2025-05-01T10:00:00.000Z"
ORG = event_payloads.ORG


def outbound_events(body: bytes, *, typed: bool = True) -> list[CloudEvent]:
    registry = WsdlRegistry.load(EXAMPLE_WSDL_DIR) if typed else WsdlRegistry.empty()
    return outbound.to_events(OutboundMessageParser(registry).parse(body), CONNECTION, RECEIVED_AT)


def json_events(document: Any) -> list[CloudEvent]:
    messages = callbacks.parse_event_body(json.dumps(document).encode())
    return [event for message in messages for event in callbacks.to_events(message, ORG, CONNECTION, RECEIVED_AT)]


def terapi_events(document: Any) -> list[CloudEvent]:
    forward = {
        "from": "salesforce",
        "type": "forward",
        "connectionId": "acme-prod",
        "providerConfigKey": "salesforce",
        "payload": document,
    }
    parsed = callbacks.parse_terapi_forward(json.dumps(forward).encode())
    return [
        event for message in parsed.messages for event in callbacks.to_events(message, ORG, CONNECTION, RECEIVED_AT)
    ]


def pubsub_decoded() -> dict[str, Any]:
    """A CDC payload as an Avro decoder of the Pub/Sub API gives it: bitmaps, epoch ms, string long."""
    message = event_payloads.change_event(["001xx000003DGb4AAG"], LastModifiedDate=1745500706000, Phone=None)
    header = message["data"]["payload"]["ChangeEventHeader"]
    header.update(changedFields=["0x650004E0", "4-0x10"], nulledFields=None, diffFields=[])
    header["commitNumber"] = "9007199254740993"  # past 2**53: exact only as an int, never a float
    return message


def platform_event_without_uuid() -> dict[str, Any]:
    message = event_payloads.sample("platform_event_low_ink.json")
    del message["data"]["event"]["EventUuid"]
    del message["data"]["payload"]["CreatedDate"]
    return message


PRODUCERS: dict[str, Callable[[], list[CloudEvent]]] = {
    **{
        f"om {name}": (lambda name=name: outbound_events(om_payloads.sample(name)))  # type: ignore[misc]
        for name in om_payloads.SAMPLE_FILES
    },
    "om untyped": lambda: outbound_events(om_payloads.sample("account_null_field_omitted.xml"), typed=False),
    "om generated 100": lambda: outbound_events(om_payloads.outbound_message(100)),
    "platform event": lambda: json_events(event_payloads.sample("platform_event_low_ink.json")),
    "platform event, replay id only": lambda: json_events(platform_event_without_uuid()),
    "cdc bare payload": lambda: json_events(event_payloads.sample("change_event_contact_update_payload.json")),
    "cdc several records": lambda: json_events(
        event_payloads.change_event(["001xx000003DGb4AAG", "001xx000003DGb5AAG"], Name="Acme")
    ),
    "cdc every change type": lambda: json_events(
        [
            event_payloads.change_event(["001xx000003DGb4AAG"], change_type=change_type, sequence=number)
            for number, change_type in enumerate(
                ("CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE")
            )
        ]
    ),
    "cdc gap overflow": lambda: json_events(event_payloads.change_event([], change_type="GAP_OVERFLOW")),
    "cdc pubsub decoded": lambda: json_events(pubsub_decoded()),
    "terapi forward": lambda: terapi_events(
        [event_payloads.sample("platform_event_low_ink.json"), event_payloads.change_event(["001xx000003DGb4AAG"])]
    ),
}


@pytest.fixture(scope="module")
def guard() -> SchemaGuard:
    return SchemaGuard()


def test_schema_files_are_generated_from_the_models() -> None:
    """python -m receiver.schema --check passes: schemas/ and receiver/schema.py have not drifted."""
    result = subprocess.run(
        [sys.executable, "-m", "receiver.schema", "--check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("producer", PRODUCERS.values(), ids=PRODUCERS.keys())
def test_every_kind_of_event_matches_its_schemas(guard: SchemaGuard, producer: Callable[[], list[CloudEvent]]) -> None:
    """Each event's data matches schemas/<kind>.data.schema.json and its headers event.headers.schema.json."""
    events = producer()
    assert events
    for event in events:
        assert guard.problems(event) == [], event.id


def test_the_guard_reports_an_event_that_breaks_the_schema(guard: SchemaGuard) -> None:
    """A field missing from data or a malformed ce_source header is reported, naming the place."""
    [good] = outbound_events(om_payloads.outbound_message(1))
    data = {name: value for name, value in good.data.items() if name != "received_at"}
    broken = CloudEvent(
        type=OUTBOUND_MESSAGE,
        id=good.id,
        organization_id="not-an-org",
        connection=good.connection,
        time=good.time,
        key=good.key,
        data=data,
        object=good.object,
        subject=good.subject,
    )
    problems = guard.problems(broken)
    assert any(problem.startswith("data: 'received_at' is a required property") for problem in problems)
    assert any(problem.startswith("headers.ce_source:") for problem in problems)


def documented_examples() -> dict[str, Any]:
    """The ``data`` examples of docs/events.md, by kind (each follows an ``example:`` marker)."""
    text = (REPO / "docs" / "events.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- example: (\w+) -->\n```json\n(.*?)\n```", text, flags=re.DOTALL)
    return {kind: json.loads(block) for kind, block in blocks}


def test_the_documented_examples_are_what_the_receiver_produces(guard: SchemaGuard) -> None:
    """docs/events.md shows, for each kind, the data the builders make of examples/payloads, valid per schemas/."""
    connection = Connection("example-contacts", "salesforce")
    received_at = "2025-05-01T10:00:00.123Z"
    parser = OutboundMessageParser(WsdlRegistry.load(EXAMPLE_WSDL_DIR))
    [outbound_event, _] = outbound.to_events(
        parser.parse(om_payloads.sample("contact_2_notifications.xml")), connection, received_at
    )
    built = {"outbound_message": outbound_event}
    for name in ("platform_event_low_ink.json", "change_event_contact_update_payload.json"):
        [message] = callbacks.parse_event_body(json.dumps(event_payloads.sample(name)).encode())
        [event] = callbacks.to_events(message, ORG, connection, received_at)
        built[event.kind] = event
    examples = documented_examples()
    assert set(examples) == set(built)
    for kind, example in examples.items():
        assert example == json.loads(json.dumps(built[kind].data)), kind
        assert guard.problems(built[kind]) == []
