"""The HTTP/1.1 connection: uvicorn's httptools protocol, with bounds on what one client can hold.

uvicorn bounds neither the size nor the number of request headers under httptools, arms its
keep-alive timer only once a first response is sent, and cancels it on any byte received. So a
client that connects and sends nothing, or one header byte every few seconds (slow loris),
holds a socket and its buffers for ever, and one endless header line grows without bound.
This subclass adds, per connection:

- a head deadline: the request line and headers must be complete within
  ``request_head_timeout_s`` of the connection opening, and within ``keep_alive_timeout_s``
  plus that of the previous response however the client trickles bytes; past it the client
  gets a 408 if it had started a request, and the connection is closed either way;
- a bound on the head's size (``max_header_bytes``, request line included, counted as bytes
  arrive, before the head is whole) and on the number of headers (``max_header_count``): 431,
  then closed;
- with ``tls_client_names``, the names of the client certificate: others are cut off.

It also sends each response in one write: uvicorn writes the head when the app starts the
response and the body when it sends it, two ``send`` calls and two TCP segments for every
Ack. ``OneWriteTransport`` holds the head until the body's first bytes.

Deadlines on the body are the handler's (``limits.read_body``), where the route is known.
Refusals here happen before there is a request to record; they are logged at info level and
counted in ``receiver_connections_refused_total`` by reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from receiver.errors import ClientError, HeadersTooLarge, InvalidMessage, RequestTimeout
from receiver.limits import BODY_COMPLETE
from receiver.metrics import METRICS_STATE_KEY, Metrics
from receiver.responses import problem, soap_fault
from receiver.settings import Settings

logger = logging.getLogger("receiver.http")

_INVALID_REQUEST: Final = "Invalid HTTP request received."
# What a request line adds to its target (``POST `` and `` HTTP/1.1\r\n``), and a header line to
# its name and value (``: `` and ``\r\n``): the parser hands over only the tokens.
_REQUEST_LINE_OVERHEAD: Final = 16
_HEADER_LINE_OVERHEAD: Final = 4
#: How long a refused connection is still read (and discarded) after its answer.
_LINGER_S: Final = 2.0
_OUTBOUND_SUFFIX: Final = b"/outbound-messages"
#: Written by uvicorn as a request's body is first awaited; the client waits for it, so it is not held.
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: A body this large is written after its head rather than copied behind it.
_JOIN_AT_MOST: Final = 65_536


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection may hold; picklable, so that uvicorn's worker processes get it too."""

    max_header_count: int = 100
    max_header_bytes: int = 16_384
    head_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 15.0
    client_names: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            head_timeout_s=settings.request_head_timeout_s,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
            client_names=frozenset(settings.tls_client_names),
        )


def bounded_protocol(limits: ConnectionLimits) -> Any:
    """The value for uvicorn's ``http`` option: the protocol class with ``limits`` bound."""
    return functools.partial(BoundedHttpToolsProtocol, limits=limits)


