"""Where replay sends items: a receiver over HTTP (``--to URL``) or the pipeline in-process
(``--publish``), and the dry run, which only parses, validates and resolves.

Over HTTP an item is sent as its sender would: an Outbound Message as ``text/xml`` with
``SOAPAction: ""`` and the configured ``?token=``; JSON re-signed with the configured secrets
and a fresh ``webhook-timestamp``; terapi forwards re-signed with the terapi webhook secret. The
recorded ``webhook-id`` is kept (an item without one gets an id derived from its body), so that
replaying twice is a duplicate delivery, not new events.

``--publish`` runs the handler's own steps (``receiver.processing``) and the pipeline with the
configured sink and dedupe store. It does not quarantine again an org that is still unknown:
the payload is still where it was replayed from, and re-quarantining would copy it on each run.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

import httpx

from receiver import __version__, signatures
from receiver.errors import InvalidMessage, ReceiverError
from receiver.event import CloudEvent, utc_now_iso
from receiver.limits import check_integration
from receiver.processing import EVENTS, OUTBOUND, PayloadProcessor, webhook_delivery_id
from receiver.replay_items import ReplayItem, digest
from receiver.settings import Settings

USER_AGENT: Final = f"sf-receiver-replay/{__version__}"
_FAULT_REASON = re.compile(rb"<faultstring>\s*([a-z0-9_]+)\s*:")
_MAX_RETRY_WAIT_S: Final = 5.0


class Verdict(StrEnum):
    ACKED = "acked"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"
    #: Dry run: the item parses, validates and resolves.
    VALID = "valid"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What became of one item. ``reason`` names a rejection or failure (the receiver's slug)."""

    verdict: Verdict
    reason: str | None = None
    events_accepted: int = 0
    event_duplicates: int = 0
    #: Dry run: what would be sent (the request, or the events).
    plan: dict[str, Any] = field(default_factory=dict)
    #: False when nothing went out (no secret to sign with, a request that could not be made).
    sent: bool = True

    @property
    def is_final(self) -> bool:
        """Everything but a failure is done: a checkpointed item is not sent again on resume."""
        return self.verdict is not Verdict.FAILED


class ReplayTarget(Protocol):
    async def start(self) -> None:
        """Connect; raises ``ReceiverError`` when the target cannot be used at all."""

    async def stop(self) -> None:
        """Flush and close; idempotent."""

    async def send(self, item: ReplayItem) -> ReplayResult:
        """Send one item; never raises for the item's own problems (they are its result)."""


def webhook_id_of(item: ReplayItem) -> str:
    """The recorded ``webhook-id``, else one derived from the body: stable across replays."""
    return item.headers.get("webhook-id") or f"msg_replay_{digest(item.body)}"


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    path: str
    headers: dict[str, str]
    params: dict[str, str]


class HttpTarget:
    """A receiver at ``base_url``, reached as Salesforce, a Flow or terapi would reach it."""

    def __init__(self, base_url: str, settings: Settings, *, timeout_s: float = 30.0, attempts: int = 3) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._event_keys = settings.webhook_keys()
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_s, headers={"User-Agent": USER_AGENT}
        )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def prepare(self, item: ReplayItem) -> PreparedRequest:
        """The request for one item, signed now. Raises ``Unsigned`` when no secret is configured."""
        headers = {"Content-Type": item.content_type}
        params: dict[str, str] = {}
        if item.kind == OUTBOUND:
            headers["SOAPAction"] = '""'
            if self.settings.outbound_token is not None:
                params["token"] = self.settings.outbound_token.get_secret_value()
            return PreparedRequest(f"/webhooks/{item.integration}/outbound-messages", headers, params)
        org_header = item.headers.get("x-salesforce-org-id")
        if org_header is not None:
            headers["X-Salesforce-Org-Id"] = org_header
        if item.kind == EVENTS:
            keys = self._keys_for(item.organization_id, item.integration)
            if not keys:
                raise Unsigned("no RECEIVER_EVENT_SECRETS secret to sign with", reason="no_event_secret")
            webhook_id, timestamp = webhook_id_of(item), int(time.time())
            headers["webhook-id"] = webhook_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = " ".join(
                signatures.sign_standard_webhook(key, webhook_id, timestamp, item.body) for key in keys
            )
            return PreparedRequest(f"/webhooks/{item.integration}/events", headers, params)
        secret = self.settings.terapi_webhook_secret
        if secret is None:
            raise Unsigned("no RECEIVER_TERAPI_WEBHOOK_SECRET to sign with", reason="no_terapi_secret")
        headers["X-Terapi-Hmac-Sha256"] = signatures.sign_terapi(secret.get_secret_value(), item.body)
        return PreparedRequest("/webhooks/terapi", headers, params)

    def _keys_for(self, organization_id: str | None, integration: str) -> list[bytes]:
        # The first key of each kind that applies: whichever the receiver holds verifies.
        known = self._event_keys
        own = known.by_org.get(organization_id or "", [])[:1]
        return own + known.by_integration.get(integration, [])[:1] + known.shared[:1]

    def describe(self, item: ReplayItem) -> dict[str, Any]:
        """The request a dry run would send, without secrets: the token and signatures are named only."""
        try:
            prepared = self.prepare(item)
        except Unsigned as exc:
            return {"error": exc.reason}
        query = "?token=<configured>" if prepared.params else ""
        hidden = {"webhook-signature", "X-Terapi-Hmac-Sha256", "webhook-timestamp"}
        return {
            "method": "POST",
            "url": f"{self.base_url}{prepared.path}{query}",
            "headers": {name: "<fresh>" if name in hidden else value for name, value in prepared.headers.items()},
        }

    async def send(self, item: ReplayItem) -> ReplayResult:
        if self._client is None:
            raise RuntimeError("HttpTarget.send before start")
        result = ReplayResult(Verdict.FAILED, reason="not_sent")
        for attempt in range(1, self.attempts + 1):
            try:
                prepared = self.prepare(item)  # signed again on each attempt: a fresh timestamp
            except Unsigned as exc:
                return ReplayResult(Verdict.FAILED, reason=exc.reason, sent=False)
            try:
                response = await self._client.post(
                    prepared.path, content=item.body, headers=prepared.headers, params=prepared.params
                )
            except httpx.HTTPError as exc:
                result, wait_s = ReplayResult(Verdict.FAILED, reason=_transport_reason(exc)), None
            else:
                result, wait_s = classify(item, response), _retry_after(response)
            if result.verdict is not Verdict.FAILED or attempt == self.attempts:
                return result
            await asyncio.sleep(min(wait_s if wait_s is not None else 0.5 * attempt, _MAX_RETRY_WAIT_S))
        return result


