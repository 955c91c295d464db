"""Bounds on one connection (receiver.http_protocol), spoken to in raw HTTP on a live server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.server import ServerState

from receiver.app import create_app
from receiver.http_protocol import BoundedHttpToolsProtocol, ConnectionLimits
from receiver.limits import BODY_COMPLETE
from receiver.settings import Settings
from tests.conftest import SettingsFactory
from tests.om_payloads import outbound_message
from tests.prometheus import metric
from tests.servers import receiver_server_options, run_uvicorn
from tests.test_recording import recordings

OM_PATH = "/webhooks/salesforce/outbound-messages"
SOAP = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
HEAD_TIMEOUT_S = 1.0
QUICK = {"request_head_timeout_s": HEAD_TIMEOUT_S, "keep_alive_timeout_s": 1, "request_timeout_s": 1.0}


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    async with run_uvicorn(create_app(settings), **receiver_server_options(settings)) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        yield host, int(port)


@asynccontextmanager
async def connection(address: tuple[str, int]) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()


async def answer(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout=timeout_s)


def head(*headers: str, path: str = "/healthz") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: test\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()


async def scraped(address: tuple[str, int]) -> str:
    """The server's /metrics text."""
    async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as client:
        return (await client.get("/metrics")).text


async def refused(address: tuple[str, int], reason: str) -> float:
    """The server's receiver_connections_refused_total for ``reason``."""
    return metric(await scraped(address), f'receiver_connections_refused_total{{reason="{reason}"}}')


async def rejected(address: tuple[str, int], labels: str) -> float:
    """The server's receiver_requests_rejected_total with ``labels``."""
    try:
        return metric(await scraped(address), f"receiver_requests_rejected_total{{{labels}}}")
    except AssertionError:  # not counted yet
        return 0.0


def problem_of(raw: bytes) -> dict[str, object]:
    document: dict[str, object] = orjson.loads(raw.partition(b"\r\n\r\n")[2])
    return document


async def test_a_head_over_the_byte_bound_is_431(make_settings: SettingsFactory) -> None:
    """One header past max_header_bytes is refused with a 431 problem and the connection closed."""
    async with served(make_settings(max_header_bytes=4096)) as address, connection(address) as (reader, writer):
        writer.write(head(f"X-Padding: {'a' * 5000}"))
        raw = await answer(reader)
        assert await refused(address, "headers_too_large") == 1
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert b"application/problem+json" in raw
    assert problem_of(raw)["reason"] == "headers_too_large"


async def test_a_head_refused_on_the_outbound_path_is_a_soap_fault(make_settings: SettingsFactory) -> None:
    """Refused by the protocol, before the app: an Outbound Message still gets a SOAP Fault, as
    DESIGN pins for that endpoint (it was problem+json)."""
    async with served(make_settings(max_header_count=20)) as address, connection(address) as (reader, writer):
        writer.write(head(*(f"X-{n}: v" for n in range(20)), path=f"{OM_PATH}?token=t"))
        raw = await answer(reader)
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert b"content-type: text/xml" in raw.lower()
    assert b"<faultcode>soapenv:Client</faultcode>" in raw and b"headers_too_large" in raw


async def test_an_endless_header_line_is_refused_before_it_ends(make_settings: SettingsFactory) -> None:
    """A header line that never ends is refused once the bound is passed, not held in memory."""
    async with served(make_settings(max_header_bytes=4096)) as address, connection(address) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
        for _ in range(8):
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.01)
        raw = await answer(reader)
    assert raw.startswith(b"HTTP/1.1 431 ")


async def test_more_headers_than_the_count_bound_is_431(make_settings: SettingsFactory) -> None:
    """max_header_count + 1 small headers are refused, however few bytes they take."""
    async with served(make_settings(max_header_count=20)) as address, connection(address) as (reader, writer):
        writer.write(head(*(f"X-{n}: v" for n in range(20))))
        raw = await answer(reader)
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert "more than 20 headers" in str(problem_of(raw)["detail"])


async def test_a_request_inside_the_bounds_is_served(make_settings: SettingsFactory) -> None:
    """Headers up to the count bound, and an Outbound Message, pass untouched."""
    settings = make_settings(max_header_count=20)
    async with served(settings) as address, httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as client:
        # httpx adds Host, Accept, Accept-Encoding, Connection, User-Agent and Content-Length.
        extra = {f"X-{n}": "v" for n in range(11)}
        response = await client.post(OM_PATH, content=outbound_message(1), headers={**SOAP, **extra})
    assert response.status_code == 200