class _HeadRefused(Exception):
    """Raised inside a parser callback to stop httptools; carries the answer to give."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(error.detail)
        self.error = error


def _closed() -> None:
    return None


class OneWriteTransport:
    """The transport as one request's cycle sees it: the first write (the response head) is held
    and leaves with the next one (the body, or its first chunk), in a single ``send``.

    uvicorn writes ``100 Continue`` through the cycle too, before any head: that goes at once.
    Not used for HEAD requests, whose response has no body write to carry the head.
    """

    __slots__ = ("_close_early", "_closes_early", "_cycle", "_head", "_head_written", "_transport")

    def __init__(
        self, transport: asyncio.Transport, cycle: RequestResponseCycle, close_early: Callable[[], None]
    ) -> None:
        self._transport = transport
        self._cycle = cycle
        #: How to close after an answer given before the body arrived: the peer may still be
        #: sending it, and a plain close would reset the connection under the answer.
        self._close_early = close_early
        self._closes_early = False
        self._head: bytes | None = None
        self._head_written = False

    def write(self, data: bytes) -> None:
        if not self._head_written:
            if data == _CONTINUE:
                self._transport.write(data)
                return
            self._head_written = True
            self._head = bytes(data)
            cycle = self._cycle
            if cycle.more_body:
                # Answered before its body arrived (an early 413, 401, 408): the rest of that
                # body would be read as the next request, so the connection ends with this
                # answer, and says so (RFC 9110 10.1.1); uvicorn said it already for a
                # connection that was to close anyway.
                self._closes_early = True
                if cycle.keep_alive:
                    cycle.keep_alive = False
                    self._head = self._head[:-2] + b"connection: close\r\n\r\n"
            return
        head = self._head
        if head is not None:
            self._head = None
            if len(data) <= _JOIN_AT_MOST:
                data = head + data
            else:
                self._transport.write(head)
        self._transport.write(data)

    def linger_on_close(self) -> None:
        """Close as after an early answer: the peer may be sending what will not be read."""
        self._closes_early = True

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        if self._closes_early:
            self._close_early()
        else:
            self._transport.close()
        # The protocol's method and the cycle are not needed past here: the reference cycle
        # through them would keep a closed connection's parser and buffers for the collector.
        self._close_early = _closed
        self._cycle = None  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_head = False
        self._head_bytes = 0
        self._head_bytes_parsed = 0
        self._header_count = 0
        self._refused = False
        self._body_bytes_in_read = 0
        self._head_bytes_done_in_read = 0
        self._head_began_in_read = False
        self._before: RequestResponseCycle | None = None

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limits.client_names and not self._client_certificate_named(transport):
            logger.info("connection refused", extra={"reason": "client_certificate_name", "client": self.client})
            self._count_refusal("client_certificate_name")
            self._refused = True
            transport.close()
            return
        self._arm(self.limits.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but a refusal raised in a callback gets its own answer rather than a 400.
        if self._refused:
            return
        self._unset_keepalive_if_required()
        while True:
            self._body_bytes_in_read = 0
            self._head_bytes_done_in_read = 0
            self._head_began_in_read = False
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, _HeadRefused):
                    self._refuse(exc.__context__.error)
                else:
                    self.logger.warning(_INVALID_REQUEST)
                    self.send_400_response(_INVALID_REQUEST)
                return
            except httptools.HttpParserError:
                self.logger.warning(_INVALID_REQUEST)
                self.send_400_response(_INVALID_REQUEST)
                return
            except httptools.HttpParserUpgrade as upgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                # An Upgrade not spoken (h2c on a GET) is ignored, as RFC 9110 7.8 allows:
                # httptools stopped at the end of that request; what follows is the next one.
                offset = upgrade.args[0] if upgrade.args and isinstance(upgrade.args[0], int) else len(data)
                data = data[offset:]
                if not data or self._refused:
                    return
                continue
            break
        self._bound_unparsed(data)

    def _bound_unparsed(self, data: bytes) -> None:
        """Bound what httptools holds unparsed after a read: a header line, a chunk-size line or a
        trailer line without its end, which only the raw bytes show growing.

        The read's bytes, less its body bytes and the heads completed in it, are that; where a
        head began in this read, no more than what follows the read's last blank line either
        (chunk framing of a body before it is neither head nor body).
        """
        reading_head = self._reading_head
        cycle = self.cycle
        if not reading_head and (cycle is None or not cycle.more_body):
            return  # the read ended with a whole request: nothing is held unparsed
        unparsed = len(data) - self._body_bytes_in_read - self._head_bytes_done_in_read
        if reading_head and self._head_began_in_read and unparsed > 0:
            blank_line = data.rfind(b"\r\n\r\n")
            if blank_line != -1:
                unparsed = min(unparsed, len(data) - blank_line - 4)
        unparsed = max(0, unparsed)
        limit = self.limits.max_header_bytes
        if reading_head:
            self._head_bytes += unparsed
            if self._head_bytes > limit:
                self._refuse(self._head_too_large())
        elif unparsed > max(limit, self._body_bytes_in_read):
            # A chunked body whose framing outweighs it, or a trailer line that never ends.
            self._refuse(HeadersTooLarge(f"chunk framing or trailers over {limit} bytes in one read"))

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_began_in_read = True
        self._head_bytes = 0
        self._head_bytes_parsed = 0
        self._header_count = 0
        if self._deadline is None:  # a pipelined request: its head gets the full deadline
            self._arm(self.limits.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count_head_bytes(len(url) + _REQUEST_LINE_OVERHEAD)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            raise _HeadRefused(HeadersTooLarge(f"more than {self.limits.max_header_count} headers"))
        self._count_head_bytes(len(name) + len(value) + _HEADER_LINE_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        # What of this head arrived in this read (the rest was counted raw in earlier reads).
        self._head_bytes_done_in_read += max(0, self._head_bytes_parsed - self._head_bytes)
        # Trailers of a chunked body are counted afresh, as a head of their own.
        self._head_bytes_parsed = 0
        self._header_count = 0
        self._disarm()
        if self.parser.should_upgrade() and self._declares_body():
            # httptools takes what follows the head as the new protocol's bytes: a request the
            # app would see without its body (a 400, quarantined empty), or a WebSocket
            # handshake that never answers.
            raise _HeadRefused(InvalidMessage("an Upgrade with a body", reason="unsupported_upgrade"))
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous:  # a new request (an upgrade makes none)
            #: The request before the newest: the one owed an answer should the newest fail.
            self._before = previous
            # Its task has not run yet: it writes through the wrapper.
            if cycle is not None and cycle.scope["method"] != "HEAD":
                cycle.transport = OneWriteTransport(self.transport, cycle, self._close_lingering)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self._body_bytes_in_read += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Usually within the read that completed the head: the app has not started yet. There
        # is no cycle for an upgrade that opens a connection, and an old one after an upgrade.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope[BODY_COMPLETE] = True  # type: ignore[typeddict-unknown-key]

    def on_response_complete(self) -> None:
        # Idle from now on: uvicorn's keep-alive timer closes a silent connection, this deadline
        # one that sends bytes (which cancel that timer) without ever completing a head.
        next_head_complete = bool(self.pipeline)
        super().on_response_complete()
        if not next_head_complete and self._deadline is None and not self.transport.is_closing():
            self._arm(self.limits.keep_alive_timeout_s + self.limits.head_timeout_s)

    # -- internals --------------------------------------------------------------------------

    def _declares_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip().strip(b"0")):
                return True
        return False

    def _count_head_bytes(self, size: int) -> None:
        # A head that arrives in one read is parsed whole before ``data_received`` can count it.
        self._head_bytes_parsed += size
        if self._head_bytes_parsed > self.limits.max_header_bytes:
            raise _HeadRefused(self._head_too_large())

    def _head_too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"request line and headers over {self.limits.max_header_bytes} bytes")

    def _arm(self, delay_s: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._refused:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its completion arms the next deadline
        if self._reading_head:
            self._refuse(RequestTimeout(f"the request head did not arrive within {self.limits.head_timeout_s:g} s"))
        else:
            # Nothing started: an answer could be read as the answer to a request sent meanwhile.
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._answer_later():
            self._refused = True
            self._count_refusal("invalid_request")
            return
        super().send_400_response(msg)

    def _answer_later(self) -> bool:
        """True when an earlier request on this connection is still to be answered.

        Its answer must come first (RFC 9112 9.3.2), and the refusal written now would be
        read as that answer: the connection reads nothing more and closes after the answers
        it owes, the refused request getting none (its sender sees the connection close).
        """
        owed: RequestResponseCycle | None = self.cycle
        if owed is not None and owed.more_body and not self._reading_head:
            # The error is in the body of the newest request.
            if not self.pipeline or self.pipeline[0][0] is not owed:
                return False  # it is the one being answered: its own 400, now
            self.pipeline.popleft()  # queued: it never runs; the one before it is owed
            owed = self.pipeline[0][0] if self.pipeline else self._before
        if owed is None or owed.response_complete:
            return False
        owed.keep_alive = False
        if isinstance(owed.transport, OneWriteTransport):
            owed.transport.linger_on_close()  # the peer may still be sending
        self.flow.pause_reading()
        return True

    def _refuse(self, error: ClientError) -> None:
        """Answer ``error`` as problem+json and close: the rest of the connection is not read."""
        self._refused = True
        self._disarm()
        logger.info("connection refused", extra={"reason": error.reason, "client": self.client})
        self._count_refusal(error.reason)
        if self._answer_later():
            return
        # In the endpoint's error format when the request line said which: Salesforce's
        # Outbound Messages get a SOAP Fault (DESIGN), everything else problem+json.
        outbound = getattr(self, "url", b"").partition(b"?")[0].endswith(_OUTBOUND_SUFFIX)
        response = soap_fault(error) if outbound else problem(error)
        head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n".encode()]
        head.extend(name + b": " + value + b"\r\n" for name, value in response.raw_headers if name != b"connection")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + response.body)
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Close a connection whose peer may still be sending (a refusal, an answer given before
        the body arrived). Closing with unread bytes in the socket makes the kernel send a reset,
        which can destroy the answer before the client reads it: half-close, discard what still
        comes, close soon."""
        self._refused = True
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._deadline = self.loop.call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _count_refusal(self, reason: str) -> None:
        # The app's metrics, handed over through the lifespan state once it has started.
        metrics: Metrics | None = self.app_state.get(METRICS_STATE_KEY)
        if metrics is not None:
            metrics.connections_refused.labels(reason).inc()

    def _client_certificate_named(self, transport: asyncio.Transport) -> bool:
        certificate = transport.get_extra_info("peercert")
        if not certificate:
            return False
        names = {value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"}
        names.update(value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS")
        return not names.isdisjoint(self.limits.client_names)
