"""The webhook endpoints. Each handler reads as the path of a request in DESIGN.md:

limits -> authenticate -> parse -> validate -> resolve -> normalize -> deliver -> answer.

Every step is a call into its own module; errors are ``ReceiverError``s turned into answers
in one place (``responses``), so no step can answer an Ack on its own.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver import callbacks, outbound, responses, signatures
from receiver.errors import InvalidMessage, ReceiverError, Unauthenticated, UnknownOrg
from receiver.event import CloudEvent, Connection, utc_now_iso
from receiver.limits import (
    JSON_CONTENT_TYPES,
    XML_CONTENT_TYPES,
    check_content_type,
    check_integration,
    read_body,
)

if TYPE_CHECKING:
    from receiver.app import Services

logger = logging.getLogger("receiver.webhooks")

OUTBOUND = "outbound_message"
EVENTS = "event"
TERAPI = "terapi_forward"

Answer = Callable[[ReceiverError], Response]


class WebhookEndpoints:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.metrics = services.metrics
        self._event_keys = [signatures.parse_webhook_secret(s.get_secret_value()) for s in self.settings.event_secrets]
        self._event_keys_by_org = {
            org: [signatures.parse_webhook_secret(s.get_secret_value()) for s in secrets]
            for org, secrets in self.settings.event_secrets_by_org.items()
        }

    def routes(self) -> list[Route]:
        return [
            Route("/webhooks/terapi", self.terapi_forward, methods=["POST"]),
            Route("/webhooks/{integration}/outbound-messages", self.outbound_messages, methods=["POST"]),
            Route("/webhooks/{integration}/events", self.events, methods=["POST"]),
        ]

    async def _answer(
        self, kind: str, integration: str, answer_error: Answer, handle: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Run a handler; turn its error into the endpoint's error format and count the outcome."""
        started = time.perf_counter()
        self.metrics.messages_received.labels(kind, integration).inc()
        try:
            return await handle()
        except ReceiverError as error:
            self.metrics.rejected.labels(kind, str(error.status), error.reason).inc()
            log = logger.warning if error.status >= 500 else logger.info
            log("request refused", extra={"kind": kind, "status": error.status, "reason": error.reason})
            return answer_error(error)
        finally:
            self.metrics.request_latency.labels(kind).observe(time.perf_counter() - started)

    # -- Outbound Messages ------------------------------------------------------------------

    async def outbound_messages(self, request: Request) -> Response:
        integration = request.path_params["integration"]

        async def handle() -> Response:
            received_at = utc_now_iso()
            check_integration(integration, self.settings.integrations)
            check_content_type(request, XML_CONTENT_TYPES, what="a SOAP (text/xml) Outbound Message")
            self._authenticate_outbound(request)
            body = await read_body(request, self.settings.max_body_bytes)
            message = self.services.outbound_parser.parse(body)
            self.metrics.notifications_received.labels(OUTBOUND).inc(len(message.notifications))
            connection = await self._resolve(message.organization_id, integration, OUTBOUND, request, body)
            events = outbound.to_events(message, connection, received_at)
            await self.services.pipeline.deliver(events)
            return responses.soap_ack()

        return await self._answer(OUTBOUND, integration, responses.soap_fault, handle)

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

        async def handle() -> Response:
            received_at = utc_now_iso()
            check_integration(integration, self.settings.integrations)
            check_content_type(request, JSON_CONTENT_TYPES, what="application/json")
            body = await read_body(request, self.settings.max_body_bytes)
            header_org = request.headers.get("x-salesforce-org-id")
            webhook_id = signatures.verify_standard_webhook(
                request.headers,
                body,
                self._keys_for(header_org),
                tolerance_s=self.settings.event_timestamp_tolerance_s,
            )
            messages = callbacks.parse_event_body(
                body, max_events=self.settings.max_events_per_request, max_depth=self.settings.max_json_depth
            )
            events: list[CloudEvent] = []
            for message in messages:
                org_id = callbacks.message_org_id(message, header_org)
                connection = await self._resolve(org_id, integration, EVENTS, request, body)
                events.extend(callbacks.to_events(message, org_id, connection, received_at))
            self.metrics.notifications_received.labels(EVENTS).inc(len(events))
            delivery = await self.services.pipeline.deliver(events, delivery_id=f"webhook {integration} {webhook_id}")
            return responses.accepted(delivery.accepted, delivery.duplicates)

        return await self._answer(EVENTS, integration, responses.problem, handle)

    def _keys_for(self, header_org: str | None) -> list[bytes]:
        if header_org is None:
            return self._event_keys
        from receiver.ids import normalize_org_id

        try:
            org_id = normalize_org_id(header_org)
        except InvalidMessage:
            return self._event_keys
        return self._event_keys_by_org.get(org_id, []) + self._event_keys

    # -- Webhooks forwarded by terapi ---------------------------------------------------------

    async def terapi_forward(self, request: Request) -> Response:
        async def handle() -> Response:
            received_at = utc_now_iso()
            check_content_type(request, JSON_CONTENT_TYPES, what="application/json")
            body = await read_body(request, self.settings.max_body_bytes)
            secret = self.settings.terapi_webhook_secret
            if secret is None:
                raise Unauthenticated("RECEIVER_TERAPI_WEBHOOK_SECRET is not configured", reason="not_configured")
            signatures.verify_terapi_signature(request.headers, body, secret.get_secret_value())
            forward = callbacks.parse_terapi_forward(
                body, max_events=self.settings.max_events_per_request, max_depth=self.settings.max_json_depth
            )
            integration = forward.provider_config_key
            check_integration(integration, self.settings.integrations)
            connection = Connection(forward.connection_id, integration)
            org_id = await self.services.connections.org_of(connection)
            events: list[CloudEvent] = []
            for message in forward.messages:
                # The connection's org, when known, must agree with any org the payload names.
                message_org = callbacks.message_org_id(message, org_id or request.headers.get("x-salesforce-org-id"))
                if org_id is None:
                    # The connection is not indexed yet: the org must at least be a known one of it.
                    resolved = await self._resolve(message_org, integration, TERAPI, request, body)
                    if resolved.connection_id != connection.connection_id:
                        raise UnknownOrg("the org does not belong to the forwarding connection")
                events.extend(callbacks.to_events(message, message_org, connection, received_at))
            self.metrics.notifications_received.labels(TERAPI).inc(len(events))
            delivery = await self.services.pipeline.deliver(events)
            return responses.accepted(delivery.accepted, delivery.duplicates)

        return await self._answer(TERAPI, "terapi", responses.problem, handle)

    # -- shared steps -------------------------------------------------------------------------

    async def _resolve(self, org_id: str, integration: str, kind: str, request: Request, body: bytes) -> Connection:
        """The connection of the org; an unknown org is quarantined, then refused (403)."""
        connection = await self.services.connections.resolve(org_id, integration)
        if connection is not None:
            return connection
        await self.services.quarantine.put(
            reason="unknown_org",
            kind=kind,
            integration=integration,
            organization_id=org_id,
            path=request.url.path,
            headers=request.headers,
            body=body,
        )
        raise UnknownOrg("no terapi connection of this integration is known for the org")