async def test_a_head_that_stalls_is_408_after_the_head_deadline(make_settings: SettingsFactory) -> None:
    """A request started but never finished gets a 408 at the head deadline, and the connection ends."""
    async with served(make_settings(**QUICK)) as address, connection(address) as (reader, writer):
        started = time.monotonic()
        writer.write(b"POST /webhooks/salesforce/outbound-messages HTTP/1.1\r\nHost: te")
        raw = await answer(reader)
        assert await refused(address, "request_timeout") == 1
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert b"<faultcode>soapenv:Client</faultcode>" in raw and b"request_timeout" in raw  # the OM path
    assert HEAD_TIMEOUT_S * 0.9 < time.monotonic() - started < HEAD_TIMEOUT_S + 2


async def test_a_silent_connection_is_closed_without_an_answer(make_settings: SettingsFactory) -> None:
    """A connection that never sends a byte is closed at the head deadline, with nothing written."""
    async with served(make_settings(**QUICK)) as address, connection(address) as (reader, _):
        started = time.monotonic()
        assert await answer(reader) == b""
    assert time.monotonic() - started < HEAD_TIMEOUT_S + 2


async def test_trickled_blank_lines_do_not_keep_a_connection_open(make_settings: SettingsFactory) -> None:
    """After a response, bytes that never make a head (CRLFs) cannot outlast keep-alive plus the deadline."""
    async with served(make_settings(**QUICK)) as address, connection(address) as (reader, writer):
        writer.write(head())
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), timeout=5)
        assert first.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        # uvicorn's keep-alive timer alone is cancelled by every byte: this would go on for ever.
        with contextlib.suppress(ConnectionError):
            while not await _cut_off(reader):
                assert time.monotonic() - started < 10, "the connection is still open"
                writer.write(b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.2)
    assert time.monotonic() - started < 1 + HEAD_TIMEOUT_S + 1.5


async def _cut_off(reader: asyncio.StreamReader) -> bool:
    """Whether the server has answered (a refusal) or closed; no request here expects more."""
    try:
        await asyncio.wait_for(reader.read(1), timeout=0.01)
    except TimeoutError:
        return False
    return True


def om_request(body: bytes, *headers: str) -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return (
        f"POST {OM_PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: text/xml\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_a_refused_pipelined_request_does_not_take_the_earlier_ones_answer(
    make_settings: SettingsFactory,
) -> None:
    """An OM and, behind it, a head over the bound: the OM gets its Ack, then the connection
    closes (RFC 9112 9.3.2); the 431 written at once was read as the OM's answer."""
    settings = make_settings(max_header_bytes=4096)
    async with served(settings) as address, connection(address) as (reader, writer):
        writer.write(om_request(outbound_message(1, start=31)) + head(f"X-Padding: {'a' * 5000}"))
        raw = await answer(reader)
        assert await refused(address, "headers_too_large") == 1
    assert raw.startswith(b"HTTP/1.1 200 ") and b"<Ack>true</Ack>" in raw
    assert raw.count(b"HTTP/1.1 ") == 1
    assert b"connection: close" in raw.lower()


async def test_the_end_of_a_body_and_the_next_head_in_one_read_are_not_counted_as_head(
    make_settings: SettingsFactory,
) -> None:
    """A body longer than max_header_bytes, and the start of the next request in the same read:
    both requests are served (the whole read was counted as head, a 431)."""
    settings = make_settings(max_header_bytes=4096)
    following = head()
    async with served(settings) as address, connection(address) as (reader, writer):
        writer.write(om_request(outbound_message(20, start=40)) + following[:20])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(following[20:-2] + b"Connection: close\r\n\r\n")
        raw = await answer(reader)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", raw) == [b"200", b"200"]


async def test_an_answer_before_the_body_arrived_closes_the_connection(make_settings: SettingsFactory) -> None:
    """413 for a declared length with Expect: 100-continue, the body never sent: 'connection:
    close', and closed; kept open, the next request was read as that body and never answered."""
    async with served(make_settings()) as address, connection(address) as (reader, writer):
        writer.write(om_request(b"", "Expect: 100-continue").replace(b"Content-Length: 0", b"Content-Length: 6000000"))
        raw = await answer(reader)
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in raw.lower()


