"""The payload path after authentication: parse -> validate -> resolve -> normalize.

Shared by the HTTP handlers (``receiver.webhooks``) and ``sf-receiver replay --publish`` /
``--dry-run``, so that a replayed payload meets exactly the checks a live one does. Limits and
authentication stay in the handlers: they are about the HTTP request, and a replay from local
files has neither a token nor a signature to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from receiver import callbacks, outbound
from receiver.errors import UnknownOrg
from receiver.event import CloudEvent, Connection
from receiver.limits import check_integration

if TYPE_CHECKING:
    from receiver.app import Services

#: Endpoint kinds: metric labels, recording and quarantine ``kind``, replay items.
OUTBOUND: Final = "outbound_message"
EVENTS: Final = "event"
TERAPI: Final = "terapi_forward"
ENDPOINT_KINDS: Final = (OUTBOUND, EVENTS, TERAPI)
#: The last path segment of each integration's webhook endpoints, and the kind it receives.
ENDPOINT_SEGMENTS: Final = {"outbound-messages": OUTBOUND, "events": EVENTS}


def endpoint_of(path: str) -> tuple[str, str] | None:
    """(kind, integration) of a webhook path, or None when the path names no webhook endpoint.

    For requests that never reached a handler (refused by middleware) or recordings that lost
    their kind: the route table in ``receiver.webhooks`` is the same three shapes.
    """
    parts = path.strip("/").split("/")
    if parts == ["webhooks", "terapi"]:
        return TERAPI, "terapi"
    if len(parts) == 3 and parts[0] == "webhooks":
        kind = ENDPOINT_SEGMENTS.get(parts[2])
        if kind is not None:
            return kind, parts[1]
    return None


#: The reason of a terapi forward whose connection is not indexed and whose payload names no org.
UNKNOWN_CONNECTION: Final = "unknown_connection"


def webhook_delivery_id(integration: str, webhook_id: str) -> str:
    """The pipeline's ``delivery_id`` of a Standard Webhooks request: a retry of a delivery that
    succeeded, carrying the same events, is a duplicate (replay --publish keys its deliveries alike)."""
    return f"webhook {integration} {webhook_id}"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload came from: kept with it when its org is unknown and it is quarantined."""

    path: str
    headers: Mapping[str, str]


class PayloadProcessor:
    """Turns an authenticated body into the CloudEvents to deliver.

    ``origin`` is None when nothing may be quarantined (a dry run): an unknown org is then
    still refused, but leaves no trace.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.metrics = services.metrics

    async def outbound_message(
        self, integration: str, body: bytes, received_at: str, origin: Origin | None
    ) -> list[CloudEvent]:
        """One event per notification.

        Raises ``InvalidMessage`` (see ``OutboundMessageParser.parse``) and ``UnknownOrg``.
        """
        message = self.services.outbound_parser.parse(body)
        self.metrics.notifications_received.labels(OUTBOUND).inc(len(message.notifications))
        connection = await self.resolve(message.organization_id, integration, OUTBOUND, origin, body)
        return outbound.to_events(message, connection, received_at)

    async def events(
        self, integration: str, body: bytes, header_org: str | None, received_at: str, origin: Origin | None
    ) -> list[CloudEvent]:
        """One event per platform event, one per record of a change event.

        Raises ``InvalidMessage`` (see ``callbacks.parse_event_body`` and
        ``callbacks.message_org_id``) and ``UnknownOrg``.
        """
        messages = callbacks.parse_event_body(
            body, max_events=self.settings.max_events_per_request, max_depth=self.settings.max_json_depth
        )
        events: list[CloudEvent] = []
        for message in messages:
            org_id = callbacks.message_org_id(message, header_org)
            connection = await self.resolve(org_id, integration, EVENTS, origin, body)
            events.extend(callbacks.to_events(message, org_id, connection, received_at))
        self.metrics.notifications_received.labels(EVENTS).inc(len(events))
        return events

    async def terapi_forward(
        self, body: bytes, header_org: str | None, received_at: str, origin: Origin | None
    ) -> list[CloudEvent]:
        """The events of a webhook terapi forwarded; the connection is given, the org comes from it.

        Raises ``InvalidMessage``, ``UnknownIntegration`` (a ``providerConfigKey`` not served)
        and ``UnknownOrg`` (an org that is not the forwarding connection's).
        """
        forward = callbacks.parse_terapi_forward(
            body, max_events=self.settings.max_events_per_request, max_depth=self.settings.max_json_depth
        )
        integration = forward.provider_config_key
        check_integration(integration, self.settings.integrations)
        connection = Connection(forward.connection_id, integration)
        org_id = await self.services.connections.org_of(connection)
        events: list[CloudEvent] = []
        for message in forward.messages:
            if org_id is None and header_org is None and message.organization_id is None:
                # A connection created after the last refresh, and nothing else names the org:
                # like an unknown org, kept for replay once the index knows the connection.
                await self.quarantine(UNKNOWN_CONNECTION, TERAPI, integration, None, origin=origin, body=body)
                raise UnknownOrg(
                    "the forwarding connection is not known (yet) and the payload names no org",
                    reason=UNKNOWN_CONNECTION,
                )
            # The connection's org, when known, must agree with any org the payload names.
            message_org = callbacks.message_org_id(message, org_id or header_org)
            if org_id is None:
                # The connection is not indexed yet: the org must at least be a known one of it.
                resolved = await self.resolve(message_org, integration, TERAPI, origin, body)
                if resolved.connection_id != connection.connection_id:
                    raise UnknownOrg("the org does not belong to the forwarding connection")
            events.extend(callbacks.to_events(message, message_org, connection, received_at))
        self.metrics.notifications_received.labels(TERAPI).inc(len(events))
        return events

    async def resolve(self, org_id: str, integration: str, kind: str, origin: Origin | None, body: bytes) -> Connection:
        """The connection of the org; an unknown org is quarantined (unless ``origin`` is None),
        then refused: raises ``UnknownOrg`` (403)."""
        connection = await self.services.connections.resolve(org_id, integration)
        if connection is not None:
            return connection
        await self.quarantine("unknown_org", kind, integration, org_id, origin=origin, body=body)
        raise UnknownOrg("no terapi connection of this integration is known for the org")

    async def quarantine(
        self, reason: str, kind: str, integration: str, org_id: str | None, *, origin: Origin | None, body: bytes
    ) -> None:
        """Keep an authenticated payload that cannot be processed, with the reason (DESIGN's
        request path): its sender gets a 4xx and will not resend it. Nothing without ``origin``
        (replay, which reports the item instead)."""
        if origin is not None:
            await self.services.quarantine.put(
                reason=reason,
                kind=kind,
                integration=integration,
                organization_id=org_id,
                path=origin.path,
                headers=origin.headers,
                body=body,
            )
