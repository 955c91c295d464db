"""The baseline: the straightforward receiver a team would write without this project.

A plain Starlette handler per endpoint: read the body, parse it (xmltodict for Outbound
Messages, ``json`` for events), and publish each notification with ``send_and_wait``, one after
the other, before answering. The producer is the same client with the same guarantee as the
receiver's (``acks=all``, idempotent, each send awaited) and aiokafka's defaults otherwise
(``linger_ms=0``). No dedupe, no schema validation, no org resolution, no recording: only what
it takes to publish an event per notification.

Two variants, chosen by ``BASELINE_BATCHING``:

``none`` (the default; the harness's ``baseline``)
    No batching across requests, as issue #8 defines the baseline: one ``send_and_wait`` in
    flight per process, so every produce request the broker sees carries one record of one HTTP
    request. This is what Kafka's own ``batch.size=0`` means, and what a synchronous worker
    (Flask under gunicorn, ``producer.send(...).get()``) does. aiokafka has no such setting,
    hence the lock.
``client`` (the harness's ``baseline-batched``)
    The same handler without the lock. aiokafka then batches on its own: while one produce
    request is in flight to a broker, the records that concurrent requests send meanwhile
    gather into the next batch, so this variant batches across requests after all, without
    asking to. It is measured too, so that the comparison with it is on record.

It publishes the same kind of record (JSON value, ``org:record`` key, CloudEvents ``ce_``
headers) so that ``scripts/bench`` reads back both topics the same way. Echoing
``X-Request-Id`` is the harness's instrumentation, not something the baseline needs.

Configuration: ``BASELINE_KAFKA_BOOTSTRAP_SERVERS``, ``BASELINE_KAFKA_TOPIC``,
``BASELINE_EVENT_SECRET`` (``whsec_...``), ``BASELINE_BATCHING`` (``none`` or ``client``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

import xmltodict
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOOTSTRAP = os.environ.get("BASELINE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
TOPIC = os.environ.get("BASELINE_KAFKA_TOPIC", "baseline.events")
SECRET = base64.b64decode(os.environ.get("BASELINE_EVENT_SECRET", "whsec_").removeprefix("whsec_"))

ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
    "</notificationsResponse></soapenv:Body></soapenv:Envelope>"
)

producer: AIOKafkaProducer | None = None
BATCHING = os.environ.get("BASELINE_BATCHING", "none")
if BATCHING not in ("none", "client"):
    raise SystemExit(f"BASELINE_BATCHING must be none or client, not {BATCHING!r}")
#: With BATCHING "none", one send in flight per process: no produce request mixes two requests.
SEND_LOCK: AbstractAsyncContextManager[Any] = asyncio.Lock() if BATCHING == "none" else nullcontext()


async def send(topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]) -> None:
    assert producer is not None
    async with SEND_LOCK:
        await producer.send_and_wait(topic, value, key=key, headers=headers)


def echo(request: Request) -> dict[str, str]:
    return {"x-request-id": request.headers.get("x-request-id", "")}


def headers_for(event_type: str, event_id: str, org: str) -> list[tuple[str, bytes]]:
    return [
        ("content-type", b"application/json"),
        ("ce_specversion", b"1.0"),
        ("ce_type", event_type.encode()),
        ("ce_source", f"/salesforce/orgs/{org}".encode()),
        ("ce_id", event_id.encode()),
    ]


async def outbound_messages(request: Request) -> Response:
    body = await request.body()
    try:
        envelope = xmltodict.parse(body)
        message = envelope["soapenv:Envelope"]["soapenv:Body"]["notifications"]
        org = message["OrganizationId"]
        notifications = message["Notification"]
    except (KeyError, TypeError, ValueError):
        return Response("bad request", status_code=400, headers=echo(request))
    if not isinstance(notifications, list):
        notifications = [notifications]
    received_at = datetime.now(UTC).isoformat()
    assert producer is not None
    for notification in notifications:
        sobject = notification["sObject"]
        fields = {name.split(":")[-1]: value for name, value in sobject.items() if not name.startswith("@")}
        record_id = fields.get("Id")
        event = {
            "organization_id": org,
            "object": sobject["@xsi:type"].split(":")[-1],
            "record_id": record_id,
            "fields": fields,
            "received_at": received_at,
            "notification_id": notification["Id"],
            "action_id": message.get("ActionId"),
        }
        await send(
            TOPIC,
            json.dumps(event).encode(),
            key=f"{org}:{record_id}".encode(),
            headers=headers_for("com.salesforce.outbound_message", notification["Id"], org),
        )
    return Response(ACK, media_type="text/xml; charset=utf-8", headers=echo(request))


async def events(request: Request) -> Response:
    body = await request.body()
    webhook_id = request.headers.get("webhook-id", "")
    timestamp = request.headers.get("webhook-timestamp", "")
    expected = base64.b64encode(
        hmac.new(SECRET, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    signatures = [entry.partition(",")[2] for entry in request.headers.get("webhook-signature", "").split()]
    if not any(hmac.compare_digest(expected, signature) for signature in signatures):
        return JSONResponse({"error": "bad signature"}, status_code=401, headers=echo(request))
    document: Any = json.loads(body)
    messages = document if isinstance(document, list) else [document]
    org = request.headers.get("x-salesforce-org-id", "")
    assert producer is not None
    for message in messages:
        event_info = message["data"].get("event", {})
        event_id = event_info.get("EventUuid") or f"{message['channel']}:{event_info.get('replayId')}"
        event = {"organization_id": org, "channel": message["channel"], "payload": message["data"]["payload"]}
        await send(
            TOPIC,
            json.dumps(event).encode(),
            key=f"{org}:{message['channel']}".encode(),
            headers=headers_for("com.salesforce.platform_event", event_id, org),
        )
    return JSONResponse({"accepted": len(messages)}, headers=echo(request))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global producer  # noqa: PLW0603 -- the straightforward way: one module-level producer
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        yield
    finally:
        await producer.stop()


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/webhooks/{integration}/outbound-messages", outbound_messages, methods=["POST"]),
        Route("/webhooks/{integration}/events", events, methods=["POST"]),
    ],
    lifespan=lifespan,
)
