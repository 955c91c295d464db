"""A flood of Outbound Messages on raw connections, with the receiver's resident set sampled meanwhile.

httpx costs more CPU per request than the receiver does; asyncio streams let one test process
keep a thousand requests open at once on this machine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tests.processes import ReceiverProcess
from tests.salesforce_sender import OM_PATH, Message


@dataclass(frozen=True, slots=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def post_raw(port: int, body: bytes) -> RawAnswer | None:
    """One POST on a connection of its own, much lighter than httpx; None when the connection failed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        head = (
            f"POST {OM_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml; charset=utf-8\r\n"
            f'SOAPAction: ""\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n'
        )
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await reader.read()
    except OSError:
        return None
    finally:
        writer.close()
    header_block, _, content = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return RawAnswer(int(status_line.split()[1]), headers, content)


@dataclass(frozen=True, slots=True)
class Flood:
    answers: list[RawAnswer | None]
    peak_rss_bytes: int
    elapsed_s: float

    def with_status(self, status: int) -> list[RawAnswer]:
        return [answer for answer in self.answers if answer is not None and answer.status == status]


async def flood(receiver: ReceiverProcess, messages: list[Message], *, connections: int) -> Flood:
    """Every message, ``connections`` of them at a time, sampling the receiver's RSS meanwhile."""
    port = int(receiver.base_url.rsplit(":", 1)[1])
    gate = asyncio.Semaphore(connections)
    peak = receiver.rss_bytes()
    done = asyncio.Event()

    async def sample_rss() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, receiver.rss_bytes())
            await asyncio.sleep(0.01)

    async def send(body: bytes) -> RawAnswer | None:
        async with gate:
            return await post_raw(port, body)

    sampler = asyncio.create_task(sample_rss())
    started = time.monotonic()
    answers = await asyncio.gather(*(send(message.body) for message in messages))
    elapsed = time.monotonic() - started
    done.set()
    await sampler
    return Flood(list(answers), peak, elapsed)