async def test_an_unsupported_upgrade_with_a_body_is_refused_not_served_without_it(
    make_settings: SettingsFactory,
) -> None:
    """Upgrade: h2c on a POST: httptools hands the body to the 'new protocol', so the app saw an
    empty body (400 malformed_xml, quarantined empty). It is a 400 unsupported_upgrade now, and
    the same header on a GET without a body is still served."""
    upgrade = ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")
    settings = make_settings()
    async with served(settings) as address:
        async with connection(address) as (reader, writer):
            writer.write(om_request(outbound_message(1, start=51), *upgrade))
            raw = await answer(reader)
        async with connection(address) as (reader, writer):
            writer.write(head(*upgrade, "Connection: close").replace(b"Connection: Upgrade, HTTP2-Settings\r\n", b""))
            served_get = await answer(reader)
    assert raw.startswith(b"HTTP/1.1 400 ") and b"<faultcode>soapenv:Client</faultcode>" in raw
    assert b"unsupported_upgrade" in raw
    assert served_get.startswith(b"HTTP/1.1 200 ")
    assert (settings.data_dir / "quarantine.jsonl").read_bytes() == b""


async def test_a_head_over_the_bound_in_the_first_read_is_431_at_once(make_settings: SettingsFactory) -> None:
    """60,000 bytes of one header line in a single read: refused on arrival, not held until the
    head deadline (the read in which a head begins counts, less the body bytes it holds)."""
    async with served(make_settings(max_header_bytes=4096)) as address, connection(address) as (reader, writer):
        writer.write(b"POST /webhooks/salesforce/events HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000)
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=2)
    assert status.startswith(b"HTTP/1.1 431 ")


async def test_a_malformed_body_of_the_request_being_read_is_400_at_once(make_settings: SettingsFactory) -> None:
    """A bad chunk size in the body still being read is that request's own 400, not a wait for a
    body that never comes (ending in a 408)."""
    async with served(make_settings()) as address, connection(address) as (reader, writer):
        chunked = f"POST {OM_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n"
        writer.write(chunked.encode() + b"\r\nZZ-not-a-chunk-size\r\n")
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=2)
    assert status.startswith(b"HTTP/1.1 400 ")


def test_an_early_answer_reaches_a_client_still_sending_its_body(make_settings: SettingsFactory) -> None:
    """413 on a declared 6 MB while the client sends it all before reading: the answer arrives
    (half-close, the rest discarded), not a connection reset under it."""

    async def scenario() -> list[bytes]:
        async with served(make_settings()) as address:
            return [
                await asyncio.to_thread(_send_all_then_read, address, 6_000_000, extra)
                for extra in ("", "", "Connection: close\r\n", "Connection: close\r\n")
            ]

    assert [answer[:13] for answer in asyncio.run(scenario())] == [b"HTTP/1.1 413 "] * 4


def _send_all_then_read(address: tuple[str, int], size: int, extra: str) -> bytes:
    import socket

    with socket.create_connection(address, timeout=10) as sock:
        head = f"POST {OM_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n{extra}Content-Length: {size}\r\n\r\n"
        try:
            sock.sendall(head.encode() + b" " * size)
            return sock.recv(200)
        except OSError as exc:
            return repr(exc).encode()


async def test_a_bad_body_behind_a_pipelined_request_leaves_it_its_answer(make_settings: SettingsFactory) -> None:
    """An OM, then a POST whose chunked body is malformed, in one write: the OM gets its Ack (it
    got the 400, though published), the broken request nothing, and the connection closes."""
    broken = f"POST {OM_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"
    async with served(make_settings()) as address, connection(address) as (reader, writer):
        writer.write(om_request(outbound_message(1, start=61)) + broken.encode())
        raw = await answer(reader)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", raw) == [b"200"]
    assert b"<Ack>true</Ack>" in raw


async def test_many_pipelined_heads_in_one_read_are_not_one_large_head(make_settings: SettingsFactory) -> None:
    """120 small GETs and the start of a 121st in one write: every one is answered (the heads
    already parsed in that read were counted as the unfinished one's: a false 431)."""
    requests = head() * 120 + head("Connection: close")  # 4.9 KB, over the 2 KiB bound below
    async with served(make_settings(max_header_bytes=2048)) as address, connection(address) as (reader, writer):
        writer.write(requests[:-20])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(requests[-20:])
        raw = await answer(reader)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", raw) == [b"200"] * 121


