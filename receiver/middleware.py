"""Pure ASGI middleware: a request id for every request, and the bounds on requests in flight.

Two bounds, both answered 503 with ``Retry-After``: the number of webhook requests, and the
bytes their bodies may hold at once. The second is what keeps memory bounded: a thousand
requests of 5 MiB each would otherwise be 5 GB before any parsing. Each request reserves its
declared ``Content-Length`` (the whole ``max_body_bytes`` for a chunked body, which may grow to
it; nothing when it declares more, as ``read_body`` refuses it unread).

Pure ASGI rather than ``BaseHTTPMiddleware``: it costs nothing per request beyond a dict lookup,
and the overload answer is written before the body is read.
"""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.errors import Overloaded, ReceiverError
from receiver.logs import request_id_var
from receiver.metrics import Metrics
from receiver.recording import Outcome, Recorder, refused_by_middleware
from receiver.responses import problem, soap_fault

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_WEBHOOK_PREFIX = "/webhooks/"


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_requests_in_flight: int,
        metrics: Metrics,
        max_body_bytes: int | None = None,
        max_body_bytes_in_flight: int | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.app = app
        self.max_requests_in_flight = max_requests_in_flight
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_body_bytes_in_flight = max_body_bytes_in_flight
        self.in_flight = 0
        self.body_bytes_in_flight = 0
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            path: str = scope["path"]
            if not path.startswith(_WEBHOOK_PREFIX):
                await self.app(scope, receive, send_with_id)
                return
            reserved = self._body_reservation(scope)
            error = self._overload(reserved)
            if error is not None:
                await refuse(
                    error,
                    scope,
                    receive,
                    send_with_id,
                    metrics=self.metrics,
                    recorder=self.recorder,
                    request_id=request_id,
                )
                return
            self.in_flight += 1
            self.body_bytes_in_flight += reserved
            self.metrics.in_flight_requests.inc()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self.in_flight -= 1
                self.body_bytes_in_flight -= reserved
                self.metrics.in_flight_requests.dec()
        finally:
            request_id_var.reset(token)

    def _body_reservation(self, scope: Scope) -> int:
        if self.max_body_bytes is None or self.max_body_bytes_in_flight is None:
            return 0
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = bytes(value)
                if not declared.isdigit():
                    return 0  # the HTTP parser has refused anything else already
                length = int(declared)
                return length if length <= self.max_body_bytes else 0
            chunked = chunked or name == b"transfer-encoding"
        return self.max_body_bytes if chunked else 0

    def _overload(self, reserved: int) -> Overloaded | None:
        if self.in_flight >= self.max_requests_in_flight:
            return Overloaded(f"more than {self.max_requests_in_flight} requests in flight", retry_after_s=1)
        limit = self.max_body_bytes_in_flight
        if limit is not None and reserved and self.body_bytes_in_flight + reserved > limit:
            return Overloaded(
                f"more than {limit} bytes of request bodies in flight", retry_after_s=1, reason="overloaded_body_bytes"
            )
        return None


async def refuse(
    error: ReceiverError,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    metrics: Metrics,
    recorder: Recorder | None,
    request_id: str | None,
) -> None:
    """Answer a webhook request refused before any handler ran: counted, recorded, and in the
    endpoint's own error format (a SOAP Fault for Outbound Messages, problem+json otherwise)."""
    metrics.rejected.labels("request", str(error.status), error.reason).inc()
    if recorder is not None:
        recorder.record(refused_by_middleware(scope, Outcome(error.status, error.reason), request_id))
    path: str = scope["path"]
    response = soap_fault(error) if path.endswith("/outbound-messages") else problem(error)
    await response(scope, receive, send)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = bytes(value).decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    # 32 random hex digits, as uuid4().hex gives, at a fifth of its cost (it runs per request).
    return os.urandom(16).hex()
