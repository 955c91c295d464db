"""Bounds on a request: integration, content type and body size before any parsing, and each
org's share of the requests being published."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator
from contextlib import contextmanager, nullcontext
from typing import Final

from starlette.requests import Request

from receiver.errors import (
    ClientDisconnected,
    OrgOverloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnknownIntegration,
    UnsupportedMediaType,
)

XML_CONTENT_TYPES = frozenset({"text/xml", "application/xml", "application/soap+xml"})
JSON_CONTENT_TYPES = frozenset({"application/json", "application/cloudevents+json"})
#: Set in a request's scope by the server (``http_protocol``) once the whole body is in its buffer.
BODY_COMPLETE: Final = "receiver.body_complete"


def check_integration(integration: str, integrations: Collection[str]) -> None:
    """Raises ``UnknownIntegration`` (404) for an integration the receiver is not configured for."""
    if integration not in integrations:
        raise UnknownIntegration("this receiver does not serve that integration")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_content_type(request: Request, accepted: frozenset[str], *, what: str) -> None:
    """Raises ``UnsupportedMediaType`` (415) unless the request declares one of ``accepted``.

    A missing content type is let through: the parser decides, and its error is clearer.
    """
    declared = media_type(request)
    if declared and declared not in accepted:
        raise UnsupportedMediaType(f"expected {what}, got {declared}")


async def read_body(request: Request, max_bytes: int, *, timeout_s: float | None = None) -> bytes:
    """The whole body, refusing early anything over ``max_bytes`` or slower than ``timeout_s``.

    A declared Content-Length over the bound is refused before reading a byte; a chunked body
    is refused as soon as it passes the bound, so a large body is never held whole. The
    deadline covers the whole body: a client trickling a byte at a time cannot hold a request
    slot (and its share of ``max_requests_in_flight``) for longer.
    A body the server already holds whole (``BODY_COMPLETE``, nearly every webhook) cannot keep
    the request waiting: it is taken without arming the deadline, which would cost more than
    the rest of this function.
    Raises ``PayloadTooLarge`` (413), ``RequestTimeout`` (408) and ``ClientDisconnected`` (499).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body over {max_bytes} bytes")
    # ASGI messages read directly: Starlette's ``stream()`` is a generator around the same
    # calls, and raises an exception of its own (a 500) for a client that hangs up.
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    try:
        async with nullcontext() if request.scope.get(BODY_COMPLETE) else asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientDisconnected(f"the client hung up after {size} bytes of its body")
                chunk: bytes = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"body over {max_bytes} bytes")
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class OrgSlots:
    """Requests being published, counted per org, and bounded when ``limit`` is not 0.

    The receiver serves many customers' orgs from one pool (``max_requests_in_flight``). A
    mass update in one org sends Outbound Messages by the thousand; without a share per org,
    they would fill the pool and every other org would get 503s. Past its share an org gets
    429 with ``Retry-After`` at once, and Salesforce retries it later.
    """

    def __init__(self, limit: int, *, retry_after_s: int = 2) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._held: dict[str, int] = {}

    def held(self, org_id: str) -> int:
        return self._held.get(org_id, 0)

    @contextmanager
    def hold(self, org_ids: Collection[str]) -> Iterator[None]:
        """One slot of each org for the block; raises ``OrgOverloaded`` when one has none left."""
        held = self._held
        if self.limit:
            for org_id in org_ids:
                if held.get(org_id, 0) >= self.limit:
                    raise OrgOverloaded(
                        f"this org already has {self.limit} requests being published; retry shortly",
                        retry_after_s=self.retry_after_s,
                    )
        for org_id in org_ids:
            held[org_id] = held.get(org_id, 0) + 1
        try:
            yield
        finally:
            for org_id in org_ids:
                remaining = held[org_id] - 1
                if remaining:
                    held[org_id] = remaining
                else:
                    del held[org_id]