async def test_an_ignored_upgrade_leaves_the_next_pipelined_request_its_answer(make_settings: SettingsFactory) -> None:
    """A GET with Upgrade: h2c and a second GET in one write: both answered (the second was lost
    with the bytes after the upgrade)."""
    upgrade = head("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")
    async with served(make_settings()) as address, connection(address) as (reader, writer):
        writer.write(upgrade + head("Connection: close"))
        raw = await answer(reader)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", raw) == [b"200", b"200"]


async def test_thousands_of_ignored_upgrades_in_one_read_are_all_answered(make_settings: SettingsFactory) -> None:
    """3,000 pipelined GETs with Upgrade: h2c in one write: each answered (re-parsing the rest of
    the read recursively ended in a RecursionError and a reset)."""
    upgrade = head("Connection: Upgrade", "Upgrade: h2c")
    async with served(make_settings()) as address, connection(address) as (reader, writer):
        writer.write(upgrade * 3000 + head("Connection: close"))
        raw = await answer(reader, timeout_s=30)
    assert raw.count(b"HTTP/1.1 200 ") == 3001


async def test_chunk_framing_before_the_next_head_is_not_counted_as_head(make_settings: SettingsFactory) -> None:
    """A chunked OM in 1-byte chunks (about 5 bytes of framing a byte) and the start of the next
    request in one write: both answered (the framing made a false 431)."""
    body = outbound_message(1, start=71)
    chunks = b"".join(b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"
    chunked = f"POST {OM_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
    following = head("Connection: close")
    settings = make_settings(max_header_bytes=4096)
    async with served(settings) as address, connection(address) as (reader, writer):
        writer.write(chunked.encode() + chunks + following[:10])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(following[10:])
        raw = await answer(reader)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", raw) == [b"200", b"200"]


async def test_trailers_are_bounded_like_a_head(make_settings: SettingsFactory) -> None:
    """A trailer line that never ends is refused within a read or two (it grew unbounded,
    quadratically, for the whole request timeout); a few trailers pass."""
    chunked = f"POST {OM_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = outbound_message(1, start=72)
    framed = chunked.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
    async with served(make_settings(max_header_bytes=4096)) as address:
        async with connection(address) as (reader, writer):
            writer.write(framed + b"X-Trailer: " + b"t" * 100_000)
            refused = await answer(reader)
        async with connection(address) as (reader, writer):
            writer.write(framed + b"X-Trailer: 1\r\nX-Other: 2\r\n\r\n" + head("Connection: close"))
            served_twice = await answer(reader)
    assert refused.startswith(b"HTTP/1.1 431 ")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", served_twice) == [b"200", b"200"]


async def test_a_websocket_upgrade_with_a_body_is_refused(make_settings: SettingsFactory) -> None:
    """The WebSocket handshake never answered a request with a body: the connection hung open."""
    websocket = head(
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Content-Length: 5",
    )
    async with served(make_settings()) as address, connection(address) as (reader, writer):
        writer.write(websocket + b"hello")
        raw = await answer(reader)
    assert raw.startswith(b"HTTP/1.1 400 ") and problem_of(raw)["reason"] == "unsupported_upgrade"


async def test_a_body_slower_than_the_request_timeout_is_408(make_settings: SettingsFactory) -> None:
    """A body trickled past request_timeout_s is answered 408 without waiting for its end."""
    async with served(make_settings(**QUICK)) as address, connection(address) as (reader, writer):
        writer.write(
            f"POST {OM_PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: text/xml\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        started = time.monotonic()
        status = b""
        while not status and time.monotonic() - started < 5:
            writer.write(b"<")
            await writer.drain()
            try:
                status = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=0.2)
            except TimeoutError:
                continue
    assert status.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 1.0 + 1.5


async def test_a_client_hanging_up_mid_body_is_counted_not_an_internal_error(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Salesforce gives up on a slow receiver and closes: that is 499 client_disconnected in the
    metrics and the recording, not a traceback and a recorded 500."""
    settings = make_settings()
    async with served(settings) as address:
        async with connection(address) as (_, writer):
            head = f"POST {OM_PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: text/xml\r\nContent-Length: 1000\r\n\r\n"
            writer.write(head.encode() + b"<")
            await writer.drain()
            await asyncio.sleep(0.1)
        labels = 'kind="outbound_message",reason="client_disconnected",status="499"'
        for _ in range(100):  # the server sees the hang-up a moment after the client
            if await rejected(address, labels) == 1:
                break
            await asyncio.sleep(0.05)
        assert await rejected(address, labels) == 1
        assert await rejected(address, 'kind="outbound_message",reason="internal_error",status="500"') == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    outcomes = [line["outcome"] for line in recordings(settings)]
    assert outcomes == [{"status": 499, "reason": "client_disconnected"}]


async def test_slow_loris_connections_do_not_delay_normal_requests(make_settings: SettingsFactory) -> None:
    """200 connections trickling header bytes: Outbound Messages are still acked quickly, and the
    trickling connections are cut off at the head deadline."""
    settings = make_settings(request_head_timeout_s=2.0)
    async with served(settings) as address:
        closed_after: list[float] = []

        async def loris() -> None:
            reader, writer = await asyncio.open_connection(*address)
            started = time.monotonic()
            try:
                writer.write(b"POST /webhooks/salesforce/outbound-messages HTTP/1.1\r\n")
                for byte in b"X-Slow: " + b"a" * 200:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if await _cut_off(reader):
                        break
                    await asyncio.sleep(0.1)
            except ConnectionError:
                pass
            finally:
                closed_after.append(time.monotonic() - started)
                writer.close()

        lorises = [asyncio.create_task(loris()) for _ in range(200)]
        await asyncio.sleep(0.5)  # every slow connection is open and trickling
        latencies = []
        async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}", timeout=10) as client:
            for _ in range(20):
                started = time.monotonic()
                response = await client.post(OM_PATH, content=outbound_message(1), headers=SOAP)
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200
        await asyncio.wait_for(asyncio.gather(*lorises), timeout=10)
    assert max(latencies) < 0.5, latencies
    assert len(closed_after) == 200
    assert max(closed_after) < 2.0 + 1.5, max(closed_after)


class _Transport(asyncio.Transport):
    """What the protocol writes, one entry per ``write``: whether a response leaves in one."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.written = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.written.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _small_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    message = await receive()
    body = b"ack:" + message.get("body", b"")
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _exchange(request: bytes, *, until: bytes, app: ASGIApp = _small_app) -> _Transport:
    """Feed ``request`` to a bounded protocol serving ``app``; the writes once ``until`` is out."""
    config = uvicorn.Config(app, log_config=None, access_log=False)
    config.load()
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, limits=ConnectionLimits())
    transport = _Transport()
    protocol.connection_made(transport)
    try:
        protocol.data_received(request)
        async with asyncio.timeout(5):
            while until not in b"".join(transport.writes):
                transport.written.clear()
                await transport.written.wait()
        await asyncio.sleep(0.01)  # anything written after it would be caught too
        return transport
    finally:
        protocol.connection_lost(None)


async def test_a_response_leaves_in_one_write() -> None:
    """Head and body together: one send and one TCP segment per Ack rather than two."""
    transport = await _exchange(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", until=b"ack:hello")
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nack:hello")


async def test_a_head_request_still_gets_its_head() -> None:
    transport = await _exchange(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n", until=b"\r\n\r\n")
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_100_continue_is_not_held_back_with_the_head() -> None:
    """The client waits for ``100 Continue`` before it sends the body: it must go out at once."""
    transport = await _exchange(
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", until=b"100 Continue"
    )
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


async def test_a_body_whole_on_arrival_is_marked_so_in_the_scope() -> None:
    """``read_body`` arms no deadline for such a body; one still arriving is not marked."""
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope.get(BODY_COMPLETE))
        await _small_app(scope, receive, send)

    await _exchange(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", until=b"ack:hello", app=app)
    config = uvicorn.Config(app, log_config=None, access_log=False)
    config.load()
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, limits=ConnectionLimits())
    protocol.connection_made(_Transport())
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhel")
    await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    assert seen == [True, None]


async def test_a_websocket_upgrade_opening_a_connection_reaches_the_app(make_settings: SettingsFactory) -> None:
    """No cycle exists for an upgrade: the body-complete mark must not turn it into a 400."""
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with served(make_settings()) as address, connection(address) as (reader, writer):
        writer.write(upgrade)
        await writer.drain()
        reply = await answer(reader)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:80]
