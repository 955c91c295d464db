"""The webhook endpoints. Each handler reads as the path of a request in DESIGN.md:

limits -> authenticate -> parse -> validate -> resolve -> normalize -> deliver -> answer.

Every step is a call into its own module; errors are ``ReceiverError``s turned into answers
in one place (``responses``), so no step can answer an Ack on its own.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver import responses, signatures
from receiver.errors import InvalidMessage, ReceiverError, ShuttingDown, Unauthenticated, UnknownIntegration
from receiver.event import CloudEvent, utc_now_iso
from receiver.ids import normalize_org_id
from receiver.limits import (
    JSON_CONTENT_TYPES,
    XML_CONTENT_TYPES,
    OrgSlots,
    check_content_type,
    check_integration,
    read_body,
)
from receiver.logs import request_id_var
from receiver.pipeline import Delivery
from receiver.processing import (
    ENDPOINT_SEGMENTS,
    EVENTS,
    OUTBOUND,
    TERAPI,
    Origin,
    PayloadProcessor,
    webhook_delivery_id,
)
from receiver.recording import Outcome, RecordedRequest

if TYPE_CHECKING:
    from receiver.app import Services

logger = logging.getLogger("receiver.webhooks")

Answer = Callable[[ReceiverError], Response]
Handler = Callable[[Request], Awaitable[Response]]


class WebhookEndpoints:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.metrics = services.metrics
        self.processor = PayloadProcessor(services)
        self.org_slots = OrgSlots(self.settings.max_requests_in_flight_per_org)
        self._event_keys = self.settings.webhook_keys()
        #: The handler of each integration endpoint's kind (``ENDPOINT_SEGMENTS``).
        self._handlers: dict[str, Handler] = {OUTBOUND: self.outbound_messages, EVENTS: self.events}

    def routes(self) -> list[Route]:
        return [
            Route("/webhooks/terapi", self.terapi_forward, methods=["POST"]),
            *(
                Route(f"/webhooks/{{integration}}/{segment}", self._handlers[kind], methods=["POST"])
                for segment, kind in ENDPOINT_SEGMENTS.items()
            ),
        ]

    def handler_for(self, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler ``routes`` gives a POST to ``path``, and its path parameters, or None."""
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "webhooks" and parts[2]:
            kind = ENDPOINT_SEGMENTS.get(parts[3])
            return None if kind is None else (self._handlers[kind], {"integration": parts[2]})
        if len(parts) == 3 and parts[1] == "webhooks" and parts[2] == "terapi":
            return self.terapi_forward, {}
        return None

    async def _answer(
        self,
        request: Request,
        kind: str,
        integration: str,
        answer_error: Answer,
        handle: Callable[[str], Awaitable[Response]],
    ) -> Response:
        """Run a handler with the receipt time; turn its error into the endpoint's error format,
        count and record the outcome (the recording and the events share that receipt time)."""
        started = time.perf_counter()
        received_at = utc_now_iso()
        # A name not served is one label value, not one time series per name a client makes up.
        served = integration in self.settings.integrations or kind == TERAPI
        self.metrics.messages_received.labels(kind, integration if served else "unknown").inc()
        try:
            response = await handle(received_at)
            outcome = Outcome(response.status_code, "ok")
        except (ReceiverError, asyncio.CancelledError) as raised:
            error = raised if isinstance(raised, ReceiverError) else self._cut_off_at_shutdown()
            self.metrics.rejected.labels(kind, str(error.status), error.reason).inc()
            log = logger.warning if error.status >= 500 else logger.info
            log("request refused", extra={"kind": kind, "status": error.status, "reason": error.reason})
            response = answer_error(error)
            outcome = Outcome(error.status, error.reason)
        except Exception:
            # A bug: the sender still gets the endpoint's own error format (a SOAP Fault it will
            # retry, a problem document), and the payload that hit it is recorded, to be replayed
            # once the bug is fixed.
            logger.exception("request failed", extra={"kind": kind})
            error = ReceiverError("the receiver failed on this request; it is logged, resend it later")
            self.metrics.rejected.labels(kind, str(error.status), error.reason).inc()
            response = answer_error(error)
            outcome = Outcome(error.status, error.reason)
        finally:
            self.metrics.request_latency.labels(kind).observe(time.perf_counter() - started)
        self._record(request, kind, integration, received_at, outcome)
        return response

    @staticmethod
    def _cut_off_at_shutdown() -> ShuttingDown:
        """uvicorn cancels the requests still running at the shutdown deadline. The sender gets
        the endpoint's own error (a SOAP Fault, a problem document) rather than uvicorn's plain
        500, and no Ack: the request ends here, so the cancellation is spent."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return ShuttingDown("the receiver is shutting down before this request was done; resend it")

    async def _deliver(self, events: list[CloudEvent], *, delivery_id: str | None = None) -> Delivery:
        """Publish through the pipeline, within each org's share of the requests in flight."""
        if not self.org_slots.limit:
            return await self.services.pipeline.deliver(events, delivery_id=delivery_id)
        with self.org_slots.hold({event.organization_id for event in events}):
            return await self.services.pipeline.deliver(events, delivery_id=delivery_id)

    def _record(self, request: Request, kind: str, integration: str, received_at: str, outcome: Outcome) -> None:
        """Hand the request to the recorder (redaction happens there); never fails the request."""
        if not self.services.recorder.enabled:
            return
        self.services.recorder.record(
            RecordedRequest(
                received_at=received_at,
                kind=kind,
                integration=integration,
                # The scope's path is what request.url.path holds, without building a URL per request.
                path=request.scope["path"],
                headers=request.headers,
                # Requests refused before their body was read (token, size) are recorded without it.
                body=getattr(request.state, "raw_body", None),
                remote_addr=request.client.host if request.client else None,
                outcome=outcome,
                request_id=request_id_var.get(),
            )
        )

    async def _processed(
        self, request: Request, kind: str, integration: str, body: bytes, processing: Awaitable[list[CloudEvent]]
    ) -> list[CloudEvent]:
        """The events ``processing`` makes of an authenticated payload; one it refuses (a 400, an
        integration not served) is quarantined with the reason first. Unknown orgs are
        quarantined where they are found (``PayloadProcessor.resolve``)."""
        try:
            return await processing
        except (InvalidMessage, UnknownIntegration) as error:
            await self.processor.quarantine(error.reason, kind, integration, None, origin=_origin(request), body=body)
            raise

    async def _read_body(self, request: Request) -> bytes:
        """The body (``limits.read_body``), kept on the request for its recording."""
        body = await read_body(request, self.settings.max_body_bytes, timeout_s=self.settings.request_timeout_s)
        request.state.raw_body = body
        return body

    # -- Outbound Messages ------------------------------------------------------------------

    async def outbound_messages(self, request: Request) -> Response:
        integration = request.path_params["integration"]

        async def handle(received_at: str) -> Response:
            check_integration(integration, self.settings.integrations)
            check_content_type(request, XML_CONTENT_TYPES, what="a SOAP (text/xml) Outbound Message")
            self._authenticate_outbound(request)
            body = await self._read_body(request)
            processing = self.processor.outbound_message(integration, body, received_at, _origin(request))
            events = await self._processed(request, OUTBOUND, integration, body, processing)
            await self._deliver(events)
            return responses.soap_ack()

        return await self._answer(request, OUTBOUND, integration, responses.soap_fault, handle)

    def _authenticate_outbound(self, request: Request) -> None:
        """Salesforce cannot sign an Outbound Message: a URL token is what it can carry."""
        expected = self.settings.outbound_token
        if expected is None:
            return
        given = request.query_params.get("token")
        if given is None:
            raise Unauthenticated("the token query parameter is missing", reason="missing_token")
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise Unauthenticated("the token query parameter is wrong", reason="wrong_token")

    # -- Platform events and CDC --------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        integration = request.path_params["integration"]

        async def handle(received_at: str) -> Response:
            check_integration(integration, self.settings.integrations)
            check_content_type(request, JSON_CONTENT_TYPES, what="application/json")
            body = await self._read_body(request)
            header_org = request.headers.get("x-salesforce-org-id")
            webhook_id = signatures.verify_standard_webhook(
                request.headers,
                body,
                self._keys_for(integration, header_org, body),
                tolerance_s=self.settings.event_timestamp_tolerance_s,
            )
            processing = self.processor.events(integration, body, header_org, received_at, _origin(request))
            events = await self._processed(request, EVENTS, integration, body, processing)
            delivery_id = webhook_delivery_id(integration, webhook_id)
            delivery = await self._deliver(events, delivery_id=delivery_id)
            return responses.accepted(delivery.accepted, delivery.duplicates)

        return await self._answer(request, EVENTS, integration, responses.problem, handle)

    def _keys_for(self, integration: str, header_org: str | None, body: bytes) -> list[bytes]:
        """The secrets that may have signed a request: its org's, its integration's, the shared ones.

        The org is the header's, or else the ``organizationId`` the body names (read before the
        signature is checked only when some org has secrets of its own: it picks a key, and an
        unsigned body gains nothing by naming an org).
        """
        known = self._event_keys
        keys = known.by_integration.get(integration, []) + known.shared
        if not known.by_org:
            return keys
        # A blank header names no org, as for the message itself (``callbacks.message_org_id``).
        named = header_org if header_org is not None and header_org.strip() else _body_org(body)
        try:
            org_id = normalize_org_id(named) if named is not None else None
        except InvalidMessage:
            org_id = None
        return known.by_org.get(org_id, []) + keys if org_id is not None else keys

    # -- Webhooks forwarded by terapi ---------------------------------------------------------

    async def terapi_forward(self, request: Request) -> Response:
        async def handle(received_at: str) -> Response:
            check_content_type(request, JSON_CONTENT_TYPES, what="application/json")
            body = await self._read_body(request)
            secret = self.settings.terapi_webhook_secret
            if secret is None:
                raise Unauthenticated("RECEIVER_TERAPI_WEBHOOK_SECRET is not configured", reason="not_configured")
            signatures.verify_terapi_signature(request.headers, body, secret.get_secret_value())
            header_org = request.headers.get("x-salesforce-org-id")
            processing = self.processor.terapi_forward(body, header_org, received_at, _origin(request))
            events = await self._processed(request, TERAPI, "terapi", body, processing)
            delivery = await self._deliver(events)
            return responses.accepted(delivery.accepted, delivery.duplicates)

        return await self._answer(request, TERAPI, "terapi", responses.problem, handle)


