"""Pure ASGI middleware: a request id for every request, and the bound on requests in flight.

Pure ASGI rather than ``BaseHTTPMiddleware``: it costs nothing per request beyond a dict lookup,
and the overload answer is written before the body is read.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.errors import Overloaded
from receiver.logs import request_id_var
from receiver.metrics import Metrics
from receiver.responses import problem, soap_fault

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_WEBHOOK_PREFIX = "/webhooks/"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_requests_in_flight: int, metrics: Metrics) -> None:
        self.app = app
        self.max_requests_in_flight = max_requests_in_flight
        self.metrics = metrics
        self.in_flight = 0

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
            if self.in_flight >= self.max_requests_in_flight:
                error = Overloaded(f"more than {self.max_requests_in_flight} requests in flight", retry_after_s=1)
                self.metrics.rejected.labels("request", "503", error.reason).inc()
                response = soap_fault(error) if path.endswith("/outbound-messages") else problem(error)
                await response(scope, receive, send_with_id)
                return
            self.in_flight += 1
            self.metrics.in_flight_requests.inc()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight_requests.dec()
        finally:
            request_id_var.reset(token)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = bytes(value).decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex
