"""The first step of every request: integration, content type and body size, before any parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from starlette.requests import Request

from receiver.errors import PayloadTooLarge, RequestTimeout, UnknownIntegration, UnsupportedMediaType

XML_CONTENT_TYPES = frozenset({"text/xml", "application/xml", "application/soap+xml"})
JSON_CONTENT_TYPES = frozenset({"application/json", "application/cloudevents+json"})


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
    Raises ``PayloadTooLarge`` (413) and ``RequestTimeout`` (408).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"body over {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