def _body_org(body: bytes) -> str | None:
    """The one org a JSON event body names: the top-level ``organizationId`` of its message, of
    its list of messages or of its ``{"events": [...]}`` wrapper and the messages in it; None
    when it names none, several, or not as text (the signature check then decides)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items: list[object] = document if isinstance(document, list) else [document]
    if isinstance(document, dict) and isinstance(document.get("events"), list):
        items = [document, *document["events"]]
    named: set[str] = set()
    for item in items:
        org = item.get("organizationId") if isinstance(item, dict) else None
        if org is not None and not isinstance(org, str):
            return None
        if org:
            try:
                named.add(normalize_org_id(org))
            except InvalidMessage:
                return None
    return named.pop() if len(named) == 1 else None


def _origin(request: Request) -> Origin:
    """What the quarantine keeps of the request besides its body (redacted there)."""
    return Origin(path=request.scope["path"], headers=request.headers)


class DirectWebhooks:
    """Pure ASGI, the innermost middleware: a POST to a webhook path goes straight to its handler.

    Starlette's way there tries each route's pattern, wraps ``send`` twice more and builds the
    request in two more layers: about 13 us of the 200 a one-notification Outbound Message costs
    (bench). Whatever else comes (another method, a trailing slash, health and metrics) goes on
    to Starlette's router, which answers as it always did: 405, the redirect, 404.
    """

    def __init__(self, app: ASGIApp, *, endpoints: WebhookEndpoints) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            found = self.endpoints.handler_for(scope["path"])
            if found is not None:
                handler, scope["path_params"] = found
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