class Unsigned(ReceiverError):
    """The item needs a secret the replay's settings do not hold."""

    reason = "unsigned"


def classify(item: ReplayItem, response: httpx.Response) -> ReplayResult:
    """The verdict of a receiver's answer: 2xx acked or duplicate, 4xx rejected, 429/5xx failed."""
    status = response.status_code
    if 200 <= status < 300:
        if item.kind == OUTBOUND:
            # The SOAP Ack says nothing of duplicates: an acked OM counts as acked.
            if b"<Ack>true</Ack>" in response.content:
                return ReplayResult(Verdict.ACKED)
            return ReplayResult(Verdict.FAILED, reason="no_ack")
        try:
            answer = response.json()
            accepted, duplicates = int(answer["accepted"]), int(answer["duplicates"])
        except (ValueError, KeyError, TypeError):
            return ReplayResult(Verdict.ACKED)
        verdict = Verdict.DUPLICATE if accepted == 0 and duplicates > 0 else Verdict.ACKED
        return ReplayResult(verdict, events_accepted=accepted, event_duplicates=duplicates)
    reason = _error_reason(response)
    rejected = 400 <= status < 500 and status != 429
    return ReplayResult(Verdict.REJECTED if rejected else Verdict.FAILED, reason=reason)


def _error_reason(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            reason = response.json().get("reason")
        except ValueError:
            reason = None
        if isinstance(reason, str) and reason:
            return reason
    match = _FAULT_REASON.search(response.content)
    if match is not None:
        return match.group(1).decode()
    return f"http_{response.status_code}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _transport_reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connection_refused"
    return "transport_error"


class PipelineTarget:
    """The pipeline in-process, straight to the configured sink (``--publish``), or, with
    ``dry_run``, only the steps before delivery: nothing is published, claimed or quarantined."""

    def __init__(self, settings: Settings, *, dry_run: bool = False, request_plan: HttpTarget | None = None) -> None:
        from receiver.app import build_services

        # Replay records nothing itself: the receiver it stands in for would record the sender.
        settings = settings.model_copy(update={"recording_enabled": False, "kafka_record_raw": False})
        self.settings = settings
        self.dry_run = dry_run
        self.request_plan = request_plan
        self.services = build_services(settings)
        self.processor = PayloadProcessor(self.services)
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        from receiver.app import started

        if self.dry_run:
            await self.services.connections.start()
            self._stack.push_async_callback(self.services.connections.stop)
        else:
            await self._stack.enter_async_context(started(self.services))

    async def stop(self) -> None:
        await self._stack.aclose()

    async def send(self, item: ReplayItem) -> ReplayResult:
        try:
            events = await self._events(item, utc_now_iso())
            if self.dry_run:
                plan = self._plan(item, events)
                unsendable = plan.get("request", {}).get("error")
                if unsendable is not None:
                    # The real run could not sign this request: say so now, not after it ran.
                    return ReplayResult(Verdict.FAILED, reason=unsendable, plan=plan, sent=False)
                return ReplayResult(Verdict.VALID, plan=plan)
            delivery_id = webhook_delivery_id(item.integration, webhook_id_of(item)) if item.kind == EVENTS else None
            delivery = await self.services.pipeline.deliver(events, delivery_id=delivery_id)
        except ReceiverError as error:
            return ReplayResult(Verdict.REJECTED if error.sender_at_fault else Verdict.FAILED, reason=error.reason)
        verdict = Verdict.DUPLICATE if delivery.accepted == 0 and delivery.duplicates > 0 else Verdict.ACKED
        return ReplayResult(verdict, events_accepted=delivery.accepted, event_duplicates=delivery.duplicates)

    async def _events(self, item: ReplayItem, received_at: str) -> list[CloudEvent]:
        header_org = item.headers.get("x-salesforce-org-id")
        if item.kind == OUTBOUND:
            check_integration(item.integration, self.settings.integrations)
            return await self.processor.outbound_message(item.integration, item.body, received_at, None)
        if item.kind == EVENTS:
            check_integration(item.integration, self.settings.integrations)
            return await self.processor.events(item.integration, item.body, header_org, received_at, None)
        if not item.body:
            raise InvalidMessage("empty body", reason="invalid_event")
        return await self.processor.terapi_forward(item.body, header_org, received_at, None)

    def _plan(self, item: ReplayItem, events: list[CloudEvent]) -> dict[str, Any]:
        described = [{"type": event.type, "source": event.source, "id": event.id, "key": event.key} for event in events]
        plan: dict[str, Any] = {"events": described}
        if self.request_plan is not None:
            plan["request"] = self.request_plan.describe(item)
        return plan
